"""bench/startup.py's reading of Python's import-time report: what it sums is every top-level import, the lazy
ones included, and nothing twice."""

import os
import subprocess
import sys

from bench.startup import import_seconds

SCRIPT = """
import json          # top level
def work():
    import xml.dom.minidom  # lazy, inside a function: still start-up
work()
"""


def test_import_seconds_counts_top_level_and_lazy_imports_once():
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    total, top = import_seconds(p.stderr)
    assert {"json", "xml.dom.minidom"} <= set(top)
    assert "json.decoder" not in top  # imported by json: inside json's cumulative time, not counted again
    nested = [ln for ln in p.stderr.splitlines() if ln.endswith("|   json.decoder")]
    assert nested  # it is in the report, one level down
    assert abs(total - sum(top.values())) < 1e-9 and total >= top["json"] > 0
