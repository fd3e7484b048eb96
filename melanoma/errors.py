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
