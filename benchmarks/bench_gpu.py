"""GPU benchmarks (scripts/gpu_check.sh runs them): each operator next to a clone of the same
bytes (the copy-bandwidth floor), eager PyTorch and torch.compile of the eager code, timed with
CUDA events in one run: median of many repetitions after warm-up, inputs rotated over several
copies so that caches don't flatter. Prints a table and writes it as Markdown to --out."""

from __future__ import annotations

import argparse
import math
import statistics
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F

import posenc


def cuda_time_ms(fn: Callable[[int], object], repeat: int, warmup: int = 5) -> float:
    """Median time of fn(i) for i = 0, 1, ... (fn rotates its inputs by i)."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for i in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rotated(make: Callable[[], torch.Tensor], copies: int) -> List[torch.Tensor]:
    return [make() for _ in range(copies)]


ROWS: List[Dict[str, object]] = []


def record(case: str, times: Dict[str, float], ours: str, floor: str, eager: str,
           compiled: str) -> None:
    row = {
        "case": case,
        "posenc ms": times[ours],
        "clone ms": times[floor],
        "bandwidth vs clone": times[floor] / times[ours],
        "x eager": times[eager] / times[ours],
        "x compile": times[compiled] / times[ours],
    }
    ROWS.append(row)
    print(f"{case:<48} posenc {times[ours]:8.3f} ms  clone {times[floor]:8.3f} ms  "
          f"bw {row['bandwidth vs clone']:.2f}  eager x{row['x eager']:.2f}  "
          f"compile x{row['x compile']:.2f}", flush=True)


def bench_add_positional(dtype: torch.dtype, repeat: int, copies: int) -> None:
    B, T, D, p = 8, 2048, 1024, 0.1
    xs = rotated(lambda: torch.randn(B, T, D, device="cuda", dtype=dtype), copies)
    position = torch.arange(T, device="cuda", dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, D, 2, device="cuda", dtype=torch.float32) *
                    (-math.log(10000.0) / D))
    pe = torch.zeros(T, D, device="cuda")
    pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
    pe = pe.to(dtype)

    def eager(x: torch.Tensor, p: float) -> torch.Tensor:
        return F.dropout(x + pe, p=p, training=True)

    compiled = torch.compile(eager)
    for p_case in (p, 0.0):
        times = {
            "ours": cuda_time_ms(lambda i: posenc.add_positional(xs[i % copies], dropout=p_case), repeat),
            "clone": cuda_time_ms(lambda i: xs[i % copies].clone(), repeat),
            "eager": cuda_time_ms(lambda i: eager(xs[i % copies], p_case), repeat),
            "compiled": cuda_time_ms(lambda i: compiled(xs[i % copies], p_case), repeat),
        }
        record(f"add_positional fwd {tuple(xs[0].shape)} {dtype} p={p_case}", times, "ours",
               "clone", "eager", "compiled")


def bench_embedding(dtype: torch.dtype, repeat: int, copies: int) -> None:
    B, T, V, D, p = 8, 2048, 32000, 1024, 0.1
    ids = rotated(lambda: torch.randint(0, V, (B, T), device="cuda"), copies)
    weight = torch.randn(V, D, device="cuda", dtype=dtype)
    pe = posenc.positional_encoding(T, D, dtype=dtype, device="cuda")
    out_like = torch.empty(B, T, D, device="cuda", dtype=dtype)

    def eager(ids: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.embedding(ids, weight) * math.sqrt(D) + pe, p=p, training=True)

    compiled = torch.compile(eager)
    times = {
        "ours": cuda_time_ms(lambda i: posenc.embedding(ids[i % copies], weight, dropout=p), repeat),
        "clone": cuda_time_ms(lambda i: out_like.clone(), repeat),
        "eager": cuda_time_ms(lambda i: eager(ids[i % copies]), repeat),
        "compiled": cuda_time_ms(lambda i: compiled(ids[i % copies]), repeat),
    }
    record(f"embedding fwd ids=({B}, {T}) V={V} D={D} {dtype}", times, "ours", "clone", "eager",
           "compiled")


def bench_rotary(dtype: torch.dtype, repeat: int, copies: int) -> None:
    B, S, Hq, Hk, D = 4, 2048, 32, 8, 128
    qs = rotated(lambda: torch.randn(B, S, Hq, D, device="cuda", dtype=dtype), copies)
    ks = rotated(lambda: torch.randn(B, S, Hk, D, device="cuda", dtype=dtype), copies)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, device="cuda").float() / D))
    position_ids = torch.arange(S, device="cuda")[None].expand(B, S)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., D // 2:], x[..., : D // 2]), dim=-1)

    def hf(q: torch.Tensor, k: torch.Tensor):
        freqs = (inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype)[:, :, None], emb.sin().to(dtype)[:, :, None]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    compiled = torch.compile(hf)
    times = {
        "ours": cuda_time_ms(lambda i: posenc.rotary(qs[i % copies], ks[i % copies]), repeat),
        "clone": cuda_time_ms(lambda i: (qs[i % copies].clone(), ks[i % copies].clone()), repeat),
        "eager": cuda_time_ms(lambda i: hf(qs[i % copies], ks[i % copies]), repeat),
        "compiled": cuda_time_ms(lambda i: compiled(qs[i % copies], ks[i % copies]), repeat),
    }
    record(f"rotary fwd q=({B}, {S}, {Hq}, {D}) k=({B}, {S}, {Hk}, {D}) {dtype}", times, "ours",
           "clone", "eager", "compiled")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the table as Markdown here")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    for dtype in (torch.float32, torch.bfloat16):
        bench_add_positional(dtype, args.repeat, args.copies)
        bench_embedding(dtype, args.repeat, args.copies)
        bench_rotary(dtype, args.repeat, args.copies)
    header = "| case | posenc ms | clone ms | bandwidth vs clone | x eager | x compile |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in ROWS:
        lines.append(f"| {row['case']} | {row['posenc ms']:.3f} | {row['clone ms']:.3f} | "
                     f"{row['bandwidth vs clone']:.2f} | {row['x eager']:.2f} | "
                     f"{row['x compile']:.2f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
