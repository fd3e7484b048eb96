"""Reading the folders researchers download: class folders and the public dermoscopy releases, as shipped.

A folder is read in three steps:

1. **Walk**: every file is an image, a table (CSV, or PH2's `PH2_dataset.txt`), a known sidecar (licence and
   attribution texts, `__MACOSX/`, AppleDouble `._*` files, DICOM/TFRecord copies, segmentation masks and
   superpixel maps named `*_segmentation`, `*_lesion`, `*_roi`, `*_superpixels`, `*_mask`) or something else.
   Sidecars are *skipped*: counted and listed, never stored, never counted against `data.max_reject_fraction`.
2. **Tables**: each CSV is recognised by its header (`RELEASE_FORMATS`, documented in docs/data.md):
   label tables give each image a diagnosis (canonical terms below) and, where the release states it,
   benign/malignant; side tables (ISIC 2019 metadata, ISIC 2018 lesion groupings, ISIC 2017 metadata, ISIC 2020
   test.csv) add lesion_id, patient_id, age, sex and site. A table whose name says *test* is the official test
   set: its images become the external test set.
3. **Labels**: a diagnosis becomes benign or malignant only through `data.label_map` (params.yaml states the
   study's choice for every diagnosis the releases use); a diagnosis the map does not name is a counted reject.

With no label table the folder is read as class folders (`benign/`, `malignant/`, or names in data.label_map),
optionally under `train/` and `test/` parents (test/ becomes the external test set).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melanoma.data import demo
from melanoma.data.images import IMAGE_SUFFIXES
from melanoma.errors import MelanomaError
from melanoma.io import read_small, regular_file
from melanoma.params import FORMATS, LABELS, PLACEHOLDER_IDS
from melanoma.text import fs_text, safe_id, top_reasons

RELEASE_FORMATS = FORMATS[2:]  # the releases whose tables this module reads

# Release codes and spellings -> one canonical diagnosis term (the keys data.label_map uses).
ALIASES = {
    "mel": "melanoma",
    "nv": "nevus",
    "bcc": "basal_cell_carcinoma",
    "ak": "actinic_keratosis",
    "akiec": "actinic_keratosis",
    "bkl": "benign_keratosis",
    "df": "dermatofibroma",
    "vasc": "vascular_lesion",
    "scc": "squamous_cell_carcinoma",
    "unk": "unknown",
    "seborrheic_keratoses": "seborrheic_keratosis",
    "solar_or_actinic_keratosis": "actinic_keratosis",
    "pigmented_benign_keratosis": "benign_keratosis",
    "squamous_cell_carcinoma,_nos": "squamous_cell_carcinoma",
    "basal_cell_carcinoma,_nos": "basal_cell_carcinoma",
}
EXCLUDED = "is excluded by data.label_map"  # the reason of every image the study leaves out on purpose
ONE_HOT = ("MEL", "NV", "BCC", "AKIEC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")  # ISIC 2018 / 2019 columns
PH2_CLINICAL = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}  # PH2_dataset.txt legend
ID_COLUMNS = ("isic_id", "image", "image_id", "image_name")
META_COLUMNS = {
    "age_approx": "age",
    "age_approximate": "age",
    "age": "age",
    "sex": "sex",
    "anatom_site_general": "site",
    "anatom_site_general_challenge": "site",
    "localization": "site",
    "fitzpatrick_skin_type": "skin_type",
}  # the ISIC Archive export's column (empty where unstated)
# isic-cli's melanoma terms ('Melanoma Invasive', 'Melanoma in situ', 'Melanoma, NOS', 'Malignant melanocytic
# proliferations (Melanoma)'); a term that only contains the word ('non-melanoma', 'pseudomelanoma') is not one
MELANOMA = re.compile(
    r"melanoma(_invasive|_in_situ|_metastasis)(,_.+)?|melanoma(,_nos)?"
    r"|malignant_melanocytic_proliferations_\(melanoma\)"
)
MASK_NAMES = re.compile(r"_(segmentation|superpixels|attribute)(_|$)|_(mask|seg)$|^imd\d+_lesion$")
MASK_FOLDERS = {"groundtruth", "mask", "masks", "segmentation", "segmentations"}  # whole words of a folder name
SIDECAR_SUFFIXES = {
    ".txt",
    ".md",
    ".pdf",
    ".html",
    ".htm",
    ".json",
    ".xlsx",
    ".xls",
    ".rtf",
    ".py",
    ".ipynb",
    ".xml",
    ".yaml",
    ".yml",
    ".log",
    ".ini",
    ".cfg",
    ".doc",
    ".docx",
    ".npy",
    ".npz",
    ".pkl",
    ".h5",
    ".mat",
    ".pt",
    ".pth",
}
UNPACKED = (".zip", ".tar", ".tar.gz", ".tgz")  # what the gdrive source unpacks (fetch.unpack_archives)
ARCHIVE_SUFFIXES = UNPACKED + (".gz", ".7z", ".rar", ".bz2", ".xz")


class FetchError(MelanomaError):
    """The source cannot be read as asked; the message says what to change."""


@dataclass
class Candidate:
    """One image the source offers, before decoding."""

    id: str
    label: str
    source: str
    origin: str  # where it came from: a path relative to the source root, or the demo spec
    file: Path | None = None
    spec: demo.DemoSpec | None = None
    subset: str = "main"
    lesion_id: str = ""
    patient_id: str = ""
    diagnosis: str = ""  # the canonical diagnosis the label was mapped from
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Offer:
    """What a source yields: candidates to decode, files it refused (rejects, counted against
    data.max_reject_fraction), images whose diagnosis the study excludes (data.label_map: reject; listed, not
    held against the data) and known non-lesion files it skipped; plus what the dataset card reports."""

    def refuse(self, file: str, why: str) -> None:
        """A labelled image that gets no label: excluded on purpose by the label map, or a reject."""
        (self.excluded if why.endswith(EXCLUDED) else self.rejects).append((file, why))

    candidates: list[Candidate] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)  # diagnoses data.label_map excludes on purpose
    format: str = ""
    tables: list[dict[str, Any]] = field(default_factory=list)
    diagnoses: Counter = field(default_factory=Counter)  # (diagnosis, label | 'reject' | 'unknown') -> images

    def extend(self, other: Offer) -> None:
        self.candidates += other.candidates
        self.rejects += other.rejects
        self.skipped += other.skipped
        self.excluded += other.excluded
        self.tables += other.tables
        self.diagnoses += other.diagnoses


# ---------------------------------------------------------------- labels


def canonical(value: str) -> str:
    """A diagnosis as data.label_map keys it: lower case, spaces as underscores, release codes spelled out
    (ALIASES); isic-cli's melanoma terms ('Melanoma Invasive', 'Melanoma in situ', ...) are 'melanoma'."""
    v = "_".join(str(value).strip().lower().split())
    v = ALIASES.get(v, v)
    return "melanoma" if MELANOMA.fullmatch(v) else v


