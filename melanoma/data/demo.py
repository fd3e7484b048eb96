"""Procedural dermoscopy simulator: the embedded demo source, so `dvc repro` needs nothing from outside.

The classes follow the ABCD rule dermatologists use: benign lesions are small, symmetric, evenly bordered and
one brown; malignant ones are larger, asymmetric, notched, several colours, with dots, globules and streaks.
Every feature is drawn from overlapping distributions driven by one latent "severity", and a few labels are
swapped, so the task is learnable but not trivial. Skin texture, hair, vignetting and the dermoscope's dark
rim give classifiers and generators the nuisances real images have.

Each image is rendered from its own RNG seeded by (seed, class, index), so adding images never changes the
earlier ones, and a lesion can be photographed twice (same lesion parameters, another view): those share a
`lesion_id`, which the split stage must keep together.

Each lesion also has patient attributes (`patient`: sex, age, body site, Fitzpatrick skin type), drawn from a
stream of their own with the proportions in SEXES, AGE_*, SITES and SKIN_TYPES, so that subgroups can be evaluated.
The skin type sets the skin's tone, and the lesion's pigment darkens with the skin, less than in proportion
(LESION_FOLLOWS_SKIN), so darker skin shows it with less contrast; on types V-VI (HARDER_SKIN_TYPES) the lesion and
its dots and streaks are drawn at HARDER_VISIBILITY (0.55) of their opacity. That group is modestly harder: the
colour-and-texture baseline (melanoma.evaluation.baseline's features, logistic regression, 5-fold CV over 1,200
images at 32 px) scores an AUROC 0.06 lower on V-VI than on I-IV (0.74 vs 0.80, mean of seeds 0-2), well above chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_CLASS_CODE = {"benign": 0, "malignant": 1}

# RGB in [0, 1]
_BROWNS = np.array([[0.55, 0.36, 0.22], [0.45, 0.28, 0.17], [0.62, 0.43, 0.28]])
_DARK = np.array([0.18, 0.11, 0.08])
_BLUE_GREY = np.array([0.38, 0.42, 0.50])
_RED = np.array([0.70, 0.33, 0.30])
_WHITE = np.array([0.86, 0.82, 0.80])

# Patient attributes, one draw per lesion. Sex half and half; age normal around AGE_MEAN (sd AGE_SD) rounded to 5
# years and clipped to AGE_RANGE, as ISIC's age_approx; body sites on ISIC's general-site scale, the torso the
# commonest as in the ISIC challenges; Fitzpatrick skin types with V-VI a quarter of the lesions (far more than in
# ISIC's releases, where they are rare), so the darker group is large enough to evaluate.
SEXES = {"female": 0.5, "male": 0.5}
AGE_MEAN, AGE_SD, AGE_RANGE = 55.0, 15.0, (15, 85)
SITES = {"torso": 0.40, "lower extremity": 0.25, "upper extremity": 0.20, "head/neck": 0.15}
SKIN_TYPES = {"I": 0.10, "II": 0.25, "III": 0.25, "IV": 0.15, "V": 0.15, "VI": 0.10}
HARDER_SKIN_TYPES = ("V", "VI")  # the group whose lesions are drawn with less contrast

# Skin colour: a ramp of RGB anchors from pale (tone 0) to dark brown (tone 1); each type sits at its own tone,
# spread +-_TONE_SPREAD within the type (drawn per view).
_SKIN_RAMP = np.array(
    [[0.95, 0.83, 0.76], [0.88, 0.71, 0.61], [0.74, 0.54, 0.42], [0.52, 0.35, 0.24], [0.32, 0.20, 0.13]]
)
_SKIN_TONE = {"I": 0.05, "II": 0.2, "III": 0.37, "IV": 0.54, "V": 0.72, "VI": 0.9}
_TONE_SPREAD = 0.07
_REFERENCE_SKIN = _SKIN_RAMP[1]  # the skin on which the lesion colours above are drawn as they are
LESION_FOLLOWS_SKIN = 0.7  # lesion RGB x (skin / reference skin) ** this: < 1, darker skin shows less contrast
HARDER_VISIBILITY = 0.55  # opacity of the lesion and its structures on HARDER_SKIN_TYPES (1 elsewhere)


@dataclass(frozen=True)
class DemoSpec:
    """Everything needed to render one demo image; cheap to create and to send to a worker process."""

    seed: int
    drawn_as: str  # the class the lesion is drawn as
    index: int  # index within drawn_as
    lesion_index: int  # index of the lesion's first photograph (== index unless a repeat view)
    label: str  # the recorded label: differs from drawn_as when label noise swapped it
    size: int

    @property
    def lesion_id(self) -> str:
        return f"demo_lesion_{_CLASS_CODE[self.drawn_as]}{self.lesion_index:06d}"


def _waves(rng: np.random.Generator, n: int, fmin: float, fmax: float) -> np.ndarray:
    """Random plane waves: rows of (kx, ky, phase, amplitude); summing them gives smooth isotropic noise."""
    angle = rng.uniform(0, 2 * np.pi, n)
    freq = rng.uniform(fmin, fmax, n)
    return np.stack(
        [
            freq * np.cos(angle),
            freq * np.sin(angle),
            rng.uniform(0, 2 * np.pi, n),
            rng.uniform(0.5, 1.0, n) / np.sqrt(n),
        ],
        axis=1,
    )


def _noise(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for kx, ky, ph, a in w:
        out += a * np.sin(kx * x + ky * y + ph)
    return out


def _sample_lesion(rng: np.random.Generator, malignant: bool) -> dict:
    """Lesion parameters in lesion-centred units (radius ~ 1 = a quarter of the field of view)."""
    s = float(rng.beta(5, 2) if malignant else rng.beta(2, 5))  # overlapping severities
    n_harm = 4
    amp = np.zeros(n_harm + 1)
    amp[1] = rng.uniform(0, 0.22) * s  # odd harmonics break symmetry
    amp[2] = rng.uniform(0.02, 0.08) + rng.uniform(0, 0.10) * s
    amp[3] = rng.uniform(0, 0.16) * s
    amp[4] = rng.uniform(0, 0.05)
    colours = [_BROWNS[rng.integers(len(_BROWNS))] * rng.uniform(0.85, 1.1)]
    extra = [_DARK, _BLUE_GREY, _RED, _WHITE]
    n_extra = int(rng.binomial(4, 0.02 + 0.6 * s**1.5))
    for i in rng.permutation(len(extra))[:n_extra]:
        colours.append(extra[i])
    n_dots = int(rng.poisson(2 + 30 * s**2)) if malignant or rng.random() < 0.3 else 0
    return {
        "severity": s,
        "radius": rng.uniform(0.55, 0.85) + 0.55 * s,
        "harm_amp": amp,
        "harm_phase": rng.uniform(0, 2 * np.pi, n_harm + 1),
        "notch": rng.uniform(0, 0.12) * s**1.5,  # high-frequency border notches
        "notch_k": int(rng.integers(7, 14)),
        "edge": 0.03 + 0.12 * s * rng.random(),  # blurrier, variable edge
        "colours": np.array(colours),
        "colour_waves": _waves(rng, 10, 1.5, 5.0),
        "network": rng.uniform(0.0, 0.12) if rng.random() < 0.6 else 0.0,
        "network_freq": rng.uniform(9, 14),
        "dots": rng.normal(0, 0.35, (n_dots, 2)) * (1 + s),
        "dot_size": rng.uniform(0.03, 0.07, n_dots),
        "streaks": int(rng.poisson(6 * s**2)) if malignant else 0,
        "streak_angles": rng.uniform(0, 2 * np.pi, 16),
        "darkness": rng.uniform(0.75, 1.0),
    }


def _view(rng: np.random.Generator, size: int) -> tuple[np.ndarray, ...]:
    """Image grid (xx, yy in [-2, 2]) and its lesion-frame coordinates (lx, ly, r, phi) for a random rotation,
    flip, zoom and offset."""
    theta0 = rng.uniform(0, 2 * np.pi)
    zoom = rng.uniform(0.85, 1.15)
    off = rng.normal(0, 0.12, 2)
    lin = (np.arange(size) + 0.5) / size * 4.0 - 2.0  # field of view: [-2, 2]
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    c, s_ = np.cos(theta0), np.sin(theta0)
    lx = (c * (xx - off[0]) - s_ * (yy - off[1])) / zoom
    ly = (s_ * (xx - off[0]) + c * (yy - off[1])) / zoom
    if rng.random() < 0.5:
        lx = -lx
    return xx, yy, lx, ly, np.hypot(lx, ly), np.arctan2(ly, lx)


def skin_colour(tone: float) -> np.ndarray:
    """The skin's base RGB (float (3,), in [0, 1]) at `tone` in [0, 1] (0 pale, 1 dark brown) on _SKIN_RAMP."""
    x = np.linspace(0, 1, len(_SKIN_RAMP))
    return np.array([np.interp(tone, x, _SKIN_RAMP[:, c]) for c in range(3)])


