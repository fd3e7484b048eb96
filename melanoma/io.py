"""Small file helpers every stage shares: atomic outputs (folders and files), locks, size-capped reads, hardlinks
instead of second copies, CSV tables."""

from __future__ import annotations

import csv
import errno
import fcntl
import glob
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from melanoma.errors import MelanomaError


class OutputBusy(MelanomaError):
    """An output another live process is writing (or whose temporary folder it replaced)."""


class FileRefused(MelanomaError):
    """A file named by the user that is not a regular file, or larger than such a file can be."""


def _kind(mode: int) -> str:
    return (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )


def regular_file(path: Path, what: str, max_bytes: int) -> int:
    """Check, without opening it, that `path` (symlinks followed) is a regular file of at most `max_bytes`, and
    return its size in bytes. A FIFO would block the reader for ever and /dev/zero would fill the memory: every
    file read on a user's word passes here first. Raises FileRefused naming `what` and the path;
    FileNotFoundError passes through for the caller's own message."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{what} {path} is {_kind(st.st_mode)}, not a regular file; give a file")
    if st.st_size > max_bytes:
        raise FileRefused(
            f"{what} {path} is {st.st_size / 1e6:,.1f} MB, more than such a file can be "
            f"({max_bytes / 1e6:,.0f} MB); check that it is the right file"
        )
    return st.st_size


def read_small(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a user-named file, after `regular_file`'s checks; never more than `max_bytes` (a file that
    grows while read is refused too)."""
    regular_file(path, what, max_bytes)
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileRefused(
            f"{what} {path} grew past {max_bytes / 1e6:,.0f} MB while read; check that it is the right file"
        )
    return data


@contextmanager
def owner_lock(out: Path) -> Iterator[None]:
    """Hold `.<out>.tmp-lock` beside `out` (an exclusive flock) for as long as this process writes `out`.

    The kernel drops the lock when its holder dies, SIGKILL included, so a held lock means a live writer and a free
    one means any `.<out>.tmp-*` folder is an orphan. Raises OutputBusy naming the holder's pid when another
    process holds it. The file is unlinked before the lock is released; a process that opened the old file
    re-opens until the path and its descriptor agree (the usual unlink-safe flock pattern)."""
    path = out.parent / f".{out.name}.tmp-lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise OutputBusy(
                f"{out} is being written by another process (pid {holder}), e.g. a stage still running "
                f"after its `dvc repro` was killed; wait for it to end or stop it (kill {holder}), then "
                "run again"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError as e:  # a full disk: name the output, not "a file"
        os.unlink(path)
        os.close(fd)
        raise OSError(e.errno, e.strerror, str(out)) from None
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is removed.

    A stage killed or failing half-way therefore never leaves a half-written output for DVC to commit. One writer
    per output at a time: a second process writing the same `out` gets OutputBusy at once (no wait); temporary
    folders of writers that died (SIGKILL skips cleanup) are removed only once their lock is free. Raises
    OutputBusy too when the temporary folder was removed or replaced by someone else while this process wrote
    it: nothing it did not fill is ever renamed over `out`.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with owner_lock(out):
        ours = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-\d+")  # the names this function gives (a pid):
        for stale in out.parent.glob(f".{glob.escape(out.name)}.*"):  # orphans, their writer no longer holding
            if ours.fullmatch(stale.name):  # the lock; a user's own `.raw.old-backup` is not one of them
                _remove(stale)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        made = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)  # held open: its inode cannot be reused by a new folder
        try:
            try:
                yield tmp
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(e, OSError) and e.errno and e.filename is None:  # a write() names no file: name
                    raise OSError(e.errno, e.strerror, str(out)) from e  # the output it was writing
                raise
            ours = tmp.is_dir() and not tmp.is_symlink() and os.stat(tmp).st_ino == os.fstat(made).st_ino
        finally:
            os.close(made)
        if not ours:
            raise OutputBusy(
                f"{out}: its temporary folder {tmp} was removed or replaced by another process while "
                "this one wrote it; nothing was changed: run again"
            )
        _swap(tmp, out)


