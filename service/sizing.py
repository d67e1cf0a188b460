"""From the request's scale parameters and the decoded input size to the output size, or a 422.

Pure functions, so every rule (finite, 1 < s ≤ max, one way of asking at a time) is unit-tested
without HTTP. `execution_mode` decides whether a request is answered in the response or queued.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from service.errors import InvalidParameter, PayloadTooLarge


@dataclass(frozen=True)
class ScaleRequest:
    """The ways a client can ask for a size: `scale`, `scale_x`+`scale_y`, or `width`/`height`."""

    scale: float | None = None
    scale_x: float | None = None
    scale_y: float | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class OutputSize:
    height: int
    width: int
    scale_y: float  # effective factors, output / input
    scale_x: float

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def scale(self) -> float:
        """One number for quality prediction of asymmetric outputs: the geometric mean."""
        return math.sqrt(self.scale_y * self.scale_x)


def _round(x: float) -> int:
    """Half-up rounding (Python's round() is half-to-even: 22.5 -> 22)."""
    return math.floor(x + 0.5)


def _check_factor(name: str, value: float, max_scale: float) -> float:
    if not math.isfinite(value):
        raise InvalidParameter(f"{name} must be a finite number, got {value}", code="invalid_parameter")
    if not 1.0 < value <= max_scale:
        raise InvalidParameter(f"{name} must satisfy 1 < {name} ≤ {max_scale:g}, got {value:g}")
    return value


def resolve_output(in_h: int, in_w: int, req: ScaleRequest, max_scale: float) -> OutputSize:
    """Output size for an `in_h`×`in_w` input; raises InvalidParameter (422) on any bad combination."""
    given_scale = req.scale is not None
    given_xy = req.scale_x is not None or req.scale_y is not None
    given_size = req.width is not None or req.height is not None
    if given_scale + given_xy + given_size == 0:
        raise InvalidParameter("give the output size: scale, scale_x and scale_y, or width and/or height")
    if given_scale + given_xy + given_size > 1:
        raise InvalidParameter("use only one of: scale, scale_x/scale_y, width/height")

    if given_scale:
        sy = sx = _check_factor("scale", float(req.scale), max_scale)  # type: ignore[arg-type]
        out_h, out_w = _round(in_h * sy), _round(in_w * sx)
    elif given_xy:
        if req.scale_x is None or req.scale_y is None:
            raise InvalidParameter("scale_x and scale_y must be given together")
        sx = _check_factor("scale_x", float(req.scale_x), max_scale)
        sy = _check_factor("scale_y", float(req.scale_y), max_scale)
        out_h, out_w = _round(in_h * sy), _round(in_w * sx)
    else:
        if (req.width is not None and req.width < 1) or (req.height is not None and req.height < 1):
            raise InvalidParameter("width and height must be positive")
        # One side given: keep the aspect ratio.
        out_w = req.width if req.width is not None else _round(in_w * req.height / in_h)  # type: ignore[operator]
        out_h = req.height if req.height is not None else _round(in_h * req.width / in_w)  # type: ignore[operator]
        for side, out_px, in_px in (("width", out_w, in_w), ("height", out_h, in_h)):
            if not 1.0 < out_px / in_px <= max_scale:
                raise InvalidParameter(
                    f"output {side} {out_px} is {out_px / in_px:.4g}× the input {side} {in_px}; "
                    f"it must be more than 1× and at most {max_scale:g}×"
                )
    return OutputSize(height=max(1, out_h), width=max(1, out_w), scale_y=out_h / in_h, scale_x=out_w / in_w)


class ExecutionMode(Enum):
    SYNC = "sync"  # answered in the HTTP response
    QUEUED = "queued"  # 202 + a job id; a worker renders it (service/jobs)


def execution_mode(
    out: OutputSize, max_sync_pixels: int, max_job_pixels: int, requested_async: bool = False
) -> ExecutionMode:
    """Sync up to `max_sync_pixels` unless a job is asked for; a job up to `max_job_pixels`; else 413."""
    if out.pixels > max_job_pixels:
        raise PayloadTooLarge(
            f"output {out.width}×{out.height} = {out.pixels} pixels exceeds the limit of {max_job_pixels}",
            code="output_too_large",
        )
    if requested_async or out.pixels > max_sync_pixels:
        return ExecutionMode.QUEUED
    return ExecutionMode.SYNC
