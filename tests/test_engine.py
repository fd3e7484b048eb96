"""The one training engine: resume to identical weights, config change starts over, corrupt checkpoint, NaN stop,
no per-step host reads, and every engine user under bf16 autocast on the CPU (the dtype path CUDA takes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from melanoma.classifiers.registry import build_model
from melanoma.classifiers.train import ClassifierTask
from melanoma.data.datasets import load_split
from melanoma.engine import CheckpointError, Diverged, Runtime, TrainingPlan, fit, load_checkpoint
from melanoma.generators.dcgan import DCGANTask
from melanoma.generators.ddpm import DDPMTask
from melanoma.generators.quality import C2STTask
from melanoma.generators.upscale import SRTask
from tests.tiny import TINY_MODELS, make_pack, tiny_params

BF16 = Runtime(amp=torch.bfloat16)


class Linear:
    """A minimal Task: least squares on fixed data, with a CPU generator for the batches."""

    name, advice = "linear", "lower the test's lr"

    def __init__(self, lr: float = 0.1) -> None:
        torch.manual_seed(0)
        self.w = torch.nn.Linear(4, 1)
        self.opt = torch.optim.SGD(self.w.parameters(), lr)
        self.x, self.g = torch.randn(64, 4), torch.Generator().manual_seed(1)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def step(self, step: int) -> dict[str, torch.Tensor]:
        i = torch.randint(0, 64, (8,), generator=self.g)
        loss = ((self.w(self.x[i])[:, 0] - self.y[i]) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.state_dict(), "opt": self.opt.state_dict(), "g": self.g.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.w.load_state_dict(s["w"])
        self.opt.load_state_dict(s["opt"])
        self.g.set_state(s["g"])


def _plan(folder: Path, steps: int = 12, **kw: Any) -> TrainingPlan:
    return TrainingPlan(
        steps=steps, seed=0, period=3, config={"lr": 0.1, **kw}, folder=folder, checkpoint_minutes=0, keep=2
    )


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    full = Linear()
    fit(full, _plan(tmp_path / "a"), log=lambda _: None)
    part = Linear()
    fit(part, _plan(tmp_path / "b", steps=12), log=lambda _: None)
    (tmp_path / "b" / "checkpoint_step_12.pth").unlink()  # as if killed during the last period
    assert [f.name for f in (tmp_path / "b").glob("checkpoint_step_*.pth")] == ["checkpoint_step_9.pth"]
    logs: list[str] = []
    resumed = Linear()
    r = fit(resumed, _plan(tmp_path / "b"), log=logs.append)
    assert r.resumed_from == 9 and logs[0] == (
        f"linear: resuming from checkpoint {tmp_path / 'b'}/checkpoint_step_9.pth after step 9"
    )
    assert torch.equal(resumed.w.weight, full.w.weight) and torch.equal(resumed.w.bias, full.w.bias)
    assert sorted(f.name for f in (tmp_path / "b").glob("checkpoint_*")) == [
        "checkpoint_step_12.pth",
        "checkpoint_step_9.pth",
    ]  # keep: 2


class Clock:
    """engine.now for tests: `minutes` advance only when the task's step says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Slow(Linear):
    """Linear whose every step takes `minutes` of the fake clock and that is killed (KeyboardInterrupt, what
    SIGINT raises; SIGKILL leaves the same files) before step `kill_at`."""

    def __init__(self, clock: Clock, minutes: float, kill_at: int | None = None) -> None:
        super().__init__()
        self.clock, self.minutes, self.kill_at = clock, minutes, kill_at

    def step(self, step: int) -> dict[str, torch.Tensor]:
        if step == self.kill_at:
            raise KeyboardInterrupt
        self.clock.t += 60 * self.minutes
        return super().step(step)


