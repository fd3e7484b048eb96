"""What every stage script does around its library call: read only the params its dvc.yaml stage declares, refuse
a device it cannot have, run it, report an expected failure in one line."""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from melanoma.device import require_device
from melanoma.errors import INTERRUPTED, MelanomaError, os_error_line, printable
from melanoma.params import RUN_SETTINGS, load_params
from melanoma.startup import StartupMarks, run_elsewhere

DVC_YAML = Path("dvc.yaml")


class UndeclaredParam(LookupError):
    """Library code read a params key that its stage's dvc.yaml `params:` does not list: DVC would not rerun the
    stage when that key changes. A bug in the code or in dvc.yaml, so it keeps its traceback."""


class Declared(dict):
    """The params a stage declared: a dict holding only the declared keys (whole sections as plain dicts); reading
    any other key, by `[]`, `get` or `in`, raises UndeclaredParam naming it and the stage."""

    stage: str = "?"
    prefix: str = ""

    def _refuse(self, key: object) -> UndeclaredParam:
        full = f"{self.prefix}{key}"
        return UndeclaredParam(
            f"stage {self.stage} reads params key {full!r}, which its dvc.yaml `params:` does not "
            f"list; add `- {full}` there (DVC reruns a stage only for the keys it lists)"
        )

    def __missing__(self, key: object) -> Any:
        raise self._refuse(key)

    def get(self, key: object, default: Any = None) -> Any:
        return self[key]

    def __contains__(self, key: object) -> bool:
        if not dict.__contains__(self, key):
            raise self._refuse(key)
        return True


def _node(stage: str, prefix: str) -> Declared:
    node = Declared()
    node.stage, node.prefix = stage, prefix
    return node


def declared(params: dict[str, Any], keys: list[str], stage: str) -> Declared:
    """`params` cut down to `keys` (dotted: `classifiers.train` keeps that whole section). Raises KeyError for a
    declared key that params lacks (the schema makes every key present, so this is a dvc.yaml typo)."""
    root = _node(stage, "")
    for key in sorted(keys, key=lambda k: k.count(".")):  # a whole section first: deeper keys inside it add nothing
        *parents, leaf = key.split(".")
        node, src = root, params
        for i, part in enumerate(parents):
            src = src[part]
            if not dict.__contains__(node, part):
                dict.__setitem__(node, part, _node(stage, ".".join(parents[: i + 1]) + "."))
            node = dict.__getitem__(node, part)
            if not isinstance(node, Declared):
                break
        else:
            dict.__setitem__(node, leaf, copy.deepcopy(src[leaf]))
    return root


def declared_keys(stage: str, dvc_yaml: Path = DVC_YAML, **values: Any) -> list[str]:
    """The params keys dvc.yaml's stage `stage` lists, with `${item}`, `${item.<name>}` and `${key}` filled in
    from `values` (what the stage's command line received)."""
    spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"][stage]
    spec = spec.get("do", spec)

    def fill(m: re.Match) -> str:
        value = values[m.group(1)]
        return str(value[m.group(2)] if m.group(2) else value)

    return [re.sub(r"\$\{(\w+)(?:\.(\w+))?\}", fill, k) for k in spec.get("params", []) if isinstance(k, str)]


def stage_params(stage: str, **values: Any) -> Declared:
    """params.yaml (checked against the schema) cut down to the keys stage `stage` declares in dvc.yaml, e.g.
    `stage_params("train_generator", item={"gen": "ddpm", "cls": "benign"})`: what its library call receives, so
    that reading an undeclared key fails at once (UndeclaredParam) instead of going unnoticed by DVC. The run
    settings (params.RUN_SETTINGS) are always included and never declared: they change how a run goes, not what
    it produces, so changing them reruns nothing."""
    return declared(load_params(), declared_keys(stage, **values) + list(RUN_SETTINGS), stage)


def run_stage(name: str, main: Callable[[], str]) -> None:
    """Run a stage's `main` and print the summary line it returns.

    With a warm server running (`python -m melanoma.startup dvc repro`, as `./run.sh repro` runs it), this process
    hands the whole script to it and ends as the server's fork of it ends (melanoma.startup); everything below
    then happens in that fork. First, params.yaml's `device: cuda` without a usable GPU stops the stage within
    seconds, before any work (melanoma.device.require_device), whichever stage runs first. A MelanomaError prints
    `<stage>: error: <what and how to fix>` on stderr and exits 1, without a traceback; any other exception is a
    bug and keeps its traceback, except an operating-system error (a full disk, a read-only folder: one line naming
    the path and the fix, exit 1) and Ctrl-C (one line, exit 130).
    """
    run_elsewhere(name)  # a warm server runs this script in a fork of itself, or this process goes on
    marks = StartupMarks(name)
    try:
        require_device(load_params()["device"])
        line = main()
    except MelanomaError as e:
        print(f"{name}: error: {printable(e)}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        if e.errno is None:  # not the operating system's: a bug, keep the traceback
            raise
        print(f"{name}: error: {os_error_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(
            f"{name}: interrupted; no partial output was kept (outputs are replaced only when whole): run it "
            "again to finish",
            file=sys.stderr,
        )
        raise SystemExit(INTERRUPTED) from None
    finally:
        marks.close()
    print(printable(line, keep_newlines=True))