def _remove(path: Path) -> None:
    """Delete a file, a link (never what it points to) or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _swap(tmp: Path, out: Path) -> None:
    """Rename the filled `tmp` over `out` (a folder, a file or a link, which is replaced, never followed); on
    failure `out` is put back and `tmp` removed."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    moved = os.path.lexists(out)
    if moved:
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if moved:
            os.replace(old, out)
        _remove(tmp)
        raise
    if moved:
        _remove(old)


# os.link's errors that mean "this filesystem cannot link these two paths", not "something is wrong": another
# filesystem (EXDEV), a filesystem without hardlinks or a kernel that refuses to link a file the user does not own
# (EPERM, ENOTSUP/EOPNOTSUPP), or a file at its filesystem's link limit (EMLINK)
LINK_IMPOSSIBLE = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def link_or_copy(src: Path, dst: Path) -> bool:
    """Make the new file `dst` a hardlink to the file `src` (a symlink `src` is followed: the link is to the file
    it points to, e.g. a DVC cache object), so that content a stage has already written, or that the DVC cache
    already holds, is stored once; a copy only where linking is impossible (LINK_IMPOSSIBLE: another filesystem,
    no hardlinks, the link limit). Returns True when linked, False when copied.

    A linked `dst` shares its bytes with `src`: neither may be written in place afterwards (no stage does: each
    writes new files and renames them). Raises FileExistsError when `dst` exists, FileNotFoundError when `src`
    does not, and any other OSError of os.link or the copy as it comes."""
    try:
        os.link(src, dst)
        return True
    except OSError as e:
        if e.errno not in LINK_IMPOSSIBLE:
            raise
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    shutil.copyfile(src, dst)
    return False


FORMULA = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with these as a formula


class Staged:
    """Files written under temporary names beside their final paths, renamed into place together by
    `staged_files` (see there)."""

    def __init__(self) -> None:
        self.files: dict[Path, Path] = {}  # final path -> its temporary file

    def path(self, final: Path, mode: int = 0o644) -> Path:
        """A new empty file `.<name>.tmp` beside `final` (mode `mode`) for a writer that needs a path (torch.save,
        PIL); it replaces `final` when the block ends without an error. The name is fixed, so a run killed mid-write
        leaves one stale temp file that the next write replaces, never one more per run; a file or link already
        there is removed first, never written through. Writers that can race on one output hold its owner_lock."""
        final = Path(final)
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        os.fchmod(fd, mode)  # as any file the user writes, whatever the umask
        os.close(fd)
        self.files[final] = tmp
        return tmp

    def text(self, final: Path, text: str, mode: int = 0o644) -> None:
        """Stage `text` (UTF-8) for `final`, flushed to disk before the rename."""
        with open(self.path(final, mode), "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


@contextmanager
def staged_files() -> Iterator[Staged]:
    """Write several files so that a reader never sees one half-written and a failure changes none of them:
    `with staged_files() as s: s.text(a, ...); torch.save(x, s.path(b))` renames every staged file into place
    when the block ends without an error, and removes them all on any error (the old files stay as they were).
    A path that is a symlink is replaced, never written through. An OSError without a file name (a full disk) is
    raised again naming the final path."""
    s = Staged()
    try:
        yield s
    except BaseException as e:
        for tmp in s.files.values():
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno and e.filename is None and s.files:
            raise OSError(e.errno, e.strerror, str(list(s.files)[-1])) from None
        raise
    for final, tmp in s.files.items():
        os.replace(tmp, final)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace the file `path` with `text` in one rename (`staged_files` with one file)."""
    with staged_files() as s:
        s.text(path, text, mode)


def _cell(v: Any) -> Any:
    """A text cell that a spreadsheet would execute gets a leading ' (OWASP CSV injection); numbers stay as they are."""
    if isinstance(v, str) and v.startswith(FORMULA):
        try:
            float(v)
        except ValueError:
            return "'" + v
    return v


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """UTF-8 CSV of `rows` (dicts) in `columns` order; formula-like text cells are quoted with a leading '."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows({k: _cell(v) for k, v in r.items()} for r in rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by write_csv, with its formula quoting undone."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: v[1:] if v.startswith("'") and v[1:].startswith(FORMULA) else v for k, v in r.items()}
            for r in csv.DictReader(fh)
        ]
