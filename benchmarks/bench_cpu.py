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


def time_alternated(variants: Dict[str, Callable[[], object]], repeat: int,
                    warmup: int = 3) -> Dict[str, float]:
    """Median wall time in milliseconds of each variant. The variants take turns call by call,
    so that the machine's drift during the run (large on shared machines) hits all of them
    alike instead of whichever ran in a slow stretch."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}


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
    # (8, 2048, 1024): codes shared by 8 batch rows; (1, 16384, 1024): long-context packed
    # sequences, where every row's code is new.
    for B, T, D in ((8, 2048, 1024), (1, 16384, 1024)):
        bench_add_positional_shape(repeat, B, T, D)


def bench_add_positional_shape(repeat: int, B: int, T: int, D: int, p: float = 0.1) -> None:
    x = torch.randn(B, T, D)
    pe = sinusoidal_table(T, D)

    def eager(x: torch.Tensor, p: float) -> torch.Tensor:
        return F.dropout(x * 1.0 + pe[:T], p=p, training=True)

    compiled = torch.compile(eager)
    for p_case in (p, 0.0):
        rows = time_alternated({
            "posenc.add_positional": lambda: posenc.add_positional(x, dropout=p_case),
            "eager (pe buffer + F.dropout)": lambda: eager(x, p_case),
            "torch.compile(eager)": lambda: compiled(x, p_case),
            "x.clone()": lambda: x.clone(),
        }, repeat)
        report(f"add_positional forward, x=({B}, {T}, {D}) float32, training, p={p_case}, "
               f"threads={torch.get_num_threads()}", rows, "posenc.add_positional", "x.clone()")


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: List[torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while running fn, not counting
    `exclude` (parameters, which are alive anyway)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in excluded:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def bench_embedding(repeat: int) -> None:
    B, T, V, D, p = 8, 2048, 32000, 1024, 0.1
    ids = torch.randint(0, V, (B, T))
    weight = torch.randn(V, D, requires_grad=True)
    pe = sinusoidal_table(T, D)
    grad = torch.randn(B, T, D)
    scale = math.sqrt(D)

    def eager() -> torch.Tensor:
        return F.dropout(F.embedding(ids, weight) * scale + pe[:T], p=p, training=True)

    def ours() -> torch.Tensor:
        return posenc.embedding(ids, weight, dropout=p)

    compiled = torch.compile(eager)

    def step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            weight.grad = None
            fn().backward(grad)
        return run

    rows = time_alternated({
        "posenc.embedding": step(ours),
        "eager (F.embedding, pe, F.dropout)": step(eager),
        "torch.compile(eager)": step(compiled),
    }, repeat)
    print(f"\nembedding forward+backward, ids=({B}, {T}), V={V}, D={D}, float32, training, "
          f"p={p}, threads={torch.get_num_threads()}")
    print(f"  {'variant':<38}{'ms':>10}{'ours is x faster':>18}")
    for name, ms in rows.items():
        print(f"  {name:<38}{ms:>10.2f}{ms / rows['posenc.embedding']:>18.2f}")
    ours_bytes = saved_tensor_bytes(ours, [weight])
    eager_bytes = saved_tensor_bytes(eager, [weight])
    print(f"  saved for backward (beyond parameters): posenc {ours_bytes / 2**20:.2f} MiB, "
          f"eager {eager_bytes / 2**20:.2f} MiB, ratio {ours_bytes / max(eager_bytes, 1):.3f}")


def report_qk(title: str, q_shape: tuple, k_shape: tuple, dtype: torch.dtype,
              variants: Dict[str, Callable], repeat: int) -> None:
    """Times each variant fn(q, k) -> (q_out, k_out) forward, then forward + backward, on
    random q and k, with q.clone(); k.clone() as the floor; the first variant is posenc's."""
    for backward in (False, True):
        q = torch.randn(q_shape, dtype=dtype, requires_grad=backward)
        k = torch.randn(k_shape, dtype=dtype, requires_grad=backward)
        gq, gk = torch.randn_like(q), torch.randn_like(k)

        def run(fn):
            def step():
                out = fn(q, k)
                if backward:
                    torch.autograd.backward(out, (gq, gk))
            return step

        steps = {name: run(fn) for name, fn in variants.items()}
        steps["q.clone(); k.clone()"] = lambda: (q.detach().clone(), k.detach().clone())
        rows = time_alternated(steps, repeat)
        report(f"{title} {'forward+backward' if backward else 'forward'}, q={tuple(q_shape)}, "
               f"k={tuple(k_shape)}, {dtype}", rows, next(iter(variants)),
               "q.clone(); k.clone()")


