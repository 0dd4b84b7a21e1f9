"""posenc.integrations.transformers on tiny random T5, mT5 and UMT5 models of the real
transformers package: with every relative position bias made by posenc.attention_bias, the
logits, every parameter gradient and greedy generate() (a cache: decoding offsets) equal the
unpatched model's. Nothing is downloaded."""

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration, UMT5Config,
    UMT5ForConditionalGeneration)

import posenc.integrations.transformers as posenc_hf  # noqa: E402

TINY = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=64,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
MODELS = {"t5": (T5Config, T5ForConditionalGeneration),
          "mt5": (MT5Config, MT5ForConditionalGeneration),
          "umt5": (UMT5Config, UMT5ForConditionalGeneration)}


def build(model_type):
    config_class, model_class = MODELS[model_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = config_class(**TINY)
        config._attn_implementation = "eager"
        torch.manual_seed(0)
        model = model_class(config).eval()
    with torch.no_grad():  # T5 initialises the bias table with zeros-like scales: make it count
        for name, parameter in model.named_parameters():
            if "relative_attention_bias" in name:
                parameter.normal_(0.0, 2.0)
    return model


def test_every_bias_family_is_tested():
    assert set(MODELS) == set(posenc_hf.SUPPORTED_BIAS_MODEL_TYPES)


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_logits_gradients_and_greedy_tokens_match(model_type):
    reference = build(model_type)
    patched = copy.deepcopy(reference)
    changes = posenc_hf.apply_to_model(patched)
    layers = 2 if model_type != "umt5" else 4  # UMT5: a bias in every self-attention layer
    assert len(changes["replaced"]) == layers, changes
    assert posenc_hf.apply_to_model(patched)["replaced"] == []  # a second call changes nothing
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 96, (2, 150), generator=generator)  # past max_distance: far buckets
    labels = torch.randint(2, 96, (2, 40), generator=generator)
    outputs = []
    for model in (reference, patched):
        model.zero_grad()
        logits = model(input_ids=ids, labels=labels).logits
        logits.square().mean().backward()
        outputs.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None}))
    assert torch.equal(outputs[1][0], outputs[0][0])  # the biases are equal bit for bit
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        tokens = [model.generate(input_ids=ids[:, :30], max_new_tokens=12, do_sample=False,
                                 min_new_tokens=12) for model in (reference, patched)]
    assert torch.equal(tokens[0], tokens[1])


def test_apply_to_family_patches_new_models(monkeypatch):
    from transformers.models.t5 import modeling_t5

    monkeypatch.setattr(modeling_t5.T5Attention, "compute_bias",
                        modeling_t5.T5Attention.compute_bias)  # restored after the test
    changes = posenc_hf.apply_to_family("t5")
    assert changes["replaced"] == ["transformers.models.t5.modeling_t5.T5Attention.compute_bias"]
    model = build("t5")
    assert posenc_hf.apply_to_model(model)["replaced"] == []  # already posenc's
    attention = model.encoder.block[0].layer[0].SelfAttention
    bias = attention.compute_bias(5, 9)
    assert bias.shape == (1, 4, 5, 9)
