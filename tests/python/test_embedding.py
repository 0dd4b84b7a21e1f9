import math

import pytest
import torch
from torch.testing._internal.optests import opcheck

import posenc
from references import dropout_scale, fairseq_sinusoidal_table, reference_code

CODE_OPTIONS = [
    dict(kind="sinusoidal"),
    dict(kind="sinusoidal", convention="tensor2tensor", layout="concat"),
    dict(kind="linear"),
    dict(kind="damped"),
    dict(kind="cosine"),
]


def eager_embedding(ids, weight, *, kind="sinusoidal", combine="add", scale=None, positions=None,
                    offset=0, padding_idx=None, convention="vaswani", layout="interleaved",
                    table=None, base=10000.0):
    """nn.Embedding plus an eager position code, in float64."""
    D = weight.shape[1]
    scale = math.sqrt(D) if scale is None else scale
    x = scale * torch.nn.functional.embedding(ids, weight.double())
    if positions is None:
        positions = torch.arange(ids.shape[-1]) + offset
    positions = positions.expand(ids.shape)
    if kind == "learned":
        pe = table.double()[positions]
    else:
        pe = reference_code(positions, D, kind, base, convention, layout)
    y = x + pe if combine == "add" else x * pe
    if padding_idx is not None:
        y = torch.where((ids == padding_idx)[..., None], x, y)
    return y


def fairseq_make_positions(ids, padding_idx):
    """fairseq.utils.make_positions, as published."""
    mask = ids.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


@pytest.mark.parametrize("options", CODE_OPTIONS)
@pytest.mark.parametrize("combine", ["add", "mul"])
def test_matches_eager(options, combine):
    ids = torch.randint(0, 40, (3, 11))
    weight = torch.randn(40, 12)
    y = posenc.embedding(ids, weight, combine=combine, offset=2, **options)
    torch.testing.assert_close(y.double(), eager_embedding(ids, weight, combine=combine, offset=2,
                                                           **options), atol=1e-5, rtol=1e-6)


def test_scale_positions_int32_and_dtypes():
    ids = torch.randint(0, 30, (2, 3, 5), dtype=torch.int32)
    positions = torch.randint(0, 100, (3, 5))
    for dtype, tol in [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 5e-2),
                       (torch.float16, 5e-3)]:
        weight = torch.randn(30, 8).to(dtype)
        y = posenc.embedding(ids, weight, scale=0.5, positions=positions)
        assert y.dtype == dtype and y.shape == (2, 3, 5, 8)
        want = eager_embedding(ids.long(), weight, scale=0.5, positions=positions)
        torch.testing.assert_close(y.double(), want, atol=tol * 4, rtol=tol)


def test_learned_table_and_gradients():
    ids = torch.randint(1, 20, (4, 6))
    ids[0, 2] = 0
    weight = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    table = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    for combine in ["add", "mul"]:
        y = posenc.embedding(ids, weight, kind="learned", table=table, combine=combine,
                             padding_idx=0, offset=3)
        want = eager_embedding(ids, weight, kind="learned", table=table, combine=combine,
                               padding_idx=0, offset=3)
        torch.testing.assert_close(y, want)
        upstream = torch.randn_like(y)
        got = torch.autograd.grad(y, (weight, table), upstream)
        ref = torch.autograd.grad(want, (weight, table), upstream)
        ref_weight = ref[0].clone()
        ref_weight[0] = 0  # padding row gets no gradient
        torch.testing.assert_close(got[0], ref_weight)
        torch.testing.assert_close(got[1], ref[1])


def test_weight_gradient_equals_nn_embedding():
    ids = torch.randint(0, 50, (8, 33))
    module = torch.nn.Embedding(50, 16, padding_idx=3)
    ours = posenc.nn.PositionalEmbedding(50, 16, padding_idx=3, scale=1.0)
    ours.load_state_dict(module.state_dict())
    upstream = torch.randn(8, 33, 16)
    (module(ids) + posenc.positional_encoding(33, 16)).backward(upstream)
    ours(ids).backward(upstream)
    torch.testing.assert_close(ours.weight.grad, module.weight.grad, atol=1e-5, rtol=1e-5)


def test_padding_and_fairseq_positions():
    pad = 1
    ids = torch.tensor([[pad, pad, 5, 6, 7], [8, 9, 10, pad, 11], [2, 3, 4, 5, 6]])
    weight = torch.randn(16, 10, dtype=torch.float64)
    weight[pad] = 0
    embed_scale = math.sqrt(10)
    # fairseq: embed_scale * embed_tokens(ids) + SinusoidalPositionalEmbedding(ids)
    table = fairseq_sinusoidal_table(64, 10, padding_idx=pad)
    want = embed_scale * weight[ids] + table[fairseq_make_positions(ids, pad)]
    got = posenc.embedding(ids, weight, padding_idx=pad, positions="fairseq",
                           convention="tensor2tensor", layout="concat")
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # Pads: exactly scale * weight[pad] (zero here), in both combine modes.
    for combine in ["add", "mul"]:
        y = posenc.embedding(ids, weight, padding_idx=pad, combine=combine)
        assert y[ids == pad].abs().max() == 0