def canonical_map(label_map: dict[str, str]) -> dict[str, str]:
    """data.label_map keyed by canonical diagnosis. Raises FetchError when two keys name one diagnosis with
    different labels (e.g. 'MEL: benign' beside 'melanoma: malignant') or benign/malignant is mapped elsewhere."""
    out: dict[str, tuple[str, str]] = {}
    for key, target in label_map.items():
        c = canonical(key)
        if c in LABELS and target != c:
            raise FetchError(f"data.label_map.{key}: {c} always means {c}; remove the key")
        if c in out and out[c][1] != target:
            raise FetchError(
                f"data.label_map.{out[c][0]} ({out[c][1]}) and data.label_map.{key} ({target}) both "
                f"name the diagnosis '{c}'; keep one"
            )
        out[c] = (key, target)
    return {c: t for c, (_, t) in out.items()}


def map_label(value: str, label_map: dict[str, str]) -> tuple[str | None, str]:
    """(label, "") or (None, reason). benign/malignant map to themselves; everything else goes via label_map."""
    v = canonical(value)
    if v in LABELS:
        return v, ""
    target = canonical_map(label_map).get(v)
    if target == "reject":
        return None, f"diagnosis '{v}' {EXCLUDED}"
    if target is None:
        return None, f"unknown diagnosis '{v}' (add it to data.label_map as benign, malignant or reject)"
    return target, ""


@dataclass
class Entry:
    """One image a release's table describes."""

    image: str  # file stem
    diagnosis: str = ""  # canonical diagnosis ('' when the release states only benign/malignant)
    stated: str = ""  # benign | malignant where the release states it (benign_malignant, target), else ''
    lesion_id: str = ""
    patient_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # why the row cannot be labelled (a malformed ground-truth value), else ''


