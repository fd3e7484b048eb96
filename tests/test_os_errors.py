"""Operating-system failures (a full disk, a read-only folder, too long a name) and Ctrl-C end any stage or
command with one line naming the path and the fix (exit 1/2, or 130 for Ctrl-C), never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, mounted
from tests.tiny import run_stage, tiny_params, workspace


def terminal_sigint() -> None:
    """In the child, before exec: Ctrl-C's default disposition, as in a terminal's foreground job (a job started
    in the background of a non-interactive shell, as CI may start the suite, inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def project(folder: Path, **overrides) -> Path:
    return workspace(folder, tiny_params(**overrides))


def one_line(p: subprocess.CompletedProcess, prefix: str) -> str:
    """The error line; stderr holds nothing else (progress bars aside) and no traceback."""
    lines = [x for x in p.stderr.strip().splitlines() if "it/s]" not in x and "img/s]" not in x]
    assert "Traceback" not in p.stderr and len(lines) == 1 and lines[0].startswith(prefix), p.stderr
    return lines[0]


def test_a_full_disk_in_fetch_is_one_line(tmp_path):
    repo = project(tmp_path / "repo")
    with mounted(repo / "data", "size=8k"):
        p = run_stage(repo, "fetch.py", check=False)
        err = one_line(p, "fetch: error: ")
        assert p.returncode == 1 and "No space left on device (errno 28)" in err and "free space" in err
        assert "error: data/raw: " in err  # names the output it was writing
        assert sorted(x.name for x in (repo / "data").iterdir()) == []  # nothing half-written stays


def test_a_read_only_data_folder_is_one_line(tmp_path):
    repo = project(tmp_path / "repo")
    with mounted(repo / "data", "ro,size=64k"):
        p = run_stage(repo, "fetch.py", check=False)
        err = one_line(p, "fetch: error: ")
        assert p.returncode == 1 and "errno 30" in err and "read-only" in err and "data" in err


def test_a_too_long_local_path_is_one_line(tmp_path):
    long = tmp_path / ("d" * 300)
    repo = project(tmp_path / "repo", **{"data.source": "local", "data.local.path": str(long)})
    p = run_stage(repo, "fetch.py", check=False)
    err = one_line(p, "fetch: error: ")
    assert p.returncode == 1 and "d" * 40 in err and "shorter path" in err


def test_ctrl_c_ends_a_stage_with_one_line_and_130(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "import time\nfrom melanoma.stage import run_stage\n"
        "def main():\n    print('started', flush=True)\n    time.sleep(60)\n    return 'done'\n"
        "run_stage('slow', main)\n"
    )
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    p = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=terminal_sigint,
    )
    assert p.stdout.readline().strip() == "started"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert err.strip().startswith("slow: interrupted") and len(err.strip().splitlines()) == 1


def test_ctrl_c_ends_a_command_with_one_line_and_130(tmp_path):
    code = (
        "import time\nfrom melanoma import commands\n"
        "def slow(args):\n    print('started', flush=True)\n    time.sleep(60)\n"
        "commands.cmd_plan = slow\nraise SystemExit(commands.main(['plan']))\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=terminal_sigint,
    )
    assert p.stdout.readline().strip() == "started"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip() == "melanoma plan: interrupted", err
