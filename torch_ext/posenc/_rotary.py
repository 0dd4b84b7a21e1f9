"""Typed wrappers for rotary position embedding (RoPE)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._checks import check_bool, check_int, check_tensor, is_int
from ._ops import _call

# The keys each rope_type reads, as transformers' modeling_rope_utils (5.x) reads them; every
# type also carries rope_theta and partial_rotary_factor in a 5.x rope_parameters dict.
_COMMON_KEYS = {"rope_theta", "partial_rotary_factor"}
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
    "proportional": {"factor"},
    "axial": set(),
    "axial_shared": set(),
}
_REQUIRED_KEYS = {
    "linear": {"factor"},
    "dynamic": {"factor"},
    "longrope": {"short_factor", "long_factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"},
}
_PRECISIONS = ("exact", "transformers")


def _is_config(value: Any) -> bool:
    """A transformers configuration (duck-typed: no import of transformers)."""
    return hasattr(value, "rope_parameters") or hasattr(value, "rope_scaling")


def _select_layer_type(parameters: Dict[str, Any], layer_type: Optional[str]) -> Dict[str, Any]:
    """The rope_parameters of `layer_type` when they are nested by layer type (Gemma 2/3/4)."""
    nested = bool(parameters) and all(
        isinstance(v, dict) or v is None for v in parameters.values())
    if not nested:
        if layer_type is not None:
            raise ValueError(
                f"posenc.rope_frequencies: layer_type {layer_type!r} given, but the rope "
                f"parameters are not nested by layer type")
        return parameters
    if layer_type is None or parameters.get(layer_type) is None:
        raise ValueError(
            f"posenc.rope_frequencies: the rope parameters are nested by layer type; "
            f"layer_type must be one of {sorted(k for k, v in parameters.items() if v)}, "
            f"got {layer_type!r}")
    return parameters[layer_type]


def config_rope_parameters(config: Any, owner: str) -> Dict[str, Any]:
    """A transformers config's rope parameters (``rope_parameters``, else ``rope_scaling``) as
    transformers reads them, after its own normalisation; ``{}`` (the default rope) when it has
    none."""
    parameters = getattr(config, "rope_parameters", None)
    if parameters is None:
        parameters = getattr(config, "rope_scaling", None)
    if parameters is not None and not isinstance(parameters, dict):
        raise TypeError(f"{owner}: config.rope_parameters must be a dict or None, got "
                        f"{type(parameters).__name__} {parameters!r}")
    if hasattr(config, "standardize_rope_params"):
        config.standardize_rope_params()  # transformers' own normalisation, as its functions do
        parameters = getattr(config, "rope_parameters", None) or parameters
    return dict(parameters or {})


def head_dim_of(config: Any, owner: str) -> int:
    """A transformers config's head dimension, as transformers reads it: ``head_dim``, else
    ``hidden_size // num_attention_heads``."""
    head_dim = getattr(config, "head_dim", None)
    if not head_dim:
        hidden_size = getattr(config, "hidden_size", None)
        heads = getattr(config, "num_attention_heads", None)
        if hidden_size is None or heads is None:
            raise ValueError(f"{owner}: the config has neither head_dim nor hidden_size and "
                             f"num_attention_heads")
        check_int(owner, "config.hidden_size", hidden_size, minimum=1)
        check_int(owner, "config.num_attention_heads", heads, minimum=1)
        head_dim = hidden_size // heads
    return check_int(owner, "config.head_dim", head_dim, minimum=1)


