"""The `split` stage: stratified, seeded train/val/test with duplicates and lesions kept in one split.

Val and test are fixed here, before any generator sees data, and every later stage reads only `train.csv` for
training; this is where leakage is made impossible. Images are grouped when they are byte-identical (md5),
near-identical (16x16 thumbnails correlating at least `near_duplicate_corr` in any flip or quarter-turn),
photographs of the same lesion (`lesion_id`) or lesions of one patient (`patient_id`); a group is assigned to
one split as a whole. An image or lesion carrying both labels is dropped and listed (or fails the stage).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.errors import MelanomaError
from melanoma.io import atomic_dir, read_csv, write_csv
from melanoma.params import LABELS, PLACEHOLDER_IDS
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


def _unit_rows(thumbs: np.ndarray) -> np.ndarray:
    t = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(t, axis=1, keepdims=True)
    return np.divide(t, norms, out=np.zeros_like(t), where=norms > 0)  # flat images correlate with nothing


def dihedral(thumbs: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and quarter-turns (the dihedral group D4) of (N, H, W) thumbnails."""
    flipped = thumbs[:, :, ::-1]
    return [np.rot90(t, k, axes=(1, 2)) for t in (thumbs, flipped) for k in range(4)]


def near_duplicate_pairs(thumbs: np.ndarray, min_corr: float, block: int = 1024) -> list[tuple[int, int]]:
    """All pairs (i < j) of (N, 16, 16) uint8 thumbnails whose Pearson correlation is at least `min_corr` in any of
    the 8 flips/quarter-turns of one against the other: a mirrored or rotated copy is the same image.

    Cost: 8 float32 (N x 256) @ (256 x N) products, blocked by rows (memory block x N); ~4 s for N = 10,000.
    """
    base = _unit_rows(thumbs)
    pairs: set[tuple[int, int]] = set()
    for turned in dihedral(thumbs):
        other = _unit_rows(np.ascontiguousarray(turned))
        for start in range(0, len(base), block):
            ii, jj = np.nonzero(base[start : start + block] @ other.T >= min_corr)
            ii = ii + start
            keep = ii != jj
            pairs.update(zip(np.minimum(ii, jj)[keep].tolist(), np.maximum(ii, jj)[keep].tolist()))
    return sorted(pairs)


@dataclass
class Grouping:
    """Which rows must share a split, and why."""

    group_of: list[int]  # group root per row: one image/lesion (identity) joined by patient
    identity_of: list[int]  # identity root per row: same bytes, near duplicate or same lesion_id
    merges: dict[str, int]  # per grouping key: unions that joined two groups


def group_rows(rows: list[dict[str, str]], thumbs: np.ndarray, min_corr: float) -> Grouping:
    """Group manifest rows: identities (md5, near-duplicate thumbnails in any flip/turn, lesion_id), then identities
    of one patient (patient_id). Counts, per key, the unions that joined two groups."""
    uf = _UnionFind(len(rows))
    merges: Counter[str] = Counter({k: 0 for k in GROUPING_KEYS})

    def link(column: str) -> None:
        first: dict[str, int] = {}
        for i, r in enumerate(rows):
            v = r.get(column, "").strip()
            v = "" if v.lower() in PLACEHOLDER_IDS else v
            if v and v in first:
                merges[column] += uf.union(first[v], i)
            elif v:
                first[v] = i

    link("md5")
    for i, j in near_duplicate_pairs(thumbs, min_corr):
        merges["near_duplicate"] += uf.union(i, j)
    link("lesion_id")
    identity = [uf.find(i) for i in range(len(rows))]
    link("patient_id")
    return Grouping([uf.find(i) for i in range(len(rows))], identity, dict(merges))


GROUPING_KEYS = ("md5", "near_duplicate", "lesion_id", "patient_id")


def assign(
    groups: dict[int, list[int]], group_label: dict[int, str], fractions: dict[str, float], seed: int
) -> dict[int, str]:
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


