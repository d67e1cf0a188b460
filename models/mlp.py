"""Plain MLP decoders (LIIF-style experts, CLIT's per-stage decoder) and their thin output product."""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from models import thin_product
from models.loop_pool import can_run


def thin_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x·Wᵀ + b for an output only a few channels wide (the decoders' RGB layer).

    CPU BLAS runs a (rows × C)·(C × 3) product far below its speed, so on CPU at inference a
    compiled loop takes it (`models.thin_product`). Elsewhere (CUDA, autograd, dispatch modes)
    it is taken as (3 × C)·(C × rows), which on a Xeon cost 0.72–0.83 of the plain product's
    time; the result is then a transposed view of shape (..., out).
    """
    if can_run(x, weight, bias):
        return thin_product.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    return torch.addmm(bias[:, None], weight, flat.t()).t().view(*x.shape[:-1], weight.shape[0])


@cache
def onednn_linear():
    """oneDNN's linear with a pointwise op fused into it, where this torch build has one (its own
    CPU compiler's fusion, `torch.ops.mkldnn._linear_pointwise`); None otherwise. Also the
    Galerkin k/v product's (`kv_stats.product`), with no op fused."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: str) -> torch.Tensor:
    """act(x·Wᵀ + b), act "gelu" (exact, erf) or "relu", as one fused oneDNN op on CPU at inference.

    Fused, the activation is applied to each block of the product while it is in cache, and the
    bias is not first copied into the output. Against torch's product and in-place activation,
    for 4,096 rows on 2 threads: GELU 0.79–0.83 of the time at 64 → 256 (the Galerkin head of
    SSRNO XS), 0.78 at 64 → 64, 0.85–0.90 at 128 → 256, 0.96–1.06 at 256 → 256; ReLU 0.92–0.95 at
    256 → 256. Decoders (two worktrees, alternating, 2 rounds): SSRNO XS ×2 0.86–0.94, S ×2
    0.90–0.95, AnySR w0.5 ×2 0.94–0.97, MoEISR b25 and full ×2 0.94–1.00, CLIT stages1 ×2
    0.97–0.99, SSRNO M and X unchanged. Elsewhere (CUDA, autograd, dispatch modes that must see
    every product) the same maths as torch ops.
    """
    op = onednn_linear()
    if op is not None and can_run(x, weight, bias):
        # Contiguous: the op reads a strided bias as if it were dense (wrong values, no error).
        parts = (x.contiguous(), weight.contiguous(), bias.contiguous())
        return op(*parts, act, [], "none" if act == "gelu" else "")
    return _activate(F.linear(x, weight, bias), act)


def linear_act_images(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, act: str) -> torch.Tensor:
    """`linear_act` image by image, for a weight or bias of each image's own: x (B, N, d),
    weight (B, f, d) or (f, d) for all, bias (B, f). Where the fused op does not run (training,
    CUDA, dispatch modes), one batched product for all images."""
    weights = weight if weight.dim() == 3 else weight.expand(x.shape[0], -1, -1)
    if x.shape[0] == 1:  # no stack (a copy) for the usual single image
        return linear_act(x[0], weights[0], bias[0], act)[None]
    if onednn_linear() is None or not can_run(x, weight, bias):
        return _activate(torch.baddbmm(bias[:, None], x, weights.transpose(1, 2)), act)
    return torch.stack([linear_act(*image, act) for image in zip(x, weights, bias, strict=True)])


def _activate(y: torch.Tensor, act: str) -> torch.Tensor:
    """act(y), in place where autograd allows it."""
    if act == "relu":  # in place: a Linear's backward does not need its output
        return y.relu_()
    return F.gelu(y) if torch.is_grad_enabled() else torch.ops.aten.gelu_(y)


# The activations an MLP decoder may use, by the name `linear_act` knows them.
ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.GELU: "gelu"}


class MLP(nn.Module):
    """`depth` linear layers in → hidden … hidden → out with an activation between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        if depth < 2:
            raise ValueError("an MLP decoder needs at least 2 layers")
        if act not in ACTIVATIONS:
            raise ValueError(f"activation {act.__name__} is not one of {[a.__name__ for a in ACTIVATIONS]}")
        self.act = ACTIVATIONS[act]
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:  # in place where possible: a Linear's output is not needed for its backward
                layers.append(act(inplace=True) if act is nn.ReLU else act())
        self.net = nn.Sequential(*layers)
        self.macs_per_query = sum(dims[i] * dims[i + 1] for i in range(depth))

    def after_first(self, x: torch.Tensor, activated: bool = False) -> torch.Tensor:
        """The layers after the first Linear, given its output, or its activation if activated
        (callers that compute the first layer their own way, e.g. once per LR pixel, or with
        its activation fused, `linear_act`); the output layer is a `thin_linear`."""
        last = self.net[-1]
        return thin_linear(self.between(x, activated), last.weight, last.bias)

    def between(self, x: torch.Tensor, activated: bool = False) -> torch.Tensor:
        """The layers between the first Linear's output (or its activation, if activated) and the
        output layer: the last hidden layer's activations (callers that mix several of them
        before the linear output layer)."""
        # Unpacked, not sliced: slicing an nn.Sequential builds a new module (~35 µs), and MoEISR
        # and CLIT call this once per tile.
        _, first_act, *middle, _ = self.net
        if not activated:
            x = first_act(x)
        for linear in middle[::2]:  # each hidden Linear and its activation, fused where possible
            x = linear_act(x, linear.weight, linear.bias, self.act)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_first(self.net[0](x))
