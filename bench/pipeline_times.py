"""Pipeline-level timings: a fresh demo `dvc repro`, a no-op `dvc repro` and `dvc status`, on a clean clone.

    python bench/pipeline_times.py                 # clone HEAD into a temp folder, time it, print the figures
    python bench/pipeline_times.py --share-cache   # ... using this checkout's DVC cache, so that afterwards a
                                                   # `dvc repro` here restores every output from the run-cache

The fresh run is `dvc repro --force --no-run-cache`: every stage really runs (the clone's dvc.lock and a shared
cache would otherwise let DVC check outputs out instead), and it starts with no checkpoints. Per-stage times are
the gaps between DVC's "Running stage" lines, so they include DVC's own work
and each stage's process start. Targets (2 CPU cores): fresh <= 20 min, no-op <= 5 s.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env(clone: Path | None = None) -> dict[str, str]:
    """The venv first on PATH and, for a clone, the clone's own `melanoma` package first on PYTHONPATH (the venv's
    editable install points at this checkout, whose code may differ from the commit being timed)."""
    out = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    if clone is not None:
        out["PYTHONPATH"] = str(clone)
    return out


def timed_stages(cmd: list[str], cwd: Path) -> tuple[float, dict[str, float]]:
    """Run `cmd`, echoing its output; return the wall time and the seconds spent in each stage."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages: dict[str, float] = {}
    current, since = None, t0
    for line in p.stdout:
        sys.stdout.write("  | " + line)
        m = re.match(r"Running stage '([^']+)'", line)
        if m:
            now = time.perf_counter()
            if current:
                stages[current] = now - since
            current, since = m.group(1), now
    if p.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode})")
    end = time.perf_counter()
    if current:
        stages[current] = end - since
    return end - t0, stages


def median_time(cmd: list[str], cwd: Path, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env(cwd), check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--share-cache", action="store_true", help="use this checkout's .dvc/cache")
    ap.add_argument("--workdir", type=Path, help="clone here instead of a temp folder (must not exist)")
    ap.add_argument("--rev", default="HEAD", help="the commit to time (default HEAD)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pipeline-times-")) / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    subprocess.run(["git", "checkout", "-q", args.rev], cwd=work, check=True)
    if args.share_cache:
        subprocess.run(["dvc", "cache", "dir", "--local", str(ROOT / ".dvc/cache")], cwd=work, env=env(), check=True)
    print(f"fresh `dvc repro --force --no-run-cache` in {work} ({os.cpu_count()} CPUs)")
    fresh, stages = timed_stages(["dvc", "repro", "--force", "--no-run-cache"], work)
    noop = median_time(["dvc", "repro"], work)
    status = median_time(["dvc", "status"], work)
    families: dict[str, list[float]] = defaultdict(list)
    for name, sec in stages.items():
        families[name.split("@")[0]].append(sec)
    print(f"\n{'stage':<18}{'runs':>5}{'total':>10}{'each (mean)':>13}")
    for fam, secs in families.items():
        print(f"{fam:<18}{len(secs):>5}{sum(secs):>9.0f}s{sum(secs) / len(secs):>12.1f}s")
    print(f"\nfresh dvc repro: {fresh / 60:.1f} min (target <= 20)")
    print(f"no-op dvc repro: {noop:.1f} s (median of 3; target <= 5)")
    print(f"dvc status:      {status:.1f} s (median of 3)")


if __name__ == "__main__":
    main()
