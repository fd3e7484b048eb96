"""`melanoma calibrate`: a decision threshold for a new site, chosen on that site's own labelled images.

A package's threshold was chosen on the pipeline's val split. Scores shift between sites (camera, resolution,
population), so a threshold rarely transfers: on an external full-resolution ISIC set the packaged threshold called
72-90 % of lesions malignant. This module scores a labelled set with a package exactly as `melanoma predict` does
(`predict.predict`: the same preprocessing, the same refusals of unreadable files), chooses a threshold on it, and
writes a *threshold file* that `melanoma predict --threshold-file` then uses instead of the package's own.

Rules: the two that params.yaml's `evaluate.threshold` offers for the val split, so both thresholds are chosen
alike, by the same function (`metrics.choose_threshold`: scikit-learn's ROC curve, Youden ties compared in whole
counts):

- ``youden``: the score maximising Youden's J = sensitivity + specificity - 1 (Youden 1950, "Index for rating
  diagnostic tests", Cancer 3(1):32-35); ties go to the higher threshold (fewer false alarms).
- ``sensitivity T``: the highest threshold whose sensitivity reaches T, i.e. the one that gives up the least
  specificity to get there.

Either way the threshold is one of the scores and an image is malignant when P(malignant) >= threshold.
Sensitivity, specificity and AUROC come with 95 % percentile intervals from the stratified bootstrap of the images
(Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 6 and 13: malignant and benign images resampled
separately, so every draw keeps the class counts; `stats.cell_intervals` with one model), the threshold held
fixed. They are in-sample: the threshold was chosen on these same images, so they are optimistic; confirm on
other labelled images of the site. The threshold's own interval comes from the same kind of draws with the rule
applied again to each (`threshold_interval`): how firmly the labelled set pins the threshold down.

A threshold file belongs to one package: it records the sha256 of the package's `model.safetensors`, and predict
refuses it for any other weights.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.classifiers.inference import read_config
from melanoma.data.releases import META_COLUMNS, FetchError, csv_dialect, from_class_folders, walk
from melanoma.errors import MelanomaError, printable
from melanoma.evaluation.metrics import at_threshold, auroc, choose_threshold
from melanoma.evaluation.stats import CHUNK, cell_intervals, draw, interval
from melanoma.evaluation.subgroups import AGE_EDGES, ATTRIBUTES, groups, subgroup_value
from melanoma.io import owner_lock, read_small, regular_file, write_atomic
from melanoma.params import LABELS
from melanoma.serving.package import CONFIG, WEIGHTS, check_package_fields, load
from melanoma.serving.predict import predict, writable_dir
from melanoma.serving.thresholds import FORMAT, THRESHOLD_MAX_BYTES, VERSION, CalibrationError, _get, package_identity
from melanoma.text import safe_id, top_reasons

# a labels CSV column (the releases' names, or the attribute's own) -> the subgroup attribute it holds
COLUMNS = {**{c: a for c, a in META_COLUMNS.items() if a in ATTRIBUTES}, **{a: a for a in ATTRIBUTES}}

MIN_PER_CLASS = 10  # scored images of each class below which a threshold and its CIs mean nothing
DEFAULT_BOOTSTRAP, DEFAULT_TARGET = 2000, 0.95
MAX_BOOTSTRAP = 100_000  # 300 images: about 0.6 GB and 7 s; the draws are held as (resamples, images) counts
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"  # the labels CSV's columns
UNREADABLE_LISTED = 50  # unreadable files named in the threshold file (all are counted)
RULES = ("youden", "sensitivity")
IN_SAMPLE = (
    "in-sample: the threshold was chosen on these same images, so these figures are optimistic; "
    "confirm on other labelled images of the site"
)


# ---------------------------------------------------------------- labelled images


@dataclass
class Labelled:
    """A labelled set: `files[i]` has label `labels[i]` (1 = malignant, 0 = benign); `names[i]` is its path
    relative to `root` (the CSV's folder, or the class-folder root), the form the file-list hash is taken of."""

    source: Path  # the CSV or the folder given to --labels
    kind: str  # "csv" | "folder"
    root: Path
    files: list[Path]
    names: list[str]
    labels: np.ndarray  # (n,) int64 in {0, 1}
    meta: dict[str, list[str]] = field(default_factory=dict)  # subgroup attribute -> raw value per file (CSV only)

    def files_sha256(self) -> str:
        """sha256 of the sorted 'label<TAB>relative path' lines: the same set of labelled files gives the same
        hash wherever the folder lies (the images' bytes are not read)."""
        lines = sorted(f"{LABELS[y]}\t{n}\n" for n, y in zip(self.names, self.labels))
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        return {"benign": int((self.labels == 0).sum()), "malignant": int((self.labels == 1).sum())}


def read_labels(path: Path) -> Labelled:
    """--labels: a CSV with columns `image` (a path; relative paths are read from the CSV's folder) and `label`
    (benign | malignant), or a folder with benign/ and malignant/ subfolders (the images in them, recursively).

    Raises CalibrationError naming the file (and line) for a missing path, missing columns, an unknown label, a
    missing or repeated image, or a class with no image."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if path.exists():
        regular_file(path, "--labels", LABELS_MAX_BYTES)
        return _read_csv(path)
    raise CalibrationError(
        f"--labels {path} does not exist; give a CSV with columns {IMAGE_COLUMN},{LABEL_COLUMN} "
        "or a folder with benign/ and malignant/ subfolders"
    )


def _read_csv(path: Path) -> Labelled:

    fix = (
        f"the CSV needs a header with columns {IMAGE_COLUMN} (the image's path, relative to the CSV's folder) "
        f"and {LABEL_COLUMN} (benign or malignant)"
    )
    try:  # as fetch reads user tables: UTF-8 (BOM or not) or Excel's UTF-16 "Unicode text"; ',' ';' or tab
        encoding, delimiter = csv_dialect(path)
        with open(path, newline="", encoding=encoding) as fh:
            rows = list(csv.reader(fh, delimiter=delimiter))
    except (UnicodeError, csv.Error) as e:
        raise CalibrationError(f"--labels {path} is not a readable UTF-8 or UTF-16 CSV ({e}); {fix}") from None
    except OSError as e:
        raise CalibrationError(f"--labels {path}: cannot read it ({e.strerror or e})") from None
    if not rows:
        raise CalibrationError(f"--labels {path} is empty; {fix}")
    if len(rows) - 1 > MAX_LABELLED:  # before any row is resolved: each costs a path lookup and memory
        raise CalibrationError(
            f"--labels {path} lists {len(rows) - 1:,} rows; calibrate takes at most "
            f"{MAX_LABELLED:,} images (a threshold needs hundreds): give a sample of them"
        )
    head = [h.strip().lower() for h in rows[0]]
    for col in (IMAGE_COLUMN, LABEL_COLUMN):
        if col not in head:
            raise CalibrationError(
                f"--labels {path} has no '{col}' column (its header: {', '.join(rows[0]) or 'empty'}); {fix}"
            )
    ci, cl = head.index(IMAGE_COLUMN), head.index(LABEL_COLUMN)
    meta_cols: dict[str, int] = {}  # attribute -> its column: the first one in the header that holds it
    for i, h in enumerate(head):
        if h in COLUMNS:
            meta_cols.setdefault(COLUMNS[h], i)
    meta: dict[str, list[str]] = {a: [] for a in meta_cols}
    root = path.resolve().parent
    files, names, labels, seen, missing = [], [], [], {}, []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # a blank line
        image = row[ci].strip() if ci < len(row) else ""
        label = row[cl].strip().lower() if cl < len(row) else ""
        if not image:
            raise CalibrationError(
                f"--labels {path} line {line}: the {IMAGE_COLUMN} cell is empty; give the "
                "image's path or delete the line"
            )
        if "\0" in image:
            raise CalibrationError(
                f"--labels {path} line {line}: the {IMAGE_COLUMN} cell holds a NUL byte, which no "
                "file name can; fix that cell"
            )
        if label not in LABELS:
            raise CalibrationError(
                f"--labels {path} line {line}: label {row[cl] if cl < len(row) else ''!r} is "
                f"not benign or malignant; write benign or malignant"
            )
        f = Path(image) if Path(image).is_absolute() else root / image
        key = os.path.realpath(f)  # a symlink or another spelling of a listed file is the same image
        if key in seen:
            raise CalibrationError(
                f"--labels {path} line {line}: {image} is listed again (first on line "
                f"{seen[key]}); list each image once"
            )
        seen[key] = line
        if not f.is_file():
            missing.append((line, image, f))
        files.append(f)
        names.append(Path(os.path.relpath(f, root)).as_posix())
        labels.append(LABELS.index(label))
        for a, i in meta_cols.items():
            meta[a].append(row[i] if i < len(row) else "")
    if missing:
        line, image, f = missing[0]
        raise CalibrationError(
            f"--labels {path}: {len(missing)} of {len(files)} listed images do not exist (first: "
            f"line {line}, {image} -> {f}); fix the paths (relative ones are read from the "
            "CSV's folder) or delete those lines"
        )
    out = Labelled(path, "csv", root, files, names, np.array(labels, dtype=np.int64), meta)
    _both_classes(out)
    return out


def _read_folder(path: Path) -> Labelled:
    """Class folders, read by the project's own reader (`releases.walk` + `from_class_folders`): hidden files,
    __MACOSX, licences and masks are skipped as fetch skips them."""

    folders = sorted(
        p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name.lower() != "__macosx"
    )  # as fetch's class-folder reader sees them
    others = [name for name in folders if name.lower() not in LABELS]
    if others or not folders:
        raise CalibrationError(
            f"--labels {path}: "
            + (
                f"subfolder {others[0]}/ is not benign/ or malignant/"
                if others
                else "no benign/ and malignant/ subfolders"
            )
            + "; a labels folder holds exactly those two (move the others out, or list the "
            f"images in a CSV with columns {IMAGE_COLUMN},{LABEL_COLUMN})"
        )
    try:
        offer = from_class_folders(walk(path), path, {}, "main", "calibrate")
    except FetchError as e:
        raise CalibrationError(f"--labels: {e}") from None
    root = path.resolve()
    files = [Path(c.file) for c in offer.candidates]
    names = [Path(os.path.relpath(f.resolve(), root)).as_posix() for f in files]
    return Labelled(
        path, "folder", root, files, names, np.array([LABELS.index(c.label) for c in offer.candidates], dtype=np.int64)
    )


def _no_copies(d: Labelled, scored: np.ndarray) -> None:
    """Refuse a labelled set that lists one scored image twice under different names (identical bytes: a copy, a
    hard or symbolic link): it would be counted twice, or as both classes, and narrow every interval."""
    seen: dict[str, int] = {}
    for i, f in enumerate(d.files):
        if not scored[i]:
            continue
        try:
            h = hashlib.sha256(Path(f).read_bytes()).hexdigest()
        except OSError:
            continue  # unreadable: predict reports it
        if h in seen:
            j = seen[h]
            both = "" if d.labels[i] == d.labels[j] else f" (labelled {LABELS[d.labels[j]]} and {LABELS[d.labels[i]]})"
            raise CalibrationError(
                f"--labels {d.source}: {d.names[j]} and {d.names[i]} are the same image (identical "
                f"bytes){both}; list each image once"
            )
        seen[h] = i


def _both_classes(d: Labelled) -> None:
    c = d.counts()
    for label, n in c.items():
        if n == 0:
            raise CalibrationError(
                f"--labels {d.source}: no {label} images ({c['benign']} benign, {c['malignant']} "
                "malignant); a threshold needs both classes"
            )


# ---------------------------------------------------------------- choosing and measuring


def rule_name(rule: str, target: float | None) -> str:
    """The rule as the pipeline writes it (threshold_rule): 'youden' or 'sensitivity 0.95'."""
    return rule if rule == "youden" else f"sensitivity {target:g}"


def check_rule(rule: str, target: float | None) -> float | None:
    """The target sensitivity the rule uses (None for youden); CalibrationError for an unknown rule or a
    target outside (0, 1]."""
    if rule not in RULES:
        raise CalibrationError(f"--rule {rule!r}: use youden or sensitivity")
    if rule == "youden":
        if target is not None:
            raise CalibrationError("--rule youden takes no --target-sensitivity; drop one of the two")
        return None
    target = DEFAULT_TARGET if target is None else target
    if not (isinstance(target, (int, float)) and math.isfinite(target) and 0 < target <= 1):
        raise CalibrationError(f"--target-sensitivity {target}: it must be in (0, 1], e.g. 0.95")
    return float(target)


def choose(
    labels: np.ndarray, probs: np.ndarray, rule: str, target: float | None = None, weights: np.ndarray | None = None
) -> float:
    """The threshold by `rule` on (n,) labels (1 = malignant) and (n,) P(malignant) in [0, 1], always one of
    `probs` (malignant when p >= threshold):

    - youden: max sensitivity + specificity - 1 (Youden's J; Youden 1950) over scikit-learn's ROC curve
      (`roc_curve`, every distinct score); ties go to the higher threshold (fewer false alarms);
    - sensitivity: the highest threshold whose sensitivity reaches `target` in (0, 1] (default 0.95), i.e. the
      one that gives up the least specificity.

    The pipeline's own rule (`metrics.choose_threshold`, which compares J in whole counts), with the target
    and classes checked first. `weights`: (n,) non-negative integer counts (a bootstrap draw), None for one each.
    Raises CalibrationError (bad rule or target, a class absent)."""

    target = check_rule(rule, target)
    y, p = np.asarray(labels).astype(np.int64), np.asarray(probs, dtype=np.float64)
    w = np.ones(len(y), dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    n_pos, n_neg = int(w[y == 1].sum()), int(w[y == 0].sum())
    if y.shape != p.shape or y.shape != w.shape or y.ndim != 1 or n_pos == 0 or n_neg == 0:
        raise CalibrationError(
            f"a threshold needs both classes and one score per label; got {n_pos} malignant, "
            f"{n_neg} benign labels and {p.size} scores"
        )
    return choose_threshold(y, p, rule, target if target is not None else 0.0, weights)


def threshold_interval(
    labels: np.ndarray, probs: np.ndarray, rule: str, target: float | None, n_boot: int, seed: int
) -> list[float]:
    """95 % percentile interval of the threshold itself: the rule applied again to each of `n_boot` stratified
    bootstrap draws of the images (`stats.draw`). It says how firmly this many labelled images pin the
    threshold down; the metrics' intervals (`measure`) hold the threshold fixed."""

    target = check_rule(rule, target)
    y = np.asarray(labels).astype(bool)
    d = draw(y, 1, n_boot, np.random.default_rng(seed))
    return interval(draw_thresholds(y, probs, rule, target, d.pos, d.neg, CHUNK))


def draw_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    rule: str,
    target: float | None,
    pos: np.ndarray,
    neg: np.ndarray,
    chunk: int = 100,
) -> np.ndarray:
    """(B,) the threshold `choose` picks on each resample given as counts: pos (B, P) of the malignant images,
    neg (B, N) of the benign ones, in label order (`stats.Draws`). The same rule and tie-breaking as `choose`,
    computed for `chunk` draws at once from cumulative counts over the scores sorted once (descending)."""
    y, p = np.asarray(labels).astype(bool), np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    ends = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]  # the last image of each distinct score
    n_pos, n_neg = int(pos[0].sum()), int(neg[0].sum())
    out = np.empty(len(pos))
    for i in range(0, len(pos), chunk):
        w = np.zeros((len(pos[i : i + chunk]), len(y)), dtype=np.int64)
        w[:, y], w[:, ~y] = pos[i : i + chunk], neg[i : i + chunk]
        w = w[:, order]
        tp = np.cumsum(w * ys, axis=1)[:, ends]
        fp = np.cumsum(w * ~ys, axis=1)[:, ends]
        if rule == "youden":
            j = tp * n_neg - fp * n_pos
            drawn = np.diff(tp + fp, axis=1, prepend=0) > 0  # only scores that are in this draw are thresholds
            j[~drawn] = np.iinfo(np.int64).min
            idx = np.argmax(j, axis=1)
        else:
            idx = np.argmax(tp >= target * n_pos - 1e-9, axis=1)
        out[i : i + chunk] = ps[ends][idx]
    return out


