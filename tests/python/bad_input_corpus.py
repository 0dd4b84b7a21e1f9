"""The second half of the bad-input corpus: every torch.ops.posenc operator, backward ops
included, called with one argument made bad at a time, starting from a valid call. Each case is
(id, callable, exception type, message fragment that names the argument)."""

import torch

import posenc

I64_MIN, I64_MAX = -(2**63), 2**63 - 1

X = torch.randn(2, 5, 8)
GRAD = torch.randn(2, 5, 8)
IDS = torch.tensor([[0, 3, 4, 9, 2], [1, 1, 5, 6, 7]])
WEIGHT = torch.randn(10, 8)
TABLE = torch.randn(12, 8)
SEED = torch.tensor(7)
POSITIONS = torch.tensor([0, 2, 4, 6, 11])
Q = torch.randn(2, 5, 4, 8)
K = torch.randn(2, 5, 2, 8)
Q_THD = torch.randn(6, 4, 8)
K_THD = torch.randn(6, 2, 8)

# A valid call of each operator (arguments by schema name), exercising every argument.
BASE = {
    "add_positional": dict(x=X, positions=POSITIONS, table=TABLE, seed=SEED, kind="learned",
                           combine="mul", dropout=0.1),
    "add_positional_backward": dict(grad=GRAD, positions=POSITIONS, table=TABLE, seed=SEED,
                                    kind="learned", combine="mul", dropout=0.1),
    "add_positional_table_backward": dict(grad=GRAD, x=X, positions=POSITIONS, seed=SEED,
                                          table_rows=12, combine="mul", dropout=0.1),
    "embedding": dict(ids=IDS, weight=WEIGHT, positions=POSITIONS, table=TABLE, seed=SEED,
                      kind="learned", combine="mul", padding_idx=1, dropout=0.1),
    "embedding_backward": dict(grad=GRAD, ids=IDS, weight=WEIGHT, positions=POSITIONS,
                               table=TABLE, seed=SEED, kind="learned", combine="mul",
                               padding_idx=1, dropout=0.1),
    "embedding_table_backward": dict(grad=GRAD, ids=IDS, weight=WEIGHT, positions=POSITIONS,
                                     seed=SEED, table_rows=12, combine="mul", padding_idx=1,
                                     dropout=0.1),
    "embedding_fairseq": dict(ids=IDS, weight=WEIGHT, table=TABLE, seed=SEED, kind="learned",
                              padding_idx=1, fairseq_positions=True, dropout=0.1),
    "positional_encoding": dict(positions=torch.arange(6).view(2, 3), dim=8),
    # 2D codes: 1 cls token and a 2 x 2 grid of patches (T = 5), every grid argument given.
    "add_positional_grid": dict(x=X, grid=[2, 2], extra_tokens=1, grid_dims=[2, 6],
                                grid_axes=[1, 0], grid_origin=[0, 3], grid_scale=[1.0, 0.5]),
    "add_positional_backward_grid": dict(grad=GRAD, grid=[2, 2], extra_tokens=1,
                                         grid_dims=[2, 6], grid_axes=[1, 0],
                                         grid_origin=[0, 3], grid_scale=[1.0, 0.5]),
    "positional_encoding_grid": dict(positions=torch.arange(6).view(2, 3), dim=8, grid=[5],
                                     extra_tokens=1),
    "rotary": dict(q=Q, k=K, positions=torch.arange(5).expand(2, 5), inv_freq=torch.ones(4)),
    "rotary_offsets": dict(q=Q, k=K, offsets=torch.tensor([3, 9]), rotary_dim=4),
    "rotary_thd": dict(q=Q_THD, k=K_THD, offsets=torch.tensor([0, 3]),
                       cu_seqlens=torch.tensor([0, 2, 6]), layout="thd"),
    "rotary_tables": dict(q=torch.randn(2, 3, 5, 8), k=torch.randn(2, 1, 5, 8),
                          cos=torch.randn(2, 5, 8), sin=torch.randn(2, 5, 8)),
    "rope_frequencies": dict(dim=16, rope_type="yarn", factor=4.0, max_position_embeddings=4096),
}


def call(op_base, **changes):
    """The valid call `op_base` with `changes` (a None passes None)."""
    arguments = dict(BASE[op_base], **changes)
    op = op_base.split("_offsets")[0].split("_thd")[0].replace("embedding_fairseq", "embedding")
    op = op.removesuffix("_grid")
    return getattr(torch.ops.posenc, op)(**arguments)


