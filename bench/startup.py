"""Start-up share of a fresh demo run: how much of `./run.sh repro`'s wall time its stage processes spend starting.

    python bench/startup.py               # clone HEAD into a temp folder and run `./run.sh repro` there, warm start
    python bench/startup.py --cold        # the same with every stage starting cold (MELANOMA_WARM=0)
    python bench/startup.py --here        # run in this checkout instead (fresh only if nothing is cached yet)
    python bench/startup.py --workdir DIR # clone into DIR (must not exist)

The run is the README's, through DVC, with MELANOMA_STARTUP_LOG set: every stage then appends one line of marks
(melanoma.startup.StartupMarks). A stage's start-up is the time from its process's start to the beginning of
its own work, plus the imports it makes lazily after that (torch._dynamo at the first optimizer call); with
warm start, the server's one-time imports count as start-up too. The share is the sum over the run divided by
the whole run's wall time (set-up, DVC and the final relink included). Target: at most 10 %. The clone uses
this checkout's virtual environment (VENV) and its own package (PYTHONPATH). It takes as long as the demo
(15-30 minutes on 2 cores, by machine); nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.10


def startup_seconds(mark: dict) -> float:
    """One stage run's start-up from its marks: process start to its work, plus the lazy imports during it."""
    return mark["main_at"] - mark["started"] + mark["lazy_s"]


def summary(marks: list[dict], wall: float) -> tuple[list[str], float]:
    """Table lines per stage kind (runs, their wall from process start to end, start-up, start-up each) and the
    start-up share of `wall` (seconds)."""
    kinds: dict[str, list[dict]] = defaultdict(list)
    for m in marks:
        kinds[m["stage"]].append(m)
    lines = [f"{'stage':<18}{'runs':>5}{'wall':>9}{'start-up':>10}{'each':>7}"]
    for kind, rows in kinds.items():
        w = sum(r["end_at"] - r["started"] for r in rows)
        s = sum(startup_seconds(r) for r in rows)
        lines.append(f"{kind:<18}{len(rows):>5}{w:>8.0f}s{s:>9.1f}s{s / len(rows):>6.2f}s")
    return lines, sum(startup_seconds(m) for m in marks) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--workdir", type=Path, help="clone here instead of a temp folder (must not exist)")
    where.add_argument("--here", action="store_true", help="run in this checkout")
    ap.add_argument("--cold", action="store_true", help="every stage starts cold (MELANOMA_WARM=0)")
    a = ap.parse_args()
    work = ROOT if a.here else a.workdir or Path(tempfile.mkdtemp(prefix="startup-")) / "repo"
    if not a.here:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    log = Path(tempfile.mkdtemp(prefix="startup-marks-")) / "marks.jsonl"
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parents[1]),
        "PYTHONPATH": str(work),  # the clone's own package, not the checkout the venv's editable install names
        "DVC_NO_ANALYTICS": "1",
        "MELANOMA_STARTUP_LOG": str(log),
        "MELANOMA_WARM": "0" if a.cold else "1",
    }
    t0 = time.perf_counter()
    p = subprocess.run(["./run.sh", "repro"], cwd=work, env=env)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"startup: ./run.sh repro failed ({p.returncode}) in {work}")
    marks = [json.loads(line) for line in log.read_text().splitlines()]
    lines, share = summary(marks, wall)
    print("\n".join(["", *lines]))
    stages = sum(m["stage"] != "warm server" for m in marks)
    total = sum(startup_seconds(m) for m in marks)
    verdict = "within" if share <= TARGET else "over"
    print(
        f"\n{stages} stages, {'warm' if not a.cold else 'cold'} start: start-up {total:.0f} s of the run's "
        f"{wall / 60:.1f} min = {share:.1%} ({verdict} the {TARGET:.0%} target)"
    )


if __name__ == "__main__":
    main()
