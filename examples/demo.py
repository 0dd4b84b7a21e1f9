"""Placeholder until the embedding demo lands: a short run of add_positional."""
import torch

import posenc

x = torch.randn(2, 8, 16)
y = posenc.add_positional(x, dropout=0.1)
print("add_positional:", tuple(y.shape), "max |y - x| =", (y - x).abs().max().item())