def test_validating_every_step_does_not_checkpoint_every_step_and_a_killed_run_resumes(tmp_path, monkeypatch):
    """Checkpoints go by wall time, not by validation: with a period of 1 step and checkpoint_minutes 10 at 3
    minutes a step, one is written every 4 steps (and after the last); a run killed at step 17 resumes from the
    newest one (step 16) and ends with the uninterrupted run's weights."""
    clock = Clock()
    monkeypatch.setattr("melanoma.engine.now", clock)

    def plan(folder: Path) -> TrainingPlan:
        return TrainingPlan(steps=30, seed=0, period=1, folder=folder, checkpoint_minutes=10, keep=1)

    full = Slow(clock, minutes=3)
    r = fit(full, plan(tmp_path / "a"), log=lambda _: None)
    assert r.timing.written == 8  # after steps 4, 8, ..., 28 and the last (30): not 30
    with pytest.raises(KeyboardInterrupt):
        fit(Slow(clock, minutes=3, kill_at=17), plan(tmp_path / "b"), log=lambda _: None)
    assert [f.name for f in (tmp_path / "b").glob("checkpoint_*")] == ["checkpoint_step_16.pth"]
    resumed = Slow(clock, minutes=3)
    r = fit(resumed, plan(tmp_path / "b"), log=lambda _: None)
    assert r.resumed_from == 16
    assert torch.equal(resumed.w.weight, full.w.weight) and torch.equal(resumed.w.bias, full.w.bias)


def test_timing_says_where_the_wall_time_went(tmp_path, monkeypatch):
    """Fitted.timing and the log line split the wall time into steps, validation, checkpoints and resume."""
    clock = Clock()
    monkeypatch.setattr("melanoma.engine.now", clock)

    class Validating(Slow):
        def end_period(self, step: int, means: dict[str, float]) -> None:
            self.clock.t += 60  # one minute of validation per period

    logs: list[str] = []
    r = fit(
        Validating(clock, minutes=1),
        TrainingPlan(steps=6, seed=0, period=3, folder=tmp_path, checkpoint_minutes=100),
        log=logs.append,
    )
    assert (r.timing.wall, r.timing.periods, r.timing.steps) == (480.0, 120.0, 360.0)
    assert r.timing.outside_share == pytest.approx(0.25) and r.timing.written == 1
    assert logs == [
        "linear: 480.0 s for 6 steps, 75.0% in training steps; outside them: validation and logging 120.0 s, "
        "checkpoints 0.0 s (1 written), resume 0.0 s"
    ]


def test_a_failed_background_write_is_reported_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    fit(Linear(), _plan(tmp_path, steps=6), log=lambda _: None)  # checkpoints after steps 3 and 6
    real_save = torch.save

    def full_disk(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"checkpoint_step_9.pth: No space left on device; the previous"):
        fit(Linear(), _plan(tmp_path, steps=12), log=lambda _: None)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(("checkpoint", ".checkpoint"))) == [
        "checkpoint_step_3.pth",
        "checkpoint_step_6.pth",
    ]  # no partial file left behind


def test_another_config_starts_over_and_a_corrupt_checkpoint_is_one_error(tmp_path):
    fit(Linear(), _plan(tmp_path), log=lambda _: None)
    logs: list[str] = []
    r = fit(Linear(), _plan(tmp_path, batch=16), log=logs.append)
    assert r.resumed_from is None and "are for another config" in logs[0] and "starting over" in logs[0]
    (tmp_path / "checkpoint_step_12.pth").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint_step_12.pth is corrupt .*delete it to start over"):
        fit(Linear(), _plan(tmp_path, batch=16), log=lambda _: None)


def test_code_change_starts_over(tmp_path):
    code = tmp_path / "code.py"
    code.write_text("v1")
    fit(
        Linear(),
        TrainingPlan(steps=6, seed=0, period=3, code=[code], folder=tmp_path / "c", checkpoint_minutes=0),
        log=lambda _: None,
    )
    code.write_text("v2")
    r = fit(
        Linear(),
        TrainingPlan(steps=6, seed=0, period=3, code=[code], folder=tmp_path / "c", checkpoint_minutes=0),
        log=lambda _: None,
    )
    assert r.resumed_from is None


