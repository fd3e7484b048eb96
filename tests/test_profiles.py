"""Profiles are complete and reversible: demo <-> study <-> rehearsal byte for byte, leftovers named and refused,
and the rehearsal changes budgets only, never a shape of the study."""

import shutil

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from melanoma.estimate import ASSUMED
from melanoma.io import FileRefused
from melanoma.params import ParamsError, load_params, split_problem, synthetic_share, train_steps
from melanoma.profile import apply_profile, in_effect, leaves, profile_params, render
from tests.conftest import ROOT

PROFILES = ROOT / "profiles"


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def test_committed_params_are_the_demo_profile_byte_for_byte():
    assert (ROOT / "params.yaml").read_bytes() == (PROFILES / "demo.yaml").read_bytes(), (
        "params.yaml and profiles/demo.yaml differ: the committed params.yaml is the demo profile; copy the one "
        "you changed over the other"
    )
    assert render("demo", PROFILES) == (ROOT / "params.yaml").read_text()


def test_every_switch_and_back_gives_the_committed_demo_byte_for_byte(params):
    committed = params.read_bytes()
    for route in (["study", "demo"], ["rehearsal", "demo"], ["study", "rehearsal", "study", "demo"]):
        for name in route:
            apply_profile(name, params, PROFILES)
            assert in_effect(yaml.safe_load(params.read_text()), PROFILES) == (name, {})
        assert params.read_bytes() == committed, route


def test_a_leftover_dash_s_is_named_and_refused_then_kept_or_dropped(params):
    committed = params.read_bytes()
    apply_overrides(params, ["classifiers.archs=[ResNet]"])  # what `dvc exp run -S` writes
    shrunk = params.read_bytes()
    with pytest.raises(
        ParamsError,
        match=r"profile 'demo' does not set .*classifiers\.archs = \[ResNet\]\. Rerun "
        r"with --keep to carry them into 'study', or with --drop",
    ):
        apply_profile("study", params, PROFILES)
    assert params.read_bytes() == shrunk  # refused: untouched
    with pytest.raises(ParamsError, match="classifiers.archs"):
        apply_profile("demo", params, PROFILES)  # going back also says what would be lost
    changed, kept = apply_profile("study", params, PROFILES, leftovers="keep")
    assert kept == {"classifiers.archs": ["ResNet"]}
    p = load_params(params)
    assert p["classifiers"]["archs"] == ["ResNet"] and p["classifiers"]["seeds"] == [0, 1, 2, 3, 4]
    assert "# kept: not from a profile" in params.read_text()
    assert in_effect(yaml.safe_load(params.read_text()), PROFILES) == ("study", {"classifiers.archs": ["ResNet"]})
    _, dropped = apply_profile("demo", params, PROFILES, leftovers="drop")
    assert dropped == {"classifiers.archs": ["ResNet"]} and params.read_bytes() == committed


def test_the_study_owns_its_grid():
    demo, study = profile_params("demo", PROFILES), profile_params("study", PROFILES)
    own = leaves(yaml.safe_load((PROFILES / "study.yaml").read_text()))
    assert {"classifiers.archs", "classifiers.datasets", "classifiers.seeds", "device"} <= set(own)
    assert (
        len(study["classifiers"]["archs"]) * len(study["classifiers"]["datasets"]) * len(study["classifiers"]["seeds"])
        == 150
    )
    assert study["device"] == "cuda" and demo["device"] == "auto"


# every key that fixes a shape the GPU run will meet: the rehearsal must not change one
SHAPE_KEYS = (
    "datasets.image_size",
    "generators.image_size",
    "generators.ddpm.block_out_channels",
    "generators.ddpm.layers_per_block",
    "generators.ddpm.attention_resolutions",
    "generators.ddpm.sampler",
    "generators.ddpm.num_train_timesteps",
    "generators.ddpm.beta_schedule",
    "generators.dcgan.ngf",
    "generators.dcgan.ndf",
    "generators.dcgan.nz",
    "upscale.method",
    "upscale.factor",
    "upscale.sr.channels",
    "classifiers.archs",
    "classifiers.train.bf16",
    "classifiers.train.imbalance",
    "evaluate.threshold",
    "export.opset",
)


def test_the_rehearsal_keeps_every_study_shape_and_shrinks_every_budget():
    study, rehearsal = leaves(profile_params("study", PROFILES)), leaves(profile_params("rehearsal", PROFILES))
    for key in SHAPE_KEYS:
        assert rehearsal[key] == study[key], key
    for arch in study["classifiers.archs"]:
        for field in ("model", "kwargs"):
            key = f"classifiers.models.{arch}.{field}"
            assert rehearsal[key] == study[key], key
    assert rehearsal["device"] == "cpu" and rehearsal["data.source"] == "local"
    assert set(rehearsal["classifiers.datasets"]) == {"Original", "DDPM_Upscaled"}
    assert len(rehearsal["classifiers.seeds"]) == 2  # the verdict's seed pairing runs
    for key in (
        "generators.dcgan.steps",
        "generators.ddpm.steps",
        "upscale.sr.steps",
        "evaluate.bootstrap",
        "synthesize.quality_samples",
    ):
        assert rehearsal[key] < study[key] / 10, key
    steps = [
        train_steps(
            profile_params(n, PROFILES)["classifiers"]["train"],
            ASSUMED.train,
            profile_params(n, PROFILES)["datasets"]["per_class"],
        )
        for n in ("rehearsal", "study")
    ]
    assert steps[0] < steps[1] / 10 and steps[1] > 1000, steps  # the study's steps: auto, sized to ~1,100 images


