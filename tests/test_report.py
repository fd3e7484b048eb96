"""evaluate + report on tiny trained cells (no DVC): files, threshold from val, the grid, the page in Chromium."""

import csv
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from melanoma.classifiers.train import train_classifier
from melanoma.evaluation.baseline import run_baseline
from melanoma.evaluation.evaluate import evaluate_cell
from melanoma.evaluation.report import COMPARISON_COLUMNS, _fmt, build_report, external_source
from melanoma.params import passes
from tests.browser import chromium, ink, render
from tests.tiny import make_pack, tiny_params

ARCHS, DATASETS = ["ResNet", "ViT"], ["Original", "DCGAN"]


def write_context(root: Path, image_size: int = 16) -> None:
    """The inputs the report reads besides evaluations: split report, dataset card, the input size."""
    (root / "data/splits").mkdir(parents=True, exist_ok=True)
    (root / "data/splits/split_report.json").write_text(
        json.dumps(
            {
                "counts": {
                    "train": {"benign": 24, "malignant": 12},
                    "val": {"benign": 8, "malignant": 8},
                    "test": {"benign": 10, "malignant": 6},
                },
                "images": 70,
                "groups": 68,
                "grouping_keys": ["md5", "near_duplicate", "patient_id"],
                "merges": {"md5": 0, "patient_id": 1},
                "conflicting_labels": {"policy": "drop", "groups": 1, "images_dropped": 2, "listing": []},
            }
        )
    )
    (root / "data/raw").mkdir(parents=True, exist_ok=True)
    (root / "data/raw/dataset_card.json").write_text(
        json.dumps(
            {
                "format": "isic2019",
                "label_mapping": [
                    {"diagnosis": "melanoma", "label": "malignant", "listed": 18, "stored": 18},
                    {"diagnosis": "basal_cell_carcinoma", "label": "reject", "listed": 3, "stored": 0},
                ],
                "rejected": {"not an image (unrecognised format)": 1},
                "excluded": {"diagnosis 'basal_cell_carcinoma' is excluded by data.label_map": 3},
                "skipped": {"licence, attribution or readme file": 2},
                "metadata": {"age": 70, "sex": 70, "site": 0, "lesion_id": 0, "patient_id": 70},
            }
        )
    )
    stats = root / "data/datasets/Original/stats.json"
    stats.write_text(json.dumps({**json.loads(stats.read_text()), "image_size": image_size}))


def train_and_evaluate(root: Path, p: dict, archs: list[str], datasets: list[str]) -> None:
    for a in archs:
        for d in datasets:
            train_classifier(
                a,
                d,
                p,
                root / "data/datasets" / d,
                root / f"models/{a}/{a}_{d}",
                root / f"ck/{a}_{d}",
                log=lambda s: None,
            )
            evaluate_cell(
                a,
                d,
                p,
                root / f"models/{a}/{a}_{d}",
                root / "data/datasets" / d,
                root / f"results/evaluation/{a}/{a}_{d}",
            )
    run_baseline(p, root / "data/datasets/Original", root / "results/evaluation/Baseline/Baseline_Original")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    p = tiny_params(**{"classifiers.archs": ARCHS, "classifiers.datasets": DATASETS})
    for i, d in enumerate(DATASETS):  # same val/test images in both, different training images
        make_pack(
            root / "data/datasets" / d, n_train=(24, 12 + 6 * i), seed=0, n_external=(5, 4), n_synthetic=(0, 6 * i)
        )
    train_and_evaluate(root, p, ARCHS, DATASETS)
    write_context(root)
    build_report(
        p,
        root / "results/evaluation",
        root / "results",
        root / "data/synthetic",
        root / "data/datasets",
        root / "data/splits",
        root / "data/raw",
    )
    return root


