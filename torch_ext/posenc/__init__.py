"""posenc: fused positional-encoding operators for PyTorch.

The operators live in ``torch.ops.posenc`` (registered by the native library that importing
this package loads); this package adds typed wrappers and ``posenc.nn`` layers.
"""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loads libposenc, which registers torch.ops.posenc)
from ._attention_bias import alibi_slopes, attention_bias
from ._grid import Grid
from ._ops import add_positional, embedding, positional_encoding
from ._relative import relative_shift
from ._rotary import apply_rotary_pos_emb, mrope_position_ids, rope_frequencies, rotary
from . import flex, nn

__all__ = [
    "Grid",
    "add_positional",
    "alibi_slopes",
    "apply_rotary_pos_emb",
    "attention_bias",
    "embedding",
    "flex",
    "mrope_position_ids",
    "nn",
    "positional_encoding",
    "relative_shift",
    "rope_frequencies",
    "rotary",
]
__version__ = "0.1.0"
