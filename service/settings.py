"""Every knob of the service in one pydantic-settings object, read from `ELASTICSR_*` variables.

Read once at start-up and passed down (never imported as a global), so tests can build apps
with their own settings side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.defaults import DEFAULT_MAX_QUERIES


@dataclass(frozen=True)
class Policy:
    """How the controller picks a tier: `adaptive`, or always one `static` method and tier."""

    kind: str  # "adaptive" | "static"
    method: str | None = None
    tier: str | None = None  # a tier name, or "auto" for the method's default at the request's scale

    @classmethod
    def parse(cls, text: str) -> Policy:
        text = text.strip()
        if text == "adaptive":
            return cls("adaptive")
        parts = text.split(":")
        if len(parts) == 3 and parts[0] == "static" and parts[1] and parts[2]:
            return cls("static", parts[1], parts[2])
        raise ValueError(f"policy must be 'adaptive' or 'static:<method>:<tier>', got {text!r}")

    def __str__(self) -> str:
        return "adaptive" if self.kind == "adaptive" else f"static:{self.method}:{self.tier}"


class Settings(BaseSettings):
    """Service configuration; each field is the environment variable `ELASTICSR_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="ELASTICSR_", extra="ignore", frozen=True, populate_by_name=True
    )

    # --- network and models ---
    host: str = Field("127.0.0.1", description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on.")
    log_level: str = Field("info", description="Python log level of the service.")
    device: str = Field(
        "auto", description="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N."
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="Folder with <method>.json manifests and weights; empty = shipped models/checkpoints/.",
    )
    methods: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated methods to load; empty = every registered method."
    )
    policy: str = Field("adaptive", description="adaptive, or static:<method>:<tier> (tier may be auto).")

    # --- limits ---
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest request body accepted (bytes).")
    max_input_pixels: int = Field(
        2048 * 2048, gt=0, description="Largest decoded input image (width × height)."
    )
    max_output_pixels: int = Field(
        2560 * 1440,
        gt=0,
        description="Largest output answered synchronously (width × height); larger ones (4K) become jobs.",
    )
    max_job_output_pixels: int = Field(
        7680 * 4320, gt=0, description="Largest output accepted at all, as a queued job (width × height)."
    )
    max_scale: float = Field(30.0, gt=1.0, description="Largest scale factor per axis.")
    max_concurrent_requests: int = Field(
        64, ge=0, description="Upscale requests handled at once (upload included); more get 503; 0 = off."
    )

    # --- clients (the service faces the internet behind an ingress) ---
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, /upscale and /models need one (X-API-Key/Bearer).",
    )
    rate_limit_per_s: float = Field(
        0.0, ge=0.0, description="Sustained requests per second per client (API key or address); 0 = off."
    )
    rate_limit_burst: int = Field(
        0, ge=0, description="Requests a client may send at once above the rate; 0 = max(1, the rate)."
    )
    trust_forwarded_for: bool = Field(
        False,
        description="Take the client address from X-Forwarded-For (only behind a proxy that sets it).",
    )

    # --- shutdown ---
    drain_seconds: float = Field(
        5.0, ge=0.0, description="After SIGTERM, /readyz answers 503 this long before the listener closes."
    )
    graceful_timeout_s: float = Field(
        60.0, gt=0.0, description="After draining, how long in-flight requests may take before cancellation."
    )

    # --- controller ---
    default_deadline_ms: float = Field(30000.0, gt=0, description="Deadline of a request that names none.")
    max_deadline_ms: float = Field(300000.0, gt=0, description="Longest deadline a request may ask for.")
    hysteresis: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="Fraction of the deadline kept free before climbing to a richer tier.",
    )
    slack_reserve: float = Field(
        0.3,
        ge=0.0,
        lt=1.0,
        description="Fraction of the deadline only the cheapest tier may use, so that a spike degrades "
        "quality before it misses deadlines.",
    )
    utilization_target: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="Under load, each request may take at most this ÷ demand times its cheapest tier's "
        "compute (demand: the cheapest compute recent requests asked for, per second and worker), so "
        "that a spike moves every request to cheap tiers instead of shedding; 0 = no rate limit.",
    )
    demand_window_s: float = Field(
        5.0, gt=0.0, description="Seconds of arrivals the demand is measured over."
    )
    prediction_deviations: float = Field(
        2.0,
        ge=0.0,
        description="Plan with measured ÷ predicted time as its mean plus this many mean deviations "
        "(wait and compute), so that accepted requests meet their deadline in the tail too.",
    )
    contention_weight: float = Field(
        1.0,
        ge=0.0,
        description="How much CPU load from other processes slows predicted compute (0 = ignore).",
    )
    latency_ewma_alpha: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="Log-space step of each observed latency (the shared pace; the tier a quarter of it).",
    )
    overhead_ms: float = Field(
        50.0, ge=0.0, description="Fixed compute cost of any request in the latency model."
    )
    default_seconds_per_gmac: float = Field(
        0.15, gt=0.0, description="Latency prior per GMAC for a tier with no manifest timing and no warm-up."
    )
    max_queue: int = Field(
        32, ge=0, description="Requests allowed to wait for a worker; more are shed (503)."
    )
    memory_limit_bytes: int = Field(
        0,
        ge=0,
        description="Shed when process memory + the request's estimate exceeds this; 0 = 90% of RAM/cgroup.",
    )
    load_sample_interval_s: float = Field(
        0.5, gt=0.0, description="How often CPU/GPU/memory load is sampled."
    )

    # --- job queue (large outputs and ?async=true) ---
    redis_url: str = Field(
        "",
        validation_alias=AliasChoices("ELASTICSR_REDIS_URL", "REDIS_URL", "redis_url"),
        description="Redis for the job queue (workers: python -m service.worker); empty = in-process queue.",
    )
    job_deadline_ms: float = Field(600000.0, gt=0, description="Deadline of a job that names none.")
    max_job_deadline_ms: float = Field(3600000.0, gt=0, description="Longest deadline a job may ask for.")
    max_jobs: int = Field(64, ge=1, description="Jobs allowed to wait in the queue; more are refused (503).")
    max_result_bytes: int = Field(
        128 * 1024 * 1024, gt=0, description="Largest encoded job result stored; larger fails the job."
    )
    result_ttl_s: float = Field(
        3600.0, gt=0, description="Seconds a finished job's record and result are kept."
    )
    max_stored_bytes: int = Field(
        1024 * 1024 * 1024,
        gt=0,
        description="Bytes of job inputs and results stored at once (in memory, or in Redis); "
        "the in-process queue first drops the oldest jobs whose outcome was collected; "
        "then, like Redis, it refuses new jobs (503).",
    )
    job_lease_s: float = Field(
        10.0, gt=0, description="Redis: a running job whose worker stops renewing it this long is retried."
    )
    job_max_attempts: int = Field(
        3, ge=1, description="Starts of a job (worker crashes included) before it fails as worker_lost."
    )
    worker_metrics_port: int = Field(
        9100, ge=0, le=65535, description="Port of a worker's Prometheus /metrics; 0 = none."
    )

    # --- inference ---
    workers: int = Field(0, ge=0, description="Parallel inference workers; 0 = 1 on CPU, 2 on GPU.")
    torch_threads: int = Field(0, ge=0, description="Torch intra-op threads; 0 = CPU cores / workers.")
    max_queries: int = Field(
        DEFAULT_MAX_QUERIES,
        gt=0,
        description="Output pixels decoded per chunk at full decoder width (bounds peak memory).",
    )
    warmup: bool = Field(True, description="Run every tier once at start-up to calibrate the latency model.")
    warmup_size: int = Field(16, ge=4, description="Side of the synthetic photo warm-up runs on (output 2×).")
    warmup_runs: int = Field(1, ge=1, description="Timed warm-up runs per tier (after one untimed run).")

    # --- output encoding ---
    png_compress_level: int = Field(3, ge=0, le=9, description="zlib level of PNG output (speed vs size).")
    jpeg_quality: int = Field(92, ge=1, le=100, description="Quality of JPEG output.")
    webp_quality: int = Field(90, ge=1, le=100, description="Quality of lossy WebP output.")

    @field_validator("methods", mode="before")
    @classmethod
    def _split_methods(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, value: str) -> str:
        return str(Policy.parse(value))

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _empty_dir_is_default(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _job_limits_cover_sync_limits(self) -> Settings:
        if self.max_job_output_pixels < self.max_output_pixels:
            raise ValueError("max_job_output_pixels must be at least max_output_pixels")
        if self.max_job_deadline_ms < self.job_deadline_ms:
            raise ValueError("max_job_deadline_ms must be at least job_deadline_ms")
        return self

    @property
    def parsed_policy(self) -> Policy:
        return Policy.parse(self.policy)

    def resolved_device(self) -> str:
        """The torch device string `auto` stands for on this machine."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_workers(self, device: str) -> int:
        """One worker on CPU (torch already parallelises inside an op); two on GPU to overlap copies."""
        if self.workers:
            return self.workers
        return 2 if device.startswith("cuda") else 1

    def resolved_threads(self, workers: int) -> int:
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // workers)
