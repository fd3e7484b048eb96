import copy
import re
import shutil

import pytest
import yaml

from melanoma.params import ParamsError, load_params, validate
from tests.conftest import ROOT


@pytest.fixture
def tree():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p["data"]["source"] == "demo"
    assert isinstance(p["split"]["val_fraction"], float)


def test_misspelt_choice_names_key_and_choices(tree):
    tree["data"]["source"] = "dmeo"
    with pytest.raises(ParamsError) as e:
        validate(tree)
    assert str(e.value) == "data.source must be one of demo, local, isic_csv, gdrive (got 'dmeo')"


@pytest.mark.parametrize(
    "path,value,needle",
    [
        (("data", "demo", "n_benign"), "many", "data.demo.n_benign is 'many' (str); it must be an integer"),
        (("data", "demo", "n_benign"), 0, "data.demo.n_benign is 0; it must be an integer in [1, 1000000]"),
        (("data", "demo", "n_benign"), True, "data.demo.n_benign is True (bool)"),
        (("split", "val_fraction"), 0.9, "split.val_fraction is 0.9; it must be a number in [0.01, 0.5]"),
        (("data", "max_side"), None, "data.max_side is null"),
        (("data", "label_map"), {"nevus": "harmless"}, "data.label_map.nevus is 'harmless'"),
        (
            ("generators", "dcgan", "steps"),
            10**30,
            "generators.dcgan.steps is 1" + "0" * 30 + "; it must be an integer in [1, 10000000]",
        ),  # every count has a ceiling, stated or COUNT_MAX
        (("evaluate", "gradcam_per_group"), 10**12, "it must be an integer in"),
    ],
)
def test_wrong_type_or_range_names_key(tree, path, value, needle):
    t = copy.deepcopy(tree)
    node = t
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ParamsError, match=re.escape(needle)):
        validate(t)


def test_unknown_and_missing_keys(tree):
    t = copy.deepcopy(tree)
    t["data"]["demo"]["n_benin"] = 3
    with pytest.raises(ParamsError, match=r"unknown key data\.demo\.n_benin; allowed keys here are: .*n_benign"):
        validate(t)
    t = copy.deepcopy(tree)
    del t["split"]["seed"]
    with pytest.raises(ParamsError, match=r"split\.seed is missing from params\.yaml"):
        validate(t)


def test_integer_accepted_for_float_and_normalised(tree):
    tree["data"]["max_reject_fraction"] = 0
    assert validate(tree)["data"]["max_reject_fraction"] == 0.0
    assert isinstance(validate(tree)["data"]["max_reject_fraction"], float)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_study_profile_switches_params_and_keeps_comments(tmp_path):
    from melanoma.profile import apply_profile

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    changed, kept = apply_profile("study", params, ROOT / "profiles")
    assert kept == {}
    p = load_params(params)
    assert p["datasets"]["image_size"] == 224 and p["data"]["source"] == "gdrive"
    assert p["classifiers"]["models"]["Swin"] == {
        "model": "swin_base_patch4_window7_224",
        "pretrained": True,
        "lr": 5e-05,
        "kwargs": {},
    }  # the demo's cut-down kwargs are gone
    assert p["classifiers"]["models"]["MedViT"]["pretrained"] is False
    assert "classifiers.models.Swin.kwargs" in changed and "split.seed" not in changed
    assert p["split"] == load_params(ROOT / "params.yaml")["split"]  # what the profile does not name stays
    text = params.read_text()
    assert "# 16x16 grayscale thumbnails correlating at least this much, in any of the 8" in text  # comments survive,
    assert "# demo: half the time of 16" not in text  # but not beside a value the profile changed: that gets
    assert re.search(r"\n  source: gdrive +# the original study's ISIC folder", text)  # the profile's comment,
    assert re.search(r"\n  image_size: 224 +# profile: study\n", text)  # or the profile's name
    assert text.startswith("# Profile 'study' (") and "The embedded demo profile" not in text
    assert apply_profile("study", params, ROOT / "profiles") == ([], {}) and params.read_text() == text  # idempotent
    _assert_dvc_round_trips(params)


def _assert_dvc_round_trips(params) -> None:
    """`dvc exp run -S key=value` rewrites params.yaml through DVC's own YAML round trip: a file already in that
    form changes only in the line of the key set."""
    from dvc.utils.hydra import apply_overrides

    before = params.read_text().splitlines()
    seed = load_params(params)["data"]["demo"]["seed"]
    apply_overrides(params, [f"data.demo.seed={seed}"])
    assert params.read_text().splitlines() == before
    apply_overrides(params, [f"data.demo.seed={seed + 1}"])
    after = params.read_text().splitlines()
    assert len(after) == len(before) and sum(a != b for a, b in zip(before, after)) == 1