def label_entry(e: Entry, label_map: dict[str, str]) -> tuple[str | None, str]:
    """The label of a table entry, or (None, reason).

    The diagnosis decides through data.label_map. A missing or 'unknown' diagnosis takes the label the release
    states (ISIC 2020's target, the archive's benign_malignant); a stated label that contradicts the mapped
    diagnosis is a reject, never a silent choice.
    """
    if e.problem:
        return None, e.problem
    if e.diagnosis in ("", "unknown") and e.stated in LABELS:
        return e.stated, ""
    if not e.diagnosis:
        return None, f"no diagnosis and benign_malignant is '{e.stated or 'empty'}'"
    label, why = map_label(e.diagnosis, label_map)
    if label and e.stated in LABELS and e.stated != label:
        return None, f"conflicting labels: diagnosis '{e.diagnosis}' -> {label} but the release says '{e.stated}'"
    return label, why


# ---------------------------------------------------------------- walking a folder


def sidecar_reason(rel: Path) -> str | None:
    """Why a file (path relative to the dataset root) is a known non-lesion file, or None."""
    parts = [p.lower() for p in rel.parts]
    name, stem, suffix = parts[-1], Path(parts[-1]).stem, rel.suffix.lower()
    if "__macosx" in parts:
        return "macOS archive metadata (__MACOSX)"
    if name.startswith("._"):
        return "macOS AppleDouble file (._*)"
    if any(p.startswith(".") for p in parts):
        return "hidden file or folder"
    if name in ("thumbs.db", "desktop.ini"):
        return "Windows folder metadata"
    if "licenses" in parts[:-1] or stem.startswith(("license", "licence", "attribution", "readme")):
        return "licence, attribution or readme file"
    if suffix == ".dcm":
        return "DICOM copy (the release's JPEG of the same image is read)"
    if suffix in (".tfrec", ".tfrecord"):
        return "TFRecord shard (the release's JPEGs are read)"
    if MASK_NAMES.search(stem) or any(
        p.endswith(("_lesion", "_roi")) and stem.startswith(p.rsplit("_", 1)[0]) for p in parts[:-1]
    ):
        return "segmentation mask, superpixel or attribute map (by name), not a lesion photograph"
    if name.endswith(UNPACKED):
        return "archive (gdrive downloads are unpacked; unpack a local one yourself)"
    if name.endswith(ARCHIVE_SUFFIXES) or re.search(r"\.(zip|7z|rar)\.\d+$", name):
        return f"archive this product does not unpack ({suffix}): unpack it yourself"
    if any(MASK_FOLDERS & set(re.split(r"[^a-z]+", p)) for p in parts[:-1]):
        return "in a ground-truth or mask folder, not a lesion photograph"
    if suffix in SIDECAR_SUFFIXES:
        return f"documentation, code or data file ({suffix})"
    return None


@dataclass
class Walk:
    """The files under a dataset root, sorted by kind."""

    root: Path
    images: list[Path] = field(default_factory=list)  # anything that may be an image (decoding decides)
    tables: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def rel(self, f: Path) -> str:
        """A path as rejected.csv names it: relative to the root (a table outside it: its name)."""
        return fs_text(f.relative_to(self.root).as_posix() if f.is_relative_to(self.root) else f.name)


def files_under(root: Path, odd: list[Path] | None = None) -> list[Path]:
    """Every regular file below `root`, sorted, following symbolic links to folders (a linked class or image
    folder is read) but never into a folder already visited (a link loop ends there). Entries that are neither
    (FIFOs, sockets, devices, broken links) are appended to `odd` when given."""
    seen, out = set(), []
    for here, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for f in (Path(here) / name for name in files):
            if f.is_file():
                out.append(f)
            elif odd is not None:
                odd.append(f)
    return sorted(out)


def walk(root: Path) -> Walk:
    """Sort every file under `root` into images, tables (CSV, PH2_dataset.txt) and skipped sidecars."""
    w, odd = Walk(root), []
    for f in files_under(root, odd):
        rel = f.relative_to(root)
        if (
            f.suffix.lower() == ".csv"
            and "__macosx" not in (p.lower() for p in rel.parts)
            and not f.name.startswith(".")
        ):
            w.tables.append(f)
        elif f.name.lower() == "ph2_dataset.txt":
            w.tables.append(f)
        elif (why := sidecar_reason(rel)) is not None:
            w.skipped.append((w.rel(f), why))
        else:
            w.images.append(f)
    w.skipped += [
        (w.rel(f), "not a regular file (a FIFO, socket, device or broken symbolic link)") for f in sorted(odd)
    ]
    return w


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    """A parsed CSV: label entries (kind names the release) or side entries (kind 'side'), or ignored."""

    path: Path
    kind: str  # a RELEASE_FORMATS name, 'side' (metadata only) or 'ignored'
    entries: list[Entry] = field(default_factory=list)
    note: str = ""

    @property
    def subset(self) -> str:
        """Official test ground truths become the external test set."""
        return "external_test" if re.search(r"(^|[^a-z])test([^a-z]|$)", self.path.stem.lower()) else "main"


