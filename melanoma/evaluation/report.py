"""The `report` stage: the verdict first, then the grid (mean +- sd over seeds), baselines, one HTML page.

Inputs are the evaluate outputs of every cell in params' `classifiers.archs` x `classifiers.datasets` (every
seed's predictions), the baseline's, the generator quality metrics, the synthetic shards, the upscaler metrics
and the split/dataset summaries. Outputs: `results/grid.csv`, `results/cells/<Arch>_<Dataset>.json` and
`results/pooled/<Dataset>.json` (the rows of `dvc metrics show/diff`: a few keys each), `results/metrics.json`
(every metric of every cell and split) and `results/verdict.json` (pooled effects with CIs and per-comparison
verdicts), `results/report/` (forest plot, heatmap, ROC per arch, comparisons.csv) and `results/report.html`, a single
self-contained page (images inlined).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.errors import MelanomaError, printable
from melanoma.evaluation import subgroups as sg
from melanoma.evaluation import verdict as vd
from melanoma.evaluation.metrics import SEED_METRICS, point_metrics
from melanoma.io import atomic_dir, read_csv, staged_files, write_csv
from melanoma.params import GENERATORS, LABELS, passes
from melanoma.paths import BASELINE, CARD

CI_METRICS = ("auroc", "balanced_accuracy", "sensitivity", "specificity")
HELD_OUT = ("test", "external_test")  # what evaluate scores besides val; external_test where the source has one
DVC_METRICS = ("auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity")
# the page's grid: the metrics that fit a 1280 px screen beside the names (precision, F1 and MCC: grid.csv)
PAGE_METRICS = ("auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece")
# every metric is the mean over seeds, `_sd` its sd over seeds, `_ci_low/_ci_high` the seed x image 95 % CI
COLUMNS = [
    "arch",
    "dataset",
    "split",
    "model",
    "seeds",
    *[
        c
        for m in SEED_METRICS
        for c in ((m, f"{m}_sd", f"{m}_ci_low", f"{m}_ci_high") if m in CI_METRICS else (m, f"{m}_sd"))
    ],
]
COMPARISON_COLUMNS = [
    "arch",
    "dataset",
    "split",
    "archs",
    "seeds",
    "images",
    "resamples",
    "difference",
    "ci_low",
    "ci_high",
    "seed_sd",
    "p_value",
    "p_holm",
    "verdict",
]


def _esc(text: object, quote: bool = True) -> str:
    """HTML-escaped, with control and format characters shown as escapes (melanoma.errors.printable)."""
    return html.escape(printable(text), quote)


class ReportError(MelanomaError):
    """An input of the report is missing (names the stage to run)."""


def _load(evaluation: Path, arch: str, dataset: str, stage: str = "") -> dict[str, Any]:
    path = evaluation / arch / f"{arch}_{dataset}" / "metrics.json"
    m = _json(path, stage or f"evaluate@{arch}")
    if not isinstance(m, dict) or not {"over_seeds", "seeds", "subgroups"} <= set(m):
        raise ReportError(
            f"{path} predates per-seed or subgroup evaluation; run `dvc repro {stage or f'evaluate@{arch}'}`"
        )
    return m


def _row(arch: str, dataset: str, split: str, model: str, m: dict[str, Any]) -> dict[str, Any]:
    """One grid row from a cell's `over_seeds[split]` ({metric: {mean, sd, ci95?}})."""
    row: dict[str, Any] = {"arch": arch, "dataset": dataset, "split": split, "model": model}
    for k, v in m.items():
        row[k], row[f"{k}_sd"] = v["mean"], v["sd"]  # sd None: a single run (the baselines), not 0 variance
        if "ci95" in v:
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = v["ci95"]
    return row


