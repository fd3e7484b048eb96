"""evaluate + report on tiny trained cells (no DVC): files, threshold from val, the grid, the page in Chromium."""
import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from melanoma.classifiers.train import train_classifier
from melanoma.evaluation.evaluate import evaluate_cell
from melanoma.evaluation.report import build_report
from tests.tiny import make_pack, tiny_params

ARCHS, DATASETS = ["ResNet", "ViT"], ["Original", "DCGAN"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    p = tiny_params(**{"classifiers.archs": ARCHS, "classifiers.datasets": DATASETS})
    for i, d in enumerate(DATASETS):  # same val/test images in both, different training images
        make_pack(root / "data/datasets" / d, n_train=(24, 12 + 6 * i), seed=0, n_external=(5, 4))
    for a in ARCHS:
        for d in DATASETS:
            train_classifier(a, d, p, root / "data/datasets" / d, root / f"models/{a}/{a}_{d}",
                             root / f"ck/{a}_{d}", log=lambda s: None)
            evaluate_cell(a, d, p, root / f"models/{a}/{a}_{d}", root / "data/datasets" / d,
                          root / f"results/evaluation/{a}/{a}_{d}")
    (root / "data/splits").mkdir(parents=True)
    (root / "data/splits/split_report.json").write_text(json.dumps(
        {"counts": {"train": {"benign": 24, "malignant": 12}, "val": {"benign": 8, "malignant": 8},
                    "test": {"benign": 10, "malignant": 6}}, "images": 70, "groups": 68,
         "grouping_keys": ["md5", "near_duplicate", "patient_id"], "merges": {"md5": 0, "patient_id": 1},
         "conflicting_labels": {"policy": "drop", "groups": 1, "images_dropped": 2, "listing": []}}))
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/dataset_card.json").write_text(json.dumps(
        {"format": "isic2019", "label_mapping": [
            {"diagnosis": "melanoma", "label": "malignant", "listed": 18, "stored": 18},
            {"diagnosis": "basal_cell_carcinoma", "label": "reject", "listed": 3, "stored": 0}],
         "rejected": {"not an image (unrecognised format)": 1},
         "excluded": {"diagnosis 'basal_cell_carcinoma' is excluded by data.label_map": 3},
         "skipped": {"licence, attribution or readme file": 2},
         "metadata": {"age": 70, "sex": 70, "site": 0, "lesion_id": 0, "patient_id": 70}}))
    (root / "data/datasets/Original/stats.json").write_text(json.dumps({"image_size": 16}))
    build_report(p, root / "results/evaluation", root / "results", root / "data/synthetic", root / "data/datasets",
                 root / "data/splits", root / "data/raw")
    return root


def test_evaluate_writes_predictions_metrics_and_gradcam(project):
    cell = project / "results/evaluation/ViT/ViT_Original"
    m = json.loads((cell / "metrics.json").read_text())
    assert m["threshold_rule"] == "youden" and 0 <= m["threshold"] <= 1
    assert m["test"]["n"] == 16 and m["test"]["n_malignant"] == 6 and m["val"]["n"] == 16
    assert m["external_test"]["n"] == 9 and m["external_test"]["n_malignant"] == 4  # scored at val's threshold too
    assert (cell / "predictions_external_test.csv").is_file() and (cell / "roc_external_test.csv").is_file()
    lo, hi = m["test"]["ci95"]["auroc"]
    assert lo <= m["test"]["auroc"] <= hi
    with open(cell / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"test{i}" for i in range(16)]
    assert all((float(r["p_malignant"]) >= m["threshold"]) == (r["predicted"] == "malignant") for r in rows)
    for f in ("roc_test.csv", "pr_test.csv", "calibration_test.csv", "confusion_test.png",
              "classification_report_test.txt", "predictions_val.csv"):
        assert (cell / f).is_file(), f
    assert "malignant" in (cell / "classification_report_test.txt").read_text()
    with open(cell / "gradcam/index.csv") as f:
        cams = list(csv.DictReader(f))
    assert cams and all((cell / "gradcam" / r["file"]).is_file() for r in cams)
    assert {r["group"] for r in cams} <= {"true_positive", "false_negative", "false_positive", "true_negative"}
    # each GradCAM image is explained for its true label
    labels = {r["id"]: r["label"] for r in rows}
    assert all(labels[r["id"]] == r["label"] for r in cams)


def test_grid_metrics_and_comparisons(project):
    with open(project / "results/grid.csv") as f:
        grid = list(csv.DictReader(f))
    cells = [(r["arch"], r["dataset"], r["split"]) for r in grid if r["arch"] != "baseline"]
    assert cells == [(a, d, s) for a in ARCHS for d in DATASETS for s in ("test", "external_test")]
    base = {(r["dataset"], r["split"]): r for r in grid if r["arch"] == "baseline"}
    for s, n in (("test", 16), ("external_test", 9)):  # each on its own images
        assert float(base["all-malignant", s]["sensitivity"]) == 1.0
        assert float(base["all-malignant", s]["specificity"]) == 0 and float(base["prevalence", s]["auroc"]) == 0.5
        assert sum(int(base["prevalence", s][k]) for k in ("tp", "fn", "fp", "tn")) == n
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert set(metrics) == {f"{a}_{d}" for a in ARCHS for d in DATASETS}
    five = {"auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity"}
    assert set(metrics["ResNet_Original"]) == five | {"external_test"}  # test's, the external set's nested
    assert set(metrics["ResNet_Original"]["external_test"]) == five
    cell = json.loads((project / "results/evaluation/ResNet/ResNet_Original/metrics.json").read_text())
    assert metrics["ResNet_Original"]["external_test"]["auroc"] == round(cell["external_test"]["auroc"], 6)
    assert metrics["ResNet_Original"]["auroc"] == round(cell["test"]["auroc"], 6)
    with open(project / "results/report/comparisons.csv") as f:
        comps = list(csv.DictReader(f))
    assert [(c["arch"], c["dataset"]) for c in comps] == [("ResNet", "DCGAN"), ("ViT", "DCGAN")]
    for c in comps:
        lo, hi = float(c["ci_low"]), float(c["ci_high"])
        assert c["verdict"].startswith("no evidence") == (lo <= 0 <= hi)
        assert np.isclose(float(c["difference"]), float(c["auroc"]) - float(c["auroc_original"]))


def test_report_page_is_self_contained(project):
    page = (project / "results/report.html").read_text()
    assert 'id="grid"' in page and page.count("<tr>") >= 4 + 2
    assert page.count("<td>external_test</td>") == 4 + 2  # every cell and both baselines on the external set
    assert "src='data:image/png;base64," in page and "src='http" not in page and 'src="http' not in page


def test_report_says_what_data_went_in(project):
    page = (project / "results/report.html").read_text()
    assert "<h3>Source: isic2019</h3>" in page and 'id="label_mapping"' in page
    assert "<td>basal_cell_carcinoma</td><td>reject</td><td>3</td><td>0</td>" in page
    assert "excluded by data.label_map</td><td>3</td>" in page
    assert "Grouping keys: md5, near_duplicate, patient_id" in page and "2 images in 1 images or lesions" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_headless_chromium_without_broken_images(project):
    browser = _chromium()
    if not browser:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    p = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                        "--dump-dom", (project / "results/report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    dom = p.stdout
    assert '<table id="grid">' in dom, p.stderr[-2000:]
    assert 'data-broken-images="0"' in dom
    n = int(dom.split('data-images="')[1].split('"')[0])
    assert n >= 1 + 2 + 4  # heatmap, ROC per arch, GradCAM images
