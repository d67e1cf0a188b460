"""models.thin_product: the compiled RGB layer gives torch's product, and `thin_linear` hands it
over only where nobody must see the product (autograd, dispatch modes, other dtypes)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models import thin_product
from models.mlp import thin_linear


@pytest.mark.parametrize(("shape", "out_channels"), [((1, 1, 7), 3), ((2, 1037, 256), 3), ((3000, 64), 5)])
@torch.no_grad()
def test_loop_equals_the_product(shape, out_channels) -> None:
    """Row counts below, at and across the loop's row blocks; batched and flat inputs."""
    torch.manual_seed(shape[-1] + out_channels)
    x = torch.randn(*shape)
    weight, bias = torch.randn(out_channels, shape[-1]) / shape[-1] ** 0.5, torch.randn(out_channels)
    got = thin_product.linear(x, weight, bias)
    want = (x.double() @ weight.double().t() + bias.double()).float()
    assert got.shape == (*shape[:-1], out_channels)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_loop_reads_strided_inputs() -> None:
    """A transposed view and a sliced weight give the same as their contiguous copies."""
    torch.manual_seed(1)
    x = torch.randn(64, 300).t()  # (300, 64), not contiguous
    weight = torch.randn(3, 128)[:, ::2]
    bias = torch.randn(6)[::2]
    want = thin_product.linear(x.contiguous(), weight.contiguous(), bias.contiguous())
    assert torch.equal(thin_product.linear(x, weight, bias), want)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape"),
    [((10, 64), (3, 32), (3,)), ((10, 32), (3, 32), (4,)), ((10, 3), (3,), (3,))],
)
def test_loop_refuses_mismatched_shapes(x_shape, w_shape, b_shape) -> None:
    """The loop has no bounds checks, so a mismatch is refused before it runs, as torch would."""
    with pytest.raises(ValueError, match="do not match"):
        thin_product.linear(torch.randn(*x_shape), torch.randn(*w_shape), torch.randn(*b_shape))


def test_thin_linear_steps_aside_for_autograd_and_dispatch_modes() -> None:
    """With gradients or under the FLOP counter, torch's product runs: both see it."""
    torch.manual_seed(2)
    x = torch.randn(50, 32)
    weight = torch.randn(3, 32, requires_grad=True)
    bias = torch.randn(3)
    y = thin_linear(x, weight, bias)
    y.sum().backward()
    torch.testing.assert_close(weight.grad, x.sum(0).expand(3, -1))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        counted = thin_linear(x, weight, bias)
    assert counter.get_total_flops() == 2 * 50 * 32 * 3
    with torch.no_grad():
        torch.testing.assert_close(thin_linear(x, weight, bias), counted, rtol=1e-5, atol=1e-5)
