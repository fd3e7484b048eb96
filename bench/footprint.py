"""Disk footprint of a checkout: each top-level entry and the main subfolders, counting hardlinks once (like du).

    python bench/footprint.py [PATH] [--json OUT]      # PATH: default the repository root

Sizes are on-disk bytes (st_blocks x 512, from os.lstat; symlinks are never followed, a link counts as itself).
An inode with several hardlinks inside PATH is counted once, where it is first met; the walk visits `.dvc` last,
so a DVC cache object linked into the workspace counts under the workspace folder that uses it, and what
`.dvc/cache` shows is what no workspace file links to. The bytes that hardlinks share (every further sighting
of an inode already counted) are reported separately. Units: 1 MB = 1e6 bytes, 1 GB = 1e9 bytes.
Read-only; a .venv of a few GB takes some seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MB, GB = 1e6, 1e9
SUBFOLDERS = (
    ".venv",
    ".dvc/cache",
    "models/.checkpoints",
    "models/classifiers",
    "models/export",
    "models/generators",
    "data/raw",
    "data/datasets",
    "data/synthetic",
    "results",
    ".git",
)
LAST = ".dvc"  # walked last: its cache objects count where the workspace links them


@dataclass
class Tally:
    """Bytes per top-level entry and per watched subfolder, with the hardlink bookkeeping."""

    top: dict[str, int] = field(default_factory=dict)
    sub: dict[str, int] = field(default_factory=dict)
    seen: set[tuple[int, int]] = field(default_factory=set)
    shared_bytes: int = 0
    shared_sightings: int = 0
    shared_inodes: set[tuple[int, int]] = field(default_factory=set)
    errors: int = 0

    def add(self, rel: str, st: os.stat_result) -> None:
        """Count one path's inode unless already counted (then it is a shared hardlink sighting)."""
        key = (st.st_dev, st.st_ino)
        size = st.st_blocks * 512
        if key in self.seen:
            self.shared_bytes += size
            self.shared_sightings += 1
            self.shared_inodes.add(key)
            return
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            self.seen.add(key)
        top = rel.split("/", 1)[0]
        self.top[top] = self.top.get(top, 0) + size
        for s in SUBFOLDERS:
            if rel == s or rel.startswith(s + "/"):
                self.sub[s] = self.sub.get(s, 0) + size


def lstat(path: str, tally: Tally) -> os.stat_result | None:
    """os.lstat, counting (not raising) unreadable paths."""
    try:
        return os.lstat(path)
    except OSError:
        tally.errors += 1
        return None


def walk_entry(root: Path, name: str, tally: Tally) -> None:
    """Tally one top-level entry: a file or symlink as itself, a directory with everything under it."""
    top = os.path.join(root, name)
    st = lstat(top, tally)
    if st is None:
        return
    tally.add(name, st)
    if not stat.S_ISDIR(st.st_mode):
        return
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False, onerror=lambda e: _error(tally)):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for n in dirnames + filenames:  # each directory is counted here, from its parent's listing
            st = lstat(os.path.join(dirpath, n), tally)  # a symlink to a directory: counted, never descended
            if st is not None:
                tally.add(f"{rel_dir}/{n}", st)


def _error(tally: Tally) -> None:
    tally.errors += 1


def measure(root: Path) -> Tally:
    """Walk `root` once, top-level entries in name order with `.dvc` last."""
    tally = Tally()
    names = sorted(os.listdir(root), key=lambda n: (n == LAST, n))
    for name in names:
        walk_entry(root, name, tally)
    return tally


def fmt_mb(b: int) -> str:
    """Megabytes, right-aligned."""
    return f"{b / MB:12,.1f} MB"


def report(root: Path, t: Tally) -> dict[str, Any]:
    """Print the tables and the total line; return the same figures for --json."""
    total = sum(t.top.values())
    venv = t.sub.get(".venv", 0)
    print(
        f"footprint of {root} (on-disk bytes, st_blocks x 512; each hardlinked inode counted once, like du; "
        "1 MB = 1e6 B)"
    )
    print("\ntop-level entries:")
    for name, b in sorted(t.top.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28}{fmt_mb(b)}")
    print("\nmain subfolders:")
    for s in SUBFOLDERS:
        exists = os.path.lexists(root / s)
        print(f"  {s:<28}{fmt_mb(t.sub.get(s, 0)) if exists else '      (absent)'}")
    print(
        f"\nhardlinks: {len(t.shared_inodes):,} inode(s) met more than once ({t.shared_sightings:,} further "
        f"sightings), {t.shared_bytes / MB:,.1f} MB shared (counted once above)"
    )
    if t.errors:
        print(f"unreadable paths skipped: {t.errors}")
    print(f"total: {total / GB:.1f} GB (venv {venv / GB:.1f} GB, everything else {(total - venv) / GB:.1f} GB)")
    return {
        "root": str(root),
        "units": "bytes on disk (st_blocks x 512)",
        "total": total,
        "venv": venv,
        "everything_else": total - venv,
        "top_level": t.top,
        "subfolders": {s: (t.sub.get(s, 0) if os.path.lexists(root / s) else None) for s in SUBFOLDERS},
        "hardlink_shared_bytes": t.shared_bytes,
        "hardlink_shared_inodes": len(t.shared_inodes),
        "hardlink_further_sightings": t.shared_sightings,
        "unreadable": t.errors,
    }


def main(argv: list[str] | None = None) -> None:
    """Measure PATH (default: the repository root), print, and optionally write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", type=Path, default=ROOT, help="the checkout to measure (default: repo root)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    root = a.path.resolve()
    if not root.is_dir():
        sys.exit(f"footprint: {a.path} is not a directory")
    figures = report(root, measure(root))
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
