"""Start-up: the warm server (melanoma.startup) runs a stage exactly as a cold process would, and bench/startup.py
sums the marks stages leave."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.startup import startup_seconds, summary
from melanoma import startup
from tests.conftest import ROOT


def test_the_bench_sums_start_up_over_the_whole_run():
    marks = [
        {"stage": "warm server", "started": 100.0, "main_at": 110.0, "end_at": 110.0, "lazy_s": 0.0},
        {"stage": "train_classifier", "started": 120.0, "main_at": 120.5, "end_at": 150.0, "lazy_s": 0.25},
        {"stage": "train_classifier", "started": 150.0, "main_at": 150.25, "end_at": 170.0, "lazy_s": 0.0},
    ]
    assert [startup_seconds(m) for m in marks] == [10.0, 0.75, 0.25]
    lines, share = summary(marks, wall=200.0)
    assert share == 11.0 / 200.0
    assert lines[2].split() == ["train_classifier", "2", "50s", "1.0s", "0.50s"]


# ------------------------------------------------------------------------------ the warm server (melanoma.startup)

FAKE_STAGE = """
import json, os, sys, time
from pathlib import Path

from melanoma.errors import MelanomaError
from melanoma.stage import run_stage


def main() -> str:
    what = sys.argv[1]
    if what == "fail":
        raise MelanomaError("planted failure in params.yaml key x; fix x")
    if what == "exit":
        raise SystemExit(3)
    if what == "sleep":
        Path("pid").write_text(str(os.getpid()))
        time.sleep(60)
    if what == "lazy":
        import xml.dom.minidom  # not imported by anything before: start-up the marks must count
    print("partial line", end="")  # buffered, flushed at exit: nothing of the stage's output may be lost
    return json.dumps({
        "argv": sys.argv, "cwd": os.getcwd(), "probe": os.environ.get("PROBE"), "stdin": sys.stdin.read(),
        "path0": sys.path[0], "kmp": os.environ.get("KMP_DUPLICATE_LIB_OK"), "ppid": os.getppid(),
        "file": __file__, "name": __name__, "loader": type(__loader__).__name__, "spec": __spec__,
    })


if __name__ == "__main__":
    run_stage("fake", main)
"""


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A warm server (the real one: every preload, ~10 s once) and a folder holding a fake stage script and the
    project's params.yaml (run_stage reads `device` from it)."""
    folder = tmp_path_factory.mktemp("warm")
    (folder / "stages").mkdir()
    (folder / "stages" / "fake.py").write_text(FAKE_STAGE)
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    # KMP_DUPLICATE_LIB_OK: scikit-learn's import sets it in os.environ, so it is here when an earlier test of this
    # session imported scikit-learn; dropped, so that the test below sees what the server's imports add
    drop = (startup.SOCKET_ENV, startup.LOG_ENV, "KMP_DUPLICATE_LIB_OK")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PROBE"] = "p"
    server, path, line = startup.start_server(tmp_path_factory.mktemp("sock"), env)
    assert line.startswith("ready: ")
    yield folder, {**env, startup.SOCKET_ENV: str(path)}, env, server
    startup.stop_server(server)
    assert server.returncode == 0


def fake(folder: Path, env: dict, *args: str, stdin: str = "", **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "stages/fake.py", *args], cwd=folder, env=env, input=stdin, capture_output=True, text=True
    )


