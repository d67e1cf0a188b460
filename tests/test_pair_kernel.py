"""models.pair_kernel: the fused CPU loop gives what the torch ops it stands in for give, and steps
aside wherever someone must see those ops (autograd, dispatch modes, other shapes)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from model_support import counting
from torch.utils.flop_counter import FlopCounterMode

from models import registry
from models.implicit import mix_neighbours
from models.mlp import MLP
from models.pair_kernel import PAIR_BLOCK, decode_grid, decode_pairs, decode_queries, fusable, query_macs

FEATURES, HIDDEN = 64, 256
REPO = Path(__file__).resolve().parent.parent


def problem(n: int, seed: int, pixels: int = 300, depth: int = 2, pos_cols: int = 2):
    """A decoder and n random pairs over a table of `pixels` rows."""
    torch.manual_seed(seed)
    decoder = MLP(FEATURES + pos_cols, HIDDEN, 3, depth).eval()
    table = torch.randn(pixels, HIDDEN)
    rows = torch.randint(0, pixels, (n,))
    pos = torch.randn(n, pos_cols)
    return decoder, table, rows, pos, decoder.net[0].weight[:, FEATURES:]


def reference(decoder: MLP, table, rows, pos, pos_weight) -> torch.Tensor:
    """The plain formulation: every layer after the first, on the gathered first-layer rows."""
    hidden = table[rows] + pos @ pos_weight.t()
    for layer in list(decoder.net)[1:]:
        hidden = layer(hidden)
    return hidden


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 777, 3 * PAIR_BLOCK + 5])
@torch.no_grad()
def test_fused_loop_equals_the_torch_ops(n, two_threads) -> None:
    decoder, table, rows, pos, pos_weight = problem(n, seed=n)
    assert fusable(decoder, pos_weight, table, pos)
    got = decode_pairs(decoder, table, rows, pos, pos_weight)
    assert got.shape == (n, 3)
    torch.testing.assert_close(got, reference(decoder, table, rows, pos, pos_weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch,queries", [(1, 1), (1, PAIR_BLOCK + 3), (3, 1000)])
@torch.no_grad()
def test_fused_query_loop_mixes_four_pairs_like_the_torch_ops(batch, queries, two_threads) -> None:
    decoder, table, _, _, pos_weight = problem(1, seed=queries)
    rows = torch.randint(0, table.shape[0], (batch, 4, queries))
    rel = torch.rand(batch, 4, queries, 2) * 2 - 1
    weight = torch.rand(batch, 4, queries)
    bias = torch.randn(HIDDEN)  # the first layer's, which the loop adds to the table's rows
    got = decode_queries(decoder, table, bias, rows, rel, weight, pos_weight)
    assert got.shape == (batch, queries, 3)
    pairs = reference(decoder, table + bias, rows.reshape(-1), rel.reshape(-1, 2), pos_weight)
    want = (pairs.view(batch, 4, queries, 3) * weight[..., None]).sum(1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mix_neighbours(pairs.view(batch, 4, queries, 3), weight), want)


@pytest.mark.parametrize("depth", [2, 4])
@torch.no_grad()
def test_torch_query_path_mixes_before_the_output_layer_and_counts_query_macs(depth) -> None:
    """Under a dispatch mode (the FLOP counter) the torch ops decode: the same mix as the pairs'
    outputs mixed, with one output product per query (`query_macs`), for shallow and deep MLPs."""
    batch, queries = 2, 700  # several tiles of queries
    decoder, table, _, _, pos_weight = problem(1, seed=depth, depth=depth)
    rows = torch.randint(0, table.shape[0], (batch, 4, queries))
    rel = torch.rand(batch, 4, queries, 2) * 2 - 1
    weight = torch.rand(batch, 4, queries)  # not summing to 1: the bias is scaled by their sum
    bias = torch.randn(HIDDEN)
    with counting() as counter:
        got = decode_queries(decoder, table, bias, rows, rel, weight, pos_weight)
    pairs = reference(decoder, table + bias, rows.reshape(-1), rel.reshape(-1, 2), pos_weight)
    want = mix_neighbours(pairs.view(batch, 4, queries, 3), weight)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    pair_macs = decoder.macs_per_query - FEATURES * HIDDEN  # the table holds the feature columns
    assert counter.get_total_flops() // 2 == batch * queries * query_macs(decoder, pair_macs)
    assert query_macs(decoder, pair_macs) < 4 * pair_macs


FORK_CHILD = """
import os, sys, numpy, torch
sys.path.insert(0, "tests")
from test_pair_kernel import problem, reference
from models.pair_kernel import PAIR_BLOCK, decode_pairs