def test_nan_stops_before_the_period_is_saved_and_scalars_are_read_once_per_period(tmp_path, monkeypatch):
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or real_tolist(t))
    task = Linear(lr=10.0)  # diverges within a few steps
    with pytest.raises(Diverged, match=r"linear: loss became (nan|inf) by step \d+; lower the test's lr"):
        fit(task, TrainingPlan(steps=300, seed=0, period=5, folder=tmp_path, checkpoint_minutes=0), log=lambda _: None)
    saved = [load_checkpoint(f)["last"]["loss"] for f in tmp_path.glob("checkpoint_*.pth")]
    assert saved and all(np.isfinite(saved))  # checkpoints exist, and none holds the diverged period
    last_step = max(load_checkpoint(f)["step"] for f in tmp_path.glob("checkpoint_*.pth"))
    assert len(reads) == last_step // 5 + 1  # one host read per period of 5 steps (the last one found the NaN)


# ---------------------------------------------------------------- every engine user under bf16 autocast


def _params(w: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in w.parameters()]


def _trained(before: list[torch.Tensor], model: torch.nn.Module) -> None:
    after = list(model.parameters())
    assert all(p.dtype == torch.float32 for p in after)  # autocast computes in bf16, the weights stay float32
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def _run(task: Any, steps: int = 2, period: int = 1) -> dict[str, float]:
    return fit(task, TrainingPlan(steps=steps, seed=0, period=period), BF16, log=lambda _: None).last


@pytest.mark.parametrize("arch", ["ResNet", "ViT", "Swin", "MedViT"])
def test_classifier_task_trains_under_bf16_autocast(tmp_path, arch):
    # 32 px, not 16: at 16 px ResNet's last stage sees a 1x1 map, and oneDNN's bf16 convolution backward then
    # returns Inf weight gradients on the CPU (measured with torch 2.14.1, 1 or 2 threads; fp32 is fine)
    size = 32
    data = make_pack(tmp_path, size=size)
    tp = tiny_params()["classifiers"]["train"]
    built = build_model(arch, TINY_MODELS[arch], 2, size)
    task = ClassifierTask(
        arch, built, tp, 1e-3, 0, load_split(data, "train"), load_split(data, "val"), BF16, log=lambda _: None
    )
    before = _params(task.model)
    last = _run(task, steps=2 * tp["eval_every"], period=tp["eval_every"])  # validates under autocast too
    assert np.isfinite(last["train_loss"]) and 0 <= last["val_auroc"] <= 1
    _trained(before, task.model)


def test_generator_tasks_train_under_bf16_autocast():
    g = tiny_params()["generators"]
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    for task in (DCGANTask(g["dcgan"], x, 16, 0, BF16), DDPMTask(g["ddpm"], x, 16, 0, BF16)):
        model = task.G if isinstance(task, DCGANTask) else task.unet
        before = _params(model)
        assert all(np.isfinite(v) for v in _run(task).values())
        _trained(before, model)
        assert all(p.dtype == torch.float32 for p in task.ema.module.parameters())


def test_upscaler_and_c2st_tasks_train_under_bf16_autocast():
    sr = SRTask({"channels": 8, "lr": 1e-3, "batch_size": 4}, 2, torch.rand(8, 3, 16, 16), 0, BF16)
    before = _params(sr.model)
    assert np.isfinite(_run(sr)["loss"])
    _trained(before, sr.model)
    x, y = torch.rand(16, 3, 16, 16) * 2 - 1, torch.cat([torch.zeros(8), torch.ones(8)])
    critic = C2STTask(x, y, np.arange(16), 0, BF16)
    before = _params(critic.net)
    assert np.isfinite(_run(critic)["loss"])
    _trained(before, critic.net)


def test_every_code_hash_list_names_existing_files():
    """A moved module would otherwise fail every training run with FileNotFoundError."""
    from melanoma.classifiers.train import CODE as classifier_code
    from melanoma.generators.train import CODE as generator_code
    from melanoma.generators.upscale import CODE as upscaler_code

    for code in (classifier_code, generator_code, upscaler_code):
        assert code and all(p.is_file() for p in code) and any(p.name == "engine.py" for p in code)