def bench_rotary(repeat: int) -> None:
    B, S, Hq, Hk, D = 4, 2048, 32, 8, 128
    base = 10000.0
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    position_ids = torch.arange(S)[None].expand(B, S)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., D // 2:], x[..., : D // 2]), dim=-1)

    def hf(q: torch.Tensor, k: torch.Tensor):
        # LlamaRotaryEmbedding.forward then apply_rotary_pos_emb (unsqueeze_dim=2 for bshd).
        freqs = (inv_freq[None, :, None].float() @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(q.dtype)[:, :, None], emb.sin().to(q.dtype)[:, :, None]
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    compiled = torch.compile(hf)
    for dtype in (torch.float32, torch.bfloat16):
        report_qk("rotary", (B, S, Hq, D), (B, S, Hk, D), dtype,
                  {"posenc.rotary": lambda q, k: posenc.rotary(q, k),
                   "eager HF (cos/sin + apply)": hf, "torch.compile(eager HF)": compiled},
                  repeat)


def bench_llama_step(repeat: int) -> None:
    """Training step (forward + backward) of a small Llama from the transformers package, as
    built and with posenc.integrations.transformers applied: the same weights and inputs."""
    import copy
    import warnings

    try:
        from transformers import AutoModelForCausalLM, LlamaConfig
    except ImportError:
        print("\nllama step: transformers is not installed; skipped")
        return
    import posenc.integrations.transformers as posenc_hf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=4096)
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)
        reference = AutoModelForCausalLM.from_config(config).train()
    patched = copy.deepcopy(reference)
    posenc_hf.apply_to_model(patched)
    ids = torch.randint(0, 1024, (1, 2048))

    def step(model) -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    rows = time_alternated({"transformers": lambda: step(reference),
                            "transformers + posenc": lambda: step(patched)},
                           max(3, min(repeat, 6)), warmup=2)
    print("\nLlama training step (transformers LlamaForCausalLM, 2 layers, hidden 256, "
          "4 heads of 64), batch 1, seq 2048, float32, forward + backward")
    for name, ms in rows.items():
        print(f"  {name:<34}{ms:>10.2f}")
    ratio = rows["transformers + posenc"] / rows["transformers"]
    print(f"  step time with posenc / without: {ratio:.3f}")


