"""models.loop_pool: the compiled loops are built for the host's full vector width and run on torch's
OpenMP threads where they can."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from llvmlite import binding

from models import kv_stats, loop_pool
from models.loop_pool import numba_for_host


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
        assert set(ids.tolist()) == {0, 1}  # two OpenMP threads took the blocks
        assert len(os.listdir(f"/proc/{os.getpid()}/task")) == threads  # none started for it