def _from_config(config: Any, layer_type: Optional[str]) -> Tuple[int, Dict[str, Any], Dict]:
    """(head_dim, rope parameters of layer_type, defaults) read from a transformers config the
    way transformers' ROPE_INIT_FUNCTIONS read it."""
    owner = "posenc.rope_frequencies"
    parameters = _select_layer_type(config_rope_parameters(config, owner), layer_type)
    if not isinstance(parameters, dict):
        raise TypeError(f"{owner}: the rope parameters of layer_type {layer_type!r} must be a "
                        f"dict, got {type(parameters).__name__}")
    head_dim = head_dim_of(config, owner)
    defaults = {
        "rope_theta": getattr(config, "rope_theta", None),
        "partial_rotary_factor": getattr(config, "partial_rotary_factor", None),
        "original_max_position_embeddings": getattr(config, "original_max_position_embeddings",
                                                    None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
    }
    return head_dim, dict(parameters), defaults


def rope_frequencies(
    dim: Any,
    *,
    base: Optional[float] = None,
    scaling: Optional[Dict[str, Any]] = None,
    max_position_embeddings: Optional[int] = None,
    seq_len: Optional[int] = None,
    layer_type: Optional[str] = None,
    precision: str = "exact",
) -> Tuple[Tensor, float]:
    r"""``(inv_freq, attention_factor)`` under a Hugging Face rope scaling, with transformers'
    ``modeling_rope_utils`` formulas (5.x): the same pair as ``ROPE_INIT_FUNCTIONS[rope_type]``.

    Args:
        dim: the head dimension, or a transformers config (``LlamaConfig``, ``Gemma3Config``, ...),
            from which ``head_dim`` (or ``hidden_size // num_attention_heads``),
            ``rope_parameters`` (or ``rope_scaling``), ``rope_theta``,
            ``partial_rotary_factor`` and ``max_position_embeddings`` are read as transformers
            reads them. The rotary dimension is ``int(dim * partial_rotary_factor)`` (an even
            number at most 2^20), except for ``"proportional"``, which returns ``dim / 2``
            frequencies, those past the rotated share being 0.
        base: ``rope_theta``; default: the parameters' ``rope_theta``, else 10000.
        scaling: a ``rope_parameters`` (5.x) or ``rope_scaling`` dict with ``rope_type`` (or
            ``type``) one of ``"default"``, ``"linear"``, ``"dynamic"``, ``"yarn"``,
            ``"longrope"``, ``"llama3"``, ``"proportional"``, ``"axial"`` (Pixtral's 2D
            rope: the default frequencies, even pairs first; rotate with
            ``mrope_section=[0, r/4, r/4]`` and position rows ``(0, row, column)``),
            ``"axial_shared"`` (Llama 4's and DINOv3's 2D rope: ``base^(-4k/r)``, ``k < r/4``,
            once per axis) and that
            type's keys
            (``rope_theta``, ``partial_rotary_factor``, ``factor``,
            ``original_max_position_embeddings``, ``beta_fast``, ``beta_slow``, ``mscale``,
            ``mscale_all_dim``, ``truncate``, ``attention_factor``, ``short_factor``,
            ``long_factor``, ``low_freq_factor``, ``high_freq_factor``), or such dicts nested by
            layer type (then give ``layer_type``). ``None`` means the default
            ``inv_freq_i = base^(-2i/dim)``. Keys that the type does not read are ignored with
            a warning, as transformers does. Without ``factor``, yarn and longrope use
            ``max_position_embeddings / original_max_position_embeddings``.
        max_position_embeddings: the model's ``max_position_embeddings`` (dynamic, yarn,
            longrope); read from a config when not given.
        seq_len: current sequence length (dynamic NTK; longrope picks long factors above
            ``original_max_position_embeddings``).
        layer_type: which layer type's parameters, when they are nested by layer type.
        precision: ``"exact"`` (default): float64 ``inv_freq`` from the formulas in double.
            ``"transformers"``: float32 ``inv_freq`` from transformers' float32 arithmetic, equal
            to transformers' ``inv_freq`` bit for bit.
    """
    defaults: Dict[str, Any] = {}
    if isinstance(dim, bool) or not isinstance(dim, int):
        if not _is_config(dim):
            raise TypeError(
                f"posenc.rope_frequencies: dim must be an int or a transformers config, got "
                f"{type(dim).__name__}")
        if scaling is not None:
            raise ValueError("posenc.rope_frequencies: give a config or scaling, not both")
        dim, scaling, defaults = _from_config(dim, layer_type)
        layer_type = None  # selected
        if max_position_embeddings is None:
            max_position_embeddings = defaults["max_position_embeddings"]
    if scaling is None:
        scaling = {}
    if not isinstance(scaling, dict):
        raise TypeError(
            f"posenc.rope_frequencies: scaling must be a dict or None, got {type(scaling).__name__}"
        )
    scaling = _select_layer_type(scaling, layer_type)
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
    unknown = sorted(set(keys) - _SCALING_KEYS[rope_type] - _COMMON_KEYS)
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
    for key in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings"):
        if key not in keys and defaults.get(key) is not None and (
                key != "original_max_position_embeddings" or key in _SCALING_KEYS[rope_type]):
            keys[key] = defaults[key]
    theta = keys.pop("rope_theta", None)
    if theta is not None and base is not None and theta != base:
        raise ValueError(
            f"posenc.rope_frequencies: base = {base} and scaling['rope_theta'] = {theta} differ")
    base = theta if theta is not None else (10000.0 if base is None else base)
    return _call(
        "rope_frequencies",
        dict(keys, dim=dim, base=base, rope_type=rope_type,
             max_position_embeddings=max_position_embeddings, seq_len=seq_len,
             precision=precision),
    )


def _rope_dim(rotary_dim: Optional[int], head_dim: int, scaling: Dict[str, Any],
              op: str) -> int:
    """The dim to hand rope_frequencies with `scaling`: the head dim, which a
    partial_rotary_factor in the scaling reduces, or an explicit rotary_dim (not both)."""
    if rotary_dim is None:
        return head_dim
    if isinstance(scaling, dict) and scaling.get("partial_rotary_factor") is not None:
        raise ValueError(
            f"{op}: give rotary_dim or scaling['partial_rotary_factor'], not both")
    return rotary_dim


def rotary(
    q: Tensor,
    k: Optional[Tensor] = None,
    *,
    positions: Optional[Tensor] = None,
    offset: Union[int, Tensor] = 0,
    base: Optional[float] = None,
    inv_freq: Optional[Tensor] = None,
    rotary_dim: Optional[int] = None,
    interleaved: bool = False,
    layout: str = "bshd",
    cu_seqlens: Optional[Tensor] = None,
    scaling: Optional[Dict[str, Any]] = None,
    max_position_embeddings: Optional[int] = None,
    attention_factor: Optional[float] = None,
    precision: str = "exact",
    mrope_section: Optional[Sequence[int]] = None,
    mrope_interleaved: bool = False,
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
        positions: ``(S,)``, ``(1, S)``, ``(B, S)`` or ``(tokens,)`` ints >= 0; default
            ``offset + arange``. Give ``positions`` or an offset, not both.
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
        mrope_section: M-RoPE of Qwen2-VL, Qwen2.5-VL and Qwen3-VL: three pair counts
            (temporal, height, width) summing to ``rotary_dim / 2``; ``positions`` then holds
            one row per axis: ``(3, B, S)``, ``(3, 1, S)``, ``(3, S)`` or ``(3, tokens)``, and
            pair ``i`` rotates by the position of its axis: the first ``mrope_section[0]``
            pairs temporal, the next height, the rest width (Qwen2/2.5-VL); with
            ``mrope_interleaved`` (Qwen3-VL) height on pairs 1, 4, ... below
            ``3 * mrope_section[1]``, width on pairs 2, 5, ... below ``3 * mrope_section[2]``,
            temporal elsewhere. With ``mrope_section=[0, r/4, r/4]`` the rows are the 2D
            coordinates of vision transformers' axial rope (Pixtral, Llama 4, DINOv3; see
            :class:`posenc.nn.AxialRotaryEmbedding`); M-RoPE rows may be negative
            (coordinates of a centred grid).

    Returns:
        The rotated ``q``, or ``(q, k)``: new tensors; the inputs are untouched.
    """
    # Named explicitly: Dynamo before torch 2.14 cannot trace locals().
    arguments = dict(q=q, k=k, positions=positions, offset=offset, base=base, inv_freq=inv_freq,
                     rotary_dim=rotary_dim, interleaved=interleaved, layout=layout,
                     cu_seqlens=cu_seqlens, scaling=scaling,
                     max_position_embeddings=max_position_embeddings,
                     attention_factor=attention_factor, precision=precision,
                     mrope_section=(list(mrope_section) if isinstance(mrope_section, (list, tuple))
                                    else mrope_section),
                     mrope_interleaved=mrope_interleaved)
    del arguments["scaling"], arguments["max_position_embeddings"]
    if isinstance(offset, Tensor):
        arguments.update(offsets=offset, offset=0)
    if scaling is not None:
        if inv_freq is not None:
            raise ValueError("posenc.rotary: give inv_freq or scaling, not both")
        if not isinstance(q, Tensor):
            raise TypeError(f"posenc.rotary: q must be a Tensor, got {type(q).__name__}")
        scaled, factor = rope_frequencies(
            _rope_dim(rotary_dim, q.shape[-1], scaling, "posenc.rotary"), base=base,
            scaling=scaling, max_position_embeddings=max_position_embeddings,
            precision=precision,
        )
        arguments["inv_freq"] = scaled.to(q.device)
        arguments["rotary_dim"] = 2 * scaled.numel()
        if attention_factor is None:
            arguments["attention_factor"] = factor
    if arguments["base"] is None:
        arguments["base"] = 10000.0
    if arguments["attention_factor"] is None:
        arguments["attention_factor"] = 1.0
    out = _call("rotary", arguments)
    return out[0] if k is None else (out[0], out[1])


_SPAN_NAMES = {1: "image", 2: "video"}


def _grids(owner: str, name: str, grids: Any, merge: int) -> List[List[int]]:
    """``(n, 3)`` grids (t, h, w) as lists: ints >= 1, h and w multiples of the merge size."""
    if grids is None:
        return []
    if isinstance(grids, Tensor):
        if grids.is_floating_point() or grids.is_complex() or grids.dtype == torch.bool:
            raise TypeError(f"{owner}: {name} must be an integer tensor of shape (n, 3), got "
                            f"{grids.dtype}")
        if grids.dim() != 2 or grids.shape[1] != 3:
            raise ValueError(f"{owner}: {name} must have shape (n, 3) (t, h, w per "
                             f"{name.split('_')[0]}), got {tuple(grids.shape)}")
        rows = grids.tolist()
    elif isinstance(grids, (list, tuple)) and all(
            isinstance(row, (list, tuple)) and len(row) == 3 and all(is_int(v) for v in row)
            for row in grids):
        rows = [list(row) for row in grids]
    else:
        raise TypeError(f"{owner}: {name} must be an integer tensor of shape (n, 3) or a list of "
                        f"(t, h, w), got {grids!r}")
    for t, h, w in rows:
        if min(t, h, w) < 1 or h % merge or w % merge:
            raise ValueError(f"{owner}: {name} must hold sizes >= 1 with h and w multiples of "
                             f"spatial_merge_size = {merge}, got ({t}, {h}, {w})")
    return rows


def _video_intervals(owner: str, videos: List[List[int]], video_time_intervals: Any,
                     second_per_grid_ts: Any, tokens_per_second: Any) -> List[Any]:
    """The temporal step of each video: video_time_intervals, or transformers' float32
    tokens_per_second * second_per_grid_ts (Qwen2.5-VL), or 1."""
    if video_time_intervals is not None and second_per_grid_ts is not None:
        raise ValueError(f"{owner}: give video_time_intervals or second_per_grid_ts (with "
                         f"tokens_per_second), not both")
    if second_per_grid_ts is None and tokens_per_second is not None:
        raise ValueError(f"{owner}: tokens_per_second needs second_per_grid_ts")
    if second_per_grid_ts is not None:
        if tokens_per_second is None:
            raise ValueError(f"{owner}: second_per_grid_ts needs tokens_per_second (the vision "
                             f"config's tokens_per_second)")
        if isinstance(tokens_per_second, bool) or not isinstance(tokens_per_second, (int, float)):
            raise TypeError(f"{owner}: tokens_per_second must be a number, got "
                            f"{type(tokens_per_second).__name__}")
        try:
            seconds = torch.as_tensor(second_per_grid_ts, dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{owner}: second_per_grid_ts must be a tensor or list of numbers, "
                            f"got {second_per_grid_ts!r}") from None
        # As transformers forms them: float32 products.
        values = [tokens_per_second * s for s in seconds]
        name = "second_per_grid_ts * tokens_per_second"
    elif video_time_intervals is not None:
        if not isinstance(video_time_intervals, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in video_time_intervals):
            raise TypeError(f"{owner}: video_time_intervals must be a sequence of numbers, got "
                            f"{video_time_intervals!r}")
        values = list(video_time_intervals)
        name = "video_time_intervals"
    else:
        return [1.0] * len(videos)
    if len(values) != len(videos):
        raise ValueError(f"{owner}: {name} must have one entry per video ({len(videos)}), got "
                         f"{len(values)}")
    for (t, _, _), value in zip(videos, values):
        # The temporal rows reach (t - 1) * interval: finite, >= 0 and exact in int64.
        reach = float(value) * (t - 1)
        if not (math.isfinite(float(value)) and float(value) >= 0 and reach < 2**53):
            raise ValueError(f"{owner}: {name} must be finite numbers >= 0 whose temporal "
                             f"positions stay below 2^53, got {float(value)!r} for a video of "
                             f"{t} frames")
    return values


def mrope_position_ids(
    mm_token_type_ids: Tensor,
    image_grid_thw: Optional[Tensor] = None,
    video_grid_thw: Optional[Tensor] = None,
    attention_mask: Optional[Tensor] = None,
    *,
    spatial_merge_size: int = 2,
    video_time_intervals: Optional[Sequence[float]] = None,
    second_per_grid_ts: Optional[Union[Tensor, Sequence[float]]] = None,
    tokens_per_second: Optional[float] = None,
    split_video_frames: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""The ``(3, B, S)`` M-RoPE position ids (temporal, height, width) of a text + vision
    sequence, as the Qwen2-VL processor and ``get_rope_index`` build them, for
    :func:`rotary` with ``mrope_section``.

    Text tokens count up by one on all three rows. An image or video of grid ``(t, h, w)``
    (patches before the spatial merge) takes ``t * (h / m) * (w / m)`` tokens (``m =
    spatial_merge_size``) whose rows are ``start + [time index * interval, row, column]``;
    the text after it continues at ``start + max(h, w) / m``.

    Args:
        mm_token_type_ids: ``(B, S)`` ints, 0 text, 1 image, 2 video.
        image_grid_thw, video_grid_thw: ``(n, 3)`` integer grids, one per image (video) span,
            in the order the spans appear; ``h`` and ``w`` multiples of ``m``.
        attention_mask: ``(B, S)``; padded positions get 0 and are skipped.
        spatial_merge_size: the vision encoder's merge size (``vision_config.spatial_merge_size``).
        video_time_intervals: per video, the step of the temporal index; default 1.
        second_per_grid_ts, tokens_per_second: transformers' names for Qwen2.5-VL
            (``get_rope_index``'s ``second_per_grid_ts`` and ``vision_config.tokens_per_second``):
            the intervals ``tokens_per_second * second_per_grid_ts``, formed in float32 as
            transformers forms them. Give these or ``video_time_intervals``.
        split_video_frames: Qwen3-VL: each frame of a video is its own span (timestamp tokens
            separate the frames), so a ``(t, h, w)`` video grid stands for ``t`` grids
            ``(1, h, w)``.

    Returns:
        ``(position_ids (3, B, S), deltas (B, 1))``, where ``deltas`` is the largest position plus
        one minus the token count, as transformers' ``rope_deltas``.
    """
    owner = "posenc.mrope_position_ids"
    check_tensor(owner, "mm_token_type_ids", mm_token_type_ids)
    if mm_token_type_ids.is_floating_point() or mm_token_type_ids.dtype == torch.bool:
        raise TypeError(f"{owner}: mm_token_type_ids must be an integer tensor, got "
                        f"{mm_token_type_ids.dtype}")
    if mm_token_type_ids.dim() != 2:
        raise ValueError(f"{owner}: mm_token_type_ids must have shape (B, S), got "
                         f"{tuple(mm_token_type_ids.shape)}")
    merge = check_int(owner, "spatial_merge_size", spatial_merge_size, minimum=1)
    check_bool(owner, "split_video_frames", split_video_frames)
    if attention_mask is not None:
        check_tensor(owner, "attention_mask", attention_mask)
        if tuple(attention_mask.shape) != tuple(mm_token_type_ids.shape):
            raise ValueError(f"{owner}: attention_mask must have the shape of mm_token_type_ids "
                             f"{tuple(mm_token_type_ids.shape)}, got {tuple(attention_mask.shape)}")
    grids = {1: _grids(owner, "image_grid_thw", image_grid_thw, merge),
             2: _grids(owner, "video_grid_thw", video_grid_thw, merge)}
    intervals = {1: [1.0] * len(grids[1]),
                 2: _video_intervals(owner, grids[2], video_time_intervals, second_per_grid_ts,
                                     tokens_per_second)}
    if split_video_frames:
        intervals[2] = [v for (t, _, _), v in zip(grids[2], intervals[2]) for _ in range(t)]
        grids[2] = [[1, h, w] for t, h, w in grids[2] for _ in range(t)]
    used = {1: 0, 2: 0}
    batch, length = mm_token_type_ids.shape
    position_ids = torch.zeros(3, batch, length, dtype=torch.long)
    deltas = []
    for b in range(batch):
        kept = (torch.ones(length, dtype=torch.bool) if attention_mask is None
                else attention_mask[b].bool().cpu())
        types = mm_token_type_ids[b].cpu()[kept].tolist()
        rows: List[Tensor] = []
        start, i = 0, 0
        while i < len(types):
            kind, end = types[i], i
            while end < len(types) and types[end] == kind:
                end += 1
            if kind == 0:
                rows.append(torch.arange(end - i).expand(3, -1) + start)
                start += end - i
            elif kind in (1, 2):
                if used[kind] >= len(grids[kind]):
                    raise ValueError(
                        f"{owner}: more {_SPAN_NAMES[kind]} spans than grids in "
                        f"{_SPAN_NAMES[kind]}_grid_thw")
                t, h, w = grids[kind][used[kind]]
                interval = intervals[kind][used[kind]]
                used[kind] += 1
                h, w = h // merge, w // merge
                if t * h * w != end - i:
                    raise ValueError(
                        f"{owner}: a grid of {t}x{h}x{w} merged patches needs "
                        f"{t * h * w} tokens, the sequence has {end - i}")
                temporal = (torch.arange(t) * interval).long()
                grid = torch.stack(torch.meshgrid(temporal, torch.arange(h), torch.arange(w),
                                                  indexing="ij")).reshape(3, -1)
                rows.append(grid + start)
                start += max(h, w)
            else:
                raise ValueError(f"{owner}: mm_token_type_ids must be 0, 1 or 2, got {kind}")
            i = end
        row = torch.cat(rows, dim=1) if rows else torch.zeros(3, 0, dtype=torch.long)
        position_ids[:, b, kept] = row
        deltas.append((int(row.max()) + 1 if row.numel() else 0) - len(types))
    for kind, name in _SPAN_NAMES.items():
        if used[kind] != len(grids[kind]):
            frames = " (frames, with split_video_frames)" if kind == 2 and split_video_frames \
                else ""
            raise ValueError(f"{owner}: {name}_grid_thw has {len(grids[kind])} grids{frames}, "
                             f"but mm_token_type_ids has {used[kind]} {name} spans")
    return (position_ids.to(mm_token_type_ids.device),
            torch.tensor(deltas, device=mm_token_type_ids.device).unsqueeze(1))


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
