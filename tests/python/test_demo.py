import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

import demo  # noqa: E402


def test_demo_short_run_loss_falls(tmp_path):
    results = demo.main(["--codes", "sinusoidal", "eager-sinusoidal", "--steps", "150",
                         "--seq-len", "6", "--long-len", "8", "--d-model", "32", "--batch", "32",
                         "--lr", "3e-3", "--out", str(tmp_path)])
    for r in results:
        first, last = sum(r.losses[:5]) / 5, sum(r.losses[-5:]) / 5
        assert last < 0.8 * first, (r.code, first, last)
        assert 0.0 <= r.accuracy <= 1.0 and r.step_ms > 0
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    assert (tmp_path / "position_codes.png").stat().st_size > 1000
