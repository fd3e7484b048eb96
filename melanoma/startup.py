"""Stage start-up: a warm server that imports the heavy libraries once for all the stages of a run, and the
start-up marks `bench/startup.py` reads.

Every stage is its own process (`python stages/<name>.py`, so that `dvc repro -s` runs one cell alone), and each
one used to import torch, timm, torchvision and `torch._dynamo` (which any optimizer method loads): ~3.5 s per
stage, a fifth of the CPU demo's wall time (`python bench/startup.py --mode cold`). `python -m melanoma.startup
CMD...` (what `./run.sh repro` runs) starts a server that imports those libraries and the whole `melanoma`
package once, then runs CMD (e.g. `dvc repro`) with MELANOMA_WARM_SOCKET naming the server's socket. Each stage
script's `run_stage` then hands the server its arguments, working directory, environment and stdin/stdout/stderr;
the server forks, the fork runs the stage script exactly as `python` would (same `__main__`, argv, cwd,
environment, exit status, signals), and the stage's own process only relays signals and the exit status. This is
the zygote / fork-server pattern (Python's own `multiprocessing` forkserver preloads modules the same way; it
cannot serve processes it did not start, so it does not fit a command DVC launches).

A stage runs cold, in its own process, whenever the warm one could differ: no server, another Python or module
path, an environment variable a library reads at import that differs from the server's, or a `melanoma` source
file changed since the server imported it. Each such fallback prints one line saying why. The server refuses to
start if its imports left anything a fork would not carry over safely (a second thread, e.g. an OpenMP pool; an
initialised CUDA context), and restores torch's default random state after them.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import io
import json
import os
import pkgutil
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOCKET_ENV = "MELANOMA_WARM_SOCKET"
LOG_ENV = "MELANOMA_STARTUP_LOG"  # bench/startup.py: append one JSON line per stage run to this file
OFF_ENV = "MELANOMA_WARM"  # "0": run the command with every stage cold

# What stages import lazily, inside functions, beside what the `melanoma` package imports at its top level.
# A module missing here is only imported by the stage itself (slower, never wrong). Not onnxruntime: its import
# can start a native thread that a fork would not carry over (it did on a 2-core machine); export and the serving
# commands import it themselves.
THIRD_PARTY = (
    "torch",
    "torch._dynamo",
    "torchvision",
    "torchvision.ops",
    "timm",
    "timm.layers",
    "timm.optim",
    "timm.scheduler",
    "timm.utils",
    "diffusers",
    "safetensors.torch",
    "huggingface_hub",
    "dvclive",
    "scipy.stats",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "statsmodels.stats.multitest",
    "statsmodels.stats.proportion",
    "matplotlib.pyplot",
    "onnx",
    "torch_fidelity.feature_extractor_inceptionv3",
)

# Variables a shell or DVC sets per command that no library reads at import: they may differ from the server's.
PER_COMMAND_ENV = ("PWD", "OLDPWD", "SHLVL", "_", SOCKET_ENV)
PER_COMMAND_PREFIXES = ("DVC_",)

_in_fork = False  # True in a fork that runs a stage: run_stage there runs the stage instead of handing it on
_caller_started: float | None = None  # in such a fork: when the stage's own process started (process_started)


class WarmRefused(Exception):
    """The server cannot run this stage exactly as a cold process would; the message says why."""


# ---------------------------------------------------------------------------------------------------- the client


def run_elsewhere(stage: str) -> None:
    """Called first by `melanoma.stage.run_stage`: with a warm server named by MELANOMA_WARM_SOCKET, have it run
    this stage script and exit with the fork's exit status (or die of the same signal); never returns then.
    Returns, to let this process run the stage itself, when there is no server, inside the server's fork, or when
    the server refuses (one line on stderr saying why)."""
    path = os.environ.get(SOCKET_ENV)
    if _in_fork or not path:
        return
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(path)
        socket.send_fds(conn, [json.dumps(_request()).encode()], [0, 1, 2])
        reply = conn.recv(4096).decode()
    except OSError as e:
        print(f"{stage}: warm start unavailable ({e.strerror or e}); starting cold", file=sys.stderr)
        return
    if not reply.startswith("pid "):
        print(f"{stage}: warm start refused ({reply.removeprefix('refuse ')}); starting cold", file=sys.stderr)
        return
    _relay(conn, int(reply.split()[1]), stage)


def _request() -> dict[str, Any]:
    return {
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "executable": sys.executable,
        "path": sys.path[1:],  # [0] is the script's folder, set in the fork from argv[0]
        "package": sys.modules["melanoma"].__path__[0],
        "started": process_started(),
    }


def _relay(conn: socket.socket, pid: int, stage: str) -> None:
    """Forward the signals a terminal, DVC or a scheduler sends this process to the fork running the stage, wait
    for its exit status (the server sends it), and end this process the same way."""

    def forward(signum: int, frame: object) -> None:
        # the fork may have ended (and been reaped by the server) between its exit and the reply below: nothing
        # is left to tell, and the reply carries its status
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    reply = conn.recv(4096).decode()
    if not reply.startswith("exit "):
        print(f"{stage}: error: the warm server stopped before the stage ended; run it again", file=sys.stderr)
        raise SystemExit(1)
    code = int(reply.split()[1])
    sys.stdout.flush()
    if code < 0:  # the fork died of a signal: so does this process, as DVC would see from a cold run
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)


# ---------------------------------------------------------------------------------------------------- the server


def preload() -> tuple[int, list[str]]:
    """Import THIRD_PARTY and every `melanoma` module (this one aside), leaving torch's default random state as
    `import torch` left it. Returns (modules now imported, THIRD_PARTY names not installed)."""
    import torch

    state = torch.get_rng_state()
    missing = []
    for name in THIRD_PARTY:
        try:
            __import__(name)
        except ModuleNotFoundError:
            missing.append(name)
    import melanoma

    for info in pkgutil.walk_packages(melanoma.__path__, "melanoma."):
        if info.name != "melanoma.startup":
            __import__(info.name)
    torch.set_rng_state(state)
    return len(sys.modules), missing


def fork_hazard() -> str | None:
    """Why forking this process could give a stage other results, or a hang, that a fresh process would not, or
    None: a Python thread, a native thread that keeps running across a fork (a fork keeps only the calling
    thread, and locks the others hold stay locked: an OpenMP pool, a library's worker), or an initialised CUDA
    context (CUDA cannot be used across fork). OpenBLAS's pools (numpy's, scipy's) stop before a fork by their own
    pthread_atfork handler and restart when next used, so they do not count: a probe fork stops them before the
    native threads are counted. Linux only (threads are counted in /proc)."""
    threads = threading.enumerate()
    if len(threads) > 1:
        return f"the imports started Python threads ({', '.join(t.name for t in threads[1:])})"
    if not Path("/proc/self/task").is_dir():
        return "warm start counts threads in /proc, which this system lacks (Linux only)"
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    extra = len(os.listdir("/proc/self/task")) - 1
    if extra:
        return f"the imports started {extra} native thread(s) that keep running across a fork (a worker pool)"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "the imports initialised CUDA"
    return None


@dataclass
class Baseline:
    """What a stage's request is checked against and what its fork inherits: the server's environment before its
    imports (`env`), the variables those imports set (`env_set`: a cold stage's own imports would set them too),
    and (mtime_ns, size) of every `melanoma` source file imported (`sources`)."""

    env: dict[str, str]
    env_set: dict[str, str]
    sources: dict[str, tuple[int, int]]


def _sources() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every imported `melanoma` source file: a stage must not run code older than its
    checkout's."""
    out = {}
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if (name == "melanoma" or name.startswith("melanoma.")) and file:
            st = os.stat(file)
            out[file] = (st.st_mtime_ns, st.st_size)
    return out


def refusal(req: dict[str, Any], base: Baseline) -> str | None:
    """Why a fork of this server would not run `req`'s stage as a cold process would, or None."""
    if req["executable"] != sys.executable:
        return f"the stage runs {req['executable']}, the server {sys.executable}"
    if req["path"] != sys.path[1:] or req["package"] != sys.modules["melanoma"].__path__[0]:
        return "another module search path (PYTHONPATH or the virtual environment differs from the server's)"
    env, own = req["env"], base.env
    differ = sorted(
        k
        for k in set(env) | set(own)
        if env.get(k) != own.get(k)
        and env.get(k) != base.env_set.get(k, own.get(k))  # the stage's own imports set it as the server's did
        and k not in PER_COMMAND_ENV
        and not k.startswith(PER_COMMAND_PREFIXES)
    )
    if differ:
        return f"environment variable {differ[0]} differs from the server's (read at import by some libraries)"
    for file, stamp in base.sources.items():
        try:
            st = os.stat(file)
        except FileNotFoundError:
            return f"{file} was deleted since the server imported it"
        if (st.st_mtime_ns, st.st_size) != stamp:
            return f"{file} changed since the server imported it"
    return None


def serve(path: Path) -> None:
    """Preload, check for fork hazards, listen on the Unix socket `path`, print "ready" on stdout, then fork one
    child per stage request until its stdin closes (the process that started it ended) or SIGTERM/SIGINT; then
    it stops listening, waits for the stages still running and returns. Raises WarmRefused when a hazard makes
    forking unsafe."""
    t0 = time.perf_counter()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:  # first: a bad path fails in milliseconds, not after the imports
        listener.bind(str(path))
    except OSError as e:  # a missing folder, or a path over AF_UNIX's ~107 bytes (a long TMPDIR)
        raise WarmRefused(f"cannot listen on {path}: {e.strerror or e}") from None
    env = dict(os.environ)
    count, missing = preload()
    hazard = fork_hazard()
    if hazard:
        raise WarmRefused(hazard)
    base = Baseline(env, {k: v for k, v in os.environ.items() if env.get(k) != v}, _sources())
    listener.listen(64)
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    note = f"; not installed: {', '.join(missing)}" if missing else ""
    print(f"ready: {count} modules imported in {time.perf_counter() - t0:.1f} s{note}", flush=True)
    StartupMarks("warm server").close()
    children: dict[int, socket.socket] = {}
    while not stopping or children:
        ready, _, _ = select.select([] if stopping else [listener, sys.stdin], [], [], 0.1)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            stopping.append("stdin")  # whoever started it is gone (stop_server, or killed): stop too
        elif listener in ready:
            _accept(listener, base, children)
        _reap(children)
    listener.close()
    path.unlink(missing_ok=True)


def _accept(listener: socket.socket, base: Baseline, children: dict[int, socket.socket]) -> None:
    conn, _ = listener.accept()
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        req = json.loads(data)
    except (OSError, ValueError) as e:
        print(f"warm server: a request that could not be read ({e}) was dropped", file=sys.stderr)
        conn.close()
        return
    why = refusal(req, base) if len(fds) == 3 else "the stage's stdin/stdout/stderr did not arrive"
    if why:
        conn.send(f"refuse {why}".encode())
        conn.close()
        for fd in fds:
            os.close(fd)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            listener.close()
            for other in children.values():
                other.close()
            _run_in_fork(conn, req, fds, base.env_set)  # ends the fork with the stage's status
        except BaseException:  # noqa: BLE001 - setting up the fork failed: report it, never return to the loop
            traceback.print_exc()
        finally:
            os._exit(70)
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    conn.send(f"pid {pid}".encode())


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        try:
            conn.send(f"exit {os.waitstatus_to_exitcode(status)}".encode())
        except OSError as e:  # the stage's own process is gone (killed): nobody is waiting for this status
            print(f"warm server: stage process {pid} ended, its caller was gone ({e.strerror})", file=sys.stderr)
        conn.close()


# ------------------------------------------------------------------------------------------ inside the fork


def _run_in_fork(conn: socket.socket, req: dict[str, Any], fds: list[int], env_set: dict[str, str]) -> None:
    """Become the process `python <argv>` would have been, run the stage script, exit with its status."""
    global _in_fork, _caller_started
    _in_fork, _caller_started = True, req["started"]
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    os.environ.update(env_set)
    _reopen_stdio()
    script = os.path.abspath(req["argv"][0])
    sys.argv = list(req["argv"])
    sys.path[0] = os.path.dirname(script)  # as `python <script>` sets them: argv[0] as given, the rest absolute
    random.seed()  # a fresh process seeds these from the OS; a fork would share the server's state
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    # the stage's own process died without relaying (SIGKILL): end this fork too rather than run on unowned
    threading.Thread(target=_die_with_caller, args=(conn,), daemon=True, name="warm-caller").start()
    code = _run_script(script)
    for t in threading.enumerate():  # as the interpreter does at exit: wait for non-daemon threads
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()  # what interpreter exit would run (os._exit below skips it)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _die_with_caller(conn: socket.socket) -> None:
    conn.recv(1)  # the caller never sends: this returns when its end closes
    os.kill(os.getpid(), signal.SIGKILL)


def _reopen_stdio() -> None:
    """sys.stdin/stdout/stderr on the received descriptors, buffered as Python buffers them at start-up: stdout
    by line on a terminal and by block otherwise, stderr by line, all unbuffered under PYTHONUNBUFFERED."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))

    def text(fd: int, mode: str, errors: str, line: bool) -> io.TextIOWrapper:
        raw = open(fd, mode + "b", buffering=0 if unbuffered and mode == "w" else -1, closefd=False)
        return io.TextIOWrapper(
            raw, encoding=sys.__stdout__.encoding, errors=errors, line_buffering=line, write_through=unbuffered
        )

    sys.stdin = sys.__stdin__ = text(0, "r", "strict", False)
    sys.stdout = sys.__stdout__ = text(1, "w", "strict", os.isatty(1))
    sys.stderr = sys.__stderr__ = text(2, "w", "backslashreplace", True)


def _run_script(script: str) -> int:
    """Run `script` (an absolute path) as `__main__`, as `python script` would, and return the exit status it
    would have: SystemExit's code; 1 after printing an uncaught exception's traceback; an uncaught Ctrl-C ends
    the fork by SIGINT, as Python does. Not runpy.run_path: it would show the script its own argv[0] (absolute)
    where `python` keeps the one given."""
    from importlib.machinery import SourceFileLoader

    main = types.ModuleType("__main__")
    main.__file__, main.__cached__, main.__spec__ = script, None, None
    main.__loader__ = SourceFileLoader("__main__", script)
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    try:
        code = compile(Path(script).read_bytes(), script, "exec")
        exec(code, main.__dict__)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - reported exactly as the interpreter reports an uncaught exception
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


# ------------------------------------------------------------------------------------------- start-up marks


def process_started(pid: int | str = "self") -> float:
    """When process `pid` started, in seconds on CLOCK_BOOTTIME (the clock /proc/<pid>/stat counts its start
    in, at 1/CLK_TCK resolution: 10 ms on Linux). Linux only: raises FileNotFoundError without /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5); the split drops the first two


class StartupMarks:
    """With MELANOMA_STARTUP_LOG set (bench/startup.py sets it), one JSON line per stage run appended to that
    file, times in seconds on CLOCK_BOOTTIME: `started`, when the stage's process started (the process DVC
    launched, also when a warm server's fork ran the stage); `main_at`, when the stage's own work began;
    `end_at`, when it ended; `lazy_s`, the seconds spent after `main_at` importing modules not yet imported
    (torch._dynamo at the first optimizer call, say), which are start-up too. Start-up is
    `main_at - started + lazy_s`. Without the variable, nothing is measured or written."""

    def __init__(self, stage: str) -> None:
        self.path = os.environ.get(LOG_ENV)
        self.stage, self.lazy, self.depth = stage, 0.0, 0
        if self.path:
            self.main_at = time.clock_gettime(time.CLOCK_BOOTTIME)
            self.started = _caller_started if _in_fork else process_started()
            self._import = builtins.__import__
            builtins.__import__ = self._timed_import

    def _timed_import(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.depth or name in sys.modules:
            return self._import(name, *args, **kwargs)
        self.depth += 1
        t0 = time.perf_counter()
        try:
            return self._import(name, *args, **kwargs)
        finally:
            self.depth -= 1
            self.lazy += time.perf_counter() - t0

    def close(self) -> None:
        """Write the line (once the stage ended, whichever way)."""
        if self.path:
            builtins.__import__ = self._import
            line = {
                "stage": self.stage,
                "argv": sys.argv[1:],
                "started": self.started,
                "main_at": self.main_at,
                "end_at": time.clock_gettime(time.CLOCK_BOOTTIME),
                "lazy_s": self.lazy,
            }
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------------------------------------ the command


def start_server(folder: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, str]:
    """Start `python -m melanoma.startup --serve` in its own session (a terminal's Ctrl-C reaches the stages
    through their own processes, not the server) with its socket in `folder`. Returns (process, socket path,
    its "ready" line). Raises WarmRefused with the server's reason when it does not come up."""
    path = folder / "warm.sock"
    proc = subprocess.Popen(  # cwd: the socket's folder, so that sys.path[0] names no project folder
        [sys.executable, "-m", "melanoma.startup", "--serve", str(path)],
        stdin=subprocess.PIPE,  # closed when this process ends, however it ends: the server then stops
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
        cwd=folder,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("ready"):
        raise WarmRefused(f"the server exited with status {proc.wait()} (its reason is on the line above)")
    return proc, path, line


def stop_server(proc: subprocess.Popen) -> None:
    """Ask the server to stop (it waits for stages still running) and wait for it."""
    proc.stdin.close()
    proc.wait()


def main(argv: list[str]) -> int:
    """`python -m melanoma.startup CMD [ARGS...]`: run CMD with a warm server for its stages; its exit status.
    `--serve SOCKET`: be that server (started by the former). MELANOMA_WARM=0 runs CMD with every stage cold."""
    if argv[:1] == ["--serve"] and len(argv) == 2:
        try:
            serve(Path(argv[1]))
        except WarmRefused as e:
            print(f"warm server: not started: {e}", file=sys.stderr)
            return 1
        return 0
    if not argv or argv[0].startswith("-"):
        print("usage: python -m melanoma.startup CMD [ARGS...]   (e.g. dvc repro)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="melanoma-warm-") as folder:
        server = None
        if env.get(OFF_ENV) != "0":
            try:
                server, path, line = start_server(Path(folder))
                env[SOCKET_ENV] = str(path)
                print(f"warm start: {line.removeprefix('ready: ')} once for every stage", file=sys.stderr)
            except WarmRefused as e:
                print(f"warm start off, every stage starts cold: {e}", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches CMD directly; this waits for it to end
        try:
            return subprocess.call(argv, env=env)
        except OSError as e:
            print(f"melanoma.startup: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
            return 127
        finally:
            if server is not None:
                stop_server(server)


if __name__ == "__main__":  # run as the package's module, so that run_stage in a fork sees the same globals
    from melanoma import startup

    raise SystemExit(startup.main(sys.argv[1:]))