def bench_patch(repeat: int) -> None:
    """2D sin-cos codes of vision transformers against their eager recipes: MAE/DiT's fixed
    pos_embed buffer plus the add (ViT-L/16 at 256 px: 1 cls + 16 x 16 patches), and diffusers'
    PatchEmbed at a new resolution, which rebuilds the table on every forward (SD3/PixArt
    width 1152, 64 x 64 patches). The recipes are the published code of tests/python."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
    from references import diffusers_2d_sincos_pos_embed, dit_2d_sincos_pos_embed

    from posenc.nn import PatchPositionalEncoding

    # MAE / DiT: the table is a buffer built once; the eager step is x + pos_embed.
    B, side, D = 32, 16, 1024
    pos_embed = dit_2d_sincos_pos_embed(D, side, cls_token=True, extra_tokens=1).float()[None]
    module = PatchPositionalEncoding(D, side, extra_tokens=1)
    x = torch.randn(B, 1 + side * side, D)

    def mae(x: torch.Tensor) -> torch.Tensor:
        return x + pos_embed

    compiled = torch.compile(mae)
    rows = time_alternated({
        "posenc PatchPositionalEncoding": lambda: module(x),
        "eager (pos_embed buffer + add)": lambda: mae(x),
        "torch.compile(eager)": lambda: compiled(x),
        "x.clone()": lambda: x.clone(),
    }, repeat)
    report(f"MAE/DiT pos_embed add, x=({B}, {1 + side * side}, {D}) float32, "
           f"threads={torch.get_num_threads()}", rows, "posenc PatchPositionalEncoding",
           "x.clone()")

    # diffusers PatchEmbed (no pos_embed_max_size) at a resolution other than its own.
    B, side, D, base_size = 2, 64, 1152, 32
    module = PatchPositionalEncoding(D, base_size, base_size=base_size)
    x = torch.randn(B, side * side, D)

    def diffusers(x: torch.Tensor) -> torch.Tensor:
        table = diffusers_2d_sincos_pos_embed(D, side, base_size=base_size)
        return x + table.float().unsqueeze(0)

    compiled = torch.compile(diffusers)
    rows = time_alternated({
        "posenc PatchPositionalEncoding": lambda: module(x, grid=side),
        "eager (table rebuilt + add)": lambda: diffusers(x),
        "torch.compile(eager)": lambda: compiled(x),
        "x.clone()": lambda: x.clone(),
    }, repeat)
    report(f"SD3/PixArt PatchEmbed at a new resolution, x=({B}, {side * side}, {D}) float32, "
           f"threads={torch.get_num_threads()}", rows, "posenc PatchPositionalEncoding",
           "x.clone()")


def bench_mrope(repeat: int) -> None:
    """M-RoPE of Qwen2-VL's language model (28 query and 4 key heads of 128, mrope_section
    16/24/24) on 4096 tokens of an image and text: transformers' Qwen2VLRotaryEmbedding and
    apply_rotary_pos_emb against posenc.rotary with the same (3, B, S) positions."""
    import warnings

    try:
        from transformers import Qwen2VLTextConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import (Qwen2VLRotaryEmbedding,
                                                                    apply_rotary_pos_emb)
    except ImportError:
        print("\nmrope: transformers is not installed; skipped")
        return
    B, S, Hq, Hk, D, section = 1, 4096, 28, 4, 128, [16, 24, 24]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = Qwen2VLTextConfig(hidden_size=Hq * D, num_attention_heads=Hq,
                                   num_key_value_heads=Hk, rope_parameters={
                                       "rope_type": "default", "rope_theta": 1000000.0,
                                       "mrope_section": section})
    hf_rope = Qwen2VLRotaryEmbedding(config)
    # A 48 x 64 image (3072 tokens) between text: temporal/height/width rows as get_rope_index.
    text = torch.arange(512)
    rows, columns = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    image = torch.stack([torch.full((3072,), 512), 512 + rows.flatten(), 512 + columns.flatten()])
    tail = 512 + 64 + torch.arange(S - 512 - 3072)
    positions = torch.cat([text.expand(3, -1), image, tail.expand(3, -1)], dim=1)[:, None]
    inv_freq = posenc.rope_frequencies(D, base=1000000.0)[0]

    def hf(q: torch.Tensor, k: torch.Tensor):
        cos, sin = hf_rope(q, positions)
        return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)

    def ours(q: torch.Tensor, k: torch.Tensor):
        return posenc.rotary(q, k, positions=positions, inv_freq=inv_freq, layout="bhsd",
                             mrope_section=section)

    report_qk("M-RoPE", (B, Hq, S, D), (B, Hk, S, D), torch.float32,
              {"posenc.rotary (mrope_section)": ours,
               "eager HF (Qwen2-VL cos/sin + apply)": hf,
               "torch.compile(eager HF)": torch.compile(hf)}, repeat)


def bench_decode_step(repeat: int) -> None:
    """One new token per call (autoregressive decoding with absolute codes): the per-call cost
    of posenc's setup against the eager lookup of a stored table row."""
    for D in (1024, 4096):
        x = torch.randn(8, 1, D)
        pe = sinusoidal_table(4096, D)
        offset = 3000
        rows = time_alternated({
            "posenc.add_positional(offset=...)":
                lambda: posenc.add_positional(x, offset=offset, training=False),
            "eager (x + pe[offset])": lambda: x + pe[offset:offset + 1],
        }, repeat * 20)
        print(f"\ndecode step: add_positional, x=(8, 1, {D}) float32, inference")
        print(f"  {'variant':<38}{'us':>10}{'ours is x faster':>18}")
        ours = rows["posenc.add_positional(offset=...)"]
        for name, ms in rows.items():
            print(f"  {name:<38}{ms * 1e3:>10.1f}{ms / ours:>18.2f}")


BENCHMARKS = {"add_positional": bench_add_positional, "decode_step": bench_decode_step,
              "embedding": bench_embedding,
              "rotary": bench_rotary, "llama_step": bench_llama_step, "patch": bench_patch,
              "mrope": bench_mrope}


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
