"""Headless Chromium with networking off, for the tests that check a page really renders (not only that it exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

OFFLINE = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]  # any http(s) fetch fails


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run(browser: str, profile: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, *OFFLINE, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180
    )


def render(
    page: Path, tmp: Path, size: tuple[int, int] = (1280, 1600), budget_ms: int = 10000
) -> tuple[np.ndarray, str]:
    """(a screenshot of `page` as an RGB array, its DOM once scripts have run), opened offline, fresh profiles."""
    browser = chromium()
    assert browser, "no Chromium"
    shot = tmp / f"{page.stem}.png"
    p = _run(
        browser,
        tmp / "profile-shot",
        [
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
    )
    assert shot.is_file(), p.stderr[-2000:]
    d = _run(browser, tmp / "profile-dom", [f"--virtual-time-budget={budget_ms}", "--dump-dom", page.as_uri()])
    assert d.stdout.strip(), d.stderr[-2000:]
    return np.asarray(Image.open(shot).convert("RGB")), d.stdout


def ink(rgb: np.ndarray) -> dict[str, float]:
    """How much is drawn: the fraction of non-white pixels, of coloured (not grey) pixels, and distinct colours."""
    a = rgb.astype(int)
    return {
        "non_white": float((a.min(axis=2) < 235).mean()),
        "coloured": float((a.max(axis=2) - a.min(axis=2) > 60).mean()),
        "colours": len(np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2])),
    }


def near(rgb: np.ndarray, colour: str, tol: int = 40) -> int:
    """Pixels within `tol` (per channel) of a #rrggbb colour."""
    want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb.astype(int) - want).max(axis=2) <= tol).sum())
