"""`melanoma calibrate` (a site's own threshold) and `melanoma predict --threshold-file`, on a real tiny package."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from melanoma.commands import main as cli
from melanoma.evaluation.stats import draw
from melanoma.params import LABELS
from melanoma.serving import calibrate as calibrate_module
from melanoma.serving import predict as predict_module
from melanoma.serving.calibrate import (
    CalibrationError,
    choose,
    draw_thresholds,
    measure,
    read_labels,
    threshold_interval,
)
from tests.conftest import make_class_folders

N_BENIGN, N_MALIGNANT = 14, 12


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A tiny ResNet cell, trained, evaluated and exported as the pipeline does (as tests/test_package.py's)."""
    from melanoma.classifiers.train import train_classifier
    from melanoma.evaluation.evaluate import evaluate_cell
    from melanoma.serving.package import export_cell
    from tests.test_package import DATA
    from tests.tiny import make_pack, tiny_params

    root = tmp_path_factory.mktemp("calibrate")
    p = tiny_params(**{"classifiers.train.steps": 4, "classifiers.seeds": [0]})
    data = make_pack(root / "data", size=32, seed=0)
    (data / "stats.json").write_text(
        json.dumps(
            {
                "dataset": "Original",
                "per_class": {"train": {"benign": 24, "malignant": 12}},
                "counts": {"train": {"benign/real": 24, "malignant/real": 12}},
            }
        )
    )
    cell = "ResNet_Original"
    train_classifier("ResNet", "Original", p, data, root / "models" / cell, root / "ck" / cell, log=lambda s: None)
    evaluate_cell("ResNet", "Original", p, root / "models" / cell, data, root / "eval" / cell)
    pkg = root / "models/export/ResNet" / cell
    pkg.mkdir(parents=True)
    export_cell(root / "models" / cell, root / "eval" / cell, data, pkg, 17, DATA)
    return pkg


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A labelled site: benign/ and malignant/ images, plus one unreadable file."""
    root = make_class_folders(tmp_path_factory.mktemp("site") / "site_b", N_BENIGN, N_MALIGNANT, seed=7)
    (root / "benign" / "broken.jpg").write_text("not an image")
    return root


@pytest.fixture(autouse=True)
def quiet(monkeypatch, tmp_path):
    monkeypatch.setattr(predict_module, "PROGRESS_FROM", 10**9)  # no progress bar: stderr is the error line alone
    monkeypatch.chdir(tmp_path)  # the default threshold file lands in the current folder


def scores(package: Path, files: list[Path], capsys, *extra: str) -> dict:
    cli(["predict", *map(str, files), "--model", str(package), "--json", *extra])
    return json.loads(capsys.readouterr().out)


def _fifo(path: Path) -> Path:
    """A named pipe: a reader that opened it would wait for a writer for ever."""
    os.mkfifo(path)
    return path


def one_line_error(capsys, args: list[str]) -> str:
    assert cli(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"melanoma {args[0]}: error: ")
    return lines[0]


# ---------------------------------------------------------------- the rules and the intervals

BENIGN = [0.1, 0.2, 0.3, 0.35, 0.6]
MALIGNANT = [0.4, 0.5, 0.7, 0.8, 0.9]
Y = np.array([0] * 5 + [1] * 5)
P = np.array(BENIGN + MALIGNANT)


def test_youden_is_the_hand_computed_one_and_sklearns():
    # by hand: t=0.4 -> sens 5/5, spec 4/5 (J 0.8); t=0.5 -> 4/5, 4/5 (0.6); t=0.6 -> 3/5, 4/5 (0.4);
    # t=0.7 -> 3/5, 5/5 (0.6); t=0.35 -> 5/5, 3/5 (0.6): the maximum is 0.4
    assert choose(Y, P, "youden") == 0.4
    fpr, tpr, thr = roc_curve(Y, P)
    assert thr[np.argmax(tpr - fpr)] == 0.4
    # ties in J go to the higher threshold (fewer false alarms): move benign 0.35 above 0.4 -> 0.4, 0.5, 0.7 tie
    assert choose(Y, np.array([0.1, 0.2, 0.3, 0.45, 0.6] + MALIGNANT), "youden") == 0.7
    rng = np.random.default_rng(0)
    for _ in range(20):  # random sets: the same J as scikit-learn's ROC curve
        y = rng.integers(0, 2, 60)
        y[:2] = [0, 1]
        p = np.round(rng.random(60) * 0.6 + 0.4 * y, 2)  # ties included
        t = choose(y, p, "youden")
        fpr, tpr, thr = roc_curve(y, p)
        j = tpr - fpr
        assert np.isclose(((p >= t) & (y == 1)).sum() / y.sum() - ((p >= t) & (y == 0)).sum() / (y == 0).sum(), j.max())
        assert t == max(thr[np.isclose(j, j.max())])


def test_target_sensitivity_gives_up_the_least_specificity():
    assert choose(Y, P, "sensitivity", 1.0) == 0.4  # the lowest malignant score
    assert choose(Y, P, "sensitivity", 0.8) == 0.5  # 4 of 5 malignant; specificity 4/5 (0.4 would also reach it)
    assert choose(Y, P, "sensitivity", 0.61) == 0.5  # 0.7 gives only 3/5
    assert choose(Y, P, "sensitivity", 0.6) == 0.7
    assert choose(Y, P, "sensitivity") == 0.4  # default target 0.95
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(CalibrationError, match=r"must be in \(0, 1\]"):
            choose(Y, P, "sensitivity", bad)


def test_intervals_contain_the_estimate_and_shrink_with_more_data():
    rng = np.random.default_rng(1)
    widths = []
    for n in (30, 600):
        y = np.r_[np.zeros(n), np.ones(n)].astype(int)
        p = 1 / (1 + np.exp(-(rng.normal(0, 1, 2 * n) + 1.5 * y)))
        t = choose(y, p, "youden")
        m = measure(y, p, t, 500, 0)
        assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
        for k in ("sensitivity", "specificity", "auroc", "balanced_accuracy"):
            lo, hi = m["ci95"][k]
            assert lo <= m[k] <= hi, (n, k, m[k], lo, hi)
        widths.append({k: np.diff(m["ci95"][k])[0] for k in ("sensitivity", "specificity", "auroc")})
        lo, hi = threshold_interval(y, p, "youden", None, 500, 0)  # the threshold re-chosen in each draw
        assert lo <= t <= hi
        widths[-1]["threshold"] = hi - lo
    for k in widths[0]:
        assert widths[1][k] < widths[0][k] / 2, (k, widths)  # ~1/sqrt(n): 20x the data, ~4.5x narrower


def test_the_thresholds_of_all_draws_at_once_are_chooses_one_by_one():
    rng = np.random.default_rng(2)
    for trial in range(10):
        n = int(rng.integers(20, 120))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        p = np.round(rng.random(n) * 0.6 + 0.4 * y, int(rng.integers(1, 4)))  # coarse scores: many ties
        d = draw(y.astype(bool), 1, 40, rng)
        w = np.zeros((40, n), dtype=np.int64)
        w[:, y == 1], w[:, y == 0] = d.pos, d.neg
        for rule, target in (("youden", None), ("sensitivity", float(rng.uniform(0.05, 1)))):
            fast = draw_thresholds(y, p, rule, target, d.pos, d.neg, chunk=7)
            assert list(fast) == [choose(y, p, rule, target, w[b]) for b in range(40)], (trial, rule)


# ---------------------------------------------------------------- the command, end to end


def test_calibrate_writes_a_threshold_file_that_predict_uses(package, site, capsys):
    assert cli(["calibrate", str(package), "--labels", str(site), "--bootstrap", "300"]) == 0
    out, err = capsys.readouterr()
    path = Path("ResNet_Original_site_b_youden_threshold.json")  # the default: in the current folder
    rec = json.loads(path.read_text())
    assert f"wrote {path}" in out and "14 malignant" not in out
    assert f"{N_MALIGNANT} malignant, {N_BENIGN} benign; 1 unreadable" in out and "package threshold" in out
    assert "1 of 27 images could not be read" in err and "not an image" in err
    # scored as predict scores them: the threshold is Youden's J on predict's own probabilities
    files = sorted((site / "benign").glob("img_*.jpg")) + sorted((site / "malignant").glob("*.jpg"))
    base = scores(package, files, capsys)
    p = np.array([r["p_malignant"] for r in base["predictions"]])
    y = np.array([0] * N_BENIGN + [1] * N_MALIGNANT)
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    assert rec["threshold"] == max(thr[np.isclose(j, j.max())])
    assert rec["metrics"]["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert rec["package_threshold_metrics"]["threshold"] == base["threshold"] == rec["package"]["threshold"]
    assert rec["labels"]["scored"] == {"benign": N_BENIGN, "malignant": N_MALIGNANT} and rec["n"] == len(y)
    assert rec["labels"]["unreadable"] == 1 and rec["labels"]["unreadable_files"][0]["path"].endswith("broken.jpg")
    cfg = json.loads((package / "model_config.json").read_text())
    assert (
        rec["package"]["weights_sha256"]
        == cfg["weights_sha256"]
        == hashlib.sha256((package / "model.safetensors").read_bytes()).hexdigest()
    )
    assert rec["rule"] == "youden" and rec["target_sensitivity"] is None and rec["bootstrap"]["resamples"] == 300
    assert rec["threshold_ci95"][0] <= rec["threshold"] <= rec["threshold_ci95"][1] and "the threshold itself" in out
    assert rec["created"].endswith("+00:00") and not list(Path(".").glob(".*.tmp"))
    # predict with the file decides at its threshold and says where the threshold came from
    got = scores(package, files, capsys, "--threshold-file", str(path))
    assert got["threshold"] == rec["threshold"] and got["threshold_source"]["from"] == "threshold_file"
    assert (
        got["threshold_source"]["path"] == str(path)
        and got["threshold_source"]["package_threshold"] == base["threshold"]
    )
    assert base["threshold_source"] == {"from": "package", "path": str(package)}
    assert [r["p_malignant"] for r in got["predictions"]] == list(p)
    assert [r["decision"] for r in got["predictions"]] == [
        "malignant" if x >= rec["threshold"] else "benign" for x in p
    ]
    # a target sensitivity of 1: the lowest malignant score, so every malignant image is called malignant
    assert (
        cli(["calibrate", str(package), "--labels", str(site), "--target-sensitivity", "1", "--bootstrap", "300"]) == 0
    )
    capsys.readouterr()
    sens = json.loads(Path("ResNet_Original_site_b_sens1_threshold.json").read_text())
    assert sens["threshold"] == p[y == 1].min() and sens["metrics"]["sensitivity"] == 1.0
    assert sens["rule"] == "sensitivity" and sens["target_sensitivity"] == 1.0
    got = scores(package, files, capsys, "--threshold-file", "ResNet_Original_site_b_sens1_threshold.json")
    decisions = [r["decision"] for r in got["predictions"]]
    assert decisions == ["malignant" if x >= sens["threshold"] else "benign" for x in p]
    if (p >= sens["threshold"]).sum() != (p >= base["threshold"]).sum():
        assert decisions != [r["decision"] for r in base["predictions"]]
    for t, expect in ((0.0, "malignant"), (float(p.max()) + 1e-9, "benign")):  # the file's threshold decides
        Path("edited.json").write_text(json.dumps({**rec, "threshold": t}))
        got = scores(package, files, capsys, "--threshold-file", "edited.json")
        assert {r["decision"] for r in got["predictions"]} == {expect}, t
    # the table's header names the file and the package's own threshold
    assert cli(["predict", str(files[0]), "--model", str(package), "--threshold-file", str(path)]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert f"from --threshold-file {path}" in head and f"the package's own is {base['threshold']:.4f}" in head


def test_a_csv_and_the_folder_are_the_same_labelled_set(package, site, capsys):
    rows = [(f.relative_to(site).as_posix(), f.parent.name) for f in sorted(site.rglob("*.jpg"))]
    table = site / "labels.csv"
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows([("Image", "label", "note")] + [(r, lab.upper(), "x") for r, lab in rows])
    a, b = read_labels(site), read_labels(table)
    assert a.files_sha256() == b.files_sha256() and a.counts() == b.counts() == {
        "benign": N_BENIGN + 1,
        "malignant": N_MALIGNANT,
    }
    assert cli(["calibrate", str(package), "--labels", str(table), "--out", "csv.json", "--bootstrap", "300"]) == 0
    assert cli(["calibrate", str(package), "--labels", str(site), "--out", "dir.json", "--bootstrap", "300"]) == 0
    capsys.readouterr()
    x, y = (json.loads(Path(f).read_text()) for f in ("csv.json", "dir.json"))
    assert x["threshold"] == y["threshold"] and x["metrics"] == y["metrics"] and x["labels"]["kind"] == "csv"


def test_subgroup_columns_give_the_threshold_per_subgroup_and_small_groups_no_estimate(package, site, capsys):
    """A labels CSV with the releases' metadata columns (ISIC's sex, HAM10000's localization, the archive's
    fitzpatrick_skin_type): the calibrated threshold's sensitivity and specificity within each group equal a
    direct count; a group under MIN_PER_CLASS images of a class is listed with no estimate."""
    files = sorted((site / "benign").glob("img_*.jpg")) + sorted((site / "malignant").glob("*.jpg"))
    y = [0] * N_BENIGN + [1] * N_MALIGNANT
    sex = ["male" if i in (0, 1, N_BENIGN) else "female" for i in range(len(files))]  # male: 2 benign, 1 malignant
    table = _csv(
        site / "meta.csv",
        [("image", "label", "sex", "localization", "fitzpatrick_skin_type")]
        + [
            (f.relative_to(site).as_posix(), LABELS[c], s, "back" if i % 2 else "scalp", "")
            for i, (f, c, s) in enumerate(zip(files, y, sex))
        ],
    )
    assert cli(["calibrate", str(package), "--labels", str(table), "--out", "sub.json", "--bootstrap", "300"]) == 0
    out = capsys.readouterr().out
    rec = json.loads(Path("sub.json").read_text())
    rows = {(r["attribute"], r["value"]): r for r in rec["subgroups"]}
    assert set(rows) == {
        ("sex", "female"),
        ("sex", "male"),
        ("site", "head/neck"),
        ("site", "torso"),
        ("skin_type", "unknown"),
    }
    female, male = rows["sex", "female"], rows["sex", "male"]
    assert (female["n_malignant"], female["n_benign"], female["estimated"]) == (N_MALIGNANT - 1, N_BENIGN - 2, True)
    assert (male["n_malignant"], male["n_benign"], male["estimated"]) == (1, 2, False) and "sensitivity" not in male
    p = np.array([r["p_malignant"] for r in scores(package, files, capsys)["predictions"]])
    m = np.array(sex) == "female"
    called = p >= rec["threshold"]
    yy = np.array(y)
    assert female["sensitivity"] == called[m & (yy == 1)].mean()
    assert female["specificity"] == (~called)[m & (yy == 0)].mean()
    assert female["auroc"] == pytest.approx(roc_auc_score(yy[m], p[m]))
    assert rows["skin_type", "unknown"]["n"] == len(files)  # empty cells: unknown, never guessed
    assert "by sex: female (11 malignant, 12 benign): sensitivity" in out
    assert "male (1 malignant, 2 benign: too few to estimate)" in out
    # the labelled set is the same one: the threshold does not depend on the extra columns
    assert cli(["calibrate", str(package), "--labels", str(site), "--out", "plain.json", "--bootstrap", "300"]) == 0
    capsys.readouterr()
    plain = json.loads(Path("plain.json").read_text())
    assert plain["threshold"] == rec["threshold"] and "subgroups" not in plain


def test_a_threshold_file_for_another_package_is_refused(package, site, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    assert cli(["calibrate", str(package), "--labels", str(site), "--out", "t.json", "--bootstrap", "200"]) == 0
    capsys.readouterr()
    other = shutil.copytree(package, tmp_path / "other" / "ResNet_Original")
    state = load_file(str(other / "model.safetensors"))
    save_file({k: v + 0.01 if k.startswith("fc.") else v for k, v in state.items()}, str(other / "model.safetensors"))
    cfg = json.loads((other / "model_config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256((other / "model.safetensors").read_bytes()).hexdigest()
    (other / "model_config.json").write_text(json.dumps(cfg))
    image = str(next(site.rglob("img_0.jpg")))
    line = one_line_error(capsys, ["predict", image, "--model", str(other), "--threshold-file", "t.json"])
    assert "--threshold-file t.json belongs to another package" in line and "melanoma calibrate" in line
    assert cli(["predict", image, "--model", str(other)]) == 0  # the package itself is fine
    capsys.readouterr()


def test_rerunning_replaces_its_own_file_but_never_a_users(package, site, capsys):
    args = ["calibrate", str(package), "--labels", str(site), "--out", "t.json", "--bootstrap", "200"]
    assert cli(args) == 0
    first = json.loads(Path("t.json").read_text())
    assert cli(args) == 0  # the same calibration again: replaced
    assert json.loads(Path("t.json").read_text())["metrics"] == first["metrics"]
    capsys.readouterr()
    Path("mine.json").write_text('{"my": "notes"}')
    line = one_line_error(capsys, args[:-4] + ["--out", "mine.json", "--bootstrap", "200"])
    assert "--out mine.json exists and is not a threshold file this command wrote; pass --force" in line
    assert Path("mine.json").read_text() == '{"my": "notes"}'
    line = one_line_error(capsys, args[:-2] + ["--bootstrap", "300"])  # another calibration
    assert "exists and is a threshold file of another calibration; pass --force" in line
    assert cli(args[:-4] + ["--out", "mine.json", "--bootstrap", "200", "--force"]) == 0
    assert json.loads(Path("mine.json").read_text())["format"] == "melanoma-threshold"
    capsys.readouterr()


# ---------------------------------------------------------------- bad input: one line each


def _folder(root: Path, n_benign: int, n_malignant: int, junk_malignant: int = 0) -> Path:
    make_class_folders(root, n_benign, n_malignant, seed=3)
    for i in range(junk_malignant):
        (root / "malignant" / f"junk_{i}.jpg").write_bytes(b"")
    return root


def _copied(site: Path, root: Path, rel: list[str]) -> Path:
    """The site's folders, plus a byte-identical copy of one benign image under malignant/."""
    shutil.copytree(site, root)
    shutil.copy(root / rel[0], root / "malignant" / "copy_of_a_benign.jpg")
    return root


