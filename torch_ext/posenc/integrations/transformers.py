"""posenc inside Hugging Face transformers (5.x) models: one call makes a model's attention rotate
queries and keys with :func:`posenc.rotary`, angles computed in the kernel from the positions,
no cos/sin tables; for T5, mT5 and UMT5, it makes the attention layers' relative position bias
with :func:`posenc.attention_bias` (buckets in the kernel, no [Tq, Tk] bucket tensor, a
deterministic table gradient).

    import posenc.integrations.transformers as posenc_hf
    model = AutoModelForCausalLM.from_pretrained(...)
    changes = posenc_hf.apply_to_model(model)          # this model instance
    posenc_hf.apply_to_family("llama")                  # every Llama built afterwards

How: the model's rotary embedding module (``model.model.rotary_emb``) is replaced by
:class:`PosencRotaryEmbedding`, whose forward returns ``(position_ids, Rotation)`` in place of
``(cos, sin)``; the modeling module's ``apply_rotary_pos_emb`` is wrapped so that, given a
:class:`Rotation`, it calls :func:`posenc.rotary`, and otherwise calls transformers' own function
(models that are not patched are unaffected).

Numerics: by default the angles are exact (``pos * inv_freq`` reduced in double). transformers
forms ``float32(pos) * inv_freq`` in float32, about ``pos * 6e-8`` rad off (0.06 rad at position
10^6), so outputs differ from unpatched transformers by an amount that grows with the position;
``precision="transformers"`` reproduces transformers' float32 frequencies and angles.
"""

from __future__ import annotations

import functools
import importlib
import types
from typing import Any, Dict, List, NamedTuple, Optional

import torch
from torch import Tensor, nn

from .._attention_bias import attention_bias
from .._checks import check_bool, check_choice
from .._rotary import config_rope_parameters, rope_frequencies, rotary

__all__ = ["PosencRotaryEmbedding", "Rotation", "apply_to_family", "apply_to_model",
           "SUPPORTED_BIAS_MODEL_TYPES", "SUPPORTED_MODEL_TYPES"]

# model_type -> (modeling module, its rotary embedding class, interleaved pairs)
_FAMILIES = {
    "llama": ("transformers.models.llama.modeling_llama", "LlamaRotaryEmbedding", False),
    "mistral": ("transformers.models.mistral.modeling_mistral", "MistralRotaryEmbedding", False),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2RotaryEmbedding", False),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3RotaryEmbedding", False),
    "phi3": ("transformers.models.phi3.modeling_phi3", "Phi3RotaryEmbedding", False),
    "gemma2": ("transformers.models.gemma2.modeling_gemma2", "Gemma2RotaryEmbedding", False),
    "gemma3_text": ("transformers.models.gemma3.modeling_gemma3", "Gemma3RotaryEmbedding", False),
    "gpt_neox": ("transformers.models.gpt_neox.modeling_gpt_neox", "GPTNeoXRotaryEmbedding",
                 False),
    "cohere": ("transformers.models.cohere.modeling_cohere", "CohereRotaryEmbedding", True),
    "glm": ("transformers.models.glm.modeling_glm", "GlmRotaryEmbedding", True),
    # MLA: the rope part of q and k; with config.rope_interleave the attention calls
    # apply_rotary_pos_emb_interleave (wrapped too, with interleaved pairs).
    "deepseek_v3": ("transformers.models.deepseek_v3.modeling_deepseek_v3",
                    "DeepseekV3RotaryEmbedding", False),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))

# model_type -> (modeling module, its attention class): the T5 relative-bucket families.
_BIAS_FAMILIES = {
    "t5": ("transformers.models.t5.modeling_t5", "T5Attention"),
    "mt5": ("transformers.models.mt5.modeling_mt5", "MT5Attention"),
    "umt5": ("transformers.models.umt5.modeling_umt5", "UMT5Attention"),
}
SUPPORTED_BIAS_MODEL_TYPES = tuple(sorted(_BIAS_FAMILIES))


def _posenc_compute_bias(self, query_length, key_length, device=None, past_seen_tokens=0):
    """T5Attention.compute_bias with posenc.attention_bias: (1, H, Tq, Tk)."""
    bias = attention_bias(self.relative_attention_bias.weight, query_length, key_length,
                          kind="t5", offset=int(past_seen_tokens),
                          bidirectional=not self.is_decoder,
                          num_buckets=self.relative_attention_num_buckets,
                          max_distance=self.relative_attention_max_distance)
    return bias if device is None else bias.to(device)