def _flag(v: str) -> bool | None:
    """A ground-truth flag: 0/1 (or 0.0/1.0) -> False/True; anything else None (the row is refused, not guessed)."""
    try:
        f = float(v)
    except ValueError:
        return None
    return {0.0: False, 1.0: True}.get(f)


def _hot(row: dict[str, str], columns: list[str]) -> tuple[list[str], str]:
    """The columns a one-hot row marks, or a problem naming the first value that is not 0 or 1."""
    flags = {c: _flag(row.get(c, "")) for c in columns}
    bad = [c for c, f in flags.items() if f is None]
    if bad:
        return [], f"ground-truth value {bad[0]}='{row.get(bad[0], '')}' is not 0 or 1"
    return [c for c, f in flags.items() if f], ""


def _id(v: str) -> str:
    """A lesion or patient id, '' for the placeholders tables write for a missing one."""
    return "" if v.strip().lower() in PLACEHOLDER_IDS else v.strip()


def _side_fields(row: dict[str, str], skip: set[str]) -> tuple[str, str, dict[str, str]]:
    meta = {META_COLUMNS.get(k, k): v for k, v in row.items() if k not in skip and k not in ("lesion_id", "patient_id")}
    return _id(row.get("lesion_id", "")), _id(row.get("patient_id", "")), meta


def _archive_entry(row: dict[str, str], label_map: dict[str, str]) -> Entry:
    """A legacy archive row (diagnosis, benign_malignant) or a current one (diagnosis_1..5: the first level,
    deepest first, that data.label_map names; diagnosis_1 Benign/Malignant is the stated label)."""
    stated = row.get("benign_malignant", "").strip().lower()
    if "diagnosis" in row:
        diagnosis = canonical(row["diagnosis"]) if row["diagnosis"].strip() else ""
    else:
        stated = stated or row.get("diagnosis_1", "").strip().lower()
        levels = [
            canonical(row[k])
            for k in ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2")
            if row.get(k, "").strip()
        ]
        known = {canonical(k) for k in label_map}
        diagnosis = next((d for d in levels if d in known), levels[0] if levels else "")
    lesion, patient, meta = _side_fields(row, {"isic_id"})
    return Entry(row["isic_id"], diagnosis, stated if stated in LABELS else "", lesion, patient, meta)


def _entries(kind: str, rows: Iterator[dict[str, str]], head: list[str], label_map: dict[str, str]) -> list[Entry]:
    out = []
    for row in rows:
        row = {k: (v or "").strip() for k, v in row.items() if k is not None}
        if kind == "isic_archive":
            out.append(_archive_entry(row, label_map))
        elif kind in ("isic2018", "isic2019"):
            hot, problem = _hot(row, [c for c in head if c.upper() in ONE_HOT])
            if not problem and len(hot) != 1:
                problem = f"one-hot row marks {len(hot)} diagnoses ({', '.join(hot) or 'none'}); it needs exactly one"
            out.append(
                Entry(
                    row["image"],
                    canonical(hot[0]) if len(hot) == 1 else "",
                    "",
                    *_side_fields(row, {"image", *head[1:]}),
                    problem=problem,
                )
            )
        elif kind == "isic2017":
            hot, problem = _hot(row, ["melanoma", "seborrheic_keratosis"])
            if len(hot) == 2:
                problem = "marked both melanoma and seborrheic_keratosis"
            out.append(
                Entry(
                    row["image_id"],
                    hot[0] if hot else "nevus",
                    "",
                    *_side_fields(row, {"image_id", "melanoma", "seborrheic_keratosis"}),
                    problem=problem,
                )
            )
        elif kind == "isic2020":
            stated = row.get("benign_malignant", "").lower()
            if stated not in LABELS and _flag(row.get("target", "")) is not None:
                stated = LABELS[int(_flag(row["target"]))]
            diagnosis = canonical(row["diagnosis"]) if row.get("diagnosis") else ""
            out.append(
                Entry(
                    row["image_name"],
                    diagnosis,
                    stated if stated in LABELS else "",
                    *_side_fields(row, {"image_name", "diagnosis", "benign_malignant", "target"}),
                )
            )
        elif kind == "ham10000":
            out.append(Entry(row["image_id"], canonical(row["dx"]), "", *_side_fields(row, {"image_id", "dx"})))
        else:  # side table
            idc = next(c for c in ID_COLUMNS if c in row)
            out.append(Entry(row[idc], "", "", *_side_fields(row, {idc})))
    return out


