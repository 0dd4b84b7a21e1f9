import math

import pytest
import torch
from torch.testing._internal.optests import opcheck

import posenc


def to_bshd(x, layout):
    return {"bshd": x, "bhsd": x.transpose(1, 2), "sbhd": x.transpose(0, 1),
            "thd": x.unsqueeze(0)}[layout]


def reference_rotary(x, positions, inv_freq, rotary_dim, interleaved, attention_factor=1.0):
    """float64 RoPE of x: (B, S, H, D) with positions (B, S)."""
    x = x.double()
    angle = positions.double()[..., None] * inv_freq.double()  # (B, S, r/2)
    cos = (torch.cos(angle) * attention_factor)[:, :, None]
    sin = (torch.sin(angle) * attention_factor)[:, :, None]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        y = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)
    else:
        half = rotary_dim // 2
        x1, x2 = rot[..., :half], rot[..., half:]
        y = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    return torch.cat([y, rest], -1)


def default_inv_freq(r, base=10000.0):
    return base ** (-torch.arange(0, r, 2, dtype=torch.float64) / r)


@pytest.mark.parametrize("layout", ["bshd", "bhsd", "sbhd"])
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [None, 4])
def test_layouts_pairings_partial(layout, interleaved, rotary_dim):
    B, S, Hq, Hk, D = 2, 7, 4, 1, 10
    shape = {"bshd": (B, S, None, D), "bhsd": (B, None, S, D), "sbhd": (S, B, None, D)}[layout]
    q = torch.randn(*[Hq if s is None else s for s in shape])
    k = torch.randn(*[Hk if s is None else s for s in shape])
    qo, ko = posenc.rotary(q, k, layout=layout, interleaved=interleaved, rotary_dim=rotary_dim,
                           offset=5)
    r = rotary_dim or D
    positions = (torch.arange(S) + 5).expand(B, S)
    for x, y in [(q, qo), (k, ko)]:
        want = reference_rotary(to_bshd(x, layout), positions, default_inv_freq(r), r, interleaved)
        torch.testing.assert_close(to_bshd(y, layout).double(), want, atol=2e-6, rtol=1e-6)


def test_positions_offsets_strided_and_dtypes():
    B, S, H, D = 3, 6, 2, 8
    qkv = torch.randn(B, S, 3 * H, D + 2)  # a fused buffer with padded head dim
    q = qkv[:, :, :H, :D]
    k = qkv[:, :, H : 2 * H, :D]
    before = qkv.clone()
    positions = torch.randint(0, 1000, (B, S))
    qo, ko = posenc.rotary(q, k, positions=positions)
    torch.testing.assert_close(qo.double(), reference_rotary(q, positions, default_inv_freq(D), D, False),
                               atol=2e-6, rtol=1e-6)
    assert torch.equal(qkv, before)
    offsets = torch.tensor([0, 10, 200])
    qo = posenc.rotary(q, offset=offsets)
    want = reference_rotary(q, offsets[:, None] + torch.arange(S), default_inv_freq(D), D, False)
    torch.testing.assert_close(qo.double(), want, atol=2e-6, rtol=1e-6)
    per_step = torch.tensor([9, 3, 0, 1, 8, 2], dtype=torch.int32)
    for dtype, tol in [(torch.float64, 1e-12), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)]:
        x = q.to(dtype)
        out = posenc.rotary(x, positions=per_step)
        assert out.dtype == dtype
        want = reference_rotary(x, per_step.long().expand(B, S), default_inv_freq(D), D, False)
        torch.testing.assert_close(out.double(), want, atol=tol * 4, rtol=tol)


def test_variable_length_thd():
    lengths = [3, 5, 2]
    cu = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
    q = torch.randn(10, 4, 8)
    k = torch.randn(10, 2, 8)
    qo, ko = posenc.rotary(q, k, layout="thd", cu_seqlens=cu)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    torch.testing.assert_close(qo.double(), reference_rotary(q[None], positions, default_inv_freq(8), 8, False)[0],
                               atol=2e-6, rtol=1e-6)
    offsets = torch.tensor([100, 0, 7])
    ko = posenc.rotary(k, layout="thd", cu_seqlens=cu, offset=offsets)
    positions = torch.cat([torch.arange(n) + o for n, o in zip(lengths, offsets.tolist())])[None]
    torch.testing.assert_close(ko.double(), reference_rotary(k[None], positions, default_inv_freq(8), 8, False)[0],
                               atol=2e-6, rtol=1e-6)


