"""models.loop_pool: the compiled loops are built for the host's full vector width."""

from __future__ import annotations

import os

import pytest
from llvmlite import binding

from models import kv_stats
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
