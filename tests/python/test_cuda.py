"""CUDA against CPU for every operator; skipped where no GPU is present."""

import pytest
import torch
from torch.testing._internal.optests import opcheck

import posenc

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float32: (2e-6, 1e-5), torch.float64: (1e-12, 1e-12), torch.bfloat16: (2e-2, 2e-2),
       torch.float16: (2e-3, 2e-3)}


def close(cuda_out, cpu_out, dtype):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(cuda_out.cpu().double(), cpu_out.double(), atol=atol * 8, rtol=rtol)


def seed(value=1234):
    return torch.tensor(value, dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [
    dict(kind="sinusoidal"), dict(kind="sinusoidal", convention="tensor2tensor", layout="concat"),
    dict(kind="sinusoidal", convention="tensor2tensor", layout="concat_cos_first"),
    dict(kind="linear", combine="mul"), dict(kind="damped"), dict(kind="cosine", combine="mul"),
])
def test_add_positional_parity(dtype, options):
    x = torch.randn(3, 40, 24).to(dtype).transpose(0, 1)[:, :, 1:22]  # strided, odd width
    op = torch.ops.posenc.add_positional
    for positions, kwargs in [(None, dict(offset=7)),
                              (torch.randint(-5000, 5000, (40, 3)), dict(dropout=0.3))]:
        cpu = op(x, positions, None, seed(), scale=1.5, **options, **kwargs)
        cuda = op(x.cuda(), None if positions is None else positions.cuda(), None, seed().cuda(),
                  scale=1.5, **options, **kwargs)
        close(cuda, cpu, dtype)
        # Same seed, same mask on both devices.
        assert torch.equal(cuda.cpu() == 0, cpu == 0)


def test_learned_table_and_gradients_parity():
    x = torch.randn(4, 9, 16, dtype=torch.float64, requires_grad=True)
    table = torch.randn(20, 16, dtype=torch.float64, requires_grad=True)
    positions = torch.randint(0, 20, (4, 9))
    for combine in ["add", "mul"]:
        outs, grads = [], []
        for device in ["cpu", "cuda"]:
            xd = x.detach().to(device).requires_grad_()
            td = table.detach().to(device).requires_grad_()
            y = torch.ops.posenc.add_positional(xd, positions.to(device), td, seed().to(device),
                                                kind="learned", combine=combine, dropout=0.2)
            y.backward(torch.ones_like(y))
            outs.append(y.detach().cpu())
            grads.append((xd.grad.cpu(), td.grad.cpu()))
        torch.testing.assert_close(outs[1], outs[0])
        torch.testing.assert_close(grads[1][0], grads[0][0])
        torch.testing.assert_close(grads[1][1], grads[0][1])


