"""Tests for the image checks in pgs_dali.shards.validate."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pgs_dali.shards.validate import (
    DEFAULT_MAX_PIXELS,
    check_image,
    decode_check,
    reason_category,
    sniff_format,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ODD_IMAGES = DATA / "odd-images"
COCO_IMAGES = DATA / "coco-mini" / "images"

# Expected check_image result for every file in odd-images at the default
# max_pixels; None means the file passes.
ODD_IMAGE_RESULTS = {
    "Channel_digital_image_CMYK_color.jpg": None,
    "pil_sample_cmyk.jpg": None,
    "flower.jpg": None,
    "giant-image.jpg": "too many pixels (20000 x 14000 > 67108864)",
    "hopper_orientation_6.jpg": None,
    "hopper.webp": None,
    "i_trns.png": None,
    "tbgn2c16.png": None,
    "pil123p.png": None,
    "transparent.png": None,
    "broken.png": "corrupt header",
    "corrupt-header.jpg": "corrupt header",
    "junk_jpeg_header.jpg": "corrupt header",
    "truncated.jpg": "truncated",
    "truncated_jpeg.jpg": "truncated",
    "truncated_image.png": "truncated",
}

needs_odd_images = pytest.mark.skipif(not ODD_IMAGES.is_dir(), reason="odd-images data is absent")
needs_coco = pytest.mark.skipif(not COCO_IMAGES.is_dir(), reason="coco-mini data is absent")


def _encode(image_format: str, size: tuple[int, int] = (80, 64), **options) -> bytes:
    rng = np.random.default_rng(0)
    # Smooth gradients plus noise compress like a photo, not like pure noise.
    width, height = size
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    pixels = ramp + rng.normal(0, 20, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if image_format == "GIF":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


GENERATED = {
    "jpeg": lambda: _encode("JPEG", quality=90),
    "jpeg-progressive": lambda: _encode("JPEG", progressive=True),
    "png": lambda: _encode("PNG"),
    "webp-lossy": lambda: _encode("WEBP"),
    "webp-lossless": lambda: _encode("WEBP", lossless=True),
    "bmp": lambda: _encode("BMP"),
    "tiff": lambda: _encode("TIFF"),
}


def _cut_points(size: int) -> list[int]:
    """Byte counts to remove from the end: the marker bytes, then larger parts."""
    return [1, 2, 5, 12, 100, size // 3, size // 2]


@needs_odd_images
@pytest.mark.parametrize("name", sorted(ODD_IMAGE_RESULTS))
def test_odd_image_results(name):
    data = (ODD_IMAGES / name).read_bytes()
    assert check_image(data) == ODD_IMAGE_RESULTS[name]
    assert decode_check(data) == ODD_IMAGE_RESULTS[name]


@needs_odd_images
def test_odd_images_table_is_complete():
    assert sorted(p.name for p in ODD_IMAGES.iterdir()) == sorted(ODD_IMAGE_RESULTS)


@needs_odd_images
def test_giant_image_passes_without_limit():
    data = (ODD_IMAGES / "giant-image.jpg").read_bytes()
    assert check_image(data, max_pixels=None) is None
    assert check_image(data, max_pixels=20000 * 14000) is None
    assert check_image(data, max_pixels=20000 * 14000 - 1) == (
        "too many pixels (20000 x 14000 > 279999999)"
    )


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_complete_passes(name):
    data = GENERATED[name]()
    assert check_image(data) is None
    assert decode_check(data) is None


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_truncations_fail(name):
    data = GENERATED[name]()
    for cut in _cut_points(len(data)):
        assert check_image(data[:-cut]) == "truncated", f"{name} without its last {cut} bytes"
        assert decode_check(data[:-cut]) == "truncated", f"{name} without its last {cut} bytes"


@pytest.mark.parametrize("name", ["jpeg", "jpeg-progressive", "png", "webp-lossy", "bmp"])
def test_trailing_bytes_pass(name):
    data = GENERATED[name]()
    # Longer than the end-marker search window, so the slow path confirms.
    assert check_image(data + bytes(10_000)) is None
    assert check_image(data + b"trailer") is None


@needs_coco
def test_coco_photos_pass_and_truncations_fail():
    for path in sorted(COCO_IMAGES.glob("*.jpg"))[:6]:
        data = path.read_bytes()
        assert check_image(data) is None, path.name
        for cut in (2, 1000, len(data) // 2):
            assert check_image(data[:-cut]) == "truncated", f"{path.name} without {cut} bytes"


@needs_coco
def test_check_is_cheap_for_photos():
    photos = [path.read_bytes() for path in sorted(COCO_IMAGES.glob("*.jpg"))]
    for data in photos[:3]:
        check_image(data)  # warm up Pillow's plugins
    start = time.perf_counter()
    for data in photos:
        check_image(data)
    mean_seconds = (time.perf_counter() - start) / len(photos)
    # Measured about 50 us per photo on a 2-core x86 CPU. The bound leaves
    # room for a loaded machine.
    assert mean_seconds < 1e-3


def test_empty_and_unknown_data():
    assert check_image(b"") == "empty image file"
    assert check_image(b"hello world") == "unknown image format"
    assert check_image(b"\x00" * 100) == "unknown image format"
    assert decode_check(bytearray()) == "empty image file"


def test_gif_is_unsupported():
    data = _encode("GIF")
    assert sniff_format(data) == "gif"
    assert check_image(data) == "unsupported image format (GIF)"


def test_jpeg_junk_between_markers():
    data = GENERATED["jpeg"]()
    # Insert bytes between the APP0 segment (ends at byte 20) and the next marker.
    assert data[20] == 0xFF
    damaged = data[:20] + b"hello" + data[20:]
    assert Image.open(io.BytesIO(damaged)).size == (80, 64)  # Pillow tolerates it
    assert check_image(damaged) == "corrupt header"


@pytest.mark.parametrize(
    "damaged",
    [
        b"\xff\xd8\xff",
        b"\xff\xd8\xff\xe0\x00\x10JFIF",
        b"\xff\xd8\xff\xe0\xff\xff" + bytes(10),
        b"\x89PNG\r\n\x1a\n" + bytes(30),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + bytes(17),
        b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(12),
        b"BM" + bytes(40),
        b"II*\x00" + bytes(10),
    ],
)
def test_corrupt_headers(damaged):
    assert check_image(damaged) == "corrupt header"


def test_max_pixels_boundary():
    data = GENERATED["png"]()
    assert check_image(data, max_pixels=80 * 64) is None
    assert check_image(data, max_pixels=80 * 64 - 1) == "too many pixels (80 x 64 > 5119)"
    assert DEFAULT_MAX_PIXELS == 67_108_864


@pytest.mark.parametrize("name", ["tiff", "webp-lossless", "bmp", "jpeg"])
def test_max_pixels_every_format(name):
    data = GENERATED[name]()
    assert check_image(data, max_pixels=100) == "too many pixels (80 x 64 > 100)"


def test_decode_check_finds_damaged_data():
    data = bytearray(GENERATED["png"]())
    # Flip bytes inside the image data: the IEND chunk is intact, so only a
    # full decode (CRC and zlib checks) notices.
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(8)
    assert check_image(bytes(data)) is None
    reason = decode_check(bytes(data))
    assert reason is not None
    assert reason_category(reason) == "decode failed"


def test_load_truncated_images_setting(monkeypatch):
    data = GENERATED["jpeg"]()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert check_image(data[:-100]) == "truncated"
    assert check_image(data) is None


def test_invalid_arguments():
    with pytest.raises(TypeError, match="bytes-like, got str"):
        check_image("not bytes")
    with pytest.raises(ValueError, match="at least 1 or None, got 0"):
        check_image(b"x", max_pixels=0)
    with pytest.raises(TypeError, match="int or None, got 1.5"):
        check_image(b"x", max_pixels=1.5)


def test_reason_category():
    assert reason_category("truncated") == "truncated"
    assert reason_category("unsupported image format (GIF)") == "unsupported image format"
    assert reason_category("decode failed: broken PNG file (chunk b'IDAT')") == "decode failed"


# DALI's CPU decoder is the real consumer: every image check_image accepts
# must decode there, or one bad sample stops the pipeline.


def _dali_decode_shapes(images: list[bytes]) -> list[tuple[int, ...]]:
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, types

    arrays = [np.frombuffer(data, dtype=np.uint8) for data in images]

    @dali.pipeline_def(batch_size=len(arrays), num_threads=1, device_id=None)
    def pipeline():
        encoded = fn.external_source(source=lambda: arrays, batch=True)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()
    (decoded,) = pipe.run()
    return [tuple(np.asarray(decoded[i]).shape) for i in range(len(arrays))]


@needs_odd_images
def test_accepted_odd_images_decode_in_dali():
    accepted = [name for name, result in sorted(ODD_IMAGE_RESULTS.items()) if result is None]
    images = [(ODD_IMAGES / name).read_bytes() for name in accepted]
    assert all(check_image(data) is None for data in images)

    shapes = _dali_decode_shapes(images)
    for name, data, shape in zip(accepted, images, shapes, strict=True):
        width, height = Image.open(io.BytesIO(data)).size
        assert shape == (height, width, 3), name


def test_accepted_generated_images_decode_in_dali():
    accepted = []
    for name, encode in sorted(GENERATED.items()):
        data = encode()
        candidates = [data, data + bytes(10_000)]
        candidates += [data[:-cut] for cut in _cut_points(len(data))]
        accepted += [candidate for candidate in candidates if check_image(candidate) is None]
    # Only the complete file and the one with trailing bytes pass, for every
    # format, and each must decode.
    assert len(accepted) == 2 * len(GENERATED)

    shapes = _dali_decode_shapes(accepted)
    assert shapes == [(64, 80, 3)] * len(accepted)
