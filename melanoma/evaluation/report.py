"""The `report` stage: the grid in one table, paired comparisons against Original, baselines, one HTML page.

Inputs are the evaluate outputs of every cell in params' `classifiers.archs` x `classifiers.datasets`, the
generator quality metrics, the synthetic shards, the upscaler metrics and the split/dataset summaries. Outputs:
`results/grid.csv`, `results/metrics.json` (cells as keys, for `dvc metrics show/diff`), `results/report/`
(heatmap, ROC per arch, comparisons.csv) and `results/report.html`, a single self-contained page (images inlined).
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from melanoma.errors import MelanomaError
from melanoma.evaluation.metrics import auroc, paired_auroc_difference, point_metrics
from melanoma.io import read_csv, write_csv
from melanoma.params import GENERATORS
from melanoma.paths import CARD

CI_METRICS = ("auroc", "balanced_accuracy", "sensitivity", "specificity")
HELD_OUT = ("test", "external_test")  # what evaluate scores besides val; external_test where the source has one
DVC_METRICS = ("auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity")
COLUMNS = ["arch", "dataset", "split", "model", "threshold", "auroc", "auroc_ci_low", "auroc_ci_high", "auprc",
           "accuracy", "balanced_accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "sensitivity",
           "sensitivity_ci_low", "sensitivity_ci_high", "specificity", "specificity_ci_low", "specificity_ci_high",
           "precision", "f1", "mcc", "brier", "ece", "tp", "fn", "fp", "tn"]


class ReportError(MelanomaError):
    """An input of the report is missing (names the stage to run)."""


def _load(evaluation: Path, arch: str, dataset: str) -> dict[str, Any]:
    path = evaluation / arch / f"{arch}_{dataset}" / "metrics.json"
    if not path.is_file():
        raise ReportError(f"{path} is missing; run `dvc repro evaluate@{arch}`")
    return json.loads(path.read_text())


def _row(arch: str, dataset: str, split: str, model: str, m: dict[str, Any]) -> dict[str, Any]:
    row = {"arch": arch, "dataset": dataset, "split": split, "model": model, **{k: m[k] for k in COLUMNS if k in m},
           **m["confusion"]}
    for k in CI_METRICS:
        lo, hi = m.get("ci95", {}).get(k, (None, None))
        row[f"{k}_ci_low"], row[f"{k}_ci_high"] = lo, hi
    return row


def _predictions(evaluation: Path, arch: str, dataset: str,
                 split: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = read_csv(evaluation / arch / f"{arch}_{dataset}" / f"predictions_{split}.csv")
    return ([r["id"] for r in rows], np.array([r["label"] == "malignant" for r in rows], dtype=int),
            np.array([float(r["p_malignant"]) for r in rows]))


def comparisons(evaluation: Path, archs: list[str], datasets: list[str], n: int, seed: int) -> list[dict[str, Any]]:
    """Each augmented dataset vs Original for the same arch: paired bootstrap of the AUROC difference."""
    out = []
    if "Original" not in datasets:
        return out
    for arch in archs:
        ids, y, base = _predictions(evaluation, arch, "Original")
        for d in datasets:
            if d == "Original":
                continue
            ids_d, y_d, p = _predictions(evaluation, arch, d)
            if ids_d != ids:
                raise ReportError(f"test predictions of {arch}_{d} and {arch}_Original are not on the same images; "
                                  "rerun build_dataset and evaluate")
            r = paired_auroc_difference(y, p, base, n, seed)
            if r["ci_low"] > 0:
                verdict = "improvement (CI above 0)"
            elif r["ci_high"] < 0:
                verdict = "worse than Original (CI below 0)"
            else:
                verdict = "no evidence of a difference (CI contains 0)"
            out.append({"arch": arch, "dataset": d, "auroc": auroc(y, p), "auroc_original": auroc(y, base),
                        "difference": r["difference"],
                        "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_value": r["p_value"], "verdict": verdict})
    return out


def baselines(y: np.ndarray, prevalence: float, split: str = "test") -> list[dict[str, Any]]:
    """Trivial rules on the same held-out images: everything malignant, and a constant P = train prevalence."""
    return [_row("baseline", "all-malignant", split, "P(malignant) = 1 for every image",
                 point_metrics(y, np.ones(len(y)), 0.5)),
            _row("baseline", "prevalence", split, f"P(malignant) = {prevalence:.3f} (train prevalence), threshold 0.5",
                 point_metrics(y, np.full(len(y), prevalence), 0.5))]


# ---------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(rows: list[dict[str, Any]], archs: list[str], datasets: list[str], path: Path) -> None:
    plt = _plt()
    m = np.array([[next(r["auroc"] for r in rows if r["arch"] == a and r["dataset"] == d) for d in datasets]
                  for a in archs])
    fig, ax = plt.subplots(figsize=(1.4 * len(datasets) + 2, 0.5 * len(archs) + 1.5), dpi=100)
    im = ax.imshow(m, cmap="viridis", vmin=min(0.5, m.min()), vmax=1.0)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white" if v < (m.min() + 1) / 2 else "black")
    ax.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right")
    ax.set_yticks(range(len(archs)), archs)
    ax.set_title("test AUROC")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def roc_figure(evaluation: Path, arch: str, datasets: list[str], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=100)
    for d in datasets:
        c = read_csv(evaluation / arch / f"{arch}_{d}" / "roc_test.csv")
        ax.plot([float(r["fpr"]) for r in c], [float(r["tpr"]) for r in c], label=d, lw=1.3)
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{arch}: test ROC per dataset")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _array_uri(pixels: np.ndarray, scale: int = 2) -> str:
    from PIL import Image

    if scale > 1:
        pixels = np.kron(pixels, np.ones((scale, scale, 1), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return _png_uri(buf.getvalue())


def sample_sheet(shard: Path, n: int = 16, cols: int = 8) -> np.ndarray:
    images = np.load(shard, mmap_mode="r")[:n]
    rows = -(-len(images) // cols)
    h, w = images.shape[1:3]
    canvas = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, im in enumerate(images):
        canvas[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return canvas


# ---------------------------------------------------------------- the page

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape("" if v is None else str(v))


def _table(rows: list[dict[str, Any]], cols: list[str], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(r: dict[str, Any], k: str) -> str:
    lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
    return f"{r[k]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}
.gallery img{margin:2px;border:1px solid #ddd}.note{color:#555;font-size:13px}h2{border-bottom:1px solid #ddd}"""
CHECK = """<script>window.addEventListener('load',function(){var b=0;for(const i of document.images){
if(!i.complete||i.naturalWidth===0)b++}document.body.dataset.brokenImages=b;document.body.dataset.images=
document.images.length;});</script>"""


