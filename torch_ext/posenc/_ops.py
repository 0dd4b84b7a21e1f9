"""Typed wrappers over ``torch.ops.posenc``. They check Python-level argument types, draw the
dropout seed from the torch generator, and call the operator; all math happens in the kernels."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _check_tensor(name: str, value: object, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, Tensor):
        expected = "a Tensor or None" if allow_none else "a Tensor"
        raise TypeError(f"posenc: {name} must be {expected}, got {type(value).__name__}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"posenc: {name} must be an int, got {type(value).__name__}")


def _check_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"posenc: {name} must be a float, got {type(value).__name__}")


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"posenc: {name} must be a str, got {type(value).__name__}")


def draw_seed(
    device: torch.device, dropout: float, training: bool, generator: Optional[torch.Generator]
) -> Optional[Tensor]:
    """An int64 scalar tensor on ``device`` drawn from ``generator`` (or the default generator
    of that device), or None when no dropout mask is needed. Drawing it outside the operator
    keeps the operator a pure function of its inputs, which torch.compile needs."""
    if not training or dropout == 0.0:
        return None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"posenc: generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return torch.randint(
        _INT64_MIN, _INT64_MAX, (), dtype=torch.int64, device=device, generator=generator
    )


def add_positional(
    x: Tensor,
    *,
    kind: str = "sinusoidal",
    combine: str = "add",
    scale: float = 1.0,
    positions: Optional[Tensor] = None,
    offset: int = 0,
    base: float = 10000.0,
    convention: str = "vaswani",
    layout: str = "interleaved",
    table: Optional[Tensor] = None,
    dropout: float = 0.0,
    training: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Adds (or multiplies in) a position code, fused with scaling and dropout.

    ``y = dropout_p(combine(scale * x, PE(pos)))`` in one pass, where ``combine`` is
    ``scale*x + PE`` (``"add"``) or ``(scale*x) * PE`` (``"mul"``).

    Args:
        x: ``(..., T, D)`` floating tensor (float32, float64, bfloat16, float16), any strides.
        kind: the code ``PE(pos)[j]`` with base ``b``:
            ``"sinusoidal"``: ``w_i = b^(-2i/D)`` (convention ``"vaswani"``) or
            ``w_i = b^(-i/(D/2-1))`` (``"tensor2tensor"``); layout ``"interleaved"``
            (``PE[2i]=sin(pos*w_i), PE[2i+1]=cos(pos*w_i)``) or ``"concat"``
            (``PE[i]=sin, PE[D/2+i]=cos``); odd ``D`` leaves the last channel 0.
            ``"linear"``: ``PE[2i]=b^-i cos(pos*pi/b)``, ``PE[2i+1]=b^-i sin(pos*pi/b)``.
            ``"damped"``: ``PE[2i]=cos(pos/b)/sqrt(2^(i+1))``, ``PE[2i+1]=sin(pos/b)/sqrt(2^(i+1))``.
            ``"cosine"``: ``PE[j]=cos(pos*b^(-2j/D))``.
            ``"learned"``: ``PE = table[pos]``.
        combine: ``"add"`` or ``"mul"``.
        scale: multiplies ``x`` before combining.
        positions: ``None`` for ``offset + arange(T)``, or an int64/int32 tensor broadcastable
            to ``x.shape[:-1]`` with values ``>= 0`` (and ``< P`` for ``"learned"``).
        offset: first position when ``positions`` is None (KV-cache decoding, shards).
        base: ``b`` above.
        table: ``(P, D)`` tensor of ``x``'s dtype for ``kind="learned"``; may require grad.
        dropout: drop probability ``p`` in ``[0, 1)`` (inverted dropout, when ``training``).
        generator: source of the dropout seed; default: the default generator of x's device.

    Returns:
        ``(..., T, D)`` tensor like ``x``. Angles are reduced exactly, so the code is within
        2e-6 of a float64 computation for positions below 2^24.
    """
    _check_tensor("x", x, allow_none=False)
    _check_tensor("positions", positions)
    _check_tensor("table", table)
    _check_str("kind", kind)
    _check_str("combine", combine)
    _check_str("convention", convention)
    _check_str("layout", layout)
    _check_float("scale", scale)
    _check_float("base", base)
    _check_float("dropout", dropout)
    _check_int("offset", offset)
    seed = draw_seed(x.device, float(dropout), bool(training), generator)
    return torch.ops.posenc.add_positional(
        x,
        positions,
        table,
        seed,
        kind=kind,
        combine=combine,
        scale=float(scale),
        offset=offset,
        base=float(base),
        convention=convention,
        layout=layout,
        dropout=float(dropout),
        training=bool(training),
    )