torch.set_num_threads(2)  # the fused loop runs in blocks on two threads
p = problem(3 * PAIR_BLOCK, seed=5)
with torch.no_grad():
    want = reference(*p).numpy()
    decode_pairs(*p)  # the parent's loop threads (pool or OpenMP team) are now running
    pid = os.fork()
    if pid == 0:  # only the loop here: GNU OpenMP, torch's included, is unusable after a fork
        got = decode_pairs(*p).numpy()
        os._exit(0 if numpy.allclose(got, want, atol=1e-5, rtol=1e-5) else 3)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_the_fused_loop_with_threads_of_its_own() -> None:
    """The parent's loop threads do not survive a fork: a child reusing the parent's pool would
    hang, and numba terminates a child that runs a loop on the OpenMP runtime its parent started.
    The child runs its loops on a pool of its own. In a fresh interpreter: forking this test
    process, with its many threads, is unsafe."""
    done = subprocess.run([sys.executable, "-c", FORK_CHILD], cwd=REPO, timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


@torch.no_grad()
def test_concurrent_calls_each_get_their_own_result(two_threads) -> None:
    problems = [problem(2 * PAIR_BLOCK + i, seed=i) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: decode_pairs(*p), problems))
    for p, got in zip(problems, results, strict=True):
        torch.testing.assert_close(got, reference(*p), atol=1e-5, rtol=1e-5)


def test_torch_ops_run_where_they_must_be_seen() -> None:
    decoder, table, rows, pos, pos_weight = problem(100, seed=1)
    with torch.no_grad():
        assert fusable(decoder, pos_weight, table, pos)
        with counting() as counter:  # a dispatch mode must see every product
            assert not fusable(decoder, pos_weight, table, pos)
            decode_pairs(decoder, table, rows, pos, pos_weight)
        assert counter.get_total_flops() == 2 * 100 * (2 * HIDDEN + HIDDEN * 3)
        assert not fusable(decoder, pos_weight, table.double(), pos.double())
        deeper, table3, _, pos3, weight3 = problem(100, seed=1, depth=3)
        assert not fusable(deeper, weight3, table3, pos3)  # its wide products run well as torch ops
        narrow, table2, _, pos2, weight2 = problem(100, seed=1, pos_cols=4)
        assert not fusable(narrow, weight2, table2, pos2)
    assert not fusable(decoder, pos_weight, table, pos)  # autograd on: the parameters require grad
    got = decode_pairs(decoder, table, rows, pos, pos_weight)
    got.sum().backward()
    assert decoder.net[2].weight.grad is not None
    torch.testing.assert_close(got.detach(), reference(decoder, table, rows, pos, pos_weight).detach())


