"""Decoding any image a user or the archive hands us into one canonical RGB form, or a reason it was refused.

Real collections contain EXIF-rotated phone photos, grayscale scans, RGBA PNGs, CMYK JPEGs, 16-bit PNGs,
6000-pixel originals, truncated downloads and stray text files. Everything downstream assumes upright 8-bit
RGB of bounded size, so this is the one place that guarantees it.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from melanoma.errors import MelanomaError, first_line

# Size limits checked before a byte is decoded (data.max_pixels / data.max_file_mb override them for fetch). A
# 1.4 kB JPEG may declare 24000x24000 pixels; Pillow's own bomb check only fires at twice MAX_IMAGE_PIXELS.
MAX_PIXELS = 120_000_000  # above the largest real dermoscopy scans (ISIC: <= 40 MP), 0.5 GB as 8-bit RGB
MAX_BYTES = 256_000_000
# Geometry a dermoscopy photograph has: a shorter side of at least MIN_SIDE px (the demo's simulated lesions are
# 32 px; real ones are hundreds to thousands) and sides within MAX_ASPECT of each other (cameras give 4:3 or 3:2).
# An 8x8 thumbnail or a 4000x20 strip would otherwise be resized into a lesion-shaped input and get a decision.
MIN_SIDE = 32
MAX_ASPECT = 4.0
Image.MAX_IMAGE_PIXELS = 1_000_000_000  # Pillow's own guard, for any other reader: above every allowed max_pixels

# Converted images are stored as JPEG at this quality rather than PNG. Measured on six ISIC originals downscaled to
# 1024 px: PNG 0.36-1.25 MB, JPEG q95 0.09-0.25 MB (about 5x smaller) at 38-50 dB PSNR against the PNG; the
# classifiers see a further 4.6x Lanczos reduction to 224 px, which averages that error away. The study's ~7,000
# images take ~1.4 GB instead of ~7 GB.
JPEG_QUALITY = 95
KEPT_AS_IS = {"JPEG": ".jpg", "PNG": ".png"}  # formats whose bytes are stored unchanged when no pixel changes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# The Pillow decoders a file may reach, whatever its name: raster formats only. EPS/PS and PDF are not among them
# (Pillow hands EPS to Ghostscript, a whole interpreter, for a file nobody vouched for).
Image.init()
OPENED = tuple(
    f for f in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "MPO", "PPM", "TGA", "ICO", "DIB") if f in Image.OPEN
)


class ImageRejected(MelanomaError):
    """The file is not a usable image; the message is the reason written to rejected.csv."""


@dataclass(frozen=True)
class Decoded:
    """An image ready to write: the bytes to store, their suffix, and what it was before."""

    data: bytes
    suffix: str
    orig_width: int
    orig_height: int
    width: int
    height: int
    thumb: np.ndarray  # 16x16 uint8, see thumbnail()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        hi = a.max() if a.size else 0.0
        a = a * (255.0 / hi) if hi > 255 else a  # 16-bit: scale the used range into 8 bits
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ImageRejected("non-finite pixel values (NaN or infinity) in a floating-point image")
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparency over white, like a viewer
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


THUMB = 16


def thumbnail(im: Image.Image) -> np.ndarray:
    """A 16x16 grayscale box-filtered thumbnail (uint8): the near-duplicate fingerprint.

    Measured here: an image against its half-size JPEG (quality 50) copy correlates >= 0.995, distinct lesions
    <= 0.946 on the real ISIC sample and <= 0.990 on the (smoother) demo images; a 256-bit dHash separated
    these far less cleanly. Crops of more than a few per cent are not caught: that is what lesion ids are for.
    """
    return np.asarray(im.convert("L").resize((THUMB, THUMB), Image.BOX), dtype=np.uint8)


def looks_like_mask(rgb: Image.Image, dominant: float = 0.93) -> bool:
    """True when two colours cover at least `dominant` of the image: a segmentation mask (1-bit, grey, coloured,
    palette, JPEG-compressed or blurred), an attribute map or a blank page.

    Measured on a 256x256 box reduction with channels quantised to 32 levels: real dermoscopy covers at most 0.50
    (ISIC sample, 324 images; 0.85 with every image brightened by 1.4x until the skin clips to white), an 800x600
    mask blurred by a 5 px Gaussian 0.95, masks without blur or JPEG-compressed 1.0.
    """
    a = np.asarray(rgb.resize((256, 256), Image.BOX)) >> 3
    codes = (a[..., 0].astype(np.int32) << 10) | (a[..., 1].astype(np.int32) << 5) | a[..., 2]
    counts = np.bincount(codes.ravel(), minlength=1 << 15)
    first = int(counts.argmax())
    top_two = int(counts[first]) + int(np.delete(counts, first).max())  # two passes; a sort costs ~10x more
    return top_two / codes.size >= dominant


def decode_image(path: Path, max_side: int, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Decoded:
    """Decode `path` fully; return upright 8-bit RGB bytes no larger than `max_side`, or raise ImageRejected.

    Refused before decoding: files over `max_bytes`, images declaring more than `max_pixels`, a shorter side under
    MIN_SIDE px or sides more than MAX_ASPECT:1 apart. Refused after: any
    failure of the decoder on the file (Pillow raises many types on hostile input; each is this file's reject),
    a JPEG whose last rows are the decoder's grey fill for missing data, non-finite float pixels, masks and blank
    images. An image that is already an upright RGB JPEG or PNG within bounds keeps its original bytes (no second
    lossy encode, and a lossless PNG stays lossless); anything converted (downscaled, rotated, another format or
    mode) is stored as JPEG at quality JPEG_QUALITY.
    """
    return _guarded(path, max_bytes, lambda raw: _decode(raw, max_side, max_pixels))


def decode_pixels(
    path: Path, max_side: int, draft: int, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES
) -> np.ndarray:
    """Upright 8-bit RGB pixels (H, W, 3) of `path` capped at `max_side`, with every check of decode_image, but
    never re-encoded, and a JPEG decoded at libjpeg's reduced scale whose longer side stays >= `draft` px (Pillow's
    draft mode: a 6000x4000 photograph decodes ~8x faster at 1/8 scale). For scoring (`melanoma predict`), where
    only the classifier's input size matters: with `draft` at least 4x that size, the pixels after the final
    resize differ from the stored-image path by well under 1/255 on average. Raises ImageRejected."""
    return _guarded(path, max_bytes, lambda raw: np.asarray(_upright(raw, max_side, max_pixels, draft)[0]))


def _guarded(path: Path, max_bytes: int, decode: Callable[[bytes], Any]) -> Any:
    """Read `path` within the size limit and run `decode` on its bytes; every failure is an ImageRejected."""
    path = Path(path)
    if not path.is_file():
        raise ImageRejected("not a regular file" if path.exists() else "no such file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageRejected(f"cannot read file: {e.strerror}") from None
    if size == 0:
        raise ImageRejected("empty file (0 bytes)")
    if size > max_bytes:
        raise ImageRejected(
            f"file of {size / 1e6:.0f} MB is over the {max_bytes / 1e6:.0f} MB limit (data.max_file_mb)"
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ImageRejected(f"cannot read file: {e.strerror}") from None
    try:
        return decode(raw)
    except ImageRejected:
        raise
    except MemoryError:
        raise ImageRejected("out of memory decoding this image") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageRejected(f"image too large to decode safely: {e}") from None
    except Exception as e:  # noqa: BLE001 - hostile files make Pillow raise struct.error, TypeError, SyntaxError...
        first = first_line(e, empty="no detail")
        raise ImageRejected(f"truncated or corrupt image ({type(e).__name__}: {first})") from None


GREY_FILL = 128  # libjpeg's value for blocks whose data is missing


def _grey_fill_rows(im: Image.Image, enough: int = 8) -> int:
    """How many bottom rows of a decoded JPEG are the decoder's flat grey fill (data missing from the file);
    counted in full only when the last `enough` rows all are (a whole-image scan costs more than the decode of a
    drafted image)."""

    def grey_rows(a: np.ndarray) -> int:
        fill = np.all(a == GREY_FILL, axis=(1, 2))[::-1]
        return int(np.argmin(fill)) if not fill.all() else len(fill)

    bottom = grey_rows(np.asarray(im.crop((0, max(0, im.height - enough), im.width, im.height)).convert("RGB")))
    return bottom if bottom < min(enough, im.height) else grey_rows(np.asarray(im.convert("RGB")))


def _decode(raw: bytes, max_side: int, max_pixels: int) -> Decoded:
    rgb, changed, im, fmt, (orig_w, orig_h) = _upright(raw, max_side, max_pixels, 0)
    if fmt in KEPT_AS_IS and im.mode == "RGB" and not changed:
        data, suffix = raw, KEPT_AS_IS[fmt]
    else:
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
        data, suffix = buf.getvalue(), ".jpg"
    return Decoded(data, suffix, orig_w, orig_h, rgb.width, rgb.height, thumbnail(rgb))


def _upright(
    raw: bytes, max_side: int, max_pixels: int, draft: int
) -> tuple[Image.Image, bool, Image.Image, str, tuple[int, int]]:
    """(upright RGB capped at max_side, whether it differs from the file's pixels, the opened image, its format,
    its declared size). Every check of decode_image runs here. draft > 0: a JPEG may be decoded at a reduced
    scale (libjpeg's DCT scaling, 1/2 to 1/8) as long as its longer side stays >= draft px."""
    im = Image.open(io.BytesIO(raw), formats=OPENED)
    fmt = im.format
    orig_w, orig_h = im.size
    if orig_w * orig_h > max_pixels:
        raise ImageRejected(
            f"declares {orig_w}x{orig_h} = {orig_w * orig_h / 1e6:.0f} M pixels, over the limit of "
            f"{max_pixels / 1e6:.0f} M (data.max_pixels)"
        )
    if orig_w == 0 or orig_h == 0:
        raise ImageRejected("image has zero width or height")
    if min(orig_w, orig_h) < MIN_SIDE:
        raise ImageRejected(
            f"{orig_w}x{orig_h} px: the shorter side is under {MIN_SIDE} px, too small to show a lesion"
        )
    if max(orig_w, orig_h) > MAX_ASPECT * min(orig_w, orig_h):
        raise ImageRejected(
            f"{orig_w}x{orig_h} px: sides more than {MAX_ASPECT:g}:1 apart, a strip or banner, not a "
            "dermoscopy photograph"
        )
    if draft and fmt == "JPEG" and max(orig_w, orig_h) > draft:
        scale = draft / max(orig_w, orig_h)
        im.draft("RGB", (max(1, round(orig_w * scale)), max(1, round(orig_h * scale))))
    im.load()  # decodes everything: truncated files fail here, not later in training
    if fmt == "JPEG" and _grey_fill_rows(im) >= 8:
        raise ImageRejected(
            f"truncated JPEG: its last {_grey_fill_rows(im)} rows are the decoder's grey fill for missing data"
        )
    try:
        changed = im.getexif().get(0x0112, 1) != 1  # EXIF orientation: pixels must be rotated upright
        upright = ImageOps.exif_transpose(im)
    except Exception as e:  # noqa: BLE001 - malformed EXIF (text where a number belongs, ...)
        raise ImageRejected(
            f"unreadable EXIF metadata ({type(e).__name__}); strip it (e.g. exiftool -all=) and add the file again"
        ) from None
    rgb = _to_rgb(upright)
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.LANCZOS)
        changed = True
    if looks_like_mask(rgb):
        raise ImageRejected("two-colour or blank image (a segmentation mask?), not a dermoscopy photograph")
    return rgb, changed, im, fmt, (orig_w, orig_h)


