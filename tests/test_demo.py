"""The demo simulator's patient attributes and its harder skin-type group (melanoma.data.demo)."""

from collections import Counter
from dataclasses import replace

import numpy as np

from melanoma.data import demo
from melanoma.data.fetch import from_demo
from melanoma.evaluation.subgroups import SITES, SKIN_BANDS, subgroup_value

ATTRIBUTES = {"sex", "age", "site", "skin_type"}


def test_patient_attributes_belong_to_the_lesion():
    """Every photograph of a lesion (same lesion_index) has its attributes; other lesions draw their own."""
    specs = demo.plan(0, 200, 100, 32, repeat_fraction=0.3)
    repeats = [s for s in specs if s.lesion_index != s.index]
    assert repeats  # the plan has repeat photographs to check
    for s in repeats:
        first = replace(s, index=s.lesion_index)
        assert demo.patient(s) == demo.patient(first)
    # the label (noise) does not enter the draw; the seed and the lesion do
    s = specs[0]
    assert demo.patient(replace(s, label="malignant")) == demo.patient(s)
    others = {tuple(demo.patient(replace(s, lesion_index=i)).values()) for i in range(20)}
    assert len(others) > 10
    assert [demo.patient(replace(x, seed=1)) for x in specs[:20]] != [demo.patient(x) for x in specs[:20]]


def test_patient_attributes_are_in_the_documented_sets_and_read_back_as_subgroups():
    for s in demo.plan(3, 150, 150, 32):
        p = demo.patient(s)
        assert set(p) == ATTRIBUTES and all(isinstance(v, str) for v in p.values())
        assert p["sex"] in demo.SEXES and p["site"] in demo.SITES and p["skin_type"] in demo.SKIN_TYPES
        age = int(p["age"])
        assert age % 5 == 0 and demo.AGE_RANGE[0] <= age <= demo.AGE_RANGE[1]
        # the subgroup evaluation reads every value as itself, none as "unknown"
        assert subgroup_value("sex", p["sex"], [40, 60]) == p["sex"]
        assert subgroup_value("skin_type", p["skin_type"], [40, 60]) == SKIN_BANDS[p["skin_type"]]
        assert SITES[p["site"]] == p["site"]
        assert subgroup_value("age", p["age"], [40, 60]) != "unknown"


def test_patient_proportions_match_the_constants():
    """Over 2,000 lesions each category's share is within 0.04 of its constant (about 4 binomial sd at n=2,000)."""
    drawn = [demo.patient(s) for s in demo.plan(7, 1000, 1000, 32)]
    n = len(drawn)
    for key, weights in (("sex", demo.SEXES), ("site", demo.SITES), ("skin_type", demo.SKIN_TYPES)):
        counts = Counter(p[key] for p in drawn)
        assert set(counts) == set(weights)
        for value, w in weights.items():
            assert abs(counts[value] / n - w) < 0.04, (key, value, counts[value] / n, w)
    hard = sum(p["skin_type"] in demo.HARDER_SKIN_TYPES for p in drawn) / n
    assert abs(hard - sum(demo.SKIN_TYPES[t] for t in demo.HARDER_SKIN_TYPES)) < 0.04
    ages = np.array([int(p["age"]) for p in drawn])
    assert abs(ages.mean() - demo.AGE_MEAN) < 2 and abs(ages.std() - demo.AGE_SD) < 2.5
    assert len(set(ages)) >= 10  # spread over the range, not a few values


def test_harder_group_is_named_and_darker_on_the_ramp():
    assert demo.HARDER_SKIN_TYPES == ("V", "VI")
    lum = [demo.skin_colour(demo._SKIN_TONE[t]) @ [0.299, 0.587, 0.114] for t in demo.SKIN_TYPES]
    assert all(a > b for a, b in zip(lum, lum[1:]))  # I lightest ... VI darkest
    assert 0 < demo.HARDER_VISIBILITY < 1


def _luminance(img: np.ndarray) -> np.ndarray:
    return img.astype(float) @ [0.299, 0.587, 0.114]


def _border(lum: np.ndarray) -> float:
    """Median luminance (0-255) of the ring 2-6 px inside the frame: skin, mostly clear of the lesion and the rim."""
    h = len(lum)
    ring = np.zeros((h, h), bool)
    ring[2:-2, 2:-2] = True
    ring[6:-6, 6:-6] = False
    return float(np.median(lum[ring]))


def test_dark_skin_types_render_darker_skin():
    """Mean border luminance of V-VI images is clearly below that of I-II images."""
    by_type: dict[str, list[float]] = {}
    for s in demo.plan(1, 120, 60, 48):
        by_type.setdefault(demo.patient(s)["skin_type"], []).append(_border(_luminance(demo.render(s)[0])))
    dark = [v for t in ("V", "VI") for v in by_type.get(t, [])]
    light = [v for t in ("I", "II") for v in by_type.get(t, [])]
    assert len(dark) >= 15 and len(light) >= 15
    assert np.mean(dark) < 0.75 * np.mean(light)


def test_the_same_lesion_stands_out_less_on_dark_skin(monkeypatch):
    """One lesion and view rendered on type II and on type VI skin: on VI the skin is darker and the lesion's
    centre is darker than the skin by a smaller fraction (lower contrast), yet still darker."""
    s = demo.plan(2, 0, 1, 48)[0]
    real = demo.patient
    lum = {}
    for t in ("II", "VI"):
        monkeypatch.setattr(demo, "patient", lambda spec, t=t: {**real(spec), "skin_type": t})
        lum[t] = _luminance(demo.render(s)[0])
    contrast = {t: 1 - im[20:28, 20:28].mean() / _border(im) for t, im in lum.items()}
    assert _border(lum["VI"]) < 0.6 * _border(lum["II"])
    assert 0.05 < contrast["VI"] < 0.8 * contrast["II"]


def test_render_uses_the_patients_skin_type(monkeypatch):
    """render asks patient(spec) for the skin type: forcing another type changes the pixels."""
    s = next(x for x in demo.plan(4, 30, 0, 32) if demo.patient(x)["skin_type"] in ("I", "II"))
    before = demo.render(s)[0]
    monkeypatch.setattr(demo, "patient", lambda spec: {"sex": "male", "age": "50", "site": "torso", "skin_type": "VI"})
    after = demo.render(s)[0]
    assert after.mean() < before.mean() - 10


def test_from_demo_candidates_carry_the_patient_attributes():
    cfg = {"seed": 3, "n_benign": 12, "n_malignant": 6, "image_size": 32, "label_noise": 0.2, "repeat_fraction": 0.2}
    offer = from_demo(cfg)
    assert len(offer.candidates) == 18
    for c in offer.candidates:
        assert ATTRIBUTES | {"drawn_as", "label_swapped"} == set(c.metadata)
        assert {k: c.metadata[k] for k in ATTRIBUTES} == demo.patient(c.spec)
    by_lesion: dict[str, set] = {}
    for c in offer.candidates:
        by_lesion.setdefault(c.lesion_id, set()).add(tuple(c.metadata[k] for k in sorted(ATTRIBUTES)))
    assert all(len(v) == 1 for v in by_lesion.values())  # repeat photographs agree
