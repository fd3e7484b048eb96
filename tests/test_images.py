"""Every odd input the fetch stage meets: converted to upright 8-bit RGB, or refused with a reason."""
import io

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
    im = {"1-bit": Image.fromarray(a > 0), "jpeg": Image.fromarray(a), "blank": Image.new("RGB", (64, 64)),
          "blurred": Image.fromarray(a).filter(ImageFilter.GaussianBlur(3))}[kind]
    data = jpeg_bytes(im.convert("RGB"), quality=75) if kind == "jpeg" else save(im, "PNG")
    with pytest.raises(ImageRejected, match="two-colour or blank image"):
        decode_image(write(tmp_path, f"m_{kind}.png", data), 1024)


def test_sixteen_bit_png_scaled_to_eight_bits(tmp_path):
    a = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    im = Image.fromarray(a)
    assert im.mode.startswith("I")
    n = decode_image(write(tmp_path, "deep.png", save(im, "PNG")), 1024)
    px = np.asarray(decoded(n))
    assert px.dtype == np.uint8 and px.shape == (30, 40, 3)
    assert px.max() >= 250 and px.min() <= 5  # the full range survives, not clipped to white


def test_huge_image_downscaled(tmp_path):
    im = lesion_image(4, (6000, 4000))
    n = decode_image(write(tmp_path, "big.jpg", jpeg_bytes(im, quality=50)), max_side=1024)
    assert (n.orig_width, n.orig_height) == (6000, 4000)
    assert (n.width, n.height) == (1024, 683)
    assert decoded(n).size == (1024, 683)


def test_exif_orientation_applied(tmp_path):
    im = lesion_image(3, size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    n = decode_image(write(tmp_path, "rot.jpg", jpeg_bytes(im, exif=exif)), 1024)
    assert (n.width, n.height) == (20, 40)
    assert n.suffix == ".jpg"  # re-encoded upright; the original bytes would display sideways elsewhere


@pytest.mark.parametrize("name,data,reason", [
    ("empty.jpg", b"", r"empty file \(0 bytes\)"),
    ("notes.txt", b"this is not an image\n", "not an image"),
    ("fake.jpg", b"\xff\xd8\xff\xe0garbage", "truncated or corrupt"),
])
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
    noisy = np.clip(np.asarray(lesion_image(7, size=(2048, 1536))).astype(int) + rng.integers(-8, 9, (1536, 2048, 3)),
                    0, 255).astype(np.uint8)
    n = decode_image(write(tmp_path, "big.png", save(Image.fromarray(noisy), "PNG")), max_side=1024)
    assert n.suffix == ".jpg" and (n.width, n.height) == (1024, 768)
    png = save(decoded(n).convert("RGB"), "PNG")
    assert len(n.data) < len(png) / 2
