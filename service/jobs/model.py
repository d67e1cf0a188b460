"""The job record: explicit states, what was asked, what was chosen, where the time went, how it ended.

A record moves queued → running → succeeded | failed | cancelled | expired and never leaves a
terminal state; every backend makes each transition with a compare-and-set, so a job re-run after
a worker crash still ends exactly once. Times are Unix seconds (records cross processes), and a
record is flat so the Redis backend can keep it as a hash and compare fields in Lua.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from service.pipeline import RenderSpec


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its deadline passed before it could finish

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


TERMINAL = tuple(s.value for s in JobState if s.terminal)  # also the outcome label values


class Stage(StrEnum):
    """Where a running job is, for progress."""

    QUEUED = "queued"
    DECODING = "decoding"
    COMPUTING = "computing"  # then encoding, which is short next to it
    DONE = "done"


class JobRecord(BaseModel):
    """Everything known about one job; stored as-is by every backend."""

    id: str
    state: JobState = JobState.QUEUED
    stage: Stage = Stage.QUEUED
    created_at: float = Field(default_factory=time.time)
    deadline_at: float
    # what was asked
    method_asked: str | None = None
    tier_asked: str | None = None
    min_quality: float | None = None
    format: str  # output format
    input_bytes: int
    input_width: int
    input_height: int
    output_width: int
    output_height: int
    # what was chosen (planned at admission, replaced by the worker's choice)
    method: str | None = None
    tier: str | None = None
    predicted_psnr_db: float | None = None
    predicted_seconds: float | None = None  # compute, for the backlog and progress
    # execution
    attempts: int = 0
    ends: int = 0  # terminal transitions written: 1 once ended, whatever the retries (Redis counts it)
    worker: str | None = None
    cancel_requested: bool = False
    started_at: float | None = None
    compute_started_at: float | None = None
    finished_at: float | None = None
    queue_seconds: float | None = None  # waiting for an inference slot inside the worker
    compute_seconds: float | None = None
    encode_seconds: float | None = None
    result_bytes: int | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def spec(self) -> RenderSpec:
        return RenderSpec(self.method_asked, self.tier_asked, self.min_quality, self.format)

    def progress(self, now: float | None = None) -> float:
        """0 queued … 1 done; during compute, the elapsed share of the predicted compute time."""
        if self.state is JobState.SUCCEEDED:
            return 1.0
        if self.state is not JobState.RUNNING:
            return 0.0
        if self.stage is Stage.COMPUTING and self.compute_started_at and self.predicted_seconds:
            elapsed = (now or time.time()) - self.compute_started_at
            return round(0.1 + 0.8 * min(1.0, elapsed / self.predicted_seconds), 3)
        return 0.05

    # --- flat string form for Redis hashes (None = field absent) -----------------------------
    def to_fields(self, *names: str) -> dict[str, str]:
        data = self.model_dump(mode="json", include=set(names) if names else None)
        return {k: _to_text(v) for k, v in data.items() if v is not None}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobRecord:
        return cls.model_validate(fields)


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class JobError(BaseModel):
    code: str
    message: str


class JobView(BaseModel):
    """GET /jobs/{id}: the record as clients see it."""

    id: str
    state: JobState
    progress: float = Field(description="0–1; during compute, elapsed share of the predicted time.")
    stage: Stage
    method: str | None = Field(None, description="Chosen method (planned while queued).")
    tier: str | None = Field(None, description="Chosen tier (planned while queued).")
    predicted_psnr_db: float | None = None
    output_width: int
    output_height: int
    format: str
    attempts: int = Field(description="Starts so far; more than 1 after a worker was lost.")
    cancel_requested: bool
    created_at: float = Field(description="Unix time.")
    deadline_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(None, description="When a finished job and its result are dropped.")
    timings: dict[str, float] = Field(
        default_factory=dict, description="Seconds: wait, compute, encode, total."
    )
    error: JobError | None = None
    result_url: str | None = None

    @classmethod
    def of(cls, record: JobRecord, result_ttl_s: float, now: float | None = None) -> JobView:
        now = now or time.time()
        timings: dict[str, float] = {}
        if record.started_at is not None:
            timings["wait"] = record.started_at - record.created_at
        for name in ("queue", "compute", "encode"):
            value = getattr(record, f"{name}_seconds")
            if value is not None:
                timings[name] = value
        if record.finished_at is not None:
            timings["total"] = record.finished_at - record.created_at
        return cls(
            id=record.id,
            state=record.state,
            progress=record.progress(now),
            stage=record.stage,
            method=record.method,
            tier=record.tier,
            predicted_psnr_db=record.predicted_psnr_db,
            output_width=record.output_width,
            output_height=record.output_height,
            format=record.format,
            attempts=record.attempts,
            cancel_requested=record.cancel_requested,
            created_at=record.created_at,
            deadline_at=record.deadline_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            expires_at=record.finished_at + result_ttl_s if record.finished_at is not None else None,
            timings={k: round(v, 4) for k, v in timings.items()},
            error=JobError(code=record.error_code, message=record.error_message or "")
            if record.error_code
            else None,
            result_url=f"/jobs/{record.id}/result" if record.state is JobState.SUCCEEDED else None,
        )
