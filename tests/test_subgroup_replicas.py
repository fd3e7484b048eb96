"""Subgroup fields from real-release replicas (built from the real ISIC sample, CSVs written here) reach every
predictions CSV: fetch -> split -> decode -> build_dataset -> the baseline's scoring (the same score_seeds that
evaluate uses), one test per release layout."""

from pathlib import Path

import pytest

from melanoma.data.datasets import build_dataset, decode_real
from melanoma.data.fetch import write_raw
from melanoma.data.releases import read_folder
from melanoma.data.split import split
from melanoma.evaluation.baseline import run_baseline
from melanoma.evaluation.subgroups import UNKNOWN
from melanoma.io import read_csv
from tests.test_releases import LABEL_MAP, photos, put  # noqa: F401 (photos: the fixture)
from tests.tiny import tiny_params

N = 48  # 24 benign, 24 malignant: every split gets both classes
SEXES = ["male", "female", ""]
AGES = ["25", "45.0", "70", ""]


def archive_export(root: Path, images: list[Path]) -> dict[str, tuple[str, ...]]:
    """The current ISIC Archive export: metadata.csv with diagnosis_1 and the four subgroup fields."""
    sites = ["anterior torso", "upper extremity", "head/neck", ""]
    skins = ["II", "IV", "VI", ""]
    lines, want = ["isic_id,diagnosis_1,sex,age_approx,anatom_site_general,fitzpatrick_skin_type"], {}
    for k, photo in enumerate(images):
        iid, row = f"ISIC_{2100000 + k}", (SEXES[k % 3], AGES[k % 4], sites[k // 2 % 4], skins[k // 3 % 4])
        put(photo, root / f"{iid}.jpg")
        lines.append(f"{iid},{'Malignant' if k % 2 else 'Benign'},{','.join(row)}")
        want[iid] = row
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return want


def ham10000(root: Path, images: list[Path]) -> dict[str, tuple[str, ...]]:
    """HAM10000's metadata: age, sex and its finer `localization`; no skin type."""
    sites = ["back", "face", "lower extremity", "unknown"]
    lines, want = ["lesion_id,image_id,dx,dx_type,age,sex,localization"], {}
    for k, photo in enumerate(images):
        iid = f"ISIC_{24306 + k:07d}"
        sex, age, site = SEXES[k % 3], AGES[k % 4], sites[k // 2 % 4]
        lines.append(f"HAM_{k:07d},{iid},{'mel' if k % 2 else 'nv'},histo,{age},{sex},{site}")
        put(photo, root / "HAM10000_images_part_1" / f"{iid}.jpg")
        want[iid] = (sex, age, site, "")
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return want


def isic2020(root: Path, images: list[Path]) -> dict[str, tuple[str, ...]]:
    """ISIC 2020 (Kaggle layout): train.csv with anatom_site_general_challenge, one patient per image."""
    sites = ["torso", "lower extremity", "oral/genital", ""]
    lines, want = (
        ["image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target"],
        {},
    )
    for k, photo in enumerate(images):
        iid, m = f"ISIC_{9100000 + k}", k % 2
        sex, age, site = SEXES[k % 3], AGES[k % 4], sites[k // 2 % 4]
        diagnosis, bm = ("melanoma", "malignant") if m else ("nevus", "benign")
        lines.append(f"{iid},IP_{k:07d},{sex},{age},{site},{diagnosis},{bm},{m}")
        put(photo, root / "jpeg" / "train" / f"{iid}.jpg")
        want[iid] = (sex, age, site, "")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return want


# what the subgroup evaluation makes of the values written above (age bands with the default edges [40, 60])
SEX = {"male": "male", "female": "female", "": UNKNOWN}
AGE = {"25": "<40", "45.0": "40-59", "70": "60+", "": UNKNOWN}
SITE = {
    "anterior torso": "torso",
    "back": "torso",
    "torso": "torso",
    "upper extremity": "upper extremity",
    "lower extremity": "lower extremity",
    "head/neck": "head/neck",
    "face": "head/neck",
    "oral/genital": "oral/genital",
    "unknown": UNKNOWN,
    "": UNKNOWN,
}
SKIN = {"II": "I-II", "IV": "III-IV", "VI": "V-VI", "": UNKNOWN}


@pytest.mark.parametrize("release", [archive_export, ham10000, isic2020], ids=lambda f: f.__name__)
def test_a_releases_subgroup_fields_reach_every_predictions_csv(tmp_path, photos, release):  # noqa: F811
    want = release(tmp_path / "release", photos[:N])
    raw, splits, real, data = (tmp_path / d for d in ("raw", "splits", "real", "datasets/Original"))
    write_raw(read_folder(tmp_path / "release", LABEL_MAP, "auto"), raw, 1024, 0.05, workers=1)
    split(raw, splits, 0, 0.25, 0.25, 0.993)
    p = tiny_params()
    decode_real(splits, raw, 16, real)
    build_dataset("Original", {**p, "datasets": {**p["datasets"], "image_size": 16}}, real, tmp_path / "syn", data)
    run_baseline(p, data, tmp_path / "evaluation")
    seen = 0
    for s in ("val", "test"):
        rows = read_csv(tmp_path / "evaluation" / "seed_0" / f"predictions_{s}.csv")
        assert rows and list(rows[0])[-4:] == ["sex", "age", "site", "skin_type"]
        for r in rows:
            sex, age, site, skin = want[r["id"]]
            assert (r["sex"], r["age"], r["site"], r["skin_type"]) == (SEX[sex], AGE[age], SITE[site], SKIN[skin])
            seen += 1
    assert seen == len([r for r in read_csv(splits / "val.csv") + read_csv(splits / "test.csv")])
