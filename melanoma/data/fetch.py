"""The `fetch` stage: turn a data source into `data/raw/` (images + manifest.csv + rejected.csv).

Sources (params `data.source`):
  demo      the procedural simulator (melanoma.data.demo): needs nothing from outside;
  local     a folder as downloaded: class folders or a public release (ISIC 2016-2020, HAM10000, PH2, ISIC
            Archive / isic-cli exports), read by melanoma.data.releases (`data.format`: auto or the release);
  isic_csv  images plus one label table, both named explicitly;
  gdrive    the study's Google Drive folder, downloaded with gdown, archives unpacked safely, then read as `local`.

Every file found is written to data/raw, listed in rejected.csv with a reason (unreadable, unlabelled, unknown
diagnosis: the stage fails when more than `data.max_reject_fraction` of the files are rejected), in excluded.csv
(a diagnosis the study leaves out through data.label_map), or in skipped.csv (known non-lesion files: masks,
licences, macOS metadata). Neither excluded nor skipped files count against that fraction.
dataset_card.json says what was read: the format, the label mapping per diagnosis, rejects, exclusions and skips
by reason, and the metadata columns available.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tarfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from melanoma.data import demo
from melanoma.data.images import (
    IMAGE_SUFFIXES,
    MAX_BYTES,
    MAX_PIXELS,
    Decoded,
    ImageRejected,
    decode_image,
    encode_png,
    md5_bytes,
)
from melanoma.data.releases import (
    PARENTS,
    UNPACKED,
    Candidate,
    FetchError,
    Offer,
    files_under,
    map_label,
    read_csv_source,
    read_folder,
)
from melanoma.errors import first_line
from melanoma.io import atomic_dir, write_csv
from melanoma.params import LABELS
from melanoma.paths import CARD, THUMBNAILS
from melanoma.text import top_reasons

MANIFEST_COLUMNS = [
    "id",
    "path",
    "label",
    "diagnosis",
    "md5",
    "orig_width",
    "orig_height",
    "width",
    "height",
    "source",
    "subset",
    "lesion_id",
    "patient_id",
    "origin",
]
SUBSETS = ("main", "external_test")


# ---------------------------------------------------------------- sources


def from_demo(cfg: dict[str, Any]) -> Offer:
    """The demo source (`data.demo` params in cfg): one candidate per demo.plan spec, rendered when stored; its
    metadata the class it is drawn as, whether label noise swapped it, and its lesion's patient attributes
    (demo.patient: sex, age, site, skin_type)."""
    specs = demo.plan(
        cfg["seed"], cfg["n_benign"], cfg["n_malignant"], cfg["image_size"], cfg["label_noise"], cfg["repeat_fraction"]
    )
    offer = Offer(format="demo")
    for k, s in enumerate(specs):
        offer.diagnoses[("simulated", s.label)] += 1
        offer.candidates.append(
            Candidate(
                id=f"demo_{k:06d}",
                label=s.label,
                source="demo",
                origin=f"demo:{s.seed}:{s.drawn_as}:{s.index}",
                spec=s,
                lesion_id=s.lesion_id,
                diagnosis="simulated",
                metadata={
                    "drawn_as": s.drawn_as,
                    "label_swapped": str(s.label != s.drawn_as).lower(),
                    **demo.patient(s),  # sex, age, site, skin_type: the manifest's meta_* subgroup columns
                },
            )
        )
    return offer


# ---------------------------------------------------------------- gdrive

MAX_EXPANSION = 100  # an archive of images expands about 1:1; a zip bomb by 1,000x and more
EXPANSION_FLOOR = 50_000_000  # below 50 MB written in all, any ratio is harmless (a small zip of text files)
MAX_ENTRIES = 200_000  # entries over a whole unpack: the largest public release (ISIC 2020) has ~66,000 files
MAX_EMPTY = 1_000  # empty files over a whole unpack: an archive of images holds a few (placeholders) at most


@dataclass
class Budget:
    """What one unpack may write, counted over every level together (archives inside archives): the bytes the
    entries declare against MAX_EXPANSION x the downloaded archives' size and against the free disk, and the
    number of entries. Declared sizes bound what is written: zipfile stops each entry at its declared size, tar
    stores them."""

    packed: int  # bytes of the archives as downloaded (the top level)
    free: int  # free bytes on the destination's disk when the unpack began
    declared: int = 0
    entries: int = 0
    empty: int = 0

    def take(self, archive: Path, sizes: list[int]) -> None:
        """Count one archive's entries (their declared sizes in bytes, -1 for a folder: an entry, no bytes);
        FetchError before anything is written when the whole unpack would then exceed a limit."""
        self.declared += sum(n for n in sizes if n > 0)
        self.entries += len(sizes)
        self.empty += sum(1 for n in sizes if n == 0)
        nested = " (counting archives inside archives)"
        if self.declared > MAX_EXPANSION * max(self.packed, 1) and self.declared > EXPANSION_FLOOR:
            raise FetchError(
                f"{archive}: unpacking would write {self.declared / 1e9:.1f} GB from {self.packed / 1e6:.1f}"
                f" MB downloaded{nested}, over {MAX_EXPANSION}x: a zip bomb? Unpack it yourself if you "
                "trust it, and use data.source=local"
            )
        if self.declared > self.free:
            raise FetchError(
                f"{archive}: unpacking needs {self.declared / 1e9:.1f} GB{nested}, "
                f"{self.free / 1e9:.1f} GB are free; free disk space or set data.gdrive.download_dir on a "
                "larger disk"
            )
        if self.entries > MAX_ENTRIES or self.empty > MAX_EMPTY:
            what = (
                f"{self.entries:,} entries (limit {MAX_ENTRIES:,})"
                if self.entries > MAX_ENTRIES
                else f"{self.empty:,} empty files (limit {MAX_EMPTY:,})"
            )
            raise FetchError(
                f"{archive}: the archives hold {what}{nested}: not an archive of images; unpack it "
                "yourself if you trust it, and use data.source=local"
            )


def _free(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or would: its nearest existing parent)."""
    return shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free


