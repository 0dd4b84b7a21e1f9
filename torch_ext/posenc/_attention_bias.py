"""Typed wrappers of the attention-level position codes (ALiBi, T5 relative buckets)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._ops import _call


def attention_bias(
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
    window: Optional[Sequence[int]] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    r"""An attention-level position code as an additive bias for
    ``torch.nn.functional.scaled_dot_product_attention(..., attn_mask=bias)``.

    For query ``i`` and key ``j`` at relative position ``r = j - (offset + i)``:

    - ``kind="alibi"`` (Press et al.; fairseq, BLOOM, MPT): ``bias[0, h, i, j] =
      -slope[h] * |r|``; with ``causal=True``, ``-inf`` for keys after the query (``r > 0``),
      so the bias is the causal mask as well. ``weight`` is the ``(H,)`` slopes,
      e.g. :func:`alibi_slopes`.
    - ``kind="t5"`` (T5, mT5, UMT5): ``bias[0, h, i, j] = weight[bucket(r), h]`` with T5's
      buckets (``bidirectional``, ``num_buckets``, ``max_distance``, as transformers'
      ``_relative_position_bucket``); ``weight`` is the ``(num_buckets, H)`` table
      (``relative_attention_bias.weight``).
    - ``kind="swin"`` (Swin, windowed 2D attention): ``bias[0, h, i, j] = weight[(hi - hj + Wh -
      1) * (2 Ww - 1) + (wi - wj + Ww - 1), h]`` for tokens ``i = hi * Ww + wi`` and ``j`` of a
      window of ``window = (Wh, Ww)`` patches (``Tq = Tk = Wh * Ww``, no offset); ``weight`` is
      the ``((2 Wh - 1) (2 Ww - 1), H)`` table (``relative_position_bias_table``).

    The bias is computed in the kernel from the indices (no ``(Tq, Tk)`` index tensor), and
    differentiable in ``weight``: the gradient sums along each diagonal in a fixed order, the
    same bits on every run, thread count and device.

    Args:
        weight: ``(H,)`` slopes (``"alibi"``), ``(num_buckets, H)`` table (``"t5"``) or
            ``((2 Wh - 1) (2 Ww - 1), H)`` table (``"swin"``).
        query_length, key_length: ``Tq`` and ``Tk``.
        offset: position of the first query (a decoding step's cache length), ``>= 0``.
        dtype: the bias' dtype (the query's); default ``weight``'s.

    Returns:
        ``(1, H, Tq, Tk)`` tensor on ``weight``'s device.
    """
    arguments = dict(weight=weight, query_length=query_length, key_length=key_length, kind=kind,
                     offset=offset, causal=causal, bidirectional=bidirectional,
                     num_buckets=num_buckets, max_distance=max_distance, window=window,
                     dtype=dtype)
    return _call("attention_bias", arguments)


def alibi_slopes(num_heads: int, *, device: Optional[Union[torch.device, str]] = None) -> Tensor:
    r"""ALiBi's head slopes, as fairseq's and BLOOM's reference code computes them:
    ``2^(-8 k / n)`` for ``k = 1..n`` with ``n`` the largest power of two ``<= num_heads``, then
    the odd terms of the same sequence for ``2n`` for the remaining heads.

    Returns:
        ``(num_heads,)`` float32 tensor (on ``device``, default the CPU).
    """
    slopes = _call("alibi_slopes", dict(num_heads=num_heads))
    return slopes if device is None else slopes.to(device)
