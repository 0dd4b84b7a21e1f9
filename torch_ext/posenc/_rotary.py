"""Typed wrappers for rotary position embedding (RoPE)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from ._ops import _check_float, _check_int, _check_str, _check_tensor

_SCALING_KEYS = {
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor"},
    "longrope": {"short_factor", "long_factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"},
}


def rope_frequencies(
    dim: int,
    *,
    base: float = 10000.0,
    scaling: Optional[Dict[str, Any]] = None,
    max_position_embeddings: Optional[int] = None,
    seq_len: Optional[int] = None,
) -> Tuple[Tensor, float]:
    r"""``(inv_freq, attention_factor)`` for a rotary dimension ``dim``, as transformers'
    ``modeling_rope_utils`` computes them (float32 ``inv_freq`` of shape ``(dim / 2,)``).

    Args:
        dim: rotary dimension (even).
        base: ``rope_theta``.
        scaling: a Hugging Face ``rope_scaling`` dict with ``rope_type`` (or ``type``) one of
            ``"linear"``, ``"dynamic"``, ``"yarn"``, ``"longrope"``, ``"llama3"`` and that type's
            keys (``factor``, ``original_max_position_embeddings``, ``beta_fast``,
            ``beta_slow``, ``mscale``, ``mscale_all_dim``, ``truncate``, ``attention_factor``,
            ``short_factor``, ``long_factor``, ``low_freq_factor``, ``high_freq_factor``).
            ``None`` means the default ``inv_freq_i = base^(-2i/dim)``.
        max_position_embeddings: the model's ``max_position_embeddings`` (dynamic, yarn,
            longrope).
        seq_len: current sequence length (dynamic NTK; longrope picks long factors above
            ``original_max_position_embeddings``).
    """
    _check_int("dim", dim)
    _check_float("base", base)
    if scaling is None:
        scaling = {}
    if not isinstance(scaling, dict):
        raise TypeError(f"posenc: scaling must be a dict or None, got {type(scaling).__name__}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    _check_str("scaling['rope_type']", rope_type)
    if rope_type not in _SCALING_KEYS and rope_type != "default":
        raise ValueError(
            f"posenc: unknown rope_type {rope_type!r}; expected one of 'default', "
            + ", ".join(repr(k) for k in _SCALING_KEYS)
        )
    missing = sorted(_SCALING_KEYS.get(rope_type, set()) - set(scaling))
    if missing:
        raise ValueError(f"posenc: scaling for rope_type {rope_type!r} is missing {missing}")

    def optional(key: str, kind: type) -> Any:
        value = scaling.get(key)
        return None if value is None else kind(value)

    inv_freq, attention_factor = torch.ops.posenc.rope_frequencies(
        dim,
        base=float(base),
        rope_type=rope_type,
        factor=float(scaling.get("factor", 1.0)),
        max_position_embeddings=max_position_embeddings,
        original_max_position_embeddings=optional("original_max_position_embeddings", int),
        seq_len=seq_len,
        attention_factor=optional("attention_factor", float),
        beta_fast=float(scaling.get("beta_fast") or 32.0),
        beta_slow=float(scaling.get("beta_slow") or 1.0),
        mscale=optional("mscale", float),
        mscale_all_dim=optional("mscale_all_dim", float),
        truncate=bool(scaling.get("truncate", True)),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        short_factor=[float(v) for v in scaling["short_factor"]] if "short_factor" in scaling else None,
        long_factor=[float(v) for v in scaling["long_factor"]] if "long_factor" in scaling else None,
    )
    return inv_freq, attention_factor


def rotary(
    q: Tensor,
    k: Optional[Tensor] = None,
    *,
    positions: Optional[Tensor] = None,
    offset: Union[int, Tensor] = 0,
    base: float = 10000.0,
    inv_freq: Optional[Tensor] = None,
    rotary_dim: Optional[int] = None,
    interleaved: bool = False,
    layout: str = "bshd",
    cu_seqlens: Optional[Tensor] = None,
    scaling: Optional[Dict[str, Any]] = None,
    max_position_embeddings: Optional[int] = None,
    attention_factor: Optional[float] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""Rotary position embedding, angles computed in the kernel, one fused pass.

    For each pair ``(x1, x2)`` (channels ``i, i + r/2``, or ``2i, 2i+1`` when ``interleaved``)
    and angle ``theta = pos * inv_freq_i``:
    ``y1 = a (x1 cos theta - x2 sin theta)``, ``y2 = a (x2 cos theta + x1 sin theta)`` with
    attention factor ``a``; channels past ``rotary_dim`` pass through.

    Args:
        q, k: ``(B, S, H, D)`` for layout ``"bshd"``, ``(B, H, S, D)`` for ``"bhsd"``,
            ``(S, B, H, D)`` for ``"sbhd"``, ``(tokens, H, D)`` for ``"thd"``; any strides; head
            counts may differ (GQA/MQA).
        positions: ``(S,)``, ``(B, S)`` or ``(tokens,)`` ints; default ``offset + arange``.
        offset: an int, or an int tensor ``(B,)`` (per sequence).
        inv_freq: ``(rotary_dim / 2,)`` frequencies; default ``base^(-2i/r)`` (or from
            ``scaling``).
        rotary_dim: ``r``, even, at most ``D``; default ``D``.
        cu_seqlens: ``(sequences + 1,)`` ints for ``"thd"``: positions restart in each sequence.
        scaling, max_position_embeddings: a Hugging Face ``rope_scaling`` dict (see
            :func:`rope_frequencies`).
        attention_factor: multiplies cos and sin; default from ``scaling`` (else 1).

    Returns:
        The rotated ``q``, or ``(q, k)``: new tensors; the inputs are untouched. Angles are
        reduced exactly: cos and sin are within 2e-6 of float64 for positions below 2^24.
    """
    _check_tensor("q", q, allow_none=False)
    _check_tensor("k", k)
    _check_tensor("positions", positions)
    _check_tensor("inv_freq", inv_freq)
    _check_tensor("cu_seqlens", cu_seqlens)
    _check_str("layout", layout)
    offsets = None
    if isinstance(offset, Tensor):
        offsets, offset = offset, 0
    else:
        _check_int("offset", offset)
    if rotary_dim is not None:
        _check_int("rotary_dim", rotary_dim)
    if scaling is not None:
        if inv_freq is not None:
            raise ValueError("posenc: give inv_freq or scaling, not both")
        head_dim = q.shape[-1]
        scaled, factor = rope_frequencies(
            rotary_dim if rotary_dim is not None else head_dim, base=base, scaling=scaling,
            max_position_embeddings=max_position_embeddings,
        )
        inv_freq = scaled.to(q.device)
        if attention_factor is None:
            attention_factor = factor
    if attention_factor is None:
        attention_factor = 1.0
    _check_float("attention_factor", attention_factor)
    out = torch.ops.posenc.rotary(
        q, k, positions, offsets, inv_freq, cu_seqlens, base=float(base), offset=offset,
        rotary_dim=rotary_dim, interleaved=bool(interleaved), layout=layout,
        attention_factor=float(attention_factor),
    )
    return out[0] if k is None else (out[0], out[1])


def apply_rotary_pos_emb(
    q: Tensor,
    k: Tensor,
    cos: Tensor,
    sin: Tensor,
    position_ids: Optional[Tensor] = None,
    unsqueeze_dim: int = 1,
) -> Tuple[Tensor, Tensor]:
    r"""Drop-in for transformers' ``apply_rotary_pos_emb``, fused forward and backward:
    ``q * cos + rotate_half(q) * sin`` (and the same for ``k``), with ``cos`` and ``sin``
    unsqueezed at ``unsqueeze_dim``. ``position_ids`` is ignored, as in transformers."""
    _check_tensor("q", q, allow_none=False)
    _check_tensor("k", k, allow_none=False)
    _check_tensor("cos", cos, allow_none=False)
    _check_tensor("sin", sin, allow_none=False)
    _check_int("unsqueeze_dim", unsqueeze_dim)
    q_out, k_out = torch.ops.posenc.rotary_tables(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    return q_out, k_out
