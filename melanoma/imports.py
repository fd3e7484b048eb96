"""Which project files running a module or a stage script executes: the one import walk behind dvc.yaml's code
deps (written by `tools/generate.py`) and the code hash that decides whether a checkpoint may be resumed.

Imports are read with `ast`, nothing is imported: every import anywhere in a file, lazy ones inside functions
included, except those under `if TYPE_CHECKING:`, followed transitively through the project's own files
(`melanoma/` and `stages/`); the standard library and third-party packages are not followed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages, for an installed package)
CODE_DIRS = ("melanoma", "stages")  # the only folders whose files count as the project's code
# where `python stages/<name>.py` finds a module: the script's own folder first (sys.path[0]), then the checkout
SEARCH_PATH = (ROOT / "stages", ROOT)


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an `if` test is `TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


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


def imported_modules(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """The modules one import statement can load: `from pkg import name` also tries `pkg.name` as a submodule."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = list(path.relative_to(ROOT).parts[:-1]) if node.level else []  # what a relative import starts from
    base = package[: len(package) - node.level + 1]
    module = ".".join(base + ([node.module] if node.module else []))
    return [module] + [f"{module}.{alias.name}" for alias in node.names if alias.name != "*"]


@cache
def imported_files(path: Path) -> frozenset[Path]:
    """The project files that the imports written in one file (not followed further) execute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return frozenset(
        f for node in import_nodes(tree) for name in imported_modules(node, path) for f in module_files(name)
    )


def reached_files(script: str | Path) -> set[str]:
    """Every project file (POSIX path from the checkout root) that running `script` (a path from the root) can
    execute, transitively, `script` included."""
    todo, seen = [ROOT / script], set()
    while todo:
        path = todo.pop()
        rel = path.relative_to(ROOT).as_posix()
        if rel not in seen:
            seen.add(rel)
            todo.extend(imported_files(path))
    return seen


def code_files(module: str) -> list[Path]:
    """The project files (absolute, sorted) that importing `module` (a dotted name, e.g. `__name__`) executes:
    the code whose hash a checkpoint records, so that a checkpoint made by other code is never resumed."""
    (start,) = module_files(module)[-1:]
    return sorted(ROOT / f for f in reached_files(start.relative_to(ROOT)))
