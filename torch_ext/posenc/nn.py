"""Drop-in ``nn.Module`` layers built on the fused posenc operators."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._attention_bias import alibi_slopes, attention_bias
from ._checks import (check_bool, check_choice, check_int, check_last_dim, check_positive,
                      check_sizes, check_tensor, is_int)
from ._grid import Grid
from ._ops import add_positional, embedding, positional_encoding
from ._rotary import _rope_dim, head_dim_of, rope_frequencies, rotary

__all__ = [
    "ALiBi",
    "AxialRotaryEmbedding",
    "PatchPositionalEncoding",
    "PositionalEncoding",
    "PositionalEmbedding",
    "RotaryEmbedding",
    "SwinRelativePositionBias",
    "T5RelativePositionBias",
]


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
        owner = "PositionalEncoding"
        self.d_model = check_int(owner, "d_model", d_model, minimum=1)
        self.p = dropout
        self.max_len = check_int(owner, "max_len", max_len, minimum=1)
        self.batch_first = check_bool(owner, "batch_first", batch_first)
        self.kind = kind
        self.combine = combine
        self.scale = scale
        self.base = base
        self.convention = convention
        self.layout = layout
        if kind == "learned":
            self.table = nn.Parameter(torch.empty(max_len, d_model, device=device, dtype=dtype))
            nn.init.normal_(self.table, std=1.0 / math.sqrt(d_model))
        else:
            self.register_parameter("table", None)
        # The operator checks every option (one place, shared with C++), here on Meta tensors
        # so that bad options fail at construction rather than at the first forward.
        _on_meta(self._encode, torch.empty(1, 1, d_model, device="meta"), table=self.table)

    # The keyword arguments of posenc.add_positional that the module holds.
    _OPTIONS = ("kind", "combine", "scale", "base", "convention", "layout")

    def _encode(self, x: Tensor, positions: Optional[Tensor] = None, offset: int = 0,
                table: Optional[Tensor] = None, training: Optional[bool] = None) -> Tensor:
        return add_positional(
            x, positions=positions, offset=offset, table=table, dropout=self.p,
            training=self.training if training is None else training,
            **{name: getattr(self, name) for name in self._OPTIONS},
        )

    def forward(self, x: Tensor, positions: Optional[Tensor] = None, offset: int = 0) -> Tensor:
        check_last_dim("PositionalEncoding", "x", x, self.d_model, "d_model")
        if not self.batch_first:
            # (T, B, D) -> a (B, T, D) view; the output keeps x's memory layout.
            x = x.movedim(0, -2)
            if positions is not None and positions.dim() >= 2:
                positions = positions.movedim(0, -1)
        y = self._encode(x, positions, offset, self.table)
        return y if self.batch_first else y.movedim(-2, 0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of the modules this one replaces keep their code as a buffer.
        _accept_code_buffers(self, state_dict, prefix, ("pe", "weight", "weights", "_float_tensor"),
                             self.d_model)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, dropout={self.p}, kind={self.kind!r}, "
            f"combine={self.combine!r}, batch_first={self.batch_first}"
        )


class PositionalEmbedding(nn.Module):
    r"""``nn.Embedding`` fused with a position code: ``dropout(scale * weight[ids] + PE(pos))``.

    ``weight`` is a Parameter named ``weight`` initialised like ``nn.Embedding`` (standard
    normal, zero padding row), so an ``nn.Embedding`` state dict loads into it. Computed kinds
    store no position table; ``kind="learned"`` holds a ``(max_positions, D)`` Parameter
    ``table`` (normal with std ``D^-0.5``).

    Args:
        num_embeddings: vocabulary size ``V``.
        embedding_dim: width ``D``.
        padding_idx: as in ``nn.Embedding``; padding tokens get no position code.
        max_positions: rows of the learned table (required for ``kind="learned"``).
        positions: default position mode: ``None`` (``offset + arange(T)``) or ``"fairseq"``.
        kind, combine, scale, dropout, base, convention, layout: as in :func:`posenc.embedding`.

    Shape:
        ``forward(ids, positions=None, offset=0)``: ``ids`` ``(..., T)`` -> ``(..., T, D)``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: Optional[int] = None,
        *,
        max_positions: Optional[int] = None,
        positions: Optional[str] = None,
        kind: str = "sinusoidal",
        combine: str = "add",
        scale: Optional[float] = None,
        dropout: float = 0.0,
        base: float = 10000.0,
        convention: str = "vaswani",
        layout: str = "interleaved",
        _weight: Optional[Tensor] = None,
        _freeze: bool = False,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        owner = "PositionalEmbedding"
        check_int(owner, "num_embeddings", num_embeddings, minimum=1)
        check_int(owner, "embedding_dim", embedding_dim, minimum=1)
        if max_positions is not None:
            check_int(owner, "max_positions", max_positions, minimum=1)
        if padding_idx is not None:
            check_int(owner, "padding_idx", padding_idx)
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"PositionalEmbedding: padding_idx must be within [-{num_embeddings}, "
                    f"{num_embeddings}), got {padding_idx}"
                )
            padding_idx = padding_idx % num_embeddings
        if positions not in (None, "fairseq"):
            raise ValueError(
                f"PositionalEmbedding: positions must be None or 'fairseq', got {positions!r}"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.max_positions = max_positions
        self.positions = positions
        self.kind = kind
        self.combine = combine
        self.scale = scale
        self.p = dropout
        self.base = base
        self.convention = convention
        self.layout = layout
        factory = {"device": device, "dtype": dtype}
        check_bool(owner, "_freeze", _freeze)
        if _weight is None:
            self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, **factory),
                                       requires_grad=not _freeze)
            self._reset_weight()
        else:
            check_tensor(owner, "_weight", _weight)
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise ValueError(
                    "PositionalEmbedding: _weight must have shape (num_embeddings, "
                    f"embedding_dim) = ({num_embeddings}, {embedding_dim}), got "
                    f"{tuple(_weight.shape)}"
                )
            self.weight = nn.Parameter(_weight, requires_grad=not _freeze)
        if kind == "learned":
            if max_positions is None:
                raise ValueError("PositionalEmbedding: kind='learned' needs max_positions")
            self.table = nn.Parameter(torch.empty(max_positions, embedding_dim, **factory))
            nn.init.normal_(self.table, std=embedding_dim**-0.5)
        else:
            self.register_parameter("table", None)
        _on_meta(self._embed, torch.zeros(1, 1, dtype=torch.long, device="meta"),
                 self.weight, table=self.table)

    # The keyword arguments of posenc.embedding that the module holds.
    _OPTIONS = ("kind", "combine", "scale", "padding_idx", "base", "convention", "layout")

    def _reset_weight(self) -> None:
        nn.init.normal_(self.weight)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def _embed(self, ids: Tensor, weight: Tensor, positions: Union[None, str, Tensor] = None,
               offset: int = 0, table: Optional[Tensor] = None,
               training: Optional[bool] = None) -> Tensor:
        return embedding(
            ids, weight, positions=self.positions if positions is None else positions,
            offset=offset, table=table, dropout=self.p,
            training=self.training if training is None else training,
            **{name: getattr(self, name) for name in self._OPTIONS},
        )

    def forward(self, ids: Tensor, positions: Union[None, str, Tensor] = None,
                offset: int = 0) -> Tensor:
        return self._embed(ids, self.weight, positions, offset, self.table)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _accept_code_buffers(self, state_dict, prefix, ("pe", "weights", "_float_tensor"),
                             self.embedding_dim)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True,
                        padding_idx: Optional[int] = None, **kwargs) -> "PositionalEmbedding":
        """Builds the layer from a ``(V, D)`` tensor, as ``nn.Embedding.from_pretrained``."""
        check_tensor("PositionalEmbedding.from_pretrained", "embeddings", embeddings)
        if embeddings.dim() != 2:
            raise ValueError(
                f"PositionalEmbedding.from_pretrained: embeddings must be 2-D, got "
                f"{embeddings.dim()}-D"
            )
        rows, cols = embeddings.shape
        return cls(rows, cols, padding_idx, _weight=embeddings, _freeze=freeze, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
            f"kind={self.kind!r}, combine={self.combine!r}, dropout={self.p}"
        )


