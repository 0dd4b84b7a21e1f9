"""Typed wrappers for rotary position embedding (RoPE)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

import warnings

from ._ops import _call

# The keys each rope_type reads, as transformers' modeling_rope_utils validates them.
_SCALING_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
             "beta_slow", "mscale", "mscale_all_dim", "truncate"},
    "longrope": {"short_factor", "long_factor", "factor", "original_max_position_embeddings",
                 "attention_factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"},
}
_REQUIRED_KEYS = {
    "linear": {"factor"},
    "dynamic": {"factor"},
    "yarn": {"factor"},
    "longrope": {"short_factor", "long_factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"},
}
_PRECISIONS = ("exact", "transformers")


def rope_frequencies(
    dim: int,
    *,
    base: float = 10000.0,
    scaling: Optional[Dict[str, Any]] = None,
    max_position_embeddings: Optional[int] = None,
    seq_len: Optional[int] = None,
    precision: str = "exact",
) -> Tuple[Tensor, float]:
    r"""``(inv_freq, attention_factor)`` for a rotary dimension ``dim`` under a Hugging Face
    ``rope_scaling``, with transformers' ``modeling_rope_utils`` formulas.

    Args:
        dim: rotary dimension (even, at most 2^20).
        base: ``rope_theta``.
        scaling: a Hugging Face ``rope_scaling`` dict with ``rope_type`` (or ``type``) one of
            ``"linear"``, ``"dynamic"``, ``"yarn"``, ``"longrope"``, ``"llama3"`` and that type's
            keys (``factor``, ``original_max_position_embeddings``, ``beta_fast``,
            ``beta_slow``, ``mscale``, ``mscale_all_dim``, ``truncate``, ``attention_factor``,
            ``short_factor``, ``long_factor``, ``low_freq_factor``, ``high_freq_factor``).
            ``None`` means the default ``inv_freq_i = base^(-2i/dim)``. Keys that the type does
            not read are ignored with a warning, as transformers does.
        max_position_embeddings: the model's ``max_position_embeddings`` (dynamic, yarn,
            longrope).
        seq_len: current sequence length (dynamic NTK; longrope picks long factors above
            ``original_max_position_embeddings``).
        precision: ``"exact"`` (default): float64 ``inv_freq`` from the formulas in double.
            ``"transformers"``: float32 ``inv_freq`` from transformers' float32 arithmetic, equal
            to transformers' ``inv_freq`` bit for bit.
    """
    if scaling is None:
        scaling = {}
    if not isinstance(scaling, dict):
        raise TypeError(
            f"posenc.rope_frequencies: scaling must be a dict or None, got {type(scaling).__name__}"
        )
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if not isinstance(rope_type, str):
        raise TypeError(
            f"posenc.rope_frequencies: scaling['rope_type'] must be a str, got "
            f"{type(rope_type).__name__}"
        )
    if rope_type not in _SCALING_KEYS:
        raise ValueError(
            f"posenc.rope_frequencies: unknown rope_type {rope_type!r}; expected one of "
            + ", ".join(repr(k) for k in _SCALING_KEYS)
        )
    missing = sorted(_REQUIRED_KEYS.get(rope_type, set()) - set(scaling))
    if missing:
        raise ValueError(
            f"posenc.rope_frequencies: scaling for rope_type {rope_type!r} is missing {missing}"
        )
    keys = {k: v for k, v in scaling.items() if k not in ("rope_type", "type")}
    unknown = sorted(set(keys) - _SCALING_KEYS[rope_type])
    if unknown:
        warnings.warn(
            f"posenc.rope_frequencies: unrecognized keys in scaling for rope_type "
            f"{rope_type!r}: {unknown}; they are ignored",
            stacklevel=2,
        )
        for key in unknown:
            del keys[key]
    # transformers writes None for keys it leaves at their defaults.
    keys = {k: v for k, v in keys.items() if v is not None}
    return _call(
        "rope_frequencies",
        dict(keys, dim=dim, base=base, rope_type=rope_type,
             max_position_embeddings=max_position_embeddings, seq_len=seq_len,
             precision=precision),
    )


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
    precision: str = "exact",
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
        positions: ``(S,)``, ``(B, S)`` or ``(tokens,)`` ints >= 0; default ``offset + arange``.
            Give ``positions`` or an offset, not both.
        offset: an int, or an int tensor ``(B,)`` (per sequence), >= 0.
        inv_freq: ``(rotary_dim / 2,)`` frequencies; default ``base^(-2i/r)`` (or from
            ``scaling``).
        rotary_dim: ``r``, even, within ``[0, D]``; default ``D``.
        cu_seqlens: ``(sequences + 1,)`` ints for ``"thd"``: positions restart in each sequence.
        scaling, max_position_embeddings: a Hugging Face ``rope_scaling`` dict (see
            :func:`rope_frequencies`).
        attention_factor: multiplies cos and sin; default from ``scaling`` (else 1).
        precision: ``"exact"`` (default): angles reduced exactly, cos and sin within 2e-6 of
            float64 for positions below 2^24. ``"transformers"``: transformers' float32
            frequencies and float32 angles ``float(pos) * inv_freq`` (its cos/sin tables, which
            drift from the exact angles by about ``pos * 6e-8`` rad), to reproduce a model
            trained with them.

    Returns:
        The rotated ``q``, or ``(q, k)``: new tensors; the inputs are untouched.
    """
    # Named explicitly: Dynamo before torch 2.14 cannot trace locals().
    arguments = dict(q=q, k=k, positions=positions, offset=offset, base=base, inv_freq=inv_freq,
                     rotary_dim=rotary_dim, interleaved=interleaved, layout=layout,
                     cu_seqlens=cu_seqlens, scaling=scaling,
                     max_position_embeddings=max_position_embeddings,
                     attention_factor=attention_factor, precision=precision)
    del arguments["scaling"], arguments["max_position_embeddings"]
    if isinstance(offset, Tensor):
        arguments.update(offsets=offset, offset=0)
    if scaling is not None:
        if inv_freq is not None:
            raise ValueError("posenc.rotary: give inv_freq or scaling, not both")
        if not isinstance(q, Tensor):
            raise TypeError(f"posenc.rotary: q must be a Tensor, got {type(q).__name__}")
        scaled, factor = rope_frequencies(
            rotary_dim if rotary_dim is not None else q.shape[-1], base=base, scaling=scaling,
            max_position_embeddings=max_position_embeddings, precision=precision,
        )
        arguments["inv_freq"] = scaled.to(q.device)
        if attention_factor is None:
            arguments["attention_factor"] = factor
    if arguments["attention_factor"] is None:
        arguments["attention_factor"] = 1.0
    out = _call("rotary", arguments)
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
    if not isinstance(k, Tensor):
        raise TypeError(f"posenc.apply_rotary_pos_emb: k must be a Tensor, got {type(k).__name__}")
    q_out, k_out = _call(
        "rotary_tables", dict(q=q, k=k, cos=cos, sin=sin, unsqueeze_dim=unsqueeze_dim)
    )
    return q_out, k_out
