"""What every stage script does around its library call: run it, report an expected failure in one line."""
from __future__ import annotations

import sys
from typing import Callable

from melanoma.errors import MelanomaError


def run_stage(name: str, main: Callable[[], str]) -> None:
    """Run a stage's `main` and print the summary line it returns.

    A MelanomaError prints `<stage>: error: <what and how to fix>` on stderr and exits 1, without a
    traceback; any other exception is a bug and keeps its traceback.
    """
    try:
        line = main()
    except MelanomaError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(line)
