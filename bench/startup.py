"""Start-up per stage: how much of a fresh demo run its 56 stage processes spend importing before and while working.

    python bench/startup.py                  # clone HEAD into a temp folder, run every stage once, print the table
    python bench/startup.py --workdir DIR    # clone into DIR instead (must not exist)

Every stage command that `dvc repro --dry --force` lists is run in that order, in the clone, by this script
(not through DVC, so DVC's own work is not counted), with `PYTHONPROFILEIMPORTTIME=1`: Python then reports each
module's import time on stderr. A stage's start-up is the interpreter's own start (`python -c pass`, measured
here) plus the sum of its top-level imports, which includes the imports a stage makes lazily inside functions.
The start-up share is the sum over stages divided by the sum of the stages' wall times (a whole `dvc repro` also
spends time in DVC, so the share of its wall time is lower still). Target: at most 10 %. A fresh run, so it takes
as long as the demo (about 15 minutes on 2 cores); nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.10


def import_seconds(stderr: str) -> tuple[float, dict[str, float]]:
    """Total import time in `stderr` of a process run with PYTHONPROFILEIMPORTTIME=1, and the top-level modules
    with their cumulative seconds. Top level: the name column has no extra indentation (a module imported by no
    other import: at the top of a script, or lazily inside a function)."""
    total, top = 0.0, {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) == 1:  # one space after the bar: depth 0
            seconds = int(m.group(2)) / 1e6
            total += seconds
            top[m.group(4)] = top.get(m.group(4), 0.0) + seconds
    return total, top


def stage_commands(work: Path, env: dict[str, str]) -> list[tuple[str, str]]:
    """(stage name, command) in the order `dvc repro` runs them."""
    out = subprocess.run(
        ["dvc", "repro", "--dry", "--force"], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout
    return re.findall(r"Running stage '([^']+)':\n> (.+)", out)


def interpreter_seconds(env: dict[str, str], runs: int = 5) -> float:
    """The fastest of `runs` starts of `python -c pass`: what every process pays before its first import."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, help="clone here instead of a temp folder (must not exist)")
    ap.add_argument("--top", type=int, default=4, help="slowest top-level imports shown per stage kind")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="startup-")) / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(work),  # the clone's own package, not the checkout the venv's editable install names
        "DVC_NO_ANALYTICS": "1",
    }
    interp = interpreter_seconds(env)
    kinds: dict[str, list[tuple[float, float]]] = defaultdict(list)
    modules: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, cmd in stage_commands(work, env):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, shell=True, cwd=work, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True)
        wall = time.perf_counter() - t0
        stderr = p.stderr.decode(errors="replace")
        if p.returncode:
            tail = "\n".join(ln for ln in stderr.splitlines() if not ln.startswith("import time:"))[-2000:]
            raise SystemExit(f"startup: stage {name} failed ({p.returncode}):\n{tail}")
        imports, top = import_seconds(stderr)
        kind = name.split("@")[0]
        kinds[kind].append((wall, interp + imports))
        for m, s in top.items():
            modules[kind][m] += s
        print(f"{name:<42} wall {wall:6.1f} s  start-up {interp + imports:5.2f} s", flush=True)
    print(f"\ninterpreter start: {interp:.3f} s per process\n")
    print(f"{'stage':<18}{'runs':>5}{'wall':>9}{'start-up':>10}{'each':>7}  slowest top-level imports (s, per run)")
    for kind, rows in kinds.items():
        wall, start = sum(r[0] for r in rows), sum(r[1] for r in rows)
        slow = sorted(modules[kind].items(), key=lambda kv: -kv[1])[: a.top]
        names = ", ".join(f"{m} {s / len(rows):.2f}" for m, s in slow)
        print(f"{kind:<18}{len(rows):>5}{wall:>8.0f}s{start:>9.0f}s{start / len(rows):>6.1f}s  {names}")
    wall = sum(r[0] for rows in kinds.values() for r in rows)
    start = sum(r[1] for rows in kinds.values() for r in rows)
    n = sum(len(rows) for rows in kinds.values())
    verdict = "within" if start / wall <= TARGET else "over"
    print(
        f"\n{n} stages: {wall / 60:.1f} min of stage wall time, of which start-up {start:.0f} s = "
        f"{start / wall:.1%} ({verdict} the {TARGET:.0%} target)"
    )


if __name__ == "__main__":
    main()
