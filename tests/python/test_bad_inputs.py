"""Bad input raises a Python exception naming the argument; never a crash or garbage."""

import math

import pytest
import torch

import posenc
from bad_input_corpus import GENERATED

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
    ("negative table row", lambda: posenc.add_positional(X, kind="learned", table=TABLE, positions=torch.tensor([0, -1, 2, 3, 4])), IndexError, "positions must be >= 0 \\(rows of the table\\)"),
    ("float positions", lambda: posenc.add_positional(X, positions=torch.zeros(5)), TypeError, "positions must be an int64 or int32"),
    ("positions shape", lambda: posenc.add_positional(X, positions=torch.arange(4)), ValueError, "positions of shape"),
    ("positions not tensor", lambda: posenc.add_positional(X, positions=[0, 1, 2, 3, 4]), TypeError, "positions must be a Tensor"),
    ("unknown kind", lambda: posenc.add_positional(X, kind="rotary"), ValueError, "kind must be one of"),
    ("unknown combine", lambda: posenc.add_positional(X, combine="concat"), ValueError, "combine must be"),
    ("unknown convention", lambda: posenc.add_positional(X, convention="bert"), ValueError, "convention must be"),
    ("unknown layout", lambda: posenc.add_positional(X, layout="split"), ValueError, "layout must be"),
    ("dropout 1.01", lambda: posenc.add_positional(X, dropout=1.01), ValueError, "dropout must be in"),
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

    # embedding

    ("float ids", lambda: posenc.embedding(torch.zeros(2, 3), torch.randn(5, 4)), TypeError, "ids must be an int64"),
    ("weight 1-d", lambda: posenc.embedding(torch.zeros(2, 3, dtype=torch.long), torch.randn(5)), ValueError, "weight must have shape"),
    ("weight int", lambda: posenc.embedding(torch.zeros(2, 3, dtype=torch.long), torch.ones(5, 4, dtype=torch.long)), TypeError, "weight must be a floating"),
    ("id too large", lambda: posenc.embedding(torch.tensor([[0, 5]]), torch.randn(5, 4)), IndexError, "ids must be in"),
    ("id negative", lambda: posenc.embedding(torch.tensor([[0, -1]]), torch.randn(5, 4)), IndexError, "ids must be in"),
    ("padding_idx range", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), padding_idx=5), ValueError, "padding_idx must be within"),
    ("fairseq without padding", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), positions="fairseq"), ValueError, "needs padding_idx"),
    ("positions string", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), positions="bert"), ValueError, "positions must be None, a Tensor or 'fairseq'"),
    ("beyond learned table", lambda: posenc.embedding(torch.tensor([[0, 1, 2]]), torch.randn(5, 4), kind="learned", table=torch.randn(2, 4)), IndexError, "outside the table"),
    ("fairseq beyond table", lambda: posenc.embedding(torch.tensor([[0, 1, 2]]), torch.randn(5, 4), kind="learned", table=torch.randn(4, 4), padding_idx=1, positions="fairseq"), IndexError, "positions='fairseq' reach"),
    ("table width", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), kind="learned", table=torch.randn(9, 3)), ValueError, "weight.size\\(1\\)"),
    ("positions shape", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), positions=torch.arange(3)), ValueError, "broadcastable to ids.shape"),
    ("module learned without max", lambda: posenc.nn.PositionalEmbedding(5, 4, kind="learned"), ValueError, "needs max_positions"),
    ("module padding", lambda: posenc.nn.PositionalEmbedding(5, 4, padding_idx=9), ValueError, "padding_idx must be within"),
    # rotary and apply_rotary_pos_emb

    ("odd head dim", lambda: posenc.rotary(torch.randn(1, 2, 1, 5)), ValueError, "rotary_dim must be even"),
    ("rotary_dim too large", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), rotary_dim=6), ValueError, "rotary_dim must be even"),
    ("rotary_dim odd", lambda: posenc.rotary(torch.randn(1, 2, 1, 8), rotary_dim=3), ValueError, "rotary_dim must be even"),
    ("q k batch", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), torch.randn(2, 2, 1, 4)), ValueError, "agree on batch and sequence"),
    ("q k seq", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), torch.randn(1, 3, 1, 4)), ValueError, "agree on batch and sequence"),
    ("cu not from 0", lambda: posenc.rotary(torch.randn(4, 1, 4), layout="thd", cu_seqlens=torch.tensor([1, 4])), ValueError, "must start at 0"),
    ("cu decreasing", lambda: posenc.rotary(torch.randn(4, 1, 4), layout="thd", cu_seqlens=torch.tensor([0, 3, 2, 4])), ValueError, "non-decreasing"),
    ("cu wrong end", lambda: posenc.rotary(torch.randn(4, 1, 4), layout="thd", cu_seqlens=torch.tensor([0, 3])), ValueError, "end at the token count"),
    ("negative positions", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), positions=torch.tensor([0, -1])), IndexError, "positions must be >= 0"),
    ("int q", lambda: posenc.rotary(torch.ones(1, 2, 1, 4, dtype=torch.long)), TypeError, "q must be a floating"),
    ("unknown rope_type", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), scaling={"rope_type": "ntk"}), ValueError, "unknown rope_type"),
    ("missing key", lambda: posenc.rope_frequencies(8, scaling={"rope_type": "llama3", "factor": 8.0}), ValueError, "missing"),
    ("bad layout", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), layout="bsd"), ValueError, "layout must be"),
    ("positions shape", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), positions=torch.arange(3)), ValueError, "positions must have shape"),
    ("cos requires grad", lambda: posenc.apply_rotary_pos_emb(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 2, 4, requires_grad=True), torch.randn(1, 2, 4)), RuntimeError, "gradients with respect to cos are not supported"),
    # more entry points: torch.ops with raw arguments, backward ops, modules
    ("op kind typo", lambda: torch.ops.posenc.add_positional(X, kind="sinusoid"), ValueError, "kind must be one of"),
    ("op x int", lambda: torch.ops.posenc.add_positional(torch.ones(2, 3, dtype=torch.int32)), TypeError, "x must be a floating"),
    ("op table without learned ok but wrong dtype", lambda: torch.ops.posenc.add_positional(X, None, torch.randn(9, 8, dtype=torch.float64), kind="learned"), TypeError, "table must have the dtype"),
    ("op too many dims", lambda: torch.ops.posenc.add_positional(torch.randn([1] * 11 + [2, 3])), ValueError, "dimensions"),
    ("op seed wrong shape", lambda: torch.ops.posenc.add_positional(X, None, None, torch.tensor([1, 2]), dropout=0.1), TypeError, "seed must be an int64 tensor with one element"),
    ("backward grad int", lambda: torch.ops.posenc.add_positional_backward(torch.ones(2, 3, dtype=torch.long)), TypeError, "grad must be a floating"),
    ("table backward negative rows", lambda: torch.ops.posenc.add_positional_table_backward(X, None, None, None, -1), ValueError, "table_rows must be >= 0"),
    ("table backward mul without x", lambda: torch.ops.posenc.add_positional_table_backward(X, None, None, None, 10, combine="mul"), ValueError, "needs x"),
    ("table backward positions outside", lambda: torch.ops.posenc.add_positional_table_backward(X, None, torch.tensor([0, 1, 2, 3, 9]), None, 5), IndexError, "positions must be <"),
    ("embedding backward grad shape", lambda: torch.ops.posenc.embedding_backward(torch.randn(2, 4, 8), torch.zeros(2, 3, dtype=torch.long), torch.randn(5, 8), None, None, None), ValueError, "grad must have shape"),
    ("embedding backward grad dtype", lambda: torch.ops.posenc.embedding_backward(torch.randn(2, 3, 8, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.long), torch.randn(5, 8), None, None, None), TypeError, "grad must have weight's dtype"),
    ("embedding ids 0-d", lambda: posenc.embedding(torch.tensor(1), torch.randn(5, 4)), ValueError, "ids must have shape"),
    ("embedding weight not tensor", lambda: posenc.embedding(torch.tensor([[1]]), [[1.0]]), TypeError, "weight must be a Tensor"),
    ("embedding scale str", lambda: posenc.embedding(torch.tensor([[1]]), torch.randn(5, 4), scale="big"), TypeError, "scale must be a float"),
    ("embedding padding float", lambda: posenc.embedding(torch.tensor([[1]]), torch.randn(5, 4), padding_idx=1.0), TypeError, "padding_idx must be an int"),
    ("embedding fairseq with positions", lambda: torch.ops.posenc.embedding(torch.tensor([[1, 2]]), torch.randn(5, 4), torch.tensor([0, 1]), padding_idx=0, fairseq_positions=True), ValueError, "do not pass a positions tensor"),
    ("rotary offsets shape", lambda: posenc.rotary(torch.randn(2, 3, 1, 4), offset=torch.tensor([1, 2, 3])), ValueError, "offsets must have shape"),
    ("rotary positions and offsets", lambda: torch.ops.posenc.rotary(torch.randn(2, 3, 1, 4), None, torch.arange(3), torch.tensor([0, 1])), ValueError, "positions or offsets, not both"),
    ("rotary cu_seqlens without thd", lambda: posenc.rotary(torch.randn(1, 4, 1, 4), cu_seqlens=torch.tensor([0, 4])), ValueError, "cu_seqlens is for layout 'thd'"),
    ("rotary k dtype", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4, dtype=torch.float64)), TypeError, "k must have q's dtype"),
    ("rotary k head_dim", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 6)), ValueError, "same head_dim"),
    ("rotary inv_freq length", lambda: posenc.rotary(torch.randn(1, 2, 1, 8), inv_freq=torch.ones(3)), ValueError, "inv_freq must have shape"),
    ("rotary inv_freq and scaling", lambda: posenc.rotary(torch.randn(1, 2, 1, 8), inv_freq=torch.ones(4), scaling={"rope_type": "linear", "factor": 2.0}), ValueError, "inv_freq or scaling"),
    ("rotary negative offset", lambda: posenc.rotary(torch.randn(1, 2, 1, 8), offset=-3), ValueError, "offset must be >= 0"),
    ("rotary negative offsets", lambda: posenc.rotary(torch.randn(1, 2, 1, 8), offset=torch.tensor([-1])), IndexError, "offsets must be >= 0"),
    ("rotary q 3-d for bshd", lambda: posenc.rotary(torch.randn(2, 3, 4)), ValueError, "q must have 4 dimensions"),
    ("rotary scaling not dict", lambda: posenc.rotary(torch.randn(1, 2, 1, 8), scaling="yarn"), TypeError, "scaling must be a dict"),
    ("rope dynamic without max", lambda: posenc.rope_frequencies(8, scaling={"rope_type": "dynamic", "factor": 2.0}), ValueError, "needs max_position_embeddings"),
    ("rope longrope short length", lambda: posenc.rope_frequencies(8, scaling={"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}, max_position_embeddings=64), ValueError, "dim / 2 entries"),
    ("rope odd dim", lambda: posenc.rope_frequencies(7), ValueError, "dim must be an even number"),
    ("tables odd last dim", lambda: posenc.apply_rotary_pos_emb(torch.randn(1, 1, 2, 5), torch.randn(1, 1, 2, 5), torch.randn(1, 2, 5), torch.randn(1, 2, 5)), ValueError, "must be even"),
    ("tables cos sin shapes", lambda: posenc.apply_rotary_pos_emb(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 2, 4), torch.randn(1, 3, 4)), ValueError, "same shape"),
    ("tables broadcast", lambda: posenc.apply_rotary_pos_emb(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)), ValueError, "must broadcast"),
    ("tables unsqueeze_dim", lambda: posenc.apply_rotary_pos_emb(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 2, 4), torch.randn(1, 2, 4), unsqueeze_dim=7), ValueError, "unsqueeze_dim must be within"),
    ("module rotary odd dim", lambda: posenc.nn.RotaryEmbedding(7), ValueError, "dim must be an even number"),
    ("module embedding positions mode", lambda: posenc.nn.PositionalEmbedding(5, 4, positions="bert"), ValueError, "positions must be None or 'fairseq'"),
    ("module embedding _weight shape", lambda: posenc.nn.PositionalEmbedding(5, 4, _weight=torch.randn(4, 4)), ValueError, "_weight must have shape"),
    ("module from_pretrained 1-d", lambda: posenc.nn.PositionalEmbedding.from_pretrained(torch.randn(5)), ValueError, "must be 2-D"),
    ("module encoding bad kind", lambda: posenc.nn.PositionalEncoding(8, kind="rope"), ValueError, "kind must be one of"),
    # Python-level types: the schema-driven argument path names the argument.
    ("scale str", lambda: posenc.add_positional(X, scale="2"), TypeError, "scale must be a float"),
    ("training int", lambda: posenc.add_positional(X, training=1), TypeError, "training must be a bool"),
    # Values equal to the schema's default but of another type (False == 0, True == 1.0) are
    # still checked, though the wrapper leaves real defaults out of the call.
    ("offset bool", lambda: posenc.add_positional(X, offset=False), TypeError, "offset must be an int"),
    ("scale bool", lambda: posenc.add_positional(X, scale=True), TypeError, "scale must be a float"),
    ("rotary interleaved int", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), interleaved=0), TypeError, "interleaved must be a bool"),
    ("table list", lambda: posenc.add_positional(X, kind="learned", table=[[0.0] * 8]), TypeError, "table must be a Tensor or None"),
    ("base None", lambda: posenc.add_positional(X, base=None), TypeError, "base must be a float"),
    ("dropout str", lambda: posenc.add_positional(X, dropout="0.1"), TypeError, "dropout must be a float"),
    ("embedding ids list", lambda: posenc.embedding([[0, 1]], torch.randn(5, 4)), TypeError, "ids must be a Tensor"),
    ("embedding offset float", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), offset=0.5), TypeError, "offset must be an int"),
    ("embedding dropout nan", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), dropout=math.nan), ValueError, "dropout must be in"),
    ("embedding kind None", lambda: posenc.embedding(torch.tensor([[0, 1]]), torch.randn(5, 4), kind=None), TypeError, "kind must be a str"),
    ("rotary q list", lambda: posenc.rotary([1.0]), TypeError, "q must be a Tensor"),
    ("rotary interleaved str", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), interleaved="yes"), TypeError, "interleaved must be a bool"),
    ("rotary precision typo", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), precision="float32"), ValueError, "precision must be"),
    ("rotary rotary_dim float", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), rotary_dim=2.0), TypeError, "rotary_dim must be an int"),
    ("rotary offset tensor float", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), offset=torch.tensor([1.0])), TypeError, "offsets must be an int64"),
    ("rotary positions with int offset", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), positions=torch.arange(2), offset=3), ValueError, "give positions or offset"),
    ("rotary inv_freq requires grad", lambda: posenc.rotary(torch.randn(1, 2, 1, 4), inv_freq=torch.ones(2, requires_grad=True)), RuntimeError, "gradients with respect to inv_freq"),
    ("tables k None", lambda: posenc.apply_rotary_pos_emb(torch.randn(1, 1, 2, 4), None, torch.randn(1, 2, 4), torch.randn(1, 2, 4)), TypeError, "k must be a Tensor"),
    ("tables cos list", lambda: posenc.apply_rotary_pos_emb(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), [1.0], torch.randn(1, 2, 4)), TypeError, "cos must be a Tensor"),
    ("rope scaling beta nan", lambda: posenc.rope_frequencies(8, scaling={"rope_type": "yarn", "factor": 2.0, "beta_fast": math.nan}, max_position_embeddings=64), ValueError, "beta_fast"),
    ("rope dim huge", lambda: posenc.rope_frequencies(2**40), ValueError, "dim must be an even number"),
    ("rope factor str", lambda: posenc.rope_frequencies(8, scaling={"rope_type": "linear", "factor": "2"}), TypeError, "factor must be a float"),
    ("rope type int", lambda: posenc.rope_frequencies(8, scaling={"rope_type": 3}), TypeError, "rope_type'\\] must be a str"),
    ("rope precision typo", lambda: posenc.rope_frequencies(8, precision="bf16"), ValueError, "precision must be"),
    ("pe dim str", lambda: posenc.positional_encoding(4, "8"), TypeError, "dim must be an int"),
    ("pe dtype str", lambda: posenc.positional_encoding(4, 8, dtype="float32"), TypeError, "dtype must be a torch.dtype"),
    ("pe device mismatch", lambda: posenc.positional_encoding(torch.arange(3), 8, device="meta"), ValueError, "differs from positions.device"),
    ("pe dim huge", lambda: posenc.positional_encoding(3, 2**40), ValueError, "dim = 1099511627776 is too large"),
    ("module encoding dropout nan", lambda: posenc.nn.PositionalEncoding(8, dropout=math.nan), ValueError, "dropout must be in"),
    ("module encoding base 0", lambda: posenc.nn.PositionalEncoding(8, base=0.0), ValueError, "base must be"),
    ("module encoding layout", lambda: posenc.nn.PositionalEncoding(8, layout="halves"), ValueError, "layout must be"),
    ("module encoding positions and offset", lambda: posenc.nn.PositionalEncoding(8, dropout=0.0)(torch.randn(3, 2, 8), positions=torch.arange(3), offset=2), ValueError, "give positions or offset"),
    ("module encoding learned past table", lambda: posenc.nn.PositionalEncoding(8, kind="learned", max_len=4)(torch.randn(5, 2, 8)), IndexError, "outside the table"),
    ("module embedding kind", lambda: posenc.nn.PositionalEmbedding(5, 4, kind="rotary"), ValueError, "kind must be one of"),
    ("module embedding dropout", lambda: posenc.nn.PositionalEmbedding(5, 4, dropout=-0.5), ValueError, "dropout must be in"),
    ("module embedding id past V", lambda: posenc.nn.PositionalEmbedding(5, 4)(torch.tensor([[5]])), IndexError, "ids must be in"),
    ("module embedding fairseq past table", lambda: posenc.nn.PositionalEmbedding(5, 4, padding_idx=0, positions="fairseq", kind="learned", max_positions=3)(torch.tensor([[1, 2, 3]])), IndexError, "positions='fairseq' reach"),
    ("module rotary precision", lambda: posenc.nn.RotaryEmbedding(8, precision="fast"), ValueError, "precision must be"),
    ("module rotary scaling type", lambda: posenc.nn.RotaryEmbedding(8, scaling={"rope_type": "ntk"}), ValueError, "unknown rope_type"),
    ("module rotary positions shape", lambda: posenc.nn.RotaryEmbedding(8)(torch.randn(1, 3, 1, 8), positions=torch.arange(4)), ValueError, "positions must have shape"),
    ("module state dict wrong code", lambda: posenc.nn.PositionalEncoding(8, base=100.0).load_state_dict({"pe": posenc.positional_encoding(50, 8).unsqueeze(1)}), ValueError, "does not match this module's code"),
    ("module state dict wrong width", lambda: posenc.nn.PositionalEncoding(8).load_state_dict({"pe": torch.randn(50, 1, 6)}), ValueError, "this module has kind"),
    # Grid codes through the wrappers and posenc.nn.PatchPositionalEncoding.
    ("grid not a list", lambda: posenc.add_positional(X, grid=5), TypeError, "grid must be a posenc.Grid or a sequence of ints"),
    ("grid_scale strings", lambda: posenc.add_positional(X, grid=posenc.Grid([5], scale=["a"])), TypeError, "scale must be a sequence of floats"),
    ("grid not matching T", lambda: posenc.add_positional(X, grid=[2, 3]), ValueError, "has T = 5 tokens, but grid"),
    ("grid token index", lambda: posenc.positional_encoding(7, 8, grid=[2, 3]), IndexError, "positions are token indices"),
    ("patch module D", lambda: posenc.nn.PatchPositionalEncoding(30, 4), ValueError, "divisible by 4"),
    ("patch module 3D D", lambda: posenc.nn.PatchPositionalEncoding(40, (2, 3, 3)), ValueError, "divisible by 16"),
    ("patch module grid", lambda: posenc.nn.PatchPositionalEncoding(32, (1, 2, 3, 4)), ValueError, "grid must be \\(H, W\\) or \\(T, H, W\\)"),
    ("patch module 3D base_size", lambda: posenc.nn.PatchPositionalEncoding(32, (2, 3, 3), base_size=4), ValueError, "apply to 2D grids"),
    ("patch module tokens", lambda: posenc.nn.PatchPositionalEncoding(32, 3)(torch.randn(1, 10, 32)), ValueError, "has T = 10 tokens"),
    ("patch module scale", lambda: posenc.nn.PatchPositionalEncoding(32, 3, interpolation_scale=0.0), ValueError, "interpolation_scale must be a finite number > 0"),
    ("patch module max size", lambda: posenc.nn.PatchPositionalEncoding(32, 3, pos_embed_max_size=-4), ValueError, "pos_embed_max_size must be"),
]

