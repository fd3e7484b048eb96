"""dvc.yaml's code deps match what each stage's script really imports.

DVC reruns a stage only when one of its listed deps changes, so a project file a stage imports but does not list
leaves stale outputs behind a `dvc status` that says up to date; a listed file the stage never imports reruns it for
nothing. The imports are read with `ast` (nothing is imported): every import anywhere in a file, lazy ones inside
functions included, except those under `if TYPE_CHECKING:`, followed transitively through the project's files.
"""
from __future__ import annotations

import ast
import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("melanoma", "stages")  # the only files that count: the library and the stage scripts
# where `python stages/<name>.py` finds a module: the script's own folder first (sys.path[0]), then the checkout
SEARCH_PATH = (ROOT / "stages", ROOT)

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


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an `if` test is `TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, at any depth, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    typing_only = isinstance(node, ast.If) and _is_type_checking(node.test)
    for child in node.orelse if typing_only else ast.iter_child_nodes(node):
        yield from import_nodes(child)


def _find(base: Path, parts: list[str]) -> list[Path]:
    """The files `import a.b.c` runs when `a` lies in `base`: each package's __init__.py and the module ([] if none)."""
    files = []
    for depth in range(1, len(parts) + 1):
        here = base.joinpath(*parts[:depth])
        if (here / "__init__.py").is_file():
            files.append(here / "__init__.py")
        elif depth == len(parts) and here.with_suffix(".py").is_file():
            files.append(here.with_suffix(".py"))
        else:
            return []
    return files


def module_files(name: str) -> list[Path]:
    """The project files that importing module `name` executes; [] for the stdlib and third-party modules."""
    for base in SEARCH_PATH:
        files = _find(base, name.split("."))
        if files:
            return [f for f in files if f.relative_to(ROOT).parts[0] in CODE_DIRS]
    return []


def _package(path: Path) -> list[str]:
    """The dotted package a project file belongs to, as parts (what a relative import starts from)."""
    return list(path.relative_to(ROOT).parts[:-1])  # a package's __init__.py and its modules share its folder


def imported_modules(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """The modules one import statement can load: `from pkg import name` also tries `pkg.name` as a submodule."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = _package(path) if node.level else []
    base = package[:len(package) - node.level + 1]
    module = ".".join(base + ([node.module] if node.module else []))
    return [module] + [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]


@lru_cache(maxsize=None)
def imported_files(path: Path) -> frozenset[Path]:
    """The project files that the imports written in one file (not followed further) execute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return frozenset(f for node in import_nodes(tree) for name in imported_modules(node, path)
                     for f in module_files(name))


def reached_files(script: str) -> set[str]:
    """Every project file (POSIX path from the checkout root) that running `script` can execute, transitively."""
    todo, seen = [ROOT / script], set()
    while todo:
        path = todo.pop()
        rel = path.relative_to(ROOT).as_posix()
        if rel not in seen:
            seen.add(rel)
            todo.extend(imported_files(path))
    return seen


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
        others = deps[:i] + deps[i + 1:]
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
    """Not vacuous: evaluate reaches gradcam only through a lazy `from melanoma.evaluation import gradcam` in a function of
    melanoma/evaluation/evaluate.py, and taking that dep out of an in-memory dvc.yaml makes the coverage check name it."""
    reached = reached_files("stages/evaluate.py")
    assert {"melanoma/__init__.py", "melanoma/evaluation/evaluate.py", "melanoma/evaluation/gradcam.py",
            "melanoma/classifiers/inference.py", "melanoma/classifiers/medvit.py"} <= reached
    assert not any(f.startswith(("melanoma/generators/", "melanoma/evaluation/report.py")) for f in reached)
    stage = copy.deepcopy(STAGES["evaluate"])
    assert missing_deps(stage) == []
    stage["deps"].remove("melanoma/evaluation/gradcam.py")
    assert missing_deps(stage) == ["melanoma/evaluation/gradcam.py"]


def test_walker_skips_type_checking_imports(tmp_path: Path) -> None:
    """Imports under `if TYPE_CHECKING:` never run; lazy ones and the `else:` branch do."""
    script = tmp_path / "script.py"
    script.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from melanoma.evaluation import gradcam\n"
                      "else:\n    import melanoma.generators.dcgan\n\ndef f():\n    from melanoma import io\n")
    found = {f.relative_to(ROOT).as_posix() for f in imported_files(script)}
    assert found == {"melanoma/__init__.py", "melanoma/io.py", "melanoma/generators/__init__.py",
                     "melanoma/generators/dcgan.py"}


def test_dvc_lock_holds_exactly_the_pipelines_stages() -> None:
    """DVC keeps the lock entries of stages that no longer exist (e.g. after a stage is regrouped); stale ones
    make dvc.lock twice as long and hide what the pipeline is."""
    import subprocess
    import sys

    dvc = Path(sys.executable).parent / "dvc"
    names = subprocess.run([str(dvc), "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    locked = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    assert len(names) == 56
    assert sorted(locked) == sorted(names), sorted(set(locked) ^ set(names))[:10]
