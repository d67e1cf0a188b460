"""Bytes in, tensors to the model, bytes out: decoding and encoding with Pillow.

Limits are checked from the header before pixels are decoded (a 50 KB PNG can hold a 1 GP bomb).
Every input mode becomes RGB for the model; what the model cannot see is kept aside and restored:
greyscale comes back greyscale (16-bit PNG stays 16-bit), alpha is upscaled bicubically and
re-attached (PNG/WebP) or flattened onto white (JPEG), EXIF orientation is applied once.
Animated images are refused (415): one upscaled frame of an animation would be a wrong answer;
MPO (a JPEG carrying extra pictures) is served as its primary picture.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import PayloadTooLarge, UndecodableImage, UnsupportedMediaType

# Output format name -> (Pillow format, media type).
FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
_PIL_TO_FORMAT = {pil: name for name, (pil, _) in FORMATS.items()}
# Declared body types we accept; the bytes decide the actual format.
ACCEPTED_MEDIA_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/pjpeg", "image/webp", "application/octet-stream"}
)
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass(frozen=True)
class Encoding:
    """Output encoder settings."""

    png_compress_level: int = 3
    jpeg_quality: int = 92
    webp_quality: int = 90


@dataclass
class DecodedImage:
    """An input ready for the model, plus what is needed to encode the output like it."""

    rgb: np.ndarray  # (h, w, 3) uint8, or float32 in [0, 1] for 16-bit sources
    alpha: Image.Image | None  # mode "L", same size, None when opaque
    grey: bool
    high_bit_depth: bool
    format: str  # png | jpeg | webp
    icc_profile: bytes | None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def check_media_type(content_type: str | None) -> None:
    """415 unless the declared type is one we decode (or a generic byte stream we sniff)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in ACCEPTED_MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media or '(none)'!r}; send image/png, image/jpeg or image/webp "
            "as the body, or multipart/form-data with a 'file' field"
        )


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(_PIL_TO_FORMAT))
    except UnidentifiedImageError:
        pass
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}", code="input_too_large") from exc
    except Exception as exc:  # Pillow plugins raise assorted errors on hostile headers
        raise UndecodableImage(f"cannot read the image header: {exc}") from exc
    try:  # a real image of a format we do not serve is a 415, garbage is a 400
        other = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise UndecodableImage("the body is not a PNG, JPEG or WebP image") from exc
    raise UnsupportedMediaType(f"{other.format} images are not supported; send PNG, JPEG or WebP")


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, as the decoded image will be (EXIF rotation applied): enough to size."""

    height: int
    width: int
    format: str  # png | jpeg | webp


_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"input {width}×{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            code="input_too_large",
        )


def _format_of(im: Image.Image) -> str:
    """Our format name for an opened image; 415 for types and animations we do not serve."""
    # MPO is a JPEG with extra pictures (stereo pairs, depth maps, previews): serve the primary one.
    fmt = _PIL_TO_FORMAT.get("JPEG" if im.format == "MPO" else im.format or "")
    if fmt is None:
        raise UnsupportedMediaType(f"{im.format} images are not supported; send PNG, JPEG or WebP")
    if im.format != "MPO" and getattr(im, "n_frames", 1) > 1:
        raise UnsupportedMediaType(
            f"animated images ({im.n_frames} frames) are not supported; send a single frame"
        )
    return fmt


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Read only the header: type, size and orientation, so a job can be sized without decoding.

    Corrupt pixel data behind a valid header passes here and fails in `decode` (a job then fails).
    """
    if not data:
        raise UndecodableImage("the request body is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = _open(data)
        width, height = im.size
        _check_pixels(width, height, max_pixels)
        orientation = 1
        # EXIF already read with the header (PNG may keep it after the pixels: not worth decoding for).
        raw_exif = im.info.get("exif")
        if raw_exif:
            with contextlib.suppress(Exception):  # malformed EXIF: decode() serves it as stored too
                exif = Image.Exif()
                exif.load(raw_exif)
                orientation = int(exif.get(0x0112, 1))
    if orientation in _ROTATED:
        width, height = height, width
    return ImageHeader(height=height, width=width, format=_format_of(im))


def decode(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode PNG/JPEG/WebP bytes, refusing oversized images before their pixels are decoded."""
    if not data:
        raise UndecodableImage("the request body is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
        im = _open(data)
        width, height = im.size
        _check_pixels(width, height, max_pixels)
        fmt = _format_of(im)
        icc = im.info.get("icc_profile")
        try:
            im.load()
        except Exception as exc:
            raise UndecodableImage(f"the image data is truncated or corrupt: {exc}") from exc
    with contextlib.suppress(Exception):  # malformed EXIF: serve the image as stored rather than fail
        im = ImageOps.exif_transpose(im) or im
    return _to_rgb(im, fmt, icc)


def _to_rgb(im: Image.Image, fmt: str, icc: bytes | None) -> DecodedImage:
    mode = im.mode
    grey = mode in _GREY_MODES
    has_alpha = mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in im.info
    alpha = im.convert("RGBA").getchannel("A") if has_alpha else None
    if alpha is not None and alpha.getextrema() == (255, 255):
        alpha = None  # declared but fully opaque: nothing to keep
    if mode in _HIGH_DEPTH_MODES:
        grey16 = np.asarray(im, dtype=np.float32) / 65535.0
        rgb = np.repeat(np.clip(grey16, 0.0, 1.0)[..., None], 3, axis=2)
        return DecodedImage(rgb, alpha, True, True, fmt, None)
    rgb8 = np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants
    # A CMYK profile no longer describes the RGB pixels; other profiles travel to the output.
    keep_icc = icc if mode not in ("CMYK", "1", "L", "LA", "La") else None
    return DecodedImage(rgb8, alpha, grey, False, fmt, keep_icc)


def to_tensor(img: DecodedImage) -> torch.Tensor:
    """(1, 3, h, w) float32 in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img.rgb)).permute(2, 0, 1).unsqueeze(0)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def encode(out: torch.Tensor, src: DecodedImage, fmt: str, enc: Encoding) -> bytes:
    """Encode the model output (1, 3, H, W) in [0, 1] like the source: grey, depth and alpha."""
    pil_format, _ = FORMATS[fmt]
    hwc = out[0].permute(1, 2, 0).clamp(0.0, 1.0)
    height, width = int(hwc.shape[0]), int(hwc.shape[1])
    if src.grey:
        grey = hwc.mean(dim=2)
        if src.high_bit_depth and fmt == "png" and src.alpha is None:
            image = Image.fromarray(grey.mul(65535.0).add_(0.5).to(torch.int32).numpy().astype(np.uint16))
        else:
            image = Image.fromarray(grey.mul(255.0).add_(0.5).to(torch.uint8).numpy(), "L")
    else:
        image = Image.fromarray(hwc.mul(255.0).add_(0.5).to(torch.uint8).numpy(), "RGB")

    if src.alpha is not None:
        alpha = src.alpha.resize((width, height), Image.Resampling.BICUBIC)
        if fmt == "jpeg":  # no alpha channel in JPEG: flatten onto white
            image = Image.composite(image, Image.new(image.mode, image.size, "white"), alpha)
        else:
            image.putalpha(alpha)  # L -> LA, RGB -> RGBA
    if fmt == "webp" and image.mode in ("L", "LA"):
        image = image.convert("RGBA" if image.mode == "LA" else "RGB")

    options: dict[str, object] = {}
    if src.icc_profile and image.mode in ("RGB", "RGBA"):
        options["icc_profile"] = src.icc_profile
    if fmt == "png":
        options["compress_level"] = enc.png_compress_level
    elif fmt == "jpeg":
        options["quality"] = enc.jpeg_quality
    else:
        options["quality"] = enc.webp_quality
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue()
