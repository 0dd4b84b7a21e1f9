"""Bad input raises a Python exception naming the argument; never a crash or garbage."""

import pytest
import torch

import posenc

X = torch.randn(2, 5, 8)
TABLE = torch.randn(10, 8)

CASES = [
    # (id, callable, exception, message fragment)
    ("x integer", lambda: posenc.add_positional(torch.ones(2, 5, 8, dtype=torch.long)), TypeError, "x must be a floating"),
    ("x not tensor", lambda: posenc.add_positional([1.0, 2.0]), TypeError, "x must be a Tensor"),
    ("x 1-d", lambda: posenc.add_positional(torch.randn(8)), ValueError, "x must have shape"),
    ("learned without table", lambda: posenc.add_positional(X, kind="learned"), ValueError, "needs table"),
    ("table width", lambda: posenc.add_positional(X, kind="learned", table=torch.randn(10, 7)), ValueError, "table must have shape"),
    ("table dtype", lambda: posenc.add_positional(X, kind="learned", table=TABLE.double()), TypeError, "table must have the dtype"),
    ("position outside table", lambda: posenc.add_positional(X, kind="learned", table=TABLE, positions=torch.tensor([0, 1, 2, 3, 10])), IndexError, "positions must be <"),
    ("offset beyond table", lambda: posenc.add_positional(X, kind="learned", table=TABLE, offset=6), IndexError, "outside the table"),
    ("negative position", lambda: posenc.add_positional(X, positions=torch.tensor([0, -1, 2, 3, 4])), IndexError, "positions must be >= 0"),
    ("float positions", lambda: posenc.add_positional(X, positions=torch.zeros(5)), TypeError, "positions must be an int64 or int32"),
    ("positions shape", lambda: posenc.add_positional(X, positions=torch.arange(4)), ValueError, "positions of shape"),
    ("positions not tensor", lambda: posenc.add_positional(X, positions=[0, 1, 2, 3, 4]), TypeError, "positions must be a Tensor"),
    ("unknown kind", lambda: posenc.add_positional(X, kind="rotary"), ValueError, "kind must be one of"),
    ("unknown combine", lambda: posenc.add_positional(X, combine="concat"), ValueError, "combine must be"),
    ("unknown convention", lambda: posenc.add_positional(X, convention="bert"), ValueError, "convention must be"),
    ("unknown layout", lambda: posenc.add_positional(X, layout="split"), ValueError, "layout must be"),
    ("dropout 1", lambda: posenc.add_positional(X, dropout=1.0), ValueError, "dropout must be in"),
    ("dropout negative", lambda: posenc.add_positional(X, dropout=-0.1), ValueError, "dropout must be in"),
    ("negative offset", lambda: posenc.add_positional(X, offset=-1), ValueError, "offset must be >= 0"),
    ("base zero", lambda: posenc.add_positional(X, base=0.0), ValueError, "base must be"),
    ("offset float", lambda: posenc.add_positional(X, offset=1.5), TypeError, "offset must be an int"),
    ("kind not str", lambda: posenc.add_positional(X, kind=3), TypeError, "kind must be a str"),
    ("generator wrong", lambda: posenc.add_positional(X, dropout=0.1, generator=3), TypeError, "generator must be"),
    ("op dropout without seed", lambda: torch.ops.posenc.add_positional(X, dropout=0.1), ValueError, "needs seed"),
    ("op seed dtype", lambda: torch.ops.posenc.add_positional(X, None, None, torch.tensor(1.0), dropout=0.1), TypeError, "seed must be an int64"),
    ("pe learned", lambda: posenc.positional_encoding(4, 8, kind="learned"), ValueError, "kind='learned'"),
    ("pe negative dim", lambda: posenc.positional_encoding(4, -1), ValueError, "dim must be >= 0"),
    ("pe negative n", lambda: posenc.positional_encoding(-4, 8), ValueError, "positions must be >= 0"),
    ("pe float positions", lambda: posenc.positional_encoding(torch.zeros(3), 8), TypeError, "positions must be an int64"),
    ("pe int dtype", lambda: posenc.positional_encoding(3, 8, dtype=torch.int32), TypeError, "dtype must be"),
    ("module dropout", lambda: posenc.nn.PositionalEncoding(8, dropout=1.5), ValueError, "dropout must be"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case):
    _, fn, exc, fragment = case
    before = X.clone()
    with pytest.raises(exc, match=fragment):
        fn()
    assert X.equal(before)


def test_device_mismatch_is_reported():
    if not torch.cuda.is_available():
        meta_positions = torch.arange(5, device="meta")
        with pytest.raises(RuntimeError, match="positions must be on the same device"):
            torch.ops.posenc.add_positional(X, meta_positions)
    else:
        with pytest.raises(RuntimeError, match="same device"):
            posenc.add_positional(X, positions=torch.arange(5, device="cuda"))
