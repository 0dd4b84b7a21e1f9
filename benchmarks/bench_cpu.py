"""CPU benchmarks: posenc against eager PyTorch, torch.compile of the same eager code, and
x.clone() (the memory floor), all timed in this one run. Prints times and ratios; not a test.

    make bench                      # every benchmark
    make bench BENCH_ARGS="--only add_positional --repeat 20"
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

import posenc


def timeit(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    """Median wall time in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def report(title: str, rows: Dict[str, float], ours: str, floor: str) -> None:
    print(f"\n{title}")
    print(f"  {'variant':<34}{'ms':>10}{'ours is x faster':>18}")
    for name, ms in rows.items():
        print(f"  {name:<34}{ms:>10.2f}{rows[name] / rows[ours]:>18.2f}")
    print(f"  posenc speed / clone speed: {rows[floor] / rows[ours]:.2f}")


def bench_add_positional(repeat: int) -> None:
    B, T, D, p = 8, 2048, 1024, 0.1
    x = torch.randn(B, T, D)
    pe = sinusoidal_table(T, D)

    def eager(x: torch.Tensor, p: float) -> torch.Tensor:
        return F.dropout(x * 1.0 + pe[:T], p=p, training=True)

    compiled = torch.compile(eager)
    for p_case in (p, 0.0):
        rows = {
            "posenc.add_positional": timeit(lambda: posenc.add_positional(x, dropout=p_case), repeat),
            "eager (pe buffer + F.dropout)": timeit(lambda: eager(x, p_case), repeat),
            "torch.compile(eager)": timeit(lambda: compiled(x, p_case), repeat),
            "x.clone()": timeit(lambda: x.clone(), repeat),
        }
        report(f"add_positional forward, x=({B}, {T}, {D}) float32, training, p={p_case}, "
               f"threads={torch.get_num_threads()}", rows, "posenc.add_positional", "x.clone()")


BENCHMARKS = {"add_positional": bench_add_positional}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.only or BENCHMARKS:
        BENCHMARKS[name](args.repeat)


if __name__ == "__main__":
    main()