def _apply_bias(model: nn.Module, class_name: str) -> Dict[str, List[str]]:
    layers = [(name, child) for name, child in model.named_modules()
              if type(child).__name__ == class_name
              and getattr(child, "has_relative_attention_bias", False)]
    if not layers:
        raise ValueError(f"posenc.integrations.transformers: no {class_name} with a relative "
                         f"attention bias found in the model")
    replaced = []
    for name, layer in layers:
        if getattr(layer.compute_bias, "__func__", None) is _posenc_compute_bias:
            continue  # done by an earlier call, or by apply_to_family
        layer.compute_bias = types.MethodType(_posenc_compute_bias, layer)
        replaced.append(f"{name}.compute_bias")
    return {"replaced": replaced, "wrapped": []}


class Rotation(NamedTuple):
    """What :class:`PosencRotaryEmbedding` returns in the place of ``sin``: the rotation that the
    wrapped ``apply_rotary_pos_emb`` hands to :func:`posenc.rotary`."""

    inv_freq: Tensor  # (rotary_dim / 2,): float64 (exact) or float32 (transformers)
    attention_factor: float
    rotary_dim: int
    interleaved: bool
    precision: str


class _LayerRope:
    """The frequencies of one layer type (or of the model): host masters, so that moving the
    module to another dtype never rounds them, and the state of dynamic and longrope types."""

    def __init__(self, config: Any, parameters: Dict[str, Any], layer_type: Optional[str],
                 precision: str) -> None:
        if layer_type is not None:
            parameters = parameters[layer_type]
        self.rope_type = parameters.get("rope_type", "default")
        self.layer_type = layer_type
        self.inv_freq, self.attention_factor = rope_frequencies(
            config, layer_type=layer_type, precision=precision)
        self.original_inv_freq = self.inv_freq
        self.max_position_embeddings = config.max_position_embeddings
        self.cached_seq_len = config.max_position_embeddings
        self.long_inv_freq: Optional[Tensor] = None
        self.original_max_position_embeddings = parameters.get(
            "original_max_position_embeddings", config.max_position_embeddings)
        if self.rope_type == "longrope":
            self.long_inv_freq, _ = rope_frequencies(
                config, layer_type=layer_type, seq_len=self.original_max_position_embeddings + 1,
                precision=precision)

    def to(self, device: torch.device) -> None:
        self.inv_freq = self.inv_freq.to(device)
        self.original_inv_freq = self.original_inv_freq.to(device)
        if self.long_inv_freq is not None:
            self.long_inv_freq = self.long_inv_freq.to(device)


class PosencRotaryEmbedding(nn.Module):
    r"""Drop-in for a transformers model's rotary embedding module (``LlamaRotaryEmbedding``,
    ``Gemma3RotaryEmbedding``, ...): built from the config as transformers builds its own (all
    rope types, ``partial_rotary_factor``, ``rope_parameters`` nested by layer type), its
    forward ``(x, position_ids[, layer_type])`` returns ``(position_ids, Rotation)`` for the
    wrapped ``apply_rotary_pos_emb``. Dynamic NTK recomputes the frequencies as transformers'
    ``dynamic_rope_update`` does (growing past the cached length, back to the original below
    it; this reads ``position_ids.max()`` on the host, as transformers does); longrope switches
    to its long factors above ``original_max_position_embeddings`` without a host read."""

    def __init__(self, config: Any, *, interleaved: bool = False,
                 precision: str = "exact") -> None:
        super().__init__()
        owner = "PosencRotaryEmbedding"
        self.config = config
        self.interleaved = check_bool(owner, "interleaved", interleaved)
        self.precision = _check_precision(precision)
        parameters = config_rope_parameters(config, owner)
        nested = bool(parameters) and all(isinstance(v, dict) or v is None
                                          for v in parameters.values())
        layer_types = [k for k, v in parameters.items() if v] if nested else [None]
        self._layers = {t: _LayerRope(config, parameters, t, precision) for t in layer_types}
        self._device = torch.device("cpu")

    def _apply(self, fn, recurse=True):
        # Follow device moves (found from a probe tensor), so that forward finds the frequencies
        # where the activations are; dtype casts never touch them: they keep the precision's
        # dtype (float64 for "exact").
        super()._apply(fn, recurse)
        self._device = fn(torch.empty(0, device=self._device)).device
        for layer in self._layers.values():
            layer.to(self._device)
        return self

    def _dynamic_update(self, layer: _LayerRope, position_ids: Tensor) -> None:
        seq_len = int(position_ids.max()) + 1  # a host read, as transformers' update
        if seq_len > layer.cached_seq_len:  # growth
            inv_freq, _ = rope_frequencies(self.config, layer_type=layer.layer_type,
                                           seq_len=seq_len, precision=self.precision)
            layer.inv_freq = inv_freq.to(self._device)
            layer.cached_seq_len = seq_len
        if seq_len < layer.max_position_embeddings < layer.cached_seq_len:  # reset
            layer.inv_freq = layer.original_inv_freq
            layer.cached_seq_len = layer.max_position_embeddings

    def forward(self, x: Tensor, position_ids: Tensor, layer_type: Optional[str] = None):
        layer = self._layers[layer_type]
        if "dynamic" in layer.rope_type:
            self._dynamic_update(layer, position_ids)
        inv_freq = layer.inv_freq.to(x.device)  # a no-op once the module is on x's device
        if layer.long_inv_freq is not None:
            # Long factors when the sequence passes the original length; no host read.
            inv_freq = torch.where(position_ids.max() + 1 > layer.original_max_position_embeddings,
                                   layer.long_inv_freq.to(x.device), inv_freq)
        return position_ids, Rotation(inv_freq, layer.attention_factor, 2 * inv_freq.numel(),
                                      self.interleaved, self.precision)

    def extra_repr(self) -> str:
        types = {t or "all layers": layer.rope_type for t, layer in self._layers.items()}
        return (f"rope_types={types}, interleaved={self.interleaved}, "
                f"precision={self.precision!r}")