def safe_extract(archive: Path, dest: Path, budget: Budget | None = None) -> None:
    """Unpack a zip/tar into dest, refusing any entry that would land outside it (zip-slip) or is a link, and
    archives that would take `budget` past its limits (by default a budget of this archive alone)."""
    dest = dest.resolve()
    budget = budget or Budget(max(archive.stat().st_size, 1), _free(dest))

    def check(name: str) -> None:
        target = (dest / name).resolve()
        if os.path.isabs(name) or not target.is_relative_to(dest):
            raise FetchError(f"{archive}: refusing entry '{name}': it would write outside {dest}")

    kind = (
        "zip"
        if archive.name.lower().endswith(".zip")
        else "tar"
        if archive.name.lower().endswith((".tar", ".tar.gz", ".tgz"))
        else None
    )  # by its name: a tar whose last member is a zip is also a valid zip
    if kind == "zip" and zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                check(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise FetchError(f"{archive}: refusing symbolic link entry '{info.filename}'")
            budget.take(archive, [-1 if i.is_dir() else i.file_size for i in z.infolist()])
            z.extractall(dest)
    elif kind == "tar" and tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                check(m.name)
                if not (m.isfile() or m.isdir()):
                    raise FetchError(f"{archive}: refusing entry '{m.name}': not a regular file or folder")
            budget.take(archive, [m.size if m.isfile() else -1 for m in t.getmembers()])
            t.extractall(dest, filter="data")
    else:
        raise FetchError(
            f"{archive}: not a readable {kind or 'zip or tar'} archive (.zip, .tar, .tar.gz or .tgz, by its name)"
        )


def _archives(folder: Path) -> list[Path]:
    return [
        f
        for f in files_under(folder)
        if f.name.lower().endswith(UNPACKED) and not (f.parent / f".{f.name}.extracted").exists()
    ]


def unpack_archives(folder: Path, levels: int = 3) -> None:
    """Extract every archive in a downloaded folder next to it (`x.zip` -> `x/`), archives found inside those too
    (up to `levels` deep); each once: a finished extraction leaves a marker. One Budget covers the whole unpack,
    every level together. Never replaces a folder it did not make: raises FetchError when an archive's folder
    name is taken by a folder downloaded beside it. A failed unpack removes everything it extracted (the
    downloaded archives stay)."""
    todo = _archives(folder)
    budget = Budget(sum(a.stat().st_size for a in todo), _free(folder))
    made: list[Path] = []
    try:
        for _ in range(levels):
            if not todo:
                return
            for archive in todo:
                made += _unpack_one(archive, budget)
            todo = _archives(folder)
    except BaseException:
        for path in reversed(made):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        raise


def _unpack_one(archive: Path, budget: Budget) -> list[Path]:
    """Extract `archive` into the folder named after it; returns what it created (the folder, the marker)."""
    stem = archive.name
    for suf in UNPACKED:
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    dest = archive.parent / stem
    if dest.exists():
        raise FetchError(
            f"{archive} would unpack into {dest}, a folder downloaded beside it; keep one of the two "
            f"in the Drive folder, or delete {dest} here"
        )
    try:
        with atomic_dir(dest) as tmp:
            safe_extract(archive, tmp, budget)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, RuntimeError, OSError, zlib.error) as e:
        raise FetchError(
            f"{archive}: cannot unpack ({type(e).__name__}: {first_line(e)}); download it again, or "
            "unpack it yourself and use data.source=local"
        ) from None
    marker = archive.parent / f".{archive.name}.extracted"
    marker.touch()
    return [dest, marker]