def test_dropout_statistics_mask_and_grad():
    ids = torch.randint(0, 100, (8, 256))
    weight = torch.randn(100, 64).abs() + 4.0  # rows > 3 so that x * sqrt(D) + PE > 0
    p = 0.2
    torch.manual_seed(0)
    y = posenc.embedding(ids, weight, dropout=p)
    n = y.numel()
    dropped = (y == 0).sum().item()
    assert abs(dropped - n * p) < 2.576 * math.sqrt(n * p * (1 - p))
    keep = y != 0
    base = posenc.embedding(ids, weight)
    torch.testing.assert_close(y[keep], base[keep] * dropout_scale(p))
    assert posenc.embedding(ids, weight, dropout=p, training=False).equal(base)
    # Backward regenerates the same mask.
    w = weight.clone().requires_grad_()
    torch.manual_seed(0)
    y2 = posenc.embedding(ids, w, dropout=p)
    assert y2.equal(y)
    y2.sum().backward()
    want = torch.zeros_like(weight).index_add_(
        0, ids.flatten(), (keep.float() * 8.0 * dropout_scale(p)).view(-1, 64))
    torch.testing.assert_close(w.grad, want, atol=1e-4, rtol=1e-5)


def test_weight_gradient_deterministic_across_threads():
    ids = torch.randint(0, 20, (4, 300))
    weight = torch.randn(20, 96, requires_grad=True)
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        weight.grad = None
        torch.manual_seed(1)
        posenc.embedding(ids, weight, dropout=0.1, combine="mul").pow(2).sum().backward()
        grads.append(weight.grad.clone())
    torch.set_num_threads(2)
    assert torch.equal(grads[0], grads[1])


def test_gradcheck():
    ids = torch.tensor([[0, 3, 2, 0], [1, 1, 4, 2]])
    weight = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    table = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(11)
    op = torch.ops.posenc.embedding

    pad_row = torch.randn(1, 6, dtype=torch.float64)

    def frozen_pad(w):
        # As in nn.Embedding, the padding row gets no gradient by design; use a constant row
        # there so the numerical Jacobian agrees.
        return torch.cat([pad_row, w[1:]])

    for combine in ["add", "mul"]:
        assert torch.autograd.gradcheck(
            lambda w: op(ids, frozen_pad(w), None, None, seed, kind="cosine", combine=combine,
                         padding_idx=0, dropout=0.3), (weight,))
        assert torch.autograd.gradcheck(
            lambda w, t: op(ids, frozen_pad(w), None, t, seed, kind="learned", combine=combine,
                            padding_idx=0, fairseq_positions=True, dropout=0.3), (weight, table))
        assert torch.autograd.gradcheck(
            lambda w: op(ids, w, torch.tensor([4, 0, 2, 7]), None, seed, combine=combine,
                         dropout=0.3), (weight,))


def _samples():
    seed = torch.tensor(5)
    yield (torch.randint(0, 10, (2, 5)), torch.randn(10, 8, requires_grad=True), None, None,
           None), {}
    yield (torch.randint(0, 10, (2, 5), dtype=torch.int32), torch.randn(10, 8, dtype=torch.float64,
           requires_grad=True), torch.randint(0, 30, (5,)), None, seed), dict(
               kind="linear", combine="mul", dropout=0.3, scale=2.0)
    yield (torch.tensor([[1, 1, 3, 4], [5, 1, 6, 7]]), torch.randn(10, 8, requires_grad=True),
           None, torch.randn(12, 8, requires_grad=True), seed), dict(
               kind="learned", padding_idx=1, fairseq_positions=True, dropout=0.1)
    yield (torch.randint(0, 10, (7,)), torch.randn(10, 8).bfloat16(), None, None, None), dict(
        kind="damped", padding_idx=-1)


@pytest.mark.parametrize("sample", list(_samples()), ids=lambda s: str(s[1]))
def test_opcheck_embedding(sample):
    args, kwargs = sample
    opcheck(torch.ops.posenc.embedding.default, args, kwargs)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    module = posenc.nn.PositionalEmbedding(40, 16, padding_idx=0, kind="learned",
                                           max_positions=64, positions="fairseq")
    ids = torch.randint(0, 40, (3, 9))
    compiled = torch.compile(module, fullgraph=True)
    out = compiled(ids)
    torch.testing.assert_close(out, module(ids))
    out.sum().backward()
    g = module.weight.grad.clone()
    module.weight.grad = None
    module(ids).sum().backward()
    torch.testing.assert_close(g, module.weight.grad)


def test_module_state_dict_and_from_pretrained():
    emb = torch.nn.Embedding(30, 8, padding_idx=2)
    ours = posenc.nn.PositionalEmbedding(30, 8, padding_idx=2)
    assert ours.weight[2].abs().sum() == 0
    ours.load_state_dict(emb.state_dict())
    assert torch.equal(ours.weight, emb.weight)
    assert set(ours.state_dict()) == {"weight"}
    frozen = posenc.nn.PositionalEmbedding.from_pretrained(emb.weight.detach(), padding_idx=2)
    assert not frozen.weight.requires_grad
    learned = posenc.nn.PositionalEmbedding(30, 8, kind="learned", max_positions=16)
    assert set(learned.state_dict()) == {"weight", "table"}