def embedding(
    ids: Tensor,
    weight: Tensor,
    *,
    kind: str = "sinusoidal",
    combine: str = "add",
    scale: Optional[float] = None,
    positions: Union[None, str, Tensor] = None,
    offset: int = 0,
    padding_idx: Optional[int] = None,
    base: float = 10000.0,
    convention: str = "vaswani",
    layout: str = "interleaved",
    table: Optional[Tensor] = None,
    dropout: float = 0.0,
    training: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Token embedding fused with the position code, scaling and dropout.

    ``y = dropout_p(combine(scale * weight[ids], PE(pos)))`` in one pass forward and one pass
    backward (no mask or table is stored for the backward).

    Args:
        ids: ``(..., T)`` int64/int32 token ids in ``[0, V)``.
        weight: ``(V, D)`` embedding matrix (float32, float64, bfloat16, float16).
        kind, combine, base, convention, layout, table, dropout, training, generator: as in
            :func:`add_positional`.
        scale: multiplies ``weight[ids]``; ``None`` means ``sqrt(D)``.
        positions: ``None`` for ``offset + arange(T)``; an int tensor broadcastable to
            ``ids.shape``; or ``"fairseq"``: fairseq's ``make_positions`` computed in the kernel
            (a non-pad token's position is ``padding_idx`` plus its running count of non-pad
            tokens along ``T``), which needs ``padding_idx``.
        padding_idx: as in ``nn.Embedding`` (negative counts from the end): that row of
            ``weight`` gets no gradient, and tokens equal to it get no position code.

    Returns:
        ``(*ids.shape, D)`` tensor of ``weight``'s dtype.
    """
    _check_tensor("ids", ids, allow_none=False)
    _check_tensor("weight", weight, allow_none=False)
    _check_tensor("table", table)
    for name, value in (("kind", kind), ("combine", combine), ("convention", convention),
                        ("layout", layout)):
        _check_str(name, value)
    if scale is not None:
        _check_float("scale", scale)
    _check_float("base", base)
    _check_float("dropout", dropout)
    _check_int("offset", offset)
    if padding_idx is not None:
        _check_int("padding_idx", padding_idx)
    fairseq_positions = False
    if isinstance(positions, str):
        if positions != "fairseq":
            raise ValueError(
                f"posenc: positions must be None, a Tensor or 'fairseq', got {positions!r}"
            )
        fairseq_positions, positions = True, None
    else:
        _check_tensor("positions", positions)
    seed = draw_seed(weight.device, float(dropout), bool(training), generator)
    return torch.ops.posenc.embedding(
        ids,
        weight,
        positions,
        table,
        seed,
        kind=kind,
        combine=combine,
        scale=None if scale is None else float(scale),
        offset=offset,
        padding_idx=padding_idx,
        fairseq_positions=fairseq_positions,
        base=float(base),
        convention=convention,
        layout=layout,
        dropout=float(dropout),
        training=bool(training),
    )


def positional_encoding(
    positions: Union[int, Tensor],
    dim: int,
    *,
    kind: str = "sinusoidal",
    base: float = 10000.0,
    convention: str = "vaswani",
    layout: str = "interleaved",
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[torch.device, str]] = None,
) -> Tensor:
    r"""The position code itself: ``PE(positions)`` of shape ``positions.shape + (dim,)``.

    Args:
        positions: an int ``n`` meaning ``0..n-1``, or an int64/int32 tensor of positions >= 0.
        dim: width ``D`` of the code.
        kind, base, convention, layout: as in :func:`add_positional` (not ``"learned"``).
        dtype: float32, float64, bfloat16 or float16.
        device: where to build ``arange(n)`` when ``positions`` is an int.
    """
    _check_int("dim", dim)
    if isinstance(positions, bool) or not isinstance(positions, (int, Tensor)):
        raise TypeError(
            f"posenc: positions must be an int or a Tensor, got {type(positions).__name__}"
        )
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(f"posenc: positions must be >= 0 when an int, got {positions}")
        positions = torch.arange(positions, device=device)
    elif device is not None and positions.device != torch.device(device):
        raise ValueError(
            f"posenc: device={device} differs from positions.device={positions.device}"
        )
    return torch.ops.posenc.positional_encoding(
        positions, dim, kind=kind, base=float(base), convention=convention, layout=layout,
        dtype=dtype,
    )