def _config(**fields):
    """A duck-typed transformers config (what posenc reads of one)."""
    import types
    return types.SimpleNamespace(**fields)


def _patched_model(**config_fields):
    """A module with a Llama-like config, for the transformers integration's checks."""
    import types
    model = torch.nn.Linear(2, 2)
    model.config = types.SimpleNamespace(**config_fields)
    return model


MRT = torch.tensor([[0, 1, 1, 1, 1, 0]])  # text, a 1x4x4 image (4 merged tokens), text
VIDEO = torch.tensor([[0, 2, 2, 2, 2, 2, 2, 2, 2, 0]])  # a 2x4x4 video (8 merged tokens)

# The modules and helpers around the operators: each constructor checks its arguments, each
# forward its input against the module, and each error names the user's argument.
MODULE_CASES = [
    # PositionalEncoding
    ("encoding d_model str", lambda: posenc.nn.PositionalEncoding("8"), TypeError, "PositionalEncoding: d_model must be an int"),
    ("encoding d_model 0", lambda: posenc.nn.PositionalEncoding(0), ValueError, "PositionalEncoding: d_model must be >= 1"),
    ("encoding max_len float", lambda: posenc.nn.PositionalEncoding(8, max_len=10.0), TypeError, "max_len must be an int"),
    ("encoding max_len 0", lambda: posenc.nn.PositionalEncoding(8, max_len=0), ValueError, "max_len must be >= 1"),
    ("encoding batch_first int", lambda: posenc.nn.PositionalEncoding(8, batch_first=1), TypeError, "batch_first must be a bool"),
    ("encoding x width", lambda: posenc.nn.PositionalEncoding(8)(torch.randn(3, 2, 12)), ValueError, "x must have d_model = 8 channels"),
    ("encoding x list", lambda: posenc.nn.PositionalEncoding(8)([1.0]), TypeError, "x must be a Tensor"),
    # PositionalEmbedding
    ("embedding num_embeddings str", lambda: posenc.nn.PositionalEmbedding("5", 4), TypeError, "num_embeddings must be an int"),
    ("embedding num_embeddings 0", lambda: posenc.nn.PositionalEmbedding(0, 4), ValueError, "num_embeddings must be >= 1"),
    ("embedding embedding_dim float", lambda: posenc.nn.PositionalEmbedding(5, 4.0), TypeError, "embedding_dim must be an int"),
    ("embedding embedding_dim -1", lambda: posenc.nn.PositionalEmbedding(5, -1), ValueError, "embedding_dim must be >= 1"),
    ("embedding padding_idx float", lambda: posenc.nn.PositionalEmbedding(5, 4, padding_idx=1.0), TypeError, "padding_idx must be an int"),
    ("embedding max_positions 0", lambda: posenc.nn.PositionalEmbedding(5, 4, kind="learned", max_positions=0), ValueError, "max_positions must be >= 1"),
    ("embedding _weight list", lambda: posenc.nn.PositionalEmbedding(2, 2, _weight=[[1.0, 2.0]] * 2), TypeError, "_weight must be a Tensor"),
    ("from_pretrained list", lambda: posenc.nn.PositionalEmbedding.from_pretrained([[1.0]]), TypeError, "embeddings must be a Tensor"),
    # RotaryEmbedding
    ("rotary dim str", lambda: posenc.nn.RotaryEmbedding("8"), TypeError, "RotaryEmbedding: dim must be an int"),
    ("rotary dim 0", lambda: posenc.nn.RotaryEmbedding(0), ValueError, "dim must be >= 1"),
    ("rotary rotary_dim past dim", lambda: posenc.nn.RotaryEmbedding(8, rotary_dim=10), ValueError, "rotary_dim must be even and within \\[0, dim = 8\\]"),
    ("rotary rotary_dim odd", lambda: posenc.nn.RotaryEmbedding(8, rotary_dim=3), ValueError, "rotary_dim must be even"),
    ("rotary rotary_dim float", lambda: posenc.nn.RotaryEmbedding(8, rotary_dim=4.0), TypeError, "rotary_dim must be an int"),
    ("rotary interleaved str", lambda: posenc.nn.RotaryEmbedding(8, interleaved="yes"), TypeError, "interleaved must be a bool"),
    ("rotary q head dim", lambda: posenc.nn.RotaryEmbedding(8)(torch.randn(2, 5, 2, 12)), ValueError, "q must have dim = 8 channels"),
    ("rotary k head dim", lambda: posenc.nn.RotaryEmbedding(8)(torch.randn(2, 5, 2, 8), torch.randn(2, 5, 2, 6)), ValueError, "k must have dim = 8 channels"),
    ("rotary q list", lambda: posenc.nn.RotaryEmbedding(8)([1.0]), TypeError, "q must be a Tensor"),
    # AxialRotaryEmbedding
    ("axial head_dim 0", lambda: posenc.nn.AxialRotaryEmbedding(0, 4), ValueError, "head_dim must be >= 4"),
    ("axial head_dim 6", lambda: posenc.nn.AxialRotaryEmbedding(6, 4), ValueError, "head_dim must be a multiple of 4"),
    ("axial head_dim str", lambda: posenc.nn.AxialRotaryEmbedding("8", 4), TypeError, "head_dim must be an int"),
    ("axial grid negative", lambda: posenc.nn.AxialRotaryEmbedding(8, (-2, 3)), ValueError, "grid must be \\(H, W\\) with sizes >= 1"),
    ("axial grid 3-d", lambda: posenc.nn.AxialRotaryEmbedding(8, (2, 2, 2)), ValueError, "grid must be \\(H, W\\)"),
    ("axial grid floats", lambda: posenc.nn.AxialRotaryEmbedding(8, (3.0, 4.0)), TypeError, "grid must be an int, \\(H, W\\) of ints"),
    ("axial extra_tokens -1", lambda: posenc.nn.AxialRotaryEmbedding(8, 4, extra_tokens=-1), ValueError, "extra_tokens must be >= 0"),
    ("axial base 0", lambda: posenc.nn.AxialRotaryEmbedding(8, 4, base=0.0), ValueError, "base must be a finite number > 0"),
    ("axial precision", lambda: posenc.nn.AxialRotaryEmbedding(8, 4, precision="fp32"), ValueError, "precision must be one of"),
    ("axial token count", lambda: posenc.nn.AxialRotaryEmbedding(8, (2, 3), extra_tokens=1)(torch.randn(1, 6, 2, 8)), ValueError, "q must have extra_tokens \\+ H \\* W = 1 \\+ 2 \\* 3 = 7 tokens"),
    ("axial token count bhsd", lambda: posenc.nn.AxialRotaryEmbedding(8, (2, 3))(torch.randn(1, 2, 5, 8), layout="bhsd"), ValueError, "= 6 tokens in dimension 2"),
    ("axial head dim of q", lambda: posenc.nn.AxialRotaryEmbedding(8, (2, 3))(torch.randn(1, 6, 2, 12)), ValueError, "q must have head_dim = 8 channels"),
    ("axial forward grid", lambda: posenc.nn.AxialRotaryEmbedding(8, (2, 3))(torch.randn(1, 6, 2, 8), grid=(0, 6)), ValueError, "grid must be \\(H, W\\) with sizes >= 1"),
    ("axial layout", lambda: posenc.nn.AxialRotaryEmbedding(8, (2, 3))(torch.randn(1, 6, 2, 8), layout="bsd"), ValueError, "layout must be one of"),
    # PatchPositionalEncoding
    ("patch width of x", lambda: posenc.nn.PatchPositionalEncoding(8, (3, 4), extra_tokens=1)(torch.randn(2, 13, 12)), ValueError, "x must have embed_dim = 8 channels"),
    ("patch embed_dim 0", lambda: posenc.nn.PatchPositionalEncoding(0, 4), ValueError, "embed_dim must be >= 1"),
    ("patch embed_dim str", lambda: posenc.nn.PatchPositionalEncoding("8", 4), TypeError, "embed_dim must be an int"),
    ("patch grid floats", lambda: posenc.nn.PatchPositionalEncoding(8, (3.0, 4.0)), TypeError, "grid must be an int, \\(H, W\\) or \\(T, H, W\\) of ints"),
    ("patch grid 0", lambda: posenc.nn.PatchPositionalEncoding(8, (0, 4)), ValueError, "grid must be .* with sizes >= 1"),
    ("patch extra_tokens float", lambda: posenc.nn.PatchPositionalEncoding(8, 4, extra_tokens=1.0), TypeError, "extra_tokens must be an int"),
    ("patch pos_embed_max_size float", lambda: posenc.nn.PatchPositionalEncoding(8, 4, pos_embed_max_size=6.5), TypeError, "pos_embed_max_size must be an int"),
    ("patch pos_embed_max_size small", lambda: posenc.nn.PatchPositionalEncoding(8, 4, pos_embed_max_size=3), ValueError, "exceeds pos_embed_max_size=3"),
    ("patch base_size nan", lambda: posenc.nn.PatchPositionalEncoding(8, 4, base_size=math.nan), ValueError, "base_size must be a finite number > 0"),
    ("patch temporal scale str", lambda: posenc.nn.PatchPositionalEncoding(16, (2, 2, 2), temporal_interpolation_scale="1"), TypeError, "temporal_interpolation_scale must be a float"),
    ("patch forward grid axes", lambda: posenc.nn.PatchPositionalEncoding(16, (2, 2))(torch.randn(1, 8, 16), grid=(2, 2, 2)), ValueError, "grid must be \\(H, W\\) with sizes"),
    ("patch forward grid past max", lambda: posenc.nn.PatchPositionalEncoding(8, 4, pos_embed_max_size=5)(torch.randn(1, 36, 8), grid=6), ValueError, "exceeds pos_embed_max_size=5"),
    # posenc.Grid
    ("Grid sizes str", lambda: posenc.Grid("34"), TypeError, "posenc.Grid: sizes must be a sequence of ints"),
    ("Grid extra_tokens float", lambda: posenc.Grid((3, 4), extra_tokens=1.5), TypeError, "extra_tokens must be an int"),
    ("Grid dims floats", lambda: posenc.Grid((3, 4), dims=(4.0, 4.0)), TypeError, "dims must be a sequence of ints"),
    ("Grid origin None entries", lambda: posenc.Grid((3, 4), origin=(None, 1)), TypeError, "origin must be a sequence of ints"),
    ("Grid dims not summing", lambda: posenc.add_positional(X, grid=posenc.Grid((5,), dims=(3,))), ValueError, "grid_dims must sum to D = 8"),
    # mrope_position_ids
    ("mrope types list", lambda: posenc.mrope_position_ids([[0, 1]]), TypeError, "mm_token_type_ids must be a Tensor"),
    ("mrope types float", lambda: posenc.mrope_position_ids(MRT.float()), TypeError, "mm_token_type_ids must be an integer tensor"),
    ("mrope types 1-d", lambda: posenc.mrope_position_ids(MRT[0]), ValueError, "mm_token_type_ids must have shape \\(B, S\\)"),
    ("mrope grids float", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1.0, 4.0, 4.0]])), TypeError, "image_grid_thw must be an integer tensor"),
    ("mrope grids shape", lambda: posenc.mrope_position_ids(MRT, torch.tensor([1, 4, 4])), ValueError, "image_grid_thw must have shape \\(n, 3\\)"),
    ("mrope grids str", lambda: posenc.mrope_position_ids(MRT, "1x4x4"), TypeError, "image_grid_thw must be an integer tensor"),
    ("mrope grid zero", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[0, 4, 4]])), ValueError, "image_grid_thw must hold sizes >= 1"),
    ("mrope grid not merged", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1, 4, 5]])), ValueError, "multiples of spatial_merge_size = 2"),
    ("mrope extra grids", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1, 4, 4], [1, 2, 2]])), ValueError, "image_grid_thw has 2 grids, but mm_token_type_ids has 1 image spans"),
    ("mrope extra video grids", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1, 4, 4]]), torch.tensor([[1, 2, 2]])), ValueError, "video_grid_thw has 1 grids, but mm_token_type_ids has 0 video spans"),
    ("mrope mask rows", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1, 4, 4]]), attention_mask=torch.ones(2, 6)), ValueError, "attention_mask must have the shape of mm_token_type_ids"),
    ("mrope mask list", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1, 4, 4]]), attention_mask=[[1] * 6]), TypeError, "attention_mask must be a Tensor"),
    ("mrope interval nan", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), video_time_intervals=[math.nan]), ValueError, "video_time_intervals must be finite numbers >= 0"),
    ("mrope interval inf", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), video_time_intervals=[math.inf]), ValueError, "video_time_intervals must be finite"),
    ("mrope interval 1e300", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), video_time_intervals=[1e300]), ValueError, "stay below 2\\^53"),
    ("mrope interval negative", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), video_time_intervals=[-1.0]), ValueError, "video_time_intervals must be finite numbers >= 0"),
    ("mrope extra intervals", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), video_time_intervals=[1.0, 2.0]), ValueError, "video_time_intervals must have one entry per video \\(1\\), got 2"),
    ("mrope intervals str", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), video_time_intervals="1"), TypeError, "video_time_intervals must be a sequence of numbers"),
    ("mrope seconds without tps", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), second_per_grid_ts=[0.5]), ValueError, "second_per_grid_ts needs tokens_per_second"),
    ("mrope tps without seconds", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), tokens_per_second=2), ValueError, "tokens_per_second needs second_per_grid_ts"),
    ("mrope seconds and intervals", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), video_time_intervals=[1.0], second_per_grid_ts=[0.5], tokens_per_second=2), ValueError, "give video_time_intervals or second_per_grid_ts"),
    ("mrope seconds nan", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), second_per_grid_ts=[math.nan], tokens_per_second=2), ValueError, "second_per_grid_ts \\* tokens_per_second must be finite"),
    ("mrope tps str", lambda: posenc.mrope_position_ids(VIDEO, None, torch.tensor([[2, 4, 4]]), second_per_grid_ts=[0.5], tokens_per_second="2"), TypeError, "tokens_per_second must be a number"),
    ("mrope split yes", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1, 4, 4]]), split_video_frames="yes"), TypeError, "split_video_frames must be a bool"),
    ("mrope merge size float", lambda: posenc.mrope_position_ids(MRT, torch.tensor([[1, 4, 4]]), spatial_merge_size=2.0), TypeError, "spatial_merge_size must be an int"),
    # rope_frequencies and RotaryEmbedding.from_config with transformers-like configs
    ("config rope_parameters str", lambda: posenc.rope_frequencies(_config(rope_parameters="linear", head_dim=8)), TypeError, "config.rope_parameters must be a dict or None"),
    ("config without head_dim", lambda: posenc.rope_frequencies(_config(rope_parameters={"rope_type": "default"})), ValueError, "the config has neither head_dim nor hidden_size and num_attention_heads"),
    ("config zero heads", lambda: posenc.rope_frequencies(_config(rope_parameters={}, hidden_size=64, num_attention_heads=0)), ValueError, "config.num_attention_heads must be >= 1"),
    ("config heads str", lambda: posenc.rope_frequencies(_config(rope_parameters={}, hidden_size=64, num_attention_heads="4")), TypeError, "config.num_attention_heads must be an int"),
    ("config head_dim float", lambda: posenc.rope_frequencies(_config(rope_parameters={}, head_dim=8.0)), TypeError, "config.head_dim must be an int"),
    ("from_config rope_parameters str", lambda: posenc.nn.RotaryEmbedding.from_config(_config(rope_parameters="linear", head_dim=8)), TypeError, "config.rope_parameters must be a dict or None"),
    ("from_config zero heads", lambda: posenc.nn.RotaryEmbedding.from_config(_config(rope_parameters={}, hidden_size=64, num_attention_heads=0)), ValueError, "num_attention_heads must be >= 1"),
    ("rope_frequencies not a config", lambda: posenc.rope_frequencies(_config(head_dim=8)), TypeError, "dim must be an int or a transformers config"),
]


