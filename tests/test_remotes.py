"""The DVC remotes: the study's Google Drive remote is configured, and no credential is ever tracked by git."""

from __future__ import annotations

import configparser
import fnmatch
import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT

# built from pieces so that this file does not match itself
SECRET_NAMES = re.compile(
    r"(^|/)("
    + "|".join(
        [
            r"[^/]*\.p12",
            r"[^/]*\.pem",
            r"[^/]*\.key",
            r"client_secret[^/]*\.json",
            r"[^/]*service[-_]?account[^/]*\.json",
            r"[^/]*credentials[^/]*\.json",
            r"gdrive-user-credentials\.json",
            r"\.env",
            r"config\.local",
            r"token",
        ]
    )
    + r")$"
)
SECRET_TEXT = re.compile(
    "|".join(
        [
            "-----BEGIN [A-Z ]*" + "PRIVATE KEY-----",
            '"type": *"service' + '_account"',
            '"refresh' + '_token"',
            r"\bhf_[A-Za-z0-9]{30,}",
            r"\bAKIA[0-9A-Z]{16}\b",
            '"client' + r'_secret": *"[^"]+"',
        ]
    )
)


def credential_like(root: Path, files: list[str]) -> list[str]:
    """Tracked files that look like credentials, by name or by content."""
    found = []
    for f in files:
        path = root / f
        if SECRET_NAMES.search(f):
            found.append(f"{f} (name)")
        elif path.is_file() and path.stat().st_size < 5_000_000:
            if SECRET_TEXT.search(path.read_text(errors="ignore")):
                found.append(f"{f} (content)")
    return found


def tracked() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_no_credential_is_tracked_by_git():
    assert credential_like(ROOT, tracked()) == []


def test_the_credential_check_catches_planted_secrets(tmp_path):
    (tmp_path / "sa.json").write_text('{"type": "service' + '_account", "private_key": "x"}')
    (tmp_path / "notes.txt").write_text("token: hf_" + "a" * 34)
    (tmp_path / "client_secret_123.json").write_text("{}")
    (tmp_path / "ok.py").write_text("print('hello')")
    assert credential_like(tmp_path, ["sa.json", "notes.txt", "client_secret_123.json", "ok.py"]) == [
        "sa.json (content)",
        "notes.txt (content)",
        "client_secret_123.json (name)",
    ]


def test_gdrive_remote_is_configured_without_secrets():
    cfg = configparser.ConfigParser(inline_comment_prefixes=("#",))
    cfg.read(ROOT / ".dvc/config")
    remote = cfg["'remote \"gdrive\"'"]
    assert remote["url"].startswith("gdrive://")
    assert not {"gdrive_client_secret", "gdrive_service_account_json_file_path"} & set(remote)
    # where a user puts their own client secret or key path: ignored by git
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=ROOT)
    assert ignored.returncode == 0


def test_git_tracks_no_stage_output_but_the_uncached_metrics():
    """Stage outputs belong to DVC: one that git also tracks makes `dvc repro` fail ("already tracked by SCM")
    on a fresh clone. Only the `cache: false` metrics files are git's to carry."""
    import yaml

    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    uncached = {
        next(iter(m))
        for st in pipeline.values()
        for kind in ("outs", "metrics")
        for m in st.get(kind, st.get("do", {}).get(kind, []))
        if isinstance(m, dict) and not next(iter(m.values())).get("cache", True)
    }
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    outs = sorted({o["path"] for st in lock.values() for o in st.get("outs", [])})
    tracked = subprocess.run(
        ["git", "ls-files", "--", *outs], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    patterns = [re.sub(r"\$\{[^}]+\}", "*", m) for m in uncached]  # matrix/foreach paths are templates
    patterns += [f"{m}/*" for m in uncached]  # a cache: false folder: git carries its files
    assert len(outs) > 50 and {"results/metrics.json", "results/cells/*", "results/generators/*/quality.json"} <= set(
        patterns
    )
    stray = [f for f in tracked if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns)]
    assert not stray, f"git tracks DVC outputs: {stray}; `git rm --cached` them"