# ---------------------------------------------------------------- hostile checkpoint folders


def test_start_over_removes_only_the_engines_files_and_odd_names_are_left_alone(tmp_path):
    fit(Linear(), _plan(tmp_path), log=lambda _: None)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoint_step_9 (1).pth").write_bytes(b"a file manager's copy")
    (tmp_path / "checkpoint_step_abc.pth").write_bytes(b"?")
    logs: list[str] = []
    r = fit(Linear(), _plan(tmp_path, batch=1), log=logs.append)
    assert r.resumed_from is None and "starting over" in logs[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "checkpoint_step_9 (1).pth").exists() and (tmp_path / "checkpoint_step_abc.pth").exists()
    assert sorted(f.name for f in tmp_path.glob("checkpoint_step_*[0-9].pth")) == [
        "checkpoint_step_12.pth",
        "checkpoint_step_9.pth",
    ]


@pytest.mark.parametrize(
    "payload,message",
    [
        (torch.ones(3), "holds a Tensor, not a training checkpoint"),
        ({"config_hash": None, "step": 3}, "lacks last, task: it was not written by this engine"),
        ({"config_hash": None, "step": 3, "last": {}, "task": {"w": {}}}, "does not fit the linear being trained"),
    ],
)
def test_a_checkpoint_that_is_not_this_runs_is_one_error(tmp_path, payload, message):
    fit(Linear(), _plan(tmp_path), log=lambda _: None)
    if isinstance(payload, dict):  # the run's own hash, so that the engine tries to resume it
        payload["config_hash"] = load_checkpoint(tmp_path / "checkpoint_step_12.pth")["config_hash"]
    torch.save(payload, tmp_path / "checkpoint_step_15.pth")
    with pytest.raises(CheckpointError, match=f"checkpoint_step_15.pth.*{message}.*delete it to start over"):
        fit(Linear(), _plan(tmp_path), log=lambda _: None)
    assert (tmp_path / "checkpoint_step_15.pth").exists()  # reported, never deleted behind the user's back


def test_a_checkpoint_folder_that_is_a_file_is_one_error(tmp_path):
    (tmp_path / "ck").write_text("not a folder")
    with pytest.raises(CheckpointError, match=r"cannot use checkpoint folder .*ck: .*writable folder"):
        fit(Linear(), _plan(tmp_path / "ck"), log=lambda _: None)


def test_a_resumed_run_does_not_repeat_logged_periods(tmp_path):
    """Killed after a period was logged but before its checkpoint: the curves must not hold that period twice."""
    fit(Linear(), _plan(tmp_path), log=lambda _: None)
    (tmp_path / "checkpoint_step_12.pth").unlink()
    fit(Linear(), _plan(tmp_path), log=lambda _: None)
    steps = [line.split("\t")[0] for line in (tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines()]
    assert steps == ["step", "3", "6", "9", "12"]


def test_two_runs_never_train_into_one_checkpoint_folder(tmp_path):
    """A generator's checkpoints live outside its output; two live runs of one stage would resume from each
    other's. The second is refused at once, naming the first's pid; the first finishes unharmed."""
    import os
    import subprocess
    import sys
    import time

    from melanoma.io import OutputBusy
    from tests.conftest import ROOT

    flag = tmp_path / "training"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from tests.test_engine import Linear, _plan\nfrom melanoma.engine import fit\n"
        "class Slow(Linear):\n    def step(self, step):\n        Path(sys.argv[1]).touch()\n"
        "        time.sleep(0.05)\n        return super().step(step)\n"
        "fit(Slow(), _plan(Path(sys.argv[2]), steps=60), log=lambda _: None)\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(flag), str(tmp_path / "ck")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not flag.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(OutputBusy, match=rf"ck is being written by another process \(pid {first.pid}\)"):
        fit(Linear(), _plan(tmp_path / "ck"), log=lambda _: None)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    fitted = fit(Linear(), _plan(tmp_path / "ck", steps=60), log=lambda _: None)  # its lock is gone with it
    assert fitted.resumed_from == 60