def test_gradcheck_cuda():
    x = torch.randn(2, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    table = torch.randn(8, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    s = seed().cuda()
    assert torch.autograd.gradcheck(
        lambda x, t: torch.ops.posenc.add_positional(x, None, t, s, kind="learned", combine="mul",
                                                     dropout=0.3), (x, table))
    ids = torch.tensor([[1, 3, 0, 3], [2, 1, 1, 4]], device="cuda")
    weight = torch.randn(5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w: torch.ops.posenc.embedding(ids, w, None, None, s, combine="mul", dropout=0.2),
        (weight,), nondet_tol=1e-12)  # atomics: the summation order may vary
    q = torch.randn(2, 3, 2, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q: torch.ops.posenc.rotary(q, None, None, None, None, None, rotary_dim=4)[0], (q,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_parity_padding_fairseq(dtype):
    ids = torch.randint(0, 50, (4, 33))
    ids[:, :3] = 1
    weight = torch.randn(50, 20).to(dtype)
    table = torch.randn(100, 20).to(dtype)
    for kwargs in [dict(), dict(padding_idx=1, fairseq_positions=True, dropout=0.1),
                   dict(kind="learned", padding_idx=1, fairseq_positions=True, combine="mul")]:
        t = table if kwargs.get("kind") == "learned" else None
        cpu = torch.ops.posenc.embedding(ids, weight, None, t, seed(), **kwargs)
        cuda = torch.ops.posenc.embedding(ids.cuda(), weight.cuda(), None,
                                          None if t is None else t.cuda(), seed().cuda(), **kwargs)
        close(cuda, cpu, dtype)


def test_embedding_backward_deterministic_and_parity():
    ids = torch.randint(0, 30, (8, 128))
    weight = torch.randn(30, 64, requires_grad=True)
    grad = torch.randn(8, 128, 64)
    y = torch.ops.posenc.embedding(ids, weight, None, None, seed(), combine="mul", dropout=0.1)
    (cpu_grad,) = torch.autograd.grad(y, weight, grad)
    results = []
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            wc = weight.detach().cuda().requires_grad_()
            y = torch.ops.posenc.embedding(ids.cuda(), wc, None, None, seed().cuda(),
                                           combine="mul", dropout=0.1)
            (g,) = torch.autograd.grad(y, wc, grad.cuda())
            results.append(g)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(results[0], results[1])
    torch.testing.assert_close(results[0].cpu(), cpu_grad, atol=1e-4, rtol=1e-5)
    wc = weight.detach().cuda().requires_grad_()
    y = torch.ops.posenc.embedding(ids.cuda(), wc, None, None, seed().cuda(), combine="mul",
                                   dropout=0.1)
    (atomic,) = torch.autograd.grad(y, wc, grad.cuda())
    torch.testing.assert_close(atomic.cpu(), cpu_grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("layout", ["bshd", "bhsd", "sbhd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_parity(layout, dtype):
    shape = {"bshd": (2, 17, 4, 16), "bhsd": (2, 4, 17, 16), "sbhd": (17, 2, 4, 16)}[layout]
    q = torch.randn(shape).to(dtype)
    k = torch.randn(shape).to(dtype)[..., :1, :] if layout != "bhsd" else torch.randn(shape).to(dtype)[:, :1]
    for kwargs in [dict(), dict(interleaved=True, rotary_dim=8, offset=1000),
                   dict(attention_factor=1.3, base=500.0)]:
        cpu = posenc.rotary(q, k, layout=layout, **kwargs)
        cuda = posenc.rotary(q.cuda(), k.cuda(), layout=layout, **kwargs)
        for a, b in zip(cuda, cpu):
            close(a, b, dtype)


def test_rotary_varlen_and_tables_parity():
    cu = torch.tensor([0, 5, 12, 20])
    q = torch.randn(20, 4, 8)
    k = torch.randn(20, 1, 8)
    offsets = torch.tensor([3, 0, 9])
    cpu = posenc.rotary(q, k, layout="thd", cu_seqlens=cu, offset=offsets)
    cuda = posenc.rotary(q.cuda(), k.cuda(), layout="thd", cu_seqlens=cu.cuda(),
                         offset=offsets.cuda())
    for a, b in zip(cuda, cpu):
        close(a, b, torch.float32)
    cos, sin = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    qh, kh = torch.randn(2, 3, 7, 8), torch.randn(2, 1, 7, 8)
    cpu = posenc.apply_rotary_pos_emb(qh, kh, cos, sin)
    cuda = posenc.apply_rotary_pos_emb(qh.cuda(), kh.cuda(), cos.cuda(), sin.cuda())
    for a, b in zip(cuda, cpu):
        close(a, b, torch.float32)


def test_positional_encoding_parity():
    positions = torch.randint(0, 2**24, (64,))
    close(posenc.positional_encoding(positions.cuda(), 32), posenc.positional_encoding(positions, 32),
          torch.float32)


def test_opcheck_cuda():
    opcheck(torch.ops.posenc.add_positional.default,
            (torch.randn(2, 5, 8, device="cuda", requires_grad=True), None, None,
             seed().cuda()), dict(dropout=0.2))
    opcheck(torch.ops.posenc.embedding.default,
            (torch.randint(0, 10, (2, 5), device="cuda"),
             torch.randn(10, 8, device="cuda", requires_grad=True), None, None, None), {})
    opcheck(torch.ops.posenc.rotary.default,
            (torch.randn(2, 5, 3, 8, device="cuda", requires_grad=True), None, None, None, None,
             None), {})


def test_cuda_graph_replay_draws_fresh_masks():
    x = torch.rand(4, 64, 32, device="cuda") + 3.0
    static_out = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up outside capture
            static_out.copy_(posenc.add_positional(x, dropout=0.5))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out.copy_(posenc.add_positional(x, dropout=0.5))
    graph.replay()
    first = static_out.clone()
    graph.replay()
    second = static_out.clone()
    assert not torch.equal(first == 0, second == 0)
    reference = posenc.add_positional(x, training=False)
    for out in (first, second):
        kept = out != 0
        torch.testing.assert_close(out[kept], reference[kept] * 2.0)
        assert 0.4 < (~kept).float().mean().item() < 0.6


# ---- no host synchronisation: every operator, forward and backward ------------------------------

def every_operator_inputs():
    g = torch.Generator(device="cuda").manual_seed(0)
    return dict(
        x=torch.randn(2, 16, 32, device="cuda", generator=g, requires_grad=True),
        table=torch.randn(40, 32, device="cuda", generator=g, requires_grad=True),
        weight=torch.randn(50, 32, device="cuda", generator=g, requires_grad=True),
        ids=torch.randint(0, 50, (2, 16), device="cuda", generator=g),
        positions=torch.randint(0, 40, (2, 16), device="cuda", generator=g),
        q=torch.randn(2, 16, 4, 32, device="cuda", generator=g, requires_grad=True),
        k=torch.randn(2, 16, 2, 32, device="cuda", generator=g, requires_grad=True),
        packed=torch.randn(16, 4, 32, device="cuda", generator=g, requires_grad=True),
        cu=torch.tensor([0, 5, 16], device="cuda"),
        offsets=torch.tensor([3, 7], device="cuda"),
        packed_offsets=torch.tensor([0, 9], device="cuda"),
    )


def every_operator_step(inputs, dropout=0.1):
    """One forward and backward of every operator with device tensors, including explicit and
    fairseq positions, learned tables, rotary positions, offsets and cu_seqlens; returns a
    scalar loss tensor (no .item())."""
    x, table, weight, ids, positions, q, k, packed, cu = (
        inputs[name] for name in ("x", "table", "weight", "ids", "positions", "q", "k",
                                  "packed", "cu"))
    losses = [
        posenc.add_positional(x, dropout=dropout).sum(),
        posenc.add_positional(x, kind="learned", table=table, positions=positions,
                              combine="mul", dropout=dropout).sum(),
        posenc.embedding(ids, weight, positions=positions, dropout=dropout).sum(),
        posenc.embedding(ids, weight, padding_idx=3, positions="fairseq", kind="learned",
                         table=table, dropout=dropout).sum(),
        sum(t.sum() for t in posenc.rotary(q, k, positions=positions)),
        sum(t.sum() for t in posenc.rotary(q, k, offset=inputs["offsets"])),
        posenc.rotary(packed, layout="thd", cu_seqlens=cu, offset=inputs["packed_offsets"]).sum(),
        posenc.positional_encoding(positions, 32).sum(),
    ]
    loss = sum(losses)
    loss.backward()
    return loss


def test_no_host_synchronisation():
    inputs = every_operator_inputs()
    every_operator_step(inputs)  # warm up (allocator, lazy initialisation)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        every_operator_step(inputs)
        with _deterministic():
            every_operator_step(inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")


class _deterministic:
    def __enter__(self):
        self.saved = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.saved)


def test_every_operator_in_a_cuda_graph_with_fresh_masks():
    inputs = every_operator_inputs()
    x = torch.rand(2, 16, 32, device="cuda") + 3.0
    static = {}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up outside capture
            every_operator_step(inputs, dropout=0.5)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static["loss"] = every_operator_step(inputs, dropout=0.5)
        static["mask"] = posenc.add_positional(x, dropout=0.5) == 0
    graph.replay()
    first = static["mask"].clone()
    graph.replay()
    assert not torch.equal(first, static["mask"])
    assert torch.isfinite(static["loss"]).all()


def test_compile_reduce_overhead_fullgraph():
    def step(x, ids, weight, q, k, positions):
        h = posenc.embedding(ids, weight, positions=positions)
        y = posenc.add_positional(x, positions=positions)
        qo, ko = posenc.rotary(q, k, positions=positions)
        return h.sum() + y.sum() + qo.sum() + ko.sum()

    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    args = (torch.randn(2, 16, 32, device="cuda"), torch.randint(0, 50, (2, 16), device="cuda"),
            torch.randn(50, 32, device="cuda"), torch.randn(2, 16, 4, 32, device="cuda"),
            torch.randn(2, 16, 2, 32, device="cuda"), torch.randint(0, 1000, (2, 16), device="cuda"))
    for _ in range(3):
        got = compiled(*args)
    torch.testing.assert_close(got, step(*args))


def test_exact_angles_on_the_gpu():
    """Within 4e-6 of float64 below 2^24, for the codes and for rotary."""
    positions = torch.cat([torch.arange(2**24 - 512, 2**24), torch.randint(0, 2**24, (512,))])
    pe = posenc.positional_encoding(positions.cuda(), 64).cpu().double()
    i = torch.arange(32, dtype=torch.float64)
    angle = positions.double()[:, None] * 10000.0 ** (-2.0 * i / 64)
    assert (pe[:, 0::2] - torch.sin(angle)).abs().max() < 4e-6
    assert (pe[:, 1::2] - torch.cos(angle)).abs().max() < 4e-6
    q = torch.zeros(1, len(positions), 1, 64, device="cuda")
    q[..., :32] = 1.0
    out = posenc.rotary(q, positions=positions.cuda())[0, :, 0].cpu().double()
    assert (out[:, :32] - torch.cos(angle)).abs().max() < 4e-6
    assert (out[:, 32:] - torch.sin(angle)).abs().max() < 4e-6


def test_device_side_assert_names_the_argument():
    """Bad ids on CUDA are caught on the device (no sync): the error surfaces at the next
    synchronisation as a device-side assert, in a child process since it poisons the context."""
    import subprocess
    import sys
    script = ("import torch, posenc\n"
              "w = torch.randn(5, 4, device='cuda')\n"
              "posenc.embedding(torch.tensor([[0, 9]], device='cuda'), w)\n"
              "torch.cuda.synchronize()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "ids must be in [0, V)" in result.stderr + result.stdout


@pytest.mark.parametrize("interleaved", [False, True])
def test_mrope_parity(interleaved):
    q = torch.randn(2, 4, 9, 64)
    k = torch.randn(2, 1, 9, 64)
    positions = torch.randint(0, 5000, (3, 2, 9))
    kwargs = dict(layout="bhsd", mrope_section=[12, 10, 10], mrope_interleaved=interleaved)
    cpu = posenc.rotary(q, k, positions=positions, **kwargs)
    cuda = posenc.rotary(q.cuda(), k.cuda(), positions=positions.cuda(), **kwargs)
    for a, b in zip(cuda, cpu):
        close(a, b, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_patch_grid_parity_and_no_sync(dtype):
    grid = dict(grid=[3, 4, 5], extra_tokens=2, grid_dims=[16, 24, 24], grid_axes=[0, 2, 1],
                grid_origin=[1, 3, 0], grid_scale=[0.5, 1.25, 1.0], layout="concat")
    x = torch.randn(3, 62, 64).to(dtype)
    positions = torch.randint(0, 62, (3, 17))
    op = torch.ops.posenc.add_positional
    for p, rows, kwargs in [(None, x, dict(dropout=0.2)),
                            (positions, x[:, :17], dict(combine="mul"))]:
        cpu = op(rows, p, None, seed(), **grid, **kwargs)
        torch.cuda.set_sync_debug_mode("error")
        try:
            cuda = op(rows.cuda(), None if p is None else p.cuda(), None, seed().cuda(), **grid,
                      **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        close(cuda, cpu, dtype)
        assert torch.equal(cuda.cpu() == 0, cpu == 0)
    module = posenc.nn.PatchPositionalEncoding(64, 6, extra_tokens=1, base_size=4,
                                               pos_embed_max_size=8)
    x = torch.randn(2, 37, 64).to(dtype)
    close(module(x.cuda()), module(x), dtype)


def test_axial_rotary_parity_negative_rows():
    module = posenc.nn.AxialRotaryEmbedding(64, (6, 7), style="dinov3", base=100.0,
                                            extra_tokens=5)
    q, k = torch.randn(2, 4, 47, 64), torch.randn(2, 4, 47, 64)
    cpu = module(q, k, layout="bhsd")
    cuda = module.cuda()(q.cuda(), k.cuda(), layout="bhsd")
    for a, b in zip(cuda, cpu):
        close(a, b, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch, seq_len", [(1, 301), (5, 67), (8, 1)])
def test_dense_kernels_parity(dtype, batch, seq_len):
    """Shapes that take the dense kernels (rows of D % 8 == 0 moving as 16-byte vectors): batches
    of 1 (chunks across steps), odd batches (padded chunks), decoding steps (rows split over
    blocks); every code source, dropout and gathers, against the CPU, masks equal."""
    D = 64
    x = torch.randn(batch, seq_len, D).to(dtype)
    table = torch.randn(seq_len + 5, D).to(dtype)
    weight = torch.randn(50, D).to(dtype)
    ids = torch.randint(0, 50, (batch, seq_len))
    op = torch.ops.posenc.add_positional
    cases = [(None, dict(kind="sinusoidal", dropout=0.1)),
             (None, dict(kind="cosine", combine="mul")),
             (None, dict(kind="sinusoidal", layout="concat", dropout=0.2)),
             (table, dict(kind="learned", dropout=0.1)),
             (None, dict(kind="damped", offset=70000))]
    for learned, options in cases:
        cpu = op(x, None, learned, seed(), scale=1.5, **options)
        cuda = op(x.cuda(), None, None if learned is None else learned.cuda(), seed().cuda(),
                  scale=1.5, **options)
        close(cuda, cpu, dtype)
        assert torch.equal(cuda.cpu() == 0, cpu == 0)
    embedding = torch.ops.posenc.embedding
    cpu = embedding(ids, weight, None, None, seed(), padding_idx=3, dropout=0.1)
    cuda = embedding(ids.cuda(), weight.cuda(), None, None, seed().cuda(), padding_idx=3,
                     dropout=0.1)
    close(cuda, cpu, dtype)
    assert torch.equal(cuda.cpu() == 0, cpu == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kwargs", [dict(), dict(rotary_dim=64), dict(interleaved=True),
                                    dict(rotary_dim=32, interleaved=True, inverse=True),
                                    dict(layout="bhsd", attention_factor=1.2)])
def test_dense_rotary_parity(dtype, kwargs):
    """head_dim 128 with GQA heads: the dense rotary kernel (partial rotary copies the rest),
    prefill and a decoding step with positions per sequence, against the CPU."""
    for batch, seq_len in [(2, 77), (8, 1)]:
        bhsd = kwargs.get("layout") == "bhsd"
        shape_q = (batch, 8, seq_len, 128) if bhsd else (batch, seq_len, 8, 128)
        shape_k = (batch, 2, seq_len, 128) if bhsd else (batch, seq_len, 2, 128)
        q, k = torch.randn(shape_q).to(dtype), torch.randn(shape_k).to(dtype)
        positions = torch.randint(0, 1 << 20, (batch, seq_len))
        cpu = torch.ops.posenc.rotary(q, k, positions, **kwargs)
        cuda = torch.ops.posenc.rotary(q.cuda(), k.cuda(), positions.cuda(), **kwargs)
        for a, b in zip(cuda, cpu):
            close(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["alibi", "t5"])
def test_attention_bias_parity(dtype, kind):
    # The same sums in the same order (CUDA may fuse ALiBi's products into its sums).
    weight = posenc.alibi_slopes(6).to(dtype) if kind == "alibi" else torch.randn(32, 6).to(dtype)
    options = dict(kind=kind, offset=250, causal=kind == "alibi")
    cpu = posenc.attention_bias(weight, 13, 263, **options)
    cuda = posenc.attention_bias(weight.cuda(), 13, 263, **options)
    assert torch.equal(cuda.cpu(), cpu)
    grad = torch.randn(1, 6, 13, 263).to(dtype)
    op = torch.ops.posenc.attention_bias_backward
    torch.testing.assert_close(op(grad.cuda(), weight.cuda(), 13, 263, **options).cpu(),
                               op(grad, weight, 13, 263, **options), atol=1e-4, rtol=1e-5)
