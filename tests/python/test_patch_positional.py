"""2D/3D sin-cos codes on a patch grid (add_positional/positional_encoding with grid, and
posenc.nn.PatchPositionalEncoding): parity with MAE, DiT, SD3 (diffusers), CogVideoX and
big_vision from their published code, exact angles, autograd, opcheck, compile, properties."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.testing._internal.optests import opcheck

import posenc
from posenc.nn import PatchPositionalEncoding
from references import (cogvideox_3d_sincos_pos_embed, diffusers_2d_sincos_pos_embed,
                        diffusers_cropped_pos_embed, dit_2d_sincos_pos_embed, dropout_scale,
                        grid_code, posemb_sincos_2d, reference_code)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2,
             torch.float16: 2e-3}


def _added(module_or_fn, pe: torch.Tensor, dtype=torch.float64, batch: int = 2):
    """x + pe through the module or function, with x random (never zeros alone)."""
    x = torch.randn(batch, *pe.shape, dtype=torch.float64).to(dtype)
    y = module_or_fn(x)
    want = x.to(torch.float64) + pe
    return y.to(torch.float64), want


# ---- parity with the published code -----------------------------------------------------------


@pytest.mark.parametrize("dim,grid_size,extra_tokens", [(16, 4, 1), (64, 7, 1), (32, 5, 0),
                                                        (48, 3, 4), (768, 14, 1)])
def test_mae_and_dit_pos_embed(dim, grid_size, extra_tokens):
    want = dit_2d_sincos_pos_embed(dim, grid_size, cls_token=extra_tokens > 0,
                                   extra_tokens=extra_tokens)
    tokens = extra_tokens + grid_size**2
    # The table itself.
    got = posenc.positional_encoding(tokens, dim,
                                     grid=posenc.Grid((grid_size, grid_size), extra_tokens),
                                     dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # Fused with the add, in every dtype, and as the module.
    module = PatchPositionalEncoding(dim, grid_size, extra_tokens=extra_tokens)
    for dtype in DTYPES:
        y, expected = _added(module, want, dtype)
        tolerance = TOLERANCE[dtype] * (1 + expected.abs())
        assert ((y - expected).abs() <= tolerance).all(), dtype


@pytest.mark.parametrize("height,width,base_size,interpolation_scale", [
    (8, 8, 8, 1.0), (6, 10, 16, 1.0), (12, 7, 64, 2.0), (5, 5, 32, 0.5)])
def test_sd3_pos_embed_at_any_resolution(height, width, base_size, interpolation_scale):
    # PatchEmbed without pos_embed_max_size recomputes the table at the input's grid.
    published = diffusers_2d_sincos_pos_embed(64, (height, width), base_size,
                                              interpolation_scale)
    exact = diffusers_2d_sincos_pos_embed(64, (height, width), base_size, interpolation_scale,
                                          grid_dtype=torch.float64)
    module = PatchPositionalEncoding(64, (8, 8), base_size=base_size,
                                     interpolation_scale=interpolation_scale)
    x = torch.randn(2, height * width, 64, dtype=torch.float64)
    y = module(x, grid=(height, width)) - x
    # diffusers rounds the grid coordinates to float32 (up to base_size / interpolation_scale).
    torch.testing.assert_close(y, published.expand_as(y), atol=1e-5, rtol=0)
    torch.testing.assert_close(y, exact.expand_as(y), atol=1e-12, rtol=0)


@pytest.mark.parametrize("height,width", [(4, 4), (6, 3), (2, 9), (9, 9)])
def test_sd3_pos_embed_max_size_centre_crop(height, width):
    max_size, base_size = 9, 4
    table = diffusers_2d_sincos_pos_embed(32, max_size, base_size, 1.0, grid_dtype=torch.float64)
    want = diffusers_cropped_pos_embed(table, max_size, height, width)
    module = PatchPositionalEncoding(32, (height, width), base_size=base_size,
                                     pos_embed_max_size=max_size)
    y, expected = _added(module, want)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="exceeds pos_embed_max_size"):
        module(torch.randn(1, 10 * 2, 32), grid=(10, 2))


@pytest.mark.parametrize("frames,height,width,spatial_scale,temporal_scale", [
    (3, 4, 5, 1.0, 1.0), (2, 6, 6, 1.875, 1.0), (4, 3, 2, 1.0, 2.0)])
def test_cogvideox_3d_pos_embed(frames, height, width, spatial_scale, temporal_scale):
    dim = 64
    published = cogvideox_3d_sincos_pos_embed(dim, (width, height), frames, spatial_scale,
                                              temporal_scale).reshape(-1, dim)
    module = PatchPositionalEncoding(dim, (frames, height, width),
                                     interpolation_scale=spatial_scale,
                                     temporal_interpolation_scale=temporal_scale)
    x = torch.randn(2, frames * height * width, dim, dtype=torch.float64)
    code = module(x) - x
    # diffusers' float32 coordinates: exact for these scales but 1.875 (which rounds).
    torch.testing.assert_close(code, published.expand_as(code), atol=2e-6, rtol=0)
    tokens = torch.arange(frames * height * width)
    exact = grid_code(tokens, dim, (frames, height, width), grid_dims=[16, 24, 24],
                      grid_axes=[0, 2, 1],
                      grid_scale=[1 / temporal_scale, 1 / spatial_scale, 1 / spatial_scale],
                      layout="concat")
    torch.testing.assert_close(code, exact.expand_as(code), atol=1e-12, rtol=0)


def test_big_vision_posemb_sincos_2d():
    want = posemb_sincos_2d(5, 7, 48)
    module = PatchPositionalEncoding(48, (5, 7), convention="tensor2tensor")
    y, expected = _added(module, want)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)


def test_mae_decoder_positions_of_kept_patches():
    # MAE adds the code after random masking: each sample keeps its own patches.
    dim, grid_size, keep = 32, 6, 9
    table = dit_2d_sincos_pos_embed(dim, grid_size, cls_token=True, extra_tokens=1)
    kept = torch.stack([torch.randperm(grid_size**2)[:keep] + 1 for _ in range(3)])
    positions = torch.cat([torch.zeros(3, 1, dtype=torch.long), kept], dim=1)  # cls first
    module = PatchPositionalEncoding(dim, grid_size, extra_tokens=1)
    x = torch.randn(3, keep + 1, dim, dtype=torch.float64)
    y = module(x, positions=positions)
    torch.testing.assert_close(y, x + table[positions], atol=1e-12, rtol=0)


def test_state_dict_pos_embed_is_checked_and_dropped():
    module = PatchPositionalEncoding(32, 4, extra_tokens=1)
    table = dit_2d_sincos_pos_embed(32, 4, cls_token=True, extra_tokens=1).float()[None]
    module.load_state_dict({"pos_embed": table})
    with pytest.raises(ValueError, match="is not this module's code"):
        module.load_state_dict({"pos_embed": table.flip(1)})


# ---- exact angles, combine, dropout -----------------------------------------------------------


def test_exact_angles_far_from_the_origin():
    # Coordinates near 2^24 along both axes: float32 within 2e-6 of float64.
    origin = [2**24 - 40, 2**23 + 7]
    tokens = torch.arange(5 * 8)
    got = posenc.positional_encoding(tokens, 256, grid=posenc.Grid((5, 8), origin=origin))
    want = grid_code(tokens, 256, (5, 8), grid_origin=origin, layout="concat")
    assert (got.double() - want).abs().max() < 2e-6


@pytest.mark.parametrize("kind", ["sinusoidal", "cosine", "linear", "damped"])
def test_every_computed_kind_and_mul(kind):
    grid, dims = (3, 4), [10, 14]
    tokens = torch.arange(2 + 12)
    want = grid_code(tokens, 24, grid, extra_tokens=2, grid_dims=dims, kind=kind, base=50.0)
    x = torch.randn(2, 14, 24, dtype=torch.float64)
    for combine, expected in [("add", 1.5 * x + want), ("mul", 1.5 * x * want)]:
        y = posenc.add_positional(x, grid=posenc.Grid(grid, extra_tokens=2, dims=dims),
                                  kind=kind, base=50.0, combine=combine, scale=1.5,
                                  layout="interleaved")
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)


def test_dropout_mask_is_the_1d_mask():
    # The mask depends on the seed and the element index only, as for 1-D codes.
    x = torch.rand(2, 17, 16) + 0.5
    seed = torch.tensor(1234)
    grid = torch.ops.posenc.add_positional(x, None, None, seed, grid=[4, 4], extra_tokens=1,
                                           dropout=0.3)
    line = torch.ops.posenc.add_positional(x, None, None, seed, dropout=0.3)
    assert torch.equal(grid == 0, line == 0)
    kept = grid != 0
    pe = grid_code(torch.arange(17), 16, (4, 4), extra_tokens=1, layout="concat")
    torch.testing.assert_close(grid[kept].double(), ((x.double() + pe) * dropout_scale(0.3))[kept],
                               atol=1e-5, rtol=1e-6)


def test_grid_layout_defaults_to_concat():
    # MAE's, DiT's and big_vision's grid codes are concat: a grid without a layout gets it, from
    # the wrappers and the operator alike; 1-D codes keep interleaved.
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    tokens = torch.arange(13)
    concat = grid_code(tokens, 8, (3, 4), extra_tokens=1, layout="concat")
    interleaved = grid_code(tokens, 8, (3, 4), extra_tokens=1, layout="interleaved")
    assert (concat - interleaved).abs().max() > 0.1
    grid = posenc.Grid((3, 4), extra_tokens=1)
    torch.testing.assert_close(posenc.add_positional(x, grid=grid), x + concat, atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(posenc.add_positional(x, grid=grid, layout="interleaved"),
                               x + interleaved, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.ops.posenc.add_positional(x, grid=[3, 4], extra_tokens=1),
                               x + concat, atol=1e-12, rtol=0)
    torch.testing.assert_close(posenc.positional_encoding(13, 8, grid=grid, dtype=torch.float64),
                               concat, atol=1e-12, rtol=0)
    one_d = posenc.positional_encoding(13, 8, dtype=torch.float64)
    torch.testing.assert_close(one_d, reference_code(tokens, 8), atol=1e-12, rtol=0)


def test_grid_sizes_stand_for_a_grid_and_compile():
    x = torch.randn(2, 12, 8)
    assert torch.equal(posenc.add_positional(x, grid=(3, 4)),
                       posenc.add_positional(x, grid=posenc.Grid([3, 4])))
    grid = posenc.Grid((2, 3), extra_tokens=1, dims=(2, 6), axes=(0, 1), origin=(1, 0),
                       scale=(0.5, 2.0))
    assert hash(grid) == hash(posenc.Grid([2, 3], 1, [2, 6], [0, 1], [1, 0], [0.5, 2]))
    compiled = torch.compile(lambda x: posenc.add_positional(x, grid=grid), fullgraph=True)
    y = torch.randn(2, 7, 8)
    torch.testing.assert_close(compiled(y), posenc.add_positional(y, grid=grid), atol=0, rtol=0)


# ---- autograd, opcheck, compile ---------------------------------------------------------------

GRID_ARGS = dict(grid=[2, 3], extra_tokens=1, grid_dims=[6, 4], grid_axes=[0, 1],
                 grid_origin=[1, 2], grid_scale=[0.5, 2.0])


@pytest.mark.parametrize("combine", ["add", "mul"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_gradcheck(combine, dropout):
    x = torch.randn(2, 7, 10, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(5)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [6, 5, 0, 2, 2, 1, 3]])

    def f(x):
        return torch.ops.posenc.add_positional(x, positions, None, seed, combine=combine,
                                               scale=0.75, dropout=dropout, **GRID_ARGS)

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x = torch.randn(2, 7, 10, dtype=dtype)
    opcheck(torch.ops.posenc.add_positional.default, (x,), dict(GRID_ARGS))
    opcheck(torch.ops.posenc.add_positional.default, (x, torch.tensor([6, 0, 1, 2, 3, 4, 5])),
            dict(GRID_ARGS, combine="mul"))
    opcheck(torch.ops.posenc.add_positional_backward.default, (x,), dict(GRID_ARGS))
    opcheck(torch.ops.posenc.positional_encoding.default, (torch.arange(7).view(1, 7), 10),
            dict(GRID_ARGS, layout="concat"))


def test_torch_compile_fullgraph_module():
    module = PatchPositionalEncoding(32, (4, 6), extra_tokens=1, base_size=4)
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(2, 25, 32)
    torch.testing.assert_close(compiled(x), module(x), atol=0, rtol=0)
    x = torch.randn(2, 1 + 3 * 5, 32)
    torch.testing.assert_close(compiled(x, grid=(3, 5)), module(x, grid=(3, 5)),
                               atol=0, rtol=0)


def test_backward_of_the_module_is_the_dropout_mask():
    module = PatchPositionalEncoding(16, 3, extra_tokens=1, dropout=0.5).train()
    x = torch.randn(2, 10, 16, requires_grad=True)
    torch.manual_seed(3)
    y = module(x)
    y.sum().backward()
    pe = grid_code(torch.arange(10), 16, (3, 3), extra_tokens=1, layout="concat").float()
    kept = y != 0
    scale = dropout_scale(0.5)
    torch.testing.assert_close(x.grad, torch.where(kept, scale, 0.0))
    torch.testing.assert_close(y[kept], ((x + pe) * scale)[kept].detach())


# ---- properties ---------------------------------------------------------------------------------


@st.composite
def grid_cases(draw):
    axes = draw(st.integers(1, 3))
    grid = [draw(st.integers(1, 5)) for _ in range(axes)]
    dims = [draw(st.integers(1, 9)) for _ in range(axes)]
    order = draw(st.permutations(list(range(axes))))
    origin = [draw(st.integers(0, 1000)) for _ in range(axes)]
    scale = [draw(st.sampled_from([1.0, 0.5, 0.25, 3.0, 1 / 3])) for _ in range(axes)]
    extra = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["sinusoidal", "cosine", "linear", "damped"]))
    layout = draw(st.sampled_from(["interleaved", "concat"]))
    convention = draw(st.sampled_from(["vaswani", "tensor2tensor"]))
    dtype = draw(st.sampled_from(DTYPES))
    explicit = draw(st.booleans())
    return grid, dims, list(order), origin, scale, extra, kind, layout, convention, dtype, explicit


@given(grid_cases())
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
def test_property_grid_codes_match_float64_reference(case):
    grid, dims, order, origin, scale, extra, kind, layout, convention, dtype, explicit = case
    dim = sum(dims)
    tokens = extra + math.prod(grid)
    generator = torch.Generator().manual_seed(len(grid) * 100 + dim)
    positions = torch.randint(0, tokens, (3, 5), generator=generator) if explicit else None
    seq = 5 if explicit else tokens
    x = torch.randn(3, seq, dim, generator=generator, dtype=torch.float64).to(dtype)
    options = dict(grid=posenc.Grid(grid, extra_tokens=extra, dims=dims, axes=order,
                                    origin=origin, scale=scale),
                   kind=kind, layout=layout, convention=convention)
    y = posenc.add_positional(x, positions=positions, **options)
    index = positions if explicit else torch.arange(tokens)
    pe = grid_code(index, dim, grid, extra_tokens=extra, grid_dims=dims, grid_axes=order,
                   grid_origin=origin, grid_scale=scale, kind=kind, layout=layout,
                   convention=convention)
    want = x.to(torch.float64) + pe
    tolerance = TOLERANCE[dtype] * (1 + want.abs())
    assert ((y.to(torch.float64) - want).abs() <= tolerance).all()


# ---- against the real diffusers package (SD3's PatchEmbed, CogVideoX's 3D table) -------------


@pytest.mark.parametrize("height,width,interpolation_scale", [(8, 8, 1.0), (6, 10, 2.0),
                                                             (12, 4, 0.5)])
def test_diffusers_get_2d_sincos_pos_embed(height, width, interpolation_scale):
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    want = embeddings.get_2d_sincos_pos_embed(64, (height, width), cls_token=True,
                                              extra_tokens=1,
                                              interpolation_scale=interpolation_scale,
                                              base_size=16, output_type="pt")
    module = PatchPositionalEncoding(64, (height, width), extra_tokens=1, base_size=16,
                                     interpolation_scale=interpolation_scale)
    x = torch.randn(2, 1 + height * width, 64, dtype=torch.float64)
    # diffusers' coordinates are float32 (up to base_size / interpolation_scale).
    torch.testing.assert_close(module(x) - x, want.double().expand_as(x), atol=2e-5, rtol=0)


@pytest.mark.parametrize("max_size", [None, 12])
@pytest.mark.parametrize("latent", [(16, 16), (12, 20), (24, 8)])
def test_diffusers_sd3_patch_embed(max_size, latent):
    """diffusers' PatchEmbed (SD3: patch 2, built for 32 x 32 latents) at other resolutions:
    its projection then posenc's code equals its forward."""
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    torch.manual_seed(0)
    patch_embed = embeddings.PatchEmbed(height=32, width=32, patch_size=2, in_channels=4,
                                        embed_dim=64, pos_embed_max_size=max_size)
    image = torch.randn(2, 4, *latent)
    grid = (latent[0] // 2, latent[1] // 2)
    module = PatchPositionalEncoding(64, grid, base_size=16,
                                     interpolation_scale=patch_embed.interpolation_scale,
                                     pos_embed_max_size=max_size)
    with torch.no_grad():
        want = patch_embed(image)
        tokens = patch_embed.proj(image).flatten(2).transpose(1, 2)
        got = module(tokens, grid=grid)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-6)


def test_diffusers_get_3d_sincos_pos_embed():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    # CogVideoX: spatial_size is (W, H); interpolation scales of its 2B model.
    want = embeddings.get_3d_sincos_pos_embed(64, (6, 4), 3, spatial_interpolation_scale=1.875,
                                              temporal_interpolation_scale=1.0,
                                              output_type="pt")
    module = PatchPositionalEncoding(64, (3, 4, 6), interpolation_scale=1.875)
    x = torch.randn(2, 3 * 4 * 6, 64, dtype=torch.float64)
    torch.testing.assert_close(module(x) - x, want.reshape(1, -1, 64).double().expand_as(x),
                               atol=2e-6, rtol=0)