def test_precision_near_2_pow_24():
    positions = torch.arange(2**24 - 256, 2**24)
    inv_freq = torch.tensor([1.0, 0.0123])  # float32 frequencies, used exactly as given
    x = torch.ones(1, 256, 1, 4)
    out = posenc.rotary(x, positions=positions, inv_freq=inv_freq)
    angle = positions.double()[:, None] * inv_freq.double()
    want = torch.cos(angle) - torch.sin(angle)
    assert (out[0, :, 0, :2].double() - want).abs().max() < 4e-6
    # float32 angle math (pos * inv_freq rounded to float32) drifts far at these positions.
    naive_angle = positions.float()[:, None] * inv_freq
    naive = torch.cos(naive_angle) - torch.sin(naive_angle)
    assert (naive.double() - want).abs().max() > 1e-2


def test_gradcheck_and_double_backward():
    q = torch.randn(2, 3, 2, 6, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 1, 6, dtype=torch.float64, requires_grad=True)
    op = torch.ops.posenc.rotary
    for interleaved in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k: op(q, k, None, None, None, None, rotary_dim=4, interleaved=interleaved,
                            offset=3, attention_factor=1.3), (q, k))
    assert torch.autograd.gradgradcheck(lambda q: op(q, None, None, None, None, None)[0], (q,))


def hf_rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def hf_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return q * cos + hf_rotate_half(q) * sin, k * cos + hf_rotate_half(k) * sin


def hf_cos_sin(inv_freq, position_ids, attention_scaling=1.0):
    freqs = (inv_freq[None, :, None].float() @ position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention_scaling, emb.sin() * attention_scaling


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_apply_rotary_pos_emb_parity_and_grad(unsqueeze_dim):
    B, H, S, D = 2, 4, 9, 16
    shape = (B, H, S, D) if unsqueeze_dim == 1 else (B, S, H, D)
    q = torch.randn(shape, requires_grad=True)
    k = torch.randn(shape[:1] + ((1,) + shape[2:] if unsqueeze_dim == 1 else shape[1:2] + (1, D)),
                    requires_grad=True)
    cos, sin = hf_cos_sin(default_inv_freq(D).float(), torch.arange(S).expand(B, S), 1.2)
    got = posenc.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    want = hf_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    upstream = [torch.randn_like(w) for w in want]
    g1 = torch.autograd.grad(got, (q, k), upstream)
    g2 = torch.autograd.grad(want, (q, k), upstream)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


# ---- rope_frequencies against the transformers formulas, written here --------------------------
# precision="transformers" must equal the formulas in float32 bit for bit; precision="exact"
# must equal the same formulas in float64 (to rounding).

def check_frequencies(want, dim, **kwargs):
    """want(dtype) -> the formula's inv_freq in dtype; returns the attention factors."""
    hf, hf_factor = posenc.rope_frequencies(dim, precision="transformers", **kwargs)
    assert hf.dtype == torch.float32
    torch.testing.assert_close(hf, want(torch.float32), rtol=0, atol=0)
    exact, exact_factor = posenc.rope_frequencies(dim, **kwargs)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact, want(torch.float64), rtol=1e-14, atol=0)
    assert hf_factor == exact_factor
    return exact_factor


def hf_default(dim, base, dtype=torch.float32):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype) / dim))


