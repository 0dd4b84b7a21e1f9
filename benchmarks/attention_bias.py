"""Attention-level position codes on the CPU: posenc.attention_bias against the baselines users
run, each timed in turns in one run (ratios = baseline time / posenc time, above 1: posenc is
faster), and the peak memory each needs (measured: the growth of a fresh child process's peak
resident set over one call, Linux). Not a test.

  t5         transformers' T5Attention.compute_bias (eager, and torch.compile of it) against
             posenc.attention_bias(kind="t5"), forward and forward + backward into the table
  alibi      the eager construction -slopes * |j - i| with a causal -inf mask (as ALiBi models
             build it per call) against posenc.attention_bias(kind="alibi", causal=True)
  attention  FlexAttention with posenc.flex.score_mod against SDPA with posenc's bias, T5
             (both compiled as users run them: flex_attention under torch.compile)

    make bench-attention-bias
    python benchmarks/attention_bias.py --seq 512 2048 --parts t5 alibi
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict

import torch

import posenc

HEADS = 12  # T5-base
HEAD_DIM = 64


def t5_layer(dtype: torch.dtype):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention

    config = T5Config(d_model=HEADS * HEAD_DIM, d_kv=HEAD_DIM, num_heads=HEADS)
    return T5Attention(config, has_relative_attention_bias=True).to(dtype)


def variants(part: str, T: int, dtype: torch.dtype) -> Dict[str, Callable[[], object]]:
    if part in ("t5", "t5_bwd"):
        layer = t5_layer(dtype)
        weight = layer.relative_attention_bias.weight
        compiled = torch.compile(layer.compute_bias)
        grad = torch.randn(1, HEADS, T, T, dtype=dtype)
        forward = {
            "posenc": lambda: posenc.attention_bias(weight, T, T, kind="t5"),
            "eager": lambda: layer.compute_bias(T, T),
            "compile": lambda: compiled(T, T),
        }
        if part == "t5":
            return {name: (lambda f=f: torch.no_grad()(f)()) for name, f in forward.items()}

        def step(f: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                weight.grad = None
                f().backward(grad)
            return run

        return {name: step(f) for name, f in forward.items()}
    if part == "alibi":
        slopes = posenc.alibi_slopes(HEADS).to(dtype)

        def eager() -> torch.Tensor:
            position = torch.arange(T)
            distance = (position[None, :] - position[:, None]).to(dtype)
            bias = -slopes[:, None, None] * distance.abs()[None]
            return bias.masked_fill(distance[None] > 0, float("-inf"))[None]

        compiled = torch.compile(eager)
        return {
            "posenc": lambda: posenc.attention_bias(slopes, T, T, kind="alibi", causal=True),
            "eager": eager,
            "compile": compiled,
        }
    if part == "attention":
        from torch.nn.attention.flex_attention import flex_attention

        table = t5_layer(dtype).relative_attention_bias.weight.detach()
        q, k, v = (torch.randn(1, HEADS, T, HEAD_DIM, dtype=dtype) for _ in range(3))
        flex = torch.compile(flex_attention)
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def with_bias() -> torch.Tensor:
            return sdpa(q, k, v, attn_mask=posenc.attention_bias(table, T, T, kind="t5"))

        def with_flex() -> torch.Tensor:
            return flex(q, k, v, score_mod=posenc.flex.score_mod(table, T, T, kind="t5"))

        return {"posenc": with_bias, "flex": with_flex}
    raise ValueError(part)


def time_in_turns(fns: Dict[str, Callable[[], object]], budget: float) -> Dict[str, list]:
    for f in fns.values():  # warm up (and compile)
        f()
        f()
    times: Dict[str, list] = {name: [] for name in fns}
    start = time.perf_counter()
    while time.perf_counter() - start < budget or len(times["posenc"]) < 5:
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return times


def peak_memory(part: str, T: int, dtype: str, name: str) -> float:
    """MiB the variant adds to a fresh child process's peak resident set (setup, compilation and
    warm-up excluded): the child resets its high-water mark after a first call, and allocations
    of 64 KiB and more are mapped and unmapped, so that freed memory leaves the resident set."""
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run(
        [sys.executable, __file__, "--child", part, str(T), dtype, name],
        capture_output=True, text=True, check=True, env=environment)
    return float(result.stdout.strip().splitlines()[-1])


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(part: str, T: int, dtype: str, name: str) -> None:
    f = variants(part, T, getattr(torch, dtype))[name]
    f()  # compile, and allocate what every call keeps
    gc.collect()
    before = resident_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM, the peak resident set, to the current one
    f()
    print((resident_kib("VmHWM") - before) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["t5", "t5_bwd", "alibi", "attention"],
                        choices=["t5", "t5_bwd", "alibi", "attention"])
    parser.add_argument("--seq", nargs="+", type=int, default=[512, 2048, 8192])
    parser.add_argument("--attention-seq", nargs="+", type=int, default=[512, 2048],
                        help="T for the attention part (SDPA at T = 8192 takes seconds per call)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of turns per cell")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        part, T, dtype_name, name = args.child
        child(part, int(T), dtype_name, name)
        return
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"H = {HEADS}")
    print("| part | T | posenc ms | baseline | ratio (median) [IQR] | posenc MiB | baseline MiB |")
    print("|---|---|---|---|---|---|---|")
    for part in args.parts:
        for T in (args.attention_seq if part == "attention" else args.seq):
            fns = variants(part, T, dtype)
            times = time_in_turns(fns, args.budget)
            ours = times["posenc"]
            for name, baseline in times.items():
                if name == "posenc":
                    continue
                ratios = sorted(b / o for b, o in zip(baseline, ours))
                q1, median, q3 = (statistics.quantiles(ratios, n=4) if len(ratios) > 1
                                  else (ratios[0],) * 3)
                memory = ("", "")
                if args.memory:
                    memory = (f"{peak_memory(part, T, args.dtype, 'posenc'):.0f}",
                              f"{peak_memory(part, T, args.dtype, name):.0f}")
                print(f"| {part} | {T} | {statistics.median(ours) * 1e3:.2f} | {name} | "
                      f"{median:.2f}x [{q1:.2f}, {q3:.2f}] | {memory[0]} | {memory[1]} |",
                      flush=True)


if __name__ == "__main__":
    main()