def test_committed_params_are_in_the_form_dvc_writes(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    _assert_dvc_round_trips(params)


def test_a_bad_profile_never_reaches_params_yaml(tmp_path):
    from melanoma.profile import apply_profile

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    original = params.read_text()
    for name, text, needle in [
        ("typo", "datasets:\n  image_sise: 224\n", "profile key datasets.image_sise is not a params key"),
        ("range", "datasets:\n  image_size: 4\n", "profile 'range': datasets.image_size is 4"),
        (
            "broken",
            "datasets: [224\n",
            r"/broken.yaml is not readable YAML \(ParserError: while parsing a flow sequence",
        ),
        ("../params", "", "'../params' is not a profile name"),
    ]:
        folder = tmp_path / f"profiles_{name.strip('./')}"
        folder.mkdir()
        shutil.copy(ROOT / "profiles/demo.yaml", folder / "demo.yaml")
        if "/" not in name:
            (folder / f"{name}.yaml").write_text(text)
        with pytest.raises(ParamsError, match=needle):
            apply_profile(name, params, folder)
        assert params.read_text() == original
    with pytest.raises(ParamsError, match="no profile 'gpu'.*; profiles: demo$"):
        apply_profile("gpu", params, tmp_path / "profiles_params")
    assert params.read_text() == original


@pytest.mark.parametrize(
    "dotted, value, needle",
    [
        (
            "generators.image_size",
            48,
            "generators.image_size is 48; the DCGAN doubles its way up, so it must be a power of two",
        ),
        ("generators.ddpm.block_out_channels", [32, 0], "generators.ddpm.block_out_channels must all be positive"),
        ("generators.ddpm.block_out_channels", [8] * 7, "generators.image_size 32 cannot be halved 6 times"),
        (
            "generators.ddpm.num_train_timesteps",
            10,
            "generators.ddpm.sampling_steps (20) exceeds generators.ddpm.num_train_timesteps (10)",
        ),
        (
            "datasets.image_size",
            48,
            "datasets.image_size is 48, which MedViT cannot take: it needs at least 32 px and a multiple of 32",
        ),
        ("datasets.image_size", 24, "datasets.image_size is 24, which DenseNet cannot take: it needs at least 32"),
        ("generators.seed", 2**63, "generators.seed is 9223372036854775808; it must be an integer in [0, 4294967295]"),
        (
            "classifiers.models.Swin.kwargs",
            {"depths": [2, 0, 2, 2]},
            "classifiers.models.Swin.kwargs.depths is [2, 0, 2, 2]",
        ),
        ("classifiers.models.ViT.kwargs", {"patch_size": True}, "classifiers.models.ViT.kwargs.patch_size is True"),
        ("classifiers.models.MedViT.model", "", "classifiers.models.MedViT.model is ''"),
        ("data.local.path", "", "data.local.path is empty"),
        ("generators.ddpm.block_out_channels", [10**12, 64], "block_out_channels must be at most 65536"),
        ("classifiers.seeds", [0, 1, 0], "classifiers.seeds lists a seed twice: [0, 1, 0]"),
        ("classifiers.seeds", [], "classifiers.seeds is []; it must be a non-empty list of integers"),
        ("classifiers.seeds", [0, -1], "classifiers.seeds is [0, -1]; each item must be"),
        ("classifiers.seeds", [0, 2**40], "classifiers.seeds is [0, 1099511627776]; each item must be"),
        (
            "classifiers.train.eval_every",
            100,
            "classifiers.train.eval_every (100) and warmup_steps (4) must be below classifiers.train.steps (24)",
        ),
        ("classifiers.train.warmup_steps", 24, "must be below classifiers.train.steps (24)"),
        (
            "datasets.per_class",
            "balance",
            "datasets.per_class is 'balance'; it must be a number of images per class from 1",
        ),
        ("datasets.per_class", "1000.5x", "or a multiple of the larger real train class from 1x to 1000x (e.g. 3x)"),
        ("datasets.per_class", 2.5, "datasets.per_class is 2.5 (float); it must be a number of images per class"),
        (
            "classifiers.train.steps",
            "Auto",
            "classifiers.train.steps is 'Auto'; it must be a number of optimiser steps from 1 to 10000000, or auto",
        ),
    ],
)
def test_values_that_pass_alone_but_break_a_later_stage_fail_at_load(dotted, value, needle):
    tree = load_params(ROOT / "params.yaml")
    node = tree
    *parents, leaf = dotted.split(".")
    for k in parents:
        node = node[k]
    node[leaf] = value
    with pytest.raises(ParamsError) as e:
        validate(tree)
    assert needle in str(e.value)


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    """A "billion laughs" tree of nested aliases inside a model's kwargs: refused at load with the line, never
    expanded (the test would run out of memory if it were)."""
    text = (ROOT / "params.yaml").read_text()
    laughs = "".join(
        f"    l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, "
        f"*l{i - 1}, *l{i - 1}]\n"
        for i in range(1, 10)
    )
    (tmp_path / "params.yaml").write_text(text + "laughs:\n    l0: &l0 [lol]\n" + laughs)
    with pytest.raises(
        ParamsError,
        match=r"params\.yaml line \d+: YAML anchors and aliases \(&name, \*name\) are "
        r"not allowed in params; write the values out",
    ):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_params_from_a_device_or_fifo_are_refused_unread(tmp_path, special):
    import os

    from melanoma.io import FileRefused

    path = tmp_path / "params.yaml"
    if special == "fifo":
        os.mkfifo(path)  # opening it would block for ever
    else:
        path.symlink_to(special)  # reading it would fill the memory
    with pytest.raises(FileRefused, match=r"params file .*params\.yaml is a (FIFO|device)"):
        load_params(path)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("split:\n    seed: 5\n", r"key 'split' is given twice in one mapping; keep one"),
        ("laughs:\n    <<: {seed: 3}\n", r"YAML merge keys \(<<\) are not allowed in params"),
        ("deep: " + "[" * 5000 + "]" * 5000 + "\n", r"nested deeper than 32 levels"),
    ],
)
def test_yaml_that_is_not_one_plain_tree_is_refused_with_its_line(tmp_path, extra, needle):
    """Duplicate keys were kept silently (the last won), merge keys accepted, and a 5,000-level list ended in a
    RecursionError traceback."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text() + extra)
    with pytest.raises(ParamsError, match=r"params\.yaml line \d+: " + needle):
        load_params(tmp_path / "params.yaml")
