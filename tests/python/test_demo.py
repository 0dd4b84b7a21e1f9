import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

import demo  # noqa: E402


def test_demo_short_run_loss_falls(tmp_path):
    results, patch_results, relative_results = demo.main(
        ["--codes", "sinusoidal", "eager-sinusoidal", "--steps", "150", "--seq-len", "6",
         "--long-len", "8", "--d-model", "32", "--batch", "32", "--lr", "3e-3",
         "--image-steps", "250", "--image-codes", "2d", "--relative-steps", "150",
         "--relative-codes", "t5", "--out", str(tmp_path)])
    for r in results:
        first, last = sum(r.losses[:5]) / 5, sum(r.losses[-5:]) / 5
        assert last < 0.8 * first, (r.code, first, last)
        assert 0.0 <= r.accuracy <= 1.0 and r.step_ms > 0
    assert [r.code for r in patch_results] == ["2d"]
    grid = patch_results[0]
    # With the 2D code the model learns to locate the mark (chance: 1 in 64).
    assert sum(grid.losses[-5:]) < 0.5 * sum(grid.losses[:5]), grid.losses
    assert grid.seen_accuracy > 0.3 and 0.0 <= grid.held_out_accuracy <= 1.0
    # The relative task with T5's buckets: the loss falls, and it is tested at 1, 2, 4 and 8
    # times the training length.
    (t5,) = relative_results
    assert t5.code == "t5" and sorted(t5.accuracy_by_length) == [6, 12, 24, 48]
    assert sum(t5.losses[-5:]) < 0.8 * sum(t5.losses[:5]), t5.losses
    assert all(0.0 <= a <= 1.0 for a in t5.accuracy_by_length.values())
    for name in ("loss_curves.png", "position_codes.png", "patch_positions.png",
                 "relative_positions.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_image_batches_mark_the_named_cell():
    import torch

    cells = torch.tensor([3, 17, 60])
    patches, row, column = demo.make_images(64, cells, torch.Generator().manual_seed(0))
    assert patches.shape == (64, demo.GRID**2, demo.PATCH**2)
    assert set((row * demo.GRID + column).tolist()) <= set(cells.tolist())
    # The marked patch (+3 on 7 pixels) is the brightest one of almost every image.
    brightest = patches.sum(-1).argmax(-1)
    assert (brightest == row * demo.GRID + column).float().mean() > 0.9
    image = demo.patches_to_image(patches[0])
    r, c = row[0].item(), column[0].item()
    block = image[r * demo.PATCH:(r + 1) * demo.PATCH, c * demo.PATCH:(c + 1) * demo.PATCH]
    assert torch.equal(block.flatten(), patches[0, r * demo.GRID + c])
