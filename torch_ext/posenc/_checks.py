"""Checks of the arguments that belong to the modules and helpers themselves (their sizes, grids and
conventions), before anything reaches an operator. Each raises TypeError or ValueError naming the
caller (``owner``) and the user's argument. Arguments that are handed to an operator unchanged are
the operator's to check (one place, shared with C++)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor


def _type_name(value: Any) -> str:
    return type(value).__name__


def is_int(value: Any) -> bool:
    """A Python int (bool excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: Any, minimum: Optional[int] = None) -> int:
    """``value`` as an int, >= ``minimum`` when given."""
    if not is_int(value):
        raise TypeError(f"{owner}: {name} must be an int, got {_type_name(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {_type_name(value)}")
    return value


def check_positive(owner: str, name: str, value: Any) -> float:
    """A finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a float, got {_type_name(value)}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be a str, got {_type_name(value)}")
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}: {name} must be one of {listed}, got {value!r}")
    return value


def check_tensor(owner: str, name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: {name} must be a Tensor, got {_type_name(value)}")
    return value


def check_sizes(owner: str, name: str, value: Any, axes: Sequence[int],
                square: bool = True) -> Tuple[int, ...]:
    """A grid's sizes: an int (a square grid, when ``square`` and 2 axes are allowed) or a
    sequence of ints >= 1 with one of ``axes`` entries."""
    forms = " or ".join({2: "(H, W)", 3: "(T, H, W)"}[n] for n in axes)
    if square and 2 in axes and is_int(value):
        value = (value, value)
    if not isinstance(value, (tuple, list, torch.Size)) or not all(is_int(v) for v in value):
        kind = "an int, " if square and 2 in axes else ""
        raise TypeError(f"{owner}: {name} must be {kind}{forms} of ints, got {value!r}")
    if len(value) not in axes or any(v < 1 for v in value):
        raise ValueError(f"{owner}: {name} must be {forms} with sizes >= 1, got {tuple(value)}")
    return tuple(value)


def check_last_dim(owner: str, name: str, tensor: Any, size: int, size_name: str) -> Tensor:
    """A tensor whose last dimension is ``size`` (the module's ``size_name``)."""
    check_tensor(owner, name, tensor)
    if tensor.dim() < 1 or tensor.shape[-1] != size:
        raise ValueError(f"{owner}: {name} must have {size_name} = {size} channels in its last "
                         f"dimension, got shape {tuple(tensor.shape)}")
    return tensor