MANIFEST_NEEDS = ("id", "label", "md5", "subset", "origin")


def load_manifest(raw: Path) -> list[dict[str, str]]:
    """fetch's manifest.csv rows; SplitError when it is missing, empty or lacks a column split needs."""
    if not (raw / "manifest.csv").is_file():
        raise SplitError(f"{raw / 'manifest.csv'} is missing; run `dvc repro fetch` first")
    rows = read_csv(raw / "manifest.csv")
    if not rows:
        raise SplitError(f"{raw / 'manifest.csv'} lists no images")
    missing = [c for c in MANIFEST_NEEDS if c not in rows[0]]
    if missing:
        raise SplitError(f"{raw / 'manifest.csv'} has no {', '.join(missing)} column; rerun `dvc repro -f fetch`")
    return rows


def load_thumbnails(raw: Path, n_rows: int) -> np.ndarray:
    """The fetch stage's thumbnails, one per manifest row."""
    if not (raw / THUMBNAILS).is_file():
        raise SplitError(f"{raw / THUMBNAILS} is missing; rerun `dvc repro -f fetch`")
    thumbs = np.load(raw / THUMBNAILS, allow_pickle=False)
    if len(thumbs) != n_rows:
        raise SplitError(
            f"{raw / THUMBNAILS} has {len(thumbs)} thumbnails for {n_rows} manifest rows; rerun `dvc repro -f fetch`"
        )
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
    """A group's label for stratification: malignant if it holds any malignant image (a patient's melanoma among
    their naevi), so that the rare class is what gets spread over the splits."""
    return "malignant" if any(rows[i]["label"] == "malignant" for i in idx) else "benign"


def _check_counts(counts: dict[str, dict[str, int]], fractions: dict[str, float], n_groups: int, dropped: int) -> None:
    why = f"; {dropped} images were dropped as labelled both ways (split_report lists them)" if dropped else ""
    for s in SPLITS:
        for c in LABELS:
            if fractions[s] > 0 and counts[s][c] == 0:
                raise SplitError(
                    f"split '{s}' would have no {c} images ({sum(counts[x][c] for x in SPLITS)} {c} images in "
                    f"{n_groups} groups{why}); add data or change split.{s}_fraction"
                )


def conflicting_identities(rows: list[dict[str, str]], grouping: Grouping) -> list[list[int]]:
    """Identity groups (one image or one lesion) whose rows carry both labels, as lists of row indices."""
    labels: dict[int, set[str]] = defaultdict(set)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(grouping.identity_of):
        labels[g].add(rows[i]["label"])
        members[g].append(i)
    return [members[g] for g in sorted(members) if len(labels[g]) > 1]


def _resolve_conflicts(rows: list[dict[str, str]], grouping: Grouping, policy: str) -> tuple[set[int], list[dict]]:
    """Rows to drop because their image or lesion is labelled both ways, and the listing for the report.
    policy 'fail' raises SplitError naming the first groups instead."""
    conflicts = conflicting_identities(rows, grouping)
    listing = [
        {
            "ids": [rows[i]["id"] for i in idx],
            "labels": [rows[i]["label"] for i in idx],
            "origins": [rows[i]["origin"] for i in idx],
        }
        for idx in conflicts
    ]
    if conflicts and policy == "fail":
        first = "; ".join(" + ".join(f"{o} ({lab})" for o, lab in zip(c["origins"], c["labels"])) for c in listing[:3])
        raise SplitError(
            f"{len(conflicts)} images or lesions are labelled both benign and malignant (same bytes, a "
            f"near duplicate, or one lesion_id), e.g. {first}; fix the labels, or set "
            "split.conflicting_labels: drop to leave them out"
        )
    return {i for idx in conflicts for i in idx}, listing


