"""Float64 references written from the published definitions, for parity tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def reference_code(positions: Tensor, dim: int, kind: str = "sinusoidal", base: float = 10000.0,
                   convention: str = "vaswani", layout: str = "interleaved") -> Tensor:
    """PE(positions) in float64: positions.shape + (dim,)."""
    pos = positions.to(torch.float64).unsqueeze(-1)
    out = torch.zeros(*positions.shape, dim, dtype=torch.float64)
    half = dim // 2
    if kind == "sinusoidal":
        i = torch.arange(half, dtype=torch.float64)
        if convention == "vaswani":
            w = base ** (-2.0 * i / dim)
        else:
            w = torch.exp(-math.log(base) * i / max(half - 1, 1))
        angle = pos * w
        if layout == "interleaved":
            out[..., 0 : 2 * half : 2] = torch.sin(angle)
            out[..., 1 : 2 * half : 2] = torch.cos(angle)
        else:
            out[..., :half] = torch.sin(angle)
            out[..., half : 2 * half] = torch.cos(angle)
        return out
    j = torch.arange(dim)
    i = (j // 2).to(torch.float64)
    even = (j % 2 == 0)
    if kind == "linear":
        amp = base ** (-i)
        angle = pos * (math.pi / base)
        return torch.where(even, amp * torch.cos(angle), amp * torch.sin(angle))
    if kind == "damped":
        amp = 1.0 / torch.sqrt(2.0 ** (i + 1))
        angle = pos / base
        return torch.where(even, amp * torch.cos(angle), amp * torch.sin(angle))
    if kind == "cosine":
        return torch.cos(pos * base ** (-2.0 * j.to(torch.float64) / dim))
    raise ValueError(kind)


class TutorialPositionalEncoding(nn.Module):
    """The PyTorch tutorial's PositionalEncoding (x: (T, B, D)), as published."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000,
                 dtype: torch.dtype = torch.float64):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len, dtype=dtype).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=dtype) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model, dtype=dtype)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pe[: x.size(0)]
        return self.dropout(x)


def tensor2tensor_timing_signal(length: int, channels: int, min_timescale: float = 1.0,
                                max_timescale: float = 1.0e4, start_index: int = 0) -> Tensor:
    """tensor2tensor's get_timing_signal_1d, in float64: (1, length, channels)."""
    position = torch.arange(length, dtype=torch.float64) + start_index
    num_timescales = channels // 2
    log_timescale_increment = math.log(max_timescale / min_timescale) / max(num_timescales - 1, 1)
    inv_timescales = min_timescale * torch.exp(
        torch.arange(num_timescales, dtype=torch.float64) * -log_timescale_increment)
    scaled_time = position.unsqueeze(1) * inv_timescales.unsqueeze(0)
    signal = torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)
    signal = torch.nn.functional.pad(signal, (0, channels % 2))
    return signal.reshape(1, length, channels)


def fairseq_sinusoidal_table(num_embeddings: int, embedding_dim: int,
                             padding_idx: int | None = None) -> Tensor:
    """fairseq's SinusoidalPositionalEmbedding.get_embedding, in float64: (N, D)."""
    half_dim = embedding_dim // 2
    emb = math.log(10000) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float64) * -emb)
    emb = torch.arange(num_embeddings, dtype=torch.float64).unsqueeze(1) * emb.unsqueeze(0)
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1).view(num_embeddings, -1)
    if embedding_dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros(num_embeddings, 1, dtype=torch.float64)], dim=1)
    if padding_idx is not None:
        emb[padding_idx, :] = 0
    return emb


def dropout_scale(p: float) -> float:
    """posenc's multiplier of kept elements: 2^16 / round((1 - p) * 2^16) (the drop probability is
    p rounded to a multiple of 2^-16, and the scale keeps E[y] = x exactly)."""
    return 65536.0 / math.floor((1.0 - p) * 65536.0 + 0.5)
