"""The fetch stage's sources and failure modes (melanoma.data.fetch)."""

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma.data import fetch
from melanoma.data.fetch import FetchError, collect, from_demo, from_gdrive, safe_extract, write_raw
from melanoma.data.releases import read_folder
from melanoma.io import read_csv
from melanoma.params import load_params
from tests.conftest import ROOT, jpeg_bytes, lesion_image, make_class_folders, mounted

DEMO = {"seed": 3, "n_benign": 12, "n_malignant": 6, "image_size": 48, "label_noise": 0.2, "repeat_fraction": 0.2}


def run(offer, out, max_reject=0.05):
    return write_raw(offer, out, max_side=1024, max_reject_fraction=max_reject, workers=1)


def labels(out: Path) -> Counter:
    return Counter((r["subset"], r["label"]) for r in read_csv(out / "manifest.csv"))


# ------------------------------------------------------------------ demo


def test_demo_counts_labels_and_files(tmp_path):
    run(from_demo(DEMO), tmp_path / "raw")
    rows = read_csv(tmp_path / "raw" / "manifest.csv")
    assert labels(tmp_path / "raw") == {("main", "benign"): 12, ("main", "malignant"): 6}
    swapped = [r for r in rows if r["meta_label_swapped"] == "true"]
    assert len(swapped) == 2 * round(0.2 * 6)  # the same number swapped each way, counts unchanged
    assert all(r["meta_drawn_as"] != r["label"] for r in swapped)
    for r in rows:
        im = Image.open(tmp_path / "raw" / r["path"])
        assert im.size == (48, 48) and im.mode == "RGB"
    assert np.load(tmp_path / "raw" / "thumbnails.npy").shape == (18, 16, 16)
    assert any(n > 1 for n in Counter(r["lesion_id"] for r in rows).values())  # repeat photographs exist


