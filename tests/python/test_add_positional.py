import math

import pytest
import torch
from torch.testing._internal.optests import opcheck

import posenc
from references import (TutorialPositionalEncoding, dropout_scale, fairseq_sinusoidal_table,
                        reference_code, tensor2tensor_timing_signal)

KINDS = ["sinusoidal", "linear", "damped", "cosine"]
CODE_OPTIONS = [
    dict(kind="sinusoidal", convention="vaswani", layout="interleaved"),
    dict(kind="sinusoidal", convention="vaswani", layout="concat"),
    dict(kind="sinusoidal", convention="tensor2tensor", layout="interleaved"),
    dict(kind="sinusoidal", convention="tensor2tensor", layout="concat"),
    dict(kind="linear"),
    dict(kind="damped"),
    dict(kind="cosine"),
]
TOL = {torch.float32: 2e-6, torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def eager_reference(x, *, kind="sinusoidal", combine="add", scale=1.0, positions=None, offset=0,
                    base=10000.0, convention="vaswani", layout="interleaved", table=None):
    """Float64 result of combine(scale * x, PE(pos)) without dropout."""
    T, D = x.shape[-2], x.shape[-1]
    if positions is None:
        positions = torch.arange(T) + offset
    positions = positions.expand(x.shape[:-1])
    if kind == "learned":
        pe = table.double()[positions]
    else:
        pe = reference_code(positions, D, kind, base, convention, layout)
    sx = scale * x.double()
    return sx + pe if combine == "add" else sx * pe


@pytest.mark.parametrize("options", CODE_OPTIONS)
@pytest.mark.parametrize("combine", ["add", "mul"])
@pytest.mark.parametrize("dim", [1, 6, 7, 64])
def test_matches_reference(options, combine, dim):
    x = torch.randn(2, 9, dim)
    y = posenc.add_positional(x, combine=combine, scale=1.5, offset=3, base=500.0, **options)
    want = eager_reference(x, combine=combine, scale=1.5, offset=3, base=500.0, **options)
    torch.testing.assert_close(y.double(), want, atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    x = torch.randn(3, 17, 32).to(dtype)
    y = posenc.add_positional(x, offset=100)
    assert y.dtype == dtype
    want = eager_reference(x, offset=100)
    torch.testing.assert_close(y.double(), want, atol=TOL[dtype] * 8, rtol=TOL[dtype])


def test_positions_tensor_broadcast_and_int32():
    x = torch.randn(4, 5, 16)
    for positions in [torch.tensor([7, 3, 0, 1, 9]), torch.randint(0, 50, (4, 5)),
                      torch.randint(0, 50, (4, 1)), torch.randint(0, 50, (4, 5), dtype=torch.int32)]:
        y = posenc.add_positional(x, positions=positions)
        torch.testing.assert_close(y.double(), eager_reference(x, positions=positions.long()),
                                   atol=2e-6, rtol=1e-6)


def test_strided_inputs_and_layout_preserved():
    base = torch.randn(6, 4, 40)
    x = base.transpose(0, 1)[:, 1:, 3:35]  # (4, 5, 32), non-contiguous in every dim
    y = posenc.add_positional(x, kind="cosine", combine="mul", scale=0.5)
    torch.testing.assert_close(y.double(), eager_reference(x, kind="cosine", combine="mul", scale=0.5),
                               atol=2e-6, rtol=1e-6)
    assert x.equal(base.transpose(0, 1)[:, 1:, 3:35])  # input untouched
    t = torch.randn(5, 3, 8).transpose(0, 1)
    assert posenc.add_positional(t).stride() == t.stride()


def test_learned_table():
    table = torch.randn(20, 8)
    x = torch.randn(2, 6, 8)
    for combine in ["add", "mul"]:
        y = posenc.add_positional(x, kind="learned", table=table, offset=4, combine=combine)
        torch.testing.assert_close(
            y.double(), eager_reference(x, kind="learned", table=table, offset=4, combine=combine))


def test_published_conventions():
    T, D = 50, 16
    tutorial = TutorialPositionalEncoding(D, dropout=0.0, max_len=100).eval()
    ours = posenc.nn.PositionalEncoding(D, dropout=0.0, max_len=100).eval()
    xs = torch.randn(T, 3, D, dtype=torch.float64)
    torch.testing.assert_close(ours(xs), tutorial(xs), atol=1e-12, rtol=0)
    # tensor2tensor: concat layout, tensor2tensor convention, odd width padded with zero.
    for channels in [8, 9]:
        got = posenc.positional_encoding(T, channels, convention="tensor2tensor", layout="concat",
                                         dtype=torch.float64)
        torch.testing.assert_close(got, tensor2tensor_timing_signal(T, channels)[0], atol=1e-12,
                                   rtol=0)
        torch.testing.assert_close(got, fairseq_sinusoidal_table(T, channels), atol=1e-12, rtol=0)


def test_precision_near_2_pow_24():
    positions = torch.arange(2**24 - 512, 2**24)
    pe = posenc.positional_encoding(positions, 64)
    want = reference_code(positions, 64)
    assert (pe.double() - want).abs().max().item() < 2e-6
    # Plain float32 angle math, as a table built in float32 would do, is far off here.
    w = torch.pow(10000.0, -torch.arange(0, 64, 2, dtype=torch.float32) / 64)
    naive = torch.sin(positions.float()[:, None] * w)
    assert (naive.double() - want[:, 0::2]).abs().max().item() > 1e-2


def test_empty_tensors():
    for shape in [(0, 5, 8), (2, 0, 8), (2, 5, 0)]:
        x = torch.randn(shape)
        y = posenc.add_positional(x, dropout=0.1)
        assert y.shape == x.shape
    assert posenc.positional_encoding(0, 4).shape == (0, 4)


# ---- dropout ----------------------------------------------------------------------------------

def test_dropout_statistics_and_scaling():
    p = 0.1
    x = torch.rand(8, 256, 512) + 3.0  # x + PE > 0, so dropped elements are exactly the zeros
    y = posenc.add_positional(x, kind="sinusoidal", dropout=p, scale=1.0)
    n = y.numel()
    dropped = (y == 0).sum().item()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 2.576 * sigma
    kept = y != 0
    no_drop = posenc.add_positional(x, kind="sinusoidal")
    torch.testing.assert_close(y[kept], no_drop[kept] * dropout_scale(p))


def test_dropout_eval_exact_and_reproducible():
    x = torch.randn(4, 32, 64)
    assert posenc.add_positional(x, dropout=0.5, training=False).equal(posenc.add_positional(x))
    torch.manual_seed(123)
    a = posenc.add_positional(x, dropout=0.3)
    torch.manual_seed(123)
    b = posenc.add_positional(x, dropout=0.3)
    assert a.equal(b)
    c = posenc.add_positional(x, dropout=0.3)
    assert not a.equal(c)
    g = torch.Generator().manual_seed(5)
    d = posenc.add_positional(x, dropout=0.3, generator=g)
    g.manual_seed(5)
    assert d.equal(posenc.add_positional(x, dropout=0.3, generator=g))


def test_dropout_gradient_uses_same_mask():
    x = (torch.rand(3, 40, 32) + 1.0).requires_grad_()
    y = posenc.add_positional(x, dropout=0.4, scale=2.0, combine="mul", kind="cosine")
    y.backward(torch.ones_like(y))
    pe = reference_code(torch.arange(40), 32, "cosine").float()
    keep = y.detach() != 0
    torch.testing.assert_close(x.grad, keep * (2.0 * pe * dropout_scale(0.4)), atol=1e-5, rtol=1e-5)


# ---- autograd, opcheck, compile ---------------------------------------------------------------

def _seed(value):
    return torch.tensor(value, dtype=torch.int64)


@pytest.mark.parametrize("combine", ["add", "mul"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradcheck(combine, dropout):
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    table = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[0, 3, 8, 3], [1, 1, 2, 5]])
    seed = _seed(42)
    op = torch.ops.posenc.add_positional
    assert torch.autograd.gradcheck(
        lambda x: op(x, None, None, seed, kind="damped", combine=combine, scale=1.3,
                     dropout=dropout), (x,))
    assert torch.autograd.gradcheck(
        lambda x, t: op(x, positions, t, seed, kind="learned", combine=combine, scale=0.7,
                        dropout=dropout), (x, table))


def test_a_call_no_gradient_can_reach_gives_the_graph_calls_values():
    # Without an input that requires grad the autograd kernel runs the operator at once, with no
    # graph node; its values are the node-building call's, bit for bit.
    x = torch.randn(2, 7, 10)
    table = torch.randn(9, 10)
    positions = torch.randint(0, 9, (2, 7))
    for kwargs in (dict(kind="damped", combine="mul", scale=1.5, offset=3),
                   dict(kind="learned", table=table, positions=positions),
                   dict(dropout=0.3, generator=torch.Generator().manual_seed(5))):
        plain = posenc.add_positional(x, **kwargs)
        assert plain.grad_fn is None and not plain.requires_grad
        if "generator" in kwargs:
            kwargs["generator"] = torch.Generator().manual_seed(5)
        graphed = posenc.add_positional(x.clone().requires_grad_(), **kwargs)
        assert graphed.grad_fn is not None
        assert torch.equal(plain, graphed.detach())
    # A learned table that requires grad is still an autograd input, even when x is not.
    y = posenc.add_positional(x, kind="learned", positions=positions,
                              table=table.clone().requires_grad_())
    assert y.grad_fn is not None


def test_forward_mode_tangents_are_refused():
    # Forward-mode AD is not implemented: a tangent on an input that does not require grad must
    # not be dropped in silence by the no-graph path.
    import torch.autograd.forward_ad as fwAD
    x = torch.randn(2, 3, 8)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match="jvp is not implemented"):
            posenc.add_positional(dual)


def test_double_backward_raises_clearly():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    table = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    y = posenc.add_positional(x, combine="mul", kind="learned", table=table)
    # d y / d x = table[pos] depends on table, so a second derivative is asked for.
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="add_positional_backward"):
        g.sum().backward()


