"""posenc.rope_frequencies and posenc.nn.RotaryEmbedding against the real transformers package
(5.x, pinned in requirements-dev.txt): every rope_type of ROPE_INIT_FUNCTIONS plus the default,
with and without seq_len, configs nested by layer type, partial rotary, Phi-3's longrope. Tiny
configs built here; nothing is downloaded."""

import math
import warnings

import pytest
import torch

import posenc

transformers = pytest.importorskip("transformers")
from transformers import Gemma3TextConfig, GPTNeoXConfig, LlamaConfig, Phi3Config  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding  # noqa: E402
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding  # noqa: E402

HEAD_DIM = 16
PARAMETERS = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 500000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 64, "beta_fast": 16.0, "beta_slow": 2.0},
    "yarn, DeepSeek mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                              "original_max_position_embeddings": 64, "mscale": 0.707,
                              "mscale_all_dim": 0.707},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0,
                 "short_factor": [1.0 + i / 10 for i in range(HEAD_DIM // 2)],
                 "long_factor": [2.0 + i / 5 for i in range(HEAD_DIM // 2)],
                 "original_max_position_embeddings": 64},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "proportional": {"rope_type": "proportional", "rope_theta": 10000.0,
                     "partial_rotary_factor": 0.5},
}


def llama_config(parameters):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=HEAD_DIM,
                           max_position_embeddings=256, rope_parameters=dict(parameters))


def reference(config, seq_len, layer_type=None):
    """transformers' own (inv_freq, attention_factor)."""
    parameters = config.rope_parameters if layer_type is None else \
        config.rope_parameters[layer_type]
    if parameters["rope_type"] == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config, seq_len=seq_len)
    kwargs = {} if layer_type is None else {"layer_type": layer_type}
    return ROPE_INIT_FUNCTIONS[parameters["rope_type"]](config, None, seq_len=seq_len, **kwargs)


def test_every_rope_type_of_transformers_is_covered():
    covered = {p["rope_type"] for p in PARAMETERS.values()}
    assert set(ROPE_INIT_FUNCTIONS) | {"default"} <= covered


@pytest.mark.parametrize("name", list(PARAMETERS))
@pytest.mark.parametrize("seq_len", [None, 100, 1000])
def test_rope_frequencies_of_a_config_equal_transformers(name, seq_len):
    config = llama_config(PARAMETERS[name])
    expected, expected_attention = reference(config, seq_len)
    inv_freq, attention = posenc.rope_frequencies(config, seq_len=seq_len,
                                                  precision="transformers")
    assert inv_freq.dtype == torch.float32
    assert torch.equal(inv_freq, expected)  # bit for bit
    assert attention == pytest.approx(expected_attention, rel=1e-15)
    exact, exact_attention = posenc.rope_frequencies(config, seq_len=seq_len)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, expected.double(), rtol=2e-7, atol=0)
    assert exact_attention == pytest.approx(expected_attention, rel=1e-15)


