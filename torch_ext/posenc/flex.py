"""FlexAttention factories for the attention-level position codes: a ``score_mod`` that adds
:func:`posenc.attention_bias`'s values, and the causal ``mask_mod`` that goes with causal ALiBi.
The bias is made once per diagonal by posenc's kernel; the ``score_mod`` only indexes it."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ._attention_bias import attention_bias


def score_mod(
    weight: Tensor,
    query_length: int,
    key_length: int,
    *,
    kind: str,
    offset: int = 0,
    causal: bool = False,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]:
    r"""A ``score_mod`` for ``torch.nn.attention.flex_attention.flex_attention`` that adds
    ``posenc.attention_bias(weight, query_length, key_length, kind=..., ...)`` to the scores:

    ``score_mod(score, b, h, q_idx, kv_idx) = score + bias[h, kv_idx - q_idx + Tq - 1]``

    where ``bias`` holds the ``(H, Tq + Tk - 1)`` values of every diagonal (relative position
    ``kv_idx - (offset + q_idx)``), made once by posenc's kernel, so FlexAttention reads one
    value per score and computes no bucket. The arguments are :func:`posenc.attention_bias`'s.
    With ``causal=True`` (ALiBi) pass :func:`causal_mask_mod` to ``create_block_mask`` as well,
    so that FlexAttention skips the masked blocks. ``kind="swin"`` has no ``score_mod`` here
    (its bias is not a function of the diagonal): pass it to SDPA as ``attn_mask``.
    """
    if kind == "swin":
        raise ValueError("posenc.flex.score_mod: kind must be 'alibi' or 't5' (a 'swin' bias "
                         "goes to SDPA as attn_mask)")
    diagonals = attention_bias(weight, 1, query_length + key_length - 1, kind=kind,
                               offset=offset + query_length - 1, causal=causal,
                               bidirectional=bidirectional, num_buckets=num_buckets,
                               max_distance=max_distance)[0, :, 0]  # [H, Tq + Tk - 1]
    shift = query_length - 1

    def add_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + diagonals[h, kv_idx - q_idx + shift]

    return add_bias


def causal_mask_mod(offset: int = 0) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    r"""``mask_mod(b, h, q_idx, kv_idx) = kv_idx <= offset + q_idx``: keys up to the query's
    position, for ``create_block_mask`` (queries at ``offset + q_idx``, as in
    :func:`posenc.attention_bias`)."""

    def mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx + offset

    return mask


__all__ = ["causal_mask_mod", "score_mod"]
