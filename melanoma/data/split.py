"""The `split` stage: stratified, seeded train/val/test with duplicates and lesions kept in one split.

Val and test are fixed here, before any generator sees data, and every later stage reads only `train.csv` for
training; this is where leakage is made impossible. Images are grouped when they are byte-identical (md5),
near-identical (16x16 thumbnails correlating at least `near_duplicate_corr`), or photographs of the same
lesion (`lesion_id`); a group is assigned to one split as a whole.
"""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.errors import MelanomaError
from melanoma.io import atomic_dir, read_csv, write_csv
from melanoma.params import LABELS
from melanoma.paths import THUMBNAILS

SPLITS = ("train", "val", "test")


class SplitError(MelanomaError):
    """The data cannot be split as asked; the message says why and what to change."""


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def near_duplicate_pairs(thumbs: np.ndarray, min_corr: float, block: int = 1024) -> list[tuple[int, int]]:
    """All pairs (i < j) of thumbnails whose Pearson correlation is at least `min_corr`."""
    t = thumbs.reshape(len(thumbs), -1).astype(np.float64)
    t -= t.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(t, axis=1, keepdims=True)
    t = np.divide(t, norms, out=np.zeros_like(t), where=norms > 0)  # flat images correlate with nothing
    pairs = []
    for start in range(0, len(t), block):
        corr = t[start:start + block] @ t.T
        ii, jj = np.nonzero(corr >= min_corr)
        ii = ii + start
        keep = ii < jj
        pairs += list(zip(ii[keep].tolist(), jj[keep].tolist()))
    return pairs


@dataclass
class Grouping:
    group_of: list[int]  # group root per row
    exact_pairs: int
    near_pairs: int
    lesion_links: int


def group_rows(rows: list[dict[str, str]], thumbs: np.ndarray, min_corr: float) -> Grouping:
    uf = _UnionFind(len(rows))
    links: Counter[str] = Counter()
    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        for key in (("md5", r["md5"]), ("lesion", r.get("lesion_id", ""))):
            if key[1] and key in first:
                uf.union(first[key], i)
                links[key[0]] += 1
            elif key[1]:
                first[key] = i
    near = 0
    for i, j in near_duplicate_pairs(thumbs, min_corr):
        if rows[i]["md5"] != rows[j]["md5"]:
            near += 1
        uf.union(i, j)
    return Grouping([uf.find(i) for i in range(len(rows))], links["md5"], near, links["lesion"])


def assign(groups: dict[int, list[int]], group_label: dict[int, str], fractions: dict[str, float],
           seed: int) -> dict[int, str]:
    """Give each group a split so that every class is divided in the asked proportions.

    Per class, groups are shuffled by seed, placed largest first, each into the split furthest below its
    target count; splitting per class is what makes it stratified.
    """
    rng = np.random.default_rng(seed)
    out: dict[int, str] = {}
    for label in LABELS:
        gids = sorted(g for g in groups if group_label[g] == label)
        gids = [gids[k] for k in rng.permutation(len(gids))]
        gids.sort(key=lambda g: -len(groups[g]))  # stable: ties keep the seeded order
        n = sum(len(groups[g]) for g in gids)
        target = {s: fractions[s] * n for s in SPLITS}
        have = dict.fromkeys(SPLITS, 0)
        for g in gids:
            s = max(SPLITS, key=lambda s: (target[s] - have[s], -SPLITS.index(s)))
            out[g] = s
            have[s] += len(groups[g])
    return out


def load_thumbnails(raw: Path, n_rows: int) -> np.ndarray:
    """The fetch stage's thumbnails, one per manifest row."""
    thumbs = np.load(raw / THUMBNAILS)
    if len(thumbs) != n_rows:
        raise SplitError(f"{raw / THUMBNAILS} has {len(thumbs)} thumbnails for {n_rows} manifest rows; "
                         "rerun `dvc repro -f fetch`")
    return thumbs


def _main_groups(rows: list[dict[str, str]], members: dict[int, list[int]]) -> tuple[dict[int, list[int]], list[int]]:
    """Groups of main-subset images, and the main images dropped because an external-test image shares their group
    (they would leak the external test set into training)."""
    dropped, main_groups = [], {}
    for g, idx in members.items():
        main = [i for i in idx if rows[i]["subset"] == "main"]
        if len(main) < len(idx):
            dropped += main
        elif main:
            main_groups[g] = main
    return main_groups, dropped