def sweep_parameters(rope_type, head_dim, base, original, factor):
    """One rope_parameters dict of the sweep below."""
    common = {"rope_type": rope_type, "rope_theta": base}
    if rope_type == "llama3":
        return dict(common, factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=original)
    if rope_type == "yarn":
        return dict(common, factor=factor, original_max_position_embeddings=original,
                    beta_fast=16.0 if factor > 8 else 32.0)
    if rope_type == "longrope":
        return dict(common, factor=factor, original_max_position_embeddings=original,
                    short_factor=[1.0 + i / 10 for i in range(head_dim // 2)],
                    long_factor=[2.0 + i / 5 for i in range(head_dim // 2)])
    if rope_type == "proportional":
        return dict(common, factor=factor, partial_rotary_factor=0.25 if factor > 8 else 0.5)
    return dict(common, factor=factor)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "longrope", "llama3",
                                       "proportional"])
def test_transformers_precision_is_bit_exact_over_a_sweep(rope_type):
    # Head dims, bases, original contexts and factors as models use them: every inv_freq equal to
    # transformers' bit for bit, at and past the original context.
    compared = 0
    for head_dim in (32, 64, 80, 128, 256):
        for base in (10000.0, 150000.0, 500000.0, 1e6, 5e6):
            for original in (512, 2048, 8192, 32768):
                for factor in (2.0, 8.0, 40.0):
                    parameters = sweep_parameters(rope_type, head_dim, base, original, factor)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4,
                                             head_dim=head_dim,
                                             max_position_embeddings=4 * original,
                                             rope_parameters=parameters)
                        for seq_len in (None, 2 * original):
                            want, want_attention = reference(config, seq_len)
                            got, attention = posenc.rope_frequencies(
                                config, seq_len=seq_len, precision="transformers")
                            assert torch.equal(got, want), (parameters, seq_len)
                            assert attention == want_attention
                            compared += 1
    assert compared == 5 * 5 * 4 * 3 * 2


def test_transformers_precision_llama3_smoothed_band():
    # Half of these pairs lie in llama3's smoothed band, where transformers' wavelengths are
    # reciprocal products (2 pi * (1 / f)), not quotients (2 pi / f).
    parameters = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 512}
    got, _ = posenc.rope_frequencies(64, base=500000.0, scaling=parameters,
                                     max_position_embeddings=4096, precision="transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                             max_position_embeddings=4096,
                             rope_parameters=dict(parameters, rope_theta=500000.0))
    want, _ = reference(config, None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_rope_parameters_dict_with_head_dim_equals_the_config(name):
    config = llama_config(PARAMETERS[name])
    from_config, attention = posenc.rope_frequencies(config, precision="transformers")
    from_dict, dict_attention = posenc.rope_frequencies(
        HEAD_DIM, scaling=dict(config.rope_parameters), max_position_embeddings=256,
        precision="transformers")
    assert torch.equal(from_dict, from_config)
    assert dict_attention == attention


def gemma3_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Gemma3TextConfig(
            hidden_size=64, num_attention_heads=4, head_dim=HEAD_DIM, num_key_value_heads=1,
            intermediate_size=64, num_hidden_layers=2, max_position_embeddings=256,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0,
                                   "rope_theta": 1000000.0}})


@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_rope_parameters_per_layer_type(layer_type):
    config = gemma3_config()
    hf = Gemma3RotaryEmbedding(config)
    inv_freq, attention = posenc.rope_frequencies(config, layer_type=layer_type,
                                                  precision="transformers")
    assert torch.equal(inv_freq, getattr(hf, f"{layer_type}_inv_freq"))
    assert attention == getattr(hf, f"{layer_type}_attention_scaling")
    module = posenc.nn.RotaryEmbedding.from_config(config, layer_type=layer_type,
                                                   precision="transformers")
    assert torch.equal(module.inv_freq, inv_freq)


def test_nested_parameters_need_a_layer_type():
    with pytest.raises(ValueError, match="layer_type must be one of"):
        posenc.rope_frequencies(gemma3_config())
    with pytest.raises(ValueError, match="not nested by layer type"):
        posenc.rope_frequencies(llama_config(PARAMETERS["linear"]), layer_type="full_attention")


def test_partial_rotary_factor_gpt_neox():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = GPTNeoXConfig(hidden_size=64, num_attention_heads=4, rotary_pct=0.25,
                               max_position_embeddings=128, intermediate_size=64,
                               num_hidden_layers=2)
    hf = GPTNeoXRotaryEmbedding(config)
    inv_freq, _ = posenc.rope_frequencies(config, precision="transformers")
    assert inv_freq.shape == (2,)  # int(16 * 0.25) / 2
    assert torch.equal(inv_freq, hf.inv_freq)


@pytest.mark.parametrize("seq_len", [None, 64, 65, 1000])
def test_phi3_longrope_switches_at_original_max_position_embeddings(seq_len):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = Phi3Config(hidden_size=64, num_attention_heads=4, intermediate_size=64,
                            num_hidden_layers=2, max_position_embeddings=512,
                            original_max_position_embeddings=64,
                            rope_parameters={"rope_type": "longrope",
                                             "short_factor": [1.0 + i / 8 for i in range(8)],
                                             "long_factor": [3.0 + i for i in range(8)]})
    expected, expected_attention = ROPE_INIT_FUNCTIONS["longrope"](config, None, seq_len=seq_len)
    inv_freq, attention = posenc.rope_frequencies(config, seq_len=seq_len,
                                                  precision="transformers")
    assert torch.equal(inv_freq, expected)
    assert attention == pytest.approx(expected_attention, rel=1e-15)
    if seq_len is None:
        assert torch.equal(Phi3RotaryEmbedding(config).inv_freq, inv_freq)


