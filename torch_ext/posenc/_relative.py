"""Views for relative-position attention terms (Transformer-XL, Conformer)."""

from __future__ import annotations

from torch import Tensor


def relative_shift(scores: Tensor) -> Tensor:
    r"""Transformer-XL's and Conformer's "relative shift" as a view, without the pad and copy.

    Column ``k`` of ``scores`` holds relative position ``T - 1 - k`` (the rows of
    ``posenc.positional_encoding(torch.arange(T - 1, -T, -1), D)``, Conformer's order);
    the result holds, for query ``i`` and key ``j``, the score of relative position ``i - j``:

    ``out[..., i, j] = scores[..., i, T - 1 - i + j]``

    This is ESPnet's ``RelPositionMultiHeadedAttention.rel_shift`` (and NeMo's, and the
    Parakeet model's in transformers). The result is a strided view of ``scores`` (a copy only
    when ``scores``' strides cannot express it), so Conformer's position term goes straight
    into ``torch.nn.functional.scaled_dot_product_attention`` as its ``attn_mask``; see
    ``docs/python-api.md`` ("Relative positions") for the whole attention.

    Args:
        scores: ``(..., T, 2T - 1)`` floating tensor, e.g. ``(q + pos_bias_v) @ p.transpose(-2,
            -1)`` with ``p`` the projected relative rows.

    Returns:
        ``(..., T, T)`` view of ``scores``.
    """
    if not isinstance(scores, Tensor):
        raise TypeError(
            f"posenc.relative_shift: scores must be a Tensor, got {type(scores).__name__}")
    if scores.dim() < 2 or scores.shape[-1] != 2 * scores.shape[-2] - 1:
        raise ValueError(
            "posenc.relative_shift: scores must have shape (..., T, 2T - 1), got "
            f"{tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(
            f"posenc.relative_shift: scores must be a floating tensor, got {scores.dtype}")
    T = scores.shape[-2]
    if T == 1:
        return scores
    # Row i of the result starts T - 1 - i columns into row i: in the flattened rows that is
    # (T - 1) + i * (2T - 2), so rows of 2T - 2 from offset T - 1, of which the first T.
    # Views only (torch.compile traces them); reshape copies only non-contiguous rows.
    flat = scores.reshape(*scores.shape[:-2], T * (2 * T - 1))
    return flat[..., T - 1 : T - 1 + T * (2 * T - 2)].unflatten(-1, (T, 2 * T - 2))[..., :T]
