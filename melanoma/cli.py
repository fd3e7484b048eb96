"""What every stage script does around its library call: load params, report errors in one line."""
from __future__ import annotations

import sys
from typing import Callable

from melanoma.params import ParamsError


def run_stage(name: str, main: Callable[[], str], expected: tuple[type[Exception], ...] = ()) -> None:
    """Run a stage; a known failure prints `<stage>: error: <what and how to fix>` and exits 1, no traceback."""
    try:
        line = main()
    except (ParamsError, *expected) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(line)
