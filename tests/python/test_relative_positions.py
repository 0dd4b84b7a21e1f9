"""Negative (relative) positions of the computed codes: Transformer-XL's, XLNet's and Conformer's
relative rows against float64 references written from the published code, through every entry
point that takes positions, on the CPU and (where present) CUDA."""

import math

import pytest
import torch
from torch.testing._internal.optests import opcheck

import posenc
from references import reference_code

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def espnet_rel_positional_rows(length: int, dim: int) -> torch.Tensor:
    """ESPnet's RelPositionalEncoding (the "latest" one Conformer uses; NeMo's and transformers'
    Parakeet make the same rows), in float64: the rows of relative positions
    length - 1, ..., 0, ..., -(length - 1), sin and cos interleaved."""
    position = torch.arange(0, length, dtype=torch.float64).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * -(math.log(10000.0) / dim))
    pe_positive = torch.zeros(length, dim, dtype=torch.float64)
    pe_negative = torch.zeros(length, dim, dtype=torch.float64)
    pe_positive[:, 0::2] = torch.sin(position * div_term)
    pe_positive[:, 1::2] = torch.cos(position * div_term)
    pe_negative[:, 0::2] = torch.sin(-1 * position * div_term)
    pe_negative[:, 1::2] = torch.cos(-1 * position * div_term)
    pe_positive = torch.flip(pe_positive, [0])
    pe_negative = pe_negative[1:]
    return torch.cat([pe_positive, pe_negative], dim=0)


def xlnet_relative_rows(qlen: int, klen: int, dim: int) -> torch.Tensor:
    """XLNet's bidirectional relative positional embedding (relative_positional_encoding with
    attn_type "bi", no clamp), in float64: positions klen, ..., -qlen + 1, sin then cos."""
    freq_seq = torch.arange(0, dim, 2.0, dtype=torch.float64)
    inv_freq = 1 / torch.pow(10000, (freq_seq / dim))
    pos_seq = torch.arange(klen, -qlen, -1.0, dtype=torch.float64)
    sinusoid_inp = torch.einsum("i,d->id", pos_seq, inv_freq)
    return torch.cat([torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)], dim=-1)


TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length,dim", [(40, 64), (300, 144), (1500, 256)])
def test_conformer_relative_rows(device, dtype, length, dim):
    got = posenc.positional_encoding(torch.arange(length - 1, -length, -1, device=device), dim,
                                     dtype=dtype)
    want = espnet_rel_positional_rows(length, dim)
    assert got.shape == (2 * length - 1, dim) and got.dtype == dtype
    torch.testing.assert_close(got.cpu().double(), want, atol=TOLERANCE[dtype], rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_xlnet_bidirectional_rows(device):
    qlen, klen, dim = 37, 60, 96
    got = posenc.positional_encoding(torch.arange(klen, -qlen, -1, device=device), dim,
                                     layout="concat")
    torch.testing.assert_close(got.cpu().double(), xlnet_relative_rows(qlen, klen, dim),
                               atol=2e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["sinusoidal", "linear", "damped", "cosine"])
def test_exact_angles_down_to_minus_2_pow_24(device, kind):
    # Runs that count up through 0, and the far end of the contract.
    positions = torch.cat([torch.arange(-700, 700), torch.arange(-(2**24) + 1, -(2**24) + 600)])
    base = 10000.0 if kind == "sinusoidal" else 100.0
    got = posenc.positional_encoding(positions.to(device), 70, kind=kind, base=base)
    want = reference_code(positions, 70, kind=kind, base=base)
    torch.testing.assert_close(got.cpu().double(), want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", [True, False])
def test_add_positional_with_relative_positions(device, shared):
    torch.manual_seed(0)
    B, T, D = 3, 50, 32
    x = torch.randn(B, T, D, dtype=torch.float64, device=device)
    positions = torch.arange(T // 2, T // 2 - T, -1, device=device)  # 25 .. -24
    if not shared:
        positions = positions[None] - torch.arange(B, device=device)[:, None] * 7
    y = posenc.add_positional(x, positions=positions, scale=2.0)
    want = 2.0 * x.cpu() + reference_code(positions.cpu().expand(B, T), D)
    torch.testing.assert_close(y.cpu(), want, atol=1e-12, rtol=0)
    # The gradient of x under dropout and a multiplied code: gradcheck in float64.
    xg = x[:, :6, :8].clone().requires_grad_()
    p = positions[..., :6] - 3
    generator = torch.Generator(device=device).manual_seed(5)
    state = generator.get_state()

    def f(x):
        generator.set_state(state)
        return posenc.add_positional(x, positions=p, combine="mul", dropout=0.25,
                                     generator=generator)

    assert torch.autograd.gradcheck(f, (xg,))


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_weight_gradient_at_relative_positions(device):
    # In "mul" mode the weight gradient evaluates the code at each row's position.
    torch.manual_seed(1)
    V, B, T, D = 11, 2, 9, 16
    ids = torch.randint(0, V, (B, T), device=device)
    positions = torch.arange(4, 4 - T, -1, device=device)
    weight = torch.randn(V, D, dtype=torch.float64, device=device, requires_grad=True)
    y = posenc.embedding(ids, weight, positions=positions, combine="mul", scale=1.0)
    grad = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, weight, grad)
    w = weight.detach().cpu().requires_grad_()
    want_y = torch.nn.functional.embedding(ids.cpu(), w) * reference_code(positions.cpu(), D)
    (want,) = torch.autograd.grad(want_y, w, grad.cpu())
    torch.testing.assert_close(y.detach().cpu(), want_y.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(got.cpu(), want, atol=1e-12, rtol=0)


def test_opcheck_positional_encoding_relative_rows():
    opcheck(torch.ops.posenc.positional_encoding.default, (torch.arange(5, -6, -1), 12), {})


def test_tables_and_grids_still_need_positions_from_zero():
    x = torch.randn(1, 3, 8)
    with pytest.raises(IndexError, match=r"positions must be >= 0 \(rows of the table\), got -1"):
        posenc.add_positional(x, kind="learned", table=torch.randn(5, 8),
                              positions=torch.tensor([0, -1, 2]))
    with pytest.raises(IndexError, match=r"positions must be >= 0 \(token indices of the grid\)"):
        posenc.add_positional(torch.randn(1, 2, 8), grid=posenc.Grid((1, 1), extra_tokens=1),
                              positions=torch.tensor([0, -1]))


# ---- Conformer's relative shift -------------------------------------------------------------

def espnet_rel_shift(x: torch.Tensor) -> torch.Tensor:
    """ESPnet's RelPositionMultiHeadedAttention.rel_shift (the "latest" Conformer), as
    published: pad a zero column, view the rows one longer, drop the first, keep T columns."""
    zero_pad = torch.zeros((*x.size()[:3], 1), device=x.device, dtype=x.dtype)
    x_padded = torch.cat([zero_pad, x], dim=-1)
    x_padded = x_padded.view(*x.size()[:2], x.size(3) + 1, x.size(2))
    return x_padded[:, :, 1:].view_as(x)[:, :, :, : x.size(-1) // 2 + 1]


@pytest.mark.parametrize("T", [1, 2, 7, 33])
def test_relative_shift_is_espnet_rel_shift_as_a_view(T):
    scores = torch.randn(2, 3, T, 2 * T - 1, dtype=torch.float64, requires_grad=True)
    got = posenc.relative_shift(scores)
    want = espnet_rel_shift(scores)
    assert got.shape == (2, 3, T, T)
    assert torch.equal(got, want)
    assert got.untyped_storage().data_ptr() == scores.untyped_storage().data_ptr()  # no copy
    grad = torch.randn_like(got)
    (g_got,) = torch.autograd.grad(got, scores, grad)
    (g_want,) = torch.autograd.grad(want, scores, grad)
    assert torch.equal(g_got, g_want)


def test_relative_shift_of_strided_scores():
    base = torch.randn(4, 9, 3 * 9)
    scores = base[:, :, 5:5 + 17]  # rows 27 apart, T = 9
    assert torch.equal(posenc.relative_shift(scores), espnet_rel_shift(scores[None])[0])
    flipped = torch.randn(2, 17, 9).transpose(-1, -2)  # rows 1 apart, columns 9 apart
    assert torch.equal(posenc.relative_shift(flipped), espnet_rel_shift(flipped[None])[0])
    backwards = torch.randn(9, 17).flip(0)  # negative row stride: a copy
    assert torch.equal(posenc.relative_shift(backwards), espnet_rel_shift(backwards[None, None])[0, 0])


def test_conformer_attention_through_sdpa():
    # ESPnet's RelPositionMultiHeadedAttention scores, (ac + bd) / sqrt(d_k), against SDPA with
    # the shifted position term as attn_mask (pre-scaled, so no copy is made).
    torch.manual_seed(3)
    B, H, T, d_k = 2, 4, 23, 16
    dtype = torch.float64
    q, k, v = (torch.randn(B, H, T, d_k, dtype=dtype) for _ in range(3))
    pos_bias_u, pos_bias_v = torch.randn(H, 1, d_k, dtype=dtype), torch.randn(H, 1, d_k, dtype=dtype)
    linear_pos = torch.randn(H * d_k, H * d_k, dtype=dtype) / math.sqrt(H * d_k)
    rows = posenc.positional_encoding(torch.arange(T - 1, -T, -1), H * d_k, dtype=dtype)
    p = (rows @ linear_pos.T).view(2 * T - 1, H, d_k).transpose(0, 1)  # [H, 2T - 1, d_k]
    scale = 1.0 / math.sqrt(d_k)
    # ESPnet, as published.
    matrix_ac = (q + pos_bias_u) @ k.transpose(-2, -1)
    matrix_bd = espnet_rel_shift((q + pos_bias_v) @ p.transpose(-2, -1))
    want = torch.softmax((matrix_ac + matrix_bd) * scale, dim=-1) @ v
    # posenc's recipe.
    mask = posenc.relative_shift(((q + pos_bias_v) * scale) @ p.transpose(-2, -1))
    got = torch.nn.functional.scaled_dot_product_attention(q + pos_bias_u, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # And the rows are ESPnet's own.
    torch.testing.assert_close(rows, espnet_rel_positional_rows(T, H * d_k), atol=1e-12, rtol=0)


def test_relative_shift_compiles():
    torch._dynamo.reset()
    f = torch.compile(posenc.relative_shift, fullgraph=True)
    scores = torch.randn(2, 5, 9)
    assert torch.equal(f(scores), espnet_rel_shift(scores[None])[0])


@pytest.mark.parametrize("bad,exc,match", [
    ([1.0], TypeError, "scores must be a Tensor"),
    (torch.randn(5), ValueError, r"scores must have shape \(\.\.\., T, 2T - 1\), got \(5,\)"),
    (torch.randn(2, 4, 8), ValueError, r"got \(2, 4, 8\)"),
    (torch.ones(3, 5, dtype=torch.long), TypeError, "scores must be a floating tensor"),
])
def test_relative_shift_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        posenc.relative_shift(bad)
