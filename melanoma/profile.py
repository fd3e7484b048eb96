"""Profiles: named sets of params.yaml values (profiles/<name>.yaml) written into params.yaml in one step.

params.yaml as committed is the CPU demo; `melanoma profile study` switches it to the full-scale study. The
profile is merged along the schema: sections merge key by key, leaves (including `kwargs` mappings and lists)
are replaced whole, so a study model never inherits a demo model's cut-down kwargs. params.yaml is rewritten
with ruamel.yaml (DVC's own YAML library), which keeps its comments, validated before it is written, and then
passed through DVC's own params round trip, so it stays in the form `dvc exp run -S` writes.
A comment beside a value the profile changes described the old value, so it is replaced by the profile's own
comment for that key, or `# profile: <name>`; the first line of params.yaml's header, which names the profile in
effect, is rewritten the same way. Comments beside values the profile leaves alone stay.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml

from melanoma.params import SCHEMA, ParamsError, validate

PROFILES = Path("profiles")


def _merge(base: Any, over: Any, schema: dict[str, Any], where: str, name: str) -> None:
    for key, value in over.items():
        if key not in schema:
            raise ParamsError(f"profile key {where}{key} is not a params key; allowed here: {', '.join(sorted(schema))}")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ParamsError(f"profile key {where}{key} is a section; give it as a mapping")
            _merge(base[key], value, schema[key], f"{where}{key}.", name)
        elif base.get(key) != value:
            base[key] = value
            old = base.ca.items.pop(key, None)
            theirs = over.ca.items.get(key) if hasattr(over, "ca") else None
            if theirs and theirs[2] is not None:
                base.ca.items[key] = theirs
            else:  # in params.yaml's comment column (29) unless the old comment sat elsewhere
                base.yaml_add_eol_comment(f"profile: {name}", key, column=old[2].column if old and old[2] else 29)


def apply_profile(name: str, params: Path = Path("params.yaml"), profiles: Path = PROFILES) -> list[str]:
    """Write profile `name` into `params`; returns the dotted keys whose values changed."""
    from ruamel.yaml import YAML

    source = profiles / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in profiles.glob("*.yaml"))) or "none"
        raise ParamsError(f"no profile {name!r} ({source} not found); profiles: {known}")
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    over = rt.load(source.read_text()) or {}  # round-trip types keep how numbers are written (0.00005, not 5e-05)
    doc = rt.load(params.read_text())
    before = yaml.safe_load(params.read_text())
    _merge(doc, over, SCHEMA, "", name)
    header = (doc.ca.comment[1] if doc.ca.comment else None) or []
    rest = [line.lstrip("# ") for t in header[1:] for line in t.value.splitlines()]
    doc.yaml_set_start_comment("\n".join([f"Profile '{name}' ({source}) applied: the values it changed carry its "
                                          f"comments or `# profile: {name}`.", *rest]))
    buf = io.StringIO()
    rt.dump(doc, buf)
    after = yaml.safe_load(buf.getvalue())
    validate(after)  # a bad profile never reaches params.yaml
    params.write_text(buf.getvalue())
    dvc_form(params)
    return sorted(_changed(before, after, ""))


def dvc_form(params: Path) -> None:
    """Rewrite `params` the way `dvc exp run -S` writes it (DVC's own YAML round trip, no override: every list in
    block style, mappings as they are), so that a later `-S key=value` changes only that key's line."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(params, [])


def _changed(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict) and not where.endswith("kwargs."):
        return [k for key in a.keys() | b.keys() for k in _changed(a.get(key), b.get(key), f"{where}{key}.")]
    return [] if a == b else [where.rstrip(".")]