def _csv(path: Path, rows: list[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_bad_labels_rules_and_outputs_are_one_line_errors(package, site, tmp_path, capsys):
    pkg = str(package)
    rel = [f.relative_to(site).as_posix() for f in sorted(site.rglob("img_*.jpg"))]
    ok_rows = [("image", "label")] + [(r, r.split("/")[0]) for r in rel]
    extra = make_class_folders(tmp_path / "extra", 2, 2)
    (extra / "nevus").mkdir()
    one = _folder(tmp_path / "one", 12, 0)
    (one / "malignant").rmdir()
    junk = _folder(tmp_path / "junk", 12, 8, junk_malignant=4)  # 12 malignant files, 4 of them empty
    cases = [
        (["--labels", str(tmp_path / "nowhere")], "nowhere does not exist; give a CSV with columns image,label"),
        (["--labels", str(_folder(tmp_path / "empty", 12, 0))], "empty/malignant holds no image; put its images there"),
        (["--labels", str(one)], "one: no malignant images; each class needs at least one"),
        (["--labels", str(extra)], "subfolder nevus/ is not benign/ or malignant/"),
        (
            ["--labels", str(_folder(tmp_path / "few", 12, 6))],
            "only 6 malignant images are listed; calibrating needs at least 10 of each class",
        ),  # before scoring
        (["--labels", str(junk)], "only 8 malignant images could be scored (4 unreadable: 4x empty file"),
        (["--labels", str(site), "--target-sensitivity", "0"], "--target-sensitivity 0.0: it must be in (0, 1]"),
        (["--labels", str(site), "--target-sensitivity", "1.5"], "--target-sensitivity 1.5: it must be in (0, 1]"),
        (
            ["--labels", str(site), "--rule", "youden", "--target-sensitivity", "0.9"],
            "--rule youden takes no --target-sensitivity",
        ),
        (["--labels", str(site), "--bootstrap", "10"], "--bootstrap 10: use at least 100 resamples"),
        (
            ["--labels", str(_csv(site / "nolabel.csv", [("image", "diagnosis"), (rel[0], "benign")]))],
            "nolabel.csv has no 'label' column (its header: image, diagnosis); the CSV needs",
        ),
        (["--labels", str(_csv(site / "empty.csv", []))], "empty.csv is empty"),
        (
            ["--labels", str(_csv(site / "unknown.csv", ok_rows + [(rel[0].replace("img", "x"), "melanoma")]))],
            f"unknown.csv line {len(ok_rows) + 1}: label 'melanoma' is not benign or malignant",
        ),
        (
            ["--labels", str(_csv(site / "missing.csv", ok_rows + [("benign/gone.jpg", "benign")]))],
            f"missing.csv: 1 of {len(rel) + 1} listed images do not exist "
            f"(first: line {len(ok_rows) + 1}, benign/gone.jpg",
        ),
        (
            ["--labels", str(_csv(site / "twice.csv", ok_rows + [ok_rows[1]]))],
            f"twice.csv line {len(ok_rows) + 1}: {rel[0]} is listed again (first on line 2)",
        ),
        (
            ["--labels", str(_csv(site / "benign_only.csv", [r for r in ok_rows if r[1] != "malignant"]))],
            "no malignant images",
        ),
        (["--labels", str(site), "--out", str(tmp_path)], "is a folder; give a file name"),
        (
            ["--labels", str(_csv(site / "inputs.csv", ok_rows)), "--out", str(site / "inputs.csv"), "--force"],
            "is one of the inputs (the labels, a labelled image or a file of the package)",
        ),
        (["--labels", str(site), "--out", str(package / "model_config.json"), "--force"], "is one of the inputs"),
        (["--labels", str(site), "--bootstrap", "100000000"], "use at most 100000 resamples"),
        (
            ["--labels", str(_copied(site, tmp_path / "copied", rel))],
            "are the same image (identical bytes) (labelled benign and malignant); list each image once",
        ),
        (["--labels", str(site), "--out", str(site / "benign" / "img_0.jpg" / "t.json")], "--out"),
        (
            ["--labels", str(_csv(site / "nul.csv", ok_rows + [("benign/x\0.jpg", "benign")]))],
            f"nul.csv line {len(ok_rows) + 1}: the image cell holds a NUL byte, which no file name can; fix that cell",
        ),
        (["--labels", "/dev/zero"], "--labels /dev/zero is a device, not a regular file; give a file"),
        (["--labels", str(_fifo(tmp_path / "labels.csv"))], "labels.csv is a FIFO (named pipe), not a regular file"),
    ]
    for extra, needle in cases:
        line = one_line_error(capsys, ["calibrate", pkg, *extra])
        assert needle in line, (extra, line)
    assert not list(Path(".").glob("*.json"))  # nothing written by a refused run


def test_malformed_threshold_files_are_one_line_errors(package, site, tmp_path, capsys):
    image = str(next(site.rglob("img_0.jpg")))
    assert cli(["calibrate", str(package), "--labels", str(site), "--out", "good.json", "--bootstrap", "200"]) == 0
    capsys.readouterr()
    good = json.loads(Path("good.json").read_text())
    cases = {
        "absent.json": (None, "absent.json does not exist"),
        "text.json": ("{not json", "not readable JSON"),
        "other.json": ({"threshold": 0.5}, "not a threshold file (its 'format' is not 'melanoma-threshold')"),
        "version.json": ({**good, "version": 99}, "version 99"),
        "range.json": ({**good, "threshold": 1.5}, "threshold is 1.5; it must be a number in [0, 1]"),
        "bool.json": ({**good, "threshold": True}, "threshold is True"),
        "nosha.json": ({**good, "package": {"cell": "ResNet_Original"}}, "package.weights_sha256 is missing"),
        "deep.json": ("[" * 100_000 + "]" * 100_000, "not readable JSON (RecursionError)"),
        "/dev/zero": (None, "is a device, not a regular file; give a file"),
        str(_fifo(tmp_path / "t.json")): (None, "is a FIFO (named pipe), not a regular file"),
        "edited.json": (
            {**good, "package": {**good["package"], "weights_sha256": "0" * 64}},
            "belongs to another package",
        ),
    }
    for name, (content, needle) in cases.items():
        if content is not None:
            Path(name).write_text(content if isinstance(content, str) else json.dumps(content))
        line = one_line_error(capsys, ["predict", image, "--model", str(package), "--threshold-file", name])
        assert f"--threshold-file {name}" in line and needle in line, line


# ---------------------------------------------------------------- the Hugging Face cache recipe (docs/serving.md)


def test_the_hf_cache_round_trip_offline_then_cleared(package, site, tmp_path):
    """The recipe of docs/serving.md, offline: a repo in the HF cache (as `download` leaves it) is calibrated and
    predicted by its Hub id with HF_HUB_OFFLINE=1; its threshold file also fits the same package in a local folder (same
    weights); `hf cache rm` clears it, after which offline use is a one-line 'not in the local cache' error."""
    import os
    import subprocess
    import sys

    from tests.test_package import fill_cache

    rid = "someone/melanoma-ResNet_Original"
    fill_cache(tmp_path / "hf" / "hub", rid, package)  # HF_HUB_CACHE defaults to $HF_HOME/hub
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "melanoma.commands", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = run("calibrate", rid, "--labels", str(site), "--out", "hub.json", "--bootstrap", "200")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "hub.json").read_text())["package"]["path"].startswith(str(tmp_path / "hf" / "hub"))
    image = str(next(site.rglob("img_0.jpg")))
    a, b = (run("predict", image, "--model", m, "--threshold-file", "hub.json", "--json") for m in (rid, str(package)))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["predictions"] == json.loads(b.stdout)["predictions"]
    hf = Path(sys.executable).parent / "hf"
    r = subprocess.run(
        [str(hf), "cache", "rm", f"model/{rid}", "-y"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "hf" / "hub" / "models--someone--melanoma-ResNet_Original").exists()
    r = run("predict", image, "--model", rid)
    assert r.returncode == 2 and "not in the local Hugging Face cache" in r.stderr and "Traceback" not in r.stderr


def test_semicolon_and_utf16_label_tables_read_like_the_comma_one(site, tmp_path):
    rel = [f.relative_to(site).as_posix() for f in sorted(site.rglob("img_*.jpg"))]
    comma = read_labels(_csv(site / "comma.csv", [("image", "label")] + [(r, r.split("/")[0]) for r in rel]))
    (site / "semi.csv").write_text("image;label\n" + "".join(f"{r};{r.split('/')[0]}\n" for r in rel))
    (site / "utf16.csv").write_text(
        "image\tlabel\n" + "".join(f"{r}\t{r.split('/')[0]}\n" for r in rel), encoding="utf-16"
    )
    for other in ("semi.csv", "utf16.csv"):
        got = read_labels(site / other)
        assert got.files == comma.files and list(got.labels) == list(comma.labels)


def test_rates_of_0_or_1_get_the_exact_interval_and_a_warning():
    """A percentile bootstrap cannot leave 0 or 1 ([0.000, 0.000] was printed unflagged): every such rate, at the
    calibrated and at the package threshold, carries the Clopper-Pearson interval and a warning."""
    from melanoma.serving.calibrate import measure, warnings_for

    y = np.array([1] * 15 + [0] * 20)
    p = np.linspace(0.5, 1.0, 35)[np.argsort(np.argsort(-y, kind="stable"))]  # malignant ranked first, then overlap
    p[15:23] = p[:8]  # 8 benign images score like malignant ones: AUROC below 1
    m = measure(y, p, threshold=0.0, n_boot=200, seed=0)  # everything called malignant
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.0 and m["exact_ci95"] == ["sensitivity", "specificity"]
    assert m["ci95"]["sensitivity"] == pytest.approx([0.025 ** (1 / 15), 1.0], abs=1e-3)  # [0.782, 1]
    assert m["ci95"]["specificity"] == pytest.approx([0.0, 1 - 0.025 ** (1 / 20)], abs=1e-3)  # [0, 0.168]
    said = warnings_for(m, 15, 20, "package threshold")
    assert len(said) == 2 and said[0].startswith("warning: package threshold: sensitivity 1.000 on 15 images")
    assert "[0.782, 1.000]" in said[0] and "[0.000, 0.168]" in said[1]
    inside = measure(y, p, threshold=float(np.median(p)), n_boot=200, seed=0)
    assert inside["exact_ci95"] == [] and 0 < inside["sensitivity"] < 1
    chance = {**inside, "ci95": {**inside["ci95"], "auroc": [0.48, 0.74]}}
    assert [w for w in warnings_for(chance, 15, 20) if "no better than chance" in w]


def test_one_calibrate_per_out_and_a_file_that_appears_meanwhile_is_kept(package, site, capsys, monkeypatch):
    """Two calibrates wrote one --out (the first's threshold silently lost); a user's file created at --out while
    the images were scored was replaced without --force."""
    from melanoma.io import owner_lock

    out = Path("t.json").resolve()
    with owner_lock(out):  # another live calibrate holds it
        line = one_line_error(capsys, ["calibrate", str(package), "--labels", str(site), "--out", str(out)])
    assert f"t.json is being written by another process (pid {os.getpid()})" in line and not out.exists()
    real = predict_module.predict

    def user_writes_meanwhile(*a, **k):
        out.write_text("USER DATA")
        return real(*a, **k)

    monkeypatch.setattr(calibrate_module, "predict", user_writes_meanwhile)  # the scoring calibrate calls
    line = one_line_error(
        capsys, ["calibrate", str(package), "--labels", str(site), "--out", str(out), "--bootstrap", "100"]
    )
    assert "exists and is not a threshold file this command wrote" in line and out.read_text() == "USER DATA"


def test_names_with_control_characters_cannot_forge_summary_lines_or_file_names(package, site, capsys, tmp_path):
    odd = tmp_path / "cal\x1b[2J\n\u202eX"
    shutil.copytree(site, odd)
    assert cli(["calibrate", str(package), "--labels", str(odd), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "cal\\x1b[2J\\n\\u202eX" in out
    assert not [line for line in out.splitlines() if line.startswith("X")]  # no line forged by the name's newline
    written = [p.name for p in Path(".").glob("*_threshold.json")]
    assert len(written) == 1 and written[0].isprintable() and "\x1b" not in written[0]