def write_html(path: Path, ctx: dict[str, Any]) -> None:
    grid = ctx["grid"]
    display = [{"arch": r["arch"], "dataset": r["dataset"], "split": r["split"], "model": r["model"],
                **{k: _ci(r, k) for k in CI_METRICS}, "auprc": r["auprc"], "f1": r["f1"], "mcc": r["mcc"],
                "brier": r["brier"], "ece": r["ece"], "threshold": r["threshold"]} for r in grid]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>melanoma-synth report</title>"
             f"<style>{STYLE}</style>{CHECK}</head><body>",
             "<h1>Does synthetic augmentation help melanoma classifiers?</h1>",
             f"<p class='note'>{html.escape(ctx['profile'])}. Metrics on the real <b>test</b> split (and, where the "
             "source has one, the <b>external test</b> set: rows with split external_test); the decision threshold "
             "was chosen on val and applied unchanged; [95 % stratified bootstrap CI]. Research use only, not a "
             "medical device.</p>",
             "<h2>Data and split</h2>", _table(ctx["split_rows"], ["split", "benign", "malignant"], "split"),
             f"<p class='note'>{html.escape(ctx['split_note'])}</p>", *_data_section(ctx["card"], ctx["split"]),
             "<h2>The grid</h2>",
             _table(display, ["arch", "dataset", "split", "model", "auroc", "balanced_accuracy", "sensitivity",
                              "specificity", "auprc", "f1", "mcc", "brier", "ece", "threshold"], "grid"),
             f"<img alt='AUROC heatmap' src='{_png_uri(ctx['heatmap'])}'>",
             "<h2>Augmented vs Original (same arch, same test images)</h2>",
             _table(ctx["comparisons"], ["arch", "dataset", "auroc", "auroc_original", "difference", "ci_low",
                                         "ci_high", "p_value", "verdict"], "comparisons"),
             "<h2>Trivial baselines</h2>",
             _table(ctx["baselines"], ["dataset", "split", "model", "auroc", "balanced_accuracy", "sensitivity",
                                       "specificity", "brier"], "baselines"),
             "<h2>ROC curves per architecture</h2>",
             "".join(f"<img alt='ROC {html.escape(a)}' src='{_png_uri(b)}'>" for a, b in ctx["rocs"].items()),
             "<h2>Generators</h2>", _table(ctx["generator_rows"], list(ctx["generator_rows"][0]) if
                                             ctx["generator_rows"] else [], "generators"),
             "<p class='note'>C2ST AUROC: a classifier telling real from synthetic (0.5 = indistinguishable). "
             "Memorised: synthetic images closer to one real image than a third of the way to the next.</p>"]
    for name, uri in ctx["samples"].items():
        parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='{uri}'>")
    if ctx["upscaler"]:
        parts += ["<h2>Super-resolution</h2>", _table([ctx["upscaler"]], list(ctx["upscaler"]), "upscaler")]
    parts.append("<h2>GradCAM (test images, explained for their true label)</h2>")
    for cell, images in ctx["gradcam"].items():
        parts.append(f"<h3>{html.escape(cell)}</h3><div class='gallery'>" + "".join(
            f"<img title='{html.escape(t)}' alt='{html.escape(t)}' src='{u}'>" for t, u in images) + "</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))


def _data_section(card: dict[str, Any], sr: dict[str, Any]) -> list[str]:
    """What a reviewer asks first: the source format, how each diagnosis was labelled, what was refused or
    skipped and why, the grouping keys, and the metadata available (fetch's dataset_card.json, the split report)."""
    def counts(d: dict[str, int], what: str) -> str:
        return _table([{what: k, "files": v} for k, v in list(d.items())[:12]], [what, "files"]) if d else \
            f"<p class='note'>none {html.escape(what.split()[0])}</p>"

    c = sr["conflicting_labels"]
    meta = ", ".join(f"{k} {v}" for k, v in card["metadata"].items())
    return [f"<h3>Source: {html.escape(card['format'])}</h3>",
            _table(card["label_mapping"], ["diagnosis", "label", "listed", "stored"], "label_mapping"),
            "<p class='note'>Label mapping (data.label_map): images per original diagnosis, the label it became "
            "(reject: excluded by the study's label map; unknown: not in the map), how many the source listed and "
            "how many were stored after decoding.</p>",
            "<h3>Rejected files by reason</h3>", counts(card["rejected"], "rejected reason"),
            "<h3>Excluded on purpose (data.label_map)</h3>", counts(card["excluded"], "excluded reason"),
            "<h3>Skipped non-lesion files by reason</h3>", counts(card["skipped"], "skipped reason"),
            f"<p class='note'>Grouping keys: {html.escape(', '.join(sr['grouping_keys']))}; merges per key: "
            f"{html.escape(', '.join(f'{k} {v}' for k, v in sr['merges'].items()))}. {c['images_dropped']} images "
            f"in {c['groups']} images or lesions labelled both ways were {'dropped' if c['policy'] == 'drop' else 'refused'}"
            f". Images carrying each metadata column: {html.escape(meta)}.</p>"]


def _metrics_json(grid: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The test metrics per cell for `dvc metrics`; the external test set's nested beside them."""
    metrics: dict[str, dict[str, Any]] = {}
    for r in grid:
        values = {k: round(r[k], 6) for k in DVC_METRICS}
        cell = metrics.setdefault(f"{r['arch']}_{r['dataset']}", {})
        if r["split"] == "test":
            cell.update(values)
        else:
            cell[r["split"]] = values
    return metrics


def _generator_section(results: Path, synthetic: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each generator's quality row, and contact sheets (data URIs) of every non-empty synthetic shard."""
    rows, samples = [], {}
    for gen in GENERATORS:
        q = results / "generators" / gen / "quality.json"
        if q.is_file():
            for label, m in json.loads(q.read_text()).items():
                rows.append({"generator": gen, "class": label, "c2st_auroc": m["c2st_auc"],
                             "memorised_fraction": m["memorised_fraction"],
                             "diversity_ratio": m["diversity_ratio"], "fid": m["fid"]})
        for variant in (gen, f"{gen}_upscaled"):
            for label in ("malignant", "benign"):
                shard = synthetic / variant / f"{label}.npy"
                if shard.is_file() and np.load(shard, mmap_mode="r").shape[0]:
                    samples[f"{variant} {label} (first 16 synthetic images)"] = _array_uri(sample_sheet(shard))
    return rows, samples


def _gradcam_section(evaluation: Path, cells: Iterable[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Per cell: (caption, PNG data URI) of each GradCAM overlay evaluate wrote."""
    out = {}
    for (a, d) in cells:
        folder = evaluation / a / f"{a}_{d}" / "gradcam"
        out[f"{a}_{d}"] = [(f"{r['group']} {r['id']} P={r['p_malignant']}", _png_uri((folder / r["file"]).read_bytes()))
                           for r in read_csv(folder / "index.csv")]
    return out


def build_report(params: dict[str, Any], evaluation: Path, results: Path, synthetic: Path, datasets_dir: Path,
                 splits: Path, raw: Path) -> dict[str, Any]:
    """Write grid.csv, metrics.json, report/ and report.html under `results`; returns {cells, comparisons}.

    Raises ReportError (a cell's evaluation missing) or MetricError.
    """
    archs, datasets = params["classifiers"]["archs"], params["classifiers"]["datasets"]
    ep = params["evaluate"]
    cells = {(a, d): _load(evaluation, a, d) for a in archs for d in datasets}
    held_out = [s for s in HELD_OUT if s in cells[archs[0], datasets[0]]]  # every cell has the same splits
    grid = [_row(a, d, s, m["model"], {**m[s], "threshold": m["threshold"]}) for (a, d), m in cells.items()
            for s in held_out]
    sr = json.loads((splits / "split_report.json").read_text())
    train = sr["counts"]["train"]
    prevalence = train["malignant"] / (train["benign"] + train["malignant"])
    base = []
    for s in held_out:  # the trivial rules, on the same images as the cells
        base += baselines(_predictions(evaluation, archs[0], datasets[0], s)[1], prevalence, s)
    comps = comparisons(evaluation, archs, datasets, ep["bootstrap"], ep["seed"])
    report_dir = results / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    write_csv(results / "grid.csv", grid + base, COLUMNS)
    write_csv(report_dir / "comparisons.csv", comps, ["arch", "dataset", "auroc", "auroc_original", "difference",
                                                      "ci_low", "ci_high", "p_value", "verdict"])
    (results / "metrics.json").write_text(json.dumps(_metrics_json(grid), indent=2) + "\n")
    heatmap([r for r in grid if r["split"] == "test"], archs, datasets, report_dir / "auroc_heatmap.png")
    for a in archs:
        roc_figure(evaluation, a, datasets, report_dir / f"roc_{a}.png")
    generator_rows, samples = _generator_section(results, synthetic)
    up = results / "upscaler" / "metrics.json"
    stats = json.loads((datasets_dir / datasets[0] / "stats.json").read_text())
    ctx = {"grid": grid, "baselines": base, "comparisons": comps, "generator_rows": generator_rows,
           "samples": samples, "upscaler": json.loads(up.read_text()) if up.is_file() else None,
           "gradcam": _gradcam_section(evaluation, cells),
           "heatmap": (report_dir / "auroc_heatmap.png").read_bytes(),
           "rocs": {a: (report_dir / f"roc_{a}.png").read_bytes() for a in archs},
           "split_rows": [{"split": s, **c} for s, c in sr["counts"].items()],
           "card": json.loads((raw / CARD).read_text()), "split": sr,
           "split_note": f"{sr['images']} images in {sr['groups']} groups (duplicates, flipped or rotated copies, "
                         f"photographs of one lesion and lesions of one patient kept in one split); classifier "
                         f"input {stats['image_size']} px.",
           "profile": f"Data source: {params['data']['source']}; {len(archs)} architectures x {len(datasets)} datasets"}
    write_html(results / "report.html", ctx)
    return {"cells": len(cells), "comparisons": comps}
