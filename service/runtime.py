"""The app-level singletons, created in the lifespan and kept on `app.state.runtime`.

Loaded models and their manifests, the latency model, the worker pool, the load sampler and the
controller's memory of its previous choice. Loading and warm-up run in the background so the
process answers `/healthz` at once and `/readyz` turns ready when they are done; a checkpoint that
fails to load is logged and reported, and the others are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import torch

from models import registry
from models.base import ScalableSR
from models.images import synthetic_photo
from models.manifest import predicted_gain_db, predicted_psnr_db
from models.tiers import Tier
from service.controller import (
    Candidate,
    ControllerConfig,
    Decision,
    Need,
    choose,
    compute_seconds,
    contention_factor,
)
from service.demand import DemandMeter
from service.errors import InvalidParameter, Unavailable
from service.imaging import DecodedImage, to_tensor
from service.inference import InferencePool
from service.latency import LatencyModel, prior_from_manifest
from service.load import LoadSampler, LoadSnapshot, default_memory_limit
from service.metrics import Metrics
from service.settings import Settings
from service.sizing import OutputSize

log = logging.getLogger(__name__)
MACS_MEMO_SIZE = 4096  # (tier, input size, output size) counts remembered per method

Loader = Callable[[str, str, str | None], ScalableSR]


def default_loader(name: str, device: str, checkpoint_dir: str | None) -> ScalableSR:
    return registry.load(name, device=device, checkpoint_dir=checkpoint_dir)


@dataclass
class LoadedMethod:
    name: str
    model: ScalableSR
    manifest: dict[str, Any]
    tiers: list[Tier]
    _macs: dict[tuple[str, tuple[int, int], tuple[int, int]], int] = field(
        default_factory=dict, init=False, repr=False
    )

    def gmacs(self, tier: Tier, lr_size: tuple[int, int], out_hw: tuple[int, int]) -> float:
        """The tier's GMACs for this request's sizes. Remembered: every request asks for every
        tier of every method, and counting them takes about a millisecond per request on the
        event loop; traffic repeats sizes, and the memo is emptied when it grows large."""
        key = (tier.name, lr_size, out_hw)
        macs = self._macs.get(key)
        if macs is None:
            if len(self._macs) >= MACS_MEMO_SIZE:
                self._macs.clear()
            macs = self._macs[key] = self.model.macs(tier, lr_size, out_hw)
        return macs / 1e9


def _quality(manifest: dict[str, Any], tier: str, scale: float) -> float:
    try:
        return predicted_psnr_db(manifest, tier, scale)
    except (KeyError, TypeError, ValueError):  # manifest without this tier or with odd entries
        return 0.0


class Runtime:
    """Everything a request needs beyond its own bytes."""

    ENCODE_PRIOR_SECONDS_PER_MP = 0.05

    def __init__(self, settings: Settings, metrics: Metrics, loader: Loader = default_loader) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader
        self.policy = settings.parsed_policy
        self.device = settings.resolved_device()
        workers = settings.resolved_workers(self.device)
        self.pool = InferencePool(workers, settings.resolved_threads(workers), settings.prediction_deviations)
        self.latency = LatencyModel(
            settings.latency_ewma_alpha, settings.default_seconds_per_gmac, settings.overhead_ms / 1000.0
        )
        self.metrics.pace.set(self.latency.pace)
        self.sampler = LoadSampler(self.device)
        self.config = ControllerConfig(
            hysteresis=settings.hysteresis,
            contention_weight=0.0 if self.device.startswith("cuda") else settings.contention_weight,
            overhead_seconds=settings.overhead_ms / 1000.0,
            reserve=settings.slack_reserve,
            utilization_target=settings.utilization_target,
        )
        self.demand = DemandMeter(settings.demand_window_s)
        self.memory_limit = settings.memory_limit_bytes or default_memory_limit()
        self.methods: dict[str, LoadedMethod] = {}
        self.failures: dict[str, str] = {}
        self.state = "starting"  # starting -> loading -> warming -> ready | failed
        self.inflight = 0
        self.previous: tuple[str, str] | None = None  # the controller's last adaptive choice
        self.encode_seconds_per_mp = self.ENCODE_PRIOR_SECONDS_PER_MP

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    # --- start-up -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load checkpoints and warm up in worker threads, then declare the service ready."""
        try:
            self.state = "loading"
            await anyio.to_thread.run_sync(self.load_models)
            if self.methods and self.settings.warmup:
                self.state = "warming"
                await anyio.to_thread.run_sync(self.warm_up)
        except Exception:
            log.exception("start-up failed")
            self.methods.clear()
        self.state = "ready" if self.methods else "failed"
        self.metrics.ready.set(1 if self.ready else 0)
        if self.ready:
            log.info("ready on %s with %s (policy %s)", self.device, ", ".join(self.methods), self.policy)
        else:
            log.error("no model could be loaded; /upscale answers 503 until restart: %s", self.failures)

    def load_models(self) -> None:
        known = registry.available()
        wanted = [self.policy.method] if self.policy.kind == "static" else (self.settings.methods or known)
        checkpoint_dir = str(self.settings.checkpoint_dir) if self.settings.checkpoint_dir else None
        for name in wanted:
            if name not in known:
                self.failures[name] = f"unknown method {name!r}; known: {', '.join(known)}"
                log.error("%s", self.failures[name])
                continue
            try:
                model = self.loader(name, self.device, checkpoint_dir)
            except Exception as exc:  # CheckpointError, or anything a corrupt file provokes
                self.failures[name] = str(exc)
                log.error("cannot load %s: %s", name, exc)
                continue
            with torch.no_grad():  # models memoise derived per-tier data only without grad
                tiers = model.tiers()
            static_tier = self.policy.tier if self.policy.kind == "static" else "auto"
            if static_tier != "auto" and static_tier not in {t.name for t in tiers}:
                self.failures[name] = f"static policy tier {static_tier!r} is not a tier of {name}"
                log.error("%s", self.failures[name])
                continue
            manifest = getattr(model, "manifest", None) or {"method": name, "tiers": []}
            self.methods[name] = LoadedMethod(name, model, manifest, tiers)
            self.metrics.prepare(name, [t.name for t in tiers])
            for t in tiers:
                self.latency.set_prior((name, t.name), prior_from_manifest(manifest, t.name))
                self.metrics.latency_model.labels(name, t.name).set(self.latency.get((name, t.name)))
            log.info("loaded %s (%d tiers) on %s", name, len(tiers), self.device)

    def warm_up(self) -> None:
        """Run every tier on a small image: first touch (allocations, caches), then timed runs."""
        side = self.settings.warmup_size
        # Not noise: MoEISR's cost depends on content, and noise routes far heavier than photographs.
        lr = synthetic_photo(side, side).to(self.device)
        size = (2 * side, 2 * side)
        for name, loaded in list(self.methods.items()):
            try:
                for tier in loaded.tiers:
                    self._warm_up_tier(loaded, tier, lr, size)
            except Exception as exc:  # a method that cannot run is not served; the others are
                log.exception("warm-up of %s failed", name)
                self.failures[name] = f"warm-up failed: {exc}"
                del self.methods[name]

    def _warm_up_tier(
        self, loaded: LoadedMethod, tier: Tier, lr: torch.Tensor, size: tuple[int, int]
    ) -> None:
        def run() -> torch.Tensor:
            return loaded.model.upscale(lr, size, tier=tier).cpu()

        self.pool.run_blocking(run)  # first touch: allocations, derived weights
        t0 = time.perf_counter()
        for _ in range(self.settings.warmup_runs):
            self.pool.run_blocking(run)
        seconds = (time.perf_counter() - t0) / self.settings.warmup_runs
        gmacs = loaded.model.macs(tier, (lr.shape[2], lr.shape[3]), size) / 1e9
        # The latest reading of the sampler (sampling here too would race the sampling task).
        factor = contention_factor(self.snapshot_from(self.sampler.latest), self.config.contention_weight)
        key = (loaded.name, tier.name)
        self.latency.calibrate(key, seconds, gmacs, factor)
        self.metrics.latency_model.labels(*key).set(self.latency.get(key))
        log.info("warm-up %s/%s: %.0f ms for %.3f GMAC", *key, seconds * 1000, gmacs)

    async def sample_forever(self) -> None:
        """Keep the machine-load reading and the load gauges fresh."""
        while True:
            with contextlib.suppress(Exception):  # a failed reading must not stop sampling
                self.sampler.sample()
                self.metrics.set_load(self.snapshot())
            await asyncio.sleep(self.settings.load_sample_interval_s)

    def close(self) -> None:
        self.pool.shutdown()

    # --- per request ----------------------------------------------------------------------------
    def snapshot_from(self, machine: Any) -> LoadSnapshot:
        return LoadSnapshot(
            cpu_utilization=machine.cpu_utilization,
            process_cpu_utilization=machine.process_cpu_utilization,
            memory_bytes=machine.memory_bytes,
            memory_limit_bytes=self.memory_limit,
            gpu_utilization=machine.gpu_utilization,
            gpu_memory_bytes=machine.gpu_memory_bytes,
            gpu_memory_total_bytes=machine.gpu_memory_total_bytes,
            inflight=self.inflight,
            queued=self.pool.queued,
            running=self.pool.running,
            workers=self.pool.workers,
            max_queue=self.settings.max_queue,
            backlog_seconds=self.pool.backlog_seconds(),
            wait_correction=self.pool.wait_correction,
            compute_margin=self.pool.compute_margin,
            demand=self.demand.utilization(self.pool.workers),
        )

    def snapshot(self) -> LoadSnapshot:
        """The latest machine reading combined with the exact counters of this process."""
        return self.snapshot_from(self.sampler.latest)

    def unavailable(self) -> Unavailable | None:
        """Why /upscale cannot serve right now, or None."""
        if self.state in ("starting", "loading", "warming"):
            return Unavailable(f"the service is starting ({self.state})", code="not_ready", retry_after_s=5)
        if not self.methods:
            return Unavailable(
                "no model is loaded: " + "; ".join(f"{k}: {v}" for k, v in self.failures.items()),
                code="no_model_available",
                retry_after_s=60,
            )
        return None

    def candidates(
        self, method: str | None, tier: str | None, lr_size: tuple[int, int], out: OutputSize
    ) -> tuple[list[Candidate], bool]:
        """The (method, tier) pairs this request may use, and whether the client pinned one tier."""
        method = None if method in (None, "", "auto") else method
        tier = None if tier in (None, "", "auto") else tier
        if self.policy.kind == "static":
            if (method and method != self.policy.method) or (tier and tier != self.policy.tier):
                raise InvalidParameter(
                    f"this server runs the static policy {self.policy}; omit method and tier or match it"
                )
            method, tier = self.policy.method, self.policy.tier
        names = [method] if method else list(self.methods)
        for name in names:
            if name not in self.methods:
                if name in registry.available():
                    reason = self.failures.get(name, "not configured to load")
                    raise Unavailable(
                        f"method {name!r} is not loaded: {reason}",
                        code="no_model_available",
                        retry_after_s=60,
                    )
                raise InvalidParameter(
                    f"unknown method {name!r}; use one of {', '.join(self.methods)} or auto"
                )
        with torch.no_grad():  # tier look-ups hit the models' memo only without grad
            return self._candidates(names, tier, lr_size, out)

    def _candidates(
        self, names: list[str], tier: str | None, lr_size: tuple[int, int], out: OutputSize
    ) -> tuple[list[Candidate], bool]:
        out_hw = (out.height, out.width)
        chosen: list[tuple[LoadedMethod, Tier]] = []
        for name in names:
            loaded = self.methods[name]
            if tier == "auto" or (tier is None and self.policy.kind == "static"):
                chosen.append((loaded, loaded.model.tier(None, (out.scale_y, out.scale_x))))
            elif tier is None:
                chosen.extend((loaded, t) for t in loaded.tiers)
            else:
                chosen.extend((loaded, t) for t in loaded.tiers if t.name == tier)
        if not chosen:
            raise InvalidParameter(
                f"unknown tier {tier!r}; tiers: "
                + "; ".join(f"{n}: {', '.join(t.name for t in self.methods[n].tiers)}" for n in names)
            )
        result = [
            Candidate(
                method=loaded.name,
                tier=t.name,
                index=t.index,
                predicted_psnr_db=_quality(loaded.manifest, t.name, out.scale),
                gmacs=loaded.gmacs(t, lr_size, out_hw),
                seconds_per_gmac=self.latency.get((loaded.name, t.name)),
            )
            for loaded, t in chosen
        ]
        pinned = tier is not None or self.policy.kind == "static"
        return result, pinned

    def decide(
        self,
        snapshot: LoadSnapshot,
        candidates: list[Candidate],
        need: Need,
        pinned: bool,
        *,
        remember: bool = True,
    ) -> Decision:
        """Apply the pure policy. With `remember` (sync requests), the request counts towards the
        demand that later decisions see, and an adaptive choice feeds the next one's hysteresis."""
        if remember:
            self.demand.record(min(compute_seconds(c, self.config) for c in candidates))
        previous = self.previous if remember and not pinned else None
        decision = choose(snapshot, candidates, need, self.config, previous)
        if remember and decision.outcome == "run" and not pinned and decision.candidate is not None:
            self.previous = decision.candidate.key
        return decision

    def predicted_gain(self, method: str, tier: str, scale: float) -> float:
        try:
            return predicted_gain_db(self.methods[method].manifest, tier, scale)
        except (KeyError, TypeError, ValueError):
            return 0.0

    def infer(self, method: str, tier: str, image: DecodedImage, size: tuple[int, int]) -> torch.Tensor:
        """Blocking: runs on a pool worker. Output (1, 3, H, W) on the CPU."""
        model = self.methods[method].model
        x = to_tensor(image).to(self.device)
        return model.upscale(x, size, tier=tier, max_queries=self.settings.max_queries).cpu()

    def observe(self, candidate: Candidate, compute_seconds: float) -> None:
        """Feed a served request back into the latency model."""
        factor = contention_factor(self.snapshot(), self.config.contention_weight)
        self.latency.observe(candidate.key, compute_seconds, candidate.gmacs, factor)
        for key, value in self.latency.items():  # the shared pace moved every tier's figure
            self.metrics.latency_model.labels(*key).set(value)
        self.metrics.pace.set(self.latency.pace)

    def encode_estimate(self, output_pixels: int) -> float:
        return self.encode_seconds_per_mp * output_pixels / 1e6

    def observe_encode(self, seconds: float, output_pixels: int) -> None:
        if output_pixels >= 10_000:  # tiny outputs measure overhead, not throughput
            sample = seconds / (output_pixels / 1e6)
            a = self.settings.latency_ewma_alpha
            self.encode_seconds_per_mp = (1 - a) * self.encode_seconds_per_mp + a * sample