def table_kind(path: Path, head: list[str]) -> str:
    """The release a CSV header belongs to ('side' for metadata-only tables, 'ignored' for known extras).

    Raises FetchError naming the file when the header is none of them."""
    h = {c.strip().lower() for c in head}
    name = path.name.lower()
    if name.startswith(("sample_submission", "hmnist_")) or {"image_name_1", "image_name_2"} <= h:
        return "ignored"
    if head and re.fullmatch(r"ISIC_\d+\w*(\.\w+)?", head[0].strip(), re.IGNORECASE):
        if len(head) != 2:
            raise FetchError(
                f"{path}: a header-less table with {len(head)} columns; an ISIC 2016 ground truth has 2 "
                "(ISIC_0000000,benign). An ISIC 2018/2019 one-hot ground truth needs its header row "
                "(image,MEL,NV,BCC,...): restore it from the release's CSV"
            )
        return "isic2016"
    if "isic_id" in h:
        if not {"diagnosis", "benign_malignant", "diagnosis_1"} & h:
            raise FetchError(
                f"{path}: needs a 'diagnosis', 'diagnosis_1' or 'benign_malignant' column (has: {', '.join(head)})"
            )
        return "isic_archive"
    if "image" in h and {"mel", "nv"} <= h:
        return "isic2019" if {"scc", "unk", "ak"} & h else "isic2018"
    if {"image_id", "melanoma", "seborrheic_keratosis"} <= h:
        return "isic2017"
    if {"image_id", "dx"} <= h:
        return "ham10000"
    if "image_name" in h and {"target", "benign_malignant"} & h:
        return "isic2020"
    if set(ID_COLUMNS) & h:
        return "side"
    raise FetchError(
        f"{path}: not a table this product reads (header: {', '.join(head[:8])}); expected an ISIC 2016-2020, "
        "HAM10000 or ISIC Archive ground truth / metadata CSV (see docs/data.md), or move "
        "the file out of the dataset folder"
    )


def read_table(path: Path, label_map: dict[str, str]) -> Table:
    """Parse one CSV or PH2_dataset.txt into a Table; FetchError naming the file when it cannot be parsed."""
    try:
        return _read_table(path, label_map)
    except (csv.Error, UnicodeError) as e:
        raise FetchError(f"{path}: not a readable CSV ({e}); save it again as comma-separated UTF-8") from None


TABLE_MAX_BYTES = 2 << 30  # a label table: the whole ISIC Archive's metadata export is a few hundred MB


def csv_dialect(path: Path) -> tuple[str, str]:
    """(encoding, delimiter) of a user's CSV from its first 4 kB: UTF-8 with or without BOM, or Excel's UTF-16
    "Unicode text"; ',' or ';' (Excel in many locales) or tab, whichever the first non-blank line has.
    Raises OSError when the file cannot be read, FileRefused when it is not a regular file or over
    TABLE_MAX_BYTES."""
    regular_file(path, "label table", TABLE_MAX_BYTES)
    with open(path, "rb") as fh:
        start = fh.read(4096)
    encoding = "utf-16" if start.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    first = next((ln for ln in start.decode(encoding, errors="replace").splitlines() if ln.strip()), "")
    return encoding, next((d for d in (",", ";", "\t") if d in first), ",")


def _read_table(path: Path, label_map: dict[str, str]) -> Table:
    if path.name.lower() == "ph2_dataset.txt":
        return read_ph2(path)
    encoding, delimiter = csv_dialect(path)
    with open(path, newline="", encoding=encoding, errors="replace") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        head = next((r for r in reader if any(c.strip() for c in r)), None)
        if head is None:
            raise FetchError(f"{path} is empty")
        kind = table_kind(path, head)
        if kind == "ignored":
            return Table(path, kind, note="not a label table (a submission template, pixel table or duplicate list)")
        if kind == "isic2016":
            entries = []
            for r in [head, *reader]:
                if not any(c.strip() for c in r):
                    continue
                v = r[1].strip() if len(r) > 1 else ""
                try:  # 2016 ground truth: 0.0 benign, 1.0 malignant
                    v = {0.0: "benign", 1.0: "malignant"}.get(float(v), v)
                except ValueError:
                    pass
                entries.append(Entry(r[0].strip(), canonical(v)))
            return Table(path, kind, entries)
        head = [c.strip() for c in head]
        lowered = [c.lower() if c.upper() not in ONE_HOT else c for c in head]
        rows, short = [], []
        for r in reader:
            if any(c.strip() for c in r):
                (rows if len(r) == len(head) else short).append(r)
        table = Table(path, kind, _entries(kind, (dict(zip(lowered, r)) for r in rows), lowered, label_map))
        table.entries += [
            Entry(r[0].strip(), problem=f"{path.name} row has {len(r)} cells for {len(head)} columns")
            for r in short
            if r and kind != "side"
        ]
        return table