def _visible(f: Path, base: Path) -> bool:
    return not any(p.startswith(".") or p.lower() == "__macosx" for p in f.relative_to(base).parts)


def _class_labels(d: Path, label_map: dict[str, str]) -> set[str]:
    """The labels d's subfolders name, directly or through data.label_map."""
    return {map_label(p.name, label_map)[0] for p in d.iterdir() if p.is_dir()} - {None}


def find_dataset_root(folder: Path, label_map: dict[str, str]) -> Path:
    """Where a download's dataset starts. With tables (CSV, PH2_dataset.txt): the deepest folder holding every
    table and every image (a release unpacked from several zips, one folder each, starts at the download folder).
    Without: the shallowest folder whose subfolders name both classes (benign/, malignant/ or data.label_map
    names) or are train/ and test/ parents. Raises FetchError when nothing, or several separate folders, qualify."""
    files = [f for f in files_under(folder) if _visible(f, folder)]
    tables = [f for f in files if f.suffix.lower() == ".csv" or f.name.lower() == "ph2_dataset.txt"]
    if tables:
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        return Path(os.path.commonpath([str(f.parent) for f in tables + images]))
    dirs = sorted(
        {folder} | {a for f in files for a in f.parents if a.is_relative_to(folder)},
        key=lambda d: (len(d.parts), str(d)),
    )
    found = []
    for d in dirs:
        names = {p.name.lower() for p in d.iterdir() if p.is_dir()}
        if not any(d.is_relative_to(r) for r in found) and (
            _class_labels(d, label_map) == set(LABELS) or (names and names <= set(PARENTS) and "train" in names)
        ):
            found.append(d)
    if len(found) > 1:
        raise FetchError(
            f"{folder} holds {len(found)} separate datasets ("
            + ", ".join(str(d.relative_to(folder)) for d in found[:4])
            + "); put their class folders under one folder, or download one of them"
        )
    if not found:
        raise FetchError(
            f"no dataset found under {folder}: expected class folders (benign/ and malignant/, or "
            "names in data.label_map), train/ and test/ folders, or a release's tables with its "
            "images (see docs/data.md)"
        )
    return found[0]


def gdown_folder(folder_id: str, dest: Path) -> None:
    """Download a public Google Drive folder; no network or no access ends in one line saying which."""
    import gdown
    import requests

    hint = "download it by hand and set data.source=local with data.local.path=<that folder>"
    try:
        gdown.download_folder(id=folder_id, output=str(dest), quiet=False, use_cookies=False, resume=True)
    except requests.exceptions.ConnectionError:
        raise FetchError(f"gdrive: no network: cannot reach Google Drive for folder {folder_id}; {hint}") from None
    except requests.exceptions.RequestException as e:  # timeouts, broken transfers
        raise FetchError(
            f"gdrive: the download of folder {folder_id} broke off ({type(e).__name__}); run the "
            f"stage again to resume, or {hint}"
        ) from None
    except gdown.exceptions.DownloadError as e:  # FileURLRetrievalError and the folder listing's own refusals
        first = first_line(e, empty="access refused")
        raise FetchError(
            f"gdrive: Google Drive refused folder {folder_id} (not shared publicly, or quota exceeded): {first}; {hint}"
        ) from None


