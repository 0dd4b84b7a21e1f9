"""posenc demo: what a position code does, trained in a couple of minutes on the CPU.

Each model is a small Transformer encoder asked to reverse a sequence of random tokens: the
output at position i must be the input token at position T-1-i. Attention alone is blind to
order, so without a position code the task cannot be solved. One model per code, each built
from posenc.nn layers, plus the same sinusoidal model built from plain eager PyTorch layers
(nn.Embedding and the tutorial's PositionalEncoding) for comparison. Every model is also tested
on sequences longer than it was trained on.

    make demo
    make demo DEMO_ARGS="--codes sinusoidal learned --steps 200 --seq-len 12"
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

import posenc

ALL_CODES = ["none", "sinusoidal", "sinusoidal-mul", "learned", "linear", "damped", "cosine",
             "rotary", "eager-sinusoidal"]


class TutorialPositionalEncoding(nn.Module):
    """The PyTorch tutorial's PositionalEncoding (batch first here): a stored (max_len, D)
    table added in eager PyTorch, then dropout."""

    def __init__(self, d_model: int, dropout: float, max_len: int = 512) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pe[: x.size(1)])


class InputLayer(nn.Module):
    """Token embedding and position code for one of the demo's codes."""

    def __init__(self, code: str, vocab: int, d_model: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.code = code
        if code == "eager-sinusoidal":
            self.embed = nn.Embedding(vocab, d_model)
            self.positions = TutorialPositionalEncoding(d_model, dropout, max_len)
        elif code in ("none", "rotary"):  # rotary acts inside attention, not on the input
            self.embed = nn.Embedding(vocab, d_model)
            self.drop = nn.Dropout(dropout)
        else:
            kind, combine = {"sinusoidal-mul": ("sinusoidal", "mul")}.get(code, (code, "add"))
            self.embed = posenc.nn.PositionalEmbedding(
                vocab, d_model, kind=kind, combine=combine, dropout=dropout,
                max_positions=max_len if kind == "learned" else None,
            )
        # fairseq's initialisation: std D^-0.5, so that scale * weight (scale = sqrt(D)) has unit
        # variance, like the position code; N(0, 1) times sqrt(D) would drown the code.
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        self.scale = math.sqrt(d_model)

    def forward(self, ids: Tensor) -> Tensor:
        if self.code == "eager-sinusoidal":
            return self.positions(self.embed(ids) * self.scale)
        if self.code in ("none", "rotary"):
            return self.drop(self.embed(ids) * self.scale)
        return self.embed(ids)


class EncoderLayer(nn.Module):
    """A post-norm Transformer encoder layer (as nn.TransformerEncoderLayer's defaults), with
    rotary queries and keys when `rotary` is set."""

    def __init__(self, d_model: int, heads: int, dropout: float, rotary: bool) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(2 * d_model, d_model))
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.rope = posenc.nn.RotaryEmbedding(d_model // heads) if rotary else None

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(2)  # (B, T, H, Dh)
        if self.rope is not None:
            q, k = self.rope(q, k)
        attended = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0)
        x = self.norm1(x + self.drop(self.proj(attended.transpose(1, 2).flatten(2))))
        return self.norm2(x + self.drop(self.ff(x)))