def _integration_cases():
    try:
        import posenc.integrations.transformers as hf
    except ImportError:  # transformers is not installed: the cases that need it are left out
        return []
    return [
        ("apply_to_model not a module", lambda: hf.apply_to_model("llama"), TypeError, "model must be a torch.nn.Module"),
        ("apply_to_model without config", lambda: hf.apply_to_model(torch.nn.Linear(2, 2)), ValueError, "model has no config"),
        ("apply_to_model model_type None", lambda: hf.apply_to_model(_patched_model(model_type=None)), TypeError, "model_type must be a str"),
        ("apply_to_model unknown type", lambda: hf.apply_to_model(_patched_model(model_type="bert")), ValueError, "model_type 'bert' is not supported"),
        ("apply_to_model precision", lambda: hf.apply_to_model(_patched_model(model_type="llama"), precision="fp16"), ValueError, "precision must be one of"),
        ("apply_to_family precision", lambda: hf.apply_to_family("llama", precision=1), TypeError, "precision must be a str"),
        ("rotary module rope_parameters str", lambda: hf.PosencRotaryEmbedding(_config(rope_parameters="linear", head_dim=8, max_position_embeddings=64)), TypeError, "config.rope_parameters must be a dict or None"),
        ("rotary module interleaved str", lambda: hf.PosencRotaryEmbedding(_config(rope_parameters={}, head_dim=8, max_position_embeddings=64), interleaved="no"), TypeError, "interleaved must be a bool"),
    ]


