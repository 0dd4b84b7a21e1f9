"""Drop-in ``nn.Module`` layers built on the fused posenc operators."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ._ops import add_positional

__all__ = ["PositionalEncoding"]


class PositionalEncoding(nn.Module):
    r"""Drop-in for the PyTorch tutorial's ``PositionalEncoding``: ``dropout(x + PE[:T])``.

    The code is computed inside the kernel, so no ``(max_len, d_model)`` buffer is stored for
    computed kinds; ``kind="learned"`` holds a ``(max_len, d_model)`` Parameter ``table``.

    Args:
        d_model: width ``D``.
        dropout: drop probability applied after combining (in training mode).
        max_len: rows of the learned table; computed kinds accept any position.
        batch_first: ``x`` is ``(B, T, D)`` if True, else ``(T, B, D)`` as in the tutorial.
        kind, combine, scale, base, convention, layout: as in :func:`posenc.add_positional`.

    Shape:
        ``forward(x, positions=None, offset=0)``: ``x`` is ``(T, B, D)`` (or ``(B, T, D)``),
        ``positions`` broadcastable to ``x.shape[:-1]`` in the same order; output like ``x``.
    """

    def __init__(
        self,
        d_model: int,
        dropout: float = 0.1,
        max_len: int = 5000,
        *,
        batch_first: bool = False,
        kind: str = "sinusoidal",
        combine: str = "add",
        scale: float = 1.0,
        base: float = 10000.0,
        convention: str = "vaswani",
        layout: str = "interleaved",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"PositionalEncoding: dropout must be in [0, 1), got {dropout}")
        self.d_model = d_model
        self.p = float(dropout)
        self.max_len = max_len
        self.batch_first = batch_first
        self.kind = kind
        self.combine = combine
        self.scale = float(scale)
        self.base = float(base)
        self.convention = convention
        self.layout = layout
        if kind == "learned":
            self.table = nn.Parameter(torch.empty(max_len, d_model, device=device, dtype=dtype))
            nn.init.normal_(self.table, std=1.0 / math.sqrt(d_model))
        else:
            self.register_parameter("table", None)

    def forward(self, x: Tensor, positions: Optional[Tensor] = None, offset: int = 0) -> Tensor:
        if not self.batch_first:
            # (T, B, D) -> a (B, T, D) view; the output keeps x's memory layout.
            x = x.movedim(0, -2)
            if positions is not None and positions.dim() >= 2:
                positions = positions.movedim(0, -1)
        y = add_positional(
            x,
            kind=self.kind,
            combine=self.combine,
            scale=self.scale,
            positions=positions,
            offset=offset,
            base=self.base,
            convention=self.convention,
            layout=self.layout,
            table=self.table,
            dropout=self.p,
            training=self.training,
        )
        return y if self.batch_first else y.movedim(-2, 0)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, dropout={self.p}, kind={self.kind!r}, "
            f"combine={self.combine!r}, batch_first={self.batch_first}"
        )
