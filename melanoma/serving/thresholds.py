"""The threshold file: what `melanoma calibrate` writes and `melanoma predict --threshold-file` reads.

A threshold file is JSON (`format: melanoma-threshold`, `version`) holding one decision threshold chosen on a site's
labelled images, the rule that chose it, the labelled set it was chosen on, and the sha256 of the package weights
it belongs to: predict refuses it for any other weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from melanoma.errors import MelanomaError
from melanoma.io import read_small
from melanoma.serving.package import WEIGHTS, weights_sha256

FORMAT, VERSION = "melanoma-threshold", 1
THRESHOLD_MAX_BYTES = 1 << 20  # a threshold file is about 3 kB (its unreadable-file list aside)


class CalibrationError(MelanomaError):
    """Bad labels, a bad rule or output path, or a threshold file that is malformed or for another package."""


def _get(d: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def package_identity(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Which package a threshold belongs to: its cell, folder and the sha256 of its weights file (the one
    `package.load` checks against model_config.json's weights_sha256)."""
    sha = cfg.get("weights_sha256")
    if not isinstance(sha, str):
        sha = weights_sha256(Path(folder) / WEIGHTS)
    return {
        "cell": f"{cfg['arch']}_{cfg['dataset']}",
        "path": str(folder),
        "weights_sha256": sha,
        "threshold": cfg["threshold"],
        "threshold_rule": cfg.get("threshold_rule", "unknown"),
    }


def _bad_file(path: Path, why: str) -> CalibrationError:
    return CalibrationError(
        f"--threshold-file {path}: {why}; write it again with `melanoma calibrate PACKAGE --labels ...`"
    )


def read_threshold_file(path: Path) -> dict[str, Any]:
    """A threshold file written by `calibrate`, checked for the fields predict uses (format, version, a threshold
    in [0, 1], the package's weights sha256). Raises CalibrationError naming the file and the field."""
    path = Path(path)
    try:
        rec = json.loads(read_small(path, "--threshold-file", THRESHOLD_MAX_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise CalibrationError(
            f"--threshold-file {path} does not exist; give the file `melanoma calibrate` wrote"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _bad_file(path, f"not readable JSON ({type(e).__name__})") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise _bad_file(path, f"not a threshold file (its 'format' is not {FORMAT!r})")
    if rec.get("version") != VERSION:
        raise _bad_file(path, f"version {rec.get('version')!r}; this melanoma reads version {VERSION}")
    t = rec.get("threshold")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1):
        raise _bad_file(path, f"threshold is {t!r}; it must be a number in [0, 1]")
    if not isinstance(_get(rec, ("package", "weights_sha256")), str):
        raise _bad_file(path, "package.weights_sha256 is missing")
    for keys, kind in (
        (("labels",), dict),
        (("rule_name",), str),
        (("labels", "path"), str),
        (("n",), int),
        (("created",), str),
    ):
        v = _get(rec, keys)
        if not isinstance(v, kind) or isinstance(v, bool) or (kind is str and not v.isprintable()):
            raise _bad_file(
                path,
                f"{'.'.join(keys)} is {str(v)[:40]!r}; it must be "
                + ("one line of printable text" if kind is str else f"a {kind.__name__}"),
            )
    return rec


def apply_threshold_file(path: Path, rec: dict[str, Any], folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` (a loaded package's model_config) with its threshold replaced by the threshold file's, and
    `threshold_source` saying where it came from; CalibrationError when the file was written for other weights."""
    own = package_identity(folder, cfg)
    theirs = rec["package"]
    if theirs["weights_sha256"] != own["weights_sha256"]:
        raise CalibrationError(
            f"--threshold-file {path} belongs to another package ({theirs.get('cell', '?')} at "
            f"{theirs.get('path', '?')}, weights sha256 {theirs['weights_sha256'][:12]}...), not to --model {folder} "
            f"({own['cell']}, {own['weights_sha256'][:12]}...); use that package, or run `melanoma calibrate "
            f"{folder} --labels ...` for this one"
        )
    labels = rec.get("labels", {})
    rule = rec.get("rule_name", rec.get("rule"))
    chosen = _get(rec, ("metrics", "threshold"))
    if chosen != rec["threshold"]:  # edited by hand: the rule and the labelled set did not choose this number
        rule = (
            f"set by hand (the file's {rule} threshold was {chosen:.4f})"
            if isinstance(chosen, float)
            else "set by hand"
        )
    source = {
        "from": "threshold_file",
        "path": str(path),
        "rule": rule,
        "labels": labels.get("path"),
        "n": rec.get("n"),
        "created": rec.get("created"),
        "package_threshold": cfg["threshold"],
    }
    return {**cfg, "threshold": float(rec["threshold"]), "threshold_rule": source["rule"], "threshold_source": source}