class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding of queries and keys, angles computed in the kernel.

    ``inv_freq`` (``(rotary_dim / 2,)``, from ``base`` and ``scaling``) is a non-persistent
    buffer; no cos/sin cache is stored. It keeps its precision (float64 for ``"exact"``) when
    the module is moved to another dtype, so the module gives the same bits as
    :func:`posenc.rotary` with the same arguments.

    Args:
        dim: head dimension ``D``.
        base, interleaved, rotary_dim, scaling, max_position_embeddings, precision: as in
            :func:`posenc.rotary`; ``precision="transformers"`` reproduces transformers'
            float32 frequencies and angles.

    Shape:
        ``forward(q, k=None, *, positions=None, offset=0, layout="bshd", cu_seqlens=None)``
        returns the rotated ``q`` or ``(q, k)`` in the layout of the inputs.
    """

    def __init__(self, dim: int, *, base: Optional[float] = None, interleaved: bool = False,
                 rotary_dim: Optional[int] = None, scaling: Optional[dict] = None,
                 max_position_embeddings: Optional[int] = None,
                 precision: str = "exact") -> None:
        super().__init__()
        owner = "RotaryEmbedding"
        self.dim = check_int(owner, "dim", dim, minimum=1)
        if rotary_dim is not None:
            check_int(owner, "rotary_dim", rotary_dim)
            if rotary_dim % 2 != 0 or not 0 <= rotary_dim <= dim:
                raise ValueError(f"{owner}: rotary_dim must be even and within [0, dim = {dim}], "
                                 f"got {rotary_dim}")
        self.interleaved = check_bool(owner, "interleaved", interleaved)
        self.scaling = scaling
        self.precision = precision
        inv_freq, attention_factor = rope_frequencies(
            _rope_dim(rotary_dim, dim, scaling, "posenc.nn.RotaryEmbedding"), base=base,
            scaling=scaling, max_position_embeddings=max_position_embeddings,
            precision=precision)
        # The rotary dim: given, or what the scaling's partial_rotary_factor leaves of dim.
        self.rotary_dim = 2 * inv_freq.numel()
        theta = scaling.get("rope_theta") if isinstance(scaling, dict) else None
        self.base = base if base is not None else (theta if theta is not None else 10000.0)
        self.attention_factor = attention_factor
        self._frequencies = inv_freq  # on the CPU, in the precision's dtype
        self.register_buffer("inv_freq", inv_freq.clone(), persistent=False)

    @classmethod
    def from_config(cls, config: Any, *, layer_type: Optional[str] = None,
                    interleaved: bool = False, precision: str = "exact") -> "RotaryEmbedding":
        r"""The rotary embedding of a transformers config (``LlamaConfig``, ``Gemma3TextConfig``,
        ``Phi3Config``, ...): ``head_dim``, ``rope_parameters`` of ``layer_type`` (when nested
        by layer type), ``rope_theta``, ``partial_rotary_factor`` and
        ``max_position_embeddings``, read as transformers reads them
        (:func:`posenc.rope_frequencies` with the config). Frequencies are those at the
        model's ``max_position_embeddings``: dynamic NTK and longrope's switch to long factors
        with the sequence length are not followed. ``interleaved``: the pairing of GPT-J,
        Cohere, GLM and DeepSeek's interleaved rope (the config does not say)."""
        inv_freq, attention_factor = rope_frequencies(config, layer_type=layer_type,
                                                      precision=precision)
        head_dim = head_dim_of(config, "RotaryEmbedding.from_config")
        module = cls(head_dim, interleaved=interleaved, rotary_dim=2 * inv_freq.numel(),
                     precision=precision)
        parameters = getattr(config, "rope_parameters", None) or {}
        module.scaling = parameters.get(layer_type, parameters) if layer_type else parameters
        module.base = module.scaling.get("rope_theta", module.base)
        module.attention_factor = attention_factor
        module._frequencies = inv_freq
        module.inv_freq = inv_freq.clone()
        return module

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() would round the frequencies: restore them on the new device.
        super()._apply(fn, recurse)
        self.inv_freq = self._frequencies.to(self.inv_freq.device)
        return self

    def forward(self, q: Tensor, k: Optional[Tensor] = None, *,
                positions: Optional[Tensor] = None, offset: Union[int, Tensor] = 0,
                layout: str = "bshd", cu_seqlens: Optional[Tensor] = None):
        # Every layout has the head dimension last.
        check_last_dim("RotaryEmbedding", "q", q, self.dim, "dim")
        if k is not None:
            check_last_dim("RotaryEmbedding", "k", k, self.dim, "dim")
        return rotary(q, k, positions=positions, offset=offset, inv_freq=self.inv_freq,
                      rotary_dim=self.rotary_dim, interleaved=self.interleaved, layout=layout,
                      cu_seqlens=cu_seqlens, attention_factor=self.attention_factor,
                      precision=self.precision)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
                f"interleaved={self.interleaved}, scaling={self.scaling}, "
                f"precision={self.precision!r}")


