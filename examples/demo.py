"""posenc demo: what a position code does, trained in a couple of minutes on the CPU.

Text: each model is a small Transformer encoder asked to reverse a sequence of random tokens:
the output at position i must be the input token at position T-1-i. Attention alone is blind
to order, so without a position code the task cannot be solved. One model per code, each built
from posenc.nn layers, plus the same sinusoidal model built from plain eager PyTorch layers
(nn.Embedding and the tutorial's PositionalEncoding) for comparison. Every model is also tested
on sequences longer than it was trained on.

Relative positions: a causal model must output, at each position, the token SHIFT positions
back. What matters is the distance between tokens, not their absolute positions: a code of the
distance in attention (T5's relative buckets, posenc.nn.T5RelativePositionBias, or ALiBi) carries
over to sequences several times longer than the training ones, where absolute codes (learned,
sinusoidal) meet positions they never saw.

Images: a ViT-style encoder reads an 8 x 8 grid of noisy patches, flattened to 64 tokens after a
cls token, and must name the row and the column of the one marked patch. Training images put
the mark in 48 of the 64 cells; the test asks about the 16 held-out cells too. A 1D code of the
flattened index has never seen those indices; the 2D code (posenc.nn.PatchPositionalEncoding,
MAE's) has seen every row and every column, in other combinations.

    make demo
    make demo DEMO_ARGS="--codes sinusoidal learned --steps 200 --seq-len 12"
    make demo DEMO_ARGS="--image-steps 0 --relative-steps 0"   # the reversal task only
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

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
    rotary queries and keys when `rotary` is set, and an optional attention mask or bias
    `(1, H, T, T)` (or causal attention) in forward."""

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

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, causal: bool = False) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(2)  # (B, T, H, Dh)
        if self.rope is not None:
            q, k = self.rope(q, k)
        attended = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            is_causal=causal and mask is None, dropout_p=self.dropout if self.training else 0.0)
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