@torch.no_grad()
def test_moeisr_tiers_decode_alike_fused_and_as_torch_ops(lr_image) -> None:
    """Whole-model check: the FLOP counter's dispatch mode sends every pair through the torch ops.
    The shipped weights: a fresh mapper routes to the two lightest experts only, these use all."""
    torch.manual_seed(3)
    model = registry.load("moeisr")
    for tier in model.tiers():
        fused = model.upscale(lr_image, (45, 61), tier)
        with FlopCounterMode(display=False):
            plain = model.upscale(lr_image, (45, 61), tier)
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_moeisr_routed_decoding_equals_the_plain_formulation(lr_image) -> None:
    """Inference (first layer per LR pixel, cell in the bias, fused loops) against the training
    formulation: every pair's expert on the concatenated [feature, offset, cell], same routing."""
    from models.base import model_range
    from models.implicit import flat_coords
    from models.moeisr import TrainRouting

    torch.manual_seed(4)
    model = registry.build("moeisr").eval()
    size = (45, 61)
    coord = flat_coords(size, 0, size[0] * size[1], lr_image.device)[None]
    for tier in model.tiers():
        state = model.encode(model_range(lr_image), tier.knob, size)
        routed = model.decode(state, coord, size, tier.knob)
        plain = model.decode(state, coord, size, TrainRouting())
        torch.testing.assert_close(routed, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "lr_size,out_size,chunk",
    [
        ((32, 32), (96, 96), 100_000),  # ×3: queries on the edge pixels' centres, one chunk
        ((17, 23), (61, 40), 997),  # asymmetric, chunks that end mid-row
        ((9, 13), (101, 97), PAIR_BLOCK + 11),  # ×11 / ×7.5, blocks split across threads
        ((20, 20), (15, 26), 64),  # fewer output rows than LR rows
    ],
)
@torch.no_grad()
def test_moeisr_grid_decode_equals_the_per_query_decode(
    lr_size, out_size, chunk, two_threads, monkeypatch
) -> None:
    """One expert on every LR pixel: `decode_grid` finishes each chunk from per-axis tables
    (neighbours, offsets, weights, the upsample) where the generic path computes them per query."""
    from models import moeisr
    from models.base import ScalableSR, model_range

    torch.manual_seed(6)
    model = registry.build("moeisr").eval()
    lr = model_range(torch.rand(2, 3, *lr_size))
    calls = []
    monkeypatch.setattr(moeisr, "decode_grid", lambda *a: calls.append(1) or decode_grid(*a))
    state = model.encode(lr, 0.0, out_size)
    got = model.decode_image(state, lr, out_size, 0.0, chunk)
    want = ScalableSR.decode_image(model, state, lr, out_size, 0.0, chunk)
    assert len(calls) == -(-out_size[0] * out_size[1] // chunk)
    assert got.shape == (2, 3, *out_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("expert,fused", [(0, True), (1, False)])
@torch.no_grad()
def test_moeisr_full_budget_routed_to_one_expert_decodes_on_the_grid_only_if_fusable(
    expert, fused, lr_image, monkeypatch
) -> None:
    from models import moeisr
    from models.base import ScalableSR, model_range

    torch.manual_seed(7)
    model = registry.build("moeisr").eval()
    model.mapper[-1].bias[expert] = 1e4  # the mapper picks this expert everywhere
    calls = []
    monkeypatch.setattr(moeisr, "decode_grid", lambda *a: calls.append(1) or decode_grid(*a))
    size, lr = (45, 61), model_range(lr_image)
    state = model.encode(lr, 1.0, size)
    assert model.sole_expert(state) == expert
    got = model.decode_image(state, lr, size, 1.0, 1000)
    assert bool(calls) == fused
    torch.testing.assert_close(
        got, ScalableSR.decode_image(model, state, lr, size, 1.0, 1000), atol=1e-5, rtol=1e-5
    )


@torch.no_grad()
def test_moeisr_band_table_is_each_pixels_expert_product_plus_its_bias(lr_image) -> None:
    """The band table's row of a pixel is its expert's bare feature product (`band_product`,
    which the loops take for a sole expert) plus that expert's bias, with one expert on the
    band and with two sharing it."""
    from models.base import model_range

    torch.manual_seed(8)
    model = registry.build("moeisr").eval()
    size, lr = (45, 61), model_range(lr_image)
    band = (0, lr.shape[-2])
    state = model.encode(lr, 1.0, size)
    assert model.sole_expert(state) == 0  # an untrained mapper's pick everywhere
    mixed = dataclasses.replace(state, pick=torch.arange(state.pick.numel()).view_as(state.pick) % 2)
    bias = [model.first_bias(j, size, lr.shape[-2:], lr.device) for j in (0, 1)]
    bare = [model.band_product(state, band, j) for j in (0, 1)]
    assert not torch.allclose(bare[0], bare[1])
    torch.testing.assert_close(model.band_table(state, band, size)[0], bare[0] + bias[0])
    table, pick = model.band_table(mixed, band, size)
    torch.testing.assert_close(pick, mixed.pick.reshape(-1))
    for j in (0, 1):
        torch.testing.assert_close(table[pick == j], (bare[j] + bias[j])[pick == j])