def cases():
    result = []

    def add(op_base, name, exc, fragment, **changes):
        result.append((f"{op_base}: {name}", lambda: call(op_base, **changes), exc, fragment))

    meta = lambda t: t.to("meta")  # noqa: E731  (another device than the CPU call's)

    # ---- every tensor argument: dtype, shape, device ----------------------------------------
    rows_ops = ["add_positional", "add_positional_backward", "add_positional_table_backward"]
    for base in rows_ops:
        main = "x" if base == "add_positional" else "grad"
        add(base, f"{main} int", TypeError, f"{main} must be a floating", **{main: X.long()})
        add(base, f"{main} 1-d", ValueError, f"{main} must have shape", **{main: X[0, 0]})
        add(base, f"{main} 11-d", ValueError, f"{main} must have shape",
            **{main: torch.randn([1] * 9 + [5, 8])})
        add(base, "positions float", TypeError, "positions must be an int64 or int32",
            positions=POSITIONS.float())
        add(base, "positions shape", ValueError, "positions of shape",
            positions=torch.arange(4))
        add(base, "positions device", RuntimeError, "positions must be on the device",
            positions=meta(POSITIONS))
        add(base, "seed float", TypeError, "seed must be an int64", seed=SEED.float())
        add(base, "seed two elements", TypeError, "seed must be an int64 tensor with one element",
            seed=torch.tensor([1, 2]))
        add(base, "seed missing", ValueError, "needs seed", seed=None)
        add(base, "positions negative", IndexError, "positions must be >= 0",
            positions=torch.tensor([0, 1, -1, 2, 3]))
        add(base, "positions -2^63", IndexError, "positions must be >= 0",
            positions=torch.tensor([0, 1, I64_MIN, 2, 3]))
        add(base, "positions past the table", IndexError, "positions must be <",
            positions=torch.tensor([0, 1, 12, 2, 3]))
        add(base, "positions 2^63-1", IndexError, "positions must be <",
            positions=torch.tensor([0, 1, I64_MAX, 2, 3]))
        add(base, "positions and offset", ValueError, "give positions or offset", offset=3)
        add(base, "offset negative", ValueError, "offset must be >= 0", offset=-1, positions=None)
        add(base, "offset 2^63-1", ValueError, "overflows int64", offset=I64_MAX, positions=None)
        add(base, "offset past the table", IndexError, "outside the table", offset=10,
            positions=None)
        add(base, "combine typo", ValueError, "combine must be", combine="multiply")
        add(base, "dropout 1.5", ValueError, "dropout must be in", dropout=1.5)
        add(base, "dropout -0.1", ValueError, "dropout must be in", dropout=-0.1)
        add(base, "dropout nan", ValueError, "dropout must be in", dropout=float("nan"))
        add(base, "scale nan", ValueError, "scale must be a finite", scale=float("nan"))
        add(base, "scale inf", ValueError, "scale must be a finite", scale=float("inf"))
    for base in ["add_positional", "add_positional_backward"]:
        add(base, "table width", ValueError, "table must have shape", table=torch.randn(12, 7))
        add(base, "table 1-d", ValueError, "table must have shape", table=torch.randn(12))
        add(base, "table dtype", TypeError, "table must have the dtype", table=TABLE.double())
        add(base, "table device", RuntimeError, "table must be on the device", table=meta(TABLE))
        add(base, "table missing", ValueError, "needs table", table=None)
        add(base, "table with sinusoidal", ValueError, "table is used only with kind='learned'",
            kind="sinusoidal")
        add(base, "kind typo", ValueError, "kind must be one of", kind="sinusoid")
        add(base, "convention typo", ValueError, "convention must be", convention="bert",
            kind="sinusoidal", table=None)
        add(base, "layout typo", ValueError, "layout must be", layout="split", kind="cosine",
            table=None)
        add(base, "base 0", ValueError, "base must be", base=0.0, kind="sinusoidal", table=None)
        add(base, "base -1", ValueError, "base must be", base=-1.0, kind="sinusoidal", table=None)
        add(base, "base nan", ValueError, "base must be", base=float("nan"), kind="sinusoidal",
            table=None)
        add(base, "base inf", ValueError, "base must be", base=float("inf"), kind="damped",
            table=None)
    base = "add_positional_table_backward"
    add(base, "x missing for mul", ValueError, "needs x", x=None)
    add(base, "x shape", ValueError, "x must have grad's shape", x=torch.randn(2, 5, 7))
    add(base, "x dtype", TypeError, "x must have grad's dtype", x=X.double())
    add(base, "x device", RuntimeError, "x must be on the device", x=meta(X))
    add(base, "table_rows -1", ValueError, "table_rows must be >= 0", table_rows=-1)
    add(base, "table_rows 2^40", ValueError, "table_rows = 1099511627776 is too large",
        table_rows=2**40, positions=None)
    add(base, "table_rows -2^63", ValueError, "table_rows must be >= 0", table_rows=I64_MIN)
    add(base, "table_rows below positions", IndexError, "positions must be <", table_rows=5)

    emb_ops = ["embedding", "embedding_backward", "embedding_table_backward"]
    for base in emb_ops:
        add(base, "ids float", TypeError, "ids must be an int64 or int32", ids=IDS.float())
        add(base, "ids 0-d", ValueError, "ids must have shape", ids=torch.tensor(1))
        add(base, "ids device", RuntimeError, "ids must be on the device", ids=meta(IDS))
        add(base, "ids too large", IndexError, "ids must be in",
            ids=torch.tensor([[0, 3, 4, 10, 2], [1, 1, 5, 6, 7]]))
        add(base, "ids negative", IndexError, "ids must be in",
            ids=torch.tensor([[0, 3, 4, -1, 2], [1, 1, 5, 6, 7]]))
        add(base, "ids 2^63-1", IndexError, "ids must be in",
            ids=torch.tensor([[0, 3, 4, I64_MAX, 2], [1, 1, 5, 6, 7]]))
        add(base, "ids -2^63", IndexError, "ids must be in",
            ids=torch.tensor([[0, 3, 4, I64_MIN, 2], [1, 1, 5, 6, 7]]))
        add(base, "weight int", TypeError, "weight must be a floating", weight=WEIGHT.long())
        add(base, "weight 1-d", ValueError, "weight must have shape", weight=WEIGHT[0])
        add(base, "weight 3-d", ValueError, "weight must have shape", weight=WEIGHT[None])
        add(base, "positions float", TypeError, "positions must be an int64 or int32",
            positions=POSITIONS.float())
        add(base, "positions shape", ValueError, "broadcastable to ids.shape",
            positions=torch.arange(4))
        add(base, "positions device", RuntimeError, "positions must be on the device",
            positions=meta(POSITIONS))
        add(base, "positions negative", IndexError, "positions must be >= 0",
            positions=torch.tensor([0, 1, -5, 2, 3]))
        add(base, "positions past the table", IndexError, "positions must be <",
            positions=torch.tensor([0, 1, 2**62, 2, 3]))
        add(base, "positions and offset", ValueError, "give positions or offset", offset=1)
        add(base, "offset 2^63-1", ValueError, "overflows int64", offset=I64_MAX, positions=None)
        add(base, "offset past the table", IndexError, "outside the table", offset=8,
            positions=None)
        add(base, "seed float", TypeError, "seed must be an int64", seed=SEED.double())
        add(base, "seed missing", ValueError, "needs seed", seed=None)
        add(base, "seed on meta", RuntimeError, "seed must be on the device", seed=meta(SEED))
        add(base, "padding_idx V", ValueError, "padding_idx must be within", padding_idx=10)
        add(base, "padding_idx -V-1", ValueError, "padding_idx must be within", padding_idx=-11)
        add(base, "padding_idx -2^63", ValueError, "padding_idx must be within",
            padding_idx=I64_MIN)
        add(base, "padding_idx 2^63-1", ValueError, "padding_idx must be within",
            padding_idx=I64_MAX)
        add(base, "fairseq without padding_idx", ValueError, "needs padding_idx",
            fairseq_positions=True, positions=None, padding_idx=None)
        add(base, "fairseq with positions", ValueError, "do not pass a positions tensor",
            fairseq_positions=True)
        add(base, "fairseq with offset", ValueError, "offset must be 0", fairseq_positions=True,
            positions=None, offset=2)
        add(base, "fairseq past the table", IndexError, "positions='fairseq' reach",
            fairseq_positions=True, positions=None, padding_idx=8)
        add(base, "dropout nan", ValueError, "dropout must be in", dropout=float("nan"))
        add(base, "dropout 2", ValueError, "dropout must be in", dropout=2.0)
        add(base, "scale nan", ValueError, "scale must be a finite", scale=float("nan"))
        add(base, "combine typo", ValueError, "combine must be", combine="concat")
    for base in ["embedding", "embedding_backward"]:
        add(base, "table width", ValueError, "weight.size\\(1\\)", table=torch.randn(12, 3))
        add(base, "table dtype", TypeError, "table must have the dtype", table=TABLE.half())
        add(base, "table device", RuntimeError, "table must be on the device", table=meta(TABLE))
        add(base, "table missing", ValueError, "needs table", table=None)
        add(base, "table with cosine", ValueError, "table is used only", kind="cosine")
        add(base, "kind typo", ValueError, "kind must be one of", kind="rotary")
        add(base, "layout typo", ValueError, "layout must be", layout="halves",
            kind="sinusoidal", table=None)
        add(base, "convention typo", ValueError, "convention must be", convention="t2t",
            kind="sinusoidal", table=None)
        add(base, "base nan", ValueError, "base must be", base=float("nan"), kind="sinusoidal",
            table=None)
    for base in ["embedding_backward", "embedding_table_backward"]:
        add(base, "grad shape", ValueError, "grad must have shape ids.shape",
            grad=torch.randn(2, 4, 8))
        add(base, "grad width", ValueError, "grad must have shape ids.shape",
            grad=torch.randn(2, 5, 7))
        add(base, "grad rank", ValueError, "grad must have shape", grad=torch.randn(5, 8))
        add(base, "grad dtype", TypeError, "grad must have weight's dtype", grad=GRAD.double())
        add(base, "grad int", TypeError, "grad must be a floating", grad=GRAD.long())
        add(base, "grad device", RuntimeError, "grad must be on the device", grad=meta(GRAD))
    base = "embedding_table_backward"
    add(base, "table_rows -1", ValueError, "table_rows must be >= 0", table_rows=-1)
    add(base, "table_rows 2^40", ValueError, "is too large", table_rows=2**40)
    add(base, "table_rows below positions", IndexError, "positions must be <", table_rows=11)
    base = "embedding_fairseq"
    add(base, "padding_idx past the table", IndexError, "positions='fairseq' reach",
        padding_idx=7)

    # ---- positional_encoding ----------------------------------------------------------------
    base = "positional_encoding"
    add(base, "positions float", TypeError, "positions must be an int64", positions=X)
    # Negative positions are relative ones for a computed code; a grid's token indices are not.
    add("positional_encoding_grid", "positions negative", IndexError,
        r"positions must be >= 0 \(token indices of the grid\)", positions=torch.tensor([0, -3]))
    add("positional_encoding_grid", "positions -2^63", IndexError, "positions must be >= 0",
        positions=torch.tensor([I64_MIN]))
    add(base, "dim -1", ValueError, "dim must be >= 0", dim=-1)
    add(base, "dim 2^40", ValueError, "dim = 1099511627776 is too large", dim=2**40)
    add(base, "dim 2^62", ValueError, "is too large", dim=2**62)
    add(base, "kind learned", ValueError, "kind='learned'", kind="learned")
    add(base, "kind typo", ValueError, "kind must be one of", kind="sin")
    add(base, "dtype int", TypeError, "dtype must be", dtype=torch.int64)
    add(base, "base inf", ValueError, "base must be", base=float("inf"))
    add(base, "layout typo", ValueError, "layout must be", layout="concatenated")

    # ---- rotary -----------------------------------------------------------------------------
    for base in ["rotary", "rotary_offsets"]:
        add(base, "q int", TypeError, "q must be a floating", q=Q.long())
        add(base, "q 3-d", ValueError, "q must have 4 dimensions", q=Q[0])
        add(base, "k dtype", TypeError, "k must have q's dtype", k=K.double())
        add(base, "k 3-d", ValueError, "k must have 4 dimensions", k=K[0])
        add(base, "k batch", ValueError, "agree on batch and sequence", k=K[:1])
        add(base, "k head_dim", ValueError, "same head_dim", k=torch.randn(2, 5, 2, 6))
        add(base, "k device", RuntimeError, "k must be on the device", k=meta(K))
        add(base, "layout typo", ValueError, "layout must be", layout="bsd")
        add(base, "precision typo", ValueError, "precision must be", precision="fp32")
        add(base, "rotary_dim odd", ValueError, "rotary_dim must be even", rotary_dim=3)
        add(base, "rotary_dim negative", ValueError, "rotary_dim must be even", rotary_dim=-2)
        add(base, "rotary_dim too large", ValueError, "rotary_dim must be even", rotary_dim=10)
        add(base, "rotary_dim 2^62", ValueError, "rotary_dim must be even", rotary_dim=2**62)
        add(base, "base nan", ValueError, "base must be", base=float("nan"))
        add(base, "base inf", ValueError, "base must be", base=float("inf"))
        add(base, "base 0", ValueError, "base must be", base=0.0)
        add(base, "attention_factor inf", ValueError, "attention_factor must be finite",
            attention_factor=float("inf"))
        add(base, "attention_factor nan", ValueError, "attention_factor must be finite",
            attention_factor=float("nan"))
        add(base, "offset negative", ValueError, "offset must be >= 0", offset=-1)
        add(base, "cu_seqlens without thd", ValueError, "cu_seqlens is for layout 'thd'",
            cu_seqlens=torch.tensor([0, 5]))
    base = "rotary"
    add(base, "positions float", TypeError, "positions must be an int64", positions=Q[0, :, 0, 0])
    add(base, "positions shape", ValueError, "positions must have shape",
        positions=torch.arange(6))
    add(base, "positions 3-d", ValueError, "positions must have shape",
        positions=torch.zeros(2, 5, 1, dtype=torch.long))
    add(base, "positions device", RuntimeError, "positions must be on the device",
        positions=meta(torch.arange(5)))
    add(base, "positions negative", IndexError, "positions must be >= 0",
        positions=torch.tensor([0, 1, 2, -1, 4]))
    add(base, "positions -2^63", IndexError, "positions must be >= 0",
        positions=torch.tensor([0, 1, 2, I64_MIN, 4]))
    add(base, "positions and offset", ValueError, "give positions or offset", offset=4)
    add(base, "positions and offsets", ValueError, "positions or offsets, not both",
        offsets=torch.tensor([0, 1]))
    add(base, "inv_freq int", TypeError, "inv_freq must be a floating",
        inv_freq=torch.ones(4, dtype=torch.long))
    add(base, "inv_freq length", ValueError, "inv_freq must have shape", inv_freq=torch.ones(3))
    add(base, "inv_freq 2-d", ValueError, "inv_freq must have shape", inv_freq=torch.ones(1, 4))
    add(base, "inv_freq device", RuntimeError, "inv_freq must be on the device",
        inv_freq=meta(torch.ones(4)))
    base = "rotary_offsets"
    add(base, "offsets float", TypeError, "offsets must be an int64", offsets=torch.ones(2))
    add(base, "offsets shape", ValueError, "offsets must have shape",
        offsets=torch.tensor([1, 2, 3]))
    add(base, "offsets negative", IndexError, "offsets must be >= 0",
        offsets=torch.tensor([0, -1]))
    add(base, "offsets 2^63-1", ValueError, "overflows int64", offsets=torch.tensor([0, I64_MAX]))
    add(base, "offset + offsets overflow", ValueError, "overflows int64",
        offsets=torch.tensor([0, 2**62]), offset=2**62)
    add(base, "offsets device", RuntimeError, "offsets must be on the device",
        offsets=meta(torch.tensor([0, 1])))
    base = "rotary_thd"
    add(base, "q 4-d", ValueError, "q must have 3 dimensions", q=Q)
    add(base, "cu_seqlens from 1", ValueError, "must start at 0",
        cu_seqlens=torch.tensor([1, 2, 6]))
    add(base, "cu_seqlens decreasing", ValueError, "non-decreasing",
        cu_seqlens=torch.tensor([0, 4, 3, 6]), offsets=torch.tensor([0, 1, 2]))
    add(base, "cu_seqlens short end", ValueError, "end at the token count",
        cu_seqlens=torch.tensor([0, 2, 5]))
    add(base, "cu_seqlens long end", ValueError, "end at the token count",
        cu_seqlens=torch.tensor([0, 2, 7]))
    add(base, "cu_seqlens -2^63", ValueError, "non-decreasing",
        cu_seqlens=torch.tensor([0, I64_MIN, 6]))
    add(base, "cu_seqlens float", TypeError, "cu_seqlens must be an int64",
        cu_seqlens=torch.tensor([0.0, 2.0, 6.0]))
    add(base, "cu_seqlens 1 entry", ValueError, "at least 2 entries",
        cu_seqlens=torch.tensor([0]), offsets=None)
    add(base, "cu_seqlens 2-d", ValueError, "cu_seqlens must have shape",
        cu_seqlens=torch.tensor([[0, 2, 6]]))
    add(base, "cu_seqlens device", RuntimeError, "cu_seqlens must be on the device",
        cu_seqlens=meta(torch.tensor([0, 2, 6])))
    add(base, "offsets per sequence", ValueError, "offsets must have shape",
        offsets=torch.tensor([0, 1, 2]))
    add(base, "positions shape", ValueError, "positions must have shape \\(tokens,\\)",
        positions=torch.arange(5), offsets=None)
    add(base, "offset overflow", ValueError, "overflows int64", offset=I64_MAX - 2)

    # ---- rotary_tables (apply_rotary_pos_emb) -----------------------------------------------
    base = "rotary_tables"
    add(base, "q int", TypeError, "q must be a floating", q=torch.ones(2, 3, 5, 8, dtype=torch.int))
    add(base, "q odd", ValueError, "must be even", q=torch.randn(2, 3, 5, 7))
    add(base, "q 8-d", ValueError, "q must have 1 to", q=torch.randn([1] * 8 + [8]))
    add(base, "k dtype", TypeError, "k must have q's dtype", k=torch.randn(2, 1, 5, 8).double())
    add(base, "k rank", ValueError, "k must have q's number of dimensions",
        k=torch.randn(1, 5, 8))
    add(base, "k device", RuntimeError, "k must be on the device",
        k=meta(torch.randn(2, 1, 5, 8)))
    add(base, "cos int", TypeError, "cos and sin must be floating",
        cos=torch.ones(2, 5, 8, dtype=torch.long))
    add(base, "cos sin shapes", ValueError, "same shape", cos=torch.randn(2, 4, 8))
    add(base, "cos broadcast", ValueError, "must broadcast", cos=torch.randn(2, 4, 8),
        sin=torch.randn(2, 4, 8))
    add(base, "cos device", RuntimeError, "cos must be on the device",
        cos=meta(torch.randn(2, 5, 8)))
    add(base, "sin device", RuntimeError, "sin must be on the device",
        sin=meta(torch.randn(2, 5, 8)))
    add(base, "unsqueeze_dim 7", ValueError, "unsqueeze_dim must be within", unsqueeze_dim=7)
    add(base, "unsqueeze_dim -2^63", ValueError, "unsqueeze_dim must be within",
        unsqueeze_dim=I64_MIN)

    # ---- grid codes ---------------------------------------------------------------------------
    for base in ["add_positional_grid", "add_positional_backward_grid"]:
        add(base, "grid not matching T", ValueError, "has T = 5 tokens, but grid",
            grid=[2, 3])
        add(base, "extra_tokens not matching T", ValueError, "has T = 5 tokens", extra_tokens=0)
        add(base, "grid_dims not summing to D", ValueError, "grid_dims must .*sum to D = 8",
            grid_dims=[2, 5])
        add(base, "grid_dims zero", ValueError, "grid_dims must be >= 1", grid_dims=[0, 8])
        add(base, "grid_dims one entry", ValueError, "grid_dims must have one entry per grid",
            grid_dims=[8])
        add(base, "grid_axes repeated", ValueError, "grid_axes must be a permutation",
            grid_axes=[1, 1])
        add(base, "grid_axes out of range", ValueError, "grid_axes must be a permutation",
            grid_axes=[0, 2])
        add(base, "grid_origin negative", ValueError, "grid_origin must be in",
            grid_origin=[0, -1])
        add(base, "grid_origin huge", ValueError, "grid_origin must be in",
            grid_origin=[0, 2**62])
        add(base, "grid_scale zero", ValueError, "grid_scale must be finite", grid_scale=[0.0, 1.0])
        add(base, "grid_scale nan", ValueError, "grid_scale must be finite",
            grid_scale=[1.0, float("nan")])
        add(base, "grid_scale inf", ValueError, "grid_scale must be finite",
            grid_scale=[1.0, float("inf")])
        add(base, "grid empty", ValueError, "grid must have 1 to 3 sizes", grid=[])
        add(base, "grid 4 axes", ValueError, "grid must have 1 to 3 sizes", grid=[1, 1, 2, 2],
            grid_dims=None, grid_axes=None, grid_origin=None, grid_scale=None)
        add(base, "grid size 0", ValueError, "grid sizes must be >= 1", grid=[0, 4],
            extra_tokens=5)
        add(base, "grid too many tokens", ValueError, "must be < 2\\^31", grid=[2**16, 2**16])
        add(base, "extra_tokens negative", ValueError, "extra_tokens must be >= 0",
            extra_tokens=-1)
        add(base, "extra_tokens without grid", ValueError, "extra_tokens needs grid", grid=None,
            grid_dims=None, grid_axes=None, grid_origin=None, grid_scale=None)
        add(base, "grid_scale without grid", ValueError, "grid_scale needs grid", grid=None,
            extra_tokens=0, grid_dims=None, grid_axes=None, grid_origin=None)
        add(base, "grid with offset", ValueError, "with grid, give positions", offset=2)
        add(base, "grid with learned", ValueError, "grid needs a computed kind", kind="learned",
            table=TABLE)
        add(base, "D not splitting evenly", ValueError, "does not split evenly", grid=[1, 1, 3],
            extra_tokens=2, grid_dims=None, grid_axes=None, grid_origin=None, grid_scale=None)
        add(base, "token index past the grid", IndexError, "positions are token indices",
            positions=torch.tensor([0, 1, 2, 3, 5]))
        add(base, "token index negative", IndexError, "positions must be >= 0",
            positions=torch.tensor([0, 1, -2, 3, 4]))
        add(base, "grid not a list", RuntimeError, "argument 'grid'", grid=4)
    base = "positional_encoding_grid"
    add(base, "token index past the grid", IndexError, "positions are token indices",
        positions=torch.tensor([0, 6]))
    add(base, "grid with learned", ValueError, "learned", kind="learned")
    add(base, "grid_dims not summing", ValueError, "grid_dims must", grid_dims=[7])

    # ---- rope_frequencies -------------------------------------------------------------------
    base = "rope_frequencies"
    add(base, "dim odd", ValueError, "dim must be an even number", dim=7)
    add(base, "dim negative", ValueError, "dim must be an even number", dim=-2)
    add(base, "dim 2^40", ValueError, "dim must be an even number", dim=2**40)
    add(base, "rope_type typo", ValueError, "unknown rope_type", rope_type="ntk")
    add(base, "precision typo", ValueError, "precision must be", precision="half")
    add(base, "base nan", ValueError, "base must be", base=float("nan"))
    add(base, "base inf", ValueError, "base must be", base=float("inf"))
    add(base, "factor nan", ValueError, "factor", factor=float("nan"))
    add(base, "factor 0", ValueError, "factor", factor=0.0)
    add(base, "beta_fast nan", ValueError, "beta_fast", beta_fast=float("nan"))
    add(base, "beta_slow inf", ValueError, "beta_slow", beta_slow=float("inf"))
    add(base, "mscale nan", ValueError, "mscale", mscale=float("nan"), mscale_all_dim=1.0)
    add(base, "attention_factor nan", ValueError, "attention_factor",
        attention_factor=float("nan"))
    add(base, "max_position_embeddings negative", ValueError, "must be >= 0",
        max_position_embeddings=-1)
    add(base, "yarn without lengths", ValueError, "needs max_position_embeddings",
        max_position_embeddings=None)
    add(base, "longrope factors", ValueError, "dim / 2 entries", rope_type="longrope",
        short_factor=[1.0] * 8, long_factor=[1.0] * 7)
    add(base, "longrope nan factor", ValueError, "finite", rope_type="longrope",
        short_factor=[1.0] * 7 + [float("nan")], long_factor=[1.0] * 8)
    add(base, "llama3 equal factors", ValueError, "high_freq_factor", rope_type="llama3",
        original_max_position_embeddings=8192, low_freq_factor=2.0, high_freq_factor=2.0)
    add(base, "dynamic without max", ValueError, "needs max_position_embeddings",
        rope_type="dynamic", max_position_embeddings=None)
    return result


GENERATED = cases()
