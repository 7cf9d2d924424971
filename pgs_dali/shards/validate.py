"""Cheap checks that an encoded image will decode, run before DALI decodes it.

One corrupt sample makes DALI's image decoder stop the whole pipeline, so the
loader checks every image with :func:`check_image` first and skips the ones
that fail. The check reads the magic bytes and the header, compares the pixel
count with a limit, and checks that the data is complete (end marker, or the
length the header declares). Only a JPEG or BMP that fails the cheap
completeness test is decoded with Pillow, because some valid files carry
trailing bytes. Damage inside the compressed data passes :func:`check_image`.
:func:`decode_check` is the strict version that decodes every image
completely (used by ``pgs-dali index --verify``).

Reasons returned (the text before `` (`` or ``:`` is the category, see
:func:`reason_category`):

- ``"empty image file"``
- ``"unknown image format"``: the magic bytes match none of JPEG, PNG, WebP,
  BMP, TIFF.
- ``"unsupported image format (GIF)"``: a format DALI 2.4 cannot decode.
- ``"corrupt header"``: the header is malformed or Pillow cannot open it.
- ``"too many pixels (W x H > max_pixels)"``
- ``"truncated"``: the data ends early.
- ``"decode failed: <Pillow message>"``
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

from PIL import Image, ImageFile

# 8192 x 8192 = 67,108,864 pixels. A decoded RGB image of this size takes
# 192 MiB, far more than CLIP training needs before it resizes to 224 px.
DEFAULT_MAX_PIXELS = 8192 * 8192

# The JPEG and PNG end markers are searched in this many bytes at the end of
# the data. Files whose marker lies further back take a slower path.
_TAIL_BYTES = 4096

# The complete IEND chunk: zero length, type, and its fixed CRC.
_PNG_IEND_CHUNK = b"\x00\x00\x00\x00IEND\xaeB`\x82"

# Exceptions Pillow raises on malformed data.
_PIL_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)

_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}

# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and
# CC (DAC) share the range but are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class _CorruptHeader(Exception):
    """Raised by the header parsers; turned into the "corrupt header" reason."""


def sniff_format(data: bytes) -> str | None:
    """Return the image format named by the magic bytes, or None.

    Returns one of ``"jpeg"``, ``"png"``, ``"webp"``, ``"bmp"``, ``"tiff"``,
    ``"gif"``.

    Example:
        >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(20))
        'png'
        >>> sniff_format(b"hello") is None
        True
    """
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def check_image(data: bytes | bytearray | memoryview, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Check cheaply that an encoded image is complete and decodable.

    Costs a header parse and a Pillow ``Image.open`` for a complete file.
    A JPEG or BMP that looks incomplete is decoded by Pillow (JPEG at 1/8
    scale) to tell a truncated file from one with trailing bytes.

    Args:
        data: the encoded image file.
        max_pixels: largest accepted width x height, from the header alone;
            None accepts any size. The default is 8192 * 8192 = 67,108,864.

    Returns:
        None for an image that passes, else a short reason (see the module
        docstring).

    Raises:
        TypeError: if ``data`` is not bytes-like.
        ValueError: if ``max_pixels`` is not None and below 1.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (64, 48)).save(buffer, "JPEG")
        >>> jpeg = buffer.getvalue()
        >>> check_image(jpeg) is None
        True
        >>> check_image(jpeg[:-2])  # without the end marker
        'truncated'
        >>> check_image(jpeg, max_pixels=1000)
        'too many pixels (64 x 48 > 1000)'
    """
    data = _as_bytes(data)
    _check_max_pixels(max_pixels)
    if not data:
        return "empty image file"
    image_format = sniff_format(data)
    if image_format is None:
        return "unknown image format"
    if image_format == "gif":
        # NOTE: DALI 2.4's CPU decoder (nvImageCodec) fails on GIF, so GIF
        # files are rejected although Pillow reads them.
        return "unsupported image format (GIF)"

    try:
        size = _header_size(image_format, data)
    except _CorruptHeader:
        return "corrupt header"
    reason = _pixel_reason(size, max_pixels)
    if reason is not None:
        return reason

    if image_format == "webp" and not _webp_complete(data):
        # Pillow cannot even open a partial WebP, so there is nothing to confirm.
        return "truncated"

    try:
        image = _open(data, image_format, size)
    except _PIL_ERRORS:
        return "corrupt header"

    if image_format == "png":
        # Pillow decodes a PNG that lacks its IEND chunk, but DALI's PNG
        # decoder fails on it, so a missing IEND is final.
        return None if _png_complete(data) else "truncated"
    if image_format == "tiff":
        return None if _tiff_complete(image, len(data)) else "truncated"
    if _ends_properly(image_format, data):
        return None
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Pillow is set to accept truncated files, so it cannot confirm.
        return "truncated"
    return _decode_reason(image, image_format)


