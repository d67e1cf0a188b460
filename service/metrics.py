"""Every Prometheus metric of the service, in one registry per app.

Names are a contract with the dashboards and alert rules (see the README). Label values are
bounded: methods and tiers come from the loaded manifests (label sets are pre-created so a panel
shows zeros instead of gaps), outcomes and error codes from fixed lists, never request data.
One registry per app (not the global default) keeps test apps independent; running several
uvicorn worker processes would need prometheus-client's multiprocess mode, which we do not use.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from service.errors import ERROR_CODES
from service.load import LoadSnapshot

NONE = "none"  # method/tier label of a request that ended before a tier was chosen
OUTCOMES = ("ok", "queued", "shed", "client_error", "error")
SHED_REASONS = (
    "queue_full",
    "memory",
    "deadline",
    "deadline_expired",
    "not_ready",
    "no_model_available",
    "queue_unavailable",
    "concurrency",
)
JOB_OUTCOMES = ("succeeded", "failed", "cancelled", "expired", "retried")

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_JOB_AGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
_PSNR_BUCKETS = tuple(float(db) for db in range(20, 43))
_MEGAPIXEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class Metrics:
    """Owns the registry and every metric; the rest of the service calls its methods."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.request_duration = Histogram(
            "elasticsr_request_duration_seconds",
            "Time from request arrival to response, by outcome.",
            ["method", "tier", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "elasticsr_queue_wait_seconds",
            "Time admitted requests waited for an inference worker.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "elasticsr_compute_seconds",
            "Model inference time per request.",
            ["method", "tier"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("elasticsr_inflight_requests", "Upscale requests being handled.", registry=r)
        self.tier_choices = Counter(
            "elasticsr_tier_choices_total",
            "Requests the controller sent to each method and tier.",
            ["method", "tier"],
            registry=r,
        )
        self.late_downgrades = Counter(
            "elasticsr_late_downgrades_total",
            "Requests re-planned to this tier: their first choice no longer fit when a worker freed up.",
            ["method", "tier"],
            registry=r,
        )
        self.predicted_psnr = Histogram(
            "elasticsr_predicted_psnr_db",
            "Manifest-predicted PSNR-Y (dB) of the chosen tier at the request's scale.",
            ["method", "tier"],
            buckets=_PSNR_BUCKETS,
            registry=r,
        )
        self.output_megapixels = Histogram(
            "elasticsr_output_megapixels",
            "Size of answered outputs in megapixels.",
            buckets=_MEGAPIXEL_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "elasticsr_shed_requests_total", "Requests refused with 503, by reason.", ["reason"], registry=r
        )
        self.requests = Counter(
            "elasticsr_requests_total",
            "Upscale requests by outcome and response code.",
            ["outcome", "code"],
            registry=r,
        )
        self.cpu = Gauge("elasticsr_load_cpu_utilization_ratio", "Machine CPU utilisation (0-1).", registry=r)
        self.process_cpu = Gauge(
            "elasticsr_load_process_cpu_utilization_ratio",
            "This process's share of the machine's CPU (0-1).",
            registry=r,
        )
        self.memory = Gauge("elasticsr_load_memory_bytes", "Resident memory of this process.", registry=r)
        self.gpu = Gauge(
            "elasticsr_load_gpu_utilization_ratio", "GPU utilisation (0-1); 0 without a GPU.", registry=r
        )
        self.gpu_memory = Gauge(
            "elasticsr_load_gpu_memory_bytes",
            "GPU memory in use (all processes); 0 without a GPU.",
            registry=r,
        )
        self.waiting = Gauge(
            "elasticsr_waiting_requests", "Requests waiting for an inference worker here.", registry=r
        )
        # The job queue (shared by every API and worker process with Redis): what autoscaling reads.
        self.queue_depth = Gauge(
            "elasticsr_queue_depth", "Jobs waiting in the job queue, not started yet.", registry=r
        )
        self.oldest_job_age = Gauge(
            "elasticsr_queue_oldest_age_seconds",
            "Age of the oldest job waiting in the queue (0 if none).",
            registry=r,
        )
        self.job_age = Histogram(
            "elasticsr_job_age_seconds",
            "Time from enqueue to a job's first start (its wait in the queue).",
            buckets=_JOB_AGE_BUCKETS,
            registry=r,
        )
        self.jobs_running = Gauge("elasticsr_jobs_running", "Jobs being rendered now.", registry=r)
        self.job_workers = Gauge(
            "elasticsr_job_workers",
            "Processes taking jobs (Redis: workers seen within the lease).",
            registry=r,
        )
        self.jobs = Counter(
            "elasticsr_jobs",
            "Jobs by outcome: each end counted once by the process that ended it; `retried` counts "
            "restarts after a lost worker.",
            ["outcome"],
            registry=r,
        )
        self.worker_busy = Counter(
            "elasticsr_worker_busy_seconds", "Time this process spent running jobs.", registry=r
        )
        self.backlog = Gauge(
            "elasticsr_backlog_seconds", "Predicted compute still owed to admitted requests.", registry=r
        )
        self.latency_model = Gauge(
            "elasticsr_tier_latency_seconds_per_gmac",
            "Latency model: seconds of compute per GMAC of a tier.",
            ["method", "tier"],
            registry=r,
        )
        self.wait_correction = Gauge(
            "elasticsr_wait_correction_ratio",
            "Factor on predicted queue waits: measured ÷ predicted, mean + k mean deviations.",
            registry=r,
        )
        self.compute_margin = Gauge(
            "elasticsr_compute_margin_ratio",
            "Factor on predicted compute when a request starts: measured ÷ predicted, mean + k deviations.",
            registry=r,
        )
        self.pace = Gauge(
            "elasticsr_latency_pace_ratio",
            "Compute time now against the tiers' calibration, shared by every tier (2 = twice as slow).",
            registry=r,
        )
        self.demand = Gauge(
            "elasticsr_demand_ratio",
            "Compute recent sync requests asked for at their cheapest tier, per second and worker "
            "(1 = even the cheapest tiers keep the workers busy).",
            registry=r,
        )
        self.ready = Gauge("elasticsr_ready", "1 when models are loaded and warmed up.", registry=r)
        for reason in SHED_REASONS:
            self.shed.labels(reason)
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(outcome)
        self.requests.labels("ok", "ok")
        self.requests.labels("queued", "queued")
        self.request_duration.labels(NONE, NONE, "client_error")
        self.request_duration.labels(NONE, NONE, "shed")

    def prepare(self, method: str, tiers: list[str]) -> None:
        """Create the label sets of a loaded method so every series exists from the start."""
        for tier in tiers:
            self.request_duration.labels(method, tier, "ok")
            self.compute.labels(method, tier)
            self.tier_choices.labels(method, tier)
            self.late_downgrades.labels(method, tier)
            self.predicted_psnr.labels(method, tier)

    def set_load(self, snap: LoadSnapshot) -> None:
        self.cpu.set(snap.cpu_utilization)
        self.process_cpu.set(snap.process_cpu_utilization)
        self.memory.set(snap.memory_bytes)
        if snap.gpu_utilization is not None:
            self.gpu.set(snap.gpu_utilization)
        if snap.gpu_memory_bytes is not None:
            self.gpu_memory.set(snap.gpu_memory_bytes)
        self.waiting.set(snap.queued)
        self.backlog.set(snap.backlog_seconds)
        self.wait_correction.set(snap.wait_correction)
        self.compute_margin.set(snap.compute_margin)
        self.demand.set(snap.demand)

    def set_jobs(self, depth: int, running: int, workers: int, oldest_age_seconds: float) -> None:
        self.queue_depth.set(depth)
        self.jobs_running.set(running)
        self.job_workers.set(workers)
        self.oldest_job_age.set(oldest_age_seconds)

    def finish(self, method: str, tier: str, outcome: str, code: str, seconds: float) -> None:
        """Record a finished request; `code` is `ok`, `queued` or an error code from the fixed list."""
        code = code if code in ("ok", "queued") or code in ERROR_CODES else "other"
        self.request_duration.labels(method, tier, outcome).observe(seconds)
        self.requests.labels(outcome, code).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
