"""Tensors of more than 2^31 elements: 64-bit indexing end to end (make test-large)."""

import pytest
import torch

import posenc
from references import reference_code

pytestmark = pytest.mark.slow

T, D = 2**22 + 3, 512  # T * D > 2^31
CHECK = slice(T - 4, T)  # rows whose element indices are past 2^31


def test_add_positional_past_2_pow_31():
    x = torch.ones(1, T, D, dtype=torch.bfloat16)
    assert x.numel() > 2**31
    y = posenc.add_positional(x, dropout=0.5, generator=torch.Generator().manual_seed(0))
    tail = y[0, CHECK].double()
    want = 1.0 + reference_code(torch.arange(T)[CHECK], D)
    kept = tail != 0
    torch.testing.assert_close(tail[kept], 2.0 * want[kept], atol=0.05, rtol=0.02)
    assert 0.4 < kept.double().mean().item() < 0.6
    del x, y


def test_embedding_past_2_pow_31():
    ids = torch.arange(T).remainder(7).unsqueeze(0)
    weight = torch.randn(7, D).bfloat16()
    y = posenc.embedding(ids, weight, scale=1.0)
    want = weight.double()[ids[0, CHECK]] + reference_code(torch.arange(T)[CHECK], D)
    torch.testing.assert_close(y[0, CHECK].double(), want, atol=0.05, rtol=0.02)
    del y


def test_rotary_past_2_pow_31():
    q = torch.ones(1, T, 1, D, dtype=torch.bfloat16)
    out = posenc.rotary(q)
    positions = torch.arange(T)[CHECK].double()
    inv_freq = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = positions[:, None] * inv_freq
    want = torch.cat([torch.cos(angle) - torch.sin(angle), torch.cos(angle) + torch.sin(angle)], -1)
    torch.testing.assert_close(out[0, CHECK, 0].double(), want, atol=0.05, rtol=0.02)
