"""Hostile and odd inputs for /upscale, each with the answer it must get (shared by the in-process
test and the live-server memory test).

Bombs are built by hand (a PNG/JPEG header declaring 50,000×50,000 pixels around a few bytes of
data), so no large file is stored or ever decoded.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from service_support import image_bytes

BOMB_SIDE = 50_000


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    query: str = "scale=2"
    content_type: str = "image/png"
    status: int = 200
    code: str | None = None  # the error code expected when status is not 200
    size: tuple[int, int] | None = None  # expected output (width, height) when status is 200


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_by_hand(width: int, height: int, depth: int, colour: int, raw_rows: bytes) -> bytes:
    """A PNG written chunk by chunk (Pillow cannot write 48-bit RGB, nor lie about its size)."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw_rows))
        + _chunk(b"IEND", b"")
    )


def png_bomb() -> bytes:
    """50,000×50,000 1-bit grey declared, one row of data present: 2.5 GP in ~100 bytes."""
    return png_by_hand(BOMB_SIDE, BOMB_SIDE, 1, 0, b"\x00" * (1 + BOMB_SIDE // 8))


def jpeg_bomb() -> bytes:
    """A real 8×8 JPEG whose frame header (SOF0) is edited to claim 50,000×50,000."""
    data = bytearray(image_bytes(8, 8, fmt="JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", BOMB_SIDE, BOMB_SIDE)
    return bytes(data)


def rgb48_png(width: int = 6, height: int = 5) -> bytes:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    return png_by_hand(width, height, 16, 2, rows)


def animated(fmt: str, **save: object) -> bytes:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], **save)
    return buffer.getvalue()


def huge_exif(fmt: str, comment_bytes: int) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * comment_bytes  # ImageDescription
    exif[0x0112] = 6  # orientation: rotate, so the EXIF is really used
    buffer = io.BytesIO()
    Image.new("RGB", (8, 4), "white").save(buffer, fmt, exif=exif.tobytes())
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) % 4, "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    return buffer.getvalue()


def cases() -> list[Hostile]:
    png = image_bytes(8, 8)
    jpeg = image_bytes(32, 32, fmt="JPEG")
    return [
        Hostile("zero-byte", b"", status=400, code="undecodable_image"),
        Hostile("truncated PNG", image_bytes(32, 32)[:90], status=400, code="undecodable_image"),
        Hostile(
            "truncated JPEG",
            jpeg[: len(jpeg) // 2],
            content_type="image/jpeg",
            status=400,
            code="undecodable_image",
        ),
        Hostile("garbage", bytes(range(256)) * 8, status=400, code="undecodable_image"),
        Hostile("PNG declared as JPEG (bytes decide)", png, content_type="image/jpeg", size=(16, 16)),
        Hostile(
            "PNG declared as text", png, content_type="text/plain", status=415, code="unsupported_media_type"
        ),
        Hostile("no Content-Type", png, content_type="", status=415, code="unsupported_media_type"),
        Hostile("PNG bomb 50000x50000", png_bomb(), status=413, code="input_too_large"),
        Hostile(
            "JPEG bomb 50000x50000",
            jpeg_bomb(),
            content_type="image/jpeg",
            status=413,
            code="input_too_large",
        ),
        Hostile("JPEG with 60 KB EXIF", huge_exif("JPEG", 60_000), content_type="image/jpeg", size=(8, 16)),
        Hostile("PNG with 1 MB EXIF", huge_exif("PNG", 1_000_000), size=(8, 16)),
        Hostile("CMYK JPEG", image_bytes(8, 8, "CMYK", "JPEG"), content_type="image/jpeg", size=(16, 16)),
        Hostile("16-bit grey PNG", image_bytes(8, 8, "I;16"), size=(16, 16)),
        Hostile("16-bit RGB PNG", rgb48_png(), size=(12, 10)),
        Hostile("palette + transparency", palette_with_transparency(), size=(16, 16)),
        Hostile(
            "animated GIF",
            animated("GIF"),
            content_type="image/gif",
            status=415,
            code="unsupported_media_type",
        ),
        Hostile(
            "animated WebP",
            animated("WEBP"),
            content_type="image/webp",
            status=415,
            code="unsupported_media_type",
        ),
        Hostile("animated PNG", animated("PNG"), status=415, code="unsupported_media_type"),
        Hostile("MPO (JPEG + extra picture)", animated("MPO"), content_type="image/jpeg", size=(16, 16)),
        Hostile("1x1", image_bytes(1, 1), size=(2, 2)),
        Hostile("1x1 at scale 30", image_bytes(1, 1), query="scale=30", size=(30, 30)),
        Hostile("1x1024", image_bytes(1, 1024), size=(2, 2048)),
        Hostile("1024x1", image_bytes(1024, 1), query="scale_x=1.5&scale_y=3", size=(1536, 3)),
        Hostile("scale just above 1", png, query="scale=1.0001", size=(8, 8)),
        Hostile("scale at max", image_bytes(4, 4), query="scale=30", size=(120, 120)),
        Hostile("scale above max", png, query="scale=30.0001", status=422, code="invalid_parameter"),
        Hostile("NaN scale", png, query="scale=NaN", status=422, code="invalid_parameter"),
        Hostile("inf scale", png, query="scale=inf", status=422, code="invalid_parameter"),
        Hostile("-inf scale_x", png, query="scale_x=-inf&scale_y=2", status=422, code="invalid_parameter"),
        Hostile("negative scale", png, query="scale=-2", status=422, code="invalid_parameter"),
        Hostile("huge scale", png, query="scale=1e308", status=422, code="invalid_parameter"),
        Hostile("width 10^30", png, query="width=" + "9" * 30, status=422, code="invalid_parameter"),
        Hostile("NaN deadline", png, query="scale=2&deadline_ms=nan", status=422, code="invalid_parameter"),
    ]