def _opcheck_samples():
    seed = _seed(7)
    table = torch.randn(12, 8, requires_grad=True)
    yield (torch.randn(2, 5, 8, requires_grad=True), None, None, None), {}
    yield (torch.randn(2, 5, 8), torch.randint(0, 10, (2, 5)), None, seed), dict(
        kind="linear", combine="mul", dropout=0.2, scale=2.0)
    yield (torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True), None, None, seed), dict(
        kind="cosine", dropout=0.5, offset=9)
    yield (torch.randn(2, 5, 8, requires_grad=True), torch.tensor([0, 1, 2, 11, 4]), table, seed), dict(
        kind="learned", combine="mul", dropout=0.1)
    yield (torch.randn(4, 8, 5).transpose(-1, -2), None, None, None), dict(
        layout="concat", convention="tensor2tensor")
    yield (torch.randn(2, 5, 8).bfloat16(), None, None, None), dict(kind="damped")
    # Relative positions of a computed code, with dropout, as a gradient flows to x.
    yield (torch.randn(2, 5, 8, requires_grad=True), torch.tensor([2, 1, 0, -1, -2]), None, seed), \
        dict(combine="mul", dropout=0.3)


@pytest.mark.parametrize("sample", list(_opcheck_samples()), ids=lambda s: str(s[1]))
def test_opcheck_add_positional(sample):
    args, kwargs = sample
    opcheck(torch.ops.posenc.add_positional.default, args, kwargs)


