"""Valid but unusual inputs give correct results: empty dimensions, stride-0 (expanded) inputs,
NaN and Inf that propagate, dropout p = 1, huge but valid positions."""

import math

import pytest
import torch

import posenc
from references import reference_code


@pytest.mark.parametrize("shape", [(0, 5, 8), (2, 0, 8), (2, 5, 0), (0, 0, 0)])
def test_empty_add_positional_and_backward(shape):
    x = torch.randn(shape, requires_grad=True)
    y = posenc.add_positional(x, dropout=0.5)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_empty_embedding_rotary_and_tables():
    weight = torch.randn(7, 4, requires_grad=True)
    table = torch.randn(5, 4, requires_grad=True)
    ids = torch.zeros(3, 0, dtype=torch.long)
    y = posenc.embedding(ids, weight, kind="learned", table=table, dropout=0.3)
    assert y.shape == (3, 0, 4)
    y.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(table.grad, torch.zeros_like(table))
    q = torch.randn(2, 0, 3, 8)
    assert posenc.rotary(q, positions=torch.zeros(0, dtype=torch.long)).shape == q.shape
    assert posenc.rotary(torch.randn(0, 2, 8), layout="thd",
                         cu_seqlens=torch.tensor([0, 0])).shape == (0, 2, 8)
    assert posenc.positional_encoding(torch.zeros(0, 3, dtype=torch.long), 6).shape == (0, 3, 6)
    assert posenc.positional_encoding(3, 0).shape == (3, 0)
    freqs, _ = posenc.rope_frequencies(0)
    assert freqs.shape == (0,)
    # rotary_dim 0 rotates nothing: the identity, everywhere.
    q = torch.randn(1, 4, 2, 6)
    assert torch.equal(posenc.rotary(q, rotary_dim=0), q)


def test_expanded_inputs():
    """Stride-0 inputs read correctly and outputs are fresh dense tensors."""
    row = torch.randn(1, 1, 8)
    x = row.expand(3, 5, 8)  # strides (0, 0, 1)
    y = posenc.add_positional(x, offset=7)
    assert y.is_contiguous()
    want = row.double() + reference_code(torch.arange(7, 12), 8)
    torch.testing.assert_close(y.double(), want.expand(3, 5, 8), atol=2e-6, rtol=0)
    q = torch.randn(1, 1, 1, 8).expand(2, 4, 3, 8)
    got = posenc.rotary(q)
    want = posenc.rotary(q.contiguous())
    assert torch.equal(got, want)
    weight = torch.randn(1, 8).expand(6, 8)  # every row the same
    ids = torch.tensor([[0, 5, 3]]).expand(4, 3)
    torch.testing.assert_close(posenc.embedding(ids, weight),
                               posenc.embedding(ids.contiguous(), weight.contiguous()))


def test_nan_and_inf_propagate():
    x = torch.randn(2, 4, 6)
    x[0, 1, 2] = math.nan
    x[1, 3, 0] = math.inf
    x[1, 0, 5] = -math.inf
    y = posenc.add_positional(x)
    assert torch.isnan(y[0, 1, 2]) and y[1, 3, 0] == math.inf and y[1, 0, 5] == -math.inf
    assert torch.isfinite(y).sum() == x.numel() - 3
    q = torch.randn(1, 3, 1, 4)
    q[0, 1, 0, 0] = math.nan
    out = posenc.rotary(q)
    # The NaN reaches both members of its pair (channels 0 and 2), nothing else.
    assert torch.isnan(out[0, 1, 0, 0]) and torch.isnan(out[0, 1, 0, 2])
    assert torch.isnan(out).sum() == 2
    weight = torch.randn(4, 6)
    weight[2] = math.inf
    e = posenc.embedding(torch.tensor([[2, 1]]), weight)
    assert torch.isinf(e[0, 0]).all() and torch.isfinite(e[0, 1]).all()


def test_dropout_one_gives_zeros_like_pytorch():
    x = torch.randn(3, 5, 8, requires_grad=True)
    y = posenc.add_positional(x, dropout=1.0)
    assert torch.equal(y, torch.zeros_like(y))
    assert torch.equal(torch.nn.functional.dropout(x, p=1.0), torch.zeros_like(x))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    weight = torch.randn(9, 8, requires_grad=True)
    e = posenc.embedding(torch.randint(0, 9, (2, 5)), weight, dropout=1.0)
    assert torch.equal(e, torch.zeros_like(e))
    e.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    # p in (0, 1) keeps some, p = 1 in eval mode is the identity.
    assert torch.equal(posenc.add_positional(x, dropout=1.0, training=False),
                       posenc.add_positional(x))


def test_huge_valid_positions_and_offsets():
    """Positions up to int64's edge are valid for computed codes and rotary: finite results."""
    x = torch.randn(1, 3, 8)
    y = posenc.add_positional(x, offset=2**63 - 3)
    assert torch.isfinite(y).all()
    y = posenc.add_positional(x, positions=torch.tensor([0, 2**62, 2**63 - 1]))
    assert torch.isfinite(y).all()
    q = torch.randn(1, 3, 1, 8)
    assert torch.isfinite(posenc.rotary(q, offset=2**63 - 3)).all()
    assert torch.isfinite(posenc.rotary(q, positions=torch.tensor([0, 1, 2**63 - 1]))).all()


def test_positional_encoding_device_matches_by_type_and_index():
    positions = torch.arange(3)
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        assert posenc.positional_encoding(positions, 8, device=device).shape == (3, 8)
    meta = torch.arange(3, device="meta")
    assert posenc.positional_encoding(meta, 8, device="meta").device.type == "meta"
    with pytest.raises(ValueError, match="differs from positions.device"):
        posenc.positional_encoding(positions, 8, device="meta")


def test_tiny_frequencies_give_their_exact_angle_not_nan():
    # Frequencies far below 2^-1000 (subnormal ones included) turn by about pos * w: sin ~ pos * w,
    # cos ~ 1, never NaN.
    positions = torch.tensor([0, 1, 2**24 - 1])
    pe = posenc.positional_encoding(positions, 2048, base=1e308, dtype=torch.float64)
    want = reference_code(positions.double(), 2048, "sinusoidal", 1e308, "vaswani", "interleaved")
    # (The float64 reference itself is about pos * 2^-53 rad off at pos = 2^24 - 1.)
    torch.testing.assert_close(pe, want, atol=1e-8, rtol=0)
    grid = posenc.positional_encoding(13, 8, dtype=torch.float64,
                                      grid=posenc.Grid((3, 4), extra_tokens=1,
                                                       scale=(1e-300, 1.0)))
    assert not grid.isnan().any()
    # The first axis's coordinates scaled by 1e-300: sin 0, cos 1 on its channels.
    torch.testing.assert_close(grid[1:, 4:6], torch.zeros(12, 2, dtype=torch.float64))
    torch.testing.assert_close(grid[1:, 6:], torch.ones(12, 2, dtype=torch.float64))
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    for rotated in (posenc.rotary(q, scaling={"rope_type": "linear", "factor": 1e300}),
                    posenc.rotary(q, inv_freq=torch.full((4,), 1e-310, dtype=torch.float64))):
        # Angles of about 1e-300 rad: the identity, to the last bit of float64.
        torch.testing.assert_close(rotated, q, atol=1e-15, rtol=0)
    x = torch.randn(2, 5, 2048)
    assert not posenc.add_positional(x, base=1e308).isnan().any()
