"""Names made safe to store: file names as CSVs and messages can hold them, ids every filesystem takes, and
counted reasons in one line."""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter


def fs_text(text: str) -> str:
    """A path as CSVs and messages can hold it: file-name bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def safe_id(text: str, limit: int = 80) -> str:
    """A manifest id that every filesystem and CSV takes: letters, digits, '.', '_', '-' only, at most `limit` + 9
    characters; any other name gets a short md5 of the original so that distinct names stay distinct."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", fs_text(text))
    if clean == text and len(text) <= limit:
        return text
    return f"{clean[:limit]}-{hashlib.md5(os.fsencode(text)).hexdigest()[:8]}"


def top_reasons(pairs: list[tuple[str, str]], n: int = 5) -> str:
    """'12x reason; 3x other reason' for the n most common reasons of (file, reason) pairs."""
    return "; ".join(f"{k}x {r}" for r, k in Counter(r for _, r in pairs).most_common(n))
