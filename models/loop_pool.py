"""Compiled loops (numba, GIL released): compiling them for the host, and running them over blocks
of items on torch's thread count."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import count

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode


def can_run(*tensors: torch.Tensor) -> bool:
    """Whether a compiled loop can stand in for torch ops on these tensors without anyone missing
    them: on CPU, float32, no autograd through them, and no torch dispatch mode (the FLOP counter
    of the tests, tracers) that must see every product."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not is_in_torch_dispatch_mode()
    )


def arrays(*tensors: torch.Tensor) -> list:
    """The C-contiguous numpy views (or copies) the compiled loops take."""
    return [t.detach().contiguous().numpy() for t in tensors]


@cache
def numba_for_host():
    """numba, set to vectorise at the host's full vector width; the loops import it from here.

    On CPUs with AVX-512, LLVM's tuning prefers 256-bit vectors (`prefer-256-bit`: older Xeons
    clocked down on 512-bit instructions), so every loop ran at half the width the CPU has. The
    decoders' matrix products (MKL) already run 512-bit, so the loops gain without a clock cost:
    MoEISR b0's decoder took 0.86–0.93 of its time at ×2–×4 (128² input, 2 threads, Xeon with
    AVX-512, three alternating runs). Set before numba first compiles in this process (the
    loops compile on first use), and only where no one chose numba's target (NUMBA_CPU_NAME,
    NUMBA_CPU_FEATURES); if something compiled before, the setting has no effect.
    """
    import numba
    from llvmlite import binding

    features = binding.get_host_cpu_features().flatten()
    chosen = numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None
    if not chosen and "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"
    return numba


@cache
def _pool() -> ThreadPoolExecutor:
    """Worker threads for the loops; shared by concurrent requests."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="compiled-loop")


# A forked child has none of the parent's threads, yet the pool would count them as its own and
# start none: the child's first loop would wait forever. It gets a pool of its own.
os.register_at_fork(after_in_child=_pool.cache_clear)


def run_blocks(kernel, n: int, args: list, block: int) -> None:
    """`kernel(*args, start, stop)` over items [0, n) in blocks of `block` that the calling thread
    and up to torch's thread count − 1 pool threads take in turn.

    Blocks taken in turn, not one equal share per thread: right after the preceding torch ops,
    OpenMP's idle workers spin for several milliseconds on the same cores, and a thread that
    shares its core with one finishes fewer blocks instead of holding up the others.
    """
    blocks = count()  # next() on it is atomic under the GIL: each block goes to one thread

    def take_blocks() -> None:
        while (start := next(blocks) * block) < n:
            kernel(*args, start, min(n, start + block))

    threads = min(torch.get_num_threads(), -(-n // block))
    helpers = [_pool().submit(take_blocks) for _ in range(threads - 1)]
    take_blocks()
    for helper in helpers:
        helper.result()