def read_ph2(path: Path) -> Table:
    """PH2_dataset.txt: '||'-separated rows; 'Clinical Diagnosis' 0/1/2 = common nevus, atypical nevus, melanoma."""
    head, entries = None, []
    for line in read_small(path, "label table", TABLE_MAX_BYTES).decode("utf-8", "replace").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("||")]
        if head is None and "Name" in cells and "Clinical Diagnosis" in cells:
            head = cells
        elif head and cells and re.fullmatch(r"IMD\d+", cells[0]):
            code = dict(zip(head, cells)).get("Clinical Diagnosis", "")
            problem = (
                ""
                if len(cells) == len(head) and code in PH2_CLINICAL
                else (
                    f"PH2_dataset.txt row has {len(cells)} cells for {len(head)} columns"
                    if len(cells) != len(head)
                    else f"clinical diagnosis code '{code}' is not 0, 1 or 2"
                )
            )
            entries.append(Entry(cells[0], PH2_CLINICAL.get(code, ""), problem=problem))
    if head is None:
        raise FetchError(
            f"{path}: no header row with 'Name' and 'Clinical Diagnosis'; is this PH2_dataset.txt "
            "as shipped in the PH2 zip?"
        )
    return Table(path, "ph2", entries)


# ---------------------------------------------------------------- offers


def _same_bytes(a: Path, b: Path) -> bool:
    return (
        a.stat().st_size == b.stat().st_size
        and hashlib.md5(a.read_bytes()).digest() == hashlib.md5(b.read_bytes()).digest()
    )


