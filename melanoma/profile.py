"""Profiles: complete, named sets of params.yaml values, written into params.yaml in one step and reversibly.

- `profiles/demo.yaml` is the whole embedded demo; the committed params.yaml is the same file, byte for byte
  (a test keeps them so), and `melanoma profile demo` writes it back exactly.
- Every other profile (`profiles/<name>.yaml`) lists only the values on which it differs from the demo, and may
  start from another profile with `extends: <name>` (the rehearsal extends the study). It is always merged onto
  the demo, never onto whatever params.yaml holds, so no value survives a switch by accident.
- Applying a profile first compares params.yaml with the profile in effect (the one it differs least from): a
  value that no profile set (a leftover `dvc exp run -S`, a hand edit) is named and the switch refused, unless
  the user says to keep those values (`keep=True`: they are carried into the new profile, marked) or to drop them.

Merging follows the schema: sections merge key by key, leaves (including `kwargs` mappings and lists) are
replaced whole, so a study model never inherits a demo model's cut-down kwargs. The text is written with
ruamel.yaml (DVC's own YAML library), which keeps comments: a value the profile changes takes the profile's
comment for that key, or `# profile: <name>`; the header's first line names the profile. The result is
validated before it is written and passed through DVC's own params round trip, so it stays in the form
`dvc exp run -S` writes.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from melanoma.params import SCHEMA, ParamsError, validate

PROFILES = Path("profiles")
DEMO = "demo"
EXTENDS = "extends"  # the one profile-file key that is not a params key


def _yaml() -> Any:
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True  # round-trip types keep how numbers are written (0.00005, not 5e-05)
    rt.width = 4096
    return rt


def _source(name: str, profiles: Path) -> Path:
    source = profiles / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(names(profiles)) or "none"
        raise ParamsError(f"no profile {name!r} ({source} not found); profiles: {known}")
    return source


def names(profiles: Path = PROFILES) -> list[str]:
    """The profile names in `profiles/`, sorted."""
    return sorted(p.stem for p in profiles.glob("*.yaml"))


def _chain(name: str, profiles: Path) -> list[tuple[str, Any]]:
    """[(name, overlay)] from the first profile `name` extends to `name` itself; the demo is the base, not an
    overlay. ParamsError for a cycle or an unknown parent."""
    chain: list[tuple[str, Any]] = []
    seen: list[str] = []
    while name != DEMO:
        if name in seen:
            raise ParamsError(f"profiles extend each other in a circle: {' -> '.join(seen + [name])}")
        seen.append(name)
        over = _yaml().load(_source(name, profiles).read_text()) or {}
        if not hasattr(over, "items"):
            raise ParamsError(f"{_source(name, profiles)} is not a mapping of params keys")
        chain.insert(0, (name, over))
        name = over.pop(EXTENDS, DEMO)
        if not isinstance(name, str):
            raise ParamsError(f"{_source(chain[0][0], profiles)}: `{EXTENDS}` must name a profile")
    return chain


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
            _comment(base, key, over.ca.items.get(key) if hasattr(over, "ca") else None, f"profile: {name}")


def _comment(node: Any, key: str, theirs: Any, text: str) -> None:
    """Replace the comment beside `key` (it described the old value) by `theirs` or `# <text>`."""
    old = node.ca.items.pop(key, None)
    if theirs and theirs[2] is not None:
        node.ca.items[key] = theirs
    else:  # in params.yaml's comment column (29) unless the old comment sat elsewhere
        node.yaml_add_eol_comment(text, key, column=old[2].column if old and old[2] else 29)


def render(name: str, profiles: Path = PROFILES, keep: dict[str, Any] | None = None) -> str:
    """The params.yaml text of profile `name`: the demo with its chain of overlays merged in, then `keep`
    ({dotted key: value}) set over it, validated and in DVC's form. ParamsError for an unknown profile or key,
    a cycle, or values the schema refuses."""
    base = _source(DEMO, profiles).read_text()
    chain = _chain(name, profiles)
    if not chain and not keep:
        return base
    rt = _yaml()
    doc = rt.load(base)
    for over_name, over in chain:
        _merge(doc, over, SCHEMA, "", over_name)
    for dotted, value in (keep or {}).items():
        *parents, leaf = dotted.split(".")
        node = doc
        for k in parents:
            node = node[k]
        node[leaf] = value
        _comment(node, leaf, None, "kept: not from a profile")
    if chain:
        header = (doc.ca.comment[1] if doc.ca.comment else None) or []
        rest = [line.lstrip("# ") for t in header[1:] for line in t.value.splitlines()]
        route = " over ".join(f"profiles/{n}.yaml" for n, _ in reversed(chain))
        doc.yaml_set_start_comment("\n".join([f"Profile '{name}' ({route}) applied: the values it changed carry its "
                                              f"comments or `# profile: <name>`.", *rest]))
    buf = io.StringIO()
    rt.dump(doc, buf)
    validate(yaml.safe_load(buf.getvalue()))  # a bad profile never reaches params.yaml
    return dvc_form(buf.getvalue())


def profile_params(name: str, profiles: Path = PROFILES) -> dict[str, Any]:
    """The validated params of profile `name`, without touching params.yaml (benchmarks, estimates, tests)."""
    return validate(yaml.safe_load(render(name, profiles)))


def dvc_form(text: str) -> str:
    """`text` as `dvc exp run -S` writes params.yaml (DVC's own YAML round trip, no override: every list in
    block style, mappings as they are), so that a later `-S key=value` changes only that key's line."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text)
        apply_overrides(path, [])
        return path.read_text()