def test_a_warm_stage_runs_exactly_as_a_cold_one(warm):
    folder, warm_env, cold_env, server = warm
    runs = {}
    for mode, env in (("warm", warm_env), ("cold", cold_env)):
        p = fake(folder, env, "echo", "x y", stdin="from stdin\n")
        assert p.returncode == 0 and p.stderr == "", p.stderr
        assert p.stdout.startswith("partial line{")
        runs[mode] = json.loads(p.stdout.removeprefix("partial line"))
    assert runs["warm"].pop("ppid") == server.pid  # the server's fork ran it
    assert runs["cold"].pop("ppid") != server.pid
    # KMP_DUPLICATE_LIB_OK=True: set by scikit-learn's import in the server, as in a cold stage that imports it
    # (this fake does not; Intel's OpenMP reads it when it loads, which only an import would do)
    assert runs["warm"].pop("kmp") == "True" and runs["cold"].pop("kmp") is None
    assert runs["warm"] == runs["cold"]  # argv, cwd, environment, stdin, sys.path[0], __file__, __main__
    assert runs["warm"]["argv"] == ["stages/fake.py", "echo", "x y"] and runs["warm"]["probe"] == "p"
    assert runs["warm"]["file"] == str(folder / "stages" / "fake.py") and runs["warm"]["spec"] is None
    for what, code in (("fail", 1), ("exit", 3)):
        w, c = fake(folder, warm_env, what), fake(folder, cold_env, what)
        assert (w.returncode, w.stdout, w.stderr) == (c.returncode, c.stdout, c.stderr) and c.returncode == code
        assert what != "fail" or w.stderr == "fake: error: planted failure in params.yaml key x; fix x\n"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait(cond, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_to_the_stage_process_reaches_the_fork(warm, sig):
    """TERM and INT are relayed (the caller then ends as the fork did); a KILLed caller cannot relay, so the
    fork ends itself when its caller's connection closes: no stage ever runs on without its DVC."""
    folder, warm_env, _, server = warm
    (folder / "pid").unlink(missing_ok=True)
    p = subprocess.Popen([sys.executable, "stages/fake.py", "sleep"], cwd=folder, env=warm_env, stderr=subprocess.PIPE)
    assert _wait(lambda: (folder / "pid").exists() and (folder / "pid").read_text())
    fork = int((folder / "pid").read_text())
    assert fork != p.pid and _alive(fork)
    p.send_signal(sig)
    code = p.wait(timeout=20)
    assert _wait(lambda: not _alive(fork)), "the fork outlived its caller"
    expected = {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[sig]
    assert code == expected
    if sig == signal.SIGINT:  # run_stage's one line, as in a cold run
        assert "fake: interrupted; no partial output was kept" in p.stderr.read().decode()


def test_the_server_refuses_what_it_could_run_differently_and_the_stage_runs_cold(warm, tmp_path):
    folder, warm_env, _, server = warm
    p = fake(folder, {**warm_env, "OMP_NUM_THREADS": "7"}, "echo")
    assert p.returncode == 0
    assert p.stderr.splitlines() == [
        "fake: warm start refused (environment variable OMP_NUM_THREADS differs from the server's (read at import "
        "by some libraries)); starting cold"
    ]
    assert json.loads(p.stdout.removeprefix("partial line"))["ppid"] != server.pid
    # a source file edited after the server imported it: the stage must not run the old code
    src = tmp_path / "mod.py"
    src.write_text("x = 1\n")
    st = src.stat()
    base = startup.Baseline(env=dict(os.environ), env_set={}, sources={str(src): (st.st_mtime_ns, st.st_size)})
    req = {**startup._request(), "env": dict(os.environ), "path": sys.path[1:]}
    assert startup.refusal(req, base) is None
    src.write_text("x = 22\n")
    assert startup.refusal(req, base) == f"{src} changed since the server imported it"
    assert "another module search path" in startup.refusal({**req, "path": ["/elsewhere"]}, base)
    # no server where the variable points: one line, then cold
    p = fake(folder, {**warm_env, startup.SOCKET_ENV: str(tmp_path / "none.sock")}, "echo")
    assert p.returncode == 0 and p.stderr.startswith("fake: warm start unavailable (") and "starting cold" in p.stderr


# A native thread no Python code knows of (libc's pause as its start routine): what a library's worker pool is.
# onnxruntime's import started one on the 2-core machine the preload list was made on, not on every machine.
NATIVE_THREAD = (
    "import ctypes; libc = ctypes.CDLL(None); t = ctypes.c_ulong()\n"
    "assert libc.pthread_create(ctypes.byref(t), None, ctypes.cast(libc.pause, ctypes.c_void_p), None) == 0"
)


@pytest.mark.parametrize(
    "code, hazard",
    [
        ("import numpy, scipy.linalg", None),  # OpenBLAS pools stop at a fork by themselves
        ("import threading, time; threading.Thread(target=time.sleep, args=(5,), daemon=True).start()", "Python"),
        (NATIVE_THREAD, "native thread(s) that keep running across a fork"),
    ],
)
def test_fork_hazard_names_threads_a_fork_would_lose(code, hazard):
    p = subprocess.run(
        [sys.executable, "-c", f"{code}\nfrom melanoma.startup import fork_hazard\nprint(fork_hazard())"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert (p.stdout.strip() == "None") if hazard is None else (hazard in p.stdout)


@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_startup_marks_time_the_start_and_the_lazy_imports(warm, tmp_path, mode):
    folder, warm_env, cold_env, _ = warm
    log = tmp_path / "marks.jsonl"
    env = {**(warm_env if mode == "warm" else cold_env), startup.LOG_ENV: str(log)}
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert fake(folder, env, "lazy").returncode == 0
    (mark,) = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert mark["stage"] == "fake" and mark["argv"] == ["lazy"]
    assert before - 0.02 <= mark["started"] <= mark["main_at"] <= mark["end_at"]  # 10 ms ticks for `started`
    assert mark["lazy_s"] > 0  # xml.dom.minidom, imported inside main


def test_the_command_runs_with_a_server_and_leaves_nothing_running(tmp_path):
    cmd = [sys.executable, "-m", "melanoma.startup"]
    p = subprocess.run([*cmd, "bash", "-c", "echo $MELANOMA_WARM_SOCKET; exit 5"], capture_output=True, text=True)
    assert p.returncode == 5 and p.stdout.strip().endswith("warm.sock") and "warm start: " in p.stderr
    assert not Path(p.stdout.strip()).exists()  # the server stopped and its folder went
    off = subprocess.run(
        [*cmd, "bash", "-c", "echo [$MELANOMA_WARM_SOCKET]"],
        env={**os.environ, "MELANOMA_WARM": "0"},
        capture_output=True,
        text=True,
    )
    assert off.returncode == 0 and off.stdout == "[]\n"
    nowhere = tmp_path / "no" / "such" / "folder.sock"
    bad = subprocess.run([*cmd, "--serve", str(nowhere)], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"warm server: not started: cannot listen on {tmp_path}/no/such/folder.sock: No such file or directory"
    ]
    missing = subprocess.run([*cmd, "no-such-command-xyz"], capture_output=True, text=True)
    assert missing.returncode == 127 and "cannot run no-such-command-xyz" in missing.stderr
    # killed with everything it started (as a scheduler kills a job): the server sees its stdin close and stops
    p = subprocess.Popen(
        [*cmd, "bash", "-c", "echo $MELANOMA_WARM_SOCKET; sleep 60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    sock = p.stdout.readline().strip()

    def servers() -> list[str]:
        return [c for c in Path("/proc").glob("[0-9]*/cmdline") if _cmdline(c).endswith(f"--serve {sock}")]

    assert servers()
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert _wait(lambda: not servers()), "the server outlived the command that started it"


def _cmdline(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""