def decode_check(data: bytes | bytearray | memoryview, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Check an encoded image by decoding it completely with Pillow.

    Slower than :func:`check_image` (a full decode) but also finds damage
    inside the compressed data that a header and end-marker check cannot
    see. Takes the same arguments and returns the same reasons.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (8, 8)).save(buffer, "PNG")
        >>> decode_check(buffer.getvalue()) is None
        True
        >>> decode_check(b"")
        'empty image file'
    """
    reason = check_image(data, max_pixels)
    if reason is not None:
        return reason
    data = _as_bytes(data)
    image_format = sniff_format(data)
    try:
        image = _open(data, image_format, _header_size(image_format, data))
    except (_PIL_ERRORS, _CorruptHeader):
        return "corrupt header"
    return _decode_reason(image, image_format, draft=False)


def reason_category(reason: str) -> str:
    """Return the reason without its details, for counting.

    Example:
        >>> reason_category("too many pixels (20000 x 14000 > 67108864)")
        'too many pixels'
        >>> reason_category("decode failed: broken data stream")
        'decode failed'
    """
    for separator in (" (", ": "):
        position = reason.find(separator)
        if position > 0:
            reason = reason[:position]
    return reason


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes-like, got {type(data).__name__}")


def _check_max_pixels(max_pixels: object) -> None:
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int):
        raise TypeError(f"max_pixels must be an int or None, got {max_pixels!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1 or None, got {max_pixels}")


def _pixel_reason(size: tuple[int, int], max_pixels: int | None) -> str | None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        return f"too many pixels ({width} x {height} > {max_pixels})"
    return None


def _open(data: bytes, image_format: str, size: tuple[int, int]) -> Image.Image:
    """Open with Pillow, even past its decompression-bomb limit when ``max_pixels`` allowed the size."""
    stream = io.BytesIO(data)
    formats = [_PIL_FORMAT[image_format]]
    if size[0] * size[1] <= Image.MAX_IMAGE_PIXELS:
        return Image.open(stream, formats=formats)
    # NOTE: only reached when max_pixels is None or above Pillow's limit.
    # catch_warnings changes process-wide state and is not thread-safe.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(stream, formats=formats)
        except Image.DecompressionBombError:
            previous = Image.MAX_IMAGE_PIXELS
            # Lift Pillow's global limit for this call only, because the
            # caller accepted this size through max_pixels.
            Image.MAX_IMAGE_PIXELS = None
            try:
                return Image.open(io.BytesIO(data), formats=formats)
            finally:
                Image.MAX_IMAGE_PIXELS = previous


def _decode_reason(image: Image.Image, image_format: str, *, draft: bool = True) -> str | None:
    """Decode with Pillow and return None, "truncated" or "decode failed: ..."."""
    try:
        if draft and image_format == "jpeg":
            # Decoding at 1/8 scale reads the whole file at a fraction of the cost.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except _PIL_ERRORS as error:
        message = str(error) or type(error).__name__
        if "truncated" in message.lower():
            return "truncated"
        return f"decode failed: {message}"
    return None


def _ends_properly(image_format: str, data: bytes) -> bool:
    """Check the JPEG end marker or the BMP file size cheaply."""
    if image_format == "jpeg":
        return b"\xff\xd9" in data[-_TAIL_BYTES:]
    if image_format == "bmp":
        (file_size,) = struct.unpack_from("<I", data, 2)
        return file_size == 0 or len(data) >= file_size
    return True


def _webp_complete(data: bytes) -> bool:
    """Check that the data is at least as long as the RIFF header declares."""
    (riff_size,) = struct.unpack_from("<I", data, 4)
    return len(data) >= 8 + riff_size


def _png_complete(data: bytes) -> bool:
    """Check that the PNG has its complete IEND chunk (trailing bytes are fine)."""
    if _PNG_IEND_CHUNK in data[-_TAIL_BYTES:]:
        return True
    # The IEND chunk lies further back (long trailing data) or is missing:
    # walk the chunk list to find out.
    position = 8
    end = len(data)
    while position + 8 <= end:
        length, chunk_type = struct.unpack_from(">I4s", data, position)
        position += 12 + length
        if chunk_type == b"IEND":
            return position <= end
    return False


def _tiff_complete(image: Image.Image, data_size: int) -> bool:
    """Check that every strip or tile of the first TIFF page lies inside the data."""
    tags = getattr(image, "tag_v2", {})
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):  # strips, tiles
        offsets = tags.get(offsets_tag)
        counts = tags.get(counts_tag)
        if offsets is None or counts is None:
            continue
        if isinstance(offsets, int):
            offsets, counts = (offsets,), (counts,)
        if any(offset + count > data_size for offset, count in zip(offsets, counts)):
            return False
    # NOTE: a TIFF without strip or tile tags is accepted unchecked; only a
    # full decode (decode_check) finds its damage.
    return True


def _header_size(image_format: str, data: bytes) -> tuple[int, int]:
    """Return (width, height) from the header.

    Raises:
        _CorruptHeader: if the header is malformed.
    """
    try:
        if image_format == "jpeg":
            size = _jpeg_size(data)
        elif image_format == "png":
            if data[12:16] != b"IHDR":
                raise _CorruptHeader("first PNG chunk is not IHDR")
            size = struct.unpack_from(">II", data, 16)
        elif image_format == "webp":
            size = _webp_size(data)
        elif image_format == "bmp":
            size = _bmp_size(data)
        else:
            size = _tiff_size(data)
    except (struct.error, IndexError) as error:
        raise _CorruptHeader(f"header too short: {error}") from error
    if size[0] <= 0 or size[1] <= 0:
        raise _CorruptHeader(f"image size {size}")
    return size


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG marker segments up to the start of scan and return the frame size.

    Bytes between segments that are not a marker make the header corrupt:
    Pillow skips them with a warning, but DALI's decoder fails.
    """
    position = 2
    size = None
    end = len(data)
    while True:
        if position + 4 > end:
            raise _CorruptHeader("JPEG header ends before the start of scan")
        if data[position] != 0xFF:
            raise _CorruptHeader(f"junk before JPEG marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1  # fill byte
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            position += 2  # markers without a length field
            continue
        if marker in (0x00, 0xD8, 0xD9):
            raise _CorruptHeader(f"unexpected JPEG marker 0xFF{marker:02X} at byte {position}")
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2 or position + 2 + length > end:
            raise _CorruptHeader(f"JPEG segment 0xFF{marker:02X} has invalid length {length}")
        if marker in _SOF_MARKERS:
            height, width = struct.unpack_from(">HH", data, position + 5)
            size = (width, height)
        if marker == 0xDA:
            if size is None:
                raise _CorruptHeader("JPEG start of scan before any frame header")
            return size
        position += 2 + length


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _CorruptHeader("VP8 start code missing")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _CorruptHeader("VP8L signature missing")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise _CorruptHeader(f"unknown WebP chunk {chunk!r}")


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:
        return struct.unpack_from("<HH", data, 18)
    if header_size >= 40:
        width, height = struct.unpack_from("<ii", data, 18)
        return width, abs(height)
    raise _CorruptHeader(f"unknown BMP header size {header_size}")


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Read ImageWidth (tag 256) and ImageLength (tag 257) from the first IFD."""
    byte_order = "<" if data[:2] == b"II" else ">"
    (ifd_offset,) = struct.unpack_from(byte_order + "I", data, 4)
    (entry_count,) = struct.unpack_from(byte_order + "H", data, ifd_offset)
    found: dict[int, int] = {}
    for entry in range(entry_count):
        position = ifd_offset + 2 + 12 * entry
        tag, field_type = struct.unpack_from(byte_order + "HH", data, position)
        if tag not in (256, 257):
            continue
        if field_type == 3:  # SHORT
            (found[tag],) = struct.unpack_from(byte_order + "H", data, position + 8)
        elif field_type == 4:  # LONG
            (found[tag],) = struct.unpack_from(byte_order + "I", data, position + 8)
        else:
            raise _CorruptHeader(f"TIFF size tag {tag} has field type {field_type}")
    if 256 not in found or 257 not in found:
        raise _CorruptHeader("TIFF first IFD has no image size")
    return found[256], found[257]