def leaves(tree: Any, schema: dict[str, Any] = SCHEMA, where: str = "") -> dict[str, Any]:
    """{dotted key: value} for every schema leaf present in `tree` (kwargs and label_map mappings are leaves)."""
    out: dict[str, Any] = {}
    for key, node in schema.items():
        if not isinstance(tree, dict) or key not in tree:
            continue
        if isinstance(node, dict):
            out.update(leaves(tree[key], node, f"{where}{key}."))
        else:
            out[f"{where}{key}"] = tree[key]
    return out


def in_effect(current: dict[str, Any], profiles: Path = PROFILES) -> tuple[str, dict[str, Any]]:
    """(the profile `current` differs least from, {dotted key: value} of `current` that it does not set).
    Keys missing from `current` are not counted: only values someone set can be kept."""
    have = leaves(current)
    best: tuple[int, str, dict[str, Any]] | None = None
    for name in names(profiles):
        try:
            theirs = leaves(yaml.safe_load(render(name, profiles)))
        except ParamsError:
            continue  # a broken profile is reported when it is applied, not here
        extra = {k: v for k, v in have.items() if k in theirs and theirs[k] != v}
        if best is None or len(extra) < best[0]:
            best = (len(extra), name, extra)
    if best is None:
        raise ParamsError(f"no usable profile in {profiles}/ (profiles/{DEMO}.yaml is the demo)")
    return best[1], best[2]


def apply_profile(name: str, params: Path = Path("params.yaml"), profiles: Path = PROFILES,
                  leftovers: str = "refuse") -> tuple[list[str], dict[str, Any]]:
    """Write profile `name` into `params`. Returns (the dotted keys whose values changed, the leftover values
    kept or dropped).

    `leftovers` decides what happens to values in `params` that no profile set: "refuse" (ParamsError naming
    them, params untouched), "keep" (carried over, marked `# kept: not from a profile`) or "drop".
    """
    if leftovers not in ("refuse", "keep", "drop"):
        raise ValueError(f"leftovers must be refuse, keep or drop, not {leftovers!r}")
    before = yaml.safe_load(params.read_text()) if params.is_file() else {}
    current, extra = in_effect(before or {}, profiles) if before else (DEMO, {})
    if extra and leftovers == "refuse":
        shown = "; ".join(f"{k} = {_short(v)}" for k, v in sorted(extra.items()))
        raise ParamsError(f"{params} holds {len(extra)} value(s) that profile {current!r} does not set (from `dvc exp "
                          f"run -S` or an edit): {shown}. Rerun with --keep to carry them into {name!r}, or with "
                          f"--drop to discard them")
    text = render(name, profiles, extra if leftovers == "keep" else None)
    tmp = params.with_name(f".{params.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, params)
    changed = sorted(k for k, v in leaves(yaml.safe_load(text)).items() if leaves(before or {}).get(k) != v)
    return changed, extra


def _short(value: Any) -> str:
    from melanoma.errors import first_line

    return first_line(yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n"), 80)
