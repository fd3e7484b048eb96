"""dvc.yaml's code deps match what each stage's script really imports.

DVC reruns a stage only when one of its listed deps changes, so a project file a stage imports but does not list
leaves stale outputs behind a `dvc status` that says up to date; a listed file the stage never imports reruns it for
nothing. tools/generate.py writes the lists from `melanoma.imports` (tests/test_generated.py checks the committed
dvc.yaml is what it writes); these tests check the walk itself and the lists against it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from melanoma.imports import CODE_DIRS, ROOT, imported_files, reached_files

Stage = dict[str, Any]


def load_stages(path: Path = ROOT / "dvc.yaml") -> dict[str, Stage]:
    """Stage name -> its definition (the `do:` body of a foreach stage; a matrix stage's is its own)."""
    stages = yaml.safe_load(path.read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def stage_script(stage: Stage) -> str:
    """The `stages/<name>.py` a stage's `python stages/<name>.py ...` cmd runs."""
    match = re.search(r"\bpython3?\s+(stages/\w+\.py)\b", stage["cmd"])
    assert match, f"cmd {stage['cmd']!r} runs no stages/<name>.py script"
    return match.group(1)


def code_deps(stage: Stage) -> list[str]:
    """The deps under melanoma/ or stages/ (files or folders); data deps (data/, models/, results/) are not code."""
    deps = [dep.rstrip("/") for dep in stage.get("deps", [])]
    return [dep for dep in deps if dep.split("/")[0] in CODE_DIRS]


def covers(dep: str, file: str) -> bool:
    """Whether a dep (a file, or a folder covering everything below it) covers `file`."""
    return file == dep or file.startswith(dep + "/")


def missing_deps(stage: Stage) -> list[str]:
    """The files a stage's script reaches that none of its code deps covers."""
    deps = code_deps(stage)
    return sorted(f for f in reached_files(stage_script(stage)) if not any(covers(d, f) for d in deps))


def stale_deps(stage: Stage) -> list[str]:
    """Code deps that deleting would not uncover anything: each with why (nothing reached, or covered twice)."""
    deps, reached = code_deps(stage), reached_files(stage_script(stage))
    stale = []
    for i, dep in enumerate(deps):
        mine = {f for f in reached if covers(dep, f)}
        others = deps[:i] + deps[i + 1 :]
        if not mine:
            stale.append(f"{dep} is in dvc.yaml deps but {stage_script(stage)} never imports it")
        elif all(any(covers(o, f) for o in others) for f in mine):
            stale.append(f"{dep} is in dvc.yaml deps but other deps already cover every imported file it covers")
    return stale


STAGES = load_stages()


@pytest.mark.parametrize("name", list(STAGES), ids=list(STAGES))
def test_code_deps_cover_every_imported_file(name: str) -> None:
    """A change to any file a stage imports reruns it."""
    missing = missing_deps(STAGES[name])
    assert not missing, "\n".join(f"{name}: {f} is imported but not in dvc.yaml deps" for f in missing)


@pytest.mark.parametrize("name", list(STAGES), ids=list(STAGES))
def test_every_code_dep_is_needed(name: str) -> None:
    """No listed code dep is dead weight, so deleting any one of them makes the coverage test fail."""
    stale = stale_deps(STAGES[name])
    assert not stale, "\n".join(f"{name}: {line}" for line in stale)


def test_walker_follows_lazy_imports_and_a_dropped_dep_is_reported() -> None:
    """Not vacuous: evaluate reaches gradcam only through a lazy `from melanoma.evaluation import gradcam` in a
    function of melanoma/evaluation/evaluate.py, and taking that dep out of an in-memory dvc.yaml makes the coverage
    check name it."""
    reached = reached_files("stages/evaluate.py")
    assert {
        "melanoma/__init__.py",
        "melanoma/evaluation/evaluate.py",
        "melanoma/evaluation/gradcam.py",
        "melanoma/classifiers/inference.py",
        "melanoma/classifiers/medvit.py",
    } <= reached
    assert not any(f.startswith(("melanoma/generators/", "melanoma/evaluation/report.py")) for f in reached)
    stage = copy.deepcopy(STAGES["evaluate"])
    assert missing_deps(stage) == []
    stage["deps"].remove("melanoma/evaluation/gradcam.py")
    assert missing_deps(stage) == ["melanoma/evaluation/gradcam.py"]


def test_walker_skips_type_checking_imports(tmp_path: Path) -> None:
    """Imports under `if TYPE_CHECKING:` never run; lazy ones and the `else:` branch do."""
    script = tmp_path / "script.py"
    script.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from melanoma.evaluation import gradcam\n"
        "else:\n    import melanoma.generators.dcgan\n\ndef f():\n    from melanoma import io\n"
    )
    found = {f.relative_to(ROOT).as_posix() for f in imported_files(script)}
    assert found == {
        "melanoma/__init__.py",
        "melanoma/io.py",
        "melanoma/generators/__init__.py",
        "melanoma/generators/dcgan.py",
    }


def test_dvc_lock_holds_exactly_the_pipelines_stages() -> None:
    """DVC keeps the lock entries of stages that no longer exist (e.g. after a stage is regrouped); stale ones
    make dvc.lock twice as long and hide what the pipeline is."""
    import subprocess
    import sys

    dvc = Path(sys.executable).parent / "dvc"
    names = subprocess.run(
        [str(dvc), "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert len(names) == 56
    assert sorted(locked) == sorted(names), sorted(set(locked) ^ set(names))[:10]


def test_the_library_has_no_import_cycle() -> None:
    """Every import (lazy ones included) between library modules points one way: a cycle hides behind
    function-level imports and breaks when one of them moves to the top."""
    import graphlib

    graph = {
        f.relative_to(ROOT).as_posix(): {x.relative_to(ROOT).as_posix() for x in imported_files(f) if x != f}
        for f in sorted(ROOT.glob("melanoma/**/*.py"))
    }
    assert len(graph) > 40
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")
    graph["melanoma/serving/thresholds.py"].add("melanoma/serving/predict.py")  # the check sees a planted one
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def test_checkpoint_code_hashes_cover_what_the_stage_imports() -> None:
    """A checkpoint is resumed only under the code that made it: the engine's code list for each trained model is
    the import walk of its training module, so it holds at least what dvc.yaml lists for the stage's library."""
    from melanoma.classifiers.train import CODE as classifier_code
    from melanoma.generators.train import CODE as generator_code
    from melanoma.generators.upscale import CODE as upscaler_code

    for code, stage in (
        (classifier_code, "train_classifier"),
        (generator_code, "train_generator"),
        (upscaler_code, "train_upscaler"),
    ):
        listed = {d for d in code_deps(STAGES[stage]) if d.startswith("melanoma/")}
        mine = {p.relative_to(ROOT).as_posix() for p in code}
        assert {"melanoma/engine.py", "melanoma/io.py"} <= mine <= listed, (stage, sorted(listed - mine))