def fit(model: nn.Module, batch_loss: Callable[[], Tensor], steps: int, lr: float,
        progress: Callable[[int], None]) -> Tuple[List[float], float]:
    """`steps` AdamW steps on batch_loss() under a one-cycle schedule peaking at `lr`. Returns
    the losses and the mean step time in ms."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps,
                                                   pct_start=0.1)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress(1)
    return losses, (time.perf_counter() - start) / steps * 1e3


def train(code: str, args: argparse.Namespace, progress: Callable[[int], None]) -> Result:
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    model = Reverser(code, args.vocab, args.d_model, args.layers, args.heads, args.dropout,
                     max_len=2 * args.seq_len)

    def batch_loss() -> Tensor:
        ids, target = make_batch(args.batch, args.seq_len, args.vocab, data)
        return nn.functional.cross_entropy(model(ids).flatten(0, 1), target.flatten())

    losses, step_ms = fit(model, batch_loss, args.steps, args.lr, progress)
    ids, _ = make_batch(args.batch, args.seq_len, args.vocab, data)
    return Result(code, losses, accuracy(model, args.seq_len, args.vocab, data),
                  accuracy(model, args.long_len, args.vocab, data), step_ms,
                  saved_activation_mib(model, ids))


# ---- relative positions: the token SHIFT positions back -----------------------------------------

RELATIVE_CODES = ["learned", "sinusoidal", "rotary", "t5", "alibi"]
SHIFT = 3


class Shifter(nn.Module):
    """A causal Transformer whose output at position i names the input token at i - SHIFT. The
    attention-level codes add their bias to every layer's scores (one module for the model, as
    T5 shares its bias across layers); the other codes act on the input or on q and k."""

    def __init__(self, code: str, vocab: int, d_model: int, layers: int, heads: int,
                 dropout: float, max_len: int) -> None:
        super().__init__()
        self.inputs = InputLayer("none" if code in ("t5", "alibi") else code, vocab, d_model,
                                 dropout, max_len)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, dropout, rotary=code == "rotary") for _ in range(layers))
        self.head = nn.Linear(d_model, vocab)
        self.bias: Optional[nn.Module] = None
        if code == "t5":  # a decoder's buckets: only past keys have their own
            self.bias = posenc.nn.T5RelativePositionBias(heads, bidirectional=False)
        elif code == "alibi":
            self.bias = posenc.nn.ALiBi(heads, causal=True)

    def forward(self, ids: Tensor) -> Tensor:
        T = ids.shape[-1]
        mask = None
        if isinstance(self.bias, posenc.nn.ALiBi):
            mask = self.bias(T, T)  # the causal mask is in the bias
        elif self.bias is not None:
            future = torch.ones(T, T, dtype=torch.bool, device=ids.device).triu(1)
            mask = self.bias(T, T).masked_fill(future, float("-inf"))
        x = self.inputs(ids)
        for layer in self.layers:
            x = layer(x, mask, causal=True)
        return self.head(x)


@dataclass
class RelativeResult:
    code: str
    losses: List[float]
    accuracy_by_length: Dict[int, float]
    step_ms: float


def shift_batch(batch: int, length: int, vocab: int, generator: torch.Generator):
    """Tokens, and the targets ids[i - SHIFT] (-100, ignored, for the first SHIFT)."""
    ids = torch.randint(0, vocab, (batch, length), generator=generator)
    target = torch.full_like(ids, -100)
    target[:, SHIFT:] = ids[:, :-SHIFT]
    return ids, target


def train_shifter(code: str, args: argparse.Namespace,
                  progress: Callable[[int], None]) -> RelativeResult:
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    lengths = [args.seq_len * f for f in (1, 2, 4, 8)]
    # The learned table has a row for every tested position; those past the training length are
    # never trained.
    model = Shifter(code, args.vocab, args.d_model, args.layers, args.heads, args.dropout,
                    max_len=max(lengths))

    def batch_loss() -> Tensor:
        ids, target = shift_batch(args.batch, args.seq_len, args.vocab, data)
        return nn.functional.cross_entropy(model(ids).flatten(0, 1), target.flatten())

    losses, step_ms = fit(model, batch_loss, args.relative_steps, args.lr, progress)
    model.eval()
    scores = {}
    with torch.no_grad():
        for length in lengths:
            ids, target = shift_batch(256, length, args.vocab, data)
            kept = target != -100
            scores[length] = (model(ids).argmax(-1) == target)[kept].float().mean().item()
    return RelativeResult(code, losses, scores, step_ms)


def write_relative_plot(plt, results: List[RelativeResult], args: argparse.Namespace) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        lengths = sorted(r.accuracy_by_length)
        ax.plot(lengths, [r.accuracy_by_length[n] for n in lengths], marker="o", label=r.code)
    ax.axvline(args.seq_len, color="gray", linestyle=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test sequence length")
    ax.set_ylabel(f"accuracy (token {SHIFT} back)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Relative task: which codes carry over to longer sequences")
    ax.legend()
    path = os.path.join(args.out, "relative_positions.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ---- images: locating a marked patch -----------------------------------------------------------

GRID, PATCH = 8, 4  # 8 x 8 patches of 4 x 4 pixels
IMAGE_WIDTH, IMAGE_BATCH = 64, 64  # the image models' d_model and batch (whatever the text's)
IMAGE_CODES = ["none", "1d", "2d"]


def make_images(batch: int, cells: Tensor, generator: torch.Generator):
    """Noise images with a bright cross on the patch of a cell drawn from `cells`: the
    flattened patches (batch, 64, 16) and the marked row and column."""
    cell = cells[torch.randint(0, len(cells), (batch,), generator=generator)]
    row, column = cell // GRID, cell % GRID
    patches = torch.randn(batch, GRID * GRID, PATCH, PATCH, generator=generator)
    mark = torch.zeros(PATCH, PATCH)
    mark[PATCH // 2, :] = 3.0
    mark[:, PATCH // 2] = 3.0
    patches[torch.arange(batch), cell] += mark
    return patches.flatten(2), row, column


def patches_to_image(patches: Tensor) -> Tensor:
    """(64, 16) flattened patches -> the (32, 32) image."""
    grid = patches.reshape(GRID, GRID, PATCH, PATCH)
    return grid.permute(0, 2, 1, 3).reshape(GRID * PATCH, GRID * PATCH)


class PatchLocator(nn.Module):
    """Patch embedding, a cls token, a position code, a 2-layer encoder, and row and column
    heads on the cls token."""

    def __init__(self, code: str, d_model: int, heads: int) -> None:
        super().__init__()
        self.code = code
        self.embed = nn.Linear(PATCH * PATCH, d_model)
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        if code == "2d":  # MAE's 2D sin-cos code, cls token uncoded
            self.positions = posenc.nn.PatchPositionalEncoding(d_model, GRID, extra_tokens=1)
        elif code == "1d":  # the 1D sinusoidal code of the flattened token index
            self.positions = posenc.nn.PositionalEncoding(d_model, dropout=0.0, batch_first=True)
        else:
            self.positions = nn.Identity()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, 0.0, rotary=False) for _ in range(2))
        self.head = nn.Linear(d_model, 2 * GRID)

    def forward(self, patches: Tensor):
        x = torch.cat([self.cls.expand(len(patches), 1, -1), self.embed(patches)], dim=1)
        x = self.positions(x)
        for layer in self.layers:
            x = layer(x)
        logits = self.head(x[:, 0])
        return logits[:, :GRID], logits[:, GRID:]


@dataclass
class PatchResult:
    code: str
    losses: List[float]
    seen_accuracy: float
    held_out_accuracy: float
    step_ms: float


def held_out_cells(seed: int):
    """(held-out cells, training cells): 16 and 48 of the 64."""
    order = torch.randperm(GRID * GRID, generator=torch.Generator().manual_seed(seed + 2))
    return order[:16], order[16:]


def train_locator(code: str, args: argparse.Namespace,
                  progress: Callable[[int], None]) -> PatchResult:
    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed + 1)
    held_out, seen = held_out_cells(args.seed)
    model = PatchLocator(code, IMAGE_WIDTH, args.heads)

    def batch_loss() -> Tensor:
        patches, row, column = make_images(IMAGE_BATCH, seen, data)
        row_logits, column_logits = model(patches)
        return (nn.functional.cross_entropy(row_logits, row)
                + nn.functional.cross_entropy(column_logits, column))

    losses, step_ms = fit(model, batch_loss, args.image_steps, 2e-3, progress)
    model.eval()
    accuracies = []
    with torch.no_grad():
        for cells in (seen, held_out):
            patches, row, column = make_images(512, cells, data)
            row_logits, column_logits = model(patches)
            correct = (row_logits.argmax(-1) == row) & (column_logits.argmax(-1) == column)
            accuracies.append(correct.float().mean().item())
    return PatchResult(code, losses, accuracies[0], accuracies[1], step_ms)


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


def final_loss(losses: List[float]) -> float:
    """The mean of the last 10 training losses."""
    return sum(losses[-10:]) / len(losses[-10:])


def train_all(codes: List[str], steps: int, train_one: Callable, args: argparse.Namespace):
    """train_one(code, args, progress) for each code, under one progress bar."""
    progress = Progress(len(codes) * steps)
    results = []
    for code in codes:
        progress.set_description(f"{code:>16}")
        results.append(train_one(code, args, progress))
    progress.close()
    return results


def write_plots(results: List[Result], args: argparse.Namespace,
                patch_results: Optional[List[PatchResult]] = None,
                relative_results: Optional[List[RelativeResult]] = None) -> List[str]:
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
    if patch_results:
        written.append(write_patch_plot(plt, patch_results, args))
    if relative_results:
        written.append(write_relative_plot(plt, relative_results, args))
    return written


def write_patch_plot(plt, results: List[PatchResult], args: argparse.Namespace) -> str:
    """A sample image with the held-out cells, the accuracies, and how alike the 1D and 2D
    codes of every patch are to the code of one patch."""
    from matplotlib.patches import Rectangle

    held_out, _ = held_out_cells(args.seed)
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.8))
    patches, row, column = make_images(1, held_out, torch.Generator().manual_seed(5))
    ax = axes[0]
    ax.imshow(patches_to_image(patches[0]).numpy(), cmap="gray")
    for cell in held_out.tolist():
        r, c = divmod(cell, GRID)
        ax.add_patch(Rectangle((c * PATCH - 0.5, r * PATCH - 0.5), PATCH, PATCH, fill=True,
                               alpha=0.25, color="tab:orange", linewidth=0))
    ax.add_patch(Rectangle((column.item() * PATCH - 0.5, row.item() * PATCH - 0.5), PATCH, PATCH,
                           fill=False, color="red", linewidth=2))
    ax.set_title("input: the marked patch (red)\nin a held-out cell (orange)")
    ax.set_xticks([])
    ax.set_yticks([])

    ax = axes[1]
    x = torch.arange(len(results)).numpy()
    ax.bar(x - 0.2, [r.seen_accuracy for r in results], 0.4, label="training cells")
    ax.bar(x + 0.2, [r.held_out_accuracy for r in results], 0.4, label="held-out cells")
    ax.set_xticks(x, [{"none": "no code", "1d": "1D sinusoidal", "2d": "2D sin-cos"}[r.code]
                      for r in results])
    ax.set_ylim(0, 1)
    ax.set_ylabel("row and column both right")
    ax.set_title("locating the marked patch")
    ax.legend(loc="upper left")

    d, anchor = IMAGE_WIDTH, (2, 5)  # similarity to the code of the patch at row 2, column 5
    tokens = torch.arange(1, 1 + GRID * GRID)
    codes = {
        "1D code of the flattened index": posenc.positional_encoding(tokens, d),
        "2D sin-cos code (MAE's)": posenc.positional_encoding(
            tokens, d, grid=posenc.Grid((GRID, GRID), extra_tokens=1)),
    }
    for ax, (title, code) in zip(axes[2:], codes.items()):
        code = nn.functional.normalize(code, dim=-1)
        similarity = code @ code[anchor[0] * GRID + anchor[1]]
        image = ax.imshow(similarity.reshape(GRID, GRID).numpy(), cmap="viridis")
        ax.set_title(f"{title}:\ncosine similarity to the patch at {anchor}")
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        fig.colorbar(image, ax=ax, shrink=0.8)
    path = os.path.join(args.out, "patch_positions.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None
         ) -> Tuple[List[Result], List[PatchResult], List[RelativeResult]]:
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
    parser.add_argument("--image-steps", type=int, default=600,
                        help="training steps of each image model (0: no image task)")
    parser.add_argument("--image-codes", nargs="+", default=IMAGE_CODES, choices=IMAGE_CODES)
    parser.add_argument("--relative-steps", type=int, default=400,
                        help="training steps of each relative-task model (0: no relative task)")
    parser.add_argument("--relative-codes", nargs="+", default=RELATIVE_CODES,
                        choices=RELATIVE_CODES)
    args = parser.parse_args(argv)

    print(f"posenc demo: reverse {args.seq_len} random tokens (vocabulary {args.vocab}); "
          f"{len(args.codes)} models x {args.steps} steps on {torch.get_num_threads()} CPU threads")
    results = train_all(args.codes, args.steps, train, args)

    print(f"\n{'code':<18}{'final loss':>11}{'accuracy':>10}{f'len {args.long_len}':>10}"
          f"{'step ms':>9}{'saved MiB':>11}")
    for r in results:
        print(f"{r.code:<18}{final_loss(r.losses):>11.3f}{r.accuracy:>10.1%}"
              f"{r.long_accuracy:>10.1%}{r.step_ms:>9.1f}{r.saved_mib:>11.2f}")
    print("\naccuracy: tokens reversed correctly on fresh sequences of the training length; "
          f"len {args.long_len}: on longer ones. saved MiB: activations autograd keeps per step.")

    patch_results: List[PatchResult] = []
    if args.image_steps > 0:
        print(f"\nImages: name the row and column of the marked patch of {GRID} x {GRID}; "
              f"{len(args.image_codes)} models x {args.image_steps} steps, trained on 48 of the "
              f"64 cells")
        patch_results = train_all(args.image_codes, args.image_steps, train_locator, args)
        print(f"\n{'code':<18}{'final loss':>11}{'training cells':>16}{'held-out cells':>16}"
              f"{'step ms':>9}")
        for r in patch_results:
            print(f"{r.code:<18}{final_loss(r.losses):>11.3f}{r.seen_accuracy:>16.1%}"
                  f"{r.held_out_accuracy:>16.1%}{r.step_ms:>9.1f}")
        print("\naccuracy: row and column both right, on fresh images whose mark is in a cell "
              "seen in training, or in one of the 16 held out.")
    relative_results: List[RelativeResult] = []
    if args.relative_steps > 0:
        print(f"\nRelative positions: name the token {SHIFT} back (causal models); "
              f"{len(args.relative_codes)} models x {args.relative_steps} steps on length "
              f"{args.seq_len}, tested up to {8 * args.seq_len}")
        relative_results = train_all(args.relative_codes, args.relative_steps, train_shifter,
                                     args)
        lengths = sorted(relative_results[0].accuracy_by_length)
        print(f"\n{'code':<18}{'final loss':>11}" + "".join(f"{f'len {n}':>10}" for n in lengths)
              + f"{'step ms':>9}")
        for r in relative_results:
            print(f"{r.code:<18}{final_loss(r.losses):>11.3f}"
                  + "".join(f"{r.accuracy_by_length[n]:>10.1%}" for n in lengths)
                  + f"{r.step_ms:>9.1f}")
        print("\naccuracy: tokens named correctly on fresh sequences of each length (the first "
              f"{SHIFT} positions have none).")
    if not args.no_plots:
        for path in write_plots(results, args, patch_results, relative_results):
            print(f"wrote {path}")
    return results, patch_results, relative_results


if __name__ == "__main__":
    main()
