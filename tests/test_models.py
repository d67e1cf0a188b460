"""The models interface: tiers, shapes, exact chunking, MAC accounting, determinism."""

from __future__ import annotations

import threading

import pytest
import torch
from model_support import counting

from models import registry
from models.anysr import width_for_scale
from models.widths import axis_map

METHODS = ["ssrno", "anysr", "moeisr", "clit"]


def test_registry_lists_the_four_methods() -> None:
    assert registry.available() == METHODS
    with pytest.raises(KeyError, match="unknown method"):
        registry.build("nope")


@pytest.mark.parametrize("name", METHODS)
def test_tiers_are_ordered_and_monotone_in_cost(built_models, name) -> None:
    model = built_models[name]
    tiers = model.tiers()
    assert len(tiers) >= (5 if name == "ssrno" else 3)
    assert [t.index for t in tiers] == list(range(len(tiers)))
    assert len({t.name for t in tiers}) == len(tiers)
    for scale in (2, 3, 4):
        macs = [model.macs(t, (32, 32), (32 * scale, 32 * scale)) for t in tiers]
        assert macs == sorted(macs), (scale, macs)
        assert macs[0] < macs[-1]
    params = [t.params for t in tiers]
    assert params == sorted(params)
    assert params[-1] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("size", [(23, 31), (11, 14), (40, 17), (97, 13)])
def test_output_shape_for_odd_and_asymmetric_scales(built_models, lr_image, name, size) -> None:
    model = built_models[name]
    for tier in (model.tiers()[0], model.tiers()[-1]):
        out = model.upscale(lr_image, size, tier)
        assert out.shape == (1, 3, *size)
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", METHODS)
def test_chunked_decoding_equals_one_pass(built_models, lr_image, name) -> None:
    """Chunking must not change the maths, including SRNO's global Galerkin attention."""
    model = built_models[name]
    size = (37, 29)
    for tier in model.tiers():
        whole = model.upscale(lr_image, size, tier, max_queries=10**9)
        chunked = model.upscale(lr_image, size, tier, max_queries=101)
        assert torch.allclose(whole, chunked, atol=1e-5, rtol=0), (tier.name, (whole - chunked).abs().max())


def plain_galerkin_run(dec, x: torch.Tensor) -> torch.Tensor:
    """The decoder's blocks and head written the textbook way, from the module's own layers: per-head
    layer norm of k and v with gain and shift, q·(kᵀv)/N, core projection, x + FFN(x + attention)."""
    import torch.nn.functional as F

    b, n, _ = x.shape
    h = dec.heads
    for i in range(dec.blocks):
        q, k, v = (t.reshape(b, n, h, -1) for t in dec.qkv[i](x).chunk(3, -1))
        dh = k.shape[-1]
        k = F.layer_norm(k, (dh,)) * dec.norm[f"kg{i}"] + dec.norm[f"kb{i}"]
        v = F.layer_norm(v, (dh,)) * dec.norm[f"vg{i}"] + dec.norm[f"vb{i}"]
        kv = torch.einsum("bnhd,bnhe->bhde", k, v) / n
        attn = torch.einsum("bnhd,bhde->bnhe", q, kv).reshape(b, n, -1)
        x = x + dec.ffn2[i](F.gelu(dec.ffn1[i](x + dec.core[i](attn))))
    return dec.fc2(F.gelu(dec.fc1(x)))


