"""posenc.Grid: the patch grid of the 2D/3D position codes of vision and video transformers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from ._checks import is_int

__all__ = ["Grid"]


def _ints(name: str, value: Any) -> Optional[Tuple[int, ...]]:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or not all(is_int(v) for v in value):
        raise TypeError(f"posenc.Grid: {name} must be a sequence of ints, got {value!r}")
    return tuple(value)


def _reals(name: str, value: Any) -> Optional[Tuple[float, ...]]:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise TypeError(f"posenc.Grid: {name} must be a sequence of floats, got {value!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Grid:
    r"""The patch grid of a vision or video transformer, for :func:`posenc.add_positional` and
    :func:`posenc.positional_encoding` (``posenc::GridOptions`` in C++). A plain ``(H, W)`` given
    as ``grid=`` stands for ``Grid((H, W))``.

    Positions become token indices: the first ``extra_tokens`` (cls, register tokens) get
    ``PE = 0``, and token ``extra_tokens + g`` sits at the coordinates
    ``c = unravel(g, sizes) + origin`` (row-major: the last axis varies fastest). The ``D``
    channels split into one segment per axis: segment ``s`` has ``dims[s]`` channels (default
    ``D / len(sizes)``) and holds the 1-D code (``kind``, ``convention``, ``layout``) of axis
    ``axes[s]`` (default: the last axis first, as MAE's ``meshgrid(w, h)``) at position
    ``c[a] * scale[a]``. On a grid, ``layout`` defaults to ``"concat"``, the layout of MAE's,
    DiT's and big_vision's 2D codes.

    Attributes:
        sizes: ``(H, W)`` or ``(T, H, W)`` (1 to 3 sizes >= 1).
        extra_tokens: leading tokens without a code (>= 0).
        dims: channels of each axis segment, summing to ``D``.
        axes: the axis each segment codes: a permutation of ``range(len(sizes))``.
        origin: added to each axis's coordinate, in ``[0, 2^40]`` (SD3's centre crop).
        scale: each axis's coordinate factor, finite and ``> 0`` (SD3's ``base_size`` and
            ``interpolation_scale``).

    The operators check the values (with these fields named ``grid``, ``extra_tokens``,
    ``grid_dims``, ``grid_axes``, ``grid_origin`` and ``grid_scale``).
    """

    sizes: Tuple[int, ...]
    extra_tokens: int = 0
    dims: Optional[Tuple[int, ...]] = None
    axes: Optional[Tuple[int, ...]] = None
    origin: Optional[Tuple[int, ...]] = None
    scale: Optional[Tuple[float, ...]] = None

    def __post_init__(self) -> None:
        # Tuples, so that a Grid is hashable and a constant under torch.compile.
        object.__setattr__(self, "sizes", _ints("sizes", self.sizes))
        if self.sizes is None:
            raise TypeError("posenc.Grid: sizes must be a sequence of ints, got None")
        if not is_int(self.extra_tokens):
            raise TypeError(f"posenc.Grid: extra_tokens must be an int, got "
                            f"{type(self.extra_tokens).__name__}")
        object.__setattr__(self, "dims", _ints("dims", self.dims))
        object.__setattr__(self, "axes", _ints("axes", self.axes))
        object.__setattr__(self, "origin", _ints("origin", self.origin))
        object.__setattr__(self, "scale", _reals("scale", self.scale))

    def arguments(self) -> Dict[str, Any]:
        """The operators' keyword arguments for this grid."""
        listed = lambda v: None if v is None else list(v)  # noqa: E731
        return dict(grid=list(self.sizes), extra_tokens=self.extra_tokens,
                    grid_dims=listed(self.dims), grid_axes=listed(self.axes),
                    grid_origin=listed(self.origin), grid_scale=listed(self.scale))


GridLike = Union[Grid, Sequence[int]]


def grid_arguments(owner: str, grid: Optional[GridLike]) -> Dict[str, Any]:
    """The operators' grid arguments for ``grid`` (a Grid, its sizes, or None)."""
    if grid is None:
        return {}
    if isinstance(grid, Grid):
        return grid.arguments()
    if isinstance(grid, (tuple, list)) and all(is_int(v) for v in grid):
        return Grid(tuple(grid)).arguments()
    raise TypeError(f"{owner}: grid must be a posenc.Grid or a sequence of ints (its sizes), "
                    f"got {grid!r}")
