"""Property tests: random shapes (0- and 1-sized dimensions included), strides, dtypes, options
and positions for every operator, each compared with a float64 reference."""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import posenc
from references import reference_code
from test_rotary import reference_rotary

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL = {torch.float32: 3e-6, torch.float64: 1e-12, torch.bfloat16: 3e-2, torch.float16: 4e-3}
KINDS = ["sinusoidal", "linear", "damped", "cosine", "learned"]


def strided(draw, shape, dtype, seed):
    """A tensor of `shape` with the dtype, either contiguous, a transpose view or a slice."""
    gen = torch.Generator().manual_seed(seed)
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=gen).to(dtype)
        return base.transpose(-1, -2)
    if layout == "sliced":
        base = torch.randn(*shape[:-1], shape[-1] + 3, generator=gen).to(dtype)
        return base[..., 1 : 1 + shape[-1]]
    return torch.randn(*shape, generator=gen).to(dtype)


def strided_qk(draw, bshd_shape, dtype, seed, layout):
    """A q or k of `bshd_shape` ([B, S, H, D]) laid out as `layout` ("bshd", "bhsd" or
    "sbhd"), built by `strided`."""
    t = strided(draw, bshd_shape, dtype, seed)
    return {"bshd": t, "bhsd": t.transpose(1, 2), "sbhd": t.transpose(0, 1)}[layout]


def assert_close(got, want, dtype, scale=1.0, largest_angle=0.0):
    """`scale`: size of the combined values; `largest_angle`: the largest pos * w in radians,
    whose float64 rounding (about angle * 2^-53) bounds even the reference's own error."""
    tol = TOL[dtype] * max(1.0, scale)
    torch.testing.assert_close(got.double(), want, atol=tol * 4 + largest_angle * 1e-15, rtol=tol)


def largest(positions):
    return float(positions.max()) if positions.numel() else 0.0


@st.composite
def add_positional_cases(draw):
    batch = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    T, D = draw(st.integers(0, 6)), draw(st.integers(0, 9))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    x = strided(draw, (*batch, T, D), dtype, seed)
    kind = draw(st.sampled_from(KINDS))
    options = dict(kind=kind, combine=draw(st.sampled_from(["add", "mul"])),
                   scale=draw(st.floats(-2, 2)), base=draw(st.sampled_from([10.0, 100.0, 10000.0])),
                   convention=draw(st.sampled_from(["vaswani", "tensor2tensor"])),
                   layout=draw(st.sampled_from(["interleaved", "concat"])))
    rows = 40
    if draw(st.booleans()):
        options["positions"] = torch.randint(0, rows if kind == "learned" else 10**6,
                                             (*batch, T) if draw(st.booleans()) else (T,),
                                             generator=torch.Generator().manual_seed(seed))
    else:
        options["offset"] = draw(st.integers(0, rows - T if kind == "learned" else 10**7))
    if kind == "learned":
        options["table"] = torch.randn(rows, D, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    return x, options


@SETTINGS
@given(add_positional_cases())
def test_add_positional_property(case):
    x, options = case
    y = posenc.add_positional(x, **options)
    assert y.shape == x.shape and y.dtype == x.dtype
    T, D = x.shape[-2], x.shape[-1]
    positions = options.get("positions")
    if positions is None:
        positions = torch.arange(T) + options.get("offset", 0)
    positions = positions.expand(x.shape[:-1])
    if options["kind"] == "learned":
        pe = options["table"].double()[positions]
    else:
        pe = reference_code(positions, D, options["kind"], options["base"], options["convention"],
                            options["layout"])
    sx = options["scale"] * x.double()
    want = sx + pe if options["combine"] == "add" else sx * pe
    assert_close(y, want, x.dtype, scale=float(sx.abs().max()) if sx.numel() else 1.0,
                 largest_angle=largest(positions) * (1 + abs(options["scale"])))


@st.composite
def embedding_cases(draw):
    batch = draw(st.lists(st.integers(0, 3), min_size=0, max_size=2))
    T, V, D = draw(st.integers(0, 6)), draw(st.integers(1, 12)), draw(st.integers(0, 8))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (*batch, T), generator=gen, dtype=draw(st.sampled_from([torch.int64, torch.int32])))
    weight = strided(draw, (V, D), dtype, seed)
    options = dict(kind=draw(st.sampled_from(KINDS[:4])), combine=draw(st.sampled_from(["add", "mul"])),
                   scale=draw(st.one_of(st.none(), st.floats(-2, 2))),
                   padding_idx=draw(st.one_of(st.none(), st.integers(0, V - 1))),
                   offset=draw(st.integers(0, 10**6)))
    return ids, weight, options