def _constant_row(rule: str, split: str, model: str, y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """A trivial rule's row: arch "rule", dataset the rule's name; one deterministic run, so no sd and no CI."""
    m = point_metrics(y, p, 0.5)
    return {**_row("rule", rule, split, model, {k: {"mean": m[k], "sd": None} for k in SEED_METRICS}), "seeds": 1}


def baselines(y: np.ndarray, prevalence: float, split: str = "test") -> list[dict[str, Any]]:
    """Trivial rules on the same held-out images: everything malignant, and a constant P = train prevalence."""
    return [
        _constant_row("all-malignant", split, "P(malignant) = 1 for every image", y, np.ones(len(y))),
        _constant_row(
            "prevalence",
            split,
            f"P(malignant) = {prevalence:.3f} (train prevalence), threshold 0.5",
            y,
            np.full(len(y), prevalence),
        ),
    ]


# ---------------------------------------------------------------- figures


# results/report/subgroups.csv: compare_subgroups' rows, the group AUROCs flattened to point and CI columns
SUBGROUP_COLUMNS = [
    "dataset",
    "split",
    "attribute",
    "value",
    "worst_original",
    "worst_augmented",
    "n",
    "n_malignant",
    "n_benign",
    *[f"auroc_{w}{c}" for w in ("original", "augmented") for c in ("", "_ci_low", "_ci_high")],
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "verdict",
    "archs",
    "resamples",
]


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if not k.startswith("auroc_")}
    for w in ("original", "augmented"):
        if f"auroc_{w}" in r:
            out.update(zip((f"auroc_{w}{c}" for c in ("", "_ci_low", "_ci_high")), r[f"auroc_{w}"]))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(rows: list[dict[str, Any]], archs: list[str], datasets: list[str], splits: list[str], path: Path) -> None:
    """Mean AUROC over seeds, arch x dataset, one panel per held-out split (one colour scale for all)."""
    plt = _plt()
    ms = [
        np.array(
            [
                [
                    next(r["auroc"] for r in rows if r["arch"] == a and r["dataset"] == d and r["split"] == s)
                    for d in datasets
                ]
                for a in archs
            ]
        )
        for s in splits
    ]
    lo = min(0.5, *(m.min() for m in ms))
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=((1.4 * len(datasets) + 1.6) * len(splits) + 0.6, 0.5 * len(archs) + 1.5),
        dpi=100,
        squeeze=False,
    )
    for ax, s, m in zip(axes[0], splits, ms):
        im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=1.0)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white" if v < (lo + 1) / 2 else "black")
        ax.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right")
        ax.set_yticks(range(len(archs)), archs)
        ax.set_title(f"{s}: AUROC (mean over seeds)", fontsize=10)
    fig.colorbar(im, ax=list(axes[0]))
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
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
    ax.set_title(f"{arch}: test ROC per dataset (packaged seed)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def forest_plot(per_arch: list[dict[str, Any]], pooled: list[dict[str, Any]], path: Path) -> None:
    """AUROC difference vs Original with 95 % CIs: one panel per held-out split, per dataset a point per
    architecture and a diamond for the pooled effect (hollow when its Holm-adjusted p >= 0.05)."""
    plt = _plt()
    splits = list(dict.fromkeys(r["split"] for r in pooled))
    datasets = list(dict.fromkeys(r["dataset"] for r in pooled))
    archs = list(dict.fromkeys(r["arch"] for r in per_arch))
    n_rows = len(datasets) * (len(archs) + 2)
    fig, axes = plt.subplots(
        1, len(splits), figsize=(4.6 * len(splits) + 1.6, 0.19 * n_rows + 1.2), dpi=100, sharey=True, squeeze=False
    )
    labels: list[tuple[int, str]] = []
    for ax, split in zip(axes[0], splits):
        labels, y = [], 0
        for d in datasets:
            for r in [r for r in per_arch if r["split"] == split and r["dataset"] == d] + [
                r for r in pooled if r["split"] == split and r["dataset"] == d
            ]:
                pooled_row = r["arch"] == "pooled"
                colour = "C3" if r["verdict"] == -1 else "C2" if r["verdict"] == 1 else "C0"
                ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="black" if pooled_row else "grey", lw=1.2)
                ax.plot(
                    r["difference"],
                    y,
                    marker="D" if pooled_row else "o",
                    ms=7 if pooled_row else 4,
                    color=colour,
                    mfc="white" if pooled_row and r["verdict"] == 0 else colour,
                )
                labels.append((y, f"{d} pooled" if pooled_row else f"{d} {r['arch']}"))
                y += 1
            y += 1
        ax.axvline(0, color="black", lw=0.8, ls=":")
        ax.set_title(f"{split}: AUROC(augmented) - AUROC(Original)", fontsize=9)
        ax.set_xlabel("difference (mean over seeds, 95 % CI)", fontsize=8)
    axes[0][0].set_yticks([t for t, _ in labels], [name for _, name in labels], fontsize=7)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def subgroup_figure(rows: list[dict[str, Any]], split: str, path: Path) -> None:
    """Per-subgroup AUROC (pooled over architectures, 95 % CI) of Original and of each augmented dataset on
    `split`: one panel per attribute, the groups down the side, Original's worst group marked."""
    plt = _plt()
    rows = [r for r in rows if r["split"] == split and r["value"] != sg.WORST]
    attributes = list(dict.fromkeys(r["attribute"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    worst = sg.worst_groups(rows, split)
    n_groups = [len({r["value"] for r in rows if r["attribute"] == a}) for a in attributes]
    fig, axes = plt.subplots(
        len(attributes),
        1,
        figsize=(7.0, 0.28 * (len(datasets) + 1) * sum(n_groups) / 2 + 0.9 * len(attributes)),
        dpi=100,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": n_groups},
    )
    step = 0.8 / (len(datasets) + 1)
    for ax, a in zip(axes[:, 0], attributes):
        values = list(dict.fromkeys(r["value"] for r in rows if r["attribute"] == a))
        for i, v in enumerate(values):
            own = {r["dataset"]: r for r in rows if r["attribute"] == a and r["value"] == v}
            series = [("Original", own[datasets[0]]["auroc_original"])] + [
                (d, own[d]["auroc_augmented"]) for d in datasets if d in own
            ]
            for j, (name, (point, lo, hi)) in enumerate(series):
                y = i - 0.4 + step * (j + 0.5)
                colour = "black" if name == "Original" else f"C{datasets.index(name)}"
                ax.plot([lo, hi], [y, y], color=colour, lw=1.0)
                ax.plot(point, y, "o", color=colour, ms=4, label=name if i == 0 else None)
        names = [f"{v}  (worst)" if worst.get(a, {}).get("value") == v else v for v in values]
        ax.set_yticks(range(len(values)), names, fontsize=8)
        ax.set_ylim(len(values) - 0.5, -0.5)
        ax.set_title(sg.NAMES[a], fontsize=9, loc="left")
    axes[0][0].legend(fontsize=7, ncol=len(datasets) + 1, loc="lower left", bbox_to_anchor=(0, 1.12))
    axes[-1][0].set_xlabel(f"{split} AUROC, mean over architectures and seeds (95 % CI)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


OVERLAY_JPEG_QUALITY = 85  # a 224 px overlay: ~1/5 of its PNG's bytes (30 cells x 8 overlays stay a few MB)


def _jpeg_uri(png: bytes) -> str:
    """A GradCAM overlay (PNG bytes, as evaluate wrote it) as a JPEG data URI: photographs compress ~5x better as
    JPEG, and the report embeds every cell's overlays."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, "JPEG", quality=OVERLAY_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


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
        canvas[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = im
    return canvas


# ---------------------------------------------------------------- the page


class Html(str):
    """Markup the page shows as is (everything else in a table is escaped)."""


def _model_cell(model: str) -> Html:
    """The grid's model column: the model's name, with what follows it (constructor kwargs, a rule's details) in
    a tooltip marked with a dagger: written out, they push the metrics off a 1280 px screen."""
    name = model.split(" {")[0].split(" (")[0]
    if name == model:
        return Html(_esc(model))
    return Html(f"<span title='{_esc(model, quote=True)}'>{_esc(name)}&nbsp;&dagger;</span>")


def _fmt(v: Any, col: str = "") -> str:
    if isinstance(v, Html):
        return v
    if isinstance(v, float) and col.startswith("p_"):
        return "&lt; 0.001" if v < 0.001 else f"{v:.3f}"  # a p-value is never printed as 0.000
    if isinstance(v, float) and col == "median_correlation":
        return f"{v:.4f}"  # 0.9996 is not 1.000
    if isinstance(v, float):
        return f"{v:.3f}"
    return _esc("" if v is None else str(v))


def _table(rows: list[dict[str, Any]], cols: list[str], table_id: str = "") -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c), c)}</td>" for c in cols) + "</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(r: dict[str, Any], k: str) -> Html:
    """The grid's display of one metric: mean ± sd over seeds, and the 95 % CI where there is one on a second line
    (one line each would push the metrics off a 1280 px screen)."""
    if r.get(k) is None:
        return Html("")
    lo, hi = r.get(f"{k}_ci_low"), r.get(f"{k}_ci_high")
    sd = r.get(f"{k}_sd")
    return Html(
        f"{r[k]:.3f}"
        + (f"&thinsp;±&thinsp;{sd:.3f}" if sd is not None else "")
        + (f"<br><span class='ci'>[{lo:.3f}, {hi:.3f}]</span>" if lo is not None else "")
    )


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 6px;
text-align:right;white-space:nowrap}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}
.gallery img{margin:2px;border:1px solid #ddd}.ci{color:#666;font-size:11px}.note{color:#555;font-size:13px}h2{border-bottom:1px solid #ddd}"""  # noqa: E501
CHECK = """<script>window.addEventListener('load',function(){var b=0;for(const i of document.images){
if(!i.complete||i.naturalWidth===0)b++}document.body.dataset.brokenImages=b;document.body.dataset.images=
document.images.length;var g=document.getElementById('grid');if(g)document.body.dataset.gridWidth=
Math.ceil(g.getBoundingClientRect().right);});</script>"""


def _verdict_section(ctx: dict[str, Any]) -> list[str]:
    v = ctx["verdict"]
    if not v["pooled"]:
        return [
            "<h2 id='verdict'>Verdict</h2><p>No augmented dataset in classifiers.datasets (or no Original to "
            "compare with): there is nothing to compare.</p>"
        ]
    pooled = [
        {
            **r,
            "effect": f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
            "verdict": vd.WORDS[r["verdict"]],
        }
        for r in v["pooled"]
    ]
    return [
        "<h2 id='verdict'>Verdict: does synthetic augmentation help?</h2>",
        "<ul id='verdict-sentences'>" + "".join(f"<li>{_esc(t)}</li>" for t in v["sentences"]) + "</ul>",
        f"<img alt='forest plot' src='{_png_uri(ctx['forest'])}'>",
        _table(pooled, ["dataset", "split", "archs", "images", "effect", "p_value", "p_holm", "verdict"], "pooled"),
        f"<p class='note'>Effect: mean over seeds and architectures of AUROC(augmented) - AUROC(Original) "
        f"on the same images, unadjusted 95 % CI from a seed x image bootstrap "
        f"({' / '.join(f'{b:,}' for b in v['resamples'])} resamples: enough that Holm's first step can reach "
        f"0.005); p-values two-sided, Holm-adjusted at {vd.ALPHA} over the {len(v['pooled'])} pooled effects "
        f"and, separately, over the {len(v['comparisons'])} per-architecture comparisons (table below). A "
        f"verdict other than 'no evidence' needs an adjusted p below {vd.ALPHA}. Method and sources: "
        "docs/evaluation.md.</p>",
        "<h3>What this evidence can and cannot say</h3>",
        "<ul id='limitations'>" + "".join(f"<li>{_esc(t)}</li>" for t in v["limitations"]) + "</ul>",
    ]


def _effect_cell(r: dict[str, Any] | None) -> Html:
    """A subgroup difference as the table shows it: change [CI] and the Holm-adjusted p, bold when it is a
    finding."""
    if r is None:
        return Html("")
    p = _fmt(r["p_holm"], "p_holm")
    text = f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]<br><span class='ci'>p_holm {p}</span>"
    return Html(f"<b>{text}</b>" if r["verdict"] else text)


def _subgroup_section(ctx: dict[str, Any]) -> list[str]:
    """The report's Subgroups section: sentences, the figure, per group the augmented-minus-Original change per
    dataset, and each cell's worst group."""
    sub = ctx["subgroups"]
    rows = sub["rows"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    table = []
    for key in dict.fromkeys((r["split"], r["attribute"], r["value"]) for r in rows):
        own = {r["dataset"]: r for r in rows if (r["split"], r["attribute"], r["value"]) == key}
        first = next(iter(own.values()))
        table.append(
            {
                "split": key[0],
                "attribute": sg.NAMES[key[1]],
                "group": key[2] if key[2] != sg.WORST else f"worst-off (Original: {first['worst_original']})",
                "images": "" if "n" not in first else f"{first['n']} ({first['n_malignant']} malignant)",
                "Original AUROC": Html(_ci_cell(first["auroc_original"])) if "auroc_original" in first else "",
                **{d: _effect_cell(own.get(d)) for d in datasets},
            }
        )
    return [
        "<h2 id='subgroups'>Subgroups: whom does augmentation help?</h2>",
        "<ul id='subgroup-sentences'>" + "".join(f"<li>{_esc(t)}</li>" for t in sub["sentences"]) + "</ul>",
        f"<img alt='subgroup AUROC' src='{_png_uri(sub['figure'])}'>" if sub["figure"] else "",
        _table(table, ["split", "attribute", "group", "images", "Original AUROC", *datasets], "subgroups")
        if table
        else "",
        f"<p class='note'>Per subgroup with at least {sub['min_per_class']} images of each class "
        "(evaluate.subgroups.min_per_class; 'unknown' is never estimated): AUROC(augmented) - AUROC(Original) on "
        "the group's images, mean over seeds and architectures, unadjusted 95 % CI from a seed x image bootstrap "
        f"stratified by group and class ({', '.join(f'{b:,}' for b in sorted({r['resamples'] for r in rows}))} "
        f"resamples), p-values Holm-adjusted over these {len(rows)} tests as one family (apart from the "
        f"verdict's); bold: adjusted p below {vd.ALPHA}. Worst-off: per architecture, the change in the lowest "
        "group AUROC of an attribute, the minimum taken in every draw (so it follows whichever group is worst); "
        "its label names Original's lowest group pooled over architectures. Original AUROC: the group's AUROC "
        "with Original training [95 % CI]. Method: docs/evaluation.md.</p>"
        if rows
        else "",
        "<p class='note'>On the demo, sex, age and body site are drawn independently of the images; only the "
        "skin type changes them (skin types V-VI are drawn with less contrast: melanoma/data/demo.py).</p>"
        if sub["demo"]
        else "",
        "<h3>Each cell's worst group (test)</h3>",
        _table(sub["cells"], ["arch", "dataset", *[sg.NAMES[a] for a in sg.ATTRIBUTES]], "worst-groups"),
    ]


def _ci_cell(v: list[float]) -> str:
    return f"{v[0]:.3f}<br><span class='ci'>[{v[1]:.3f}, {v[2]:.3f}]</span>"


def worst_by_cell(cells: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell, its worst group per attribute on test from metrics.json's subgroup rows: the group and its AUROC
    (mean over seeds) [95 % CI], or '' where no group of the attribute was estimated."""
    out = []
    for (a, d), m in cells.items():
        worst = {r["attribute"]: r for r in m["subgroups"].get("test", []) if r["worst"]}
        out.append(
            {
                "arch": a,
                "dataset": d,
                **{
                    sg.NAMES[k]: Html(
                        f"{_esc(r['value'])}: {r['auroc']['mean']:.3f}<br><span class='ci'>"
                        f"[{r['auroc']['ci95'][0]:.3f}, {r['auroc']['ci95'][1]:.3f}]</span>"
                    )
                    if (r := worst.get(k))
                    else ""
                    for k in sg.ATTRIBUTES
                },
            }
        )
    return out


def subgroup_counts(datasets_dir: Path, dataset: str, age_edges: list[int]) -> list[dict[str, Any]]:
    """The real images of every split per subgroup (the data section's table): one row per attribute and group,
    a column per split with "n (m malignant)". Read from the dataset's manifest (its real rows)."""
    rows = [r for r in read_csv(datasets_dir / dataset / "manifest.csv") if r["origin"] == "real"]
    splits = [s for s in ("train", "val", *HELD_OUT) if any(r["split"] == s for r in rows)]
    per = {s: [r for r in rows if r["split"] == s] for s in splits}
    values = {s: sg.split_attributes(per[s], age_edges) for s in splits}
    labels = {s: np.array([r["label"] == LABELS[1] for r in per[s]]) for s in splits}
    out = []
    for a in sg.ATTRIBUTES:
        for v in sorted({v for s in splits for v in values[s][a]}, key=lambda v: (v == sg.UNKNOWN, v)):
            counts = {s: (values[s][a] == v, labels[s]) for s in splits}
            out.append(
                {
                    "attribute": sg.NAMES[a],
                    "group": v,
                    **{s: f"{int(m.sum())} ({int((m & y).sum())} malignant)" for s, (m, y) in counts.items()},
                }
            )
    return out


def render_html(ctx: dict[str, Any]) -> str:
    grid = ctx["grid"]
    display = [
        {
            "arch": r["arch"],
            "dataset": r["dataset"],
            "split": r["split"],
            "model": _model_cell(r["model"]),
            **{k: _cell(r, k) for k in PAGE_METRICS},
        }
        for r in grid
    ]
    comps = [{**r, "verdict": vd.WORDS[r["verdict"]]} for r in ctx["comparisons"]]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>melanoma-synth report</title>"
        f"<style>{STYLE}</style>{CHECK}</head><body>",
        "<h1>Does synthetic augmentation help melanoma classifiers?</h1>",
        f"<p class='note'>{_esc(ctx['profile'])}. Metrics on the held-out <b>test</b> split (and, where the "
        "source has one, the <b>external test</b> set); each seed's decision threshold was chosen on val and "
        "applied unchanged. Research use only, not a medical device.</p>",
        *_verdict_section(ctx),
        *_subgroup_section(ctx),
        "<h2>Training sets</h2>",
        _table(
            [{**r, "synthetic_share": f"{r['synthetic_share']:.0%}"} for r in ctx["training_sets"]],
            ["dataset", "images", *LABELS, "synthetic_share", "passes"],
            "training-sets",
        ),
        "<p class='note'>Training images per dataset and class (every real train image, then synthetic "
        "ones of the dataset's generator family: datasets.per_class), the synthetic share of each set, and "
        "the passes over it that the training budget (the same optimiser steps for every dataset) makes. "
        "Val and test are the same real images in every dataset.</p>",
        "<h2>The grid</h2>",
        f"<p class='note'>Each value: mean ± sd over the {ctx['seeds']} training seeds; AUROC, sensitivity, "
        "specificity and balanced accuracy also carry a [95 % seed x image bootstrap CI]. The Baseline row is "
        "colour/texture features + logistic regression on the same train split, and the two 'rule' rows are "
        "trivial rules (all-malignant; a constant P = train prevalence): single deterministic runs, so no sd. "
        "Precision, F1 and MCC per cell, and every value unrounded: results/grid.csv. "
        f"{_esc(ctx['budget'])}</p>",
        _table(display, ["arch", "dataset", "split", "model", *PAGE_METRICS], "grid"),
        "<p class='note'>&dagger; hover over the model for the rest of its description: a member's constructor "
        "kwargs, a rule's details (grid.csv and each cell's model_config.json give them in full).</p>",
        f"<img alt='AUROC heatmap' src='{_png_uri(ctx['heatmap'])}'>",
        "<h2>Augmented vs Original per architecture (same test images, seeds paired)</h2>",
        _table(comps, COMPARISON_COLUMNS, "comparisons"),
        "<h2>Near-identical training sets</h2>",
        _table(
            ctx["verdict"]["twins"],
            ["pair", "images", "median_correlation", "mean_abs_difference", "near_identical"],
            "twins",
        )
        if ctx["verdict"]["twins"]
        else "<p class='note'>No plain/upscaled pair in the grid.</p>",
        "<h2>Data and split</h2>",
        _table(ctx["split_rows"], ["split", "benign", "malignant"], "split"),
        f"<p class='note'>{_esc(ctx['split_note'])}</p>",
        *_data_section(ctx["card"], ctx["split"]),
        "<h3>Subgroups per split (real images)</h3>",
        _table(ctx["subgroup_counts"], list(ctx["subgroup_counts"][0]), "subgroup-counts"),
        "<p class='note'>Sex, age band (evaluate.subgroups.age_edges), body site (ISIC's general sites; HAM10000's "
        "localization folded onto them) and Fitzpatrick skin type band as the source states them; 'unknown' "
        "where it states none (never guessed).</p>",
        "<h2>ROC curves per architecture</h2>",
        "".join(f"<img alt='ROC {_esc(a)}' src='{_png_uri(b)}'>" for a, b in ctx["rocs"].items()),
        "<h2>Generators</h2>",
        _table(ctx["generator_rows"], list(ctx["generator_rows"][0]) if ctx["generator_rows"] else [], "generators"),
        "<p class='note'>C2ST AUROC: a classifier telling real from synthetic (0.5 = indistinguishable). "
        "Memorised: synthetic images closer to one real image than a third of the way to the next.</p>",
    ]
    for name, uri in ctx["samples"].items():
        parts.append(f"<h3>{_esc(name)}</h3><img alt='{_esc(name)}' src='{uri}'>")
    if ctx["upscaler"]:
        parts += ["<h2>Super-resolution</h2>", _table([ctx["upscaler"]], list(ctx["upscaler"]), "upscaler")]
    parts.append("<h2>GradCAM (test images, packaged seed, explained for their true label)</h2>")
    parts.append(
        "<p class='note'>Each overlay: the outcome at the packaged threshold (TP/FN/FP/TN: true/false "
        "positive/negative) and P(malignant) on top, the colour bar on the right (1 = the strongest evidence "
        'in that image, 0 = none); "empty map": no positive evidence for the true class at that layer.</p>'
    )
    for cell, (layer, images) in ctx["gradcam"].items():
        where = f": layer {_esc(layer)}" if layer else ""
        parts.append(
            f"<h3>{_esc(cell)}{where}</h3><div class='gallery'>"
            + "".join(f"<img title='{_esc(t)}' alt='{_esc(t)}' src='{u}'>" for t, u in images)
            + "</div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _data_section(card: dict[str, Any], sr: dict[str, Any]) -> list[str]:
    """What a reviewer asks first: the source format, how each diagnosis was labelled, what was refused or
    skipped and why, the grouping keys, and the metadata available (fetch's dataset_card.json, the split report)."""

    def counts(d: dict[str, int], what: str) -> str:
        return (
            _table([{what: k, "files": v} for k, v in list(d.items())[:12]], [what, "files"])
            if d
            else f"<p class='note'>none {_esc(what.split()[0])}</p>"
        )

    c = sr["conflicting_labels"]
    meta = ", ".join(f"{k} {v}" for k, v in card["metadata"].items())
    return [
        f"<h3>Source: {_esc(card['format'])}</h3>",
        _table(card["label_mapping"], ["diagnosis", "label", "listed", "stored"], "label_mapping"),
        "<p class='note'>Label mapping (data.label_map): images per original diagnosis, the label it became "
        "(reject: excluded by the study's label map; unknown: not in the map), how many the source listed and "
        "how many were stored after decoding.</p>",
        "<h3>Rejected files by reason</h3>",
        counts(card["rejected"], "rejected reason"),
        "<h3>Excluded on purpose (data.label_map)</h3>",
        counts(card["excluded"], "excluded reason"),
        "<h3>Skipped non-lesion files by reason</h3>",
        counts(card["skipped"], "skipped reason"),
        f"<p class='note'>Grouping keys: {_esc(', '.join(sr['grouping_keys']))}; merges per key: "
        f"{_esc(', '.join(f'{k} {v}' for k, v in sr['merges'].items()))}. {c['images_dropped']} images "
        f"in {c['groups']} images or lesions labelled both ways were "
        f"{'dropped' if c['policy'] == 'drop' else 'refused'}"
        f". Images carrying each metadata column: {_esc(meta)}.</p>",
    ]


def _metrics_json(grid: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The test metrics per cell (mean over seeds, and AUROC's sd) for `dvc metrics`; other splits nested."""
    metrics: dict[str, dict[str, Any]] = {}
    for r in grid:
        values = {k: round(r[k], 6) for k in DVC_METRICS} | {"auroc_sd": round(r["auroc_sd"], 6)}
        cell = metrics.setdefault(f"{r['arch']}_{r['dataset']}", {})
        if r["split"] == "test":
            cell.update(values)
        else:
            cell[r["split"]] = values
    return metrics


def _cell_rows(grid: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """results/cells/<Arch>_<Dataset>.json, `dvc metrics show`'s rows: the same few keys in every file, test
    split (mean over seeds; auroc_sd where there are several seeds) and the external test set's AUROC if any."""
    rows: dict[str, dict[str, float]] = {}
    for r in grid:
        row = rows.setdefault(f"{r['arch']}_{r['dataset']}", {})
        if r["split"] == "test":
            row.update({k: round(r[k], 4) for k in ("auroc", "sensitivity", "specificity")})
            if r.get("auroc_sd") is not None and r.get("seeds", 1) > 1:  # one seed: no spread to report
                row["auroc_sd"] = round(r["auroc_sd"], 4)
        elif r["split"] == "external_test":
            row["external_auroc"] = round(r["auroc"], 4)
    return rows


def _pooled_rows(pooled: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """results/pooled/<Dataset>.json, one row per augmented dataset: its pooled AUROC difference from
    Original (mean over archs and seeds), Holm-adjusted p and verdict (1 helps, 0 no evidence, -1 hurts) on
    test, and on the external test set (prefix `external_`) if any."""
    rows: dict[str, dict[str, float]] = {}
    for r in pooled:
        prefix = "" if r["split"] == "test" else "external_" if r["split"] == "external_test" else f"{r['split']}_"
        rows.setdefault(r["dataset"], {}).update(
            {
                f"{prefix}auroc_difference": round(r["difference"], 4),
                f"{prefix}p_holm": round(r["p_holm"], 4),
                f"{prefix}verdict": r["verdict"],
            }
        )
    return rows


SHORT = {"sex": "sex", "age": "age", "site": "site", "skin_type": "skin"}  # file names short enough for 120 columns


def _subgroup_json(rows: list[dict[str, Any]], datasets: list[str], splits: list[str]) -> dict[str, dict[str, Any]]:
    """results/subgroups/<Dataset>_<sex|age|site|skin>[_ext].json, `dvc metrics show results/subgroups`' rows:
    per augmented dataset, attribute and held-out split (`_ext`: the external test set), how many of the
    attribute's groups were estimated (`groups`) and how many of them the dataset helps and hurts after Holm's
    correction, and the change in the worst group's AUROC with its Holm-adjusted p and verdict (1 raises, 0 no
    evidence, -1 lowers; absent when no group of a stated value was estimated)."""
    out: dict[str, dict[str, Any]] = {}
    for d in datasets:
        for s in splits:
            for a in sg.ATTRIBUTES:
                own = [r for r in rows if (r["dataset"], r["split"], r["attribute"]) == (d, s, a)]
                groups = [r for r in own if r["value"] != sg.WORST]
                row: dict[str, Any] = {
                    "groups": len(groups),
                    "helped": sum(r["verdict"] == 1 for r in groups),
                    "hurt": sum(r["verdict"] == -1 for r in groups),
                }
                for r in own:
                    if r["value"] == sg.WORST:
                        row.update(
                            worst_change=round(r["difference"], 4),
                            worst_p_holm=round(r["p_holm"], 4),
                            worst_verdict=r["verdict"],
                        )
                out[f"{d}_{SHORT[a]}" + ("" if s == "test" else "_ext")] = row
    return out


def _json_files(folder: Path, rows: dict[str, dict[str, Any]]) -> None:
    """One <name>.json per row, in `folder` (an atomic_dir's temporary folder)."""
    for name, row in rows.items():
        (folder / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")


def _verdict_json(per_arch: list[dict[str, Any]], pooled: list[dict[str, Any]]) -> dict[str, Any]:
    """results/verdict.json for `dvc metrics`: pooled effects per dataset and split, and every comparison's
    difference, adjusted p and verdict (1 helps, 0 no evidence, -1 hurts)."""

    def values(r: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: round(r[k], 6) if isinstance(r[k], float) else r[k] for k in keys}

    out: dict[str, Any] = {"pooled": {}, "comparisons": {}}
    for r in pooled:
        out["pooled"].setdefault(r["dataset"], {})[r["split"]] = values(
            r, ("difference", "ci_low", "ci_high", "p_holm", "verdict")
        )
    for r in per_arch:
        out["comparisons"].setdefault(f"{r['arch']}_{r['dataset']}", {})[r["split"]] = values(
            r, ("difference", "p_holm", "verdict")
        )
    return out


def _generator_section(results: Path, synthetic: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each generator's quality row, and contact sheets (data URIs) of every non-empty synthetic shard."""
    rows, samples = [], {}
    for gen in GENERATORS:
        q = results / "generators" / gen / "quality.json"
        notes_file = results / "generators" / gen / "details" / "quality_notes.json"
        notes = json.loads(notes_file.read_text()) if notes_file.is_file() else {}
        if q.is_file():
            for label, m in json.loads(q.read_text()).items():
                why = notes.get(label, {}).get("fid_unavailable", "not computed")
                rows.append(
                    {
                        "generator": gen,
                        "class": label,
                        "c2st_auroc": m["c2st_auc"],
                        "memorised_fraction": m["memorised_fraction"],
                        "diversity_ratio": m["diversity_ratio"],
                        "fid": m["fid"] if m["fid"] is not None else f"n/a: {why.split(' (')[0]}",
                    }
                )
        for variant in (gen, f"{gen}_upscaled"):
            for label in ("malignant", "benign"):
                shard = synthetic / variant / f"{label}.npy"
                if shard.is_file() and np.load(shard, mmap_mode="r").shape[0]:
                    samples[f"{variant} {label} (first 16 synthetic images)"] = _array_uri(sample_sheet(shard))
    return rows, samples


def _gradcam_section(
    evaluation: Path, cells: Iterable[tuple[str, str]]
) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Per cell: (the layer explained, [(caption, JPEG data URI) of each GradCAM overlay evaluate wrote])."""
    out = {}
    for a, d in cells:
        folder = evaluation / a / f"{a}_{d}" / "gradcam"
        rows = read_csv(folder / "index.csv")
        out[f"{a}_{d}"] = (
            rows[0].get("layer", "") if rows else "",
            [
                (f"{r['group']} {r['id']} P={r['p_malignant']}", _jpeg_uri((folder / r["file"]).read_bytes()))
                for r in rows
            ],
        )
    return out


def _baseline(
    evaluation: Path, held_out: list[str], grid: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The colour/texture baseline's grid rows, and per held-out split its AUROC and the network cells (seed
    means) that do not beat it (at or below it)."""
    m = _load(evaluation, BASELINE, "Original", stage="baseline")
    missing = [s for s in held_out if s not in m["over_seeds"]]
    if missing:
        raise ReportError(
            f"{evaluation / BASELINE / f'{BASELINE}_Original' / 'metrics.json'} has no {missing[0]} "
            "results but the cells do; run `dvc repro baseline`"
        )
    rows = [
        {
            **_row(BASELINE, "Original", s, m["model"], {k: {**v, "sd": None} for k, v in m["over_seeds"][s].items()}),
            "seeds": 1,
        }
        for s in held_out
    ]
    summary = {}
    for s in held_out:
        auroc, cells = m["over_seeds"][s]["auroc"]["mean"], [r for r in grid if r["split"] == s]
        summary[s] = {
            "auroc": auroc,
            "cells": len(cells),
            "below": [f"{r['arch']}_{r['dataset']}" for r in cells if r["auroc"] <= auroc],
        }
    return rows, summary


def external_source(card: dict[str, Any]) -> tuple[str, str]:
    """Whether the external test set comes from another source than the training data, from the dataset card's
    tables: ("other", how) when its test tables are of releases no training table is of (e.g. ISIC 2016 test
    ground truth beside ISIC 2019 training tables), ("same", how) when its release is among the training
    data's, ("unknown", why) when there are no such tables (a folder's test/ beside train/ says nothing)."""
    tables = [t for t in card.get("tables", []) if t.get("subset") in ("main", "external_test")]
    main = {t["kind"] for t in tables if t["subset"] == "main"}
    external = {t["kind"] for t in tables if t["subset"] == "external_test"}
    if not main or not external:
        return "unknown", "no release tables say where the external images and the training images come from"
    if main & external:
        return "same", f"the external set is the {', '.join(sorted(external))} release's own test part"
    return (
        "other",
        f"external set from the {', '.join(sorted(external))} tables, training data from {', '.join(sorted(main))}",
    )


def training_sets(datasets_dir: Path, datasets: list[str], budgets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset: real + synthetic training images per class (each dataset's stats.json), the synthetic share,
    and the passes over the set that its training budget makes (`budgets`: a training record of that dataset,
    with its `steps` and `batch_size`)."""
    rows = []
    for d in datasets:
        counts = _json(datasets_dir / d / "stats.json", f"build_dataset@{d}")["counts"]["train"]
        row: dict[str, Any] = {"dataset": d}
        total = synthetic = 0
        for c in LABELS:
            real = counts.get(f"{c}/real", 0)
            made = sum(n for k, n in counts.items() if k.startswith(f"{c}/") and k != f"{c}/real")
            row[c] = f"{real + made:,} = {real:,} real + {made:,} synthetic ({made / max(real + made, 1):.0%})"
            total, synthetic = total + real + made, synthetic + made
        seen = budgets[d]["steps"] * budgets[d]["batch_size"]
        rows.append(
            {**row, "images": total, "synthetic_share": synthetic / max(total, 1), "passes": passes(seen, total)}
        )
    return rows


def source_name(params: dict[str, Any], card: dict[str, Any]) -> str:
    """The data a reader is looking at, in words (data.source and where it points, and the format read)."""
    d = params["data"]
    where = {
        "demo": "the embedded simulator (synthetic lesion-like images, not real lesions)",
        "local": f"the local folder {d['local']['path']}",
        "isic_csv": f"{d['isic_csv']['images']} with {d['isic_csv']['csv']}",
        "gdrive": f"Google Drive folder {d['gdrive']['folder_id']}",
    }[d["source"]]
    fmt = card.get("format")
    return f"{where} (data.source: {d['source']}" + (f", read as {fmt})" if fmt and d["source"] != "demo" else ")")


def training_budget(cells: dict[tuple[str, str], dict[str, Any]]) -> str:
    """One sentence on the training budget and the imbalance rule, from every cell's training records."""
    runs = [t for m in cells.values() for t in m["training"].values()]
    budgets = sorted({(t["steps"], t["batch_size"], t["imbalance"]) for t in runs})
    seen = sorted({t["images_seen"] for t in runs})
    stopped = sum(t["steps_run"] < t["steps"] for t in runs)
    said = "; ".join(f"{s} optimiser steps of {b} images, class imbalance: {i}" for s, b, i in budgets)
    return (
        f"Training budget, the same for every dataset: {said} ({len(runs)} runs; images seen "
        f"{seen[0] if len(seen) == 1 else f'{seen[0]}-{seen[-1]}'}; {stopped} stopped early on val AUROC)."
    )


def _json(path: Path, stage: str) -> Any:
    """A JSON input of the report; ReportError naming the file and the stage that writes it."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} is missing or unreadable ({type(e).__name__}); run `dvc repro {stage}`") from None


def _check_cells(evaluation: Path, cells: dict[tuple[str, str], dict[str, Any]]) -> tuple[list[str], list[int]]:
    """The held-out splits and seeds every cell shares; ReportError naming the first cell that differs or lacks a
    file the page shows (its ROC curve, its GradCAM index)."""
    held_out = [s for s in HELD_OUT if any(s in m for m in cells.values())]
    (a0, d0), first = next(iter(cells.items()))
    for (a, d), m in cells.items():
        folder = evaluation / a / f"{a}_{d}"
        missing = [s for s in held_out if s not in m or s not in m["over_seeds"]]
        if missing:
            raise ReportError(
                f"{folder / 'metrics.json'} has no {missing[0]} results but other cells do; run "
                f"`dvc repro evaluate@{a}`"
            )
        if m["seeds"] != first["seeds"]:
            raise ReportError(
                f"{a}_{d} was evaluated with seeds {m['seeds']} but {a0}_{d0} with {first['seeds']}; "
                "run `dvc repro train_classifier evaluate` so every cell has classifiers.seeds"
            )
        for f in ("roc_test.csv", "gradcam/index.csv"):
            if not (folder / f).is_file():
                raise ReportError(f"{folder / f} is missing; run `dvc repro evaluate@{a}`")
    return held_out, list(first["seeds"])


def build_report(
    params: dict[str, Any],
    evaluation: Path,
    results: Path,
    synthetic: Path,
    datasets_dir: Path,
    splits: Path,
    raw: Path,
) -> dict[str, Any]:
    """Write grid.csv, metrics.json, verdict.json, cells/, pooled/ and subgroups/ (the rows of `dvc metrics
    show`), report/ and report.html under `results`; returns {cells, comparisons, pooled, sentences, subgroups
    (compare_subgroups' rows), subgroup_sentences}. Every input is read and checked before anything is written,
    and the outputs are renamed into place together at the end: a failed report leaves the previous one whole.

    Raises ReportError (an input missing, unreadable or inconsistent: names it and the stage to run),
    VerdictError (evaluations on different images or seeds), MetricError.
    """
    archs, datasets = params["classifiers"]["archs"], params["classifiers"]["datasets"]
    ep = params["evaluate"]
    cells = {(a, d): _load(evaluation, a, d) for a in archs for d in datasets}
    held_out, seed_list = _check_cells(evaluation, cells)
    grid = [
        {**_row(a, d, s, m["model"], m["over_seeds"][s]), "seeds": len(m["seeds"])}
        for (a, d), m in cells.items()
        for s in held_out
    ]
    base_rows, base_summary = _baseline(evaluation, held_out, grid)
    sr = _json(splits / "split_report.json", "split")
    card = _json(raw / CARD, "fetch")
    stats = _json(datasets_dir / datasets[0] / "stats.json", f"build_dataset@{datasets[0]}")
    train = sr["counts"]["train"]
    prevalence = train["malignant"] / (train["benign"] + train["malignant"])
    trivial = []
    for s in held_out:  # the trivial rules, on the same images as the cells
        trivial += baselines(vd.seed_probabilities(evaluation, archs[0], datasets[0], s).labels, prevalence, s)
    per_arch, pooled = vd.compare(evaluation, archs, datasets, held_out, ep["bootstrap"], ep["seed"])
    minimum = ep["subgroups"]["min_per_class"]
    sub_rows = vd.compare_subgroups(evaluation, archs, datasets, held_out, minimum, ep["bootstrap"], ep["seed"])
    twins = vd.near_identical(datasets_dir, datasets, params["split"]["near_duplicate_corr"])
    first = cells[archs[0], datasets[0]]
    original = (
        {
            s: float(np.mean([r["auroc"] for r in grid if r["dataset"] == "Original" and r["split"] == s]))
            for s in held_out
        }
        if "Original" in datasets
        else {}
    )
    seeds = len(seed_list)
    verdict = {
        "sentences": vd.sentences(pooled, per_arch),
        "pooled": pooled,
        "comparisons": per_arch,
        "twins": twins,
        "resamples": sorted({r["resamples"] for r in per_arch + pooled}),
        "limitations": vd.limitations(
            per_arch,
            seeds,
            {s: first[s] for s in held_out},
            original,
            base_summary,
            twins,
            params["data"]["source"],
            external_source(card),
        ),
    }
    sets = training_sets(
        datasets_dir, datasets, {d: next(iter(cells[archs[0], d]["training"].values())) for d in datasets}
    )
    gradcam = _gradcam_section(evaluation, cells)
    generator_rows, samples = _generator_section(results, synthetic)
    up = results / "upscaler" / "metrics.json"
    with atomic_dir(results / "report") as report_dir:  # figures and comparisons.csv: all of them or none
        write_csv(report_dir / "comparisons.csv", per_arch + pooled, COMPARISON_COLUMNS)
        heatmap(grid, archs, datasets, held_out, report_dir / "auroc_heatmap.png")
        if pooled:
            forest_plot(per_arch, pooled, report_dir / "forest.png")
        for a in archs:
            roc_figure(evaluation, a, datasets, report_dir / f"roc_{a}.png")
        write_csv(report_dir / "subgroups.csv", [_flat(r) for r in sub_rows], SUBGROUP_COLUMNS)
        if any(r["split"] == "test" for r in sub_rows):
            subgroup_figure(sub_rows, "test", report_dir / "subgroups.png")
        ctx = {
            "grid": grid + base_rows + trivial,
            "comparisons": per_arch,
            "verdict": verdict,
            "seeds": seeds,
            "budget": training_budget(cells),
            "training_sets": sets,
            "generator_rows": generator_rows,
            "samples": samples,
            "upscaler": _json(up, "train_upscaler") if up.is_file() else None,
            "gradcam": gradcam,
            "forest": (report_dir / "forest.png").read_bytes() if pooled else b"",
            "heatmap": (report_dir / "auroc_heatmap.png").read_bytes(),
            "rocs": {a: (report_dir / f"roc_{a}.png").read_bytes() for a in archs},
            "subgroups": {
                "rows": sub_rows,
                "sentences": sg.sentences(sub_rows, pooled, first["subgroups"], minimum, compared=bool(pooled)),
                "demo": params["data"]["source"] == "demo",
                "figure": (report_dir / "subgroups.png").read_bytes()
                if (report_dir / "subgroups.png").is_file()
                else b"",
                "cells": worst_by_cell(cells),
                "min_per_class": minimum,
            },
            "subgroup_counts": subgroup_counts(datasets_dir, datasets[0], ep["subgroups"]["age_edges"]),
            "split_rows": [{"split": s, **c} for s, c in sr["counts"].items()],
            "card": card,
            "split": sr,
            "split_note": f"{sr['images']} images in {sr['groups']} groups (duplicates, flipped or rotated "
            f"copies, photographs of one lesion and lesions of one patient kept in one split); "
            f"classifier input {stats['image_size']} px.",
            "profile": f"Data: {source_name(params, card)}; {len(archs)} architectures x {len(datasets)} "
            f"datasets x {seeds} seeds",
        }
        with staged_files() as staged:
            staged.text(results / "report.html", render_html(ctx))
            staged.text(results / "metrics.json", json.dumps(_metrics_json(grid), indent=2) + "\n")
            staged.text(results / "verdict.json", json.dumps(_verdict_json(per_arch, pooled), indent=2) + "\n")
            write_csv(staged.path(results / "grid.csv"), grid + base_rows + trivial, COLUMNS)
            with (
                atomic_dir(results / "cells") as cells_dir,
                atomic_dir(results / "pooled") as pooled_dir,
                atomic_dir(results / "subgroups") as subgroups_dir,
            ):
                _json_files(cells_dir, _cell_rows(grid + base_rows))
                _json_files(pooled_dir, _pooled_rows(pooled))
                augmented = [d for d in datasets if d != "Original"] if "Original" in datasets else []
                _json_files(subgroups_dir, _subgroup_json(sub_rows, augmented, held_out))
    return {
        "cells": len(cells),
        "comparisons": per_arch,
        "pooled": pooled,
        "sentences": verdict["sentences"],
        "subgroups": sub_rows,
        "subgroup_sentences": ctx["subgroups"]["sentences"],
    }
