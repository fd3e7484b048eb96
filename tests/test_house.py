"""The house a newcomer meets first: lint and format, the documentation site with no broken link or anchor, the
README's links, no history outside CHANGELOG.md, and the package a researcher installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from melanoma.imports import ROOT

BIN = Path(sys.executable).parent


def run(*cmd: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ruff_lint_and_format_pass() -> None:
    """pyproject.toml's [tool.ruff] (120 columns): `ruff check` and `ruff format --check` over the checkout."""
    lint, fmt = run(BIN / "ruff", "check", "."), run(BIN / "ruff", "format", "--check", ".")
    assert lint.returncode == 0, lint.stdout[-3000:]
    assert fmt.returncode == 0, fmt.stdout[-3000:]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The documentation site, built with `mkdocs build --strict`: any broken link or anchor fails it."""
    out = tmp_path_factory.mktemp("site")
    p = run(BIN / "mkdocs", "build", "--strict", "-d", out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_the_site_builds_strict_and_strict_catches_a_broken_anchor(site, tmp_path) -> None:
    assert (site / "index.html").is_file() and (site / "reference" / "params" / "index.html").is_file()
    copy = tmp_path / "copy"
    (copy / "docs").mkdir(parents=True)
    for f in ROOT.joinpath("docs").rglob("*"):
        if f.is_file():
            (copy / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(ROOT)).write_bytes(f.read_bytes())
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    page = copy / "docs" / "testing.md"
    page.write_text(page.read_text() + "\nSee [nowhere](dvc.md#no-such-heading).\n")
    p = run(BIN / "mkdocs", "build", "--strict", "-d", tmp_path / "out", cwd=copy)
    assert p.returncode != 0 and "no-such-heading" in p.stderr


def _ids(html: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', html.read_text(encoding="utf-8")))


def test_every_readme_link_resolves_to_a_file_and_an_anchor(site) -> None:
    """README.md is read on GitHub, outside the site: each relative link names a file of the checkout, and a link
    into docs/ with an anchor names a heading the built page has."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) > 20
    for link in local:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).exists(), f"README.md links to {path}, which does not exist"
        if anchor:
            assert path.startswith("docs/") and path.endswith(".md"), link
            page = Path(path).relative_to("docs").with_suffix("")
            html = site / ("index.html" if page.name == "index" else page / "index.html")
            assert anchor in _ids(html), f"README.md links to {link}: {path} has no heading #{anchor}"


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200
    assert "./run.sh repro" in "\n".join(lines) and "./run.sh test" in "\n".join(lines)


HISTORY = re.compile(
    r"the code before|pre-engine|earlier code|earlier sessions?|previous(ly)? (code|version)|used to be|was fixed|"
    r"in (earlier|older) versions|before (the|this) change",
    re.I,
)


def test_no_page_or_comment_narrates_earlier_versions() -> None:
    """History is in CHANGELOG.md and the commit messages; the docs, params and code say what is true now."""
    files = [ROOT / "README.md", ROOT / "params.yaml", *ROOT.glob("docs/**/*.md"), *ROOT.glob("profiles/*.yaml")]
    files += [*ROOT.glob("melanoma/**/*.py"), *ROOT.glob("stages/*.py"), ROOT / "dvc.yaml"]
    found = [
        f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
        for f in files
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not found, "\n".join(found)
    assert HISTORY.search("the code before the device change took 15.2 minutes")


def test_the_wheel_installs_the_melanoma_command_with_its_version(tmp_path) -> None:
    """`pip wheel .` builds the package a researcher installs; its console script answers --version with
    pyproject.toml's version, and it carries the library, not the tests or the data."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info/ into the folder it builds
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "melanoma", src / "melanoma", ignore=shutil.ignore_patterns("__pycache__"))
    p = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("melanoma_synth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "melanoma/serving/thresholds.py" in names and "melanoma/classifiers/registry.py" in names
    shipped = {f"melanoma/reference/{f.name}" for f in (ROOT / "melanoma/reference").glob("*.jsonl")}
    assert shipped and shipped <= set(names)  # `melanoma plan` reads them from the installed package
    assert not [n for n in names if n.startswith(("tests/", "data/", "models/", "results/", "stages/"))]
    target = tmp_path / "site-packages"
    p = run(sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel)
    assert p.returncode == 0, p.stderr[-3000:]
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    got = subprocess.run(
        [str(target / "bin" / "melanoma"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert got.returncode == 0 and got.stdout.strip() == f"melanoma {version}", got.stdout + got.stderr
    cite = (ROOT / "CITATION.cff").read_text()
    assert f"version: {version}" in cite and "cff-version:" in cite
