"""posenc.integrations.transformers on tiny random models of the real transformers package
(5.x): logits, every parameter gradient and greedy generate() of a patched model against the
same model unpatched, for each supported architecture. Nothing is downloaded."""

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM, CohereConfig, DeepseekV3Config, Gemma2Config, Gemma3TextConfig, GlmConfig, GPT2Config,
    GPTNeoXConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config)

import posenc.integrations.transformers as posenc_hf  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)


def configs():
    """model_type -> a tiny config as the family's published configs are set up."""
    return {
        "llama": LlamaConfig(**COMMON, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "mistral": MistralConfig(**COMMON, sliding_window=None),
        "qwen2": Qwen2Config(**COMMON),
        "qwen3": Qwen3Config(**COMMON, head_dim=16),
        "phi3": Phi3Config(**dict(COMMON, max_position_embeddings=512),
                           original_max_position_embeddings=32, rope_parameters={
                               "rope_type": "longrope",
                               "short_factor": [1.0 + i / 8 for i in range(8)],
                               "long_factor": [2.0 + i for i in range(8)]}),
        "gemma2": Gemma2Config(**COMMON, head_dim=16),
        "gemma3_text": Gemma3TextConfig(
            **COMMON, head_dim=16, layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                             "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                "rope_theta": 1e6}}),
        "gpt_neox": GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.25,
                                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=2),
        "cohere": CohereConfig(**COMMON),
        "glm": GlmConfig(**COMMON, head_dim=16, partial_rotary_factor=0.5),
        "deepseek_v3": DeepseekV3Config(
            **dict(COMMON, num_key_value_heads=4), moe_intermediate_size=32, n_routed_experts=4,
            num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
            q_lora_rank=None, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16,
            v_head_dim=16, rope_interleave=True,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 64, "mscale": 0.707,
                             "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1}),
    }


def build(model_type, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = configs()[model_type]
        config._attn_implementation = "eager"
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


def pair(model_type, precision="transformers"):
    reference = build(model_type)
    patched = copy.deepcopy(reference)
    changes = posenc_hf.apply_to_model(patched, precision=precision)
    assert changes["replaced"], changes
    return reference, patched


def test_every_supported_type_is_tested():
    assert set(configs()) == set(posenc_hf.SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("model_type", sorted(configs()))
def test_logits_and_gradients_match_transformers(model_type):
    reference, patched = pair(model_type)
    assert not any(isinstance(m, type(reference.model.rotary_emb))
                   for m in patched.modules() if type(m).__name__ != "PosencRotaryEmbedding"
                   and "Rotary" in type(m).__name__)
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(1))
    outputs = []
    for model in (reference, patched):
        model.zero_grad()
        logits = model(ids).logits
        (logits.square().mean()).backward()
        outputs.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None}))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=0, atol=1e-5)
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gemma3_text", "gpt_neox", "glm"])
def test_exact_angles_stay_within_float32_noise_at_short_positions(model_type):
    reference, patched = pair(model_type, precision="exact")
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(patched(ids).logits, reference(ids).logits, rtol=0, atol=2e-5)


def greedy_margins(model, ids, steps, **kwargs):
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0, **kwargs)
    top2 = torch.stack(out.logits).topk(2, dim=-1).values
    return out.sequences, (top2[..., 0] - top2[..., 1]).min().item()


@pytest.mark.parametrize("model_type", sorted(configs()))
def test_greedy_generate_with_a_kv_cache_gives_the_same_tokens(model_type):
    reference, patched = pair(model_type)
    ids = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    expected, margin = greedy_margins(reference, ids, 24)
    got, _ = greedy_margins(patched, ids, 24)
    with torch.no_grad():
        difference = (patched(expected).logits - reference(expected).logits).abs().max().item()
    # Only meaningful where the reference's choice is not a numerical tie.
    assert margin > 10 * difference, (margin, difference)
    assert torch.equal(got, expected)


def test_left_padded_batch_and_packed_sequences():
    reference, patched = pair("qwen2")
    ids = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # row 0 left-padded: its position_ids start at 0 after the padding
    ids[0, :4] = 0
    expected, margin = greedy_margins(reference, ids, 12, attention_mask=mask)
    got, _ = greedy_margins(patched, ids, 12, attention_mask=mask)
    assert torch.equal(got, expected)
    # Per-row position_ids, as a left-padded batch gets them: row 0 starts at 0 after its pads.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    assert position_ids[0, 4] == 0 and position_ids[1, 4] == 4
    with torch.no_grad():
        torch.testing.assert_close(
            patched(ids, attention_mask=mask, position_ids=position_ids).logits,
            reference(ids, attention_mask=mask, position_ids=position_ids).logits,
            rtol=0, atol=1e-5)
    # Packed sequences: position_ids restart inside the row.
    packed = torch.randint(1, 128, (1, 25), generator=torch.Generator().manual_seed(5))
    position_ids = torch.cat([torch.arange(10), torch.arange(15)])[None]
    with torch.no_grad():
        torch.testing.assert_close(patched(packed, position_ids=position_ids).logits,
                                   reference(packed, position_ids=position_ids).logits,
                                   rtol=0, atol=1e-5)