def measure(labels: np.ndarray, probs: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Sensitivity, specificity, balanced accuracy and the share flagged malignant at `threshold`, and AUROC,
    each with its 95 % percentile CI (`ci95`) from `n_boot` stratified bootstrap draws of the images (Efron &
    Tibshirani 1993), the threshold fixed. labels, probs: (n,), both classes present. The draws depend on
    `seed` and the labels only, so two thresholds measured with one seed share their draws."""

    y, p = np.asarray(labels).astype(np.int64), np.asarray(probs, dtype=np.float64)
    point = at_threshold(y, p, threshold)
    ci = cell_intervals(y, p[None, :], np.array([threshold]), n_boot, seed)
    ci95 = {k: ci[k] for k in ("sensitivity", "specificity", "balanced_accuracy", "auroc")}
    exact = []
    for name, n in (("sensitivity", int(y.sum())), ("specificity", int(len(y) - y.sum()))):
        if point[name] in (0.0, 1.0):  # the percentile bootstrap cannot leave 0 or 1: its interval has zero width
            ci95[name] = list(clopper_pearson(round(point[name] * n), n))
            exact.append(name)
    return {
        "threshold": float(threshold),
        "sensitivity": point["sensitivity"],
        "specificity": point["specificity"],
        "balanced_accuracy": point["balanced_accuracy"],
        "flagged_malignant": float(np.mean(p >= threshold)),
        "auroc": auroc(y, p),
        "confusion": point["confusion"],
        "ci95": ci95,
        "exact_ci95": exact,
    }


def by_subgroup(
    labels: np.ndarray, probs: np.ndarray, threshold: float, meta: dict[str, list[str]], n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """The calibrated threshold's figures within each subgroup of the site's images (sex, age band, body site,
    Fitzpatrick skin type, from the labels CSV's columns: melanoma.evaluation.subgroups). labels, probs: (n,);
    meta: attribute -> raw value per image. One row per (attribute, value) with its counts; a group with at least
    MIN_PER_CLASS images of each class also gets `measure`'s sensitivity, specificity and AUROC with their 95 %
    CIs (`ci95`, `exact_ci95`), a smaller one none (`estimated` False): never pooled into another group."""
    y, p = np.asarray(labels).astype(np.int64), np.asarray(probs, dtype=np.float64)
    rows = []
    for attribute, raw in meta.items():
        values = np.array([subgroup_value(attribute, v, AGE_EDGES) for v in raw], dtype=object)
        for g in groups(y, values, MIN_PER_CLASS):
            mask = g.pop("mask")
            row: dict[str, Any] = {"attribute": attribute, **g}
            if g["estimated"]:
                m = measure(y[mask], p[mask], threshold, n_boot, seed)
                row.update({k: m[k] for k in ("sensitivity", "specificity", "auroc", "ci95", "exact_ci95")})
            rows.append(row)
    return rows


def subgroup_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`by_subgroup`'s rows as one summary line per attribute."""
    out = []
    for attribute in dict.fromkeys(r["attribute"] for r in rows):
        parts = []
        for r in (r for r in rows if r["attribute"] == attribute):
            counts = f"{r['n_malignant']} malignant, {r['n_benign']} benign"
            if r["estimated"]:
                s, c = r["sensitivity"], r["ci95"]
                parts.append(
                    f"{printable(r['value'])} ({counts}): sensitivity {s:.3f} [{c['sensitivity'][0]:.3f}, "
                    f"{c['sensitivity'][1]:.3f}], specificity {r['specificity']:.3f} [{c['specificity'][0]:.3f}, "
                    f"{c['specificity'][1]:.3f}]"
                )
            else:
                parts.append(f"{printable(r['value'])} ({counts}: too few to estimate)")
        out.append(f"  by {attribute}: " + "; ".join(parts))
    return out


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact binomial 95 % interval of k successes in n (Clopper & Pearson 1934), from statsmodels."""
    from statsmodels.stats.proportion import proportion_confint

    a, b = proportion_confint(k, n, alpha=0.05, method="beta")
    return float(a), float(b)


def warnings_for(m: dict[str, Any], n_malignant: int, n_benign: int, which: str = "") -> list[str]:
    """What the numbers of `measure` cannot carry alone: a model that does not rank these images better than
    chance (AUROC CI reaching 0.5: any threshold is arbitrary), and a sensitivity or specificity of exactly 0 or 1,
    whose interval is the exact binomial one (Clopper-Pearson 1934: `measure` puts it in ci95) because a
    percentile bootstrap cannot leave that value. `which` names the threshold (e.g. "package threshold")."""
    out = []
    lo, hi = m["ci95"]["auroc"]
    if lo <= 0.5 and not which:
        out.append(
            f"warning: AUROC {m['auroc']:.3f} [{lo:.3f}, {hi:.3f}] on these images: the model ranks them no "
            "better than chance may, so any threshold is arbitrary; do not use this package at this site"
        )
    for name, n in (("sensitivity", n_malignant), ("specificity", n_benign)):
        if name in m.get("exact_ci95", ()):
            a, b = m["ci95"][name]
            out.append(
                f"warning: {which + ': ' if which else ''}{name} {m[name]:.3f} on {n} images: its interval is "
                f"the exact (Clopper-Pearson) 95 % one, [{a:.3f}, {b:.3f}], as a bootstrap cannot leave "
                f"{m[name]:.0f}"
            )
    return out


# ---------------------------------------------------------------- the package

# ---------------------------------------------------------------- the threshold file


def default_out(cell: str, labels: Path, rule: str = "youden", target: float | None = None) -> Path:
    """`<cell>_<labels name>_<rule>_threshold.json` in the current folder (labels name: the CSV's stem or the
    folder's name; rule: youden or sens<target>), e.g. ViT_Original_site_b_youden_threshold.json or
    ViT_Original_site_b_sens0.95_threshold.json: one file per package, labelled set and rule."""

    labels = Path(labels)
    name = safe_id((labels.stem if labels.is_file() else labels.resolve().name) or "labels")  # a name fit for a file
    return Path(f"{cell}_{name}_{'youden' if rule == 'youden' else f'sens{target:g}'}_threshold.json")


_SAME_RUN = (
    ("package", "weights_sha256"),
    ("labels", "files_sha256"),
    ("rule",),
    ("target_sensitivity",),
    ("bootstrap", "resamples"),
    ("bootstrap", "seed"),
)


def check_out(out: Path, planned: dict[str, Any], force: bool) -> None:
    """Refuse, before any scoring, an --out that cannot be written, or that exists and is not this same
    calibration (same package weights, labelled files, rule, target and bootstrap) unless `force`."""

    out = Path(out)
    if out.is_dir():
        raise CalibrationError(f"--out {out} is a folder; give a file name, e.g. {out / 'threshold.json'}")
    try:
        writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    except MelanomaError as e:
        raise CalibrationError(str(e)) from None
    if not out.exists() or force:
        return
    try:
        old = json.loads(read_small(out, "--out", THRESHOLD_MAX_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, MelanomaError):
        old = None  # not a file this command wrote: refused below unless --force
    ours = isinstance(old, dict) and old.get("format") == FORMAT
    if ours and all(_get(old, k) == _get(planned, k) for k in _SAME_RUN):
        return  # the same calibration run again: replacing it only changes the date
    what = "a threshold file of another calibration" if ours else "not a threshold file this command wrote"
    raise CalibrationError(f"--out {out} exists and is {what}; pass --force to replace it, or choose another --out")


LABELS_MAX_BYTES = 32 << 20  # a labels CSV: about 60 bytes per image, so room for several MAX_LABELLED
MAX_LABELLED = 100_000  # images one calibration scores: a site's labelled set is hundreds to thousands


# ---------------------------------------------------------------- the command


def _package_config(folder: Path) -> dict[str, Any]:
    """A package's checked model_config.json, read before any image is (the model itself is built once, by
    predict, whose `load` also checks model.safetensors against the weights_sha256 recorded here)."""

    if not ((folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()):
        load(folder)  # not a package: its one-line PackageError
    cfg = read_config(folder / CONFIG)
    check_package_fields(cfg, folder / CONFIG)
    return cfg


def calibrate(
    package: Path,
    labels_path: Path,
    rule: str = "youden",
    target: float | None = None,
    out: Path | None = None,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    force: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Score the labelled images with the package (as `melanoma predict` does), choose a threshold by `rule`,
    measure it and the package's own threshold, and write the threshold file. Returns (its record, its path).

    Everything a user can get wrong is checked before scoring where it can be (labels, rule, target, --out, the
    bootstrap size); after scoring, a class with fewer than MIN_PER_CLASS readable images is refused.
    Raises CalibrationError, or PackageError for a damaged package."""

    target = check_rule(rule, target)
    if not (isinstance(n_boot, int) and n_boot >= 100):
        raise CalibrationError(f"--bootstrap {n_boot}: use at least 100 resamples (default {DEFAULT_BOOTSTRAP})")
    if n_boot > MAX_BOOTSTRAP:
        raise CalibrationError(
            f"--bootstrap {n_boot}: use at most {MAX_BOOTSTRAP} resamples (memory grows with "
            f"resamples x images; the default {DEFAULT_BOOTSTRAP} is plenty for 95 % intervals)"
        )
    if not (isinstance(seed, int) and seed >= 0):
        raise CalibrationError(f"--seed {seed}: use a non-negative integer")
    data = read_labels(labels_path)
    for label, n in data.counts().items():  # before scoring: unreadable images can only lower these
        if n < MIN_PER_CLASS:
            raise CalibrationError(
                f"--labels {data.source}: only {n} {label} images are listed; calibrating needs at "
                f"least {MIN_PER_CLASS} of each class (with fewer, the threshold and its "
                "confidence intervals mean nothing): add labelled images"
            )
    cfg = _package_config(Path(package))
    if "threshold" not in cfg:
        raise CalibrationError(
            f"{package} has no decision threshold: a training output, not a package; calibrate "
            "models/export/<Arch>/<Arch>_<Dataset>/ or a downloaded Hub folder"
        )
    pkg = package_identity(package, cfg)
    out = Path(out) if out is not None else default_out(pkg["cell"], labels_path, rule, target)
    planned = {
        "package": pkg,
        "labels": {"files_sha256": data.files_sha256()},
        "rule": rule,
        "target_sensitivity": target,
        "bootstrap": {"resamples": n_boot, "seed": seed},
    }
    inputs = {Path(labels_path).resolve(), *(Path(f).resolve() for f in data.files)}
    if out.resolve() in inputs or out.resolve().is_relative_to(Path(package).resolve()):
        raise CalibrationError(
            f"--out {out} is one of the inputs (the labels, a labelled image or a file of the "
            "package); choose another --out (--force never replaces an input)"
        )
    check_out(out, planned, force)

    with owner_lock(out):  # one calibrate per --out at a time (a second is refused, naming the first's pid)
        results, cfg = predict(data.files, package)
        ok = np.array([r.error is None for r in results])
        _no_copies(data, ok)
        unreadable = [(r.path, r.error) for r in results if r.error is not None]
        y = data.labels[ok]
        p = np.array([r.p_malignant for r in results if r.error is None], dtype=np.float64)
        scored = {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum())}
        for label, n in scored.items():
            if n < MIN_PER_CLASS:
                listed = data.counts()[label]
                mine = [
                    (r.path, r.error)
                    for r, c in zip(results, data.labels)
                    if r.error is not None and LABELS[c] == label
                ]
                lost = f" ({listed - n} unreadable: {top_reasons(mine, 2)})" if n < listed else ""
                raise CalibrationError(
                    f"--labels {data.source}: only {n} {label} images could be scored{lost}; "
                    "calibrating needs at least "
                    f"{MIN_PER_CLASS} of each class (with fewer, the threshold and its confidence intervals mean "
                    "nothing): add labelled images"
                )

        threshold = choose(y, p, rule, target)
        rec = {
            "format": FORMAT,
            "version": VERSION,
            "threshold": threshold,
            "threshold_ci95": threshold_interval(y, p, rule, target, n_boot, seed),
            "rule": rule,
            "target_sensitivity": target,
            "rule_name": rule_name(rule, target),
            "decision": f"malignant if p_malignant >= threshold ({rule_name(rule, target)}, chosen on the labelled "
            "images below)",
            "package": pkg,
            "labels": {
                "path": str(Path(labels_path).resolve()),
                "given": str(labels_path),
                "kind": data.kind,
                "files_sha256": data.files_sha256(),
                "listed": data.counts(),
                "scored": scored,
                "unreadable": len(unreadable),
                "unreadable_files": [{"path": f, "reason": why} for f, why in unreadable[:UNREADABLE_LISTED]],
            },
            "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "n": int(len(y)),
            "metrics": (m := measure(y, p, threshold, n_boot, seed)),
            "package_threshold_metrics": (pm := measure(y, p, cfg["threshold"], n_boot, seed)),
            "warnings": warnings_for(m, int(y.sum()), int(len(y) - y.sum()))
            + warnings_for(pm, int(y.sum()), int(len(y) - y.sum()), "package threshold"),
            "bootstrap": {
                "resamples": n_boot,
                "seed": seed,
                "level": 0.95,
                "method": "stratified percentile bootstrap of the images, threshold fixed (Efron & Tibshirani 1993)",
            },
            "note": IN_SAMPLE,
        }
        if data.meta:
            rec["subgroups"] = by_subgroup(
                y, p, threshold, {a: list(np.array(v)[ok]) for a, v in data.meta.items()}, n_boot, seed
            )
        check_out(out, planned, force)  # again: a file may have appeared at --out while the images were scored
        write_atomic(out, json.dumps(rec, indent=2) + "\n")
    return rec, out


def _line(name: str, m: dict[str, Any]) -> str:
    ci = m["ci95"]
    return (
        f"{name} {m['threshold']:.4f}: sensitivity {m['sensitivity']:.3f} [{ci['sensitivity'][0]:.3f}, "
        f"{ci['sensitivity'][1]:.3f}], specificity {m['specificity']:.3f} [{ci['specificity'][0]:.3f}, "
        f"{ci['specificity'][1]:.3f}], {m['flagged_malignant']:.0%} called malignant"
    )


def summary(rec: dict[str, Any], out: Path, model: str | None = None) -> str:
    """The human summary `melanoma calibrate` prints: counts, AUROC, the chosen threshold and the package's own
    on these images (each with 95 % CIs), and how to use the file (with `model`, the PACKAGE as the user gave
    it, e.g. a Hub id, in the predict line)."""
    lab, pkg, m = rec["labels"], rec["package"], rec["metrics"]
    # each name as one line of printable text, whatever it holds (a folder name with a newline cannot forge a line)
    model, given, out = (printable(x) for x in (model or pkg["path"], lab.get("given", lab["path"]), out))
    a = m["ci95"]["auroc"]
    rule = (
        "Youden's J"
        if rec["rule"] == "youden"
        else f"highest threshold with sensitivity >= {rec['target_sensitivity']:g}"
    )
    skipped = f"; {lab['unreadable']} unreadable, left out" if lab["unreadable"] else ""
    return "\n".join(
        [
            f"{pkg['cell']} ({model}) on {given}: {rec['n']} images scored "
            f"({lab['scored']['malignant']} malignant, {lab['scored']['benign']} benign{skipped})",
            f"AUROC {m['auroc']:.3f} [{a[0]:.3f}, {a[1]:.3f}] (95 % CIs: {rec['bootstrap']['resamples']} stratified "
            f"bootstrap resamples, seed {rec['bootstrap']['seed']})",
            _line(f"calibrated threshold ({rule})", m),
            f"  the threshold itself: 95 % CI [{rec['threshold_ci95'][0]:.4f}, {rec['threshold_ci95'][1]:.4f}] "
            "(the rule "
            "re-applied to each resample): how firmly these images pin it down",
            _line(f"package threshold ({pkg['threshold_rule']}, chosen on val)", rec["package_threshold_metrics"]),
            *(
                [f"the calibrated threshold by subgroup (at least {MIN_PER_CLASS} images of each class to estimate):"]
                + subgroup_lines(rec["subgroups"])
                if rec.get("subgroups")
                else []
            ),
            *rec.get("warnings", []),
            IN_SAMPLE,
            f"wrote {out}; use it with: melanoma predict IMAGES --model {model} --threshold-file {out}",
        ]
    )