class Reverser(nn.Module):
    def __init__(self, code: str, vocab: int, d_model: int, layers: int, heads: int,
                 dropout: float, max_len: int) -> None:
        super().__init__()
        self.inputs = InputLayer(code, vocab, d_model, dropout, max_len)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, dropout, rotary=code == "rotary") for _ in range(layers))
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.inputs(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def make_batch(batch: int, length: int, vocab: int, generator: torch.Generator):
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    return ids, ids.flip(-1)


def saved_activation_mib(model: nn.Module, ids: Tensor) -> float:
    """MiB of distinct non-parameter tensors autograd saves for one training step."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids).sum()
    return sum(seen.values()) / 2**20


@dataclass
class Result:
    code: str
    losses: List[float]
    accuracy: float
    long_accuracy: float
    step_ms: float
    saved_mib: float


def accuracy(model: nn.Module, length: int, vocab: int, generator: torch.Generator) -> float:
    model.eval()
    with torch.no_grad():
        ids, target = make_batch(512, length, vocab, generator)
        correct = (model(ids).argmax(-1) == target).float().mean().item()
    model.train()
    return correct


def train(code: str, args: argparse.Namespace, progress: Callable[[int], None]) -> Result:
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    model = Reverser(code, args.vocab, args.d_model, args.layers, args.heads, args.dropout,
                     max_len=2 * args.seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps,
                                                   pct_start=0.1)
    losses = []
    start = time.perf_counter()
    for _ in range(args.steps):
        ids, target = make_batch(args.batch, args.seq_len, args.vocab, data)
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), target.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress(1)
    step_ms = (time.perf_counter() - start) / args.steps * 1e3
    ids, _ = make_batch(args.batch, args.seq_len, args.vocab, data)
    return Result(code, losses, accuracy(model, args.seq_len, args.vocab, data),
                  accuracy(model, args.long_len, args.vocab, data), step_ms,
                  saved_activation_mib(model, ids))


class Progress:
    """A tqdm bar when tqdm is installed, else a plain counter on one line."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", ncols=80, file=sys.stdout, mininterval=0.5)
        except ImportError:
            self.bar, self.done, self.total = None, 0, total

    def set_description(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
        else:
            self.done += n
            print(f"\r{self.done}/{self.total} steps", end="", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print()


def write_plots(results: List[Result], args: argparse.Namespace) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots written")
        return []
    os.makedirs(args.out, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    window = max(1, args.steps // 50)
    for r in results:
        smooth = torch.tensor(r.losses).unfold(0, window, 1).mean(-1) if len(r.losses) >= window \
            else torch.tensor(r.losses)
        ax.plot(smooth.numpy(), label=r.code)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_yscale("log")
    ax.set_title(f"Reversing {args.seq_len} tokens: loss per position code")
    ax.legend()
    path = os.path.join(args.out, "loss_curves.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)

    kinds = [("sinusoidal", {}), ("sinusoidal concat t2t", dict(layout="concat",
                                                               convention="tensor2tensor")),
             ("linear", dict(kind="linear")), ("damped", dict(kind="damped")),
             ("cosine", dict(kind="cosine"))]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 4))
    for ax, (title, options) in zip(axes, kinds):
        code = posenc.positional_encoding(64, 64, **options)
        image = ax.imshow(code.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.set_xlabel("channel j")
        ax.set_ylabel("position")
    fig.colorbar(image, ax=axes, shrink=0.8)
    path = os.path.join(args.out, "position_codes.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> List[Result]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", nargs="+", default=ALL_CODES, choices=ALL_CODES)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seq-len", type=int, default=12)
    parser.add_argument("--long-len", type=int, default=16,
                        help="length of the longer test sequences")
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo_output", help="folder for the PNG plots")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    print(f"posenc demo: reverse {args.seq_len} random tokens (vocabulary {args.vocab}); "
          f"{len(args.codes)} models x {args.steps} steps on {torch.get_num_threads()} CPU threads")
    progress = Progress(len(args.codes) * args.steps)
    results = []
    for code in args.codes:
        progress.set_description(f"{code:>16}")
        results.append(train(code, args, progress))
    progress.close()

    print(f"\n{'code':<18}{'final loss':>11}{'accuracy':>10}{f'len {args.long_len}':>10}"
          f"{'step ms':>9}{'saved MiB':>11}")
    for r in results:
        final = sum(r.losses[-10:]) / len(r.losses[-10:])
        print(f"{r.code:<18}{final:>11.3f}{r.accuracy:>10.1%}{r.long_accuracy:>10.1%}"
              f"{r.step_ms:>9.1f}{r.saved_mib:>11.2f}")
    print("\naccuracy: tokens reversed correctly on fresh sequences of the training length; "
          f"len {args.long_len}: on longer ones. saved MiB: activations autograd keeps per step.")
    if not args.no_plots:
        for path in write_plots(results, args):
            print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