def from_gdrive(
    cfg: dict[str, Any],
    label_map: dict[str, str],
    fmt: str = "auto",
    download: Callable[[str, Path], None] = gdown_folder,
) -> Offer:
    dest = Path(cfg["download_dir"])
    if Path.cwd().resolve().is_relative_to(dest.resolve()):
        raise FetchError(
            f"data.gdrive.download_dir: '{cfg['download_dir']}' is the project folder or above it; "
            "archives there would be unpacked too: name a folder of its own (data/download/gdrive)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    download(cfg["folder_id"], dest)
    unpack_archives(dest)
    return read_folder(find_dataset_root(dest, label_map), label_map, fmt, source="gdrive")


def collect(data: dict[str, Any]) -> Offer:
    """The candidates of the configured source (params section `data`)."""
    src, label_map = data["source"], data["label_map"]
    if src == "demo":
        return from_demo(data["demo"])
    if src == "local":
        return read_folder(Path(data["local"]["path"]), label_map, data["format"])
    if src == "isic_csv":
        return read_csv_source(
            Path(data["isic_csv"]["images"]), Path(data["isic_csv"]["csv"]), label_map, source="isic_csv"
        )
    return from_gdrive(data["gdrive"], label_map, data["format"])


# ---------------------------------------------------------------- writing data/raw


def _materialise(job: tuple[Candidate, int, int, int]) -> Decoded | str:
    cand, max_side, max_pixels, max_bytes = job
    if cand.spec is not None:
        return encode_png(demo.render(cand.spec)[0])
    try:
        return decode_image(cand.file, max_side, max_pixels, max_bytes)
    except ImageRejected as e:
        return str(e)


@dataclass
class FetchSummary:
    counts: Counter
    rejected: int
    total: int
    seconds: float
    skipped: int = 0
    format: str = ""
    excluded: int = 0

    def line(self, source: str, out: Path) -> str:
        parts = ", ".join(f"{n} {subset}/{label}" for (subset, label), n in sorted(self.counts.items()))
        return (
            f"fetch: {sum(self.counts.values())} images ({parts}) from {source} ({self.format}), "
            f"{self.rejected} rejected of {self.total}, {self.excluded} excluded by data.label_map, "
            f"{self.skipped} non-lesion files skipped -> {out}/manifest.csv, {CARD} [{self.seconds:.1f} s]"
        )


# metadata a reviewer asks about first (besides lesion and patient ids)
CARD_METADATA = ("age", "sex", "site", "skin_type")


def dataset_card(offer: Offer, rows: list[dict[str, Any]], rejects: list[tuple[str, str]]) -> dict[str, Any]:
    """What fetch read, for a reviewer: format, tables, label mapping per diagnosis, rejects, exclusions and skips
    by reason, and how many stored images carry each metadata column."""
    stored = Counter((r["diagnosis"], r["label"]) for r in rows)
    return {
        "format": offer.format,
        "tables": offer.tables,
        "images": {
            s: {c: sum(r["subset"] == s and r["label"] == c for r in rows) for c in LABELS}
            for s in SUBSETS
            if any(r["subset"] == s for r in rows)
        },
        "label_mapping": [
            {"diagnosis": d, "label": lab, "listed": n, "stored": stored[(d, lab)]}
            for (d, lab), n in sorted(offer.diagnoses.items())
        ],
        "rejected": dict(Counter(r for _, r in rejects).most_common()),
        "excluded": dict(Counter(r for _, r in offer.excluded).most_common()),
        "skipped": dict(Counter(r for _, r in offer.skipped).most_common()),
        "metadata": {
            k: sum(bool(r.get(f"meta_{k}") if k in CARD_METADATA else r.get(k)) for r in rows)
            for k in CARD_METADATA + ("lesion_id", "patient_id")
        },
    }


def write_raw(
    offer: Offer,
    out: Path,
    max_side: int,
    max_reject_fraction: float,
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_file_mb: int = MAX_BYTES // 1_000_000,
) -> FetchSummary:
    """Decode every candidate (in parallel); write images, manifest.csv, rejected.csv, skipped.csv and
    dataset_card.json atomically. Raises FetchError when too many files are rejected or a class is empty."""
    t0 = time.perf_counter()
    seen: dict[str, str] = {}
    for c in offer.candidates:
        if c.id in seen:
            raise FetchError(f"two images share the id '{c.id}' ({seen[c.id]} and {c.origin}); rename one")
        seen[c.id] = c.origin
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    rejects = list(offer.rejects)
    rows: list[dict[str, Any]] = []
    thumbs: dict[str, np.ndarray] = {}
    meta_keys = sorted({k for c in offer.candidates for k in c.metadata})
    with atomic_dir(out) as tmp:
        jobs = [(c, max_side, max_pixels, max_file_mb * 1_000_000) for c in offer.candidates]
        with worker_pool(workers) if workers > 1 else _Inline() as pool:
            results = pool.map(_materialise, jobs, chunksize=8)
            for cand, res in tqdm(zip(offer.candidates, results), total=len(jobs), desc="fetch", unit="img"):
                if isinstance(res, str):
                    rejects.append((cand.origin, res))
                    continue
                rel = Path("images" if cand.subset == "main" else cand.subset) / cand.label / f"{cand.id}{res.suffix}"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(res.data)
                thumbs[cand.id] = res.thumb
                rows.append(
                    {
                        "id": cand.id,
                        "path": rel.as_posix(),
                        "label": cand.label,
                        "diagnosis": cand.diagnosis,
                        "md5": md5_bytes(res.data),
                        "orig_width": res.orig_width,
                        "orig_height": res.orig_height,
                        "width": res.width,
                        "height": res.height,
                        "source": cand.source,
                        "subset": cand.subset,
                        "lesion_id": cand.lesion_id,
                        "patient_id": cand.patient_id,
                        "origin": cand.origin,
                        **{f"meta_{k}": cand.metadata.get(k, "") for k in meta_keys},
                    }
                )
        total = len(rows) + len(rejects)
        if total and len(rejects) / total > max_reject_fraction:
            raise FetchError(
                f"{len(rejects)} of {total} files rejected ({len(rejects) / total:.1%} > data.max_reject_fraction="
                f"{max_reject_fraction}); most common reasons: {top_reasons(rejects)}. Fix the files, map the "
                "diagnoses in data.label_map, or raise data.max_reject_fraction."
            )
        for c in LABELS:
            if not any(r["label"] == c and r["subset"] == "main" for r in rows):
                refused = rejects + offer.excluded
                raise FetchError(
                    f"no usable {c} image in the source after rejects; each class needs at least one"
                    + (f"; most common reasons: {top_reasons(refused)}" if refused else "")
                )
        rows.sort(key=lambda r: (r["subset"] != "main", r["id"]))
        write_csv(tmp / "manifest.csv", rows, MANIFEST_COLUMNS + [f"meta_{k}" for k in meta_keys])
        np.save(tmp / THUMBNAILS, np.stack([thumbs[r["id"]] for r in rows]))  # .npy: byte-deterministic
        write_csv(tmp / "rejected.csv", [{"file": f, "reason": r} for f, r in sorted(rejects)], ["file", "reason"])
        write_csv(tmp / "skipped.csv", [{"file": f, "reason": r} for f, r in sorted(offer.skipped)], ["file", "reason"])
        write_csv(
            tmp / "excluded.csv", [{"file": f, "reason": r} for f, r in sorted(offer.excluded)], ["file", "reason"]
        )
        (tmp / CARD).write_text(json.dumps(dataset_card(offer, rows, rejects), indent=2) + "\n")
    counts = Counter((r["subset"], r["label"]) for r in rows)
    return FetchSummary(
        counts, len(rejects), total, time.perf_counter() - t0, len(offer.skipped), offer.format, len(offer.excluded)
    )


def _die_with_parent() -> None:
    """Pool-worker initializer: on Linux, ask the kernel to SIGKILL this worker when its parent dies (a `kill -9`
    of the stage would otherwise leave the workers decoding for nobody)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers end with the process that made it."""
    return ProcessPoolExecutor(workers, initializer=_die_with_parent)


class _Inline:
    """A stand-in for a process pool when one worker is asked for (debuggable, no fork)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def map(fn: Callable, items: Iterable, chunksize: int = 1) -> Iterable:
        return map(fn, items)