@pytest.mark.parametrize("grid", [3, 5])
def test_clit_folded_position_bias_equals_encoding_every_neighbour(grid) -> None:
    """The bias of all g² neighbours from the query's own encoding equals encoding each
    neighbour's relative position and applying the bias layer to it."""
    from models.clit import Stage

    torch.manual_seed(0)
    stage = Stage(dim=16, heads=4, grid=grid, hidden=8, freqs=8)
    r = grid // 2
    rel = torch.rand(50, 2) * 2 - 1  # a query within its nearest code's cell, half-cells
    offs = torch.arange(-r, r + 1)
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    neighbour_rel = rel[:, None] - 2 * torch.stack([oy.flatten(), ox.flatten()], -1)  # (50, g², 2)
    angles = neighbour_rel[..., None] * stage.freqs
    expected = stage.bias(torch.cat([angles.sin(), angles.cos()], -1).flatten(-2))  # (50, g², heads)
    angles = rel[..., None] * stage.freqs
    weight, bias = stage.position_bias_weights()
    folded = torch.nn.functional.linear(torch.cat([angles.sin(), angles.cos()], -1).flatten(-2), weight, bias)
    torch.testing.assert_close(folded.view(50, grid * grid, 4), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width", [64, 80, 128, 256])  # heads of 4, 5, 8 and 16 channels
@pytest.mark.parametrize("grad", [False, True])
def test_galerkin_fast_decoder_equals_the_plain_formulation(width, grad) -> None:
    """Rearranged weights, k/v normalisation taken out of Σkᵀv, fused maps: same maths, both paths."""
    from models.galerkin import GalerkinDecoder

    torch.manual_seed(0)
    dec = GalerkinDecoder(feat_dim=8, width=width, heads=16, ffn=96, proj=48)
    with torch.no_grad():
        for param in dec.norm.values():  # gains and shifts away from their 1 / 0 start
            param.add_(torch.randn_like(param) * 0.5)
    x = torch.randn(2, 300, width)
    with torch.no_grad():
        expected = plain_galerkin_run(dec, x)
    with torch.set_grad_enabled(grad):
        got = dec.run(dec.narrowed(dec.full_widths(), "slice"), x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("act", [torch.nn.ReLU, torch.nn.GELU])
def test_mlp_thin_output_layer_equals_the_plain_stack(act) -> None:
    """The transposed RGB product gives the plain layer stack's values and gradients, any batch shape."""
    from models.mlp import MLP

    torch.manual_seed(0)
    mlp = MLP(12, 32, 3, depth=3, act=act)
    x = torch.randn(2, 7, 12, requires_grad=True)
    expected = x
    for layer in mlp.net:
        expected = layer(expected)
    got = mlp(x)
    assert got.shape == (2, 7, 3)
    torch.testing.assert_close(got, expected)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    (g_exp,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(g_got, g_exp)
    with torch.no_grad():  # inference: the hidden layers as fused products (`linear_act`)
        torch.testing.assert_close(mlp(x), expected.detach())
        first, first_act = mlp.net[0], mlp.net[1]  # a caller that applied the first activation
        torch.testing.assert_close(mlp.after_first(first_act(first(x)), activated=True), expected.detach())


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("shape", [(4096, 64), (2, 300, 96)])
def test_fused_linear_activation_equals_torch_ops(monkeypatch, act, shape) -> None:
    """The fused oneDNN product with its activation gives torch's values (exact erf GELU, not the
    tanh one), and without the fused op the torch ops give the same."""
    from models import mlp

    torch.manual_seed(0)
    x, weight, bias = torch.randn(shape), torch.randn(80, shape[-1]) * 0.2, torch.randn(80)
    plain = torch.nn.functional.linear(x, weight, bias)
    expected = torch.nn.functional.gelu(plain) if act == "gelu" else torch.relu(plain)
    with torch.no_grad():
        fused = mlp.linear_act(x, weight, bias, act)
        monkeypatch.setattr(mlp, "onednn_linear", lambda: None)
        unfused = mlp.linear_act(x, weight, bias, act)
    assert fused.shape == unfused.shape == expected.shape
    torch.testing.assert_close(fused, expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(unfused, expected, atol=2e-6, rtol=1e-5)


@torch.no_grad()
def test_fused_linear_activation_takes_strided_operands() -> None:
    """Views with strides (a bias sliced out of a wider vector, a transposed weight, a column
    slice of the input) give what the same values densely give."""
    from models.mlp import linear_act

    torch.manual_seed(1)
    x, weight, bias = torch.randn(300, 96)[:, ::2], torch.randn(48, 80).t(), torch.randn(160)[::2]
    expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
    torch.testing.assert_close(linear_act(x, weight, bias, "gelu"), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("shared_weight", [False, True])
def test_fused_linear_activation_image_by_image(monkeypatch, batch, shared_weight) -> None:
    """Each image's own weight and bias: fused per image, batched without the fused op, and
    under autograd, the same values as a plain loop over images."""
    from models import mlp

    torch.manual_seed(2)
    x, bias = torch.randn(batch, 50, 24), torch.randn(batch, 40)
    weight = torch.randn(40, 24) if shared_weight else torch.randn(batch, 40, 24)
    per_image = weight if weight.dim() == 3 else weight.expand(batch, -1, -1)
    gelu = torch.nn.functional.gelu
    expected = torch.stack([gelu(x[i] @ per_image[i].t() + bias[i]) for i in range(batch)])
    with torch.no_grad():
        fused = mlp.linear_act_images(x, weight, bias, "gelu")
    with torch.enable_grad():
        trained = mlp.linear_act_images(x.requires_grad_(), weight, bias, "gelu")
    monkeypatch.setattr(mlp, "onednn_linear", lambda: None)
    with torch.no_grad():
        unfused = mlp.linear_act_images(x, weight, bias, "gelu")
    for got in (fused, trained.detach(), unfused):
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


def test_mlp_rejects_an_activation_it_cannot_fuse() -> None:
    from models.mlp import MLP

    with pytest.raises(ValueError, match="activation"):
        MLP(12, 32, 3, depth=3, act=torch.nn.SiLU)


def test_galerkin_chunking_is_not_the_naive_per_chunk_attention(built_models, lr_image) -> None:
    """Guard against silently normalising attention per chunk (what SRNO's row chunking does)."""
    model = built_models["ssrno"]
    size = (30, 30)
    tier = model.tiers()[-1]
    x = (lr_image - 0.5) / 0.5
    state = model.encode(x, tier.knob, size)
    from models.implicit import flat_coords

    coord = flat_coords(size, 0, 450, x.device)[None]
    naive = model.decode(state, coord, size, tier.knob)
    exact = model.upscale(lr_image, size, tier, max_queries=450).flatten(2).transpose(1, 2)[:, :450]
    from models.implicit import bilinear_at

    naive_img = (naive + bilinear_at(x, coord)) * 0.5 + 0.5
    assert not torch.allclose(naive_img.clamp(0, 1), exact, atol=1e-4)


@pytest.mark.parametrize("name", ["ssrno", "anysr", "clit"])
@pytest.mark.parametrize("max_queries", [10**6, 300])
def test_mac_accounting_matches_a_counted_forward_pass(built_models, lr_image, name, max_queries) -> None:
    """Counted in one pass and in chunks (where SRNO recomputes layers and CLIT band halos)."""
    model = built_models[name]
    size = (30, 41)
    for tier in model.tiers():
        model.upscale(lr_image, size, tier)  # narrowed weights are derived once per tier, then cached
        with counting() as counter:
            model.upscale(lr_image, size, tier, max_queries=max_queries)
        expected = model.macs(tier, tuple(lr_image.shape[-2:]), size, max_queries=max_queries)
        assert counter.get_total_flops() // 2 == expected, tier.name


@pytest.mark.parametrize("name", ["ssrno", "anysr", "moeisr", "clit"])
def test_macs_done_match_a_counted_forward_pass_of_that_batch(built_models, lr_image, name) -> None:
    """The work a real call did, for a batch of two different images (MoEISR's depends on them),
    decoded in three chunks each."""
    max_queries = 1000
    model = built_models[name]
    batch = torch.cat([lr_image, lr_image.flip(-1).roll(5, -2)])
    size = (30, 41)
    for tier in model.tiers():
        model.upscale(batch, size, tier)
        with counting() as counter:
            model.upscale(batch, size, tier, max_queries=max_queries)
        assert counter.get_total_flops() // 2 == model.macs_done(batch, size, tier, max_queries), tier.name


def test_narrow_galerkin_tiers_take_more_queries_per_chunk(built_models, lr_image) -> None:
    """The chunk budget is in full-width activations: AnySR's half-width subnet decodes an output
    in one pass where the full net needs several, with the same result as unchunked."""
    model = built_models["anysr"]
    size = (30, 40)
    half, full = model.tiers()[0], model.tiers()[-1]
    lr_size = tuple(lr_image.shape[-2:])
    budget = 700  # 1,200 queries: two chunks at full width, one at half width
    assert model.macs(half, lr_size, size, max_queries=budget) == model.macs(half, lr_size, size, 10**9)
    assert model.macs(full, lr_size, size, max_queries=budget) > model.macs(full, lr_size, size, 10**9)
    whole = model.upscale(lr_image, size, half, max_queries=10**9)
    assert torch.equal(model.upscale(lr_image, size, half, max_queries=budget), whole)


def test_moeisr_routed_macs_are_counted_exactly_and_budget_is_monotone(built_models, lr_image) -> None:
    model = built_models["moeisr"]
    size = (30, 41)
    x = (lr_image - 0.5) / 0.5
    routed = []
    for tier in model.tiers():
        model.upscale(lr_image, size, tier)
        with counting() as counter:
            model.upscale(lr_image, size, tier)
        state = model.encode(x, tier.knob, size)
        exact = model.routed_macs(state, size)
        assert counter.get_total_flops() // 2 == exact
        with counting() as chunked:  # each chunk's band of LR pixels is counted
            model.upscale(lr_image, size, tier, max_queries=300)
        assert chunked.get_total_flops() // 2 == model.routed_macs(state, size, max_queries=300)
        assert exact <= model.macs(tier, tuple(lr_image.shape[-2:]), size)
        routed.append(exact)
    assert routed == sorted(routed)


def test_moeisr_macs_done_counts_a_batch_decoded_together(built_models, monkeypatch) -> None:
    """One image of a batch routed to a single expert, the other to two: the batch decodes every
    pair to its expert's end (no per-query mix), and macs_done counts just that."""
    from models import moeisr

    model = built_models["moeisr"]
    flat, busy = (
        torch.full((1, 3, 9, 11), 0.5),
        torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(2)),
    )
    with torch.no_grad():
        lows = [float(model.mapper(model.encoder((x - 0.5) / 0.5)).mean()) for x in (flat, busy)]
    split = sum(lows) / 2  # tells the two images apart by their mean logit

    def routing(logits, cost, usage, budget):
        pick = torch.zeros(logits.shape[0], logits[0, 0].numel(), dtype=torch.long)
        for b in range(logits.shape[0]):
            if (float(logits[b].mean()) > split) == (lows[1] > split):  # the busy image
                pick[b, ::2] = 1
        return pick

    monkeypatch.setattr(moeisr, "budget_routing", routing)
    batch, size, tier = torch.cat([flat, busy]), (20, 23), model.tiers()[1]
    alone = model.macs_done(flat, size, tier)  # one expert on every pixel: per query
    with counting() as counter:
        model.upscale(flat, size, tier)
    assert counter.get_total_flops() // 2 == alone
    with counting() as counter:
        model.upscale(batch, size, tier)
    assert counter.get_total_flops() // 2 == model.macs_done(batch, size, tier)
    # In the batch the one-expert image runs every pair to the end: more than on its own.
    assert model.macs_done(batch, size, tier) > alone + model.macs_done(busy, size, tier)


def test_moeisr_budget_moves_pixels_to_lighter_experts() -> None:
    from models.moeisr import budget_routing

    torch.manual_seed(3)
    logits = torch.randn(2, 4, 9, 9) + torch.tensor([0.0, 0.0, 0.0, 3.0]).view(1, 4, 1, 1)
    cost = torch.tensor([0.1, 0.4, 0.7, 1.0])
    usage = torch.ones(81)
    spent = []
    for budget in (0.2, 0.5, 0.8, 1.0):
        pick = budget_routing(logits, cost, usage, budget)
        mean = cost[pick].mean(dim=1)
        if budget < 1.0:
            assert (mean <= budget + 1e-6).all()
        spent.append(float(mean.mean()))
    assert spent == sorted(spent)


def test_moeisr_training_trains_the_cheapest_tier_routing(lr_image) -> None:
    """Sandwich rule: some steps put the lightest expert on every pixel, as the b0 tier does,
    and such a step trains that expert (and the encoder) only."""
    import random

    from models.moeisr import TrainRouting

    torch.manual_seed(0)
    model = registry.build("moeisr")
    rng = random.Random(0)
    draws = [model.sample_training_knob(2.0, rng) for _ in range(200)]
    assert any(d.lightest for d in draws)
    assert any(not d.lightest and d.bias > 0 for d in draws)
    assert any(not d.lightest and d.bias == 0 for d in draws)

    coord = torch.rand(1, 50, 2) * 2 - 1
    target = torch.rand(1, 50, 3)
    model.training_loss(lr_image, coord, (22, 28), TrainRouting(lightest=True), target).backward()
    assert model.experts[0].net[0].weight.grad.abs().sum() > 0
    assert model.encoder.head.weight.grad.abs().sum() > 0
    for module in (model.mapper, *model.experts[1:]):
        assert all(p.grad is None for p in module.parameters())


def test_upscale_is_deterministic(built_models, lr_image) -> None:
    for model in built_models.values():
        a = model.upscale(lr_image, (25, 33))
        b = model.upscale(lr_image, (25, 33))
        assert torch.equal(a, b), model.method


def test_one_model_serves_concurrent_calls_with_different_tiers(built_models, lr_image) -> None:
    """No per-call state on modules: threads with different tiers, and output sizes (so different
    bands and neighbour tables in the compiled loops), get the sequential results."""
    for name in ("ssrno", "clit"):
        model = built_models[name]
        tiers = model.tiers()
        size = {t.name: (27 + t.index, 35 + 3 * t.index) for t in tiers}
        expected = {t.name: model.upscale(lr_image, size[t.name], t) for t in tiers}
        results: dict[str, torch.Tensor] = {}

        def run(tier, model=model, results=results, size=size) -> None:
            for _ in range(3):
                results[tier.name] = model.upscale(lr_image, size[tier.name], tier)

        threads = [threading.Thread(target=run, args=(t,)) for t in tiers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t in tiers:
            assert torch.allclose(results[t.name], expected[t.name], atol=1e-6), (name, t.name)


def test_integral_width_map_reproduces_full_width_and_preserves_constants() -> None:
    assert torch.equal(axis_map(32, 32, "integral"), torch.eye(32))
    m = axis_map(32, 13, "integral")
    assert torch.allclose(m.sum(1), torch.ones(13), atol=1e-6)
    assert torch.equal(axis_map(32, 13, "slice"), torch.eye(32)[:13])


def test_anysr_subnet_follows_scale_group(built_models) -> None:
    assert [width_for_scale(s) for s in (1.1, 1.7, 1.8, 2.5, 2.6, 3.2, 3.3, 4.0, 6.0)] == [
        0.5,
        0.5,
        0.7,
        0.7,
        0.9,
        0.9,
        1.0,
        1.0,
        1.0,
    ]
    model = built_models["anysr"]
    assert model.default_tier((2.0, 2.0)).knob == 0.7
    assert model.default_tier((12.0, 12.0)).knob == 1.0


def test_ssrno_acre_widths_grow_with_epsilon(built_models) -> None:
    widths = [t.knob for t in built_models["ssrno"].tiers()]
    assert [w.decoder.trunk for w in widths] == sorted(w.decoder.trunk for w in widths)
    assert [sum(w.encoder) for w in widths] == sorted(sum(w.encoder) for w in widths)
    assert widths[-1].decoder == built_models["ssrno"].decoder.full_widths()
    assert widths[-1].encoder == built_models["ssrno"].encoder.full_inner()


def test_ssrno_training_draws_include_every_narrow_tier(built_models) -> None:
    """Sandwich rule: the narrow tiers' exact widths are trained, not only random ones."""
    import random

    model = built_models["ssrno"]
    rng = random.Random(0)
    draws = [model.sample_training_knob(2.0, rng) for _ in range(200)]
    tiers = model.tiers()
    for tier in tiers:
        assert any(d == tier.knob for d in draws), tier.name
    assert any(all(d != t.knob for t in tiers) for d in draws)  # random widths still drawn


def test_anysr_training_draws_every_subnet_at_large_scales(built_models) -> None:
    """Algorithm 1 gives ×4 batches only the full net; our extra share trains every narrow subnet
    there too, since the knob offers any width at any scale."""
    import random

    model = built_models["anysr"]
    rng = random.Random(0)
    draws = [model.sample_training_knob(4.0, rng) for _ in range(400)]
    assert {t.knob for t in model.tiers()} == set(draws)
    assert draws.count(1.0) > len(draws) // 2  # the full net keeps most steps
    small = [model.sample_training_knob(1.5, rng) for _ in range(400)]
    assert small.count(0.5) > draws.count(0.5)  # the group's own subnet still dominates


def test_large_scales_and_cell_clamp(built_models, lr_image) -> None:
    """×30 works and stays memory-bounded through chunking (smoke: one small image)."""
    model = built_models["clit"]
    out = model.upscale(lr_image[..., :4, :5], (120, 150), model.tiers()[-1], max_queries=4096)
    assert out.shape == (1, 3, 120, 150)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU/CUDA parity needs a CUDA device")
def test_cpu_cuda_parity(built_models, lr_image) -> None:  # pragma: no cover - needs a GPU
    for name, model in built_models.items():
        cpu = model.upscale(lr_image, (25, 31))
        gpu = model.to("cuda").upscale(lr_image.cuda(), (25, 31)).cpu()
        model.to("cpu")
        assert torch.allclose(cpu, gpu, atol=1e-3), name


def test_models_built_inside_inference_mode_serve(lr_image) -> None:
    """A caller may build or load under torch.inference_mode; the weights must still carry the
    version counters that the derived-weight memo reads (inference tensors have none)."""
    with torch.inference_mode():
        model = registry.build("ssrno").eval()
        tier = model.tiers()[0]
        out = model.upscale(lr_image, (30, 41), tier)
    assert out.shape[-2:] == (30, 41)
    assert all(not p.is_inference() for p in model.parameters())


@pytest.mark.parametrize("name", ["ssrno", "anysr"])
@pytest.mark.parametrize("max_queries", [10**6, 2000])
def test_galerkin_pieces_of_lifted_queries_change_neither_output_nor_mac_count(
    built_models, lr_image, name, max_queries, monkeypatch
) -> None:
    """Lifted queries made in pieces (`LIFT_PIECE_BYTES`), here of 4,096 queries each, in one pass
    and in several: the output of pieces as large as the image, and the counted MACs."""
    from models import galerkin

    model = built_models[name]
    size = (97, 130)  # ×8.8 by ×9.3: four pieces
    tier = model.tiers()[0]
    whole = model.upscale(lr_image, size, tier, max_queries=max_queries)
    monkeypatch.setattr(galerkin, "LIFT_PIECE_BYTES", 1)  # pieces of the least size
    assert model.decoder.lift_piece(model.decoder_widths(tier.knob).trunk) == galerkin.PIECE_STEP
    torch.testing.assert_close(model.upscale(lr_image, size, tier, max_queries=max_queries), whole)
    with counting() as counter:
        model.upscale(lr_image, size, tier, max_queries=max_queries)
    expected = model.macs(tier, tuple(lr_image.shape[-2:]), size, max_queries=max_queries)
    assert counter.get_total_flops() // 2 == expected


@pytest.mark.parametrize("name", ["ssrno", "anysr"])
@pytest.mark.parametrize("max_queries", [10**6, 2000])
def test_galerkin_query_tiles_change_only_the_order_of_sums(
    built_models, lr_image, name, max_queries, monkeypatch
) -> None:
    """Tiles of the per-query layers hold a power of two of queries whose widest tensor fits
    `TILE_BYTES`; smaller tiles (many per piece, a short last one) decode the same image, the
    k/v sums being added in another order."""
    from models import galerkin

    model = built_models[name]
    dec = model.decoder

    def widest_bytes(w) -> int:
        return 4 * max(2 * max(w.attn), max(w.ffn), dec.fc1.out_features)

    for tier in model.tiers():
        w = model.decoder_widths(tier.knob)
        tile = dec.query_tile(w)
        assert tile & (tile - 1) == 0
        assert tile * widest_bytes(w) <= galerkin.TILE_BYTES < 2 * tile * widest_bytes(w)
    size = (97, 130)
    tier = model.tiers()[0]
    whole = model.upscale(lr_image, size, tier, max_queries=max_queries)
    monkeypatch.setattr(galerkin, "TILE_BYTES", 600 * widest_bytes(model.decoder_widths(tier.knob)))
    assert dec.query_tile(model.decoder_widths(tier.knob)) == 512
    torch.testing.assert_close(model.upscale(lr_image, size, tier, max_queries=max_queries), whole)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("max_queries", [10**6, 700])
def test_a_batch_decodes_each_image_as_it_would_alone(built_models, lr_image, name, max_queries) -> None:
    """Images share tiles, chunks and compiled loops in a batch (and SRNO's blocks update their
    batch's strided tiles in place): none of that may mix one image into another."""
    model = built_models[name]
    other = lr_image.flip(-1).roll(5, -2)
    size = (31, 44)
    for tier in (model.tiers()[0], model.tiers()[-1]):
        both = model.upscale(torch.cat([lr_image, other]), size, tier, max_queries=max_queries)
        alone = [model.upscale(image, size, tier, max_queries=max_queries) for image in (lr_image, other)]
        torch.testing.assert_close(both, torch.cat(alone), atol=1e-5, rtol=1e-5)
