"""The CPU performance envelope: posenc against eager PyTorch and torch.compile of the same eager
code over a grid of shapes, each cell's variants timed in turns in one run. Not a test.

Cells: batch B, sequence T (T = 1 is a decoding step at offset 1000), model width D, dtype,
dropout p (0: inference, under torch.inference_mode; 0.1: training), and memory:
  fresh   large outputs come from fresh pages (glibc's default: allocations above its mmap
          threshold are mapped on each call and fault in at their first writes);
  reused  every output comes from memory freed by an earlier call and still resident (this
          process is re-run with MALLOC_MMAP_MAX_=0 and a huge MALLOC_TRIM_THRESHOLD_).
Operators (eager baselines as their published recipes):
  add_positional           F.dropout(x + pe[offset:offset + T]) with a stored sinusoidal table
  embedding, embedding_bwd F.dropout(F.embedding(ids, w) * sqrt(D) + pe[:T]), V = 32000;
                           _bwd: forward + backward into w
  rotary_bshd, rotary_bhsd transformers' Llama rotary (cos/sin per call, rotate_half), heads of
  (+ _bwd)                 128 (D / 128 query heads, a quarter as many key heads)
  patch                    MAE/DiT: F.dropout(x + pos_embed), a stored 2D sin-cos table of a
                           cls token and side x side patches (--sides; T = 1 + side^2), against
                           posenc.nn.PatchPositionalEncoding
Each cell reports eager / posenc and compile / posenc (above 1: posenc is faster), with the
spread of the per-round ratios (interquartile range); a cell whose range contains 1 is a tie.
Cells whose tensors exceed --max-elements are skipped (reported as such).

    make bench-envelope                                    # the default grid, both memories
    python benchmarks/envelope.py --ops add_positional --batch 1 8 --seq 1 2048 --dim 1024
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import posenc

# Every cell of a compiled function may recompile once before its shapes go dynamic.
torch._dynamo.config.recompile_limit = 1024
torch._dynamo.config.accumulated_recompile_limit = 1 << 16

OPS = ("add_positional", "embedding", "embedding_bwd", "rotary_bshd", "rotary_bhsd",
       "rotary_bshd_bwd", "rotary_bhsd_bwd", "patch")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DECODE_OFFSET = 1000
VOCAB = 32000
HEAD_DIM = 128


def sinusoidal_table(rows: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The Transformer's table as tutorials store it: float32 sin/cos, cast to the model dtype."""
    position = torch.arange(rows, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(rows, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.to(dtype)


class Cell:
    """One operator at one shape: its three variants as zero-argument callables."""

    def __init__(self, op: str, B: int, T: int, D: int, dtype: torch.dtype, p: float):
        self.op, self.B, self.T, self.D, self.dtype, self.p = op, B, T, D, dtype, p
        self.offset = DECODE_OFFSET if T == 1 else 0
        self.training = p > 0

    def key(self) -> str:
        """One compiled function per operator, pass, dtype and dropout: shapes vary within it
        (torch.compile makes them dynamic after the second, as for any user), grad modes and
        closures do not."""
        return f"{self.op} {self.dtype} {self.p} {self.D}"

    def elements(self) -> int:
        """The largest tensor's elements (rotary: q)."""
        return self.B * self.T * self.D

    def build(self, compiled: Dict[str, Callable]) -> Dict[str, Callable[[], object]]:
        family = self.op.split("_")[0]
        builders = {"add": self._add, "embedding": self._embedding, "rotary": self._rotary,
                    "patch": self._patch}
        return builders[family](compiled)

    # ---- add_positional ----
    def _add(self, compiled: Dict[str, Callable]) -> Dict[str, Callable[[], object]]:
        x = torch.randn(self.B, self.T, self.D, dtype=self.dtype)
        pe = sinusoidal_table(self.offset + self.T, self.D, self.dtype)
        p, training, offset, T = self.p, self.training, self.offset, self.T

        def eager(x: torch.Tensor, pe: torch.Tensor, offset: int, T: int) -> torch.Tensor:
            return F.dropout(x + pe[offset:offset + T], p=p, training=training)

        fn = compiled.setdefault(self.key(), torch.compile(eager))
        return {
            "posenc": lambda: posenc.add_positional(x, offset=offset, dropout=p,
                                                    training=training),
            "eager": lambda: eager(x, pe, offset, T),
            "compile": lambda: fn(x, pe, offset, T),
        }

    # ---- patch ----
    def _patch(self, compiled: Dict[str, Callable]) -> Dict[str, Callable[[], object]]:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
        from references import dit_2d_sincos_pos_embed

        from posenc.nn import PatchPositionalEncoding

        side = math.isqrt(self.T - 1)
        x = torch.randn(self.B, self.T, self.D, dtype=self.dtype)
        pos_embed = dit_2d_sincos_pos_embed(self.D, side, cls_token=True, extra_tokens=1)
        pos_embed = pos_embed.to(self.dtype)[None]
        module = PatchPositionalEncoding(self.D, side, extra_tokens=1, dropout=self.p)
        module.train(self.training)
        p, training = self.p, self.training

        def eager(x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
            return F.dropout(x + pos_embed, p=p, training=training)

        fn = compiled.setdefault(self.key(), torch.compile(eager))
        return {
            "posenc": lambda: module(x),
            "eager": lambda: eager(x, pos_embed),
            "compile": lambda: fn(x, pos_embed),
        }

    # ---- embedding ----
    def _embedding(self, compiled: Dict[str, Callable]) -> Dict[str, Callable[[], object]]:
        backward = self.op.endswith("_bwd")
        ids = torch.randint(0, VOCAB, (self.B, self.T))
        weight = torch.randn(VOCAB, self.D, dtype=self.dtype, requires_grad=backward)
        pe = sinusoidal_table(self.T, self.D, self.dtype)
        grad = torch.randn(self.B, self.T, self.D, dtype=self.dtype)
        p, training, scale = self.p, self.training, math.sqrt(self.D)

        def eager(ids: torch.Tensor, weight: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
            return F.dropout(F.embedding(ids, weight) * scale + pe, p=p, training=training)

        fn = compiled.setdefault(self.key(), torch.compile(eager))
        variants = {
            "posenc": lambda: posenc.embedding(ids, weight, dropout=p, training=training),
            "eager": lambda: eager(ids, weight, pe),
            "compile": lambda: fn(ids, weight, pe),
        }
        if not backward:
            return variants

        def step(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                weight.grad = None
                forward().backward(grad)
            return run

        return {name: step(forward) for name, forward in variants.items()}

    # ---- rotary ----
    def _rotary(self, compiled: Dict[str, Callable]) -> Dict[str, Callable[[], object]]:
        backward = self.op.endswith("_bwd")
        bhsd = "bhsd" in self.op
        heads = max(1, self.D // HEAD_DIM)
        k_heads = max(1, heads // 4)
        B, T = self.B, self.T

        def make(h: int) -> torch.Tensor:
            shape = (B, h, T, HEAD_DIM) if bhsd else (B, T, h, HEAD_DIM)
            return torch.randn(shape, dtype=self.dtype, requires_grad=backward)

        q, k = make(heads), make(k_heads)
        gq, gk = torch.randn_like(q), torch.randn_like(k)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
        position_ids = (torch.arange(T) + self.offset)[None].expand(B, T)
        unsqueeze = 1 if bhsd else 2
        half = HEAD_DIM // 2

        def rotate_half(x: torch.Tensor) -> torch.Tensor:
            return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

        def eager(q: torch.Tensor, k: torch.Tensor, position_ids: torch.Tensor):
            freqs = (inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos().to(q.dtype).unsqueeze(unsqueeze)
            sin = emb.sin().to(q.dtype).unsqueeze(unsqueeze)
            return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

        fn = compiled.setdefault(self.key(), torch.compile(eager))
        layout = "bhsd" if bhsd else "bshd"
        offset = self.offset
        variants = {
            "posenc": lambda: posenc.rotary(q, k, offset=offset, layout=layout),
            "eager": lambda: eager(q, k, position_ids),
            "compile": lambda: fn(q, k, position_ids),
        }
        if not backward:
            return variants

        def step(forward: Callable[[], Tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
            def run() -> None:
                torch.autograd.backward(forward(), (gq, gk))
            return run

        return {name: step(forward) for name, forward in variants.items()}


def time_cell(variants: Dict[str, Callable[[], object]], budget_s: float
              ) -> Dict[str, Tuple[float, float, float]]:
    """Per baseline: (median, lower quartile, upper quartile) of the per-round ratio baseline
    time / posenc time, the variants taking turns call by call. Rounds: as many as fit in
    budget_s (at least 5, at most 2000), after two warm-up rounds."""
    for _ in range(2):
        for fn in variants.values():
            fn()
    start = time.perf_counter()
    for fn in variants.values():
        fn()
    per_round = max(time.perf_counter() - start, 1e-7)
    rounds = int(min(2000, max(5, budget_s / per_round)))
    samples: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    result = {"posenc_us": (statistics.median(samples["posenc"]) * 1e6,) * 3}
    for baseline in ("eager", "compile"):
        ratios = sorted(b / o for b, o in zip(samples[baseline], samples["posenc"]))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        result[baseline] = (statistics.median(ratios), quartiles[0], quartiles[-1])
    return result


def sweep(args: argparse.Namespace) -> List[Dict[str, object]]:
    rows: List[Dict[str, object]] = []
    compiled: Dict[str, Callable] = {}
    for op in args.ops:
        dropouts = args.dropout if op.startswith(("add", "embedding", "patch")) else [0.0]
        seqs = [1 + side * side for side in args.sides] if op == "patch" else args.seq
        for dtype_name in args.dtype:
            for p in dropouts:
                for B in args.batch:
                    for T in seqs:
                        for D in args.dim:
                            cell = Cell(op, B, T, D, DTYPES[dtype_name], p)
                            row: Dict[str, object] = dict(op=op, B=B, T=T, D=D, dtype=dtype_name,
                                                          p=p, memory=args.memory)
                            if cell.elements() > args.max_elements:
                                row["skipped"] = f"over {args.max_elements} elements"
                                rows.append(row)
                                continue
                            guard = torch.inference_mode() if p == 0 and not op.endswith("_bwd") \
                                else torch.enable_grad()
                            with guard:
                                variants = cell.build(compiled)
                                row.update(time_cell(variants, args.budget))
                            del variants
                            rows.append(row)
                            print(format_row(row), flush=True)
    return rows


def format_row(row: Dict[str, object]) -> str:
    head = (f"{row['op']:<16} {row['dtype']:<8} p={row['p']:<4} {row['memory']:<6} "
            f"B={row['B']:<3} T={row['T']:<6} D={row['D']:<5}")
    if "skipped" in row:
        return f"{head} skipped ({row['skipped']})"
    cells = []
    for baseline in ("eager", "compile"):
        median, low, high = row[baseline]
        tie = " tie" if low <= 1.0 <= high else ""
        cells.append(f"{baseline} {median:5.2f}x [{low:.2f}, {high:.2f}]{tie}")
    return f"{head} posenc {row['posenc_us'][0]:10.1f} us  " + "  ".join(cells)


def child_environment(memory: str) -> Dict[str, str]:
    env = dict(os.environ)
    if memory == "reused":
        env["MALLOC_MMAP_MAX_"] = "0"  # no mmap: every block comes from the heap...
        env["MALLOC_TRIM_THRESHOLD_"] = str(1 << 40)  # ...and stays there when freed
        env["MALLOC_TOP_PAD_"] = str(64 << 20)
    return env


def markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["| op | dtype | p | memory | B | T | D | posenc us | vs eager [IQR] | "
             "vs compile [IQR] |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        head = (f"| {row['op']} | {row['dtype']} | {row['p']} | {row['memory']} | {row['B']} | "
                f"{row['T']} | {row['D']} |")
        if "skipped" in row:
            lines.append(f"{head} skipped ({row['skipped']}) | | |")
            continue
        cells = []
        for baseline in ("eager", "compile"):
            median, low, high = row[baseline]
            cells.append(f"{median:.2f}x [{low:.2f}, {high:.2f}] {verdict(row, baseline)}")
        lines.append(f"{head} {row['posenc_us'][0]:.1f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def verdict(row: Dict[str, object], baseline: str) -> str:
    median, low, high = row[baseline]
    return "tie" if low <= 1.0 <= high else ("win" if median > 1 else "loss")


def summary(rows: List[Dict[str, object]]) -> str:
    """Per (op, dtype, p, memory): the cells won, tied and lost against each baseline, and the
    range of the ratios."""
    groups: Dict[Tuple, List[Dict[str, object]]] = {}
    for row in rows:
        if "skipped" not in row:
            groups.setdefault((row["op"], row["dtype"], row["p"], row["memory"]), []).append(row)
    lines = ["| op | dtype | p | memory | cells | vs eager: win / tie / loss (range) | "
             "vs compile: win / tie / loss (range) |", "|---|---|---|---|---|---|---|"]
    for key in sorted(groups):
        cells = groups[key]
        parts = []
        for baseline in ("eager", "compile"):
            counts = [sum(verdict(c, baseline) == v for c in cells) for v in ("win", "tie", "loss")]
            ratios = [c[baseline][0] for c in cells]
            parts.append(f"{counts[0]} / {counts[1]} / {counts[2]} "
                         f"({min(ratios):.2f}-{max(ratios):.2f}x)")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(cells)} | {parts[0]} | "
                     f"{parts[1]} |")
    return "\n".join(lines) + "\n"


def heat_map(rows: List[Dict[str, object]], path: str) -> None:
    """One panel per (op, dtype, p, memory): rows (B, T), columns D, colour the smaller of the
    two ratios (log scale; red: posenc slower than a baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    panels: Dict[Tuple, List[Dict[str, object]]] = {}
    for row in rows:
        panels.setdefault((row["op"], row["dtype"], row["p"], row["memory"]), []).append(row)
    columns = 4
    count = len(panels)
    figure, axes = plt.subplots((count + columns - 1) // columns, columns,
                                figsize=(4.6 * columns, 3.8 * ((count + columns - 1) // columns)),
                                squeeze=False, layout="constrained")
    norm = LogNorm(vmin=0.25, vmax=4.0)
    image = None
    for axis, (key, cells) in zip(axes.flat, sorted(panels.items())):
        shapes = sorted({(c["B"], c["T"]) for c in cells})
        dims = sorted({c["D"] for c in cells})
        grid = [[float("nan")] * len(dims) for _ in shapes]
        for c in cells:
            if "skipped" not in c:
                grid[shapes.index((c["B"], c["T"]))][dims.index(c["D"])] = min(
                    c["eager"][0], c["compile"][0])
        image = axis.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        axis.set_xticks(range(len(dims)), [str(d) for d in dims])
        axis.set_yticks(range(len(shapes)), [f"B{b} T{t}" for b, t in shapes], fontsize=6)
        axis.set_title(f"{key[0]} {key[1]} p={key[2]} {key[3]}", fontsize=8)
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                if not math.isnan(value):
                    axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5)
    for axis in list(axes.flat)[count:]:
        axis.axis("off")
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.6,
                        label="min(eager, compile) time / posenc time")
    figure.savefig(path, dpi=72)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--seq", nargs="+", type=int, default=[1, 16, 128, 512, 2048, 16384])
    parser.add_argument("--dim", nargs="+", type=int, default=[256, 768, 1024, 4096])
    parser.add_argument("--sides", nargs="+", type=int, default=[14, 16, 32],
                        help="patch grids side x side (op patch)")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES),
                        default=["float32", "bfloat16"])
    parser.add_argument("--dropout", nargs="+", type=float, default=[0.0, 0.1])
    parser.add_argument("--memory", choices=("fresh", "reused", "both"), default="both")
    parser.add_argument("--budget", type=float, default=0.4,
                        help="seconds of timed rounds per cell (at least 5 rounds)")
    parser.add_argument("--max-elements", type=int, default=1 << 25,
                        help="skip cells whose largest tensor has more elements")
    parser.add_argument("--json", default=None, help="append the rows, as JSON lines, here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--png", default=None, help="write the heat map here")
    parser.add_argument("--summary", default=None, help="write the win/tie/loss counts here")
    parser.add_argument("--from-json", nargs="+", default=None,
                        help="no timing: the outputs from rows saved by earlier runs")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.from_json:
        rows = []
        for path in args.from_json:
            with open(path) as lines:
                rows += [json.loads(line) for line in lines]
    elif args.memory == "both":
        # Each memory mode in its own process: the allocator's settings are read at start.
        rows: List[Dict[str, object]] = []
        for memory in ("fresh", "reused"):
            out = f"{args.json or 'envelope'}.{memory}.jsonl"
            if os.path.exists(out):
                os.remove(out)
            child = [sys.executable, os.path.abspath(__file__), "--memory", memory, "--json", out]
            for name in ("ops", "batch", "seq", "dim", "sides", "dtype", "dropout"):
                child += [f"--{name}"] + [str(v) for v in getattr(args, name)]
            child += ["--budget", str(args.budget), "--max-elements", str(args.max_elements)]
            subprocess.run(child, check=True, env=child_environment(memory))
            with open(out) as lines:
                rows += [json.loads(line) for line in lines]
    else:
        rows = sweep(args)
        if args.json:
            with open(args.json, "a") as out:
                for row in rows:
                    out.write(json.dumps(row) + "\n")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown(rows))
    if args.png:
        heat_map(rows, args.png)
    if args.summary:
        with open(args.summary, "w") as out:
            out.write(summary(rows))


if __name__ == "__main__":
    main()
