"""Small file helpers every stage shares: atomic outputs and CSV tables."""
from __future__ import annotations

import csv
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is removed.

    A stage killed or failing half-way therefore never leaves a half-written output for DVC to commit.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a run that was killed (SIGKILL skips cleanup)
        shutil.rmtree(stale)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with these as a formula


def _cell(v: Any) -> Any:
    """A text cell that a spreadsheet would execute gets a leading ' (OWASP CSV injection); numbers stay as they are."""
    if isinstance(v, str) and v.startswith(FORMULA):
        try:
            float(v)
        except ValueError:
            return "'" + v
    return v


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """UTF-8 CSV of `rows` (dicts) in `columns` order; formula-like text cells are quoted with a leading '."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows({k: _cell(v) for k, v in r.items()} for r in rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by write_csv, with its formula quoting undone."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v[1:] if v.startswith("'") and v[1:].startswith(FORMULA) else v for k, v in r.items()}
                for r in csv.DictReader(fh)]