def _group_label(rows: list[dict[str, str]], idx: list[int]) -> str:
    """A group's label for stratification: its majority label, malignant on a tie."""
    votes = Counter(rows[i]["label"] for i in idx)
    return max(LABELS, key=lambda c: (votes[c], c == "malignant"))


def _check_counts(counts: dict[str, dict[str, int]], fractions: dict[str, float], n_groups: int) -> None:
    for s in SPLITS:
        for c in LABELS:
            if fractions[s] > 0 and counts[s][c] == 0:
                raise SplitError(
                    f"split '{s}' would have no {c} images ({sum(counts[x][c] for x in SPLITS)} {c} images in "
                    f"{n_groups} groups); add data or change split.{s}_fraction")


def split(raw: Path, out: Path, seed: int, val_fraction: float, test_fraction: float,
          near_duplicate_corr: float) -> dict[str, Any]:
    """Write {train,val,test}.csv (+ external_test.csv) and split_report.json; return the report.

    Stratified by label, grouped so that exact/near duplicates (thumbnail correlation >= near_duplicate_corr)
    and photographs of one lesion stay in one split. Raises SplitError for an empty manifest, fractions that
    leave nothing to train on, or a split that would miss a class.
    """
    t0 = time.perf_counter()
    if val_fraction + test_fraction >= 1:
        raise SplitError("split.val_fraction + split.test_fraction must leave images for training (< 1)")
    rows = read_csv(raw / "manifest.csv")
    if not rows:
        raise SplitError(f"{raw / 'manifest.csv'} lists no images")
    grouping = group_rows(rows, load_thumbnails(raw, len(rows)), near_duplicate_corr)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(grouping.group_of):
        members[g].append(i)
    main_groups, dropped = _main_groups(rows, members)
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    where = assign(main_groups, {g: _group_label(rows, idx) for g, idx in main_groups.items()}, fractions, seed)
    tables: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for g, idx in main_groups.items():
        for i in idx:
            tables[where[g]].append({**rows[i], "group": rows[min(members[g])]["id"]})
    external = [{**rows[i], "group": rows[min(members[grouping.group_of[i]])]["id"]}
                for i in range(len(rows)) if rows[i]["subset"] == "external_test"]
    counts = {s: {c: sum(r["label"] == c for r in t) for c in LABELS} for s, t in tables.items()}
    _check_counts(counts, fractions, len(main_groups))
    report = {
        "seed": seed, "fractions": fractions, "near_duplicate_corr": near_duplicate_corr,
        "counts": counts,
        "external_test": {c: sum(r["label"] == c for r in external) for c in LABELS} if external else None,
        "images": len(rows),
        "groups": len(main_groups),
        "groups_merged": sum(len(v) > 1 for v in main_groups.values()),
        "largest_group": max((len(v) for v in main_groups.values()), default=0),
        "exact_duplicates": grouping.exact_pairs,
        "near_duplicates": grouping.near_pairs,
        "lesion_links": grouping.lesion_links,
        "dropped_overlapping_external_test": sorted(rows[i]["id"] for i in dropped),
    }
    _write_split(out, tables, external, list(rows[0].keys()) + ["group"], report)
    report["seconds"] = time.perf_counter() - t0
    return report


def _write_split(out: Path, tables: dict[str, list[dict[str, str]]], external: list[dict[str, str]],
                 columns: list[str], report: dict[str, Any]) -> None:
    with atomic_dir(out) as tmp:
        for s, t in tables.items():
            write_csv(tmp / f"{s}.csv", sorted(t, key=lambda r: r["id"]), columns)
        if external:
            write_csv(tmp / "external_test.csv", sorted(external, key=lambda r: r["id"]), columns)
        (tmp / "split_report.json").write_text(json.dumps(report, indent=2) + "\n")


def summary_line(report: dict[str, Any], out: Path) -> str:
    c = report["counts"]
    parts = ", ".join(f"{s} {c[s]['benign']}/{c[s]['malignant']}" for s in SPLITS)
    ext = report["external_test"]
    if ext:
        parts += f", external_test {ext['benign']}/{ext['malignant']}"
    return (f"split: {parts} (benign/malignant); {report['groups_merged']} groups merged "
            f"({report['exact_duplicates']} exact, {report['near_duplicates']} near duplicates, "
            f"{report['lesion_links']} same-lesion links) -> {out} [{report['seconds']:.1f} s]")