def test_demo_is_byte_identical_per_seed_and_differs_across_seeds(tmp_path):
    for name in ("a", "b"):
        run(from_demo(DEMO), tmp_path / name)
    run(from_demo({**DEMO, "seed": 4}), tmp_path / "c")
    for f in ("manifest.csv", "thumbnails.npy", "rejected.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "manifest.csv").read_bytes() != (tmp_path / "c" / "manifest.csv").read_bytes()


def test_demo_malignant_lesions_are_larger_on_average():
    """The ABCD rule's D: malignant lesions cover more of the field than benign ones (over 60 images)."""
    from melanoma.data import demo

    area = {"benign": [], "malignant": []}
    for s in demo.plan(0, 30, 30, 64):
        lum = demo.render(s)[0].astype(float).mean(axis=2)
        skin = np.median(np.concatenate([lum[8, 8:56], lum[55, 8:56]]))
        area[s.drawn_as].append((lum < 0.8 * skin).mean())
    assert np.mean(area["malignant"]) > 1.15 * np.mean(area["benign"])


# ------------------------------------------------------------------ local folders


def test_class_folders_with_odd_files(tmp_path, label_map):
    root = make_class_folders(tmp_path / "src", n_benign=20, n_malignant=20)
    (root / "benign" / "notes.txt").write_text("not an image")
    (root / "malignant" / "empty.jpg").write_bytes(b"")
    (root / "benign" / ".DS_Store").write_bytes(b"\0")  # hidden files are not images of the collection
    lesion_image(7).convert("RGBA").save(root / "benign" / "alpha.png")
    lesion_image(8).convert("CMYK").save(root / "malignant" / "cmyk.jpg")
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(root / "benign" / "deep.png")
    lesion_image(9, (6000, 4000)).save(root / "malignant" / "huge.jpg", quality=40)
    s = run(read_folder(root, label_map), tmp_path / "raw", max_reject=0.1)
    assert labels(tmp_path / "raw") == {("main", "benign"): 22, ("main", "malignant"): 22}
    rejected = {r["file"]: r["reason"] for r in read_csv(tmp_path / "raw" / "rejected.csv")}
    assert set(rejected) == {"malignant/empty.jpg"}
    skipped = {r["file"]: r["reason"] for r in read_csv(tmp_path / "raw" / "skipped.csv")}
    assert skipped == {
        "benign/notes.txt": "documentation, code or data file (.txt)",
        "benign/.DS_Store": "hidden file or folder",
    }  # counted, listed, not held against the data
    assert s.rejected == 1 and s.total == 45 and s.skipped == 2
    rows = {r["id"]: r for r in read_csv(tmp_path / "raw" / "manifest.csv")}
    assert rows["malignant__huge"]["orig_width"] == "6000" and rows["malignant__huge"]["width"] == "1024"
    assert rows["benign__alpha"]["path"].endswith(".jpg")  # converted (alpha over white), stored as JPEG


def test_too_many_rejects_fails_and_writes_nothing(tmp_path, label_map):
    root = make_class_folders(tmp_path / "src", 3, 3)
    for i in range(2):
        (root / "benign" / f"bad{i}.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(FetchError, match=r"2 of 8 files rejected \(25.0% > data.max_reject_fraction=0.05\)"):
        run(read_folder(root, label_map), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert not list(tmp_path.glob(".raw*"))  # no temp folder left behind


def test_empty_or_missing_class_is_a_clear_error(tmp_path, label_map):
    root = make_class_folders(tmp_path / "src", 2, 2)
    shutil.rmtree(root / "malignant")
    (root / "malignant").mkdir()
    with pytest.raises(FetchError, match=r"class folder .*malignant holds no image"):
        read_folder(root, label_map)
    shutil.rmtree(root / "malignant")
    with pytest.raises(FetchError, match="no malignant images"):
        read_folder(root, label_map)
    (root / "unsure").mkdir()
    with pytest.raises(FetchError, match="unsure: folder name is not a class"):
        read_folder(root, label_map)
    with pytest.raises(FetchError, match="does not exist"):
        read_folder(tmp_path / "nowhere", label_map)


def test_folder_names_mapped_through_label_map(tmp_path, label_map):
    root = tmp_path / "src"
    for name, seed in (("nevus", 0), ("melanoma", 10), ("seborrheic_keratosis", 20)):
        (root / name).mkdir(parents=True)
        lesion_image(seed).save(root / name / "a.jpg")
    offer = read_folder(root, label_map)
    assert Counter(c.label for c in offer.candidates) == {"benign": 2, "malignant": 1}


def test_train_test_parents_make_external_test(tmp_path, label_map):
    make_class_folders(tmp_path / "src" / "train", 4, 3, seed=0)
    make_class_folders(tmp_path / "src" / "test", 2, 2, seed=500)
    run(read_folder(tmp_path / "src", label_map), tmp_path / "raw")
    assert labels(tmp_path / "raw") == {
        ("main", "benign"): 4,
        ("main", "malignant"): 3,
        ("external_test", "benign"): 2,
        ("external_test", "malignant"): 2,
    }
    rows = read_csv(tmp_path / "raw" / "manifest.csv")
    assert {r["path"].split("/")[0] for r in rows if r["subset"] == "external_test"} == {"external_test"}


def test_shared_folder_layout(tmp_path, isic_sample, label_map):
    run(read_folder(isic_sample / "folder", label_map), tmp_path / "raw")
    assert labels(tmp_path / "raw") == {("main", "benign"): 150, ("main", "malignant"): 150}
    ids = [r["id"] for r in read_csv(tmp_path / "raw" / "manifest.csv")]
    assert "benign__train_1129" in ids and "malignant__train_1129" in ids  # same file name, two images


def test_shared_archive_metadata(tmp_path, isic_sample, label_map):
    run(read_folder(isic_sample / "archive", label_map), tmp_path / "raw")
    with open(isic_sample / "archive" / "metadata.csv") as fh:
        expected = Counter(("main", label_map[r["diagnosis"]]) for r in csv.DictReader(fh))
    assert labels(tmp_path / "raw") == expected
    rows = read_csv(tmp_path / "raw" / "manifest.csv")
    assert all(max(int(r["width"]), int(r["height"])) <= 1024 for r in rows)
    assert {"meta_diagnosis", "meta_sex"} <= set(rows[0])


# ------------------------------------------------------------------ CSV layouts


def archive_fixture(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    (root / "images").mkdir(parents=True)
    with open(root / "metadata.csv", "w") as fh:
        fh.write("isic_id,benign_malignant,diagnosis,lesion_id\n")
        for i, (iid, bm, diag) in enumerate(rows):
            fh.write(f"{iid},{bm},{diag},IL_{i // 2}\n")
            lesion_image(i).save(root / "images" / f"{iid}.jpg")
    return root


def test_unknown_diagnosis_is_a_counted_reject(tmp_path, label_map):
    root = archive_fixture(
        tmp_path / "arc",
        [
            ("ISIC_1", "benign", "nevus"),
            ("ISIC_2", "malignant", "melanoma"),
            ("ISIC_3", "benign", "dermatofibroma"),
            ("ISIC_4", "benign", "melanoma"),
            ("ISIC_5", "", ""),
        ],
    )
    lesion_image(99).save(root / "images" / "ISIC_9.jpg")  # not in the CSV
    s = run(read_folder(root, label_map), tmp_path / "raw", max_reject=0.9)
    rejected = {r["file"]: r["reason"] for r in read_csv(tmp_path / "raw" / "rejected.csv")}
    assert "unknown diagnosis 'dermatofibroma'" in rejected["images/ISIC_3.jpg"]
    assert "conflicting labels" in rejected["images/ISIC_4.jpg"]
    assert "no diagnosis" in rejected["images/ISIC_5.jpg"]
    assert "not listed in metadata.csv" in rejected["images/ISIC_9.jpg"]
    assert s.rejected == 4
    rows = read_csv(tmp_path / "raw" / "manifest.csv")
    assert [(r["id"], r["label"], r["lesion_id"]) for r in rows] == [
        ("ISIC_1", "benign", "IL_0"),
        ("ISIC_2", "malignant", "IL_0"),
    ]


def test_isic2016_ground_truth_both_value_styles(tmp_path, label_map):
    root = tmp_path / "gt"
    (root / "ISBI2016_Training_Data").mkdir(parents=True)
    lines = ["ISIC_0000000,benign", "ISIC_0000001,malignant", "ISIC_0000002,0.0", "ISIC_0000003,1.0"]
    for i, line in enumerate(lines):
        lesion_image(i).save(root / "ISBI2016_Training_Data" / f"{line.split(',')[0]}.jpg")
    (root / "ISBI2016_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    data = {
        "source": "isic_csv",
        "label_map": label_map,
        "isic_csv": {
            "images": str(root / "ISBI2016_Training_Data"),
            "csv": str(root / "ISBI2016_Training_GroundTruth.csv"),
        },
    }
    offer = collect(data)
    assert [(c.id, c.label) for c in offer.candidates] == [
        ("ISIC_0000000", "benign"),
        ("ISIC_0000001", "malignant"),
        ("ISIC_0000002", "benign"),
        ("ISIC_0000003", "malignant"),
    ]
    assert read_folder(root, label_map).candidates[3].label == "malignant"  # auto-detected as local too


def test_not_a_label_csv(tmp_path, label_map):
    (tmp_path / "labels.csv").write_text("name,value\na,b\n")
    with pytest.raises(FetchError, match="labels.csv: not a table this product reads"):
        read_folder(tmp_path, label_map)


# ------------------------------------------------------------------ gdrive


def zip_of(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder.parent).as_posix())
    return out


def test_gdrive_download_with_zip_becomes_manifest(tmp_path, label_map):
    src = make_class_folders(tmp_path / "made" / "melanoma_dataset", 3, 2)

    def fake_download(folder_id: str, dest: Path) -> None:  # what gdown leaves: the folder's files
        assert folder_id == "FOLDER"
        zip_of(src, dest / "melanoma_dataset.zip")

    cfg = {"folder_id": "FOLDER", "download_dir": str(tmp_path / "dl")}
    offer = from_gdrive(cfg, label_map, download=fake_download)
    run(offer, tmp_path / "raw")
    assert labels(tmp_path / "raw") == {("main", "benign"): 3, ("main", "malignant"): 2}
    assert {r["source"] for r in read_csv(tmp_path / "raw" / "manifest.csv")} == {"gdrive"}
    # a second run reuses the extraction (marker file) and gives the same offer
    again = from_gdrive(cfg, label_map, download=lambda i, d: None)
    assert [c.id for c in again.candidates] == [c.id for c in offer.candidates]


def test_zip_slip_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("data/benign/ok.jpg", jpeg_bytes(lesion_image(0)))
        z.writestr("../escaped.txt", "gotcha")
    with pytest.raises(FetchError, match=r"refusing entry '\.\./escaped\.txt'"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()

    tar = tmp_path / "evil.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(FetchError, match="refusing entry"):
        safe_extract(tar, tmp_path / "out2")


def test_gdrive_zip_slip_inside_download_refused_and_nothing_extracted(tmp_path, label_map):
    def fake_download(folder_id, dest):
        with zipfile.ZipFile(dest / "data.zip", "w") as z:
            z.writestr("../../outside.txt", "x")

    with pytest.raises(FetchError, match="refusing entry"):
        from_gdrive({"folder_id": "F", "download_dir": str(tmp_path / "dl")}, label_map, download=fake_download)
    assert not (tmp_path / "dl" / "data").exists()
    assert not (tmp_path / "outside.txt").exists()


def test_gdrive_offline_and_refused_messages(tmp_path, label_map, monkeypatch):
    import gdown
    import requests

    def no_network(**kw):
        raise requests.exceptions.ConnectionError("Failed to resolve 'drive.google.com'")

    monkeypatch.setattr(gdown, "download_folder", no_network)
    with pytest.raises(FetchError) as e:
        fetch.gdown_folder("ID", tmp_path)
    msg = str(e.value)
    assert msg.startswith("gdrive: no network") and "data.source=local" in msg and "\n" not in msg

    def refused(**kw):
        raise gdown.exceptions.FileURLRetrievalError("Failed to retrieve folder contents\nmore detail")

    monkeypatch.setattr(gdown, "download_folder", refused)
    with pytest.raises(
        FetchError, match=r"^gdrive: Google Drive refused folder ID .*Failed to retrieve folder contents; "
    ):
        fetch.gdown_folder("ID", tmp_path)

    def listing_refused(**kw):  # gdown's folder listing raises the base class itself
        raise gdown.exceptions.DownloadError("Failed to download the following files:\nx.jpg")

    monkeypatch.setattr(gdown, "download_folder", listing_refused)
    with pytest.raises(FetchError, match=r"^gdrive: Google Drive refused folder ID .*Failed to download the following"):
        fetch.gdown_folder("ID", tmp_path)

    def timeout(**kw):
        raise requests.exceptions.ReadTimeout("read timed out")

    monkeypatch.setattr(gdown, "download_folder", timeout)
    with pytest.raises(
        FetchError, match=r"^gdrive: the download of folder ID broke off \(ReadTimeout\); run the stage"
    ):
        fetch.gdown_folder("ID", tmp_path)


def test_default_params_source_is_demo():
    assert load_params(ROOT / "params.yaml")["data"]["source"] == "demo"


def test_atomic_dir_replaces_whole_output_and_clears_killed_runs(tmp_path):
    from melanoma.io import atomic_dir

    out = tmp_path / "raw"
    (tmp_path / ".raw.tmp-99999").mkdir()  # what a SIGKILLed run leaves
    (tmp_path / ".raw.old-backup").mkdir()  # a user's own folder of a similar name: kept
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing visible until the stage succeeds
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".raw.old-backup", "raw"]


WRITER = """
import sys, time
from pathlib import Path
from melanoma.io import atomic_dir
out = Path(sys.argv[1])
with atomic_dir(out) as tmp:
    (tmp / "part.txt").write_text("written by " + sys.argv[2])
    Path(sys.argv[3]).touch()  # now inside the output's lock, writing
    while Path(sys.argv[3]).exists():
        time.sleep(0.01)
    (tmp / "done.txt").write_text("complete")
"""


def _writer(tmp_path, out, who):
    flag = tmp_path / f"writing-{who}"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(out), who, str(flag)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not flag.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return p, flag


def test_atomic_dir_never_sweeps_a_live_writers_folder(tmp_path):
    """Two real processes write one output: the second is refused at once, naming the first's pid, and the
    first's temp folder survives; once the first is SIGKILLed its orphan is swept by the next writer, and the
    output is always a whole one."""
    out = tmp_path / "raw"
    first, flag = _writer(tmp_path, out, "first")
    assert flag.exists(), first.stderr.read()
    second = subprocess.run(
        [sys.executable, "-c", WRITER, str(out), "second", str(tmp_path / "never")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"raw is being written by another process (pid {first.pid})" in second.stderr
    assert f"kill {first.pid}" in second.stderr
    assert (tmp_path / f".raw.tmp-{first.pid}" / "part.txt").read_text() == "written by first"  # not swept
    os.kill(first.pid, signal.SIGKILL)  # dies inside atomic_dir: its temp folder and lock file stay behind
    first.wait()
    assert not out.exists() and (tmp_path / f".raw.tmp-{first.pid}").is_dir()
    third, flag3 = _writer(tmp_path, out, "third")
    assert flag3.exists(), third.stderr.read()
    assert not (tmp_path / f".raw.tmp-{first.pid}").exists()  # the dead writer's orphan went
    flag3.unlink()
    assert third.wait(timeout=60) == 0, third.stderr.read()
    assert sorted(p.name for p in out.iterdir()) == ["done.txt", "part.txt"]
    assert (out / "part.txt").read_text() == "written by third"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")) == []  # lock file gone too


def test_atomic_dir_never_renames_a_folder_it_did_not_fill(tmp_path):
    from melanoma.io import OutputBusy, atomic_dir

    out = tmp_path / "raw"
    out.mkdir()
    (out / "kept.txt").write_text("previous output")
    with pytest.raises(OutputBusy, match=r"raw: its temporary folder .*\.raw\.tmp-\d+ was removed or replaced"):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("mine")
            shutil.rmtree(tmp)  # someone else's sweep ...
            tmp.mkdir()  # ... and recreation
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]


def test_zip_bomb_refused_before_anything_is_written(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("benign/zeros.jpg", b"\0" * 200_000_000)  # 200 MB of zeros: about 200 kB packed
    with pytest.raises(
        FetchError,
        match=r"bomb.zip: unpacking would write 0.2 GB from 0.2 MB downloaded \(counting "
        r"archives inside archives\), over 100x: a zip bomb\?",
    ):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nested_archives_share_one_budget_and_a_failed_unpack_leaves_nothing(tmp_path):
    """A small zip of 40 zips that each declare 49 MB (each under the 100x check's 50 MB floor alone) wrote 688 MB
    before failing. The budget now counts every level together: refused after at most one inner archive, in a
    100 MB file system it never fills, and nothing extracted is left behind."""
    with mounted(tmp_path / "disk", "size=100m") as disk:
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w", compression=zipfile.ZIP_BZIP2) as z:
            z.writestr("benign/zeros.jpg", b"\0" * 49_000_000)
        outer = disk / "drive.zip"
        with zipfile.ZipFile(outer, "w") as z:
            for i in range(40):
                z.writestr(f"part{i:02d}.zip", inner.getvalue())
        assert outer.stat().st_size < 100_000
        with pytest.raises(
            FetchError,
            match=r"unpacking would write 0\.1 GB from 0\.0 MB downloaded \(counting "
            r"archives inside archives\), over 100x: a zip bomb\?",
        ):
            fetch.unpack_archives(disk)
        assert sorted(p.name for p in disk.iterdir()) == ["drive.zip"]  # every level removed, the download kept


def test_archives_of_many_empty_entries_are_refused(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(1_500):
            z.writestr(f"benign/{i}.jpg", b"")
    with pytest.raises(FetchError, match=r"empty.zip: the archives hold 1,500 empty files \(limit 1,000\) \(counting"):
        fetch.unpack_archives(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.zip"]


def test_pool_workers_end_when_the_stage_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from melanoma.data.fetch import worker_pool\n"
        "def pid(_):\n"
        "    time.sleep(0.2)\n"
        "    return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(2)\n"
        "    print(' '.join(map(str, sorted(set(pool.map(pid, range(8)))))), flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert pids and all(Path(f"/proc/{p}").exists() for p in pids)
    proc.kill()
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in pids)


@pytest.mark.parametrize("kind", ["file", "link to a folder", "dangling link"])
def test_atomic_dir_replaces_a_file_or_link_never_what_it_points_to(tmp_path, kind):
    """publish --force over a user's file, or an output that is a symlink: the entry itself is replaced, the
    folder a link points to is untouched, nothing is left beside it."""
    from melanoma.io import atomic_dir

    target, out = tmp_path / "users", tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("the user's")
    if kind == "file":
        out.write_text("a user's file")
    else:
        out.symlink_to(target if kind == "link to a folder" else tmp_path / "nowhere")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert out.is_dir() and not out.is_symlink() and [p.name for p in out.iterdir()] == ["new.txt"]
    assert (target / "keep.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "users"]


def test_folder_entries_count_and_an_archive_is_read_as_its_name_says(tmp_path):
    """250,000 folder entries bypassed the entry cap; a tar whose last member is an uncompressed zip was unpacked
    as that zip, dropping the images."""
    from melanoma.data.fetch import MAX_ENTRIES

    many = tmp_path / "many"
    many.mkdir()
    with zipfile.ZipFile(many / "dirs.zip", "w") as z:
        for i in range(MAX_ENTRIES + 1):
            z.writestr(zipfile.ZipInfo(f"d{i}/"), b"")
    with pytest.raises(FetchError, match=r"the archives hold 200,001 entries \(limit 200,000\)"):
        fetch.unpack_archives(many)
    assert sorted(p.name for p in many.iterdir()) == ["dirs.zip"]
    poly = tmp_path / "poly"
    poly.mkdir()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("readme.txt", "extras")
    with tarfile.open(poly / "images.tar", "w") as t:
        for name, data in (("benign/img1.jpg", jpeg_bytes(lesion_image(1))), ("extras.zip", inner.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    assert zipfile.is_zipfile(poly / "images.tar")  # the trap: it is a valid zip too
    fetch.unpack_archives(poly, levels=1)
    assert (poly / "images/benign/img1.jpg").is_file() and (poly / "images/extras.zip").is_file()
