"""The one error base. Every failure the project expects (bad params, missing inputs, a diverged model, a
corrupt checkpoint, ...) is a `MelanomaError` whose message says what went wrong, where (file or params key),
and how to fix it. The stage runner (`melanoma.stage.run_stage`) and the `melanoma` command catch this base
once and print the message on one line; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class MelanomaError(Exception):
    """Base of every expected, user-fixable failure; str(e) is the one-line message shown to the user."""


class PretrainedUnavailable(MelanomaError):
    """Pretrained weights were asked for and cannot be loaded (offline, not cached, or not published in a safe
    format). Never silently replaced by a random initialisation."""


def first_line(e: BaseException | str, limit: int = 200, empty: str = "") -> str:
    """The first non-empty line of an exception's message (or of a string), at most `limit` characters, cut at a
    word boundary with "..." when longer: error messages quote library exceptions without ever ending mid-word.
    `empty` is returned when there is no text at all."""
    text = next((s.strip() for s in str(e).splitlines() if s.strip()), "")
    if not text:
        return empty
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    if " " in cut and not text[limit - 3].isspace():
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "..."
