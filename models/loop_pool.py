"""Compiled loops (numba, GIL released): compiling them for the host, and running them over blocks
of items on torch's thread count, on torch's own OpenMP threads where they can share them."""

from __future__ import annotations

import ctypes
import os
import sys
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
    """numba, set up for this host and this process; the loops import it from here.

    * Vectors at the host's full width. On CPUs with AVX-512, LLVM's tuning prefers 256-bit
      vectors (`prefer-256-bit`: older Xeons clocked down on 512-bit instructions), so every loop
      ran at half the width the CPU has. The decoders' matrix products (MKL) already run 512-bit,
      so the loops gain without a clock cost: MoEISR b0's decoder took 0.86–0.93 of its time at
      ×2–×4 (128² input, 2 threads, Xeon with AVX-512, three alternating runs). Only where no one
      chose numba's target (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES).
    * Parallel loops on torch's own OpenMP threads where they can be (`shares_torch_openmp`).

    Set before numba first compiles or runs a parallel loop in this process (the loops compile
    on first use); if something did so before, the settings have no effect.
    """
    import numba
    from llvmlite import binding

    features = binding.get_host_cpu_features().flatten()
    chosen = numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None
    if not chosen and "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"
    if numba.config.THREADING_LAYER == "default" and _torch_openmp_is_global():
        numba.config.THREADING_LAYER = "omp"
    return numba


def _torch_openmp_is_global() -> bool:
    """Whether numba's OpenMP layer would bind to the OpenMP runtime torch runs on: torch's
    libgomp lies in the process's global symbol scope (torch loads it so, through its global
    dependencies) ahead of any other, and numba's OpenMP layer loads (it needs a libgomp of the
    system's own; its calls resolve to the global scope first)."""
    if sys.platform != "linux" or "OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        lib = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        torch_symbol = ctypes.cast(ctypes.CDLL(lib).GOMP_parallel, ctypes.c_void_p).value
        global_symbol = ctypes.cast(ctypes.CDLL(None).GOMP_parallel, ctypes.c_void_p).value
        import numba.np.ufunc.omppool  # noqa: F401  (fails without the system's libgomp)
    except (OSError, AttributeError, ImportError):
        return False
    return torch_symbol is not None and torch_symbol == global_symbol


_forked = False  # in a child forked from this process (GNU OpenMP is not fork-safe)


def shares_torch_openmp() -> bool:
    """Whether the loops run as numba parallel loops on torch's OpenMP threads (`run_blocks`).

    After a torch op, torch's idle OpenMP workers spin on their cores for milliseconds waiting
    for the next one. A loop run on threads of our own competed with them for those cores;
    run on the same OpenMP team, the spinning workers take its blocks at once. MoEISR b0's
    decoder took 0.65–0.79 of its time, SSRNO XS and M ×2 0.94–0.96, nothing slower (128²
    input, 2 threads, three alternating runs). Not in a forked child: numba terminates a child
    that runs an OpenMP loop its parent started the runtime for.
    """
    return not _forked and _openmp_layer_running()


@cache
def _openmp_layer_running() -> bool:
    """Whether numba runs its parallel loops on its OpenMP layer (`numba_for_host` asks for it);
    starts the layer. Not so where numba started another layer before it was asked (another
    library's parallel loop first): numba's own work queue must not take concurrent calls."""
    numba = numba_for_host()
    if numba.config.THREADING_LAYER != "omp":
        return False
    # Starting the layer sets the calling thread's OpenMP thread count to numba's own (all
    # cores), which torch reads as its intra-op count on that thread: a service worker set to
    # share the cores would then run every later op on all of them. Put torch's count back.
    threads = torch.get_num_threads()
    numba.get_num_threads()  # starts the threading layer
    torch.set_num_threads(threads)
    return numba.threading_layer() == "omp"


@cache
def _pool() -> ThreadPoolExecutor:
    """Worker threads for the loops where they cannot share torch's; shared by concurrent requests."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="compiled-loop")


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads, yet the pool would count them as its own
    and start none: the child's first loop would wait forever. It gets a pool of its own, and
    runs the loops on it rather than on OpenMP."""
    global _forked
    _forked = True
    _pool.cache_clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run_blocks(kernel, n: int, args: list, block: int, pool: bool = True) -> None:
    """`kernel(*args, start, stop)` over items [0, n) in blocks of `block`, on torch's thread count.

    Where the loops share torch's OpenMP threads (`shares_torch_openmp`), one numba parallel loop
    over the blocks. Otherwise the calling thread and up to torch's thread count − 1 pool threads
    take the blocks in turn, not one equal share each: right after the preceding torch ops,
    OpenMP's idle workers spin for several milliseconds on the same cores, and a thread that
    shares its core with one finishes fewer blocks instead of holding up the others. With
    pool=False, for loops that the pool made slower than one thread, the calling thread alone
    takes all of [0, n) in one call.
    """
    if shares_torch_openmp():
        numba = numba_for_host()
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        _parallel(kernel)(n, block, *args)
        return
    if not pool:
        kernel(*args, 0, n)
        return
    blocks = count()  # next() on it is atomic under the GIL: each block goes to one thread

    def take_blocks() -> None:
        while (start := next(blocks) * block) < n:
            kernel(*args, start, min(n, start + block))

    threads = min(torch.get_num_threads(), -(-n // block))
    helpers = [_pool().submit(take_blocks) for _ in range(threads - 1)]
    take_blocks()
    for helper in helpers:
        helper.result()


@cache
def _parallel(kernel):
    """`kernel` over [0, n) in blocks as a numba parallel loop (compiled on first use)."""
    numba = numba_for_host()

    @numba.njit(parallel=True, nogil=True)
    def over_blocks(n, block, *args):  # pragma: no cover
        for j in numba.prange((n + block - 1) // block):
            kernel(*args, j * block, min(n, (j + 1) * block))

    return over_blocks
