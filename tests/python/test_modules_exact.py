"""Modules give the bits of their functions, keep the exact-angle contract, offer transformers'
float32 rounding as an explicit option, and load the checkpoints of the code they replace."""

import math

import pytest
import torch

import posenc
from references import TutorialPositionalEncoding, fairseq_sinusoidal_table

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Positions across the exact-angle range, up to 2^24 - 1.
FAR = torch.tensor([0, 1, 100, 10**5, 10**6, 10**7, 2**24 - 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaling", [None, {"rope_type": "yarn", "factor": 4.0,
                                            "original_max_position_embeddings": 4096}])
def test_rotary_module_equals_function_bit_for_bit(dtype, scaling):
    module = posenc.nn.RotaryEmbedding(64, base=500000.0, scaling=scaling,
                                       max_position_embeddings=16384)
    q = torch.randn(2, len(FAR), 3, 64).to(dtype)
    k = torch.randn(2, len(FAR), 1, 64).to(dtype)
    got = module(q, k, positions=FAR)
    want = posenc.rotary(q, k, positions=FAR, base=500000.0, scaling=scaling,
                         max_position_embeddings=16384)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # Moving the module to a low-precision dtype does not round its frequencies.
    module.to(torch.bfloat16)
    assert module.inv_freq.dtype == torch.float64
    assert torch.equal(module(q, positions=FAR), want[0])


def test_rotary_module_keeps_exact_angles_far_out():
    """The module is within 2e-6 of float64 at positions up to 2^24 (the float32 inv_freq buffer
    it used to hold was off by 0.11 rad at 10^6)."""
    dim = 16
    module = posenc.nn.RotaryEmbedding(dim)
    q = torch.zeros(1, len(FAR), 1, dim, dtype=torch.float32)
    q[..., : dim // 2] = 1.0  # rotates (1, 0) pairs: the output is (cos, sin)
    out = module(q, positions=FAR)[0, :, 0].double()
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = FAR.double()[:, None] * inv_freq[None]
    assert (out[:, : dim // 2] - torch.cos(angle)).abs().max() < 2e-6
    assert (out[:, dim // 2:] - torch.sin(angle)).abs().max() < 2e-6


def hf_rotary(q, positions, inv_freq):
    """transformers' rotary embedding and apply_rotary_pos_emb, as published (float32 tables)."""
    inv = inv_freq[None, :, None].float().expand(positions.shape[0], -1, 1)
    freqs = (inv @ positions[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, S, 1, D) for q of (B, S, H, D)
    half = q.shape[-1] // 2
    rotated = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
    return q * cos + rotated * sin


@pytest.mark.parametrize("use_module", [False, True])
def test_transformers_precision_reproduces_hf_tables(use_module):
    dim = 64
    positions = torch.tensor([[0, 7, 1000, 10**5, 10**6, 3 * 10**6]])
    q = torch.randn(1, positions.shape[1], 2, dim)
    hf_inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    want = hf_rotary(q, positions, hf_inv_freq)
    if use_module:
        module = posenc.nn.RotaryEmbedding(dim, precision="transformers")
        assert torch.equal(module.inv_freq, hf_inv_freq)
        got = module(q, positions=positions)
        exact = posenc.nn.RotaryEmbedding(dim)(q, positions=positions)
    else:
        got = posenc.rotary(q, positions=positions, precision="transformers")
        exact = posenc.rotary(q, positions=positions)
    # Same float32 angles: equal up to the last bits of float32 cos/sin.
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)
    # The exact angles differ from transformers' float32 ones by up to ~0.1 rad at 10^6.
    assert (exact - want).abs().max() > 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
def test_encoding_and_embedding_modules_equal_functions(dtype):
    x = torch.randn(6, 2, 16).to(dtype)  # (T, B, D)
    enc = posenc.nn.PositionalEncoding(16, dropout=0.0, kind="cosine", scale=2.0).eval()
    want = posenc.add_positional(x.movedim(0, -2), kind="cosine", scale=2.0, offset=10**6)
    assert torch.equal(enc(x, offset=10**6), want.movedim(-2, 0))
    emb = posenc.nn.PositionalEmbedding(50, 16, padding_idx=1, positions="fairseq",
                                        dtype=dtype).eval()
    ids = torch.randint(0, 50, (3, 9))
    want = posenc.embedding(ids, emb.weight, padding_idx=1, positions="fairseq")
    assert torch.equal(emb(ids), want)


def test_tutorial_checkpoint_loads_into_positional_encoding():
    tutorial = TutorialPositionalEncoding(32, max_len=5000, dtype=torch.float32).eval()
    module = posenc.nn.PositionalEncoding(32).eval()
    module.load_state_dict(tutorial.state_dict())  # strict: "pe" is accepted after a check
    x = torch.randn(40, 2, 32)
    torch.testing.assert_close(module(x), tutorial(x), atol=1e-5, rtol=0)
    # Another code (base, layout) is refused, naming the entry.
    with pytest.raises(ValueError, match="'pe' does not match"):
        posenc.nn.PositionalEncoding(32, layout="concat").load_state_dict(tutorial.state_dict())
    with pytest.raises(ValueError, match="'pe' does not match"):
        posenc.nn.PositionalEncoding(32, base=500.0).load_state_dict(tutorial.state_dict())


def test_fairseq_and_transformers_buffers_load():
    # fairseq's SinusoidalPositionalEmbedding saves _float_tensor (and older versions weights).
    weight = torch.randn(30, 16)
    module = posenc.nn.PositionalEmbedding(30, 16, padding_idx=1, positions="fairseq",
                                           convention="tensor2tensor", layout="concat")
    table = fairseq_sinusoidal_table(40, 16, padding_idx=1).float()
    module.load_state_dict({"weight": weight, "_float_tensor": torch.zeros(1), "weights": table})
    assert torch.equal(module.weight.detach(), weight)
    with pytest.raises(ValueError, match="'weights' does not match"):
        posenc.nn.PositionalEmbedding(30, 16, padding_idx=1).load_state_dict(
            {"weight": weight, "weights": table})
    # transformers' Marian-style sinusoidal table: sin in the first half, cos in the second.
    n, d = 64, 16
    position_enc = torch.tensor([[pos / math.pow(10000, 2 * (j // 2) / d) for j in range(d)]
                                 for pos in range(n)], dtype=torch.float64)
    marian = torch.empty(n, d)
    marian[:, : d // 2] = torch.sin(position_enc[:, 0::2]).float()
    marian[:, d // 2:] = torch.cos(position_enc[:, 1::2]).float()
    posenc.nn.PositionalEncoding(d, layout="concat").load_state_dict({"weight": marian})
    with pytest.raises(ValueError, match="'weight' does not match"):
        posenc.nn.PositionalEncoding(d).load_state_dict({"weight": marian})
