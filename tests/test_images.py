"""Every odd input the fetch stage meets: converted to upright 8-bit RGB, or refused with a reason."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

from melanoma.data.images import ImageRejected, decode_image
from tests.conftest import jpeg_bytes, lesion_image


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decoded(norm) -> Image.Image:
    im = Image.open(io.BytesIO(norm.data))
    im.load()
    return im


def test_upright_rgb_jpeg_keeps_its_bytes(tmp_path):
    data = jpeg_bytes(lesion_image(1))
    n = decode_image(write(tmp_path, "a.jpg", data), max_side=1024)
    assert n.data == data and n.suffix == ".jpg"
    assert (n.width, n.height) == (64, 48)
    assert n.thumb.shape == (16, 16) and n.thumb.dtype == np.uint8


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "L", "P", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    im = lesion_image(2).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    n = decode_image(write(tmp_path, f"x.{fmt.lower()}", save(im, fmt)), max_side=1024)
    out = decoded(n)
    assert out.mode == "RGB" and out.size == (64, 48)
    assert n.suffix == ".jpg"  # converted pixels are stored as high-quality JPEG (JPEG_QUALITY)
    assert decoded(n).format == "JPEG"


def test_rgba_transparency_composited_on_white(tmp_path):
    im = lesion_image(5, (64, 64)).convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0  # the left half transparent
    im.putalpha(Image.fromarray(alpha))
    px = np.asarray(decoded(decode_image(write(tmp_path, "t.png", save(im, "PNG")), 1024))).astype(int)
    assert px[:, :24].min() >= 245  # white, up to JPEG rounding
    assert px[:, 40:].mean() < 200  # the opaque half keeps the lesion


@pytest.mark.parametrize("kind", ["1-bit", "jpeg", "blurred", "blank"])
def test_masks_and_blank_images_are_refused_by_content(tmp_path, kind):
    a = np.zeros((600, 800), np.uint8)  # masks come at the photograph's size
    a[150:450, 200:600] = 255
    im = {
        "1-bit": Image.fromarray(a > 0),
        "jpeg": Image.fromarray(a),
        "blank": Image.new("RGB", (64, 64)),
        "blurred": Image.fromarray(a).filter(ImageFilter.GaussianBlur(3)),
    }[kind]
    data = jpeg_bytes(im.convert("RGB"), quality=75) if kind == "jpeg" else save(im, "PNG")
    with pytest.raises(ImageRejected, match="two-colour or blank image"):
        decode_image(write(tmp_path, f"m_{kind}.png", data), 1024)


def test_sixteen_bit_png_scaled_to_eight_bits(tmp_path):
    a = np.linspace(0, 65535, 48 * 36).reshape(36, 48).astype(np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I")
    n = decode_image(write(tmp_path, "deep.png", save(im, "PNG")), 1024)
    px = np.asarray(decoded(n))
    assert px.dtype == np.uint8 and px.shape == (36, 48, 3)
    assert px.max() >= 250 and px.min() <= 5  # the full range survives, not clipped to white


def test_huge_image_downscaled(tmp_path):
    im = lesion_image(4, (6000, 4000))
    n = decode_image(write(tmp_path, "big.jpg", jpeg_bytes(im, quality=50)), max_side=1024)
    assert (n.orig_width, n.orig_height) == (6000, 4000)
    assert (n.width, n.height) == (1024, 683)
    assert decoded(n).size == (1024, 683)


def test_exif_orientation_applied(tmp_path):
    im = lesion_image(3, size=(80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    n = decode_image(write(tmp_path, "rot.jpg", jpeg_bytes(im, exif=exif)), 1024)
    assert (n.width, n.height) == (40, 80)
    assert n.suffix == ".jpg"  # re-encoded upright; the original bytes would display sideways elsewhere


@pytest.mark.parametrize(
    "name,data,reason",
    [
        ("empty.jpg", b"", r"empty file \(0 bytes\)"),
        ("notes.txt", b"this is not an image\n", "not an image"),
        ("fake.jpg", b"\xff\xd8\xff\xe0garbage", "truncated or corrupt"),
    ],
)
def test_unusable_files_rejected_with_reason(tmp_path, name, data, reason):
    with pytest.raises(ImageRejected, match=reason):
        decode_image(write(tmp_path, name, data), 1024)


def test_truncated_jpeg_rejected(tmp_path):
    data = jpeg_bytes(lesion_image(4, size=(256, 256)), quality=95)
    with pytest.raises(ImageRejected, match="truncated or corrupt image"):
        decode_image(write(tmp_path, "cut.jpg", data[: len(data) // 2]), 1024)


def test_stored_bytes_decode_to_nearly_the_same_pixels(tmp_path):
    im = lesion_image(5)
    n = decode_image(write(tmp_path, "x.png", save(im.convert("RGBA"), "PNG")), 1024)
    out = write(tmp_path, "out.jpg", n.data)
    with Image.open(out) as stored:
        diff = np.asarray(stored).astype(float) - np.asarray(im).astype(float)
        assert stored.mode == "RGB" and stored.size == im.size
        assert 10 * np.log10(255**2 / max((diff**2).mean(), 1e-12)) > 35  # PSNR: JPEG q95 of the same pixels


def test_rgb_png_within_bounds_keeps_its_lossless_bytes(tmp_path):
    data = save(lesion_image(6), "PNG")
    n = decode_image(write(tmp_path, "a.png", data), max_side=1024)
    assert n.data == data and n.suffix == ".png"


def test_downscaled_image_is_stored_as_jpeg_and_much_smaller_than_png(tmp_path):
    rng = np.random.default_rng(0)
    noisy = np.clip(
        np.asarray(lesion_image(7, size=(2048, 1536))).astype(int) + rng.integers(-8, 9, (1536, 2048, 3)), 0, 255
    ).astype(np.uint8)
    n = decode_image(write(tmp_path, "big.png", save(Image.fromarray(noisy), "PNG")), max_side=1024)
    assert n.suffix == ".jpg" and (n.width, n.height) == (1024, 768)
    png = save(decoded(n).convert("RGB"), "PNG")
    assert len(n.data) < len(png) / 2


# ------------------------------------------------------------------ hostile files: only ever accepted or rejected


def _formats() -> dict[str, bytes]:
    im = lesion_image(11, (48, 40))
    out = {}
    for fmt, kw in (("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {}), ("TIFF", {}), ("BMP", {}), ("GIF", {})):
        buf = io.BytesIO()
        (im.convert("P") if fmt == "GIF" else im).save(buf, format=fmt, **kw)
        out[fmt] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    out["JPEG+EXIF"] = buf.getvalue()
    return out


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "JPEG+EXIF"])
def test_fuzzed_files_are_accepted_or_rejected_never_an_exception(tmp_path, fmt):
    """300 seeded mutations per format (byte flips, truncations, inserted junk): decode_image either returns or
    raises ImageRejected; any other exception would end a whole fetch or predict run."""
    good = _formats()[fmt]
    rng = np.random.default_rng(sum(map(ord, fmt)))
    outcomes = {"ok": 0, "rejected": 0}
    for k in range(300):
        data = bytearray(good)
        kind = k % 3
        if kind == 0:
            for i in rng.integers(0, len(data), rng.integers(1, 12)):
                data[i] = rng.integers(0, 256)
        elif kind == 1:
            data = data[: rng.integers(1, len(data))]
        else:
            at = rng.integers(0, len(data))
            data[at:at] = rng.integers(0, 256, rng.integers(1, 64)).astype(np.uint8).tobytes()
        f = write(tmp_path, f"f{k}.img", bytes(data))
        try:
            decode_image(f, 1024)
            outcomes["ok"] += 1
        except ImageRejected:
            outcomes["rejected"] += 1
    assert outcomes["ok"] + outcomes["rejected"] == 300 and outcomes["rejected"] > 0


def test_malformed_exif_orientation_is_one_reject(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0124] = 7
    data = bytearray(jpeg_bytes(lesion_image(2, (48, 36)), exif=exif))
    at = data.find(b"\x01\x24\x00\x04")  # the IFD entry of tag 0x0124, type LONG (big-endian EXIF)
    data[at + 2 : at + 4] = b"\x00\x02"  # ... now typed as text: Pillow's exif_transpose raises struct.error
    with pytest.raises(ImageRejected, match=r"unreadable EXIF metadata \(error\); strip it"):
        decode_image(write(tmp_path, "exif.jpg", bytes(data)), 1024)


def test_decompression_bombs_and_oversized_files_refused_before_decoding(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = (24000).to_bytes(4, "big") * 2  # the IHDR declares 24000x24000 ...
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # ... with a valid checksum
    with pytest.raises(ImageRejected, match=r"declares 24000x24000 = 576 M pixels, over the limit of 120 M"):
        decode_image(write(tmp_path, "bomb.png", bytes(data)), 1024)
    big = write(tmp_path, "big.jpg", jpeg_bytes(lesion_image(3, (64, 64))) + b"\0" * 3_000_000)
    with pytest.raises(ImageRejected, match=r"file of 3 MB is over the 2 MB limit \(data.max_file_mb\)"):
        decode_image(big, 1024, max_bytes=2_000_000)
    with pytest.raises(ImageRejected, match="over the limit of 2 M"):
        decode_image(write(tmp_path, "wide.jpg", jpeg_bytes(lesion_image(3, (2000, 1100)))), 1024, max_pixels=2_000_000)


def test_a_jpeg_missing_most_of_its_scan_data_is_refused(tmp_path):
    src = jpeg_bytes(lesion_image(6, (224, 224)), quality=95)
    sos = src.rfind(b"\xff\xda")
    start = sos + 2 + int.from_bytes(src[sos + 2 : sos + 4], "big")
    cut = src[: start + (len(src) - 2 - start) // 3] + b"\xff\xd9"  # two thirds gone, the end marker kept
    with pytest.raises(ImageRejected, match=r"truncated JPEG: its last \d+ rows are the decoder's grey fill"):
        decode_image(write(tmp_path, "cut.jpg", cut), 1024)


def test_non_finite_float_pixels_refused(tmp_path):
    a = np.linspace(0, 1, 48 * 36, dtype=np.float32).reshape(36, 48)
    a[3, 4] = np.nan
    buf = io.BytesIO()
    Image.fromarray(a, "F").save(buf, format="TIFF")
    with pytest.raises(ImageRejected, match="non-finite pixel values"):
        decode_image(write(tmp_path, "nan.tif", buf.getvalue()), 1024)


def test_folders_missing_files_and_postscript_are_rejects(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageRejected, match="not a regular file"):
        decode_image(tmp_path / "folder.jpg", 1024)
    with pytest.raises(ImageRejected, match="no such file"):
        decode_image(str(tmp_path / "gone.jpg"), 1024)  # a str path works too
    eps = write(tmp_path, "x.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageRejected, match="not an image"):  # Pillow never hands it to Ghostscript
        decode_image(eps, 1024)


@pytest.mark.parametrize(
    "size, fmt, reason",
    [
        ((8, 8), "JPEG", "8x8 px: the shorter side is under 32 px"),
        ((16, 16), "PNG", "16x16 px: the shorter side is under 32 px"),
        ((4000, 20), "PNG", "4000x20 px: the shorter side is under 32 px"),
        ((65000, 1), "PNG", "65000x1 px: the shorter side is under 32 px"),
        ((800, 150), "JPEG", "800x150 px: sides more than 4:1 apart, a strip or banner"),
        ((100, 1000), "PNG", "100x1000 px: sides more than 4:1 apart"),
    ],
)
def test_degenerate_geometry_is_refused_not_scored(tmp_path, size, fmt, reason):
    """An 8x8 JPEG or a 4000x20 strip was resized into a lesion-shaped input and given a decision; fetch, predict
    and calibrate all decode through this check."""
    from melanoma.data.images import decode_pixels

    im = lesion_image(0).resize(size) if max(size) < 20000 else Image.new("RGB", size, (120, 80, 60))
    path = write(tmp_path, f"odd.{fmt.lower()}", save(im.convert("RGB"), fmt))
    for decode in (lambda: decode_image(path, 1024), lambda: decode_pixels(path, 1024, draft=128)):
        with pytest.raises(ImageRejected, match=reason):
            decode()


def test_the_smallest_accepted_geometry_still_decodes(tmp_path):
    for size in ((32, 32), (128, 32)):  # the demo's 32 px lesions, and exactly 4:1
        im = lesion_image(0).resize(size)
        assert decode_image(write(tmp_path, "ok.png", save(im, "PNG")), 1024).width == size[0]