ALL_CASES = CASES + GENERATED + MODULE_CASES + _integration_cases()


@pytest.mark.parametrize("case", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_bad_input(case):
    _, fn, exc, fragment = case
    before = X.clone()
    with pytest.raises(exc, match=fragment):
        fn()
    assert X.equal(before)


def test_device_mismatch_is_reported():
    if not torch.cuda.is_available():
        meta_positions = torch.arange(5, device="meta")
        with pytest.raises(RuntimeError, match="positions must be on the device of x"):
            torch.ops.posenc.add_positional(X, meta_positions)
    else:
        with pytest.raises(RuntimeError, match="positions must be on the device of x"):
            posenc.add_positional(X, positions=torch.arange(5, device="cuda"))


def test_corpus_in_a_separate_interpreter():
    """Every case again in a child interpreter: a crash (segfault, abort) in any of them would
    kill the child instead of reporting, so the child's exit code and its count show it."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    script = (
        "import sys, test_bad_inputs as t\n"
        "ok = 0\n"
        "for name, fn, exc, fragment in t.ALL_CASES:\n"
        "    try:\n"
        "        fn()\n"
        "    except exc:\n"
        "        ok += 1\n"
        "print('survived', ok, len(t.ALL_CASES))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here] + sys.path))
    result = subprocess.run([sys.executable, "-c", script], cwd=here, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"survived {len(ALL_CASES)} {len(ALL_CASES)}" in result.stdout, result.stdout[-2000:]
    assert len(ALL_CASES) >= 250
