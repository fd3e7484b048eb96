"""`dvc plots show` offline: setup's vega template (tools/dvc_plots_offline.py), and the page plain `dvc plots show`
makes from dvc.yaml's own plot definitions, rendered in headless Chromium with no network."""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.util
import io
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.browser import chromium, ink, near, render
from tests.conftest import ROOT

DVC = Path(sys.executable).parent / "dvc"
REV_COLOUR = "#945dd6"  # dvc-render's colour for the first (here the only) revision: every curve is drawn in it


def _load_tool():
    spec = importlib.util.spec_from_file_location("dvc_plots_offline", ROOT / "tools/dvc_plots_offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def dvc_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def html_template(repo: Path) -> str | None:
    p = subprocess.run([str(DVC), "config", "--local", "plots.html_template"], cwd=repo, capture_output=True, text=True)
    return p.stdout.strip() or None


def test_pins_are_the_versions_dvc_render_loads_from_the_cdn():
    from dvc_render.vega import VegaRenderer

    cdn = dict(re.findall(r"cdn\.jsdelivr\.net/npm/([a-z-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert cdn == {n: v for n, (v, _, _) in tool.PINS.items()}, (
        "dvc-render now loads other vega versions: update PINS (version and npm's dist.integrity) in "
        "tools/dvc_plots_offline.py"
    )


class _Registry(http.server.BaseHTTPRequestHandler):
    tarballs: dict[str, bytes] = {}

    def do_GET(self):
        data = self.tarballs.get(self.path)
        self.send_response(200 if data else 404)
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args):
        pass


def _tarball(member: str, text: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = text.encode()
        info = tarfile.TarInfo(f"package/{member}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def registry(monkeypatch):
    """A local npm registry serving tiny stand-ins for the three packages, PINS pointed at them: its URL."""
    pins, tarballs = {}, {}
    for name, (version, member, _) in tool.PINS.items():
        data = _tarball(member, f'var {name.replace("-", "_")} = "</script>";\n//# sourceMappingURL={name}.map')
        tarballs[f"/{name}/-/{name}-{version}.tgz"] = data
        pins[name] = (version, member, "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode())
    monkeypatch.setattr(tool, "PINS", pins)
    handler = type("Handler", (_Registry,), {"tarballs": tarballs})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{server.server_port}")
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_setup_writes_the_template_configures_dvc_and_is_quick_the_second_time(tmp_path, registry, monkeypatch, capsys):
    repo, template = dvc_repo(tmp_path / "repo"), tmp_path / "venv/share/t.html"
    assert tool.setup(repo, template) == 0
    page = template.read_text()
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page  # no CDN scripts added
    assert page.count("<script>") == 3 and "<\\/script>" in page and "sourceMappingURL" not in page
    assert "vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2" in page
    assert html_template(repo) == "../../venv/share/t.html"  # relative to .dvc/, in config.local only
    assert "plots" not in (repo / ".dvc/config").read_text()
    monkeypatch.setattr(tool, "fetch", lambda *a: pytest.fail("fetched again"))
    monkeypatch.setattr(tool, "dvc_config", lambda *a: pytest.fail("configured again"))
    t0 = time.perf_counter()
    assert tool.setup(repo, template) == 0
    assert time.perf_counter() - t0 < 0.5


def test_a_changed_pin_refetches_and_a_corrupt_download_is_refused(tmp_path, registry, monkeypatch, capsys):
    repo, template = dvc_repo(tmp_path / "repo"), tmp_path / "t.html"
    tool.setup(repo, template)
    monkeypatch.setattr(tool, "STAMP", tool.STAMP + " (new pins)")
    name, (version, member, _) = next(iter(tool.PINS.items()))
    monkeypatch.setitem(tool.PINS, name, (version, member, "sha512-" + base64.b64encode(b"x" * 64).decode()))
    capsys.readouterr()
    assert tool.setup(repo, template) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match the pinned sha512" in err[0] and "setup: warning:" in err[0]
    assert template.is_file() and html_template(repo)  # the old template stays in use


def test_no_registry_is_one_warning_and_dvc_falls_back_to_its_own_page(tmp_path, monkeypatch, capsys):
    repo, template = dvc_repo(tmp_path / "repo"), tmp_path / "t.html"
    subprocess.run([str(DVC), "config", "--local", "plots.html_template", "../../t.html"], cwd=repo, check=True)
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")  # nothing listens there
    assert tool.setup(repo, template) == 0  # setup goes on: the pipeline does not need plots
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("setup: warning: could not fetch vega@5.20.2 from http://127.0.0.1:9/")
    assert "rerun ./run.sh setup" in err[0]
    # a configured template that is not there would make `dvc plots show` fail: the setting goes
    assert html_template(repo) is None and not template.exists()


def _plots_from_dvc_yaml(repo: Path) -> int:
    """dvc.yaml's own definitions of ResNet's training curves and test ROC, with made-up data: how many plots."""
    plots = [
        p
        for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
        if isinstance(p, dict)
        and next(iter(p))
        in (
            "ResNet training, validation AUROC (seed 0)",
            "ResNet training, validation loss (seed 0)",
            "ResNet test ROC",
        )
    ]
    assert len(plots) == 3
    rng = np.random.default_rng(0)
    for plot in plots:
        (spec,) = plot.values()
        for i, (path, field) in enumerate(spec["y"].items()):
            f = repo / path
            f.parent.mkdir(parents=True, exist_ok=True)
            sep = "\t" if f.suffix == ".tsv" else ","
            xs = np.linspace(0, 1, 11) if spec["x"] == "fpr" else np.arange(8, 8 * 12, 8)
            ys = np.sort(rng.uniform(0.3, 1, len(xs))) ** (i + 1)
            f.write_text(f"{spec['x']}{sep}{field}\n" + "".join(f"{x:g}{sep}{y:.4f}\n" for x, y in zip(xs, ys)))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    return len(plots)


def test_dvc_plots_show_renders_offline_in_headless_chromium(tmp_path):
    if not chromium():
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    if not tool.current():
        pytest.skip(f"no offline vega template at {tool.TEMPLATE}: run ./run.sh setup (it fetches vega from npm)")
    repo = dvc_repo(tmp_path / "repo")
    n = _plots_from_dvc_yaml(repo)
    assert tool.setup(repo) == 0 and html_template(repo)  # what ./run.sh setup does in the checkout
    p = subprocess.run([str(DVC), "plots", "show"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    page = repo / "dvc_plots/index.html"
    html = page.read_text()
    assert html.count("vegaEmbed('#") == n and "<script src=" not in html and "cdn.jsdelivr" not in html
    shot, dom = render(page, tmp_path, size=(1280, 900))
    canvases = re.findall(r'<canvas width="(\d+)" height="(\d+)" class="marks">', dom)
    assert len(canvases) == n and all(int(w) > 200 and int(h) > 200 for w, h in canvases), dom[-2000:]
    drawn = ink(shot)
    assert near(shot, REV_COLOUR) > 500, drawn  # the curves themselves
    assert drawn["non_white"] > 0.03 and drawn["colours"] > 100, drawn  # axes, grid, labels, legends
