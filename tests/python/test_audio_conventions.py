"""Audio models' position-code conventions against float64 references written from their
published code, and against the real transformers functions where they exist (those compute in
float32, so within float32's angle error): Whisper's encoder sinusoids, MusicGen's cosine-first
halves, ESPnet's scaled add, Transformer-XL's relative rows. (Conformer's relative rows:
test_relative_positions.py.)"""

import math

import pytest
import torch

import posenc


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
    """Whisper's sinusoids(), in float64."""
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2,
                                                                       dtype=torch.float64))
    scaled_time = torch.arange(length, dtype=torch.float64).view(-1, 1) * inv_timescales.view(1, -1)
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


def musicgen_embedding(num_embeddings: int, embedding_dim: int) -> torch.Tensor:
    """MusicgenSinusoidalPositionalEmbedding.get_embedding, in float64."""
    half_dim = embedding_dim // 2
    emb = math.log(10000) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float64) * -emb)
    emb = torch.arange(num_embeddings, dtype=torch.float64).unsqueeze(1) * emb.unsqueeze(0)
    emb = torch.cat([torch.cos(emb), torch.sin(emb)], dim=1).view(num_embeddings, -1)
    if embedding_dim % 2 == 1:
        emb = torch.cat([emb, torch.zeros(num_embeddings, 1, dtype=torch.float64)], dim=1)
    return emb


def espnet_pe(length: int, d_model: int) -> torch.Tensor:
    """ESPnet's PositionalEncoding.extend_pe table (reverse=False), in float64."""
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    position = torch.arange(0, length, dtype=torch.float64).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64)
                         * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def transformer_xl_rows(klen: int, demb: int) -> torch.Tensor:
    """Transformer-XL's PositionalEmbedding of pos_seq = klen-1 .. 0, in float64."""
    pos_seq = torch.arange(klen - 1, -1, -1.0, dtype=torch.float64)
    inv_freq = 1 / (10000 ** (torch.arange(0.0, demb, 2.0, dtype=torch.float64) / demb))
    sinusoid_inp = torch.outer(pos_seq, inv_freq)
    return torch.cat([sinusoid_inp.sin(), sinusoid_inp.cos()], dim=-1)


@pytest.mark.parametrize("length,channels", [(1500, 384), (1500, 1280), (448, 64)])
def test_whisper_encoder_sinusoids(length, channels):
    from transformers.models.whisper.modeling_whisper import sinusoids

    got = posenc.positional_encoding(length, channels, convention="tensor2tensor",
                                     layout="concat")
    torch.testing.assert_close(got.double(), whisper_sinusoids(length, channels), atol=2e-6,
                               rtol=0)
    torch.testing.assert_close(got, sinusoids(length, channels), atol=2e-4, rtol=0)


@pytest.mark.parametrize("dim", [64, 1024, 33])
def test_musicgen_cosine_first_halves(dim):
    from transformers.models.musicgen.modeling_musicgen import (
        MusicgenSinusoidalPositionalEmbedding,
    )

    n = 2048
    got = posenc.positional_encoding(n, dim, convention="tensor2tensor",
                                     layout="concat_cos_first")
    torch.testing.assert_close(got.double(), musicgen_embedding(n, dim), atol=2e-6, rtol=0)
    real = MusicgenSinusoidalPositionalEmbedding.get_embedding(n, dim)
    torch.testing.assert_close(got, real, atol=5e-4, rtol=0)
    # The same code fused into a decoder's input at a cache offset.
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    y = posenc.add_positional(x, convention="tensor2tensor", layout="concat_cos_first",
                              offset=700)
    torch.testing.assert_close(y, x + musicgen_embedding(705, dim)[700:], atol=1e-12, rtol=0)


def test_espnet_scaled_add():
    # ESPnet's PositionalEncoding.forward: x * sqrt(d_model) + pe[:T] (dropout aside).
    d_model, T = 256, 900
    x = torch.randn(3, T, d_model, dtype=torch.float64)
    got = posenc.add_positional(x, scale=math.sqrt(d_model))
    torch.testing.assert_close(got, x * math.sqrt(d_model) + espnet_pe(T, d_model), atol=1e-12,
                               rtol=1e-14)


def test_transformer_xl_rows():
    klen, demb = 640, 410
    got = posenc.positional_encoding(torch.arange(klen - 1, -1, -1), demb, layout="concat")
    torch.testing.assert_close(got.double(), transformer_xl_rows(klen, demb), atol=2e-6, rtol=0)