def test_rotary_embedding_from_config_rotates_like_transformers():
    config = llama_config(PARAMETERS["llama3"])
    hf = LlamaRotaryEmbedding(config)
    module = posenc.nn.RotaryEmbedding.from_config(config, precision="transformers")
    q = torch.randn(2, 7, 4, HEAD_DIM)
    k = torch.randn(2, 7, 1, HEAD_DIM)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [100, 101, 102, 0, 1, 2, 3]])
    cos, sin = hf(q, positions)
    expected = transformers.models.llama.modeling_llama.apply_rotary_pos_emb(
        q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    got = module(q, k, positions=positions)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_proportional_leaves_the_tail_pairs_unrotated():
    config = llama_config(PARAMETERS["proportional"])
    inv_freq, _ = posenc.rope_frequencies(config)
    assert inv_freq.shape == (HEAD_DIM // 2,)
    assert (inv_freq[HEAD_DIM // 4:] == 0).all() and (inv_freq[: HEAD_DIM // 4] > 0).all()
    module = posenc.nn.RotaryEmbedding.from_config(config)
    q = torch.randn(1, 5, 2, HEAD_DIM, dtype=torch.float64)
    out = module(q, positions=torch.arange(5) * 1000)
    pairs = torch.cat([torch.arange(HEAD_DIM // 4, HEAD_DIM // 2),
                       torch.arange(3 * HEAD_DIM // 4, HEAD_DIM)])
    torch.testing.assert_close(out[..., pairs], q[..., pairs], rtol=0, atol=0)


def test_bad_config_arguments():
    with pytest.raises(TypeError, match="dim must be an int or a transformers config"):
        posenc.rope_frequencies("16")
    with pytest.raises(ValueError, match="give a config or scaling, not both"):
        posenc.rope_frequencies(llama_config(PARAMETERS["linear"]), scaling={})
    with pytest.raises(ValueError, match="differ"):
        posenc.rope_frequencies(16, base=500.0, scaling={"rope_theta": 10000.0})
    with pytest.raises(ValueError, match="partial_rotary_factor'\\] must be in"):
        posenc.rope_frequencies(16, scaling={"rope_type": "proportional",
                                             "partial_rotary_factor": 1.5})
    with pytest.raises(ValueError, match="needs scaling\\['factor'\\]"):
        torch.ops.posenc.rope_frequencies(16, rope_type="linear")


def test_rotary_and_module_take_a_rope_parameters_dict():
    """A 5.x rope_parameters dict (rope_theta and partial_rotary_factor inside) drives
    posenc.rotary and posenc.nn.RotaryEmbedding as it drives transformers."""
    parameters = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5}
    config = llama_config(parameters)
    hf = LlamaRotaryEmbedding(config)
    q = torch.randn(2, 7, 4, HEAD_DIM)
    positions = torch.arange(7)[None].expand(2, 7) * 13
    cos, sin = hf(q, positions)
    rotated = HEAD_DIM // 2
    expected = q.clone()
    q_rot = q[..., :rotated].transpose(1, 2)
    half = rotated // 2
    rotate_half = torch.cat([-q_rot[..., half:], q_rot[..., :half]], dim=-1)
    expected[..., :rotated] = (q_rot * cos[:, None] + rotate_half * sin[:, None]).transpose(1, 2)
    got = posenc.rotary(q, positions=positions, scaling=parameters, precision="transformers")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    module = posenc.nn.RotaryEmbedding(HEAD_DIM, scaling=parameters, precision="transformers")
    assert module.rotary_dim == rotated and module.base == 500000.0
    torch.testing.assert_close(module(q, positions=positions), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="give rotary_dim or scaling\\['partial_rotary_factor'\\]"):
        posenc.rotary(q, rotary_dim=8, scaling=parameters)


def qwen_vl_rotary(model: str):
    """transformers' Qwen2-VL or Qwen3-VL text rotary embedding on a tiny config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if model == "qwen2_vl":
            from transformers import Qwen2VLTextConfig
            from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding
            config = Qwen2VLTextConfig(hidden_size=128, num_attention_heads=4,
                                       num_key_value_heads=2, rope_parameters={
                                           "rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": [4, 6, 6]})
            return Qwen2VLRotaryEmbedding(config), [4, 6, 6], False
        from transformers import Qwen3VLTextConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding
        config = Qwen3VLTextConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=32, rope_parameters={
                                       "rope_type": "default", "rope_theta": 5000000.0,
                                       "mrope_section": [6, 5, 5], "mrope_interleaved": True})
        return Qwen3VLTextRotaryEmbedding(config), [6, 5, 5], True


@pytest.mark.parametrize("model", ["qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("precision", ["transformers", "exact"])
def test_mrope_matches_transformers_qwen_vl(model, precision):
    hf, section, interleaved = qwen_vl_rotary(model)
    batch, seq, heads, head_dim = 2, 11, 4, 32
    generator = torch.Generator().manual_seed(12)
    # Temporal, height and width rows that differ, as for image tokens.
    positions = torch.randint(0, 3000, (3, batch, seq), generator=generator)
    q = torch.randn(batch, heads, seq, head_dim, dtype=torch.float64, generator=generator)
    k = torch.randn(batch, 2, seq, head_dim, dtype=torch.float64, generator=generator)
    cos, sin = hf(q.float(), positions)  # (B, S, D), recomposed per axis
    half = head_dim // 2

    def reference(x):
        x1, x2 = x[..., :half], x[..., half:]
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos[:, None].double() + rotated * sin[:, None].double()

    q_out, k_out = posenc.rotary(q, k, positions=positions, layout="bhsd",
                                 mrope_section=section, mrope_interleaved=interleaved,
                                 inv_freq=hf.inv_freq.double(), precision=precision)
    # transformers' angles are float32: exact angles differ by about pos * 6e-8 rad.
    tolerance = 1e-6 if precision == "transformers" else 3e-4
    torch.testing.assert_close(q_out, reference(q), rtol=0, atol=tolerance)
    torch.testing.assert_close(k_out, reference(k), rtol=0, atol=tolerance)
    # Wrong section, wrong axis order: the comparison fails.
    shuffled = posenc.rotary(q, positions=positions[[1, 0, 2]], layout="bhsd",
                             mrope_section=section, mrope_interleaved=interleaved,
                             inv_freq=hf.inv_freq.double(), precision=precision)
    assert (shuffled - reference(q)).abs().max() > 1e-2


def test_mrope_gradients_and_bad_sections():
    q = torch.randn(1, 6, 2, 16, dtype=torch.float64, requires_grad=True)
    positions = torch.randint(0, 50, (3, 1, 6))
    for interleaved in (False, True):
        assert torch.autograd.gradcheck(
            lambda q: posenc.rotary(q, positions=positions, mrope_section=[2, 3, 3],
                                    mrope_interleaved=interleaved), (q,))
    with pytest.raises(ValueError, match="must sum to rotary_dim / 2 = 8"):
        posenc.rotary(q, positions=positions, mrope_section=[2, 2, 2])
    with pytest.raises(ValueError, match="must have 3 entries"):
        posenc.rotary(q, positions=positions, mrope_section=[4, 4])
    with pytest.raises(ValueError, match="positions with mrope_section must have shape"):
        posenc.rotary(q, positions=positions[0], mrope_section=[2, 3, 3])
    with pytest.raises(ValueError, match="needs positions"):
        posenc.rotary(q, mrope_section=[2, 3, 3])
    with pytest.raises(ValueError, match="mrope_interleaved needs mrope_section"):
        posenc.rotary(q, positions=positions[0, 0], mrope_interleaved=True)
    with pytest.raises(TypeError, match="mrope_section must be a list of ints"):
        posenc.rotary(q, positions=positions, mrope_section="233")


def _rope_index_of(model_class, **vision_config):
    """transformers' get_rope_index, called on a stand-in holding only the config it reads."""
    import functools
    import types
    stand_in = types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(**vision_config)))
    stand_in.get_vision_position_ids = functools.partial(model_class.get_vision_position_ids,
                                                         stand_in)
    return functools.partial(model_class.get_rope_index, stand_in)


def test_mrope_position_ids_equal_qwen2_vl_get_rope_index():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
    get_rope_index = _rope_index_of(Qwen2VLModel, spatial_merge_size=2)
    # Row 0: text, an image of 1x4x6 patches (6 merged tokens), text, a 2x4x4 video (8), text.
    # Row 1: left padding, text, a 1x4x4 image (4), text. Row 2: text only.
    types = torch.tensor([[0, 0, 0] + [1] * 6 + [0, 0] + [2] * 8 + [0],
                          [0, 0, 0, 0, 0] + [1] * 4 + [0] * 11,
                          [0] * 20])
    mask = torch.ones_like(types)
    mask[1, :3] = 0
    images = torch.tensor([[1, 4, 6], [1, 4, 4]])
    videos = torch.tensor([[2, 4, 4]])
    expected = get_rope_index(torch.zeros_like(types), mm_token_type_ids=types,
                              image_grid_thw=images, video_grid_thw=videos, attention_mask=mask)
    got = posenc.mrope_position_ids(types, images, videos, mask, spatial_merge_size=2)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # The ids drive posenc.rotary's M-RoPE directly.
    q = torch.randn(3, 20, 2, 32)
    assert posenc.rotary(q, positions=got[0], mrope_section=[4, 6, 6]).shape == q.shape


def test_mrope_position_ids_equal_qwen2_5_vl_with_video_time_intervals():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    get_rope_index = _rope_index_of(Qwen2_5_VLModel, spatial_merge_size=2, tokens_per_second=2)
    types = torch.tensor([[0, 0] + [2] * 12 + [0, 0, 0] + [2] * 8 + [1] * 4 + [0]])
    images = torch.tensor([[1, 4, 4]])
    videos = torch.tensor([[3, 4, 4], [2, 4, 4]])
    seconds = torch.tensor([0.5, 1.5])
    expected = get_rope_index(torch.zeros_like(types), mm_token_type_ids=types,
                              image_grid_thw=images, video_grid_thw=videos,
                              second_per_grid_ts=seconds)
    got = posenc.mrope_position_ids(types, images, videos, spatial_merge_size=2,
                                    video_time_intervals=(2 * seconds).tolist())
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # The intervals matter: without them the temporal rows differ.
    assert not torch.equal(posenc.mrope_position_ids(types, images, videos)[0], expected[0])


@pytest.mark.parametrize("seconds,tokens_per_second", [([0.5, 1.5], 2), ([0.3, 1.7], 25),
                                                        ([1 / 3, 0.7], 7)])
def test_mrope_position_ids_take_transformers_names(seconds, tokens_per_second):
    # get_rope_index's second_per_grid_ts with the vision config's tokens_per_second, formed in
    # float32 as transformers forms them (0.3 * 25 and 1/3 * 7 round there).
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
    get_rope_index = _rope_index_of(Qwen2_5_VLModel, spatial_merge_size=2,
                                    tokens_per_second=tokens_per_second)
    types = torch.tensor([[0, 0] + [2] * 12 + [0, 0, 0] + [2] * 8 + [1] * 4 + [0]])
    images = torch.tensor([[1, 4, 4]])
    videos = torch.tensor([[3, 4, 4], [2, 4, 4]])
    expected = get_rope_index(torch.zeros_like(types), mm_token_type_ids=types,
                              image_grid_thw=images, video_grid_thw=videos,
                              second_per_grid_ts=torch.tensor(seconds))
    for given in (torch.tensor(seconds), seconds):
        got = posenc.mrope_position_ids(types, images, videos, spatial_merge_size=2,
                                        second_per_grid_ts=given,
                                        tokens_per_second=tokens_per_second)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_mrope_position_ids_equal_qwen3_vl_with_timestamps():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel
    get_rope_index = _rope_index_of(Qwen3VLModel, spatial_merge_size=2)
    # Text, a 3-frame 4x6 video whose frames follow timestamp tokens, an image, text.
    frame = [0, 0] + [2] * 6  # <t_i> <vision_start>, then 6 merged tokens
    types = torch.tensor([[0, 0, 0] + frame * 3 + [0] + [1] * 4 + [0, 0]])
    images = torch.tensor([[1, 4, 4]])
    videos = torch.tensor([[3, 4, 6]])
    expected = get_rope_index(torch.zeros_like(types), mm_token_type_ids=types,
                              image_grid_thw=images, video_grid_thw=videos.clone())
    got = posenc.mrope_position_ids(types, images, videos, spatial_merge_size=2,
                                    split_video_frames=True)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # Unsplit, the first frame's span is too short for the whole video's grid.
    with pytest.raises(ValueError, match="needs 18 tokens, the sequence has 6"):
        posenc.mrope_position_ids(types, images, videos, spatial_merge_size=2)


def test_mrope_position_ids_bad_inputs():
    types = torch.tensor([[0, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match="needs 4 tokens, the sequence has 3"):
        posenc.mrope_position_ids(types, torch.tensor([[1, 4, 4]]))
    with pytest.raises(ValueError, match="more image spans than grids"):
        posenc.mrope_position_ids(types)
    with pytest.raises(ValueError, match="must be 0, 1 or 2"):
        posenc.mrope_position_ids(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="spatial_merge_size must be >= 1"):
        posenc.mrope_position_ids(types, torch.tensor([[1, 6, 2]]), spatial_merge_size=0)


def pixtral_rope():
    """A small PixtralVisionConfig (4 heads of 32), its PixtralVisionRotaryEmbedding and
    pixtral's apply_rotary_pos_emb."""
    from transformers import PixtralVisionConfig
    from transformers.models.pixtral.modeling_pixtral import (
        PixtralVisionRotaryEmbedding, apply_rotary_pos_emb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = PixtralVisionConfig(hidden_size=128, num_attention_heads=4, head_dim=32,
                                     intermediate_size=64, num_hidden_layers=1)
    return config, PixtralVisionRotaryEmbedding(config), apply_rotary_pos_emb


def pixtral_position_ids():
    """Pixtral's (row, column) of each patch of a 5 x 7 grid, row-major: (35, 2)."""
    rows, columns = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    return torch.stack([rows.flatten(), columns.flatten()], dim=-1)


@pytest.mark.parametrize("precision", ["transformers", "exact"])
def test_pixtral_axial_2d_rope_through_mrope(precision):
    """Pixtral's axial 2D rope: rope_type "axial" frequencies, positions (0, row, column) and
    mrope_section (0, D/4, D/4) reproduce transformers' PixtralVisionRotaryEmbedding."""
    config, hf, apply_rotary_pos_emb = pixtral_rope()
    inv_freq, _ = posenc.rope_frequencies(config, precision=precision)
    if precision == "transformers":
        assert torch.equal(inv_freq, hf.inv_freq)
    position_ids = pixtral_position_ids()  # (35, 2)
    q = torch.randn(1, 4, 35, 32, dtype=torch.float64)
    k = torch.randn(1, 4, 35, 32, dtype=torch.float64)
    cos, sin = hf(q.float(), position_ids)
    expected = apply_rotary_pos_emb(q, k, cos[None].double(), sin[None].double())
    positions = torch.stack([torch.zeros(35, dtype=torch.long), position_ids[:, 0],
                             position_ids[:, 1]])[:, None]  # (3, 1, 35)
    got = posenc.rotary(q, k, positions=positions, layout="bhsd", inv_freq=inv_freq,
                        mrope_section=[0, 8, 8], precision=precision)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


# ---- axial 2D rope of vision transformers, through posenc.nn.AxialRotaryEmbedding -------------


@pytest.mark.parametrize("precision", ["transformers", "exact"])
def test_pixtral_axial_rotary_module(precision):
    config, hf, apply_rotary_pos_emb = pixtral_rope()
    position_ids = pixtral_position_ids()
    q = torch.randn(2, 35, 4, 32, dtype=torch.float64)
    k = torch.randn(2, 35, 2, 32, dtype=torch.float64)
    cos, sin = hf(q.float(), position_ids)
    expected = apply_rotary_pos_emb(q, k, cos[None].double(), sin[None].double(),
                                    unsqueeze_dim=2)
    module = posenc.nn.AxialRotaryEmbedding(32, (5, 7), style="pixtral",
                                            base=config.rope_parameters["rope_theta"],
                                            precision=precision)
    for g, e in zip(module(q, k), expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["transformers", "exact"])
def test_llama4_vision_rotary_module(precision):
    """Llama4VisionRotaryEmbedding + vision_apply_rotary_emb: 5 x 5 patches then the cls token,
    interleaved pairs, (column + 1, row + 1) at the shared frequencies."""
    from transformers import Llama4VisionConfig
    from transformers.models.llama4.modeling_llama4 import (
        Llama4VisionRotaryEmbedding, vision_apply_rotary_emb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = Llama4VisionConfig(hidden_size=128, num_attention_heads=4, image_size=40,
                                    patch_size=8, intermediate_size=64, num_hidden_layers=1,
                                    rope_parameters={"rope_theta": 500.0, "rope_type": "default"})
    freqs_ci = Llama4VisionRotaryEmbedding(config).freqs_ci  # (26, 1, 16) complex
    q = torch.randn(3, 26, 4, 32)
    k = torch.randn(3, 26, 4, 32)
    expected = vision_apply_rotary_emb(q, k, freqs_ci)
    module = posenc.nn.AxialRotaryEmbedding(32, 5, style="llama4", base=500.0, extra_tokens=1,
                                            precision=precision)
    got = module(q, k)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=2e-6)
    assert torch.equal(got[0][:, -1], q[:, -1])  # the cls token is not rotated


@pytest.mark.parametrize("height,width,registers", [(5, 5, 0), (4, 6, 4)])
def test_dinov3_rotary_module(height, width, registers):
    """DINOv3ViTRopePositionEmbedding (evaluation coordinates) + its apply_rotary_pos_emb:
    prefix tokens first and unrotated, patch centres in (-1, 1) turning at 2 pi f."""
    from transformers import DINOv3ViTConfig
    from transformers.models.dinov3_vit.modeling_dinov3_vit import (
        DINOv3ViTRopePositionEmbedding, apply_rotary_pos_emb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = DINOv3ViTConfig(hidden_size=128, num_attention_heads=4, image_size=40,
                                 patch_size=8, intermediate_size=64, num_hidden_layers=1,
                                 num_register_tokens=registers)
    hf = DINOv3ViTRopePositionEmbedding(config).eval()
    pixels = torch.zeros(1, 3, 8 * height, 8 * width, dtype=torch.float64)
    cos, sin = hf(pixels)
    tokens = 1 + registers + height * width
    q = torch.randn(2, 4, tokens, 32, dtype=torch.float64)
    k = torch.randn(2, 4, tokens, 32, dtype=torch.float64)
    expected = apply_rotary_pos_emb(q, k, cos, sin)
    module = posenc.nn.AxialRotaryEmbedding(32, (height, width), style="dinov3",
                                            base=config.rope_theta, extra_tokens=1 + registers)
    got = module(q, k, layout="bhsd")
    # transformers forms the coordinates and angles in float32 (angles up to 2 pi).
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=5e-6)
    # Against the float64 definition: exact.
    i = torch.arange(height, dtype=torch.float64)
    j = torch.arange(width, dtype=torch.float64)
    ci, cj = torch.meshgrid((2 * i + 1) / height - 1, (2 * j + 1) / width - 1, indexing="ij")
    f = 100.0 ** (-4 * torch.arange(8, dtype=torch.float64) / 32)
    angles = 2 * math.pi * torch.cat([ci.flatten()[:, None] * f, cj.flatten()[:, None] * f], 1)
    angles = torch.cat([torch.zeros(1 + registers, 16, dtype=torch.float64), angles]).tile(2)
    exact = apply_rotary_pos_emb(q, k, angles.cos(), angles.sin())
    for g, e in zip(got, exact):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_axial_rotary_module_backward_and_compile():
    module = posenc.nn.AxialRotaryEmbedding(16, (3, 4), style="llama4", extra_tokens=1)
    q = torch.randn(2, 13, 2, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: module(q), (q,))
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(q.detach()), module(q.detach()), atol=0, rtol=0)
    with pytest.raises(ValueError, match="style must be one of"):
        posenc.nn.AxialRotaryEmbedding(16, 3, style="vit")
    with pytest.raises(ValueError, match="head_dim must be a multiple of 4"):
        posenc.nn.AxialRotaryEmbedding(18, 3)