def _wrap_apply(original, interleaved_pairs: bool = False):
    """transformers' apply_rotary_pos_emb, calling posenc.rotary when given a Rotation.
    interleaved_pairs: DeepSeek's apply_rotary_pos_emb_interleave, which rotates pairs
    (2i, 2i + 1) and writes them de-interleaved (i, i + r/2). posenc keeps the pairs in place:
    q and k get the same channel order, so every q.k product, and so the attention, is the same
    (the cached keys keep that order too)."""
    if getattr(original, "__posenc_original__", None) is not None:
        return original  # already wrapped
    takes_position_ids = interleaved_pairs  # (q, k, cos, sin, position_ids=None, unsqueeze_dim=1)

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if not isinstance(sin, Rotation):
            return original(q, k, cos, sin, *args, **kwargs)
        if takes_position_ids:
            args = args[1:]
        unsqueeze_dim = kwargs.get("unsqueeze_dim", args[0] if args else 1)
        # q, k: [batch, heads, seq, head_dim] (unsqueeze_dim 1) or [batch, seq, heads, head_dim]
        layout = "bhsd" if unsqueeze_dim == 1 else "bshd"
        return rotary(q, k, positions=cos, inv_freq=sin.inv_freq, rotary_dim=sin.rotary_dim,
                      interleaved=sin.interleaved or interleaved_pairs, layout=layout,
                      attention_factor=sin.attention_factor, precision=sin.precision)

    apply_rotary_pos_emb.__posenc_original__ = original
    return apply_rotary_pos_emb


def _family(model_type: str):
    if not isinstance(model_type, str):
        raise TypeError(f"posenc.integrations.transformers: model_type must be a str, got "
                        f"{type(model_type).__name__}")
    if model_type not in _FAMILIES:
        raise ValueError(
            f"posenc.integrations.transformers: model_type {model_type!r} is not supported; "
            f"supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES + SUPPORTED_BIAS_MODEL_TYPES))}")
    path, class_name, interleaved = _FAMILIES[model_type]
    return importlib.import_module(path), class_name, interleaved


def _patch_apply(module) -> List[str]:
    changed = []
    for name, interleaved_pairs in (("apply_rotary_pos_emb", False),
                                    ("apply_rotary_pos_emb_interleave", True)):
        original = getattr(module, name, None)
        if original is None:
            continue
        wrapped = _wrap_apply(original, interleaved_pairs)
        if wrapped is not original:
            setattr(module, name, wrapped)
            changed.append(f"{module.__name__}.{name}")
    return changed