def test_rope_frequencies_default_linear_dynamic():
    dim, base = 64, 10000.0
    assert check_frequencies(lambda t: hf_default(dim, base, t), dim, base=base) == 1.0
    check_frequencies(lambda t: hf_default(dim, base, t) / 4.0, dim, base=base,
                      scaling={"rope_type": "linear", "factor": 4.0})
    seq_len, max_pos, factor = 5000, 2048, 2.0
    new_base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    check_frequencies(lambda t: hf_default(dim, new_base, t), dim, base=base,
                      scaling={"type": "dynamic", "factor": factor},
                      max_position_embeddings=max_pos, seq_len=seq_len)
    # The exact default is the rotary kernel's own: the module and the function agree.
    exact, _ = posenc.rope_frequencies(dim, base=base)
    torch.testing.assert_close(exact, base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim),
                               rtol=2e-16, atol=0)


def test_rope_frequencies_yarn():
    dim, base, factor, original = 64, 10000.0, 4.0, 4096
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}

    def corr(rot):
        return (dim * math.log(original / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), dim - 1)

    def want(dtype):
        ramp = ((torch.arange(dim // 2, dtype=dtype) - low) / (high - low)).clamp(0, 1)
        pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype) / dim)
        extra = 1 - ramp
        return (1.0 / (factor * pos_freqs)) * (1 - extra) + (1.0 / pos_freqs) * extra

    a = check_frequencies(want, dim, base=base, scaling=scaling, max_position_embeddings=16384)
    assert a == pytest.approx(0.1 * math.log(factor) + 1.0)
    _, a2 = posenc.rope_frequencies(dim, base=base, max_position_embeddings=16384,
                                    scaling=dict(scaling, mscale=0.707, mscale_all_dim=0.707))
    assert a2 == pytest.approx(1.0)


def test_rope_frequencies_longrope_and_llama3():
    dim, base = 8, 10000.0
    short, long = [1.0, 1.5, 2.0, 3.0], [2.0, 4.0, 8.0, 16.0]
    scaling = {"rope_type": "longrope", "short_factor": short, "long_factor": long,
               "original_max_position_embeddings": 4096}

    def longrope(factors):
        return lambda t: 1.0 / (torch.tensor(factors, dtype=t) *
                                base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(t) / dim))

    a = check_frequencies(longrope(short), dim, base=base, scaling=scaling,
                          max_position_embeddings=131072)
    assert a == pytest.approx(math.sqrt(1 + math.log(131072 / 4096) / math.log(4096)))
    check_frequencies(longrope(long), dim, base=base, scaling=scaling,
                      max_position_embeddings=131072, seq_len=5000)

    dim, base = 128, 500000.0
    s = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 8192}

    def llama3(dtype):
        inv_freq = hf_default(dim, base, dtype)
        low_wavelen, high_wavelen = 8192 / 1.0, 8192 / 4.0
        wavelen = 2 * math.pi / inv_freq
        llama = torch.where(wavelen > low_wavelen, inv_freq / 8.0, inv_freq)
        smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
        smoothed = (1 - smooth) * llama / 8.0 + smooth * llama
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, llama)

    check_frequencies(llama3, dim, base=base, scaling=s)


def test_rope_frequencies_warns_on_unknown_keys():
    with pytest.warns(UserWarning, match="unrecognized keys.*'factr'"):
        inv, _ = posenc.rope_frequencies(8, scaling={"rope_type": "linear", "factor": 2.0,
                                                     "factr": 4.0})
    torch.testing.assert_close(inv, posenc.rope_frequencies(8)[0] / 2.0, rtol=1e-15, atol=0)


def test_rotary_with_scaling_uses_frequencies_and_factor():
    q = torch.randn(1, 5, 2, 16)
    s = {"rope_type": "yarn", "factor": 2.0}
    inv, a = posenc.rope_frequencies(16, scaling=s, max_position_embeddings=64)
    got = posenc.rotary(q, scaling=s, max_position_embeddings=64)
    want = reference_rotary(q, torch.arange(5)[None], inv.double(), 16, False, a)
    torch.testing.assert_close(got.double(), want, atol=3e-6, rtol=1e-6)


def test_module_and_compile():
    torch._dynamo.reset()
    m = posenc.nn.RotaryEmbedding(8, base=500.0)
    q = torch.randn(2, 6, 3, 8, requires_grad=True)
    k = torch.randn(2, 6, 1, 8)
    eager = m(q, k, offset=2)
    compiled = torch.compile(lambda q, k: m(q, k, offset=2), fullgraph=True)(q, k)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)
    compiled[0].sum().backward()
    assert q.grad is not None and q.grad.shape == q.shape


