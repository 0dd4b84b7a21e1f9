"""GPU benchmarks (scripts/gpu_check.sh runs them): each operator, forward and forward +
backward, next to a clone of the same bytes (the copy-bandwidth floor), eager PyTorch and
torch.compile of the eager code, all timed in one run with CUDA events (back-to-back calls,
see cuda_time_ms) after warm-up, inputs rotated over several copies larger than the L2 cache
so that the cache does not flatter; then decoding steps as CUDA graph replays (graph_time_us). Bytes moved are the bandwidth model's (benchmarks/bandwidth_model.py):
each input read once, each output written once, dropout masks regenerated rather than stored.
Prints a table and writes it as Markdown to --out."""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

import posenc


DEVICE = "cuda"
SIZE = 1  # --small divides the shapes, to check this script itself on any device


def cuda_time_ms(fn: Callable[[int], object], repeat: int, warmup: int = 3,
                 batches: int = 5) -> float:
    """Time per call of fn(i) for i = 0, 1, ... (fn rotates its inputs by i): the median over
    `batches` of `repeat` back-to-back calls between two CUDA events, so that the GPU queue stays
    full and host launch overhead is hidden wherever the GPU is the bottleneck (as in a training
    step), not added to every call. Host clock on a CPU device."""
    for i in range(warmup):
        fn(i)
    on_cuda = DEVICE == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
    per_call = []
    for _ in range(batches):
        if not on_cuda:
            begin = time.perf_counter()
            for i in range(repeat):
                fn(i)
            per_call.append((time.perf_counter() - begin) * 1e3 / repeat)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(repeat):
            fn(i)
        end.record()
        end.synchronize()
        per_call.append(start.elapsed_time(end) / repeat)
    return statistics.median(per_call)


def graph_time_us(fn: Callable[[], object], replays: int = 200, batches: int = 5) -> float:
    """Time per replay of a CUDA graph that captured one call of fn (inputs static), in
    microseconds: the median over `batches` of `replays` back-to-back replays between two CUDA
    events. A graph replays the launches without their host cost, as a serving loop would (a
    decoding step is launch-bound in eager mode). Host clock per call on a CPU device."""
    if DEVICE != "cuda":
        begin = time.perf_counter()
        for _ in range(replays):
            fn()
        return (time.perf_counter() - begin) * 1e6 / replays
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture (allocations, compilation)
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    per_replay = []
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        per_replay.append(start.elapsed_time(end) * 1e3 / replays)
    return statistics.median(per_replay)


DECODE_ROWS: List[Tuple[str, float, float, float, float]] = []  # case, posenc, eager, compile, clone


