"""Make `dvc plots show` render with no network: run by `./run.sh setup`, needs the npm registry only then.

DVC's page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net (dvc_render.vega.VegaRenderer.SCRIPTS), so
offline (clusters, CI) every plot is blank. This fetches exactly those versions from the npm registry (the files the
CDN serves: each package's `jsdelivr` build), checks them against the sha512 pinned below, and writes an HTML page
template with the three inlined: <venv>/share/melanoma-synth/dvc-plots-offline.html (about 0.8 MB; in the venv,
so nothing generated is committed and deleting the venv redoes it). DVC's `plots.html_template` is then set in
.dvc/config.local (machine-local, git-ignored: a committed path would break `dvc plots show` in a clone where setup
has not run, since DVC then reads the path itself as the template). Inlined rather than files beside the page:
`dvc plots show -o anywhere` writes only index.html, and one self-contained file can be copied or mailed.

Quick when done (reads two small files): refetches only when PINS change or the template is gone. Registry
unreachable: one warning line and exit 0 (the pipeline does not need plots; DVC keeps its CDN page).
The registry is $npm_config_registry, else npm's configured one (when npm is installed), else registry.npmjs.org.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name: (version, file the CDN serves, npm's dist.integrity). Versions = dvc-render's VegaRenderer.SCRIPTS
# (tests/test_plots_offline.py fails when a dvc-render upgrade changes them).
PINS = {
    "vega": (
        "5.20.2",
        "build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    "vega-lite": (
        "5.2.0",
        "build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    "vega-embed": (
        "6.18.2",
        "build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
}
STAMP = "offline DVC plots: " + " ".join(f"{n}@{v}" for n, (v, _, _) in PINS.items())
TEMPLATE = Path(sys.prefix) / "share" / "melanoma-synth" / "dvc-plots-offline.html"
DEFAULT_REGISTRY = "https://registry.npmjs.org/"

# dvc_render.html.PAGE_HTML with the CDN {scripts} replaced by the inlined libraries
PAGE = """<!DOCTYPE html>
<!-- {stamp}: written by tools/dvc_plots_offline.py (./run.sh setup); vega, vega-lite and vega-embed are
     BSD-3-Clause, (c) University of Washington Interactive Data Lab -->
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
{libs}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class FetchError(Exception):
    pass


def registry() -> str:
    url = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
    if not url and shutil.which("npm"):
        try:
            url = subprocess.run(
                ["npm", "config", "get", "registry"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            url = ""
    url = url if url.startswith(("http://", "https://")) else DEFAULT_REGISTRY
    return url if url.endswith("/") else url + "/"


def fetch(reg: str, name: str, version: str, member: str, integrity: str) -> str:
    url = f"{reg}{name}/-/{name}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
        raise FetchError(f"could not fetch {name}@{version} from {reg} ({getattr(e, 'reason', None) or e})") from e
    algo, _, want = integrity.partition("-")
    if base64.b64encode(hashlib.new(algo, data).digest()).decode() != want:
        raise FetchError(f"{url} does not match the pinned {algo} in tools/dvc_plots_offline.py")
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            js = tar.extractfile(f"package/{member}").read().decode("utf-8")
    except (tarfile.TarError, KeyError, AttributeError) as e:
        raise FetchError(f"{url} has no package/{member}") from e
    # inline-safe: no source map lookups, nothing that ends the <script> early, no placeholders DVC would fill
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL="))
    js = js.replace("</script", "<\\/script")
    for bad in ("<!--", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in js:
            raise FetchError(f"{name}@{version} {member} contains {bad!r}; it cannot be inlined as is")
    return f"    <script>/* {name}@{version} {member} */\n{js}\n    </script>"


def build(path: Path = TEMPLATE) -> None:
    reg = registry()
    libs = "\n".join(fetch(reg, n, v, m, i) for n, (v, m, i) in PINS.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(PAGE.format(stamp=STAMP, libs=libs), encoding="utf-8")
    tmp.replace(path)


def current(path: Path = TEMPLATE) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return STAMP in f.read(500)
    except OSError:
        return False


def configured(repo: Path) -> str | None:
    """plots.html_template in <repo>/.dvc/config.local, or None."""
    from configobj import ConfigObj  # DVC's own config format (a DVC dependency, quick to import)

    try:
        return ConfigObj(str(repo / ".dvc" / "config.local")).get("plots", {}).get("html_template")
    except Exception:  # an unreadable config.local: let `dvc config` below rewrite or report it
        return None


def dvc_config(repo: Path, *args: str) -> None:
    dvc = Path(sys.prefix) / "bin" / "dvc"
    subprocess.run(
        [str(dvc) if dvc.exists() else "dvc", "config", "--local", *args],
        cwd=repo,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def setup(repo: Path = ROOT, path: Path = TEMPLATE) -> int:
    value = os.path.relpath(path, repo / ".dvc")  # DVC resolves a relative html_template from .dvc/
    if not current(path):
        try:
            build(path)
            print(f"setup: `dvc plots show` works offline ({STAMP.split(': ')[1]} inlined in {path})")
        except FetchError as e:
            print(
                f"setup: warning: {e}; `dvc plots show` pages load vega from the internet (blank offline); "
                "rerun ./run.sh setup where the npm registry is reachable (the pipeline does not need it)",
                file=sys.stderr,
            )
            if not path.is_file() and configured(repo) == value:  # a missing template would break plots show
                dvc_config(repo, "--unset", "plots.html_template")
            return 0
    if configured(repo) != value:
        dvc_config(repo, "plots.html_template", value)
    return 0


if __name__ == "__main__":
    sys.exit(setup())
