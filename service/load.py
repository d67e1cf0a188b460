"""Live load as one immutable snapshot: what the controller decides from.

Machine signals (CPU, memory, GPU) are sampled in the background every few hundred ms, because
psutil's CPU figure is a rate over the interval since the previous call; the service's own
counters (in flight, queued, running, backlog) are exact and are added when a request asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil
import torch


@dataclass(frozen=True)
class LoadSnapshot:
    """Everything the policy may look at; build one by hand to test a decision."""

    cpu_utilization: float = 0.0  # whole machine, 0..1
    process_cpu_utilization: float = 0.0  # this process, as a fraction of the whole machine
    memory_bytes: int = 0  # this process's resident memory
    memory_limit_bytes: int = 0  # 0 = no limit
    gpu_utilization: float | None = None  # 0..1, None without a GPU (or without NVML)
    gpu_memory_bytes: int | None = None  # in use on the device, all processes
    gpu_memory_total_bytes: int | None = None
    inflight: int = 0  # requests inside /upscale
    queued: int = 0  # admitted, waiting for a worker
    running: int = 0  # on a worker now
    workers: int = 1
    max_queue: int = 32
    backlog_seconds: float = 0.0  # predicted compute still owed to admitted requests
    wait_correction: float = 1.0  # factor on predicted waits, learned by the inference pool
    compute_margin: float = 1.0  # factor on predicted compute at start time, likewise
    demand: float = 0.0  # cheapest compute asked for per second per worker, recently (service/demand.py)

    @property
    def external_cpu_utilization(self) -> float:
        """CPU used by other processes: what slows us down beyond our own backlog."""
        return min(1.0, max(0.0, self.cpu_utilization - self.process_cpu_utilization))


@dataclass(frozen=True)
class MachineLoad:
    cpu_utilization: float = 0.0
    process_cpu_utilization: float = 0.0
    memory_bytes: int = 0
    gpu_utilization: float | None = None
    gpu_memory_bytes: int | None = None
    gpu_memory_total_bytes: int | None = None


class LoadSampler:
    """Samples machine load; `latest` is always a complete reading (zeros before the first)."""

    def __init__(self, device: str, smoothing: float = 0.5) -> None:
        self.device = torch.device(device)
        self.smoothing = smoothing
        self._process = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        psutil.cpu_percent(interval=None)  # prime: the first call has no interval to measure
        self._process.cpu_percent(interval=None)
        self.latest = MachineLoad(memory_bytes=self._process.memory_info().rss)

    def sample(self) -> MachineLoad:
        system = psutil.cpu_percent(interval=None) / 100.0
        own = self._process.cpu_percent(interval=None) / 100.0 / self._cpus
        a, prev = self.smoothing, self.latest
        gpu_util, gpu_used, gpu_total = self._gpu()
        self.latest = MachineLoad(
            cpu_utilization=a * min(1.0, system) + (1 - a) * prev.cpu_utilization,
            process_cpu_utilization=a * min(1.0, own) + (1 - a) * prev.process_cpu_utilization,
            memory_bytes=self._process.memory_info().rss,
            gpu_utilization=gpu_util,
            gpu_memory_bytes=gpu_used,
            gpu_memory_total_bytes=gpu_total,
        )
        return self.latest

    def _gpu(self) -> tuple[float | None, int | None, int | None]:
        if self.device.type != "cuda":
            return None, None, None
        util: float | None
        try:
            util = torch.cuda.utilization(self.device) / 100.0  # needs NVML (pynvml)
        except Exception:
            util = None
        try:
            free, total = torch.cuda.mem_get_info(self.device)
            return util, int(total - free), int(total)
        except Exception:
            return util, None, None


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def default_memory_limit() -> int:
    """90% of physical memory or of the container's cgroup limit, whichever is smaller."""
    limit = psutil.virtual_memory().total
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" means unlimited (v2); v1 reports a huge number instead
            limit = min(limit, int(text))
    return int(limit * 0.9)