def bench_decode() -> None:
    """One decoding step, (8, 1, 4096) bf16 and rotary of one token per sequence, as CUDA graph
    replays beside eager PyTorch, torch.compile of it and a clone of the same bytes."""
    dtype = torch.bfloat16
    B, D = 8, 4096 // SIZE
    x = torch.randn(B, 1, D, device=DEVICE, dtype=dtype)
    step = 1000  # the position being decoded
    positions = torch.randint(0, 4096, (B, 1), device=DEVICE)
    div = torch.exp(torch.arange(0, D, 2, device=DEVICE, dtype=torch.float32) *
                    (-math.log(10000.0) / D))
    table = torch.zeros(4096, D, device=DEVICE)
    table[:, 0::2] = torch.sin(torch.arange(4096, device=DEVICE)[:, None] * div)
    table[:, 1::2] = torch.cos(torch.arange(4096, device=DEVICE)[:, None] * div)
    table = table.to(dtype)

    def eager_offset(x: torch.Tensor) -> torch.Tensor:
        return x + table[step:step + 1]

    def eager_positions(x: torch.Tensor) -> torch.Tensor:
        return x + table[positions]

    cases = [
        (f"add_positional decode ({B}, 1, {D}) bf16, offset (one position)",
         lambda: posenc.add_positional(x, offset=step), eager_offset),
        (f"add_positional decode ({B}, 1, {D}) bf16, positions per sequence",
         lambda: posenc.add_positional(x, positions=positions), eager_positions),
    ]
    Hq, Hk, Dh = 32, 8, 128
    q = torch.randn(B, 1, Hq, Dh, device=DEVICE, dtype=dtype)
    k = torch.randn(B, 1, Hk, Dh, device=DEVICE, dtype=dtype)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, Dh, 2, device=DEVICE).float() / Dh))

    def rotate_half(t: torch.Tensor) -> torch.Tensor:
        return torch.cat((-t[..., Dh // 2:], t[..., : Dh // 2]), dim=-1)

    def hf_rotary(x: torch.Tensor):
        del x
        freqs = positions[..., None].float() * inv_freq  # [B, 1, Dh / 2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype)[:, :, None], emb.sin().to(dtype)[:, :, None]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    cases.append((f"rotary decode q ({B}, 1, {Hq}, {Dh}) k ({B}, 1, {Hk}, {Dh}) bf16",
                  lambda: posenc.rotary(q, k, positions=positions), hf_rotary))
    for case, ours, eager in cases:
        compiled = torch.compile(eager)
        times = (graph_time_us(ours), graph_time_us(lambda: eager(x)),
                 graph_time_us(lambda: compiled(x)), graph_time_us(lambda: x.clone()))
        DECODE_ROWS.append((case, *times))
        print(f"{case:<66} graph replay {times[0]:6.2f} us  eager {times[1]:6.2f}  compile "
              f"{times[2]:6.2f}  clone {times[3]:6.2f}", flush=True)


def profile_cases() -> None:
    """Each hot kernel a few times on its benchmark shape, untimed: for ncu
    (scripts/gpu_check.sh profiles the launches of this run)."""
    dtype = torch.bfloat16
    x = torch.randn(8, 4096 // SIZE, 4096 // SIZE, device=DEVICE, dtype=dtype)
    q = torch.randn(4, 4096 // SIZE, 32, 128, device=DEVICE, dtype=dtype)
    k = torch.randn(4, 4096 // SIZE, 8, 128, device=DEVICE, dtype=dtype)
    ids = torch.randint(0, 32000 // SIZE, (8, 2048 // SIZE), device=DEVICE)
    weight = torch.randn(32000 // SIZE, 1024 // SIZE, device=DEVICE, dtype=dtype)
    # transformers' layout: q, k of [B, heads, S, D] with cos/sin of [B, S, D].
    q_hf, k_hf = q.transpose(1, 2), k.transpose(1, 2)
    cos = torch.randn(4, 4096 // SIZE, 128, device=DEVICE, dtype=dtype)
    sin = torch.randn_like(cos)
    weight.requires_grad_()
    for _ in range(2):
        posenc.add_positional(x)
        posenc.add_positional(x, dropout=0.1)
        posenc.rotary(q, k)
        posenc.apply_rotary_pos_emb(q_hf, k_hf, cos, sin)
        posenc.embedding(ids, weight, dropout=0.1).sum().backward()  # the weight gradient
    if DEVICE == "cuda":
        torch.cuda.synchronize()


ROWS: List[Dict[str, object]] = []
DIAGNOSTICS: List[Tuple[str, float, float]] = []  # (case, ms, fraction of clone speed)


def record(case: str, moved_bytes: int, clone_bytes: int, times: Dict[str, float]) -> None:
    """One table row: posenc's time and GB/s, its bandwidth as a fraction of clone()'s (bytes per
    second against bytes per second, so passes that move more bytes than one clone compare
    fairly), and the speed-up over eager and compiled PyTorch."""
    ours = times["posenc"]
    gbps = moved_bytes / ours / 1e6
    clone_gbps = clone_bytes / times["clone"] / 1e6
    row = {"case": case, "posenc ms": ours, "GB/s": gbps, "of clone": gbps / clone_gbps,
           "x eager": times["eager"] / ours, "x compile": times["compile"] / ours}
    ROWS.append(row)
    print(f"{case:<62} {ours:8.3f} ms {gbps:7.0f} GB/s  {100 * row['of clone']:5.1f}% of clone  "
          f"eager x{row['x eager']:.2f}  compile x{row['x compile']:.2f}", flush=True)


def forward_backward(fn: Callable[..., object], inputs: Sequence[torch.Tensor],
                     grads: Sequence[torch.Tensor]) -> None:
    """One forward and the backward to inputs (torch.autograd.grad: no accumulation into .grad,
    which would add a read and a write that the operator does not do)."""
    outputs = fn(*inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.grad(outputs, inputs, grads)


def bench_add_positional(repeat: int, copies: int) -> None:
    dtype = torch.bfloat16
    B, T, D = 8, 4096 // SIZE, 4096 // SIZE
    xs = [torch.randn(B, T, D, device=DEVICE, dtype=dtype) for _ in range(copies)]
    leaves = [x.clone().requires_grad_() for x in xs]
    grad = torch.randn(B, T, D, device=DEVICE, dtype=dtype)
    position = torch.arange(T, device=DEVICE, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, D, 2, device=DEVICE, dtype=torch.float32) *
                    (-math.log(10000.0) / D))
    pe = torch.zeros(T, D, device=DEVICE)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    pe = pe.to(dtype)  # the tutorial's stored table, read on every call
    x_bytes = xs[0].numel() * xs[0].element_size()
    clone_ms = cuda_time_ms(lambda i: xs[i % copies].clone(), repeat)

    # Diagnostics: the same kernel without codes (the backward of "add" only scales), and with a
    # learned table read instead of codes evaluated; the gap to the first row is the codes'. Rows
    # D + 1 elements apart are not 16-byte aligned, so they take the general kernel instead of
    # the dense one.
    table = torch.randn(T, D, device=DEVICE, dtype=dtype)
    unaligned = torch.randn(B, T, D + 1, device=DEVICE, dtype=dtype)[..., :D]
    for name, fn in (
            ("add_positional_backward (same kernel, no codes)",
             lambda i: torch.ops.posenc.add_positional_backward(xs[i % copies])),
            ("add_positional, learned table", lambda i: posenc.add_positional(
                xs[i % copies], kind="learned", table=table)),
            ("add_positional, general kernel (unaligned rows)",
             lambda i: posenc.add_positional(unaligned))):
        ms = cuda_time_ms(fn, repeat)
        DIAGNOSTICS.append((f"{name} ({B}, {T}, {D}) bf16", ms, clone_ms / ms))
        print(f"{name:<62} {ms:8.3f} ms  {100 * clone_ms / ms:5.1f}% of clone", flush=True)

    for p in (0.0, 0.1):
        def eager(x: torch.Tensor, p: float = p) -> torch.Tensor:
            return F.dropout(x + pe, p=p, training=True)

        def ours(x: torch.Tensor, p: float = p) -> torch.Tensor:
            return posenc.add_positional(x, dropout=p)

        compiled = torch.compile(eager)
        shape = f"({B}, {T}, {D}) bf16 p={p}"
        record(f"add_positional fwd {shape}", 2 * x_bytes, 2 * x_bytes, {
            "posenc": cuda_time_ms(lambda i: ours(xs[i % copies]), repeat),
            "clone": clone_ms,
            "eager": cuda_time_ms(lambda i: eager(xs[i % copies]), repeat),
            "compile": cuda_time_ms(lambda i: compiled(xs[i % copies]), repeat)})
        record(f"add_positional fwd+bwd {shape}", 4 * x_bytes, 2 * x_bytes, {
            "posenc": cuda_time_ms(lambda i: forward_backward(ours, [leaves[i % copies]], [grad]),
                                   repeat),
            "clone": clone_ms,
            "eager": cuda_time_ms(lambda i: forward_backward(eager, [leaves[i % copies]], [grad]),
                                  repeat),
            "compile": cuda_time_ms(
                lambda i: forward_backward(compiled, [leaves[i % copies]], [grad]), repeat)})


def bench_rotary(repeat: int, copies: int) -> None:
    dtype = torch.bfloat16
    B, S, Hq, Hk, D = 4, 4096 // SIZE, 32, 8, 128
    qs = [torch.randn(B, S, Hq, D, device=DEVICE, dtype=dtype).requires_grad_()
          for _ in range(copies)]
    ks = [torch.randn(B, S, Hk, D, device=DEVICE, dtype=dtype).requires_grad_()
          for _ in range(copies)]
    gq, gk = torch.randn_like(qs[0]), torch.randn_like(ks[0])
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, device=DEVICE).float() / D))
    position_ids = torch.arange(S, device=DEVICE)[None].expand(B, S)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., D // 2:], x[..., : D // 2]), dim=-1)

    def hf(q: torch.Tensor, k: torch.Tensor):
        """transformers' Llama rotary: cos/sin tables in float32, then the rotate_half form."""
        freqs = (inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype)[:, :, None], emb.sin().to(dtype)[:, :, None]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    def ours(q: torch.Tensor, k: torch.Tensor):
        return posenc.rotary(q, k)

    compiled = torch.compile(hf)
    qk_bytes = (qs[0].numel() + ks[0].numel()) * qs[0].element_size()
    clone_ms = cuda_time_ms(lambda i: (qs[i % copies].detach().clone(),
                                       ks[i % copies].detach().clone()), repeat)
    shape = f"q ({B}, {S}, {Hq}, {D}) k ({B}, {S}, {Hk}, {D}) bf16"
    with torch.no_grad():
        record(f"rotary fwd {shape}", 2 * qk_bytes, 2 * qk_bytes, {
            "posenc": cuda_time_ms(lambda i: ours(qs[i % copies], ks[i % copies]), repeat),
            "clone": clone_ms,
            "eager": cuda_time_ms(lambda i: hf(qs[i % copies], ks[i % copies]), repeat),
            "compile": cuda_time_ms(lambda i: compiled(qs[i % copies], ks[i % copies]), repeat)})
    times = {"clone": clone_ms}
    for name, fn in (("posenc", ours), ("eager", hf), ("compile", compiled)):
        times[name] = cuda_time_ms(
            lambda i: forward_backward(fn, [qs[i % copies], ks[i % copies]], [gq, gk]), repeat)
    record(f"rotary fwd+bwd {shape}", 4 * qk_bytes, 2 * qk_bytes, times)

    # apply_rotary_pos_emb with given cos/sin (what the transformers patch calls), on transformers'
    # [B, heads, S, D] layout: q and k moved once, cos/sin read once per token.
    freqs = (inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)

    def hf_tables(q: torch.Tensor, k: torch.Tensor):
        c, s = cos[:, None], sin[:, None]
        return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s

    def ours_tables(q: torch.Tensor, k: torch.Tensor):
        return posenc.apply_rotary_pos_emb(q, k, cos, sin)

    compiled_tables = torch.compile(hf_tables)
    qs_t = [q.detach().transpose(1, 2).contiguous() for q in qs]
    ks_t = [k.detach().transpose(1, 2).contiguous() for k in ks]
    shape = f"q ({B}, {Hq}, {S}, {D}) k ({B}, {Hk}, {S}, {D}) bf16, cos/sin ({B}, {S}, {D})"
    with torch.no_grad():
        record(f"apply_rotary_pos_emb fwd {shape}", 2 * qk_bytes, 2 * qk_bytes, {
            "posenc": cuda_time_ms(lambda i: ours_tables(qs_t[i % copies], ks_t[i % copies]),
                                   repeat),
            "clone": clone_ms,
            "eager": cuda_time_ms(lambda i: hf_tables(qs_t[i % copies], ks_t[i % copies]), repeat),
            "compile": cuda_time_ms(
                lambda i: compiled_tables(qs_t[i % copies], ks_t[i % copies]), repeat)})


def bench_embedding(repeat: int, copies: int) -> None:
    dtype = torch.bfloat16
    B, T, V, D, p = 8, 2048 // SIZE, 32000 // SIZE, 1024 // SIZE, 0.1
    ids = [torch.randint(0, V, (B, T), device=DEVICE) for _ in range(copies)]
    weight = torch.randn(V, D, device=DEVICE, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, T, D, device=DEVICE, dtype=dtype)
    pe = posenc.positional_encoding(T, D, dtype=dtype, device=DEVICE)

    def eager(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.embedding(ids, weight) * math.sqrt(D) + pe, p=p, training=True)

    def ours(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return posenc.embedding(ids, weight, dropout=p)

    compiled = torch.compile(eager)
    out_bytes = B * T * D * 2
    forward_bytes = B * T * 8 + 2 * out_bytes  # ids, gathered rows, output
    out_like = torch.empty(B, T, D, device=DEVICE, dtype=dtype)
    clone_ms = cuda_time_ms(lambda i: out_like.clone(), repeat)
    shape = f"ids ({B}, {T}) V={V} D={D} bf16 p={p}"
    with torch.no_grad():
        record(f"embedding fwd {shape}", forward_bytes, 2 * out_bytes, {
            "posenc": cuda_time_ms(lambda i: ours(ids[i % copies], weight), repeat),
            "clone": clone_ms,
            "eager": cuda_time_ms(lambda i: eager(ids[i % copies], weight), repeat),
            "compile": cuda_time_ms(lambda i: compiled(ids[i % copies], weight), repeat)})
    # Backward: grad and ids read, a float32 [V, D] accumulator zeroed, updated and cast.
    backward_bytes = B * T * 8 + out_bytes + V * D * (4 * 2 + 2) + 2 * B * T * D * 4
    times = {"clone": clone_ms}
    for name, fn in (("posenc", ours), ("eager", eager), ("compile", compiled)):
        times[name] = cuda_time_ms(
            lambda i: torch.autograd.grad(fn(ids[i % copies], weight), [weight], [grad]), repeat)
    record(f"embedding fwd+bwd {shape}", forward_bytes + backward_bytes, 2 * out_bytes, times)


def exactness() -> str:
    """The largest error of the codes and of rotary against float64, positions below 2^24."""
    positions = torch.cat([torch.arange(2**24 - 4096, 2**24), torch.randint(0, 2**24, (4096,))])
    dim = 128
    angle = positions.double()[:, None] * 10000.0 ** (-2.0 * torch.arange(dim // 2).double() / dim)
    pe = posenc.positional_encoding(positions.to(DEVICE), dim).cpu().double()
    code_error = max((pe[:, 0::2] - angle.sin()).abs().max().item(),
                     (pe[:, 1::2] - angle.cos()).abs().max().item())
    q = torch.zeros(1, len(positions), 1, dim, device=DEVICE)
    q[..., : dim // 2] = 1.0
    out = posenc.rotary(q, positions=positions.to(DEVICE))[0, :, 0].cpu().double()
    rotary_error = max((out[:, : dim // 2] - angle.cos()).abs().max().item(),
                       (out[:, dim // 2:] - angle.sin()).abs().max().item())
    return (f"float32 exactness against float64 at {len(positions)} positions below 2^24 "
            f"(D = {dim}): positional_encoding max error {code_error:.2e}, rotary "
            f"{rotary_error:.2e}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20, help="back-to-back calls per batch")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the table as Markdown here")
    parser.add_argument("--small", action="store_true",
                        help="shapes divided by 16 and any device: checks this script itself")
    parser.add_argument("--profile", action="store_true",
                        help="only run each hot kernel a few times, untimed (for ncu)")
    args = parser.parse_args(argv)
    global DEVICE, SIZE
    if args.small:
        DEVICE, SIZE = ("cuda" if torch.cuda.is_available() else "cpu"), 16
    if args.profile:
        profile_cases()
        return
    started = time.time()
    name = (f"{torch.cuda.get_device_name(0)} "
            f"({torch.cuda.get_device_properties(0).multi_processor_count} SMs)"
            if DEVICE == "cuda" else "CPU (--small)")
    header = (f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}; per call: median "
              f"over 5 batches of {args.repeat} back-to-back calls after warm-up, inputs rotated "
              f"over {args.copies} copies")
    print(header, flush=True)
    exact = exactness()
    print(exact, flush=True)
    # The target shapes first, so that a time limit cuts the least important rows.
    bench_add_positional(args.repeat, args.copies)
    bench_rotary(args.repeat, args.copies)
    bench_embedding(args.repeat, args.copies)
    bench_decode()
    lines = [header, "", exact, "",
             "| case | posenc ms | GB/s | % of clone bandwidth | x eager | x torch.compile |",
             "|---|---|---|---|---|---|"]
    for row in ROWS:
        lines.append(f"| {row['case']} | {row['posenc ms']:.3f} | {row['GB/s']:.0f} | "
                     f"{100 * row['of clone']:.1f}% | {row['x eager']:.2f} | "
                     f"{row['x compile']:.2f} |")
    if DECODE_ROWS:
        lines += ["", "Decoding steps as CUDA graph replays (median per replay, microseconds):", "",
                  "| case | posenc us | eager us | torch.compile us | clone us |",
                  "|---|---|---|---|---|"]
        lines += [f"| {case} | {ours:.2f} | {eager:.2f} | {compiled:.2f} | {clone:.2f} |"
                  for case, ours, eager, compiled, clone in DECODE_ROWS]
    if DIAGNOSTICS:
        lines += ["", "| diagnostic | ms | % of clone speed |", "|---|---|---|"]
        lines += [f"| {case} | {ms:.3f} | {100 * fraction:.1f}% |"
                  for case, ms, fraction in DIAGNOSTICS]
    table = "\n".join(lines)
    print("\n" + table + f"\n\n(benchmark ran {time.time() - started:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
