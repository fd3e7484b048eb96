"""What every stage script does around its library call: refuse a device it cannot have, run it, report an
expected failure in one line."""
from __future__ import annotations

import sys
from typing import Callable

from melanoma.device import require_device
from melanoma.errors import INTERRUPTED, MelanomaError, os_error_line, printable
from melanoma.params import load_params


def run_stage(name: str, main: Callable[[], str]) -> None:
    """Run a stage's `main` and print the summary line it returns.

    First, params.yaml's `device: cuda` without a usable GPU stops the stage within seconds, before any work
    (melanoma.device.require_device), whichever stage runs first. A MelanomaError prints
    `<stage>: error: <what and how to fix>` on stderr and exits 1, without a traceback; any other exception is a
    bug and keeps its traceback, except an operating-system error (a full disk, a read-only folder: one line naming
    the path and the fix, exit 1) and Ctrl-C (one line, exit 130).
    """
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
        print(f"{name}: interrupted; no partial output was kept (outputs are replaced only when whole): run it "
              "again to finish", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    print(printable(line, keep_newlines=True))
