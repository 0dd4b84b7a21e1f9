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


# ---- 2D/3D sin-cos codes of vision transformers, transcribed from the published code ---------


def _1d_sincos_from_grid(embed_dim: int, pos: Tensor) -> Tensor:
    """MAE's get_1d_sincos_pos_embed_from_grid (as DiT and diffusers have it): float64 omega,
    [sin | cos] halves."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def _2d_sincos_from_grid(embed_dim: int, grid: Tensor) -> Tensor:
    """get_2d_sincos_pos_embed_from_grid: half the channels for grid[0] (w), half for grid[1]."""
    emb_h = _1d_sincos_from_grid(embed_dim // 2, grid[0])
    emb_w = _1d_sincos_from_grid(embed_dim // 2, grid[1])
    return torch.cat([emb_h, emb_w], dim=1)


def dit_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False,
                            extra_tokens: int = 0) -> Tensor:
    """DiT's get_2d_sincos_pos_embed (MAE's with cls_token=True, extra_tokens=1):
    (extra_tokens + grid_size^2, embed_dim), float64. The grid is built in float32 as published
    (integers, so exactly)."""
    grid_h = torch.arange(grid_size, dtype=torch.float32)
    grid_w = torch.arange(grid_size, dtype=torch.float32)
    grid = torch.meshgrid(grid_w, grid_h, indexing="xy")  # here w goes first
    grid = torch.stack(grid, dim=0).reshape(2, 1, grid_size, grid_size)
    pos_embed = _2d_sincos_from_grid(embed_dim, grid)
    if cls_token and extra_tokens > 0:
        pos_embed = torch.cat([torch.zeros(extra_tokens, embed_dim, dtype=torch.float64),
                               pos_embed], dim=0)
    return pos_embed


def diffusers_2d_sincos_pos_embed(embed_dim: int, grid_size, base_size: int = 16,
                                  interpolation_scale: float = 1.0,
                                  grid_dtype: torch.dtype = torch.float32) -> Tensor:
    """diffusers' get_2d_sincos_pos_embed (SD3, PixArt): (H * W, embed_dim), float64. The grid
    is float32 in diffusers; grid_dtype=float64 gives the definition without that rounding."""
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    grid_h = (torch.arange(grid_size[0], dtype=grid_dtype) / (grid_size[0] / base_size)
              / interpolation_scale)
    grid_w = (torch.arange(grid_size[1], dtype=grid_dtype) / (grid_size[1] / base_size)
              / interpolation_scale)
    grid = torch.meshgrid(grid_w, grid_h, indexing="xy")  # here w goes first
    grid = torch.stack(grid, dim=0).reshape(2, 1, grid_size[1], grid_size[0])
    return _2d_sincos_from_grid(embed_dim, grid)


def diffusers_cropped_pos_embed(pos_embed: Tensor, pos_embed_max_size: int, height: int,
                                width: int) -> Tensor:
    """diffusers PatchEmbed.cropped_pos_embed (SD3), heights and widths in patches."""
    top = (pos_embed_max_size - height) // 2
    left = (pos_embed_max_size - width) // 2
    spatial = pos_embed.reshape(1, pos_embed_max_size, pos_embed_max_size, -1)
    spatial = spatial[:, top : top + height, left : left + width, :]
    return spatial.reshape(-1, spatial.shape[-1])


def cogvideox_3d_sincos_pos_embed(embed_dim: int, spatial_size, temporal_size: int,
                                  spatial_interpolation_scale: float = 1.0,
                                  temporal_interpolation_scale: float = 1.0) -> Tensor:
    """diffusers' get_3d_sincos_pos_embed (CogVideoX): spatial_size = (W, H);
    (T, H * W, embed_dim), float64: [time D/4 | w 3D/8 | h 3D/8]."""
    if isinstance(spatial_size, int):
        spatial_size = (spatial_size, spatial_size)
    embed_dim_spatial = 3 * embed_dim // 4
    embed_dim_temporal = embed_dim // 4
    grid_h = torch.arange(spatial_size[1], dtype=torch.float32) / spatial_interpolation_scale
    grid_w = torch.arange(spatial_size[0], dtype=torch.float32) / spatial_interpolation_scale
    grid = torch.meshgrid(grid_w, grid_h, indexing="xy")  # here w goes first
    grid = torch.stack(grid, dim=0).reshape(2, 1, spatial_size[1], spatial_size[0])
    pos_embed_spatial = _2d_sincos_from_grid(embed_dim_spatial, grid)
    grid_t = torch.arange(temporal_size, dtype=torch.float32) / temporal_interpolation_scale
    pos_embed_temporal = _1d_sincos_from_grid(embed_dim_temporal, grid_t)
    pos_embed_spatial = pos_embed_spatial[None].repeat_interleave(temporal_size, dim=0)
    pos_embed_temporal = pos_embed_temporal[:, None].repeat_interleave(
        spatial_size[0] * spatial_size[1], dim=1)
    return torch.cat([pos_embed_temporal, pos_embed_spatial], dim=-1)


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """big_vision's posemb_sincos_2d (as vit-pytorch's SimpleViT has it): (h * w, dim) float64,
    [sin x | cos x | sin y | cos y] with omega_k = temperature^(-k / (dim/4 - 1))."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - 1)
    omega = 1.0 / (temperature**omega)
    y = y.flatten()[:, None].to(torch.float64) * omega[None, :]
    x = x.flatten()[:, None].to(torch.float64) * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)


def grid_code(tokens: Tensor, dim: int, grid, *, extra_tokens: int = 0, grid_dims=None,
              grid_axes=None, grid_origin=None, grid_scale=None, kind: str = "sinusoidal",
              base: float = 10000.0, convention: str = "vaswani",
              layout: str = "interleaved") -> Tensor:
    """The grid code of add_positional's docstring, in float64: tokens.shape + (dim,)."""
    n = len(grid)
    grid_dims = grid_dims or [dim // n] * n
    grid_axes = grid_axes or list(range(n))[::-1]
    grid_origin = grid_origin or [0] * n
    grid_scale = grid_scale or [1.0] * n
    flat = tokens.reshape(-1).to(torch.int64)
    out = torch.zeros(flat.numel(), dim, dtype=torch.float64)
    coded = flat >= extra_tokens
    index = (flat - extra_tokens).clamp(min=0)
    coordinates = []
    for size in reversed(grid):
        coordinates.append(index % size)
        index = index // size
    coordinates = coordinates[::-1]
    begin = 0
    for width, axis in zip(grid_dims, grid_axes):
        position = (coordinates[axis] + grid_origin[axis]).to(torch.float64) * grid_scale[axis]
        out[:, begin : begin + width] = reference_code(position, width, kind, base, convention,
                                                       layout)
        begin += width
    out[~coded] = 0.0
    return out.reshape(*tokens.shape, dim)