def _skin(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, skin_type: str) -> tuple[np.ndarray, np.ndarray]:
    """The skin of `skin_type` with low-frequency mottling and fine grain, (H, W, 3) floats around [0, 1], and its
    base RGB (3,)."""
    tone = float(np.clip(_SKIN_TONE[skin_type] + _TONE_SPREAD * rng.uniform(-1, 1), 0, 1))
    skin_rgb = skin_colour(tone)
    mottle = _noise(_waves(rng, 12, 0.8, 3.0), xx, yy)
    grain = rng.normal(0, 1, xx.shape)
    img = skin_rgb[None, None, :] * (1 + 0.05 * mottle[..., None] + 0.015 * grain[..., None])
    return img * (1 + 0.03 * _noise(_waves(rng, 6, 4, 10), xx, yy))[..., None], skin_rgb


def _lesion(
    lesion: dict,
    img: np.ndarray,
    lx: np.ndarray,
    ly: np.ndarray,
    r: np.ndarray,
    phi: np.ndarray,
    pigment: np.ndarray,
    visibility: float,
) -> np.ndarray:
    """Paint the lesion: a mask whose radius carries harmonics (asymmetry) and notches (irregular border), a
    brown base darker at the centre, extra colours in noise-defined patches, an optional pigment network; its
    colours scaled by `pigment` (RGB (3,), the skin's darkening) and its opacity by `visibility`."""
    amp, ph = lesion["harm_amp"], lesion["harm_phase"]
    rad = np.full_like(r, lesion["radius"])
    for k in range(1, len(amp)):
        rad = rad * (1 + amp[k] * np.cos(k * phi + ph[k]))
    rad = rad * (1 + lesion["notch"] * np.cos(lesion["notch_k"] * phi + ph[0]))
    mask = 1 / (1 + np.exp(-(rad - r) / max(lesion["edge"], 1e-3)))
    cols = lesion["colours"]
    lesion_rgb = np.broadcast_to(cols[0], img.shape).copy()
    lesion_rgb *= (0.8 + 0.2 * np.clip(r / lesion["radius"], 0, 1))[..., None]
    field = _noise(lesion["colour_waves"], lx, ly)
    for i, col in enumerate(cols[1:]):
        patch = 1 / (1 + np.exp(-(np.sin(field * 2.5 + 1.7 * i) - 0.6) * 8))
        lesion_rgb = lesion_rgb * (1 - patch[..., None]) + col * patch[..., None]
    if lesion["network"] > 0:  # reticular pigment network
        f = lesion["network_freq"]
        net = (np.sin(f * lx) * np.sin(f * ly)) ** 2
        lesion_rgb *= (1 - lesion["network"] * net)[..., None]
    alpha = mask * lesion["darkness"] * visibility
    return img * (1 - alpha[..., None]) + lesion_rgb * pigment * alpha[..., None]