def _by_stem(w: Walk, offer: Offer) -> dict[str, Path]:
    """Image files by image_key(stem); byte-identical copies (e.g. HAM10000's upper- and lower-case folders on
    Kaggle) are skipped, different files sharing a stem are rejects."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in w.images:
        if f.suffix.lower() in IMAGE_SUFFIXES:
            groups[image_key(f.stem)].append(f)
        else:
            offer.rejects.append((w.rel(f), f"not an image file ({f.suffix or 'no suffix'})"))
    out = {}
    for stem, files in groups.items():
        out[stem] = files[0]
        for extra in files[1:]:
            if _same_bytes(files[0], extra):
                offer.skipped.append((w.rel(extra), "byte-identical copy of an image read from another folder"))
            else:
                offer.rejects.append((w.rel(extra), f"a second, different file named {stem}.*; kept {w.rel(files[0])}"))
    return out


def image_key(image_id: str) -> str:
    """How table ids and file stems are matched: case-insensitive, an image suffix in the id ignored."""
    v = image_id.strip()
    if Path(v).suffix.lower() in IMAGE_SUFFIXES:
        v = Path(v).stem
    return v.lower()


def _merge_side(tables: list[Table]) -> dict[str, Entry]:
    """Side-table fields per image key, merged over every side table (the first non-empty value of each field)."""
    side: dict[str, Entry] = {}
    for t in tables:
        for e in t.entries if t.kind == "side" else []:
            m = side.setdefault(image_key(e.image), Entry(e.image))
            m.lesion_id, m.patient_id = m.lesion_id or e.lesion_id, m.patient_id or e.patient_id
            m.metadata.update({k: v for k, v in e.metadata.items() if v and not m.metadata.get(k)})
    return side


def _listings(
    labelled: list[Table], label_map: dict[str, str]
) -> dict[str, list[tuple[Entry, Table, str | None, str]]]:
    """Every label-table row by image key: (entry, table, label or None, reason)."""
    out: dict[str, list] = defaultdict(list)
    for t in labelled:
        for e in t.entries:
            out[image_key(e.image)].append((e, t, *label_entry(e, label_map)))
    return out


def from_tables(w: Walk, tables: list[Table], label_map: dict[str, str], source: str) -> Offer:
    """Images named by the label tables' ids, labelled through data.label_map, joined with the side tables.

    An image listed by two tables with one label is read once (in the external test set if either table is an
    official test ground truth); listed with two labels it is rejected, naming both tables."""
    offer = Offer(skipped=list(w.skipped))
    labelled = [t for t in tables if t.kind in RELEASE_FORMATS]
    offer.format = "+".join(sorted({t.kind for t in labelled}))
    side, files = _merge_side(tables), _by_stem(w, offer)
    listings = _listings(labelled, label_map)
    for key, found in listings.items():
        e, t, label, why = found[0]
        f = files.get(key)
        labels = {lab for _, _, lab, _ in found}
        if len(labels) > 1:
            label, why = (
                None,
                "labelled " + " but ".join(f"{lab or 'refused'} in {tt.path.name}" for _, tt, lab, _ in found),
            )
        offer.diagnoses[(e.diagnosis or e.stated, label or ("reject" if "excluded" in why else "unknown"))] += 1
        if f is None:
            offer.rejects.append((e.image, f"listed in {t.path.name} but no image file with that id found"))
        elif label is None:
            offer.refuse(w.rel(f), why)
        else:
            entries = [x for x, _, _, _ in found] + [side.get(key, Entry(e.image))]  # every listing's fields
            subset = "external_test" if any(tt.subset == "external_test" for _, tt, _, _ in found) else "main"
            metadata: dict[str, str] = {}
            for x in entries:
                metadata.update({k: v for k, v in x.metadata.items() if v and not metadata.get(k)})
            offer.candidates.append(
                Candidate(
                    id=safe_id(f.stem),
                    label=label,
                    source=source,
                    origin=w.rel(f),
                    file=f,
                    subset=subset,
                    lesion_id=next((x.lesion_id for x in entries if x.lesion_id), ""),
                    patient_id=next((x.patient_id for x in entries if x.patient_id), ""),
                    diagnosis=e.diagnosis or e.stated,
                    metadata=metadata,
                )
            )
    for t in tables:  # matched: label rows with an image file, side rows with a labelled image
        is_label = t.kind in RELEASE_FORMATS
        against = files if is_label else listings
        offer.tables.append(
            {
                "file": w.rel(t.path),
                "kind": t.kind,
                "subset": t.subset if is_label else "",
                "rows": len(t.entries),
                "matched": sum(image_key(e.image) in against for e in t.entries),
                "note": t.note,
            }
        )
    _unlisted(w, files, set(listings), offer, ", ".join(t.path.name for t in labelled))
    if not offer.candidates:
        names = ", ".join(t.path.name for t in labelled)
        raise FetchError(
            f"{w.root}: the {offer.format} tables ({names}) labelled no usable image; "
            + (
                f"most common reasons: {top_reasons(offer.rejects + offer.excluded)}"
                if listings
                else "they have no rows"
            )
        )
    return offer


def _unlisted(w: Walk, files: dict[str, Path], listed: set[str], offer: Offer, tables: str) -> None:
    """Images no label table names: a folder with none listed is an unlabelled part of the release (e.g. an
    official test set whose ground truth was not downloaded): skipped; one partly listed: rejects."""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for f in files.values():
        by_folder[f.parent].append(f)
    for _folder, fs in sorted(by_folder.items()):
        hit = any(image_key(f.stem) in listed for f in fs)
        for f in sorted(fs):
            if image_key(f.stem) in listed:
                continue
            if hit:
                offer.rejects.append((w.rel(f), f"not listed in {tables}"))
            else:
                offer.skipped.append((w.rel(f), "unlabelled: no image of its folder is in a ground-truth table"))


def _class_folders(root: Path) -> list[Path]:
    """Subfolders that may name a class (not __MACOSX, not hidden)."""
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name.lower() != "__macosx"
    )


def from_class_folders(w: Walk, root: Path, label_map: dict[str, str], subset: str, source: str) -> Offer:
    """root/<class>/**/file: each subfolder must name a class (directly or via label_map)."""
    folders = _class_folders(root)
    if not folders:
        raise FetchError(
            f"{root} has no class subfolders; expected benign/ and malignant/ (or folders named by data.label_map)"
        )
    offer = Offer(format="folders")
    for folder in folders:
        label, why = map_label(folder.name, label_map)
        if label is None and "excluded" not in why:
            raise FetchError(f"{folder}: folder name is not a class: {why}")
        files = [f for f in w.images if f.is_relative_to(folder)]
        if not files:
            raise FetchError(f"class folder {folder} holds no image; put its images there or remove the folder")
        diagnosis = canonical(folder.name)
        offer.diagnoses[(diagnosis, label or "reject")] += len(files)
        for f in files:
            rel = w.rel(f)
            if label is None:
                offer.refuse(rel, why)
                continue
            offer.candidates.append(
                Candidate(
                    id=safe_id(f.relative_to(w.root).with_suffix("").as_posix().replace("/", "__")),
                    label=label,
                    source=source,
                    origin=rel,
                    file=f,
                    subset=subset,
                    diagnosis=diagnosis,
                    metadata={"folder": folder.name},
                )
            )
    missing = [c for c in LABELS if not any(c == x.label for x in offer.candidates)]
    if missing:
        raise FetchError(
            f"{root}: no {' or '.join(missing)} images; each class needs at least one "
            f"(found folders: {', '.join(p.name for p in folders)})"
        )
    return offer


def read_folder(root: Path, label_map: dict[str, str], fmt: str = "auto", source: str = "local") -> Offer:
    """Detect what `root` holds (or read it as `fmt`, one of FORMATS) and offer its images.

    Raises FetchError for a missing folder, an unrecognised table, a table of another release than `fmt`, or
    a layout that labels nothing.
    """
    if not root.is_dir():
        raise FetchError(
            f"data.local.path: folder {root} does not exist; point it at a folder with "
            "benign/ and malignant/ subfolders, or a release as downloaded (see docs/data.md)"
        )
    canonical_map(label_map)
    w = walk(root)
    tables = [] if fmt == "folders" else [read_table(t, label_map) for t in w.tables]
    if fmt == "folders":
        w.skipped += [(w.rel(t), "table not read: data.format is folders") for t in w.tables]
    labelled = {t.kind for t in tables if t.kind in RELEASE_FORMATS}
    if fmt not in ("auto", "folders"):
        other = sorted(labelled - {fmt})
        if other or not labelled:
            raise FetchError(
                f"data.format is {fmt} but {root} holds "
                + (f"{', '.join(other)} tables" if other else "no such ground-truth table")
                + "; set data.format: auto, or point data.local.path at the release's folder"
            )
    if labelled:
        return from_tables(w, tables, label_map, source)
    w.skipped += [(w.rel(t.path), f"{t.kind} table without labels: {t.note or 'metadata only'}") for t in tables]
    try:
        return _folders(w, root, label_map, source)
    except FetchError as e:
        unlabelled = [t.path.name for t in tables if t.kind == "side"]
        if not unlabelled:
            raise
        raise FetchError(
            f"{e}. Note: {', '.join(unlabelled)} has image ids but no label column this product "
            "reads (see docs/data.md, 'Public releases, as downloaded')"
        ) from None


PARENTS = {"train": "main", "val": "main", "valid": "main", "validation": "main", "test": "external_test"}


def _folders(w: Walk, root: Path, label_map: dict[str, str], source: str) -> Offer:
    """Class folders, directly or under train/ (+ val/ or valid/, joining the pool) and test/ (external test)."""
    parts = {p.name.lower(): p for p in _class_folders(root)}
    if parts and set(parts) <= set(PARENTS):
        if not {"train", "val", "valid", "validation"} & set(parts):
            raise FetchError(f"{root} has test/ but no train/ folder")
        offer = Offer(skipped=list(w.skipped), format="folders")
        for name, folder in sorted(parts.items()):
            offer.extend(from_class_folders(w, folder, label_map, PARENTS[name], source))
        offer.format = "folders"
        return offer
    offer = from_class_folders(w, root, label_map, "main", source)
    offer.skipped = list(w.skipped)
    return offer


def read_csv_source(images: Path, csv_path: Path, label_map: dict[str, str], source: str) -> Offer:
    """data.source isic_csv: the images under `images` labelled by one named table."""
    if not images.is_dir():
        raise FetchError(f"data.isic_csv.images: folder {images} does not exist")
    if not csv_path.is_file():
        raise FetchError(
            f"data.isic_csv.csv: {csv_path} "
            + ("is a folder, not a CSV file" if csv_path.is_dir() else "does not exist")
        )
    canonical_map(label_map)
    w = walk(images)
    w.tables = [t for t in w.tables if t.resolve() != csv_path.resolve()]
    w.skipped += [(w.rel(t), "table not read: data.isic_csv.csv names the label table") for t in w.tables]
    table = read_table(csv_path, label_map)
    if table.kind not in RELEASE_FORMATS:
        raise FetchError(f"data.isic_csv.csv: {csv_path} holds no labels ({table.kind} table)")
    return from_tables(w, [table], label_map, source)
