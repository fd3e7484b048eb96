"""Public dermoscopy releases as downloaded (melanoma.data.releases): small replicas of each layout built from the
real ISIC sample, with CSVs written here under invented ids."""

import json
import os
import re
import shutil
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from melanoma.data.fetch import FetchError, from_gdrive, write_raw
from melanoma.data.releases import canonical, read_folder
from melanoma.data.split import SplitError, near_duplicate_pairs, split
from melanoma.io import read_csv
from melanoma.params import ParamsError, load_params, validate
from tests.conftest import ROOT

LABEL_MAP = load_params(ROOT / "params.yaml")["data"]["label_map"]  # the study's stated choices


@pytest.fixture
def photos(isic_sample) -> list[Path]:
    """Real dermoscopy JPEGs (224 px), benign and malignant interleaved."""
    b = sorted((isic_sample / "folder" / "benign").glob("*.jpg"))
    m = sorted((isic_sample / "folder" / "malignant").glob("*.jpg"))
    return [p for pair in zip(b, m) for p in pair]


def put(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def mask(dst: Path, size=(224, 224)) -> Path:
    """A 1-bit segmentation mask like the releases ship (white lesion on black)."""
    a = np.zeros(size[::-1], bool)
    a[60:160, 50:170] = True
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(dst)
    return dst


def fetched(root: Path, tmp_path: Path, fmt="auto", max_reject=0.05, label_map=LABEL_MAP) -> dict:
    out = tmp_path / "raw"
    summary = write_raw(
        read_folder(root, label_map, fmt), out, max_side=1024, max_reject_fraction=max_reject, workers=1
    )
    return {
        "summary": summary,
        "rows": {r["id"]: r for r in read_csv(out / "manifest.csv")},
        "rejected": {r["file"]: r["reason"] for r in read_csv(out / "rejected.csv")},
        "skipped": {r["file"]: r["reason"] for r in read_csv(out / "skipped.csv")},
        "excluded": {r["file"]: r["reason"] for r in read_csv(out / "excluded.csv")},
        "card": json.loads((out / "dataset_card.json").read_text()),
        "raw": out,
    }


def labels_of(result: dict) -> dict[str, str]:
    return {i: r["label"] for i, r in result["rows"].items()}


# ------------------------------------------------------------------ ISIC 2018 / 2019 one-hot ground truth

ISIC2019 = [
    ("ISIC_0000001", "MEL"),
    ("ISIC_0000002", "NV"),
    ("ISIC_0000003", "BCC"),
    ("ISIC_0000004", "AK"),
    ("ISIC_0000005", "BKL"),
    ("ISIC_0000006", "DF"),
    ("ISIC_0000007", "VASC"),
    ("ISIC_0000008", "SCC"),
    ("ISIC_0000009", "UNK"),
    ("ISIC_0000010", "MEL"),
    ("ISIC_0000011", "NV"),
]
COLS2019 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
COLS2018 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def one_hot_csv(path: Path, rows, cols, header=True) -> None:
    lines = ["image," + ",".join(cols)] if header else []
    lines += [f"{i}," + ",".join("1.0" if c == dx else "0.0" for c in cols) for i, dx in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def isic2019(root: Path, photos, header=True) -> Path:
    for k, (iid, _) in enumerate(ISIC2019):
        put(photos[k], root / "ISIC_2019_Training_Input" / f"{iid}.jpg")
    one_hot_csv(root / "ISIC_2019_Training_GroundTruth.csv", ISIC2019, COLS2019, header)
    (root / "ISIC_2019_Training_Metadata.csv").write_text(
        "image,age_approx,anatom_site_general,lesion_id,sex\n"
        + "".join(
            f"{iid},{40 + k},back,IL_{k // 2},{'male' if k % 2 else 'female'}\n" for k, (iid, _) in enumerate(ISIC2019)
        )
    )
    return root


def test_isic2019_one_hot_labels_every_column_not_just_the_first(tmp_path, photos):
    r = fetched(isic2019(tmp_path / "isic2019", photos), tmp_path)  # 4 of 11 excluded on purpose: not rejects
    assert labels_of(r) == {
        "ISIC_0000001": "malignant",
        "ISIC_0000002": "benign",
        "ISIC_0000005": "benign",
        "ISIC_0000006": "benign",
        "ISIC_0000007": "benign",
        "ISIC_0000010": "malignant",
        "ISIC_0000011": "benign",
    }
    # BCC, AK, SCC are never silently benign: excluded by the stated label map, and UNK too, each with its reason
    assert (
        r["excluded"]["ISIC_2019_Training_Input/ISIC_0000003.jpg"]
        == "diagnosis 'basal_cell_carcinoma' is excluded by data.label_map"
    )
    assert "'actinic_keratosis' is excluded" in r["excluded"]["ISIC_2019_Training_Input/ISIC_0000004.jpg"]
    assert "'squamous_cell_carcinoma' is excluded" in r["excluded"]["ISIC_2019_Training_Input/ISIC_0000008.jpg"]
    assert "'unknown' is excluded" in r["excluded"]["ISIC_2019_Training_Input/ISIC_0000009.jpg"]
    assert r["summary"].rejected == 0 and r["summary"].excluded == 4 and not r["rejected"]
    assert r["card"]["excluded"] == {
        "diagnosis 'basal_cell_carcinoma' is excluded by data.label_map": 1,
        "diagnosis 'actinic_keratosis' is excluded by data.label_map": 1,
        "diagnosis 'squamous_cell_carcinoma' is excluded by data.label_map": 1,
        "diagnosis 'unknown' is excluded by data.label_map": 1,
    }
    row = r["rows"]["ISIC_0000010"]
    assert (row["diagnosis"], row["lesion_id"], row["meta_age"], row["meta_site"]) == ("melanoma", "IL_4", "49", "back")
    card = r["card"]
    assert card["format"] == "isic2019"
    assert {"diagnosis": "basal_cell_carcinoma", "label": "reject", "listed": 1, "stored": 0} in card["label_mapping"]
    assert {"diagnosis": "melanoma", "label": "malignant", "listed": 2, "stored": 2} in card["label_mapping"]
    assert card["metadata"]["age"] == 7 and card["metadata"]["lesion_id"] == 7


def test_isic2019_bcc_is_malignant_when_the_study_says_so(tmp_path, photos):
    r = fetched(
        isic2019(tmp_path / "isic2019", photos),
        tmp_path,
        max_reject=0.5,
        label_map={**LABEL_MAP, "basal_cell_carcinoma": "malignant"},
    )
    assert labels_of(r)["ISIC_0000003"] == "malignant"


def test_one_hot_ground_truth_without_header_is_refused_not_misread(tmp_path, photos):
    root = isic2019(tmp_path / "isic2019", photos, header=False)
    with pytest.raises(
        FetchError,
        match=r"ISIC_2019_Training_GroundTruth.csv: a header-less table with 10 columns"
        r".*needs its header row",
    ):
        read_folder(root, LABEL_MAP)


def test_isic2018_with_lesion_groupings_and_official_test_ground_truth(tmp_path, photos):
    root = tmp_path / "isic2018"
    train = [
        ("ISIC_0024306", "NV"),
        ("ISIC_0024307", "MEL"),
        ("ISIC_0024308", "NV"),
        ("ISIC_0024309", "MEL"),
        ("ISIC_0024310", "AKIEC"),
    ]
    test = [("ISIC_0034524", "NV"), ("ISIC_0034525", "MEL")]
    for k, (iid, _) in enumerate(train):
        put(photos[k], root / "ISIC2018_Task3_Training_Input" / f"{iid}.jpg")
    for k, (iid, _) in enumerate(test):
        put(photos[20 + k], root / "ISIC2018_Task3_Test_Input" / f"{iid}.jpg")
    for part in ("Training_Input", "Test_Input"):
        (root / f"ISIC2018_Task3_{part}" / "ATTRIBUTION.txt").write_text("HAM10000 ...")
        (root / f"ISIC2018_Task3_{part}" / "LICENSE.txt").write_text("CC-BY-NC")
    one_hot_csv(
        root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv", train, COLS2018
    )
    one_hot_csv(root / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv", test, COLS2018)
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id,diagnosis_confirm_type\n"
        + "".join(f"{i},HAM_{k // 2},histopathology\n" for k, (i, _) in enumerate(train))
    )
    r = fetched(root, tmp_path, fmt="isic2018")
    subsets = {i: (row["subset"], row["label"]) for i, row in r["rows"].items()}
    assert subsets["ISIC_0034525"] == ("external_test", "malignant") and subsets["ISIC_0024307"] == (
        "main",
        "malignant",
    )
    assert r["rows"]["ISIC_0024307"]["lesion_id"] == "HAM_0"
    assert "actinic_keratosis" in r["excluded"]["ISIC2018_Task3_Training_Input/ISIC_0024310.jpg"]
    assert set(r["skipped"].values()) == {"licence, attribution or readme file"} and len(r["skipped"]) == 4
    assert r["summary"].rejected == 0  # neither the licence files nor the excluded AKIEC count against the data


# ------------------------------------------------------------------ PH2

PH2_TXT = """||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry ||
||  IMD002  ||                        ||         0          ||     0     ||
||  IMD003  ||                        ||         1          ||     0     ||
||  IMD058  ||    Melanoma            ||         2          ||     2     ||
||  IMD061  ||    Melanoma            ||         2          ||     2     ||

Clinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma
"""


def ph2_case(base: Path, case: str, photo: Path) -> None:
    put(photo, base / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
    mask(base / case / f"{case}_lesion" / f"{case}_lesion.bmp")
    mask(base / case / f"{case}_roi" / f"{case}_R1_Label4.bmp")


def test_ph2_release_reads_the_dermoscopic_images_and_skips_the_masks(tmp_path, photos):
    root = tmp_path / "PH2Dataset"
    for k, case in enumerate(("IMD002", "IMD003", "IMD058", "IMD061")):
        ph2_case(root / "PH2 Dataset images", case, photos[k])
    (root / "PH2_dataset.txt").write_text(PH2_TXT)
    r = fetched(root, tmp_path)
    assert labels_of(r) == {"IMD002": "benign", "IMD003": "benign", "IMD058": "malignant", "IMD061": "malignant"}
    assert [r["rows"][i]["diagnosis"] for i in ("IMD002", "IMD003", "IMD058")] == [
        "common_nevus",
        "atypical_nevus",
        "melanoma",
    ]
    assert len(r["skipped"]) == 8 and all("segmentation mask" in v for v in r["skipped"].values())
    assert r["card"]["format"] == "ph2"


def test_ph2_case_folders_sorted_into_class_folders_store_no_mask(tmp_path, photos):
    """A user's own sorting of PH2 into benign/ and malignant/: two thirds of the files are masks."""
    root = tmp_path / "sorted"
    for k, case in enumerate(("IMD002", "IMD003", "IMD004")):
        ph2_case(root / "benign", case, photos[2 * k])
    for k, case in enumerate(("IMD058", "IMD061", "IMD063")):
        ph2_case(root / "malignant", case, photos[2 * k + 1])
    mask(root / "malignant" / "IMD063" / "outline.png")  # a mask not named as one: refused by its content
    r = fetched(root, tmp_path, max_reject=0.2)
    assert sorted(r["rows"]) == sorted(
        f"{c}__{i}__{i}_Dermoscopic_Image__{i}"
        for c, i in [
            ("benign", "IMD002"),
            ("benign", "IMD003"),
            ("benign", "IMD004"),
            ("malignant", "IMD058"),
            ("malignant", "IMD061"),
            ("malignant", "IMD063"),
        ]
    )
    assert len(r["skipped"]) == 12
    assert r["rejected"] == {
        "malignant/IMD063/outline.png": "two-colour or blank image (a segmentation mask?), not a dermoscopy photograph"
    }


# ------------------------------------------------------------------ the same image under both labels


def test_same_image_under_both_labels_is_dropped_and_listed(tmp_path, photos):
    root = tmp_path / "folders"
    for k, p in enumerate(photos[:40]):
        put(p, root / ("benign" if k % 2 == 0 else "malignant") / f"img_{k}.jpg")
    put(photos[0], root / "malignant" / "copy.jpg")  # a benign image, also filed as malignant
    r = fetched(root, tmp_path)
    rep = split(r["raw"], tmp_path / "splits", 0, 0.2, 0.2, 0.993)
    listed = rep["conflicting_labels"]
    assert listed["groups"] == 1 and listed["images_dropped"] == 2
    assert sorted(listed["listing"][0]["ids"]) == ["benign__img_0", "malignant__copy"]
    kept = {row["id"] for s in ("train", "val", "test") for row in read_csv(tmp_path / "splits" / f"{s}.csv")}
    assert "benign__img_0" not in kept and "malignant__copy" not in kept and len(kept) == 39
    with pytest.raises(
        SplitError,
        match=r"1 images or lesions are labelled both benign and malignant.*"
        r"malignant/copy.jpg \(malignant\)",
    ):
        split(r["raw"], tmp_path / "fail", 0, 0.2, 0.2, 0.993, conflicting_labels="fail")
    assert not (tmp_path / "fail").exists()


# ------------------------------------------------------------------ flipped and rotated copies


def test_flipped_and_rotated_copies_are_near_duplicates(tmp_path, photos):
    thumbs = []
    for k in range(12):  # distinct real lesions
        thumbs.append(np.asarray(Image.open(photos[k]).convert("L").resize((16, 16), Image.BOX)))
    base = Image.open(photos[0])
    copies = [
        base.transpose(t)
        for t in (
            Image.FLIP_LEFT_RIGHT,
            Image.FLIP_TOP_BOTTOM,
            Image.ROTATE_90,
            Image.ROTATE_180,
            Image.ROTATE_270,
            Image.TRANSPOSE,
            Image.TRANSVERSE,
        )
    ]
    thumbs += [np.asarray(c.convert("L").resize((16, 16), Image.BOX)) for c in copies]
    pairs = near_duplicate_pairs(np.stack(thumbs), 0.993)
    assert {(0, 12 + k) for k in range(7)} <= set(pairs)  # every flip/turn of image 0 found
    assert all(i == 0 or i >= 12 for i, _ in pairs)  # and no distinct lesion pairs up


def test_mirrored_copy_of_a_test_image_never_lands_in_train(tmp_path, photos):
    root = tmp_path / "folders"
    for k, p in enumerate(photos[:60]):
        put(p, root / ("benign" if k % 2 == 0 else "malignant") / f"img_{k}.jpg")
    for k in range(0, 60, 7):
        Image.open(photos[k]).transpose(Image.FLIP_LEFT_RIGHT).save(
            root / ("benign" if k % 2 == 0 else "malignant") / f"mirror_{k}.jpg", quality=90
        )
        Image.open(photos[k]).transpose(Image.ROTATE_90).save(
            root / ("benign" if k % 2 == 0 else "malignant") / f"turned_{k}.jpg", quality=90
        )
    r = fetched(root, tmp_path)
    for seed in range(3):
        rep = split(r["raw"], tmp_path / f"s{seed}", seed, 0.2, 0.2, 0.993)
        where = {row["id"]: s for s in ("train", "val", "test") for row in read_csv(tmp_path / f"s{seed}" / f"{s}.csv")}
        for k in range(0, 60, 7):
            c = "benign" if k % 2 == 0 else "malignant"
            assert where[f"{c}__img_{k}"] == where[f"{c}__mirror_{k}"] == where[f"{c}__turned_{k}"]
        assert rep["merges"]["near_duplicate"] == 18


# ------------------------------------------------------------------ ISIC 2020: patients, Kaggle layout


def isic2020(root: Path, photos, n_patients=8, per_patient=4) -> Path:
    lines = ["image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target"]
    k = 0
    for p in range(n_patients):
        for j in range(per_patient):
            iid = f"ISIC_{9000000 + k}"
            malignant = j == 0 and p % 2 == 0
            diagnosis = "melanoma" if malignant else ("nevus" if j == 1 else "unknown")
            lines.append(
                f"{iid},IP_{p:07d},male,45.0,torso,{diagnosis},"
                f"{'malignant' if malignant else 'benign'},{int(malignant)}"
            )
            put(photos[k], root / "jpeg" / "train" / f"{iid}.jpg")
            (root / "train").mkdir(parents=True, exist_ok=True)
            (root / "train" / f"{iid}.dcm").write_bytes(b"DICM")
            k += 1
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    test = [f"ISIC_{9500000 + t}" for t in range(6)]  # Kaggle's unlabelled test set
    for t, iid in enumerate(test):
        put(photos[100 + t], root / "jpeg" / "test" / f"{iid}.jpg")
    (root / "test.csv").write_text(
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge\n"
        + "".join(f"{i},IP_9{t:06d},female,50.0,head/neck\n" for t, i in enumerate(test))
    )
    (root / "sample_submission.csv").write_text("image_name,target\n" + "".join(f"{i},0\n" for i in test))
    (root / "tfrecords").mkdir()
    (root / "tfrecords" / "train00-2071.tfrec").write_bytes(b"\0")
    return root


def test_isic2020_kaggle_layout_target_settles_unknown_and_patients_stay_together(tmp_path, photos):
    r = fetched(isic2020(tmp_path / "siim-isic", photos), tmp_path)
    assert len(r["rows"]) == 32 and r["summary"].rejected == 0
    assert Counter(labels_of(r).values()) == {"benign": 28, "malignant": 4}
    assert r["rows"]["ISIC_9000002"]["diagnosis"] == "unknown" and r["rows"]["ISIC_9000002"]["label"] == "benign"
    assert r["rows"]["ISIC_9000000"]["patient_id"] == "IP_0000000"
    reasons = Counter(r["skipped"].values())
    assert reasons["DICOM copy (the release's JPEG of the same image is read)"] == 32
    assert reasons["unlabelled: no image of its folder is in a ground-truth table"] == 6
    assert reasons["TFRecord shard (the release's JPEGs are read)"] == 1
    assert r["card"]["metadata"]["patient_id"] == 32 and r["card"]["metadata"]["site"] == 32
    for seed in range(3):
        rep = split(r["raw"], tmp_path / f"s{seed}", seed, 0.25, 0.25, 0.993)
        assert (
            "patient_id" in rep["grouping_keys"] and rep["merges"]["patient_id"] >= 24 - rep["merges"]["near_duplicate"]
        )
        where = {}
        for s in ("train", "val", "test"):
            for row in read_csv(tmp_path / f"s{seed}" / f"{s}.csv"):
                where.setdefault(row["patient_id"], set()).add(s)
        assert all(len(v) == 1 for v in where.values()) and len(where) == 8


# ------------------------------------------------------------------ ISIC 2017, ISIC 2016


def test_isic2017_part3_with_superpixels_and_metadata(tmp_path, photos):
    root = tmp_path / "isic2017"
    rows = [("ISIC_0000000", 0, 0), ("ISIC_0000001", 1, 0), ("ISIC_0000002", 0, 1), ("ISIC_0000003", 0, 0)]
    data = root / "ISIC-2017_Training_Data"
    for k, (iid, _, _) in enumerate(rows):
        put(photos[k], data / f"{iid}.jpg")
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (32, 32, 3), np.uint8)).save(
            data / f"{iid}_superpixels.png"
        )
    (data / "ISIC-2017_Training_Data_metadata.csv").write_text(
        "image_id,age_approximate,sex\n" + "".join(f"{i},55,female\n" for i, _, _ in rows)
    )
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text(
        "image_id,melanoma,seborrheic_keratosis\n" + "".join(f"{i},{m}.0,{s}.0\n" for i, m, s in rows)
    )
    r = fetched(root, tmp_path)
    assert {i: (row["diagnosis"], row["label"]) for i, row in r["rows"].items()} == {
        "ISIC_0000000": ("nevus", "benign"),
        "ISIC_0000001": ("melanoma", "malignant"),
        "ISIC_0000002": ("seborrheic_keratosis", "benign"),
        "ISIC_0000003": ("nevus", "benign"),
    }
    assert r["rows"]["ISIC_0000001"]["meta_age"] == "55"
    assert len(r["skipped"]) == 4 and r["card"]["format"] == "isic2017"


def test_isic2016_official_test_ground_truth_is_the_external_test_set(tmp_path, photos):
    root = tmp_path / "isic2016"
    train = ["ISIC_0000000,benign", "ISIC_0000001,malignant", "ISIC_0000002,benign", "ISIC_0000004,malignant"]
    test = ["ISIC_0000003,0.0", "ISIC_0000005,1.0"]
    for k, line in enumerate(train):
        put(photos[k], root / "ISBI2016_ISIC_Part3_Training_Data" / f"{line.split(',')[0]}.jpg")
    for k, line in enumerate(test):
        put(photos[10 + k], root / "ISBI2016_ISIC_Part3_Test_Data" / f"{line.split(',')[0]}.jpg")
    (root / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").write_text("\n".join(train) + "\n")
    (root / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").write_text("\n".join(test) + "\n")
    r = fetched(root, tmp_path)
    assert {i: (row["subset"], row["label"]) for i, row in r["rows"].items() if row["subset"] != "main"} == {
        "ISIC_0000003": ("external_test", "benign"),
        "ISIC_0000005": ("external_test", "malignant"),
    }
    assert r["card"]["images"]["external_test"] == {"benign": 1, "malignant": 1}


# ------------------------------------------------------------------ HAM10000


def test_ham10000_kaggle_copy_with_duplicate_folders_and_hmnist_tables(tmp_path, photos):
    root = tmp_path / "ham10000"
    dx = ["mel", "nv", "bkl", "bcc", "akiec", "vasc", "df", "nv", "mel", "nv"]
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for k, d in enumerate(dx):
        iid = f"ISIC_{24306 + k:07d}"
        lines.append(f"HAM_{k // 2:07d},{iid},{d},histo,{30 + k}.0,male,back")
        part = "HAM10000_images_part_1" if k < 5 else "HAM10000_images_part_2"
        put(photos[k], root / part / f"{iid}.jpg")
        put(photos[k], root / part.lower() / f"{iid}.jpg")  # Kaggle ships both spellings, same bytes
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "hmnist_28_28_RGB.csv").write_text("pixel0000,pixel0001,label\n1,2,0\n")
    r = fetched(root, tmp_path)
    assert {i: row["label"] for i, row in r["rows"].items()} == {
        "ISIC_0024306": "malignant",
        "ISIC_0024307": "benign",
        "ISIC_0024308": "benign",
        "ISIC_0024311": "benign",
        "ISIC_0024312": "benign",
        "ISIC_0024313": "benign",
        "ISIC_0024314": "malignant",
        "ISIC_0024315": "benign",
    }
    assert r["rows"]["ISIC_0024306"]["lesion_id"] == "HAM_0000000"
    assert sum("byte-identical copy" in v for v in r["skipped"].values()) == 10
    assert r["summary"].rejected == 0 and r["summary"].excluded == 2  # bcc and akiec: excluded, listed
    assert r["card"]["format"] == "ham10000"


# ------------------------------------------------------------------ isic-cli download, macOS zip


def test_isic_cli_download_with_diagnosis_levels_and_sidecars(tmp_path, photos):
    root = tmp_path / "isic-download"
    rows = [
        ("ISIC_1000001", "Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive"),
        ("ISIC_1000002", "Benign", "Benign melanocytic proliferations", "Nevus"),
        (
            "ISIC_1000003",
            "Malignant",
            "Malignant adnexal epithelial proliferations - Follicular",
            "Basal cell carcinoma",
        ),
        ("ISIC_1000004", "Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ"),
        ("ISIC_1000005", "Benign", "Benign epidermal proliferations", "Seborrheic keratosis"),
        ("ISIC_1000006", "Benign", "Benign melanocytic proliferations", "Nevus"),
    ]
    for k, row in enumerate(rows):
        put(photos[k], root / f"{row[0]}.jpg")
    (root / "metadata.csv").write_text(
        "isic_id,attribution,copyright_license,diagnosis_1,diagnosis_2,diagnosis_3,diagnosis_4,diagnosis_5\n"
        + "".join(f'{i},Anonymous,CC-0,{d1},"{d2}",{d3},,\n' for i, d1, d2, d3 in rows)
    )
    (root / "attribution.txt").write_text("Anonymous\n")
    (root / "licenses").mkdir()
    (root / "licenses" / "CC-0.txt").write_text("CC0 1.0\n")
    r = fetched(root, tmp_path)  # 1 of 6 excluded (BCC); neither it nor the 2 sidecars count against the data
    assert labels_of(r) == {
        "ISIC_1000001": "malignant",
        "ISIC_1000002": "benign",
        "ISIC_1000004": "malignant",
        "ISIC_1000005": "benign",
        "ISIC_1000006": "benign",
    }
    assert r["rows"]["ISIC_1000001"]["diagnosis"] == "melanoma"
    assert "basal_cell_carcinoma" in r["excluded"]["ISIC_1000003.jpg"]
    assert len(r["skipped"]) == 2 and r["summary"].rejected == 0 and r["summary"].total == 5


def test_macos_zip_from_gdrive_has_no_macosx_class(tmp_path, photos):
    src = tmp_path / "made-on-a-mac"
    for k, p in enumerate(photos[:10]):
        put(p, src / ("benign" if k % 2 == 0 else "malignant") / f"img_{k}.jpg")
    archive = tmp_path / "lesions.zip"
    with zipfile.ZipFile(archive, "w") as z:  # what Finder's "Compress" writes
        for f in sorted(src.rglob("*.jpg")):
            z.write(f, f.relative_to(src).as_posix())
            z.writestr(f"__MACOSX/{f.parent.name}/._{f.name}", b"\0\5\26\7AppleDouble")
        z.writestr("benign/.DS_Store", b"\0")

    def download(folder_id: str, dest: Path) -> None:
        shutil.copy(archive, dest / "lesions.zip")

    offer = from_gdrive({"folder_id": "x", "download_dir": str(tmp_path / "dl")}, LABEL_MAP, download=download)
    assert Counter(c.label for c in offer.candidates) == {"benign": 5, "malignant": 5} and not offer.rejects
    reasons = Counter(r for _, r in offer.skipped)
    assert reasons == {"macOS archive metadata (__MACOSX)": 10, "hidden file or folder": 1}


# ------------------------------------------------------------------ messages and params


def test_every_row_refused_names_the_top_reasons(tmp_path, photos):
    root = tmp_path / "arc"
    for k in range(4):
        put(photos[k], root / f"ISIC_{k:07d}.jpg")
    (root / "metadata.csv").write_text(
        "isic_id,diagnosis\n"
        + "".join(f"ISIC_{k:07d},{'merkel cell carcinoma' if k < 3 else 'angioma'}\n" for k in range(4))
    )
    with pytest.raises(
        FetchError,
        match=r"labelled no usable image; most common reasons: 3x unknown diagnosis "
        r"'merkel_cell_carcinoma' \(add it to data.label_map.*; 1x unknown diagnosis 'angioma'",
    ):
        read_folder(root, LABEL_MAP)


def test_explicit_format_must_match_what_the_folder_holds(tmp_path, photos):
    root = isic2019(tmp_path / "isic2019", photos)
    with pytest.raises(FetchError, match="data.format is ham10000 but .* holds isic2019 tables"):
        read_folder(root, LABEL_MAP, "ham10000")


def test_index_named_class_folders_with_integer_label_map_keys(tmp_path, photos):
    tree = load_params(ROOT / "params.yaml")
    tree["data"]["label_map"] = {0: "benign", 4: "malignant", 2: "reject"}
    label_map = validate(tree)["data"]["label_map"]
    assert label_map == {"0": "benign", "4": "malignant", "2": "reject"}
    root = tmp_path / "dermamnist"
    for k in range(9):
        put(photos[k], root / str((0, 4, 2)[k % 3]) / f"{k}.png")
    r = fetched(root, tmp_path, label_map=label_map, max_reject=0.5)
    assert Counter(labels_of(r).values()) == {"benign": 3, "malignant": 3}


@pytest.mark.parametrize("key", ["val_fraction", "test_fraction"])
def test_zero_val_or_test_fraction_refused_by_the_schema(key):
    tree = load_params(ROOT / "params.yaml")
    tree["split"][key] = 0
    with pytest.raises(ParamsError, match=rf"split.{key} is 0.0; it must be a number in \[0.01, 0.5\]"):
        validate(tree)


# ------------------------------------------------------------------ hostile inputs (each a kind, not one file)


def test_negated_melanoma_terms_are_not_melanoma_and_label_map_keys_may_not_collide(tmp_path, photos):
    root = tmp_path / "folders"
    for k, name in enumerate(("benign", "malignant", "non melanoma")):
        put(photos[k], root / name / f"{k}.jpg")
    with pytest.raises(FetchError, match="non melanoma: folder name is not a class: unknown diagnosis 'non_melanoma'"):
        read_folder(root, LABEL_MAP)
    for name in ("Melanoma mimics", "melanoma_negative", "melanoma, excluded", "pseudomelanoma"):
        assert canonical(name) != "melanoma", name
    for name in (
        "Melanoma Invasive",
        "Melanoma in situ, Lentigo maligna type",
        "Melanoma, NOS",
        "MEL",
        "mel",
        "Malignant melanocytic proliferations (Melanoma)",
        "Melanoma metastasis",
    ):
        assert canonical(name) == "melanoma", name
    with pytest.raises(
        FetchError,
        match=r"data.label_map.melanoma \(malignant\) and data.label_map.MEL \(benign\) "
        r"both name the diagnosis 'melanoma'",
    ):
        read_folder(root, {**LABEL_MAP, "MEL": "benign"})
    with pytest.raises(FetchError, match="data.label_map.benign: benign always means benign"):
        read_folder(root, {**LABEL_MAP, "benign": "malignant"})


def test_ground_truth_values_other_than_0_or_1_are_refused_not_read_as_0(tmp_path, photos):
    root = tmp_path / "isic2017"
    rows = [
        ("ISIC_0000000", "True", "False"),
        ("ISIC_0000001", "", ""),
        ("ISIC_0000002", "1.0", "0.0"),
        ("ISIC_0000003", "0", "0"),
    ]
    for k, (iid, _, _) in enumerate(rows):
        put(photos[k], root / "data" / f"{iid}.jpg")
    (root / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text(
        "image_id,melanoma,seborrheic_keratosis\n" + "".join(f"{i},{m},{s}\n" for i, m, s in rows)
    )
    r = fetched(root, tmp_path, max_reject=0.6)
    assert labels_of(r) == {"ISIC_0000002": "malignant", "ISIC_0000003": "benign"}
    assert r["rejected"]["data/ISIC_0000000.jpg"] == "ground-truth value melanoma='True' is not 0 or 1"
    assert r["rejected"]["data/ISIC_0000001.jpg"] == "ground-truth value melanoma='' is not 0 or 1"


def test_one_hot_row_marking_two_diagnoses_says_so(tmp_path, photos):
    root = tmp_path / "isic2019"
    for k in range(3):
        put(photos[k], root / "in" / f"ISIC_{k + 1}.jpg")
    (root / "gt.csv").write_text("image,MEL,NV,BCC\nISIC_1,1.0,1.0,0.0\nISIC_2,1.0,0.0,0.0\nISIC_3,0.0,1.0,0.0\n")
    r = fetched(root, tmp_path, max_reject=0.6)
    assert r["rejected"] == {"in/ISIC_1.jpg": "one-hot row marks 2 diagnoses (MEL, NV); it needs exactly one"}


def isic2018_training(root: Path, photos, n: int, gt: str, id_in_gt=lambda i: i) -> list[str]:
    """n training images (melanoma, nevus alternating) and their one-hot ground truth at root/gt."""
    ids = [f"ISIC_00243{k:02d}" for k in range(n)]
    for k, iid in enumerate(ids):
        put(photos[k], root / "ISIC2018_Task3_Training_Input" / f"{iid}.jpg")
    one_hot_csv(root / gt, [(id_in_gt(i), "NV" if k % 2 else "MEL") for k, i in enumerate(ids)], COLS2018)
    return ids


def test_side_tables_merge_field_by_field_and_ids_match_case_and_suffix_insensitively(tmp_path, photos):
    root = tmp_path / "isic2018"
    ids = isic2018_training(root, photos, 6, "ISIC2018_Task3_Training_GroundTruth.csv", lambda i: i.lower() + ".jpg")
    (root / "A_ages.csv").write_text(
        "image_id,age,sex\n" + "".join(f"{i},{50 + k},female\n" for k, i in enumerate(ids))
    )
    (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id,diagnosis_confirm_type\n"
        + "".join(f"{i.lower()},HAM_{k // 2},histo\n" for k, i in enumerate(ids))
    )
    r = fetched(root, tmp_path)
    assert [(r["rows"][i]["lesion_id"], r["rows"][i]["meta_age"]) for i in ids[:2]] == [
        ("HAM_0", "50"),
        ("HAM_0", "51"),
    ]
    assert {t["file"]: t["matched"] for t in r["card"]["tables"]} == {
        "A_ages.csv": 6,
        "ISIC2018_Task3_Training_GroundTruth.csv": 6,
        "ISIC2018_Task3_Training_LesionGroupings.csv": 6,
    }


def test_masks_named_or_filed_as_masks_never_win_over_the_photograph(tmp_path, photos):
    root = tmp_path / "arc"
    for k in range(4):
        put(photos[k], root / "Images" / f"ISIC_{k:07d}.jpg")
        mask(root / "GroundTruth" / f"ISIC_{k:07d}.png")  # same stem as the photograph
    mask(root / "Images" / "ISIC_0000000_attribute_streaks.png")
    mask(root / "Images" / "ISIC_0000001_seg.png")
    (root / "metadata.csv").write_text(
        "isic_id,diagnosis\n" + "".join(f"ISIC_{k:07d},{'melanoma' if k % 2 else 'nevus'}\n" for k in range(4))
    )
    r = fetched(root, tmp_path)
    assert {row["origin"] for row in r["rows"].values()} == {f"Images/ISIC_{k:07d}.jpg" for k in range(4)}
    assert r["summary"].rejected == 0 and len(r["skipped"]) == 6


def test_an_image_listed_by_two_tables(tmp_path, photos):
    root = tmp_path / "ham"
    for k in range(4):
        put(photos[k], root / "images" / f"ISIC_{k:07d}.jpg")
    (root / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx\n"
        + "".join(f"HAM_{k},ISIC_{k:07d},{'mel' if k in (1, 3) else 'nv'}\n" for k in range(4))
    )
    one_hot_csv(
        root / "ISIC2018_Task3_Test_GroundTruth.csv", [("ISIC_0000000", "MEL"), ("ISIC_0000001", "MEL")], COLS2018
    )
    r = fetched(root, tmp_path, max_reject=0.5)
    assert r["rejected"] == {
        "images/ISIC_0000000.jpg": "labelled benign in HAM10000_metadata.csv but malignant in "
        "ISIC2018_Task3_Test_GroundTruth.csv"
    }
    assert r["rows"]["ISIC_0000001"]["subset"] == "external_test"  # one label: read once, never trained on
    assert set(r["rows"]) == {"ISIC_0000001", "ISIC_0000002", "ISIC_0000003"}


def test_gdrive_never_replaces_a_downloaded_folder_and_finds_multipart_releases(tmp_path, photos):
    dl = tmp_path / "dl"
    (dl / "data").mkdir(parents=True)
    (dl / "data" / "mine.txt").write_text("keep me")
    with zipfile.ZipFile(dl / "data.zip", "w") as z:
        z.writestr("benign/x.jpg", photos[0].read_bytes())
    with pytest.raises(FetchError, match=r"data.zip would unpack into .*/data, a folder downloaded beside it"):
        from_gdrive({"folder_id": "x", "download_dir": str(dl)}, LABEL_MAP, download=lambda i, d: None)
    assert (dl / "data" / "mine.txt").read_text() == "keep me"
    parts = tmp_path / "parts"  # ISIC ships one zip per part, each with its own top folder; one zip inside another
    parts.mkdir()
    ids = [f"ISIC_{k:07d}" for k in range(6)]
    with zipfile.ZipFile(parts / "ISIC2018_Task3_Training_Input.zip", "w") as z:
        for k, i in enumerate(ids):
            z.writestr(f"ISIC2018_Task3_Training_Input/{i}.jpg", photos[k].read_bytes())
    with zipfile.ZipFile(parts / "inner.zip", "w") as z:
        z.writestr(
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
            "image,MEL,NV\n" + "".join(f"{i},{k % 2}.0,{1 - k % 2}.0\n" for k, i in enumerate(ids)),
        )
    with zipfile.ZipFile(parts / "ISIC2018_Task3_Training_GroundTruth.zip", "w") as z:
        z.write(parts / "inner.zip", "inner.zip")
    (parts / "inner.zip").unlink()
    offer = from_gdrive(
        {"folder_id": "x", "download_dir": str(tmp_path / "dl2")},
        LABEL_MAP,
        download=lambda i, d: [shutil.copy(f, d) for f in parts.iterdir()],
    )
    assert Counter(c.label for c in offer.candidates) == {"benign": 3, "malignant": 3} and not offer.rejects
    assert (
        Counter(r for _, r in offer.skipped)["archive (gdrive downloads are unpacked; unpack a local one yourself)"]
        == 3
    )


def test_symlinked_folders_are_read_and_link_loops_end(tmp_path, photos):
    real = tmp_path / "real"
    for k in range(4):
        put(photos[k], real / ("benign" if k % 2 == 0 else "malignant") / f"{k}.jpg")
    root = tmp_path / "linked"
    root.mkdir()
    (root / "benign").symlink_to(real / "benign")
    (root / "malignant").symlink_to(real / "malignant")
    (real / "benign" / "loop").symlink_to(root)
    r = fetched(root, tmp_path)
    assert Counter(labels_of(r).values()) == {"benign": 2, "malignant": 2}


def test_common_table_dialects_and_placeholders(tmp_path, photos):
    root = tmp_path / "arc"
    for k in range(12):
        put(photos[k], root / f"ISIC_{k:07d}.jpg")
    text = "isic_id;diagnosis;lesion_id\n" + "".join(
        f"ISIC_{k:07d};{'melanoma' if k % 2 else 'nevus'};nan\n" for k in range(12)
    )
    (root / "metadata.csv").write_bytes(text.encode("utf-16"))  # Excel's "Unicode text", semicolons
    r = fetched(root, tmp_path)
    assert Counter(labels_of(r).values()) == {"benign": 6, "malignant": 6}
    rep = split(r["raw"], tmp_path / "s", 0, 0.25, 0.25, 0.993)
    assert rep["merges"]["lesion_id"] == 0 and rep["conflicting_labels"]["groups"] == 0  # 'nan' is no lesion id
    (root / "metadata.csv").write_text("isic_id,diagnosis\n")
    with pytest.raises(FetchError, match="labelled no usable image; they have no rows"):
        read_folder(root, LABEL_MAP)


def test_train_valid_test_parents_and_an_unlabelled_id_table_hint(tmp_path, photos):
    root = tmp_path / "kaggle"
    for k in range(12):
        put(
            photos[k], root / ("train", "valid", "test")[k % 3] / ("benign" if k % 2 == 0 else "malignant") / f"{k}.jpg"
        )
    r = fetched(root, tmp_path)
    assert Counter(row["subset"] for row in r["rows"].values()) == {"main": 8, "external_test": 4}
    gt = tmp_path / "isic2016"
    put(photos[0], gt / "ISBI2016_ISIC_Part3_Training_Data" / "ISIC_0000000.jpg")
    (gt / "ground_truth.csv").write_text("image_id,label\nISIC_0000000,benign\n")  # a header added by hand
    with pytest.raises(FetchError, match="Note: ground_truth.csv has image ids but no label column"):
        read_folder(gt, LABEL_MAP)


def test_split_input_errors_are_one_line(tmp_path):
    with pytest.raises(SplitError, match="manifest.csv is missing; run `dvc repro fetch` first"):
        split(tmp_path, tmp_path / "s", 0, 0.2, 0.2, 0.993)
    (tmp_path / "manifest.csv").write_text("id,label\na,benign\n")
    with pytest.raises(SplitError, match="has no md5, subset, origin column"):
        split(tmp_path, tmp_path / "s", 0, 0.2, 0.2, 0.993)


def test_nan_params_refused():
    tree = load_params(ROOT / "params.yaml")
    tree["data"]["max_reject_fraction"] = float("nan")
    with pytest.raises(ParamsError, match="data.max_reject_fraction is nan"):
        validate(tree)


def test_ph2_row_with_a_missing_cell_is_refused_not_shifted(tmp_path, photos):
    root = tmp_path / "PH2Dataset"
    for k, case in enumerate(("IMD002", "IMD003", "IMD058", "IMD061")):
        ph2_case(root / "images", case, photos[k])
    (root / "PH2_dataset.txt").write_text(
        PH2_TXT.replace("||  IMD003  ||                        ||         1   ", "||  IMD003  ||         1   ")
    )
    r = fetched(root, tmp_path, max_reject=0.5)
    assert r["rejected"] == {
        "images/IMD003/IMD003_Dermoscopic_Image/IMD003.bmp": "PH2_dataset.txt row has 3 cells for 4 columns"
    }


def test_lesion_ids_survive_whichever_table_sorts_first(tmp_path, photos):
    root = tmp_path / "isic2018+ham"
    ids = isic2018_training(root, photos, 8, "A_ISIC2018_Task3_Training_GroundTruth.csv")
    (root / "skin-cancer-mnist-ham10000").mkdir()
    (root / "skin-cancer-mnist-ham10000" / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,age\n"
        + "".join(f"HAM_{k // 2},{i},{'nv' if k % 2 else 'mel'},{40 + k}\n" for k, i in enumerate(ids))
    )
    r = fetched(root, tmp_path)
    assert [r["rows"][i]["lesion_id"] for i in ids[:4]] == ["HAM_0", "HAM_0", "HAM_1", "HAM_1"]


def test_broken_archives_and_separate_parts_in_a_download(tmp_path, photos):
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as t:
        for k in range(4):
            t.add(photos[k], f"benign/{k}.jpg")
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "data.tar.gz").write_bytes(good.read_bytes()[:300])  # an interrupted download
    with pytest.raises(FetchError, match=r"data.tar.gz: cannot unpack \((EOFError|ReadError|OSError|error)"):
        from_gdrive({"folder_id": "x", "download_dir": str(tmp_path / "dl")}, LABEL_MAP, download=lambda i, d: None)
    parts = tmp_path / "parts"
    for part in ("part1", "part2"):
        for k, c in enumerate(("nevus", "melanoma")):  # names data.label_map maps
            put(photos[k], parts / part / c / f"{k}.jpg")
    with pytest.raises(FetchError, match=r"holds 2 separate datasets \(part1, part2\)"):
        from_gdrive({"folder_id": "x", "download_dir": str(parts)}, LABEL_MAP, download=lambda i, d: None)
    shutil.rmtree(parts / "part2")
    offer = from_gdrive({"folder_id": "x", "download_dir": str(parts)}, LABEL_MAP, download=lambda i, d: None)
    assert Counter(c.label for c in offer.candidates) == {"benign": 1, "malignant": 1}
    with pytest.raises(FetchError, match="data.gdrive.download_dir: '.' is the project folder or above it"):
        from_gdrive({"folder_id": "x", "download_dir": "."}, LABEL_MAP, download=lambda i, d: None)


def test_photographs_named_like_masks_only_by_accident_are_read(tmp_path, photos):
    root = tmp_path / "folders"
    put(photos[0], root / "benign" / "P001_lesion.jpg")
    put(photos[2], root / "benign" / "hair_unmasked" / "P002.jpg")
    put(photos[1], root / "malignant" / "P003_roi.jpg")
    bright = ImageEnhance.Brightness(Image.open(photos[3])).enhance(1.4)  # overexposed, skin near white
    (root / "malignant").mkdir(exist_ok=True)
    bright.save(root / "malignant" / "bright.jpg", quality=95)
    for name, colours in (("grey", (0, 128)), ("red", ((0, 0, 0), (200, 30, 30)))):
        a = np.zeros((300, 400, 3), np.uint8)
        a[:] = colours[0]
        a[80:220, 100:300] = colours[1]
        Image.fromarray(a).save(root / "malignant" / f"outline_{name}.png")
    r = fetched(root, tmp_path, max_reject=0.5)
    assert len(r["rows"]) == 4 and not r["skipped"]
    assert set(r["rejected"]) == {"malignant/outline_grey.png", "malignant/outline_red.png"}


def test_short_csv_rows_are_refused_and_2016_ids_may_carry_a_suffix(tmp_path, photos):
    root = tmp_path / "arc"
    for k in range(4):
        put(photos[k], root / f"ISIC_{k:07d}.jpg")
    (root / "metadata.csv").write_text(
        "isic_id,diagnosis,sex,lesion_id\n"
        + "".join(f"ISIC_{k:07d},{'melanoma' if k % 2 else 'nevus'},male,IL_{k}\n" for k in range(3))
        + "ISIC_0000003,nevus,male\n"
    )
    r = fetched(root, tmp_path, max_reject=0.5)
    assert r["rejected"] == {"ISIC_0000003.jpg": "metadata.csv row has 3 cells for 4 columns"}
    gt = tmp_path / "isic2016"
    for k in range(2):
        put(photos[k], gt / "data" / f"ISIC_{k:07d}.jpg")
    (gt / "gt.csv").write_text("ISIC_0000000.jpg,benign\nISIC_0000001.jpg,malignant\n")
    assert [c.label for c in read_folder(gt, LABEL_MAP).candidates] == ["benign", "malignant"]


def test_names_no_filesystem_or_csv_can_take_become_safe_ids(tmp_path, photos):
    root = tmp_path / "folders"
    long = "x" * 230
    put(photos[0], root / "benign" / f"{long}.jpg")
    put(photos[2], root / "benign" / "with space & ümlaut.jpg")
    latin1 = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 file name, not UTF-8
    put(photos[1], root / "malignant" / latin1)
    put(photos[3], root / "malignant" / "ok.jpg")
    r = fetched(root, tmp_path)
    ids = sorted(r["rows"])
    assert all(len(i) <= 89 and re.fullmatch(r"[A-Za-z0-9._-]+", i) for i in ids) and len(set(ids)) == 4
    assert "malignant__ok" in ids
    origins = {row["origin"] for row in r["rows"].values()}
    assert "malignant/caf\\xe9.jpg" in origins and f"benign/{long}.jpg" in origins


def test_formula_cells_are_quoted_in_our_csvs_and_read_back_unchanged(tmp_path, photos):
    root = tmp_path / "arc"
    for k in range(2):
        put(photos[k], root / f"ISIC_{k:07d}.jpg")
    (root / "metadata.csv").write_text(
        'isic_id,diagnosis,sex\nISIC_0000000,nevus,"=HYPERLINK(""http://x"")"\nISIC_0000001,melanoma,-1.5\n'
    )
    r = fetched(root, tmp_path)
    assert r["rows"]["ISIC_0000000"]["meta_sex"] == '=HYPERLINK("http://x")'  # read back as given
    text = (r["raw"] / "manifest.csv").read_text()
    assert "'=HYPERLINK" in text and "-1.5" in text and "'-1.5" not in text  # numbers untouched


def test_entries_that_are_not_files_are_listed_not_lost(tmp_path, photos):
    root = tmp_path / "folders"
    for k in range(4):
        put(photos[k], root / ("benign" if k % 2 == 0 else "malignant") / f"{k}.jpg")
    os.mkfifo(root / "benign" / "pipe.jpg")
    (root / "malignant" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    r = fetched(root, tmp_path)
    assert r["skipped"] == {
        "benign/pipe.jpg": "not a regular file (a FIFO, socket, device or broken symbolic link)",
        "malignant/gone.jpg": "not a regular file (a FIFO, socket, device or broken symbolic link)",
    }


def test_the_archive_exports_subgroup_fields_reach_the_manifest(tmp_path, photos):
    """The current ISIC Archive export's sex, age_approx, anatom_site_general and fitzpatrick_skin_type become
    meta_sex, meta_age, meta_site and meta_skin_type (raw, as the release states them; empty where it does not)."""
    root = tmp_path / "archive"
    rows = [
        ("ISIC_2000001", "Malignant", "male", "65", "upper extremity", "II"),
        ("ISIC_2000002", "Benign", "female", "30", "anterior torso", ""),
        ("ISIC_2000003", "Benign", "", "", "", "V"),
    ]
    for k, row in enumerate(rows):
        put(photos[k], root / f"{row[0]}.jpg")
    (root / "metadata.csv").write_text(
        "isic_id,diagnosis_1,sex,age_approx,anatom_site_general,fitzpatrick_skin_type\n"
        + "".join(",".join(r) + "\n" for r in rows)
    )
    r = fetched(root, tmp_path)
    got = {i: tuple(r["rows"][i][f"meta_{k}"] for k in ("sex", "age", "site", "skin_type")) for i in r["rows"]}
    assert got == {row[0]: row[2:] for row in rows}