def _samples():
    yield (torch.randn(2, 4, 3, 8, requires_grad=True), torch.randn(2, 4, 1, 8, requires_grad=True),
           None, None, None, None), {}
    yield (torch.randn(2, 3, 4, 8, dtype=torch.float64, requires_grad=True), None,
           torch.randint(0, 50, (2, 4)), None, None, None), dict(layout="bhsd", interleaved=True,
                                                                 rotary_dim=4)
    yield (torch.randn(7, 2, 6), torch.randn(7, 1, 6), None, torch.tensor([3, 0]), torch.rand(3),
           torch.tensor([0, 4, 7])), dict(layout="thd", attention_factor=0.5, inverse=True)
    # M-RoPE: (3, B, S) rows, contiguous (with negative coordinates) and interleaved sections.
    yield (torch.randn(2, 5, 3, 12, requires_grad=True), torch.randn(2, 5, 1, 12),
           torch.randint(-9, 99, (3, 1, 5)), None, None, None), dict(mrope_section=[2, 2, 2])
    yield (torch.randn(2, 3, 5, 16, dtype=torch.float64, requires_grad=True), None,
           torch.randint(-40, 40, (3, 2, 5)), None, None, None), dict(
               layout="bhsd", mrope_section=[2, 1, 1], mrope_interleaved=True, interleaved=True,
               rotary_dim=8)


@pytest.mark.parametrize("sample", list(_samples()), ids=lambda s: str(s[1]))
def test_opcheck_rotary(sample):
    args, kwargs = sample
    opcheck(torch.ops.posenc.rotary.default, args, kwargs)


def test_opcheck_rotary_tables():
    cos, sin = hf_cos_sin(default_inv_freq(8).float(), torch.arange(5)[None])
    opcheck(torch.ops.posenc.rotary_tables.default,
            (torch.randn(1, 2, 5, 8, requires_grad=True), torch.randn(1, 1, 5, 8), cos, sin), {})


@pytest.mark.parametrize("mrope_interleaved", [False, True])
def test_mrope_gradcheck(mrope_interleaved):
    q = torch.randn(2, 5, 3, 12, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 1, 12, dtype=torch.float64, requires_grad=True)
    positions = torch.randint(-50, 50, (3, 2, 5))

    def f(q, k):
        return posenc.rotary(q, k, positions=positions, mrope_section=[2, 2, 1], rotary_dim=10,
                             mrope_interleaved=mrope_interleaved)

    assert torch.autograd.gradcheck(f, (q, k))
    assert torch.autograd.gradgradcheck(f, (q, k))


def test_token_tiles_and_repeated_positions():
    """The CPU kernel rotates 32 tokens at a time (head-major where heads are the outer
    stride) and reuses a row for consecutive tokens at the same positions: across tile
    boundaries, in every layout, the result is the reference's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: one chunk of tokens, many tiles
    try:
        inv_freq = default_inv_freq(8)
        # Decoding 70 sequences one step each: 70 consecutive tokens at position 5.
        q = torch.randn(70, 1, 2, 8, dtype=torch.float64)
        got = posenc.rotary(q, offset=5)
        want = reference_rotary(q, torch.full((70, 1), 5), inv_freq, 8, False)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        # Runs of repeated positions that straddle tiles, in bshd and bhsd.
        positions = torch.arange(100).div(7, rounding_mode="floor").expand(2, 100)
        x = torch.randn(2, 100, 3, 8, dtype=torch.float64)
        want = reference_rotary(x, positions, inv_freq, 8, True)
        got = posenc.rotary(x, positions=positions, interleaved=True)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        got = posenc.rotary(x.transpose(1, 2).contiguous(), positions=positions,
                            interleaved=True, layout="bhsd")
        torch.testing.assert_close(got.transpose(1, 2), want, atol=1e-12, rtol=0)
    finally:
        torch.set_num_threads(threads)
