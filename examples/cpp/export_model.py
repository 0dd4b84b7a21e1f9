"""Builds a small model from posenc.nn layers in Python and exports it for C++ inference:
AOTInductor (`model.pt2`, loaded with torch::inductor::AOTIModelPackageLoader) and TorchScript
(`model_ts.pt`, torch::jit::load), plus an input and the output Python computes for it
(raw little-endian files with a shape header), so examples/cpp/infer.cpp can check equality.

    python examples/cpp/export_model.py OUT_DIR
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

import posenc


class TinyEncoder(nn.Module):
    """Token embedding with a fused position code, a projection, and rotary queries."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = posenc.nn.PositionalEmbedding(vocab, dim, padding_idx=0, dropout=0.1)
        self.proj = nn.Linear(dim, dim)
        self.rope = posenc.nn.RotaryEmbedding(dim // heads)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        q = self.proj(h).unflatten(-1, (self.heads, -1))  # (B, T, H, Dh)
        return self.rope(q).flatten(-2)


def write_tensor(path: str, tensor: torch.Tensor) -> None:
    """Shape header (ndim, then sizes, as int64) followed by the raw data."""
    tensor = tensor.contiguous()
    with open(path, "wb") as f:
        f.write(torch.tensor([tensor.dim(), *tensor.shape], dtype=torch.int64).numpy().tobytes())
        f.write(tensor.numpy().tobytes())


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    ids = torch.randint(0, 50, (2, 11))
    ids[0, :2] = 0  # padding tokens
    with torch.no_grad():
        expected = model(ids)
    write_tensor(os.path.join(out_dir, "input.bin"), ids)
    write_tensor(os.path.join(out_dir, "expected.bin"), expected)

    traced = torch.jit.trace(model, (ids,))
    traced.save(os.path.join(out_dir, "model_ts.pt"))

    exported = torch.export.export(model, (ids,))
    torch._inductor.aoti_compile_and_package(
        exported, package_path=os.path.join(out_dir, "model.pt2"))
    print(f"wrote model.pt2, model_ts.pt, input.bin, expected.bin to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/examples_data")
