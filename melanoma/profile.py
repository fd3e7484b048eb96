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
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from melanoma.errors import first_line
from melanoma.io import read_small, write_atomic
from melanoma.params import PARAMS_MAX_BYTES, SCHEMA, ParamsError, plain_yaml, validate

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
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ParamsError(f"{name!r} is not a profile name (letters, digits, _ and -: a file profiles/<name>.yaml)")
    source = profiles / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(names(profiles)) or "none"
        raise ParamsError(f"no profile {name!r} ({source} not found); profiles: {known}")
    return source


def names(profiles: Path = PROFILES) -> list[str]:
    """The profile names in `profiles/`, sorted."""
    return sorted(p.stem for p in profiles.glob("*.yaml") if p.is_file())


def _load(path: Path, round_trip: bool = True) -> Any:
    """A YAML file, with ruamel's round trip (comments kept) or PyYAML's safe loader (what the stages read);
    ParamsError naming the file for anything that is not readable YAML."""
    from ruamel.yaml.error import YAMLError as RuamelError

    try:
        text = read_small(path, "params file", PARAMS_MAX_BYTES).decode("utf-8")
        plain_yaml(text, path)
        return _yaml().load(text) if round_trip else yaml.safe_load(text)
    except (RuamelError, yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        reason = " ".join(str(e).split()) if isinstance(e, (RuamelError, yaml.YAMLError)) else first_line(e)
        raise ParamsError(
            f"{path} is not readable YAML ({type(e).__name__}: {first_line(reason, 160)}); fix it, or "
            "restore it with git"
        ) from None


def _chain(name: str, profiles: Path) -> list[tuple[str, Any]]:
    """[(name, overlay)] from the first profile `name` extends to `name` itself; the demo is the base, not an
    overlay. ParamsError for a cycle or an unknown parent."""
    chain: list[tuple[str, Any]] = []
    seen: list[str] = []
    while name != DEMO:
        if name in seen:
            raise ParamsError(f"profiles extend each other in a circle: {' -> '.join(seen + [name])}")
        seen.append(name)
        over = _load(_source(name, profiles)) or {}
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
            raise ParamsError(
                f"profile key {where}{key} is not a params key; allowed here: {', '.join(sorted(schema))}"
            )
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
    source = _source(DEMO, profiles)
    doc = _load(source)
    if not isinstance(doc, dict):
        raise ParamsError(f"{source} is not a mapping of params keys; restore it with git")
    if EXTENDS in doc:
        raise ParamsError(f"{source}: the demo is the base of every profile and extends none; remove `{EXTENDS}`")
    chain = _chain(name, profiles)
    if not chain and not keep:
        text = read_small(source, "params file", PARAMS_MAX_BYTES).decode("utf-8")
        _validate(text, source)
        return text
    rt = _yaml()
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
        doc.yaml_set_start_comment(
            "\n".join(
                [
                    f"Profile '{name}' ({route}) applied: the values it changed carry its "
                    f"comments or `# profile: <name>`.",
                    *rest,
                ]
            )
        )
    buf = io.StringIO()
    rt.dump(doc, buf)
    _validate(
        buf.getvalue(),
        f"profile {name!r}" + (f" with the kept values ({', '.join(keep)}; --drop discards them)" if keep else ""),
    )
    return dvc_form(buf.getvalue())


def _validate(text: str, what: Any) -> None:
    """A bad profile never reaches params.yaml: the schema's error, saying which profile (or file) it is in."""
    try:
        validate(yaml.safe_load(text))
    except ParamsError as e:
        raise ParamsError(f"{what}: {e}") from None


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


def unknown(tree: Any, schema: dict[str, Any] = SCHEMA, where: str = "") -> list[str]:
    """Dotted keys in `tree` that the schema does not have (typos like `classifiers.train.stpes`)."""
    if not isinstance(tree, dict):
        return []
    out = []
    for key, value in tree.items():
        if key not in schema:
            out.append(f"{where}{key}")
        elif isinstance(schema[key], dict):
            out += unknown(value, schema[key], f"{where}{key}.")
    return out


def in_effect(current: dict[str, Any], profiles: Path = PROFILES) -> tuple[str, dict[str, Any]]:
    """(the profile `current` differs least from, {dotted key: value} of `current` that it does not set).
    Keys missing from `current` are not counted: only values someone set can be kept."""
    have = leaves(current)
    best: tuple[int, str, dict[str, Any]] | None = None
    for name in names(profiles):  # a broken profile stops here too: which one is in effect cannot be known
        theirs = leaves(yaml.safe_load(render(name, profiles)))
        extra = {k: v for k, v in have.items() if k in theirs and theirs[k] != v}
        if best is None or len(extra) < best[0]:
            best = (len(extra), name, extra)
    if best is None:
        raise ParamsError(f"no usable profile in {profiles}/ (profiles/{DEMO}.yaml is the demo)")
    return best[1], best[2]


def apply_profile(
    name: str, params: Path = Path("params.yaml"), profiles: Path = PROFILES, leftovers: str = "refuse"
) -> tuple[list[str], dict[str, Any]]:
    """Write profile `name` into `params`. Returns (the dotted keys whose values changed, the leftover values
    kept or dropped).

    `leftovers` decides what happens to values in `params` that no profile set: "refuse" (ParamsError naming
    them, params untouched), "keep" (carried over, marked `# kept: not from a profile`) or "drop".
    """
    if leftovers not in ("refuse", "keep", "drop"):
        raise ValueError(f"leftovers must be refuse, keep or drop, not {leftovers!r}")
    before = _load(params, round_trip=False) if params.exists() else {}
    before = before if isinstance(before, dict) else {}
    current, extra = in_effect(before, profiles) if before else (DEMO, {})
    typos = unknown(before)
    if typos and leftovers != "drop":
        raise ParamsError(
            f"{params} has key(s) that are not params keys: {', '.join(typos)}; fix their names (they "
            "cannot be kept), or rerun with --drop to discard them"
        )
    if extra and leftovers == "refuse":
        shown = "; ".join(f"{k} = {short(v)}" for k, v in sorted(extra.items()))
        raise ParamsError(
            f"{params} holds {len(extra)} value(s) that profile {current!r} does not set (from `dvc exp "
            f"run -S` or an edit): {shown}. Rerun with --keep to carry them into {name!r}, or with "
            f"--drop to discard them"
        )
    text = render(name, profiles, extra if leftovers == "keep" else None)
    write_params(params, text)
    changed = sorted(k for k, v in leaves(yaml.safe_load(text)).items() if leaves(before).get(k) != v)
    return changed, extra


def write_params(params: Path, text: str) -> None:
    """Replace the file `params` (through a symlink: its target) with `text` in one rename, keeping its
    permissions; ParamsError when it cannot be written, leaving it as it was."""
    target = params.resolve() if params.is_symlink() else params
    if target.exists() and not target.is_file():
        raise ParamsError(f"{params} is not a file; remove it (a profile writes params.yaml there)")
    try:
        write_atomic(target, text, stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o644)
    except OSError as e:
        raise ParamsError(
            f"cannot write {params} ({e.strerror or first_line(e)}); check its folder's permissions"
        ) from None


def short(value: Any) -> str:
    """A value as one short line of flow YAML (cut at a word boundary)."""
    return first_line(yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n"), 80)