def encode_png(pixels: np.ndarray) -> Decoded:
    """Store generated HxWx3 uint8 pixels losslessly."""
    im = Image.fromarray(pixels)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return Decoded(buf.getvalue(), ".png", im.width, im.height, im.width, im.height, thumbnail(im))


def md5_bytes(data: bytes) -> str:
    """Hex md5 of raw bytes (the manifests' image fingerprint)."""
    return hashlib.md5(data).hexdigest()


def grid(images: np.ndarray, cols: int = 8) -> Image.Image:
    """A contact sheet: uint8 (N, H, W, C) images in rows of `cols`, white where the last row is short."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    canvas = np.full((rows * h, cols * w, c), 255, np.uint8)
    for i, im in enumerate(images):
        canvas[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = im
    return Image.fromarray(canvas)


def font(size: int = 11) -> Any:
    """Pillow's bundled FreeType font at `size` px (its bitmap font, whose spaces all but vanish, only where
    Pillow was built without FreeType): the one font of every label drawn on a sheet or an overlay."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def labelled(sheet: Image.Image, rows: list[str] | None = None, cols: list[str] | None = None) -> Image.Image:
    """The sheet with a label left of each of its equal-height rows and above each equal-width column
    (`font()`, black on white). Raises ValueError when the sheet cannot be split that way."""
    from PIL import ImageDraw

    rows, cols, f = rows or [], cols or [], font()
    if (rows and sheet.height % len(rows)) or (cols and sheet.width % len(cols)):
        raise ValueError(f"a {sheet.width} x {sheet.height} sheet has no {len(rows)} equal rows / {len(cols)} columns")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 6 + int(max((measure.textlength(t, font=f) for t in rows), default=-6))
    top = 14 if cols else 0
    canvas = Image.new("RGB", (sheet.width + left, sheet.height + top), "white")
    canvas.paste(sheet.convert("RGB"), (left, top))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(rows):
        h = sheet.height // len(rows)
        draw.text((2, top + i * h + h // 2 - 6), text, fill="black", font=f)
    for j, text in enumerate(cols):
        draw.text((left + j * (sheet.width // len(cols)) + 2, 1), text, fill="black", font=f)
    return canvas