def test_gradient_checkpointing():
    reference, patched = pair("llama")
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(6))
    grads = []
    for model in (reference, patched):
        model.train()
        model.gradient_checkpointing_enable()
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_dynamic_ntk_follows_transformers_update():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = LlamaConfig(**dict(COMMON, max_position_embeddings=32),
                             rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                              "rope_theta": 10000.0})
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        reference = AutoModelForCausalLM.from_config(config).eval()
    patched = copy.deepcopy(reference)
    posenc_hf.apply_to_model(patched, precision="transformers")
    generator = torch.Generator().manual_seed(7)
    for length in (20, 60, 90, 20):  # below, growing past 32 twice, back below: reset
        ids = torch.randint(0, 128, (1, length), generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(patched(ids).logits, reference(ids).logits,
                                       rtol=0, atol=1e-5)


def test_frequencies_follow_device_moves_and_keep_their_dtype():
    _, patched = pair("phi3", precision="exact")
    rope = patched.model.rotary_emb
    patched.to(torch.bfloat16)
    layer = rope._layers[None]
    assert layer.inv_freq.dtype == torch.float64 and layer.long_inv_freq.dtype == torch.float64
    patched.to("meta")
    assert layer.inv_freq.device.type == "meta" and layer.long_inv_freq.device.type == "meta"


def test_second_call_is_a_no_op_and_unknown_architectures_change_nothing():
    _, patched = pair("mistral")
    assert posenc_hf.apply_to_model(patched) == {"replaced": [], "wrapped": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2,
                                                           vocab_size=64))
    before = [(n, type(m)) for n, m in gpt2.named_modules()]
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        posenc_hf.apply_to_model(gpt2)
    assert [(n, type(m)) for n, m in gpt2.named_modules()] == before
    with pytest.raises(ValueError, match="precision must be"):
        posenc_hf.apply_to_model(build("llama"), precision="fp32")


@pytest.mark.parametrize("model_type, module_name, class_name", [
    ("qwen3", "transformers.models.qwen3.modeling_qwen3", "Qwen3RotaryEmbedding"),
    # Gemma 3's weight initialisation reads its rotary class's attributes.
    ("gemma3_text", "transformers.models.gemma3.modeling_gemma3", "Gemma3RotaryEmbedding"),
])
def test_apply_to_family_builds_patched_models(monkeypatch, model_type, module_name, class_name):
    module = __import__(module_name, fromlist=["x"])
    rotary_class = getattr(module, class_name)
    # Restored after the test: the family patch is process-wide.
    monkeypatch.setattr(rotary_class, "__init__", rotary_class.__init__)
    monkeypatch.setattr(rotary_class, "forward", rotary_class.forward)
    monkeypatch.setattr(rotary_class, "__posenc_family__", None, raising=False)
    monkeypatch.setattr(module, "apply_rotary_pos_emb", module.apply_rotary_pos_emb)
    reference = build(model_type)
    with pytest.raises(ValueError, match="precision must be"):
        posenc_hf.apply_to_family(model_type, precision="fp32")
    assert getattr(rotary_class, "__posenc_family__", None) is None  # nothing changed
    changes = posenc_hf.apply_to_family(model_type, precision="transformers")
    assert changes["replaced"] == [f"{module_name}.{class_name}"]
    assert posenc_hf.apply_to_family(model_type) == {"replaced": [], "wrapped": []}
    patched = build(model_type)
    assert isinstance(patched.model.rotary_emb.posenc, posenc_hf.PosencRotaryEmbedding)
    assert posenc_hf.apply_to_model(patched) == {"replaced": [], "wrapped": []}
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        torch.testing.assert_close(patched(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_compiled_patched_model_has_no_graph_break():
    reference, patched = pair("llama")
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(9))
    compiled = torch.compile(patched, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).logits, reference(ids).logits, rtol=0,
                                   atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(configs()))
def test_bfloat16_logits_within_bfloat16_tolerance(model_type):
    reference, patched = pair(model_type, precision="exact")
    reference, patched = reference.to(torch.bfloat16), patched.to(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 48), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        expected, got = reference(ids).logits.float(), patched(ids).logits.float()
    # transformers rounds cos/sin to bf16 before multiplying, posenc rounds once after the
    # rotation: differences of a few bf16 ulps of the logits.
    torch.testing.assert_close(got, expected, rtol=0, atol=3e-2 * expected.abs().max().item())


def long_generation(model_type, steps, precision, max_positions):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = configs()[model_type]
        config.max_position_embeddings = max_positions
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        reference = AutoModelForCausalLM.from_config(config).eval()
    patched = copy.deepcopy(reference)
    posenc_hf.apply_to_model(patched, precision=precision)
    ids = torch.randint(3, 128, (1, 4), generator=torch.Generator().manual_seed(11))
    runs = [model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                           output_logits=True, return_dict_in_generate=True, pad_token_id=0)
            for model in (reference, patched)]
    expected, got = (torch.stack(run.logits)[:, 0] for run in runs)  # [steps, vocab]
    top2 = expected.topk(2, dim=-1).values
    margins = top2[:, 0] - top2[:, 1]
    differences = (got - expected).abs().max(dim=-1).values
    return runs[0].sequences, runs[1].sequences, margins, differences


@pytest.mark.parametrize("precision, steps", [("exact", 256), ("transformers", 2048)])
def test_long_greedy_generation_gives_the_same_tokens(precision, steps):
    """Every step is tested: the reference's top-2 margin exceeds the logit difference at each
    (asserted), so equal tokens are required, not a numerical tie."""
    expected, got, margins, differences = long_generation("llama", steps, precision, 4096)
    assert expected.shape[1] == 4 + steps
    assert bool((margins > differences).all()), (
        f"tie at step {int((margins <= differences).nonzero()[0])}")
    assert torch.equal(got, expected)