@SETTINGS
@given(embedding_cases())
def test_embedding_property(case):
    ids, weight, options = case
    y = posenc.embedding(ids, weight, **options)
    D = weight.shape[1]
    assert y.shape == (*ids.shape, D)
    scale = math.sqrt(D) if options["scale"] is None else options["scale"]
    x = scale * weight.double()[ids.long()]
    positions = (torch.arange(ids.shape[-1]) + options["offset"]).expand(ids.shape)
    pe = reference_code(positions, D, options["kind"])
    want = x + pe if options["combine"] == "add" else x * pe
    if options["padding_idx"] is not None:
        want = torch.where((ids == options["padding_idx"])[..., None], x, want)
    assert_close(y, want, weight.dtype, scale=float(x.abs().max()) if x.numel() else 1.0,
                 largest_angle=largest(positions) * (1 + abs(scale)))


@st.composite
def rotary_cases(draw):
    B, S = draw(st.integers(0, 3)), draw(st.integers(0, 6))
    Hq, Hk = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    D = 2 * draw(st.integers(1, 5))
    r = 2 * draw(st.integers(0, D // 2))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    layout = draw(st.sampled_from(["bshd", "bhsd", "sbhd"]))

    def make(heads, offset):
        return strided_qk(draw, (B, S, heads, D), dtype, seed + offset, layout)

    q, k = make(Hq, 0), make(Hk, 1)
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 10**6, (B, S), generator=gen) if draw(st.booleans()) else None
    return q, k, layout, dict(rotary_dim=r, interleaved=draw(st.booleans()), positions=positions,
                              base=draw(st.sampled_from([100.0, 10000.0])),
                              offset=0 if positions is not None else draw(st.integers(0, 10**6)))


@SETTINGS
@given(rotary_cases())
def test_rotary_property(case):
    q, k, layout, options = case
    qo, ko = posenc.rotary(q, k, layout=layout, **options)
    view = {"bshd": lambda t: t, "bhsd": lambda t: t.transpose(1, 2), "sbhd": lambda t: t.transpose(0, 1)}[layout]
    B, S = view(q).shape[:2]
    positions = options["positions"]
    if positions is None:
        positions = (torch.arange(S) + options["offset"]).expand(B, S)
    r = options["rotary_dim"]
    inv_freq = options["base"] ** (-torch.arange(0, r, 2, dtype=torch.float64) / max(r, 1))
    for x, y in [(q, qo), (k, ko)]:
        assert y.shape == x.shape
        want = reference_rotary(view(x), positions, inv_freq, r, options["interleaved"])
        magnitude = float(view(x).double().abs().max()) if x.numel() else 1.0
        assert_close(view(y), want, x.dtype, scale=magnitude,
                     largest_angle=largest(positions) * max(magnitude, 1.0))


@SETTINGS
@given(st.lists(st.integers(0, 4), min_size=0, max_size=3), st.integers(0, 9),
       st.sampled_from(KINDS[:4]), st.sampled_from(DTYPES), st.integers(0, 2**16))
def test_positional_encoding_property(shape, dim, kind, dtype, seed):
    positions = torch.randint(0, 2**24, shape, generator=torch.Generator().manual_seed(seed))
    pe = posenc.positional_encoding(positions, dim, kind=kind, dtype=dtype)
    assert pe.shape == (*shape, dim) and pe.dtype == dtype
    assert_close(pe, reference_code(positions, dim, kind), dtype, largest_angle=largest(positions))


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from([1, 2]), st.sampled_from(DTYPES), st.integers(0, 2**16))
def test_apply_rotary_pos_emb_property(B, S, H, half, unsqueeze_dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    D = 2 * half
    shape = (B, H, S, D) if unsqueeze_dim == 1 else (B, S, H, D)
    q = torch.randn(shape, generator=gen).to(dtype)
    k = torch.randn(shape, generator=gen).to(dtype)
    cos, sin = torch.randn(B, S, D, generator=gen).to(dtype), torch.randn(B, S, D, generator=gen).to(dtype)
    qo, ko = posenc.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    c, s = cos.double().unsqueeze(unsqueeze_dim), sin.double().unsqueeze(unsqueeze_dim)

    def rotate_half(x):
        return torch.cat((-x[..., half:], x[..., :half]), -1)

    for x, y in [(q, qo), (k, ko)]:
        want = x.double() * c + rotate_half(x.double()) * s
        assert_close(y, want, dtype, scale=float(want.abs().max()))


def mrope_axis(pairs, section, interleaved):
    """The position row of each pair: contiguous sections (Qwen2/2.5-VL), or Qwen3-VL's
    interleaving (height on pairs 1, 4, ... below 3 * section[1], width on 2, 5, ... below
    3 * section[2], temporal elsewhere)."""
    i = torch.arange(pairs)
    if not interleaved:
        return (i >= section[0]).long() + (i >= section[0] + section[1]).long()
    axis = torch.zeros(pairs, dtype=torch.long)
    axis[(i % 3 == 1) & (i < 3 * section[1])] = 1
    axis[(i % 3 == 2) & (i < 3 * section[2])] = 2
    return axis


@st.composite
def mrope_cases(draw):
    B, S = draw(st.integers(1, 3)), draw(st.integers(0, 6))
    Hq, Hk = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    section = [draw(st.integers(0, 3)) for _ in range(3)]
    r = 2 * sum(section)
    D = r + 2 * draw(st.integers(0, 2))
    if D == 0:
        D = r = 2
        section = [1, 0, 0]
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    layout = draw(st.sampled_from(["bshd", "bhsd", "sbhd"]))

    def make(heads, offset):
        return strided_qk(draw, (B, S, heads, D), dtype, seed + offset, layout)

    gen = torch.Generator().manual_seed(seed)
    low = draw(st.sampled_from([0, -1000]))  # rows may be negative coordinates
    shape = draw(st.sampled_from([(3, B, S), (3, 1, S), (3, S)]))
    positions = torch.randint(low, 10**6, shape, generator=gen)
    return make(Hq, 0), make(Hk, 1), layout, positions, dict(
        rotary_dim=r, interleaved=draw(st.booleans()), mrope_section=section,
        mrope_interleaved=draw(st.booleans()), base=draw(st.sampled_from([100.0, 10000.0])))


@SETTINGS
@given(mrope_cases())
def test_mrope_property(case):
    q, k, layout, positions, options = case
    qo, ko = posenc.rotary(q, k, positions=positions, layout=layout, **options)
    view = {"bshd": lambda t: t, "bhsd": lambda t: t.transpose(1, 2),
            "sbhd": lambda t: t.transpose(0, 1)}[layout]
    B, S = view(q).shape[:2]
    r = options["rotary_dim"]
    inv_freq = options["base"] ** (-torch.arange(0, r, 2, dtype=torch.float64) / max(r, 1))
    rows = positions.reshape(3, positions.numel() // (3 * S) if S else 1, S)
    rows = rows.expand(3, B, S).double()  # (3, B, S)
    axis = mrope_axis(r // 2, options["mrope_section"], options["mrope_interleaved"])
    angle = rows[axis].permute(1, 2, 0) * inv_freq  # (B, S, r/2)
    cos, sin = angle.cos()[:, :, None], angle.sin()[:, :, None]
    for x, y in [(q, qo), (k, ko)]:
        x = view(x).double()
        rot, rest = x[..., :r], x[..., r:]
        if options["interleaved"]:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            want = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)
        else:
            x1, x2 = rot[..., : r // 2], rot[..., r // 2:]
            want = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
        want = torch.cat([want, rest], -1)
        magnitude = float(x.abs().max()) if x.numel() else 1.0
        assert_close(view(y), want, y.dtype, scale=magnitude,
                     largest_angle=largest(rows.abs()) * max(magnitude, 1.0))