_LAYOUT_TOKEN_AXIS = {"bshd": 1, "bhsd": 2, "sbhd": 0, "thd": 0}


class AxialRotaryEmbedding(nn.Module):
    r"""2D rotary embedding of vision transformers, angles computed in the kernel from the patch
    coordinates: half of the rotary pairs turn with one grid axis, half with the other
    (:func:`posenc.rotary` with ``mrope_section=[0, D/4, D/4]`` and one position row per axis),
    in the conventions of transformers' vision models:

    - ``"pixtral"`` (``PixtralVisionRotaryEmbedding``): half-split pairs; pairs ``[0, D/4)`` turn
      with the row at ``base^(-2i/D)`` for even ``i``, the others with the column at odd ``i``
      (``rope_type="axial"``).
    - ``"llama4"`` (``Llama4VisionRotaryEmbedding`` and ``vision_apply_rotary_emb``):
      interleaved pairs; pairs ``[0, D/4)`` turn with ``column + 1``, the others with
      ``row + 1``, both at ``base^(-4k/D)`` (``rope_type="axial_shared"``); the extra (cls)
      tokens come after the patches, unrotated.
    - ``"dinov3"`` (``DINOv3ViTRopePositionEmbedding`` and its ``apply_rotary_pos_emb``):
      half-split pairs; pairs ``[0, D/4)`` turn with the row, the others with the column, by
      ``2 pi c base^(-4k/D)`` where ``c = (2i + 1)/n - 1`` is the patch centre in ``(-1, 1)``
      (integer positions ``2i + 1 - n`` at frequencies ``2 pi base^(-4k/D) / n``); the extra
      (cls and register) tokens come first, unrotated. These are DINOv3's evaluation
      coordinates: its training-time shift, jitter and rescale draw random real coordinates.

    Args:
        head_dim: ``D``, a positive multiple of 4.
        grid: the default patch grid ``(H, W)`` (an int: square).
        style: ``"pixtral"``, ``"llama4"`` or ``"dinov3"``.
        base: ``rope_theta``.
        extra_tokens: tokens without rotation (Llama 4: 1; DINOv3: 1 + registers).
        precision: ``"exact"``, or ``"transformers"`` (float32 frequencies and angles, as
            transformers computes them; Pixtral and Llama 4).

    Shape:
        ``forward(q, k=None, *, grid=None, layout="bshd")``: ``q``, ``k`` with
        ``extra_tokens + H * W`` tokens and ``head_dim`` channels in ``layout``; returns the
        rotated ``q`` or ``(q, k)``.
    """

    _STYLES = {"pixtral": "axial", "llama4": "axial_shared", "dinov3": "axial_shared"}

    def __init__(self, head_dim: int, grid: Union[int, Sequence[int]], *,
                 style: str = "pixtral", base: float = 10000.0, extra_tokens: int = 0,
                 precision: str = "exact") -> None:
        super().__init__()
        owner = "AxialRotaryEmbedding"
        check_int(owner, "head_dim", head_dim, minimum=4)
        if head_dim % 4 != 0:
            raise ValueError(f"{owner}: head_dim must be a multiple of 4 (a quarter of the pairs "
                             f"per axis), got {head_dim}")
        self.grid = check_sizes(owner, "grid", grid, axes=(2,))
        check_choice(owner, "style", style, sorted(self._STYLES))
        check_choice(owner, "precision", precision, ("exact", "transformers"))
        if style == "dinov3" and precision != "exact":
            raise ValueError(f"{owner}: style 'dinov3' supports precision='exact' only (its "
                             f"float32 coordinates are not integer positions)")
        self.head_dim = head_dim
        self.style = style
        self.base = check_positive(owner, "base", base)
        self.extra_tokens = check_int(owner, "extra_tokens", extra_tokens, minimum=0)
        self.precision = precision
        # The frequencies, kept in their precision across dtype moves by RotaryEmbedding.
        self.rope = RotaryEmbedding(head_dim, base=base, interleaved=style == "llama4",
                                    scaling={"rope_type": self._STYLES[style]},
                                    precision=precision)

    def position_ids(self, grid: Union[int, Sequence[int], None] = None,
                     device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
        """``(positions (3, extra_tokens + H * W), inv_freq)`` of the style for a grid: the
        M-RoPE position rows (0, first axis, second axis) and the frequencies they turn at."""
        height, width = self.grid if grid is None else check_sizes(
            "AxialRotaryEmbedding", "grid", grid, axes=(2,))
        rows, columns = torch.meshgrid(torch.arange(height, device=device),
                                       torch.arange(width, device=device), indexing="ij")
        rows, columns = rows.flatten(), columns.flatten()
        inv_freq = self.rope.inv_freq
        if self.style == "pixtral":
            axes = (rows, columns)
        elif self.style == "llama4":
            axes = (columns + 1, rows + 1)
        else:  # dinov3: 2 pi ((2i + 1)/n - 1) f = (2i + 1 - n) * (2 pi f / n)
            axes = (2 * rows + 1 - height, 2 * columns + 1 - width)
            quarter = self.head_dim // 4
            per_axis = torch.tensor(
                [2 * math.pi / height] * quarter + [2 * math.pi / width] * quarter,
                dtype=inv_freq.dtype, device=inv_freq.device)
            inv_freq = inv_freq * per_axis
        patches = torch.stack([torch.zeros_like(rows), *axes])
        extra = torch.zeros(3, self.extra_tokens, dtype=patches.dtype, device=patches.device)
        ordered = (patches, extra) if self.style == "llama4" else (extra, patches)
        return torch.cat(ordered, dim=1), inv_freq

    def forward(self, q: Tensor, k: Optional[Tensor] = None, *,
                grid: Union[int, Sequence[int], None] = None, layout: str = "bshd"):
        owner = "AxialRotaryEmbedding"
        sizes = self.grid if grid is None else check_sizes(owner, "grid", grid, axes=(2,))
        check_choice(owner, "layout", layout, tuple(_LAYOUT_TOKEN_AXIS))
        tokens = self.extra_tokens + sizes[0] * sizes[1]
        for name, t in (("q", q), ("k", k)):
            if t is None:
                continue
            check_last_dim(owner, name, t, self.head_dim, "head_dim")
            axis = _LAYOUT_TOKEN_AXIS[layout]
            if t.dim() <= axis or t.shape[axis] != tokens:
                raise ValueError(
                    f"{owner}: {name} must have extra_tokens + H * W = {self.extra_tokens} + "
                    f"{sizes[0]} * {sizes[1]} = {tokens} tokens in dimension {axis} (layout "
                    f"{layout!r}), got shape {tuple(t.shape)}")
        positions, inv_freq = self.position_ids(sizes, q.device)
        quarter = self.head_dim // 4
        return rotary(q, k, positions=positions, inv_freq=inv_freq, layout=layout,
                      interleaved=self.rope.interleaved, mrope_section=[0, quarter, quarter],
                      precision=self.precision)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, grid={self.grid}, style={self.style!r}, "
                f"base={self.base}, extra_tokens={self.extra_tokens}, "
                f"precision={self.precision!r}")