def test_opcheck_positional_encoding():
    opcheck(torch.ops.posenc.positional_encoding.default, (torch.arange(6).view(2, 3), 10), {})
    opcheck(torch.ops.posenc.positional_encoding.default, (torch.tensor([3, 99]), 7),
            dict(kind="linear", dtype=torch.float64))


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def f(x, table):
        y = posenc.add_positional(x, kind="learned", table=table, scale=2.0)
        return posenc.add_positional(y, kind="sinusoidal", combine="mul", offset=5)

    x = torch.randn(2, 7, 16, requires_grad=True)
    table = torch.randn(10, 16, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, table)
    torch.testing.assert_close(out, f(x, table))
    out.sum().backward()
    gx, gt = x.grad.clone(), table.grad.clone()
    x.grad = None
    table.grad = None
    f(x, table).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gt, table.grad)


def test_torch_compile_with_dropout_matches_eager_rng():
    torch._dynamo.reset()
    import torch._inductor.config as inductor_config

    def f(x):
        return posenc.add_positional(x, dropout=0.25)

    x = torch.randn(2, 64, 32)
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(f, fullgraph=True)
        torch.manual_seed(3)
        got = compiled(x)
    torch.manual_seed(3)
    torch.testing.assert_close(got, f(x))


# ---- module ------------------------------------------------------------------------------------

def test_module_batch_first_and_learned():
    m = posenc.nn.PositionalEncoding(16, dropout=0.0, batch_first=True, kind="learned", max_len=32)
    x = torch.randn(3, 10, 16)
    y = m(x)
    torch.testing.assert_close(y, x + m.table[:10])
    y.sum().backward()
    assert m.table.grad[:10].eq(3.0).all() and m.table.grad[10:].eq(0).all()
    assert posenc.nn.PositionalEncoding(8).state_dict() == {}  # no stored table
    m2 = posenc.nn.PositionalEncoding(16, dropout=0.5)
    m2.eval()
    xs = torch.randn(10, 3, 16)
    torch.testing.assert_close(m2(xs).double(), xs.double() + reference_code(torch.arange(10), 16)[:, None],
                               atol=2e-6, rtol=1e-6)