def test_every_profile_sizes_augmentation_to_the_data_and_meets_the_minimum_share():
    """per_class is a multiple of the larger real class everywhere; on the assumed ISIC run, the ISIC sample's
    balanced 105 + 105 and the demo's 279 + 139 every profile's augmented sets meet its own minimum share."""
    for name in ("demo", "own-data", "study", "rehearsal"):
        p = profile_params(name, PROFILES)
        assert isinstance(p["datasets"]["per_class"], str) and p["datasets"]["per_class"].endswith("x"), name
        for real in (ASSUMED.train, {"benign": 105, "malignant": 105}, {"benign": 279, "malignant": 139}):
            assert not split_problem(p, real), (name, real, split_problem(p, real))
    own = profile_params("own-data", PROFILES)
    assert own["classifiers"]["train"]["steps"] == "auto" and own["data"]["source"] == "local"
    assert synthetic_share({"benign": 420, "malignant": 315}, own["datasets"]["per_class"]) > 0.5  # the majority


def test_profiles_extend_in_a_line_never_a_circle(tmp_path):
    (tmp_path / "profiles").mkdir()
    shutil.copy(PROFILES / "demo.yaml", tmp_path / "profiles/demo.yaml")
    (tmp_path / "profiles/a.yaml").write_text("extends: b\ndevice: cpu\n")
    (tmp_path / "profiles/b.yaml").write_text("extends: a\n")
    (tmp_path / "profiles/c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ParamsError, match="in a circle: a -> b -> a"):
        render("a", tmp_path / "profiles")
    with pytest.raises(ParamsError, match="no profile 'nowhere'"):
        render("c", tmp_path / "profiles")


def test_a_typo_in_params_is_refused_not_silently_dropped(params):
    text = params.read_text().replace("    steps: 24 ", "    stpes: 24 ")
    params.write_text(text)
    with pytest.raises(ParamsError, match=r"not params keys: classifiers\.train\.stpes; fix their names .* --drop"):
        apply_profile("study", params, PROFILES)
    with pytest.raises(ParamsError, match="stpes"):
        apply_profile("study", params, PROFILES, leftovers="keep")
    assert params.read_text() == text
    apply_profile("demo", params, PROFILES, leftovers="drop")
    assert params.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_params_written_through_a_symlink_with_its_permissions(tmp_path):
    target = tmp_path / "shared" / "params.yaml"
    target.parent.mkdir()
    shutil.copy(ROOT / "params.yaml", target)
    target.chmod(0o600)
    link = tmp_path / "params.yaml"
    link.symlink_to(target)
    apply_profile("study", link, PROFILES)
    assert link.is_symlink() and load_params(target)["device"] == "cuda"
    assert target.stat().st_mode & 0o777 == 0o600


def test_unwritable_or_unreadable_params_are_one_error_and_nothing_is_left(tmp_path):
    folder = tmp_path / "params.yaml"
    folder.mkdir()
    with pytest.raises(FileRefused, match=r"params file .*params\.yaml is a folder, not a regular file; give a file"):
        apply_profile("study", folder, PROFILES)
    (tmp_path / "p.yaml").write_bytes(b"data: [unclosed\n")
    with pytest.raises(ParamsError, match=r"p\.yaml is not readable YAML \(ParserError"):
        apply_profile("study", tmp_path / "p.yaml", PROFILES)
    (tmp_path / "latin1.yaml").write_bytes(b"# caf\xe9\ndevice: auto\n")
    with pytest.raises(ParamsError, match="UnicodeDecodeError"):
        apply_profile("study", tmp_path / "latin1.yaml", PROFILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.yaml", "p.yaml", "params.yaml"]


def test_a_broken_demo_profile_never_reaches_params(tmp_path, params):
    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES, folder)
    committed = params.read_bytes()
    demo = (folder / "demo.yaml").read_text()
    for text, needle in [
        (demo.replace("device: auto ", "device: gpu  "), "device must be one of auto, cuda, cpu"),
        ("extends: study\n" + demo, "extends none"),
        ("", "not a mapping"),
    ]:
        (folder / "demo.yaml").write_text(text)
        with pytest.raises(ParamsError, match=needle):
            apply_profile("demo", params, folder, leftovers="drop")
        assert params.read_bytes() == committed


def test_kept_values_that_break_the_new_profile_are_named(params):
    apply_overrides(params, ["classifiers.train.steps=50"])
    with pytest.raises(
        ParamsError,
        match=r"profile 'study' with the kept values \(classifiers\.train\.steps; --drop "
        r"discards them\): classifiers\.train\.eval_every \(100\)",
    ):
        apply_profile("study", params, PROFILES, leftovers="keep")