def test_evaluate_writes_every_seed_and_the_packaged_seeds_files(project):
    cell = project / "results/evaluation/ViT/ViT_Original"
    m = json.loads((cell / "metrics.json").read_text())
    assert m["seeds"] == [0, 1] and m["seed"] in (0, 1)
    assert m["threshold_rule"] == "youden" and m["threshold"] == m["per_seed"][str(m["seed"])]["threshold"]
    assert m["test"]["n"] == 16 and m["test"]["n_malignant"] == 6 and m["val"]["n"] == 16
    assert m["external_test"]["n"] == 9 and m["external_test"]["n_malignant"] == 4  # scored at val's threshold too
    assert m["training"]["0"]["steps_run"] == m["training"]["1"]["steps_run"] == 8
    best = max(m["seeds"], key=lambda k: (m["training"][str(k)]["val_auroc"], -k))
    assert m["seed"] == best  # packaged: the best val AUROC, never test
    over = m["over_seeds"]["test"]["auroc"]
    per_seed = [m["per_seed"][str(k)]["test"]["auroc"] for k in (0, 1)]
    assert over["mean"] == pytest.approx(np.mean(per_seed)) and over["sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert over["ci95"][0] <= over["mean"] <= over["ci95"][1]
    for k in (0, 1):
        with open(cell / f"seed_{k}/predictions_test.csv") as f:
            rows = list(csv.DictReader(f))
        thr = m["per_seed"][str(k)]["threshold"]
        assert [r["id"] for r in rows] == [f"test{i}" for i in range(16)]
        assert all((float(r["p_malignant"]) >= thr) == (r["predicted"] == "malignant") for r in rows)
        assert (cell / f"seed_{k}/predictions_external_test.csv").is_file()
    for f in (
        "roc_test.csv",
        "pr_test.csv",
        "calibration_test.csv",
        "confusion_test.png",
        "roc_external_test.csv",
        "classification_report_test.txt",
    ):
        assert (cell / f).is_file(), f
    assert "malignant" in (cell / "classification_report_test.txt").read_text()
    with open(cell / "gradcam/index.csv") as f:
        cams = list(csv.DictReader(f))
    assert cams and all((cell / "gradcam" / r["file"]).is_file() for r in cams)
    assert {r["group"] for r in cams} <= {"true_positive", "false_negative", "false_positive", "true_negative"}
    labels = {r["id"]: r["label"] for r in rows}  # each GradCAM image is explained for its true label
    assert all(labels[r["id"]] == r["label"] for r in cams)
    assert {r["layer"] for r in cams} == {"blocks.0.norm1 (4 x 4 cells at 16 px)"}  # the tiny ViT's patch grid


def test_grid_metrics_and_comparisons(project):
    with open(project / "results/grid.csv") as f:
        grid = list(csv.DictReader(f))
    cells = [(r["arch"], r["dataset"], r["split"]) for r in grid if r["arch"] not in ("rule", "Baseline")]
    assert cells == [(a, d, s) for a in ARCHS for d in DATASETS for s in ("test", "external_test")]
    assert all(r["seeds"] == "2" and r["auroc_sd"] != "" for r in grid if r["arch"] in ARCHS)
    base = {(r["dataset"], r["split"]): r for r in grid if r["arch"] == "rule"}
    assert all(r["auroc_sd"] == "" for r in grid if r["arch"] in ("rule", "Baseline"))  # one run: no sd, not 0
    for s in ("test", "external_test"):  # each on its own images
        assert float(base["all-malignant", s]["sensitivity"]) == 1.0
        assert float(base["all-malignant", s]["specificity"]) == 0 and float(base["prevalence", s]["auroc"]) == 0.5
    features = [r for r in grid if r["arch"] == "Baseline"]
    assert [r["split"] for r in features] == ["test", "external_test"] and "logistic regression" in features[0]["model"]
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert set(metrics) == {f"{a}_{d}" for a in ARCHS for d in DATASETS}
    five = {"auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity"}
    assert set(metrics["ResNet_Original"]) == five | {"auroc_sd", "external_test"}  # test's; external nested
    cell = json.loads((project / "results/evaluation/ResNet/ResNet_Original/metrics.json").read_text())
    assert metrics["ResNet_Original"]["auroc"] == round(cell["over_seeds"]["test"]["auroc"]["mean"], 6)
    with open(project / "results/report/comparisons.csv") as f:
        comps = list(csv.DictReader(f))
    assert [(c["arch"], c["dataset"], c["split"]) for c in comps] == [
        ("ResNet", "DCGAN", "test"),
        ("ViT", "DCGAN", "test"),
        ("ResNet", "DCGAN", "external_test"),
        ("ViT", "DCGAN", "external_test"),
        ("pooled", "DCGAN", "test"),
        ("pooled", "DCGAN", "external_test"),
    ]
    for c in comps:
        assert float(c["p_holm"]) >= float(c["p_value"])
        assert (c["verdict"] == "0") == (float(c["p_holm"]) >= 0.05)
    verdict = json.loads((project / "results/verdict.json").read_text())
    assert set(verdict["pooled"]["DCGAN"]) == {"test", "external_test"}
    assert set(verdict["comparisons"]) == {"ResNet_DCGAN", "ViT_DCGAN"}


def test_report_page_opens_with_the_verdict_and_is_self_contained(project):
    page = (project / "results/report.html").read_text()
    assert page.index("id='verdict'") < page.index('id="grid"') < page.index('id="comparisons"')
    assert "DCGAN vs Original: on the internal test split (16 images)" in page
    assert "Holm-adjusted p" in page and "alt='forest plot'" in page and "id='limitations'" in page
    assert "&thinsp;±&thinsp;" in page  # seed spread beside every grid number
    table = page.split('id="comparisons"')[1].split("</table>")[0]
    p_cols = [COMPARISON_COLUMNS.index("p_value"), COMPARISON_COLUMNS.index("p_holm")]
    for row in table.split("<tr>")[2:]:
        cells = row.split("<td>")[1:]
        assert all(cells[i].split("</td>")[0] != "0.000" for i in p_cols)  # a tiny p-value reads "< 0.001"
    assert "Data: the embedded simulator (synthetic lesion-like images, not real lesions)" in page
    assert "white-space:nowrap" in page  # nothing wraps by itself: a CI sits on its own second line
    assert page.count("<td>external_test</td>") >= 4 + 3  # every cell and all three baselines
    assert "src='data:image/png;base64," in page and "src='http" not in page and 'src="http' not in page
    gradcam = page.split("GradCAM")[-1]
    assert "src='data:image/jpeg;base64," in gradcam  # the overlays, re-encoded for size; the figures stay PNG


def test_report_says_the_training_sets_and_keeps_the_model_column_short(project):
    page = (project / "results/report.html").read_text()
    table = page.split('<table id="training-sets">')[1].split("</table>")[0]
    for d in DATASETS:
        stats = json.loads((project / "data/datasets" / d / "stats.json").read_text())["counts"]["train"]
        real = {c: stats[f"{c}/real"] for c in ("benign", "malignant")}
        made = {c: sum(n for k, n in stats.items() if k.startswith(f"{c}/") and not k.endswith("/real")) for c in real}
        total = sum(real.values()) + sum(made.values())
        row = table.split(f"<td>{d}</td>")[1].split("</tr>")[0]
        assert (
            f"<td>{total}</td>" in row and f"{real['malignant'] + made['malignant']} = {real['malignant']} real" in row
        )
        assert f"<td>{sum(made.values()) / total:.0%}</td>" in row  # the set's synthetic share
        assert f"<td>{passes(8 * 8, total)}</td>" in row  # 8 steps of 8 images over the set
    assert "<td>0%</td>" in table.split("<td>Original</td>")[1].split("</tr>")[0]
    grid = page.split('<table id="grid">')[1].split("</table>")[0]
    shown = re.sub(r"title='[^']*'", "", grid)  # what the page prints, tooltips aside
    assert "patch_size" not in shown and "{" not in shown and "kwargs" not in shown  # kwargs only in the tooltip
    assert "title='vit_tiny_patch16_224 {&quot;" in grid and ">vit_tiny_patch16_224&nbsp;&dagger;</span>" in grid
    assert "<br><span class='ci'>[" in grid


def test_the_report_sentences_match_its_own_grid(project):
    """Constructed grid (tiny cells, test and external test): the baseline sentence per split names exactly the
    cells below the baseline there, and the external sentence follows the two Original means (same source)."""
    from melanoma.evaluation import verdict as vd

    page = (project / "results/report.html").read_text()
    limits = [
        html.unescape(li)
        for li in page.split("<ul id='limitations'>")[1]
        .split("</ul>")[0]
        .removeprefix("<li>")
        .removesuffix("</li>")
        .split("</li><li>")
    ]
    with open(project / "results/grid.csv") as f:
        grid = list(csv.DictReader(f))
    means = {}
    for split in ("test", "external_test"):
        cells = [r for r in grid if r["split"] == split and r["arch"] in ARCHS]
        base = next(float(r["auroc"]) for r in grid if r["split"] == split and r["arch"] == "Baseline")
        below = [f"{r['arch']}_{r['dataset']}" for r in cells if float(r["auroc"]) <= base]
        assert vd.baseline_sentence(split, {"auroc": base, "cells": len(cells), "below": below}) in limits
        means[split] = np.mean([float(r["auroc"]) for r in cells if r["dataset"] == "Original"])
    said = vd.external_sentence(
        means["test"],
        means["external_test"],
        "unknown",
        "no release tables say where the external images and the training images come from",
    )
    assert said in limits and "is not known" in said and "domain shift (site" not in said


def test_the_external_set_differs_in_source_only_when_the_card_says_so():
    tables = [{"kind": "isic2019", "subset": "main"}, {"kind": "isic2016", "subset": "external_test"}]
    assert external_source({"tables": tables}) == (
        "other",
        "external set from the isic2016 tables, training data from isic2019",
    )
    same = [{"kind": "isic2018", "subset": "main"}, {"kind": "isic2018", "subset": "external_test"}]
    assert external_source({"tables": same})[0] == "same"  # a release's own test part
    mixed = [
        {"kind": "isic2016", "subset": "main"},
        {"kind": "isic2019", "subset": "main"},
        {"kind": "isic2016", "subset": "external_test"},
    ]
    assert external_source({"tables": mixed})[0] == "same"  # its release is among the training data's
    assert external_source({"tables": [], "format": "folders"})[0] == "unknown"  # train/ + test/ folders


def test_report_grid_fits_a_1280_px_screen(project, tmp_path):
    browser = _chromium()
    if not browser:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    p = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--window-size=1280,1000",
            f"--user-data-dir={tmp_path}",
            "--dump-dom",
            (project / "results/report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    width = int(p.stdout.split('data-grid-width="')[1].split('"')[0])
    assert 600 < width <= 1280, width


def test_p_values_are_never_printed_as_zero():
    assert _fmt(0.0, "p_holm") == "&lt; 0.001" and _fmt(0.0123, "p_value") == "0.012" and _fmt(0.0, "ci_low") == "0.000"


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
    p = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (project / "results/report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = p.stdout
    assert '<table id="grid">' in dom, p.stderr[-2000:]
    assert 'data-broken-images="0"' in dom
    n = int(dom.split('data-images="')[1].split('"')[0])
    assert n >= 1 + 1 + 2 + 4  # forest plot, heatmap, ROC per arch, GradCAM images


def test_report_screenshot_offline_shows_its_figures_not_only_text(project, tmp_path):
    if not chromium():
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    shot, dom = render(project / "results/report.html", tmp_path, size=(1280, 6000), budget_ms=5000)
    assert 'data-broken-images="0"' in dom, dom[-2000:]
    drawn = ink(shot)  # text and tables alone are grey on white: the figures bring the colour
    assert drawn["coloured"] > 0.004 and drawn["colours"] > 1000, drawn


def _rebuild(project: Path, tmp_path: Path, edit) -> tuple[Path, str]:
    """A copy of the reported project, edited, reported again: (its root, the error message)."""
    root = tmp_path / "copy"
    shutil.copytree(project, root)
    before = (root / "results/report.html").read_bytes()
    edit(root / "results/evaluation")
    p = tiny_params(**{"classifiers.archs": ARCHS, "classifiers.datasets": DATASETS})
    with pytest.raises(Exception) as e:
        build_report(
            p,
            root / "results/evaluation",
            root / "results",
            root / "data/synthetic",
            root / "data/datasets",
            root / "data/splits",
            root / "data/raw",
        )
    assert type(e.value).__name__ in ("ReportError", "VerdictError"), e.value
    assert (root / "results/report.html").read_bytes() == before  # nothing half-written: the old report stays
    assert not list((root / "results").glob(".*.tmp"))
    return root, str(e.value)


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path) as f:
        r = csv.DictReader(f)
        return list(r.fieldnames or []), list(r)


def _rewrite(path: Path, change) -> None:
    cols, rows = _rows(path)
    rows = change(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("reversed_rows", "ViT_Original and ResNet_Original were not scored on the same test images"),
        ("nan", "p_malignant must be numbers in [0, 1]"),
        ("stale", "does not give the AUROC"),
        ("seed_order", "was evaluated with seeds [1, 0] but"),
        ("missing_predictions", "predictions_test.csv"),
        ("bad_json", "metrics.json is missing or unreadable (JSONDecodeError)"),
        ("missing_roc", "roc_test.csv is missing; run `dvc repro evaluate@ViT`"),
        ("no_external", "has no external_test results but other cells do"),
    ],
)
def test_inconsistent_evaluations_are_one_error_and_leave_the_old_report(project, tmp_path, case, needle):
    def edit(ev: Path) -> None:
        vit = ev / "ViT/ViT_Original"
        if case == "reversed_rows":  # every seed of one arch, consistently: only the cross-arch check sees it
            for k in (0, 1):
                for split in ("test", "external_test"):
                    _rewrite(vit / f"seed_{k}/predictions_{split}.csv", lambda rows: rows[::-1])
        elif case == "nan":
            _rewrite(vit / "seed_0/predictions_test.csv", lambda rows: [{**r, "p_malignant": "nan"} for r in rows])
        elif case == "stale":
            _rewrite(
                vit / "seed_0/predictions_test.csv",  # edited to an inverted ranking: AUROC 0, unlike the record
                lambda rows: [{**r, "p_malignant": str(float(r["label"] == "benign"))} for r in rows],
            )
        elif case == "seed_order":
            m = json.loads((ev / "ViT/ViT_DCGAN/metrics.json").read_text())
            (ev / "ViT/ViT_DCGAN/metrics.json").write_text(json.dumps({**m, "seeds": [1, 0]}))
        elif case == "missing_predictions":
            (ev / "ResNet/ResNet_DCGAN/seed_1/predictions_test.csv").unlink()
        elif case == "bad_json":
            (ev / "ResNet/ResNet_DCGAN/metrics.json").write_text('{"seeds": [0, ')
        elif case == "missing_roc":
            (vit / "roc_test.csv").unlink()
        elif case == "no_external":
            m = json.loads((vit / "metrics.json").read_text())
            del m["external_test"], m["over_seeds"]["external_test"]
            (vit / "metrics.json").write_text(json.dumps(m))

    _, message = _rebuild(project, tmp_path, edit)
    assert needle in message and "\n" not in message, message


def test_dvc_metrics_rows_are_cells_and_pooled_datasets_with_the_same_few_keys(project):
    cells = {p.stem: json.loads(p.read_text()) for p in (project / "results/cells").glob("*.json")}
    assert set(cells) == {f"{a}_{d}" for a in ARCHS for d in DATASETS} | {"Baseline_Original"}
    assert {tuple(sorted(v)) for k, v in cells.items() if k != "Baseline_Original"} == {
        ("auroc", "auroc_sd", "external_auroc", "sensitivity", "specificity")
    }
    assert sorted(cells["Baseline_Original"]) == ["auroc", "external_auroc", "sensitivity", "specificity"]  # one run
    grid = {(r["arch"], r["dataset"], r["split"]): r for r in _rows(project / "results/grid.csv")[1]}
    assert cells["ViT_DCGAN"]["auroc"] == round(float(grid["ViT", "DCGAN", "test"]["auroc"]), 4)
    assert cells["ViT_DCGAN"]["external_auroc"] == round(float(grid["ViT", "DCGAN", "external_test"]["auroc"]), 4)
    pooled = {p.stem: json.loads(p.read_text()) for p in (project / "results/pooled").glob("*.json")}
    assert set(pooled) == set(DATASETS) - {"Original"}
    verdict = json.loads((project / "results/verdict.json").read_text())["pooled"]
    for d, row in pooled.items():
        assert sorted(row) == sorted(
            f"{p}{k}" for p in ("", "external_") for k in ("auroc_difference", "p_holm", "verdict")
        )
        assert row["verdict"] == verdict[d]["test"]["verdict"] and row["external_p_holm"] == round(
            verdict[d]["external_test"]["p_holm"], 4
        )


def test_the_report_shows_control_characters_in_names_escaped():
    """A path or name with a newline, an ANSI escape or a right-to-left override is shown escaped on the page."""
    from melanoma.evaluation.report import _esc

    shown = _esc("data/a\nb\x1b[31m\u202egnp.jpg<script>")
    assert shown == "data/a\\nb\\x1b[31m\\u202egnp.jpg&lt;script&gt;"