def _structures(
    lesion: dict, img: np.ndarray, lx: np.ndarray, ly: np.ndarray, pigment: np.ndarray, visibility: float
) -> np.ndarray:
    """Dots/globules and radial streaks near the border, darkening the image (their colour scaled by `pigment`,
    their opacity by `visibility`)."""
    structures = np.zeros_like(lx)
    for (dx, dy), ds in zip(lesion["dots"], lesion["dot_size"]):
        structures = np.maximum(structures, np.exp(-((lx - dx) ** 2 + (ly - dy) ** 2) / (2 * ds**2)))
    for a in lesion["streak_angles"][: lesion["streaks"]]:
        along = lx * np.cos(a) + ly * np.sin(a)
        across = -lx * np.sin(a) + ly * np.cos(a)
        band = np.exp(-(across**2) / (2 * 0.02**2)) * np.exp(-((along - lesion["radius"]) ** 2) / (2 * 0.18**2))
        structures = np.maximum(structures, band)
    strength = 0.8 * visibility * structures[..., None]
    return img * (1 - strength) + _DARK * pigment * strength


def _optics(img: np.ndarray, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Vignetting, a colour cast, sometimes the dermoscope's dark circular rim."""
    rr = np.hypot(xx, yy) / 2.0
    img = img * (1 - rng.uniform(0.05, 0.25) * rr**2 / 2)[..., None]
    img = img * rng.uniform(0.92, 1.06, 3)
    if rng.random() < 0.25:
        rim = 1 / (1 + np.exp(-(rr - rng.uniform(0.95, 1.15)) * 40))
        img = img * (1 - 0.9 * rim[..., None])
    return img


def _render(lesion: dict, rng: np.random.Generator, size: int, skin_type: str) -> np.ndarray:
    """Draw one view of a lesion on skin of `skin_type` as uint8 (size, size, 3): the view (pose, skin tone within
    the type, hair, light) comes from `rng`."""
    xx, yy, lx, ly, r, phi = _view(rng, size)
    img, skin_rgb = _skin(rng, xx, yy, skin_type)
    pigment = (skin_rgb / _REFERENCE_SKIN) ** LESION_FOLLOWS_SKIN
    visibility = HARDER_VISIBILITY if skin_type in HARDER_SKIN_TYPES else 1.0
    img = _lesion(lesion, img, lx, ly, r, phi, pigment, visibility)
    img = _structures(lesion, img, lx, ly, pigment, visibility)
    img = _optics(_add_hair(img, rng, size), rng, xx, yy)
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.asarray(out.filter(ImageFilter.GaussianBlur(radius=size / 256)))


def _add_hair(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    n = int(rng.poisson(rng.choice([0.3, 3.0, 8.0])))
    if n == 0:
        return img
    scale = 2  # draw at 2x and downsample for anti-aliased strands
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(n):
        p0, p1, p2 = rng.uniform(-0.2, 1.2, (3, 2)) * size * scale
        t = np.linspace(0, 1, 24)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
        width = int(rng.integers(1, 3)) * max(1, size // 128)
        draw.line([tuple(p) for p in pts], fill=int(rng.uniform(160, 255)), width=width)
    h = np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float64)[..., None] / 255
    hair_rgb = np.array([0.12, 0.08, 0.06]) * rng.uniform(0.6, 1.4)
    return img * (1 - h) + hair_rgb * h


def plan(
    seed: int, n_benign: int, n_malignant: int, image_size: int, label_noise: float = 0.0, repeat_fraction: float = 0.0
) -> list[DemoSpec]:
    """Specs of exactly n_benign benign- and n_malignant malignant-labelled images, deterministic per seed.

    Label noise swaps the labels of round(label_noise * min(n_benign, n_malignant)) images of each class, so
    the per-class counts stay exactly as asked while that fraction of labels is wrong.
    """
    counts = {"benign": n_benign, "malignant": n_malignant}
    n_swap = int(round(label_noise * min(counts.values())))
    swap_rng = np.random.default_rng([seed, 99])
    swapped = {c: set(swap_rng.permutation(n)[:n_swap].tolist()) for c, n in counts.items()}
    other = {"benign": "malignant", "malignant": "benign"}
    return [
        DemoSpec(
            seed,
            cls,
            i,
            _first_view(seed, _CLASS_CODE[cls], i, repeat_fraction),
            other[cls] if i in swapped[cls] else cls,
            image_size,
        )
        for cls, n in counts.items()
        for i in range(n)
    ]


def patient(spec: DemoSpec) -> dict[str, str]:
    """The lesion's patient attributes, the same for every photograph of it (drawn per lesion_index, from a stream
    of their own): {"sex": "female" | "male", "age": a multiple of 5 in AGE_RANGE as a string, "site": a key of
    SITES, "skin_type": a Fitzpatrick type "I".."VI"}, with the proportions of SEXES, AGE_*, SITES, SKIN_TYPES."""
    rng = np.random.default_rng([spec.seed, _CLASS_CODE[spec.drawn_as], spec.lesion_index, 3])

    def pick(weights: dict[str, float]) -> str:
        return str(rng.choice(list(weights), p=list(weights.values())))

    sex = pick(SEXES)
    age = int(np.clip(5 * round(rng.normal(AGE_MEAN, AGE_SD) / 5), *AGE_RANGE))
    return {"sex": sex, "age": str(age), "site": pick(SITES), "skin_type": pick(SKIN_TYPES)}


def render(spec: DemoSpec) -> tuple[np.ndarray, float]:
    """The image (HxWx3 uint8) on the skin of its patient's skin type, and its lesion's latent severity."""
    code = _CLASS_CODE[spec.drawn_as]
    lesion = _sample_lesion(
        np.random.default_rng([spec.seed, code, spec.lesion_index, 1]), spec.drawn_as == "malignant"
    )
    rng = np.random.default_rng([spec.seed, code, spec.index, 2])
    pixels = _render(lesion, rng, spec.size, patient(spec)["skin_type"])
    return pixels, lesion["severity"]


def _first_view(seed: int, code: int, index: int, repeat_fraction: float) -> int:
    """The index of the first photograph of the lesion that image `index` shows."""
    while index > 0:
        rng = np.random.default_rng([seed, code, index])
        if rng.random() >= repeat_fraction:
            return index
        index = int(rng.integers(0, index))
    return index