def split(
    raw: Path,
    out: Path,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    near_duplicate_corr: float,
    conflicting_labels: str = "drop",
    problem: Callable[[dict[str, int]], str] | None = None,
) -> dict[str, Any]:
    """Write {train,val,test}.csv (+ external_test.csv) and split_report.json; return the report.

    Stratified by label, grouped so that exact duplicates (md5), near duplicates (thumbnail correlation
    >= near_duplicate_corr under any flip or quarter-turn), photographs of one lesion (lesion_id) and the lesions
    of one patient (patient_id) stay in one split. An image or lesion labelled both ways is dropped and listed
    (conflicting_labels 'drop') or an error ('fail'). Raises SplitError for an empty manifest, fractions that
    leave nothing to train on, a split that would miss a class, or a train split that `problem` (given the real
    train images per label; e.g. melanoma.params.split_problem) refuses with a message: caught here, before any
    generator trains.
    """
    t0 = time.perf_counter()
    if val_fraction + test_fraction >= 1:
        raise SplitError("split.val_fraction + split.test_fraction must leave images for training (< 1)")
    rows = load_manifest(raw)
    grouping = group_rows(rows, load_thumbnails(raw, len(rows)), near_duplicate_corr)
    conflicted, conflict_list = _resolve_conflicts(rows, grouping, conflicting_labels)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(grouping.group_of):
        if i not in conflicted:
            members[g].append(i)
    main_groups, dropped = _main_groups(rows, members)
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    where = assign(main_groups, {g: _group_label(rows, idx) for g, idx in main_groups.items()}, fractions, seed)
    tables: dict[str, list[dict[str, str]]] = {s: [] for s in SPLITS}
    for g, idx in main_groups.items():
        for i in idx:
            tables[where[g]].append({**rows[i], "group": rows[min(members[g])]["id"]})
    external = [
        {**rows[i], "group": rows[min(members[grouping.group_of[i]])]["id"]}
        for i in range(len(rows))
        if rows[i]["subset"] == "external_test" and i not in conflicted
    ]
    counts = {s: {c: sum(r["label"] == c for r in t) for c in LABELS} for s, t in tables.items()}
    _check_counts(counts, fractions, len(main_groups), len(conflicted))
    refused = problem(counts["train"]) if problem else ""
    if refused:
        raise SplitError(refused)
    report = {
        "seed": seed,
        "fractions": fractions,
        "near_duplicate_corr": near_duplicate_corr,
        "counts": counts,
        "external_test": {c: sum(r["label"] == c for r in external) for c in LABELS} if external else None,
        "images": len(rows),
        "groups": len(main_groups),
        "groups_merged": sum(len(v) > 1 for v in main_groups.values()),
        "largest_group": max((len(v) for v in main_groups.values()), default=0),
        "grouping_keys": [k for k in GROUPING_KEYS if k == "near_duplicate" or any(r.get(k) for r in rows)],
        "merges": grouping.merges,  # per key: how many times it joined two groups
        "conflicting_labels": {
            "policy": conflicting_labels,
            "groups": len(conflict_list),
            "images_dropped": len(conflicted),
            "listing": conflict_list,
        },
        "dropped_overlapping_external_test": sorted(rows[i]["id"] for i in dropped),
    }
    _write_split(out, tables, external, list(rows[0].keys()) + ["group"], report)
    report["seconds"] = time.perf_counter() - t0
    return report


def _write_split(
    out: Path,
    tables: dict[str, list[dict[str, str]]],
    external: list[dict[str, str]],
    columns: list[str],
    report: dict[str, Any],
) -> None:
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
    m, conflicts = report["merges"], report["conflicting_labels"]
    return (
        f"split: {parts} (benign/malignant); {report['groups_merged']} kept groups of several images "
        f"({m['md5']} exact, {m['near_duplicate']} near duplicates, {m['lesion_id']} same-lesion, "
        f"{m['patient_id']} same-patient links); {conflicts['images_dropped']} images dropped in "
        f"{conflicts['groups']} groups labelled both ways -> {out} [{report['seconds']:.1f} s]"
    )
