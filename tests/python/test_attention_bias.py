"""attention_bias (ALiBi, T5 relative buckets) and alibi_slopes against float64 references
written from the published code and against the real transformers package (T5, BLOOM)."""

import math

import pytest
import torch
from torch.testing._internal.optests import opcheck

import posenc

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def fairseq_alibi_slopes(n: int) -> list:
    """ALiBi's reference get_slopes (Press et al., fairseq's multihead attention), in float64."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + fairseq_alibi_slopes(2 * closest)[0::2][: n - closest]


def reference_alibi(slopes: torch.Tensor, Tq: int, Tk: int, offset: int, causal: bool):
    r = torch.arange(Tk)[None, :] - (offset + torch.arange(Tq))[:, None]
    bias = -slopes.double()[:, None, None] * r.abs().double()
    if causal:
        bias = bias.masked_fill(r > 0, float("-inf"))
    return bias[None]


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 8, 12, 16, 20, 32, 40, 64, 71])
def test_alibi_slopes_are_the_reference_and_bloom(heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    got = posenc.alibi_slopes(heads)
    assert got.dtype == torch.float32 and got.shape == (heads,)
    torch.testing.assert_close(got.double(), torch.tensor(fairseq_alibi_slopes(heads),
                                                          dtype=torch.float64),
                               atol=0, rtol=2 ** -24)
    # BLOOM's alibi is slope * key position: its value at key 1 is the slope. BLOOM raises
    # to the power in float32 (a few ulp off); posenc's slopes are the exact values rounded.
    bloom = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)  # [heads, 1, 2]
    # Its error grows with the power (the rounded base raised to up to `heads`).
    torch.testing.assert_close(got, bloom[:, 0, 1], atol=0, rtol=heads * 2 ** -23)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Tq,Tk,offset", [(7, 7, 0), (1, 40, 39), (5, 300, 295), (9, 4, 0)])
def test_alibi_matches_the_definition(device, dtype, causal, Tq, Tk, offset):
    slopes = posenc.alibi_slopes(12, device=device)
    got = posenc.attention_bias(slopes, Tq, Tk, kind="alibi", causal=causal, offset=offset,
                                dtype=dtype)
    assert got.shape == (1, 12, Tq, Tk) and got.dtype == dtype and got.device.type == device
    want = reference_alibi(slopes.cpu(), Tq, Tk, offset, causal)
    tolerance = {torch.bfloat16: 2 ** -8, torch.float32: 2e-7, torch.float64: 1e-15}[dtype]
    torch.testing.assert_close(got.cpu().double(), want, atol=0, rtol=tolerance)


def test_causal_alibi_in_sdpa_is_bloom_attention():
    # BLOOM adds slope * key_position and a causal mask; softmax does not see the per-row shift,
    # so attention with posenc's causal bias is BLOOM's.
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    torch.manual_seed(0)
    B, H, T, d = 2, 8, 33, 16
    q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(3))
    alibi = build_alibi_tensor(torch.ones(B, T), H, torch.float64).view(B, H, 1, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d) + alibi
    want = torch.softmax(scores.masked_fill(future, float("-inf")), -1) @ v
    bias = posenc.attention_bias(posenc.alibi_slopes(H).double(), T, T, kind="alibi",
                                 causal=True)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (320, 800), (64, 256), (8, 20),
                                                      (33, 50)])
def test_t5_buckets_are_transformers(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    r = torch.arange(-6000, 6001)
    want = T5Attention._relative_position_bucket(r, bidirectional=bidirectional,
                                                 num_buckets=num_buckets,
                                                 max_distance=max_distance)
    ids = torch.arange(num_buckets, dtype=torch.float64)[:, None]  # the bias is the bucket
    got = posenc.attention_bias(ids, 1, r.numel(), kind="t5", offset=6000,
                                bidirectional=bidirectional, num_buckets=num_buckets,
                                max_distance=max_distance)
    assert torch.equal(got[0, 0, 0].long(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("is_decoder", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_t5_compute_bias_drop_in(device, is_decoder, dtype):
    # transformers' T5Attention.compute_bias, values and table gradient, with a cache offset.
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    torch.manual_seed(1)
    config = T5Config(d_model=64, d_kv=16, num_heads=6, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, is_decoder=is_decoder)
    attention = T5Attention(config, has_relative_attention_bias=True).to(device, dtype)
    weight = attention.relative_attention_bias.weight  # [32, 6]
    for Tq, Tk, past in [(50, 50, 0), (1, 300, 299), (7, 200, 193)]:
        want = attention.compute_bias(Tq, Tk, past_seen_tokens=past)
        got = posenc.attention_bias(weight, Tq, Tk, kind="t5", offset=past,
                                    bidirectional=not is_decoder)
        assert got.dtype == dtype
        assert torch.equal(got, want)
        # The table gradient against float64 (transformers' bfloat16 embedding backward sums
        # in bfloat16; posenc sums in float and rounds once).
        grad = torch.randn_like(want)
        weight64 = weight.detach().double().requires_grad_()
        r = torch.arange(Tk, device=device)[None] - (past + torch.arange(Tq, device=device))[:, None]
        buckets = T5Attention._relative_position_bucket(r, bidirectional=not is_decoder)
        want64 = weight64[buckets].permute(2, 0, 1)[None]  # compute_bias' gather, in float64
        (g_want,) = torch.autograd.grad(want64, weight64, grad.double())
        (g_got,) = torch.autograd.grad(got, weight, grad)
        tolerance = 1e-6 if dtype == torch.float32 else 2 ** -8
        torch.testing.assert_close(g_got.double(), g_want, atol=1e-5 * Tq, rtol=tolerance)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window,heads", [((7, 7), 3), ((4, 6), 5), ((1, 3), 2), ((12, 12), 4)])
def test_swin_window_bias_is_transformers(device, window, heads):
    # transformers' SwinRelativePositionBias: values equal, table gradient against float64.
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias

    torch.manual_seed(6)
    module = SwinRelativePositionBias(heads, window).to(device)
    torch.nn.init.normal_(module.relative_position_bias_table)
    table = module.relative_position_bias_table
    N = window[0] * window[1]
    want = module()
    got = posenc.attention_bias(table, N, N, kind="swin", window=window)
    assert torch.equal(got, want)
    grad = torch.randn_like(want)
    table64 = table.detach().double().requires_grad_()
    want64 = table64[module.relative_position_index].view(N, N, -1).permute(2, 0, 1)[None]
    (g_want,) = torch.autograd.grad(want64, table64, grad.double())
    (g_got,) = torch.autograd.grad(got, table, grad)
    torch.testing.assert_close(g_got.double(), g_want, atol=1e-5, rtol=1e-6)


def test_weight_gradients_are_deterministic_and_exact():
    torch.manual_seed(2)
    table = torch.randn(32, 4, dtype=torch.float64, requires_grad=True)
    slopes = posenc.alibi_slopes(4).double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: posenc.attention_bias(t, 6, 11, kind="t5", offset=5), (table,))
    swin = torch.randn(5 * 7, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: posenc.attention_bias(t, 12, 12, kind="swin", window=(3, 4)), (swin,))
    assert torch.autograd.gradcheck(
        lambda s: posenc.attention_bias(s, 6, 11, kind="alibi", offset=3, causal=True)
        .masked_fill(torch.ones(6, 11, dtype=torch.bool).triu(4), 0.0), (slopes,))
    # float32 sums in a fixed order: the same bits from run to run and for any thread count.
    t32 = table.detach().float().requires_grad_()
    grad = torch.randn(1, 4, 300, 500)

    def gradient(threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            (g,) = torch.autograd.grad(posenc.attention_bias(t32, 300, 500, kind="t5"), t32, grad)
        finally:
            torch.set_num_threads(previous)
        return g

    first = gradient(1)
    assert torch.equal(first, gradient(2)) and torch.equal(first, gradient(1))


def test_opcheck_and_compile():
    table = torch.randn(32, 3, requires_grad=True)
    slopes = posenc.alibi_slopes(3).requires_grad_()
    opcheck(torch.ops.posenc.attention_bias.default, (table, 5, 9), dict(kind="t5", offset=4))
    opcheck(torch.ops.posenc.attention_bias.default, (slopes, 5, 9),
            dict(kind="alibi", causal=True, dtype=torch.float64))
    opcheck(torch.ops.posenc.attention_bias_backward.default,
            (torch.randn(1, 3, 5, 9), table.detach(), 5, 9), dict(kind="t5"))
    torch._dynamo.reset()

    def f(q, k, v, table):
        bias = posenc.attention_bias(table, q.shape[-2], k.shape[-2], kind="t5")
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, table), f(q, k, v, table))


BAD = [
    (lambda: posenc.attention_bias(torch.randn(4), 2, 3, kind="alibis"), ValueError,
     "kind must be 'alibi', 't5' or 'swin'"),
    (lambda: posenc.attention_bias(torch.randn(35, 2), 12, 12, kind="swin"), ValueError,
     r"kind='swin' needs window=\(Wh, Ww\)"),
    (lambda: posenc.attention_bias(torch.randn(4), 2, 3, kind="alibi", window=(2, 2)),
     ValueError, "window applies to kind='swin' only"),
    (lambda: posenc.attention_bias(torch.randn(35, 2), 12, 12, kind="swin", window=(3, 0)),
     ValueError, r"window must be two sizes \(Wh, Ww\)"),
    (lambda: posenc.attention_bias(torch.randn(36, 2), 12, 12, kind="swin", window=(3, 4)),
     ValueError, r"weight must have shape \(\(2 Wh - 1\) \(2 Ww - 1\), H\) = \(35, H\)"),
    (lambda: posenc.attention_bias(torch.randn(35, 2), 12, 11, kind="swin", window=(3, 4)),
     ValueError, "must be the window's Wh \\* Ww = 12 tokens"),
    (lambda: posenc.attention_bias(torch.randn(35, 2), 12, 12, kind="swin", window=(3, 4),
                                   offset=1), ValueError, "kind='swin' takes no causal"),
    (lambda: posenc.flex.score_mod(torch.randn(35, 2), 12, 12, kind="swin"), ValueError,
     "a 'swin' bias goes to SDPA"),
    (lambda: posenc.attention_bias(torch.randn(4, 2), 2, 3, kind="alibi"), ValueError,
     r"weight must have shape \(H,\)"),
    (lambda: posenc.attention_bias(torch.randn(31, 2), 2, 3, kind="t5"), ValueError,
     r"weight must have shape \(num_buckets, H\) = \(32, H\)"),
    (lambda: posenc.attention_bias(torch.randn(32, 2), 2, 3, kind="t5", causal=True), ValueError,
     "causal applies to kind='alibi'"),
    (lambda: posenc.attention_bias(torch.randn(4), -1, 3, kind="alibi"), ValueError,
     "query_length must be >= 0"),
    (lambda: posenc.attention_bias(torch.randn(4), 2, -3, kind="alibi"), ValueError,
     "key_length must be >= 0"),
    (lambda: posenc.attention_bias(torch.randn(4), 2, 3, kind="alibi", offset=-1), ValueError,
     "offset must be in"),
    (lambda: posenc.attention_bias(torch.randn(3, 2), 2, 3, kind="t5", num_buckets=3), ValueError,
     "num_buckets must give 2 to"),
    (lambda: posenc.attention_bias(torch.randn(32, 2), 2, 3, kind="t5", max_distance=8),
     ValueError, "max_distance must be >"),
    (lambda: posenc.attention_bias(torch.ones(4, dtype=torch.long), 2, 3, kind="alibi"),
     TypeError, "weight must be a floating"),
    (lambda: posenc.attention_bias(torch.randn(4), 2, 3, kind="alibi", dtype=torch.int32),
     TypeError, "dtype must be"),
    (lambda: posenc.attention_bias([0.5], 2, 3, kind="alibi"), TypeError,
     "weight must be a Tensor"),
    (lambda: torch.ops.posenc.attention_bias_backward(torch.randn(1, 2, 3, 4), torch.randn(2), 2,
                                                      3, kind="alibi"), ValueError,
     r"grad must have the bias' shape \[1, 2, 2, 3\]"),
    (lambda: posenc.alibi_slopes(0), ValueError, r"num_heads must be in \[1, 2\^20\]"),
    (lambda: posenc.attention_bias(torch.randn(4), 2**31, 2**31, kind="alibi"), ValueError,
     "query_length x key_length = 2147483648 x 2147483648 is too large"),
    (lambda: posenc.attention_bias(torch.randn(4), 2**20, 2**20, kind="alibi"), ValueError,
     r"an output of shape \[1, 4, 1048576, 1048576\] needs 17592186044416 bytes"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[b[2] for b in BAD])
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- FlexAttention --------------------------------------------------------------------------

@pytest.mark.parametrize("kind,causal,offset", [("t5", False, 0), ("t5", False, 40),
                                                ("alibi", True, 0), ("alibi", False, 7)])
def test_flex_attention_score_mod_equals_the_bias_in_sdpa(kind, causal, offset):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch.manual_seed(5)
    B, H, Tq, Tk, d = 2, 4, 64, 64 + offset, 16
    q = torch.randn(B, H, Tq, d)
    k, v = torch.randn(B, H, Tk, d), torch.randn(B, H, Tk, d)
    weight = torch.randn(32, H) if kind == "t5" else posenc.alibi_slopes(H)
    options = dict(kind=kind, offset=offset, causal=causal)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=posenc.attention_bias(weight, Tq, Tk, **options))
    block_mask = None
    if causal:
        block_mask = create_block_mask(posenc.flex.causal_mask_mod(offset), None, None, Tq, Tk,
                                       device="cpu")
    score_mod = posenc.flex.score_mod(weight, Tq, Tk, **options)
    torch.testing.assert_close(flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask),
                               want, atol=2e-5, rtol=2e-5)
    # Compiled whole-graph (dynamo and AOTAutograd trace the score_mod and its captured bias).
    # Not through Inductor's CPU FlexAttention template: in torch 2.14.1 it returned NaN rows on
    # one CI machine and differed from SDPA by up to 0.38 on another for Tq != Tk, whatever the
    # score_mod.
    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, score_mod=score_mod, block_mask=block_mask),
                               want, atol=2e-5, rtol=2e-5)


# ---- modules --------------------------------------------------------------------------------

def test_modules_load_transformers_checkpoints_and_match():
    from transformers import T5Config
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias
    from transformers.models.t5.modeling_t5 import T5Attention

    torch.manual_seed(7)
    config = T5Config(d_model=64, d_kv=16, num_heads=4, is_decoder=True)
    layer = T5Attention(config, has_relative_attention_bias=True)
    t5 = posenc.nn.T5RelativePositionBias(4, bidirectional=False)
    t5.load_state_dict({"weight": layer.relative_attention_bias.weight.detach()})
    assert torch.equal(t5(3, 40, offset=37), layer.compute_bias(3, 40, past_seen_tokens=37))
    t5(3, 40).sum().backward()
    assert t5.weight.grad is not None and t5.weight.grad.abs().sum() > 0

    reference = SwinRelativePositionBias(3, (7, 7))
    torch.nn.init.normal_(reference.relative_position_bias_table)
    swin = posenc.nn.SwinRelativePositionBias(3, 7)
    swin.load_state_dict(reference.state_dict())
    assert torch.equal(swin(), reference())

    alibi = posenc.nn.ALiBi(8, causal=True)
    assert torch.equal(alibi(5, 9, offset=4), posenc.attention_bias(
        posenc.alibi_slopes(8), 5, 9, kind="alibi", causal=True, offset=4))
    assert "slopes" in dict(alibi.named_buffers())
    learnable = posenc.nn.ALiBi(8, learnable=True)
    learnable(4, 4).sum().backward()
    assert learnable.slopes.grad is not None


@pytest.mark.parametrize("make,exc,match", [
    (lambda: posenc.nn.ALiBi(0), ValueError, r"posenc.nn.ALiBi: num_heads must be >= 1, got 0"),
    (lambda: posenc.nn.ALiBi(4, causal=1), TypeError, "causal must be a bool"),
    (lambda: posenc.nn.T5RelativePositionBias(4, num_buckets=2.0), TypeError,
     "num_buckets must be an int"),
    (lambda: posenc.nn.T5RelativePositionBias(4, max_distance=4), ValueError,
     "max_distance must be >"),
    (lambda: posenc.nn.SwinRelativePositionBias(4, (7, 7, 7)), ValueError,
     r"window_size must be an int or \(Wh, Ww\)"),
    (lambda: posenc.nn.SwinRelativePositionBias(4, 0), ValueError, "window_size must be >= 1"),
])
def test_modules_reject_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_wavlm_compute_bias_is_t5_kind():
    # WavLM adds max_exact before truncating (T5 after); its buckets are T5's for its config
    # (320 buckets, max distance 800), here on +-20000 positions, and compute_bias is equal.
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    torch.manual_seed(9)
    layer = WavLMAttention(embed_dim=64, num_heads=4, num_buckets=320, max_distance=800)
    r = torch.arange(-20000, 20001)
    ids = torch.arange(320, dtype=torch.float64)[:, None]
    buckets = posenc.attention_bias(ids, 1, r.numel(), kind="t5", offset=20000, num_buckets=320,
                                    max_distance=800)[0, 0, 0].long()
    assert torch.equal(buckets, layer._relative_positions_bucket(r))
    for length in (50, 1500):
        got = posenc.attention_bias(layer.rel_attn_embed.weight, length, length, kind="t5",
                                    num_buckets=320, max_distance=800)
        assert torch.equal(got[0], layer.compute_bias(length, length))
