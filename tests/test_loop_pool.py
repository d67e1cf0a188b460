"""models.loop_pool: the compiled loops are built for the host's full vector width and run on torch's
OpenMP threads where they can."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from llvmlite import binding

from models import kv_stats, loop_pool
from models.loop_pool import numba_for_host

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    bool(os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES")),
    reason="numba's target was chosen by the environment, which numba_for_host leaves alone",
)
def test_loops_use_512_bit_vectors_exactly_where_the_host_has_them() -> None:
    numba = numba_for_host()
    avx512 = "+avx512f" in binding.get_host_cpu_features().flatten().split(",")
    code = "".join(kv_stats._kernel().inspect_asm().values())
    if avx512:
        assert numba.config.CPU_FEATURES.endswith(",-prefer-256-bit")
        assert "zmm" in code  # AVX-512 registers: LLVM's 256-bit preference is off
    else:
        assert numba.config.CPU_FEATURES is None
        assert "zmm" not in code


def test_parallel_loops_run_on_torchs_openmp_threads_where_they_can() -> None:
    """Where numba's OpenMP layer binds to torch's runtime, a loop after a torch op runs on the
    OpenMP team torch already started: on two threads, and no thread is created for it.
    Elsewhere the loop runs on the pool, with the same result."""
    numba = numba_for_host()
    shared = loop_pool.shares_torch_openmp()
    assert shared == (sys.platform == "linux" and loop_pool._torch_openmp_is_global())

    @numba.njit(nogil=True)
    def mark(ids, start, stop):  # which thread took each block
        for i in range(start, stop):
            ids[i] = numba.get_thread_id()

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = torch.randn(512, 512)
        _ = a @ a  # torch's OpenMP team is up
        ids = np.full(64, -1, np.int64)
        loop_pool.run_blocks(mark, 64, [ids], 1)  # compiles the parallel loop
        threads = len(os.listdir(f"/proc/{os.getpid()}/task")) if shared else 0
        _ = a @ a
        ids[:] = -1
        loop_pool.run_blocks(mark, 64, [ids], 1)
    finally:
        torch.set_num_threads(before)
    assert (ids >= 0).all()  # every block ran
    if shared:
        # Two OpenMP threads took the blocks (numba allows no more threads than cores).
        assert set(ids.tolist()) == set(range(min(2, numba.config.NUMBA_NUM_THREADS)))
        assert len(os.listdir(f"/proc/{os.getpid()}/task")) == threads  # none started for it


ANOTHER_LAYER_FIRST = """
import numba, numpy, torch
numba.config.THREADING_LAYER = "workqueue"  # another library's parallel loop runs first

@numba.njit(parallel=True)
def total(a):
    s = 0.0
    for i in numba.prange(a.shape[0]):
        s += a[i]
    return s

total(numpy.ones(1000))
numba.config.THREADING_LAYER = "default"
from models import loop_pool
assert not loop_pool.shares_torch_openmp(), "would run our loops on numba's work queue"
ids = numpy.zeros(8, numpy.int64)
loop_pool.run_blocks(numba.njit(lambda ids, start, stop: ids[start:stop].fill(1)), 8, [ids], 1)
assert ids.sum() == 8
"""


def test_loops_keep_to_their_pool_where_numba_started_another_layer_first() -> None:
    """numba's work queue must not take concurrent calls: if another library started it before
    us, the loops run on the pool, not as numba parallel loops. In a fresh interpreter."""
    command = [sys.executable, "-c", ANOTHER_LAYER_FIRST]
    done = subprocess.run(command, cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


KEEPS_TORCH_THREADS = """
import threading, torch
counts = []

def first_loop_on_a_worker():
    torch.set_num_threads(1)  # a service worker given fewer threads than the host has cores
    from models import loop_pool
    loop_pool.shares_torch_openmp()  # the first loop starts numba's threading layer here
    counts.append(torch.get_num_threads())

worker = threading.Thread(target=first_loop_on_a_worker)
worker.start()
worker.join()
assert counts == [1], counts
"""


def test_starting_the_loops_keeps_torchs_thread_count() -> None:
    """numba's OpenMP layer sets the thread it starts on to all cores; torch's count on that
    thread must stay what it was. In a fresh interpreter, where the layer has not started."""
    command = [sys.executable, "-c", KEEPS_TORCH_THREADS]
    done = subprocess.run(command, cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_loop_kept_off_the_pool_runs_whole_on_the_calling_thread(monkeypatch) -> None:
    """pool=False, where the loops cannot share torch's OpenMP threads: one call over all items,
    on the thread that asked (the k/v statistics, which the pool made slower)."""
    import threading

    monkeypatch.setattr(loop_pool, "shares_torch_openmp", lambda: False)
    calls = []
    loop_pool.run_blocks(lambda *span: calls.append((threading.get_ident(), span)), 10, [], 1, pool=False)
    assert calls == [(threading.get_ident(), (0, 10))]
    calls.clear()
    loop_pool.run_blocks(lambda *span: calls.append(span), 10, [], 4)  # the pool's way: blocks
    assert sorted(calls) == [(0, 4), (4, 8), (8, 10)]
