"""The bandwidth model of the CUDA operators: the bytes each one must move (read once, written
once; dropout masks are regenerated, never stored) and the time moving them takes at a given
memory bandwidth (4 TB/s by default, an H200 at about 85% of its 4.8 TB/s peak). A kernel that
reaches this time is bandwidth-bound; `bench_gpu.py` measures the real times next to clone().

    python benchmarks/bandwidth_model.py [--tbps 4.0]
"""

from __future__ import annotations

import argparse
from typing import List, Tuple

BF16, F32, I64 = 2, 4, 8


def rows() -> List[Tuple[str, str, int]]:
    """(operator, shape and pass, bytes moved)."""
    result = []
    b, t, d = 8, 4096, 4096
    x = b * t * d * BF16
    result.append(("x.clone()", f"({b}, {t}, {d}) bf16", 2 * x))
    result.append(("add_positional", f"({b}, {t}, {d}) bf16 forward", 2 * x))
    result.append(("add_positional", f"({b}, {t}, {d}) bf16 forward + backward", 4 * x))
    # A learned table: read once in the forward (rows shared by the batch); its gradient reads
    # grad again and zeroes, accumulates and casts a float32 [P, D] buffer.
    result.append(("add_positional, learned", f"({b}, {t}, {d}) bf16 forward + backward, "
                   f"table ({t}, {d})",
                   5 * x + t * d * BF16 + t * d * (F32 * 3 + BF16)))
    bt, vocab, dim = 8 * 2048, 32000, 1024
    gathered = bt * dim * BF16
    result.append(("embedding", f"ids (8, 2048), V={vocab}, D={dim} bf16 forward",
                   bt * I64 + 2 * gathered))
    # Backward: read grad and ids, a float32 [V, D] accumulator zeroed, updated and cast.
    result.append(("embedding", "backward (weight gradient)",
                   bt * I64 + gathered + vocab * dim * (F32 * 2 + BF16) + 2 * bt * dim * F32))
    q, k = 4 * 4096 * 32 * 128 * BF16, 4 * 4096 * 8 * 128 * BF16
    result.append(("rotary", "q (4, 4096, 32, 128), k (4, 4096, 8, 128) bf16 forward",
                   2 * (q + k)))
    result.append(("rotary", "the same, forward + backward", 4 * (q + k)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tbps", type=float, default=4.0, help="memory bandwidth in TB/s")
    args = parser.parse_args()
    print(f"| operator | shape, pass | bytes moved | time at {args.tbps:g} TB/s |")
    print("|---|---|---|---|")
    for name, shape, moved in rows():
        micros = moved / (args.tbps * 1e12) * 1e6
        print(f"| {name} | {shape} | {moved / 2**20:,.0f} MiB | {micros:,.1f} us |")


if __name__ == "__main__":
    main()