class PatchPositionalEncoding(nn.Module):
    r"""Drop-in for the fixed 2D/3D sin-cos ``pos_embed`` of vision and video transformers plus
    its add: ``dropout(x + pos_embed)``, with the code computed in the kernel from the patch
    grid (no table is stored or rebuilt when the resolution changes).

    2D grids ``(H, W)`` follow MAE's and DiT's ``get_2d_sincos_pos_embed`` (and diffusers' for
    SD3): channels ``[0, D/2)`` code the column ``w``, ``[D/2, D)`` the row ``h``, each as
    ``[sin(c * w_k), cos(c * w_k)]`` with ``w_k = base^(-k / (D/4))``, ``k < D/4``
    (``convention="tensor2tensor"``: ``w_k = base^(-k / (D/4 - 1))``, big_vision's and
    vit-pytorch's ``posemb_sincos_2d``). 3D grids ``(T, H, W)`` follow CogVideoX's
    ``get_3d_sincos_pos_embed``: channels ``[0, D/4)`` code time, then ``3D/8`` for ``w`` and
    ``3D/8`` for ``h``.

    Args:
        embed_dim: width ``D``: a positive multiple of 4 (2D) or 16 (3D).
        grid: the grid the model is built for: an int (square), ``(H, W)`` or ``(T, H, W)``;
            ``forward`` may give another of the same number of axes.
        extra_tokens: leading tokens with no code (a cls token: 1), as DiT's ``extra_tokens``.
        base, convention: of the 1-D codes (``"vaswani"`` or ``"tensor2tensor"``).
        base_size: SD3's: coordinates scaled by ``base_size / size`` along each axis (2D).
        interpolation_scale: coordinates divided by it (SD3; CogVideoX's spatial scale).
        pos_embed_max_size: SD3's: the code of a ``pos_embed_max_size``-square grid, centre
            cropped to the input's grid (2D; an int at least the grid's sizes).
        temporal_interpolation_scale: CogVideoX's: time coordinates divided by it (3D).
        dropout: drop probability after the add (training mode).

    Shape:
        ``forward(x, grid=None, positions=None)``: ``x`` is ``(..., N, embed_dim)`` with
        ``N = extra_tokens + prod(grid)``, or ``positions`` gives the token index of each of the
        ``N`` rows (MAE's kept patches, shifted by ``extra_tokens``); output like ``x``.
    """

    def __init__(
        self,
        embed_dim: int,
        grid: Union[int, Sequence[int]],
        *,
        extra_tokens: int = 0,
        base: float = 10000.0,
        convention: str = "vaswani",
        base_size: Optional[float] = None,
        interpolation_scale: float = 1.0,
        pos_embed_max_size: Optional[int] = None,
        temporal_interpolation_scale: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        owner = "PatchPositionalEncoding"
        self.embed_dim = check_int(owner, "embed_dim", embed_dim, minimum=1)
        self.grid = check_sizes(owner, "grid", grid, axes=(2, 3))
        self.extra_tokens = check_int(owner, "extra_tokens", extra_tokens, minimum=0)
        if base_size is not None:
            check_positive(owner, "base_size", base_size)
        check_positive(owner, "interpolation_scale", interpolation_scale)
        check_positive(owner, "temporal_interpolation_scale", temporal_interpolation_scale)
        if pos_embed_max_size is not None:
            check_int(owner, "pos_embed_max_size", pos_embed_max_size, minimum=1)
        if len(self.grid) == 3:
            if base_size is not None or pos_embed_max_size is not None:
                raise ValueError(f"{owner}: base_size and pos_embed_max_size apply to 2D grids")
            if embed_dim % 16 != 0:
                raise ValueError(
                    f"{owner}: a 3D grid needs embed_dim divisible by 16 (D/4 time channels, "
                    f"3D/8 for each spatial axis), got {embed_dim}")
        elif embed_dim % 4 != 0:
            raise ValueError(f"{owner}: a 2D grid needs embed_dim divisible by 4, got {embed_dim}")
        if pos_embed_max_size is not None and max(self.grid) > pos_embed_max_size:
            raise ValueError(f"{owner}: grid {self.grid} exceeds pos_embed_max_size="
                             f"{pos_embed_max_size}")
        self.base = base
        self.convention = convention
        self.base_size = base_size
        self.interpolation_scale = interpolation_scale
        self.pos_embed_max_size = pos_embed_max_size
        self.temporal_interpolation_scale = temporal_interpolation_scale
        self.p = dropout
        # The operator checks base, convention and dropout (one place, shared with C++), here on
        # Meta tensors, so that bad options fail at construction.
        tokens = self.extra_tokens + math.prod(self.grid)
        _on_meta(self._encode, torch.empty(1, tokens, embed_dim, device="meta"), table=None)

    def _grid_sizes(self, grid: Union[int, Sequence[int], None]) -> Tuple[int, ...]:
        """``grid`` (default: the module's), with as many axes as the module's."""
        if grid is None:
            return self.grid
        sizes = check_sizes("PatchPositionalEncoding", "grid", grid, axes=(len(self.grid),))
        if self.pos_embed_max_size is not None and max(sizes) > self.pos_embed_max_size:
            raise ValueError(f"PatchPositionalEncoding: grid {sizes} exceeds "
                             f"pos_embed_max_size={self.pos_embed_max_size}")
        return sizes

    def grid_of(self, grid: Union[int, Sequence[int], None] = None) -> Grid:
        """The :class:`posenc.Grid` of the published conventions for ``grid`` (default: the
        module's): the channel splits, coordinate scales and crop origins."""
        sizes = self._grid_sizes(grid)
        d = self.embed_dim
        if len(sizes) == 3:
            spatial = 1.0 / self.interpolation_scale
            return Grid(sizes, extra_tokens=self.extra_tokens,
                        dims=(d // 4, 3 * d // 8, 3 * d // 8), axes=(0, 2, 1),
                        scale=(1.0 / self.temporal_interpolation_scale, spatial, spatial))
        height, width = sizes
        origin = (0, 0)
        extent = sizes
        if self.pos_embed_max_size is not None:
            size = self.pos_embed_max_size
            origin = ((size - height) // 2, (size - width) // 2)
            extent = (size, size)
        # SD3: arange(size) / (size / base_size) / interpolation_scale along each axis.
        scale = tuple(
            (1.0 if self.base_size is None else self.base_size / n) / self.interpolation_scale
            for n in extent)
        return Grid(sizes, extra_tokens=self.extra_tokens, origin=origin, scale=scale)

    def _encode(self, x: Tensor, grid: Union[int, Sequence[int], None] = None,
                positions: Optional[Tensor] = None, table: Optional[Tensor] = None,
                training: Optional[bool] = None) -> Tensor:
        return add_positional(
            x, positions=positions, base=self.base, convention=self.convention,
            layout="concat", dropout=self.p,
            training=self.training if training is None else training, grid=self.grid_of(grid))

    def forward(self, x: Tensor, grid: Union[int, Sequence[int], None] = None,
                positions: Optional[Tensor] = None) -> Tensor:
        check_last_dim("PatchPositionalEncoding", "x", x, self.embed_dim, "embed_dim")
        return self._encode(x, grid, positions)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The buffer this module replaces: checked against the computed code, then dropped.
        key = prefix + "pos_embed"
        if key in state_dict:
            buffer = state_dict.pop(key).detach().to("cpu", torch.float64)
            tokens = self.extra_tokens + math.prod(self.grid)
            zeros = torch.zeros(1, tokens, self.embed_dim, dtype=torch.float64)
            expected = self._encode(zeros, training=False)
            if buffer.numel() != expected.numel() or not torch.allclose(
                buffer.reshape(expected.shape), expected, atol=1e-5
            ):
                raise ValueError(
                    f"PatchPositionalEncoding: state_dict entry {key!r} of shape "
                    f"{tuple(buffer.shape)} is not this module's code (grid {self.grid}, "
                    f"extra_tokens {self.extra_tokens})"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, grid={self.grid}, "
            f"extra_tokens={self.extra_tokens}, dropout={self.p}"
        )


class ALiBi(nn.Module):
    r"""ALiBi (Press et al.): the bias ``-slope[h] * |j - (offset + i)|`` for
    ``scaled_dot_product_attention(..., attn_mask=alibi(Tq, Tk))``.

    Args:
        num_heads: ``H``; the slopes are :func:`posenc.alibi_slopes` (fairseq's and BLOOM's).
        causal: ``-inf`` for keys after the query, so the bias is the causal mask too.
        learnable: the slopes as a parameter (``slopes``) instead of a buffer.

    Shape:
        ``forward(query_length, key_length, offset=0, dtype=None)`` -> ``(1, H, Tq, Tk)``.
    """

    def __init__(self, num_heads: int, *, causal: bool = False, learnable: bool = False) -> None:
        super().__init__()
        owner = "posenc.nn.ALiBi"
        self.num_heads = check_int(owner, "num_heads", num_heads, minimum=1)
        self.causal = check_bool(owner, "causal", causal)
        slopes = alibi_slopes(self.num_heads)
        if check_bool(owner, "learnable", learnable):
            self.slopes = nn.Parameter(slopes)
        else:
            self.register_buffer("slopes", slopes)

    def forward(self, query_length: int, key_length: int, offset: int = 0,
                dtype: Optional[torch.dtype] = None) -> Tensor:
        return attention_bias(self.slopes, query_length, key_length, kind="alibi",
                              offset=offset, causal=self.causal, dtype=dtype)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, causal={self.causal}"


class T5RelativePositionBias(nn.Module):
    r"""T5's relative position bias (T5, mT5, UMT5): ``weight[bucket(j - (offset + i)), h]``
    with T5's logarithmic buckets, as transformers' ``T5Attention.compute_bias``.

    ``weight`` is the ``(num_buckets, H)`` table: ``load_state_dict({"weight":
    layer.relative_attention_bias.weight})`` takes a transformers checkpoint's table.

    Args:
        num_heads: ``H``.
        num_buckets, max_distance: T5's ``relative_attention_num_buckets`` and
            ``relative_attention_max_distance``.
        bidirectional: ``True`` for an encoder, ``False`` for a decoder.

    Shape:
        ``forward(query_length, key_length, offset=0, dtype=None)`` -> ``(1, H, Tq, Tk)``.
    """

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, *,
                 bidirectional: bool = True) -> None:
        super().__init__()
        owner = "posenc.nn.T5RelativePositionBias"
        self.num_heads = check_int(owner, "num_heads", num_heads, minimum=1)
        self.num_buckets = check_int(owner, "num_buckets", num_buckets, minimum=2)
        self.max_distance = check_int(owner, "max_distance", max_distance, minimum=1)
        self.bidirectional = check_bool(owner, "bidirectional", bidirectional)
        self.weight = nn.Parameter(torch.randn(self.num_buckets, self.num_heads))  # nn.Embedding's
        # The bucket arguments are checked by the operator, once, here rather than at a first call.
        with torch.no_grad():
            attention_bias(self.weight.detach().to("meta"), 1, 1, **self._options())

    def _options(self) -> dict:
        return dict(kind="t5", bidirectional=self.bidirectional, num_buckets=self.num_buckets,
                    max_distance=self.max_distance)

    def forward(self, query_length: int, key_length: int, offset: int = 0,
                dtype: Optional[torch.dtype] = None) -> Tensor:
        return attention_bias(self.weight, query_length, key_length, offset=offset, dtype=dtype,
                              **self._options())

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"max_distance={self.max_distance}, bidirectional={self.bidirectional}")


class SwinRelativePositionBias(nn.Module):
    r"""Swin's windowed 2D relative position bias: for tokens ``i = hi * Ww + wi`` and ``j`` of a
    window of ``Wh x Ww`` patches, ``relative_position_bias_table[(hi - hj + Wh - 1) * (2 Ww - 1)
    + (wi - wj + Ww - 1), h]``, computed in the kernel (no index buffer). The parameter's name
    and shape are transformers' ``SwinRelativePositionBias``'s, so its checkpoints load.

    Shape:
        ``forward(dtype=None)`` -> ``(1, H, Wh * Ww, Wh * Ww)``.
    """

    def __init__(self, num_heads: int, window_size: Union[int, Sequence[int]]) -> None:
        super().__init__()
        owner = "posenc.nn.SwinRelativePositionBias"
        self.num_heads = check_int(owner, "num_heads", num_heads, minimum=1)
        sizes = (window_size, window_size) if is_int(window_size) else tuple(window_size)
        if len(sizes) != 2:
            raise ValueError(f"{owner}: window_size must be an int or (Wh, Ww), got {window_size!r}")
        self.window_size = tuple(check_int(owner, "window_size", s, minimum=1) for s in sizes)
        rows = (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, self.num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # Swin's init

    def forward(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        tokens = self.window_size[0] * self.window_size[1]
        return attention_bias(self.relative_position_bias_table, tokens, tokens, kind="swin",
                              window=self.window_size, dtype=dtype)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window_size={self.window_size}"


def _on_meta(function, *tensors: Tensor, table: Optional[Tensor]) -> None:
    """Runs ``function`` on Meta copies of ``tensors`` and ``table``, in eval mode: the
    operator's checks of the module's options, without data or a dropout seed."""
    meta = [t.detach().to("meta") for t in tensors]
    function(*meta, table=None if table is None else table.detach().to("meta"), training=False)


def _accept_code_buffers(module: nn.Module, state_dict: dict, prefix: str, names: tuple,
                         dim: int) -> None:
    """Takes the position-code buffers that the modules posenc replaces save out of
    ``state_dict`` (the PyTorch tutorial's ``pe`` of shape ``(max_len, 1, D)``, fairseq's
    ``weights``/``_float_tensor``, transformers' sinusoidal ``weight``), after checking that a
    buffer with content equals the code this module computes; raises ValueError if it does not
    (another base, convention or layout). All-zero rows (fairseq's padding row) are skipped."""
    for name in names:
        key = prefix + name
        if key not in state_dict or (name == "weight" and hasattr(module, "weight")):
            continue
        buffer = state_dict[key]
        if name == "_float_tensor" or buffer.numel() <= 1:
            del state_dict[key]
            continue
        table = buffer.detach().to("cpu", torch.float64)
        table = table.reshape(-1, table.shape[-1]) if table.dim() >= 2 else table
        rows = table.shape[0]
        if getattr(module, "kind", None) == "learned" or table.shape[-1] != dim:
            raise ValueError(
                f"{type(module).__name__}: state_dict entry {key!r} of shape "
                f"{tuple(buffer.shape)} is a fixed ({rows}, {table.shape[-1]}) code; this module "
                f"has kind={module.kind!r} and width {dim}"
            )
        expected = positional_encoding(rows, dim, kind=module.kind, base=module.base,
                                       convention=module.convention, layout=module.layout,
                                       dtype=torch.float64)
        used = table.abs().sum(-1) != 0
        # Those modules compute pos * w in float32: about pos * 1e-7 rad off, plus rounding.
        tolerance = 1e-4 + 4e-7 * rows
        difference = (table - expected)[used].abs().max().item() if used.any() else 0.0
        if not difference <= tolerance:
            raise ValueError(
                f"{type(module).__name__}: state_dict entry {key!r} does not match this "
                f"module's code (kind={module.kind!r}, base={module.base}, "
                f"convention={module.convention!r}, layout={module.layout!r}): max |difference| "
                f"{difference:.3g} > {tolerance:.3g}. Build the module with the options the "
                f"checkpoint was made with."
            )
        del state_dict[key]
