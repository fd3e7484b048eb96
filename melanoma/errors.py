"""The one error base. Every failure the project expects (bad params, missing inputs, a diverged model, a
corrupt checkpoint, ...) is a `MelanomaError` whose message says what went wrong, where (file or params key),
and how to fix it. The stage runner (`melanoma.stage.run_stage`) and the `melanoma` command catch this base
once and print the message on one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import unicodedata


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
    cut = text[: limit - 3]
    if " " in cut and not text[limit - 3].isspace():
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "..."


# controls (newline, ESC, C1 such as U+009B), format (bidi overrides, zero-width), line separators, and lone
# surrogates (a file name's undecodable bytes, as Python's os functions hand them over)
_HIDDEN = ("Cc", "Cf", "Zl", "Zp", "Cs")


def printable(text: object, keep_newlines: bool = False) -> str:
    """`text` as one terminal-safe string: every control or format character (a newline, an ANSI escape, a
    right-to-left override, a zero-width space) written as its Python escape (`\\n`, `\\x1b`, `\\u202e`), so a
    file name can neither forge a table row nor drive the terminal. With `keep_newlines`, "\\n" is kept (text
    that is several lines by design) and every other such character escaped."""
    return "".join(
        ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(ch) in _HIDDEN and not (keep_newlines and ch == "\n")
        else ch
        for ch in str(text)
    )


_OS_FIXES = {
    errno.ENOSPC: "free space on that disk (`dvc gc -w` drops cached outputs no commit uses) or work on a larger one",
    errno.EDQUOT: "free space within your quota or work on a larger disk",
    errno.EROFS: "the file system is read-only: work in a writable copy of the repository",
    errno.EACCES: "make it readable/writable for you (chmod/chown) or work in a folder you own",
    errno.EPERM: "make it readable/writable for you (chmod/chown) or work in a folder you own",
    errno.ENAMETOOLONG: "the path is longer than the file system allows: move or rename it to a shorter path",
    errno.ENOENT: "check the path (a folder in it may have been moved or deleted)",
    errno.EMFILE: "raise the open-file limit (`ulimit -n 4096`) and run again",
}


def os_error_line(e: OSError) -> str:
    """One line for an operating-system failure (full disk, read-only or forbidden folder, too long a name, ...):
    what failed, on which path, and the usual fix for that errno."""
    where = " -> ".join(printable(f) for f in (e.filename, e.filename2) if f is not None) or "a file"
    fix = _OS_FIXES.get(e.errno, "check that path and run again")
    return f"{where}: {e.strerror or first_line(e, empty=type(e).__name__)} (errno {e.errno}); {fix}"


INTERRUPTED = 130  # the shell's exit status for a SIGINT (128 + 2)