def apply_to_model(model: nn.Module, *, precision: str = "exact") -> Dict[str, List[str]]:
    """Makes ``model`` (a transformers model of a supported ``model_type``) apply RoPE with
    :func:`posenc.rotary`. Returns what changed: ``{"replaced": [module names],
    "wrapped": [functions]}``; a second call changes nothing and returns empty lists. An
    unsupported architecture raises ``ValueError`` before anything is changed.

    precision: ``"exact"`` (default) or ``"transformers"`` (transformers' float32 frequencies
    and angles, for bit-level parity with a model trained on its tables).

    T5, mT5 and UMT5 (``SUPPORTED_BIAS_MODEL_TYPES``): each attention layer with a relative
    attention bias computes it with :func:`posenc.attention_bias` (``"replaced"`` lists their
    ``compute_bias``); the buckets are transformers' exactly, so ``precision`` does not apply."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"posenc.integrations.transformers: model must be a torch.nn.Module (a "
                        f"transformers model), got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("posenc.integrations.transformers: model has no config; apply_to_model "
                         "takes a transformers model")
    model_type = getattr(config, "model_type", None)
    if model_type in _BIAS_FAMILIES:
        _check_precision(precision)
        return _apply_bias(model, _BIAS_FAMILIES[model_type][1])
    module, class_name, interleaved = _family(model_type)
    _check_precision(precision)
    # Built after apply_to_family: the family's class forwarding to its posenc child.
    family_built = [name for name, child in model.named_modules()
                    if isinstance(getattr(child, "posenc", None), PosencRotaryEmbedding)]
    targets = [(name, child) for name, child in model.named_modules()
               if type(child).__name__ == class_name and name not in family_built]
    done = family_built + [name for name, child in model.named_modules()
                           if isinstance(child, PosencRotaryEmbedding)]
    if not targets and not done:
        raise ValueError(
            f"posenc.integrations.transformers: no {class_name} found in the model")
    replaced = []
    for name, child in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        buffers = list(child.buffers())
        replacement = PosencRotaryEmbedding(child.config, interleaved=interleaved,
                                            precision=precision)
        if buffers:
            replacement.to(buffers[0].device)
        setattr(parent, attribute, replacement)
        replaced.append(name)
    return {"replaced": replaced, "wrapped": _patch_apply(module)}


def apply_to_family(model_type: str, *, precision: str = "exact") -> Dict[str, List[str]]:
    """Makes every model of ``model_type`` built afterwards (``from_pretrained``,
    ``from_config``) use posenc: the family's rotary embedding class keeps its name, attributes
    and buffers (transformers' weight initialisation reads them), gains a
    :class:`PosencRotaryEmbedding` as its ``posenc`` child, and forwards to it; the modeling
    module's ``apply_rotary_pos_emb`` is wrapped. Models built before keep transformers' tables
    (use :func:`apply_to_model` for them). Returns what changed; a second call changes nothing
    (the first call's precision stays). For T5, mT5 and UMT5 the family's attention class gets
    posenc's ``compute_bias``."""
    if model_type in _BIAS_FAMILIES:
        _check_precision(precision)
        path, class_name = _BIAS_FAMILIES[model_type]
        attention_class = getattr(importlib.import_module(path), class_name)
        if attention_class.compute_bias is _posenc_compute_bias:
            return {"replaced": [], "wrapped": []}
        attention_class.compute_bias = _posenc_compute_bias
        return {"replaced": [f"{path}.{class_name}.compute_bias"], "wrapped": []}
    module, class_name, interleaved = _family(model_type)
    _check_precision(precision)
    rotary_class = getattr(module, class_name)
    changed = []
    if getattr(rotary_class, "__posenc_family__", None) is None:
        original_init = rotary_class.__init__

        @functools.wraps(original_init)
        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, config, *args, **kwargs)
            self.posenc = PosencRotaryEmbedding(config, interleaved=interleaved,
                                                precision=precision)
            device = kwargs.get("device", args[0] if args else None)
            if device is not None:
                self.posenc.to(device)

        original_forward = rotary_class.forward

        def forward(self, x: Tensor, position_ids: Tensor, *args: Any, **kwargs: Any):
            posenc = getattr(self, "posenc", None)
            if posenc is None:  # built before the call: transformers' own tables
                return original_forward(self, x, position_ids, *args, **kwargs)
            return posenc(x, position_ids, *args, **kwargs)

        rotary_class.__posenc_family__ = (original_init, original_forward, precision)
        rotary_class.__init__ = __init__
        rotary_class.forward = forward
        changed.append(f"{module.__name__}.{class_name}")
    return {"replaced": changed, "wrapped": _patch_apply(module)}


def _check_precision(precision: str) -> str:
    return check_choice("posenc.integrations.transformers", "precision", precision,
                        ("exact", "transformers"))
