"""Typed wrappers over ``torch.ops.posenc``. Every wrapper and module goes through one argument
path, :func:`_call`: it checks each argument's Python type against the operator's schema, draws
the dropout seed from the torch generator, and calls the operator. Values are checked by the
operator itself (one place, shared with C++); all math happens in the kernels."""

from __future__ import annotations

import linecache
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from . import _C
from ._grid import GridLike, grid_arguments

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# What each schema type accepts, and how a message names it.
_EXPECTED = {
    "Tensor": "a Tensor",
    "str": "a str",
    "float": "a float",
    "int": "an int",
    "SymInt": "an int",
    "bool": "a bool",
    "List[float]": "a list of floats",
    "List[int]": "a list of ints",
}


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, torch.SymInt, torch.SymFloat)) and not isinstance(
        value, bool
    )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool)


_ACCEPTS = {
    "Tensor": lambda v: isinstance(v, Tensor),
    "str": lambda v: isinstance(v, str),
    "float": _is_real,
    "int": _is_int,
    "SymInt": _is_int,
    "bool": lambda v: isinstance(v, bool),
    "List[float]": lambda v: isinstance(v, (list, tuple)) and all(_is_real(x) for x in v),
    "List[int]": lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v),
}


# Stands for "no default" in _schema_arguments (None is a default value).
_REQUIRED = object()


def _schema_arguments(op: str) -> tuple:
    """(name, base type, optional, keyword-only, default) of each argument of
    ``torch.ops.posenc.<op>``; default is _REQUIRED where the schema has none."""
    schema = getattr(torch.ops.posenc, op).default._schema
    result = []
    for argument in schema.arguments:
        type_name = str(argument.type)
        optional = type_name.startswith("Optional[")
        base = type_name[len("Optional["):-1] if optional else type_name
        default = argument.default_value if argument.has_default_value() else _REQUIRED
        result.append((argument.name, base, optional, argument.kwarg_only, default))
    return tuple(result)


# The Python type that each schema type takes as it is; any other value goes through
# _check_argument, which converts it or raises.
_PLAIN_TYPE = {"str": "str", "float": "float", "int": "int", "SymInt": "int", "bool": "bool"}


def _binder_source(op: str) -> str:
    """The source of the function that calls ``torch.ops.posenc.<op>``: one parameter per
    schema argument (and ``generator``), checked in schema order, in straight-line code made
    from the schema. A loop over the arguments' names cost a decoding step several microseconds
    of Python; the generated checks cost about one (docs/performance.md)."""
    schema = _schema_arguments(op)
    names = [entry[0] for entry in schema]
    parameters = [f"{n}=_d_{n}" for n in names] + ["generator=None"]
    lines = [f"def call_{op}({', '.join(parameters)}):", "    keywords = {}"]
    positional = [entry for entry in schema if not entry[3]]
    has_dropout = "dropout" in names and "training" in names
    for n, base, optional, kwarg_only, default in schema:
        plain = None if (base == "int" and n == "dtype") else _PLAIN_TYPE.get(base)
        check = f'_check(_op, "{n}", "{base}", {optional}, {n})'
        if not kwarg_only:
            accept = f"isinstance({n}, Tensor)" if base == "Tensor" else (
                f"type({n}) is {plain}" if plain else "False")
            if optional:
                accept = f"{n} is None or {accept}"
            lines += [f"    if not ({accept}):", f"        {n} = {check}"]
            continue
        converted = f"{n} if type({n}) is {plain} else {check}" if plain else check
        if default is None:
            given = f"{n} is not None"
        elif default is _REQUIRED:
            given = "True"
        elif plain:
            # Symbolic values are never the default, so they add no guard.
            given = f"{n} is not _d_{n} and not (type({n}) is {plain} and {n} == _d_{n})"
        else:
            given = f"{n} is not _d_{n} and {n} != _d_{n}"
        lines += [f"    if {given}:"]
        if n == "training" and has_dropout:
            # Without dropout, training changes nothing: checked, not passed.
            lines += [f"        {n} = {converted}",
                      "        if not (type(dropout) is float and dropout == 0.0):",
                      f"            keywords['{n}'] = {n}"]
        else:
            lines += [f"        {n} = {converted}", f"        keywords['{n}'] = {n}"]
    if "seed" in names:
        first_tensor = next(n for n, base, *_ in positional if base == "Tensor")
        lines += [
            "    if seed is None and not (training is False or "
            "(type(dropout) is float and dropout == 0.0)):",
            f"        seed = _draw_seed({first_tensor}.device, "
            '_check(_op, "dropout", "float", False, dropout), '
            '_check(_op, "training", "bool", False, training), generator)',
        ]
    def call(names: list[str]) -> str:
        arguments = ", ".join(names)
        return f"({arguments}{', ' if arguments else ''}**keywords)"

    every = [n for n, *_ in positional]
    # The trailing optional tensors, when all None, are left to their defaults: the operator's
    # argument parsing converts each positional None (about 0.1 us each in a decoding step).
    leading = len(every)
    while leading > 0 and positional[leading - 1][2] and positional[leading - 1][4] is None:
        leading -= 1
    trailing = every[leading:]
    # OpOverload.__call__ only forwards to its _op here (no Python dispatcher registered on the
    # operator): calling _op skips a Python frame, about 1 us of a decoding step. Traced calls
    # (torch.compile) go through the OpOverload, which Dynamo knows.
    lines += ["    if _is_compiling() or _function._pyobj_dispatcher is not None:",
              f"        return _function{call(every)}"]
    # posenc._C.call: every argument in schema order, without torch's generic argument parsing
    # (about 2 us of a decoding step); NotImplemented leaves the call to the operator's _op
    # (a tensor subclass, a __torch_function__ mode, a value it does not convert).
    if _C.direct_call(op) is not None:
        lines += [f"    result = _call_direct(_direct, {', '.join(names)})",
                  "    if result is not NotImplemented:",
                  "        return result"]
    if trailing:
        lines += [f"    if {' and '.join(f'{n} is None' for n in trailing)}:",
                  f"        return _function_op{call(every[:leading])}"]
    lines += [f"    return _function_op{call(every)}"]
    return "\n".join(lines) + "\n"


def _check_argument(op: str, name: str, base: str, optional: bool, value: object) -> object:
    """The value converted for the schema, or a TypeError that names the argument."""
    if value is None and optional:
        return None
    if base == "int" and name == "dtype":  # ScalarType
        if isinstance(value, torch.dtype):
            return value
        raise TypeError(f"posenc.{op}: {name} must be a torch.dtype, got {type(value).__name__}")
    if base not in _ACCEPTS or not _ACCEPTS[base](value):
        expected = _EXPECTED.get(base, base) + (" or None" if optional else "")
        raise TypeError(f"posenc.{op}: {name} must be {expected}, got {type(value).__name__}")
    if base == "float" and not isinstance(value, torch.SymFloat):
        return float(value)  # type: ignore[arg-type]
    if base == "List[float]":
        return [float(v) for v in value]  # type: ignore[union-attr]
    if base == "List[int]":
        return list(value)  # type: ignore[arg-type]
    return value


def draw_seed(
    device: torch.device, dropout: float, training: bool, generator: Optional[torch.Generator]
) -> Optional[Tensor]:
    """An int64 scalar tensor on ``device`` drawn from ``generator`` (or the default generator
    of that device), or None when no dropout mask is needed. Drawing it outside the operator
    keeps the operator a pure function of its inputs, which torch.compile needs."""
    if not training or dropout == 0.0:
        return None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"posenc: generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return torch.randint(
        _INT64_MIN, _INT64_MAX, (), dtype=torch.int64, device=device, generator=generator
    )


def _make_binder(op: str) -> Any:
    """The generated caller of ``torch.ops.posenc.<op>`` (see _binder_source); its source is
    registered with linecache, so that tracebacks and torch.compile show it."""
    source = _binder_source(op)
    filename = f"<posenc generated: call_{op}>"
    namespace: Dict[str, Any] = {
        "Tensor": Tensor,
        "_op": op,
        "_check": _check_argument,
        "_draw_seed": draw_seed,
        "_function": getattr(torch.ops.posenc, op).default,
        "_function_op": getattr(torch.ops.posenc, op).default._op,
        "_is_compiling": torch.compiler.is_compiling,
        "_direct": _C.direct_call(op),
        "_call_direct": _C.call,
    }
    for n, _, _, _, default in _schema_arguments(op):
        namespace[f"_d_{n}"] = None if default is _REQUIRED else default
    exec(compile(source, filename, "exec"), namespace)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return namespace[f"call_{op}"]


# Every posenc operator's caller, made once at import (the package loads the library first):
# torch.compile then sees constants.
_BINDERS = {
    name[len("posenc::"):]: _make_binder(name[len("posenc::"):])
    for name in torch._C._dispatch_get_all_op_names() if name.startswith("posenc::")
}


def _call(op: str, arguments: Dict[str, Any], generator: Optional[torch.Generator] = None) -> Any:
    """Calls ``torch.ops.posenc.<op>`` with ``arguments`` by schema name. Keyword arguments that
    are absent, or equal to the schema's default, keep the schema's defaults (each one passed
    costs the dispatcher's argument parsing about half a microsecond; docs/performance.md).
    Checks each type, and draws the dropout seed when the schema takes one and none is given, on
    the device of the operator's first tensor."""
    return _BINDERS[op](generator=generator, **arguments)


def add_positional(
    x: Tensor,
    *,
    kind: str = "sinusoidal",
    combine: str = "add",
    scale: float = 1.0,
    positions: Optional[Tensor] = None,
    offset: int = 0,
    base: float = 10000.0,
    convention: str = "vaswani",
    layout: Optional[str] = None,
    table: Optional[Tensor] = None,
    grid: Optional[GridLike] = None,
    dropout: float = 0.0,
    training: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Adds (or multiplies in) a position code, fused with scaling and dropout.

    ``y = dropout_p(combine(scale * x, PE(pos)))`` in one pass, where ``combine`` is
    ``scale*x + PE`` (``"add"``) or ``(scale*x) * PE`` (``"mul"``).

    Args:
        x: ``(..., T, D)`` floating tensor (float32, float64, bfloat16, float16), any strides.
        kind: the code ``PE(pos)[j]`` with base ``b``:
            ``"sinusoidal"``: ``w_i = b^(-2i/D)`` (convention ``"vaswani"``) or
            ``w_i = b^(-i/(D/2-1))`` (``"tensor2tensor"``); layout ``"interleaved"``
            (``PE[2i]=sin(pos*w_i), PE[2i+1]=cos(pos*w_i)``) or ``"concat"``
            (``PE[i]=sin, PE[D/2+i]=cos``); odd ``D`` leaves the last channel 0.
            ``"linear"``: ``PE[2i]=b^-i cos(pos*pi/b)``, ``PE[2i+1]=b^-i sin(pos*pi/b)``.
            ``"damped"``: ``PE[2i]=cos(pos/b)/sqrt(2^(i+1))``, ``PE[2i+1]=sin(pos/b)/sqrt(2^(i+1))``.
            ``"cosine"``: ``PE[j]=cos(pos*b^(-2j/D))``.
            ``"learned"``: ``PE = table[pos]``.
        combine: ``"add"`` or ``"mul"``.
        scale: multiplies ``x`` before combining.
        positions: ``None`` for ``offset + arange(T)``, or an int64/int32 tensor broadcastable
            to ``x.shape[:-1]``: any values for a computed code (negative ones are relative
            positions, ``PE(-p)`` with ``sin(-x) = -sin(x)``), ``0 <= pos < P`` for
            ``"learned"``, token indices on a ``grid``. Give ``positions`` or a nonzero
            ``offset``, not both.
        offset: first position when ``positions`` is None (KV-cache decoding, shards).
        base: ``b`` above, finite and ``> 0``.
        layout: ``"interleaved"``, ``"concat"`` or ``"concat_cos_first"`` (cos, then sin
            halves: MusicGen); default ``"concat"`` with a ``grid``
            (MAE's, DiT's and big_vision's 2D codes), else ``"interleaved"``.
        table: ``(P, D)`` tensor of ``x``'s dtype for ``kind="learned"`` (only then); may
            require grad.
        grid: the patch grid of a vision or video transformer: a :class:`posenc.Grid`, or its
            sizes ``(H, W)`` / ``(T, H, W)``. Positions are then token indices (without
            ``positions``, ``T`` must be ``extra_tokens + prod(sizes)``) and each axis codes
            its own channels; see :class:`posenc.Grid`. MAE/DiT's ``get_2d_sincos_pos_embed``
            is ``grid=posenc.Grid((H, W), extra_tokens=1)``;
            :class:`posenc.nn.PatchPositionalEncoding` sets SD3's and CogVideoX's parameters.
        dropout: drop probability ``p`` in ``[0, 1]`` (inverted dropout, when ``training``);
            ``p = 1`` gives zeros, as ``torch.nn.functional.dropout``.
        generator: source of the dropout seed; default: the default generator of x's device.

    Returns:
        ``(..., T, D)`` tensor like ``x``. Angles are reduced exactly, so the code is within
        2e-6 of a float64 computation for positions below 2^24.
    """
    # The operator's caller itself, without a dict in between, and without ** where there is no
    # grid (a call with ** binds its keywords through a dict: 1.2 us of a decoding step).
    caller = _BINDERS["add_positional"]
    if grid is not None:
        return caller(x, positions, table, kind=kind, combine=combine, scale=scale, offset=offset,
                      base=base, convention=convention, layout=layout, dropout=dropout,
                      training=training, generator=generator,
                      **grid_arguments("posenc.add_positional", grid))
    return caller(x, positions, table, kind=kind, combine=combine, scale=scale, offset=offset,
                  base=base, convention=convention, layout=layout, dropout=dropout,
                  training=training, generator=generator)


def embedding(
    ids: Tensor,
    weight: Tensor,
    *,
    kind: str = "sinusoidal",
    combine: str = "add",
    scale: Optional[float] = None,
    positions: Union[None, str, Tensor] = None,
    offset: int = 0,
    padding_idx: Optional[int] = None,
    base: float = 10000.0,
    convention: str = "vaswani",
    layout: Optional[str] = None,
    table: Optional[Tensor] = None,
    dropout: float = 0.0,
    training: bool = True,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Token embedding fused with the position code, scaling and dropout.

    ``y = dropout_p(combine(scale * weight[ids], PE(pos)))`` in one pass forward and one pass
    backward (no mask or table is stored for the backward).

    Args:
        ids: ``(..., T)`` int64/int32 token ids in ``[0, V)``.
        weight: ``(V, D)`` embedding matrix (float32, float64, bfloat16, float16).
        kind, combine, base, convention, layout, table, dropout, training, generator: as in
            :func:`add_positional`.
        scale: multiplies ``weight[ids]``; ``None`` means ``sqrt(D)``.
        positions: ``None`` for ``offset + arange(T)``; an int tensor broadcastable to
            ``ids.shape``; or ``"fairseq"``: fairseq's ``make_positions`` computed in the kernel
            (a non-pad token's position is ``padding_idx`` plus its running count of non-pad
            tokens along ``T``), which needs ``padding_idx``.
        padding_idx: as in ``nn.Embedding`` (negative counts from the end): that row of
            ``weight`` gets no gradient, and tokens equal to it get no position code.

    Returns:
        ``(*ids.shape, D)`` tensor of ``weight``'s dtype.
    """
    # Named explicitly: Dynamo before torch 2.14 cannot trace locals().
    arguments = dict(ids=ids, weight=weight, kind=kind, combine=combine, scale=scale,
                     positions=positions, offset=offset, padding_idx=padding_idx, base=base,
                     convention=convention, layout=layout, table=table, dropout=dropout,
                     training=training, generator=generator)
    generator = arguments.pop("generator")
    if isinstance(positions, str):
        if positions != "fairseq":
            raise ValueError(
                f"posenc.embedding: positions must be None, a Tensor or 'fairseq', got "
                f"{positions!r}"
            )
        arguments.update(positions=None, fairseq_positions=True)
    return _call("embedding", arguments, generator)


def positional_encoding(
    positions: Union[int, Tensor],
    dim: int,
    *,
    kind: str = "sinusoidal",
    base: float = 10000.0,
    convention: str = "vaswani",
    layout: Optional[str] = None,
    grid: Optional[GridLike] = None,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[torch.device, str]] = None,
) -> Tensor:
    r"""The position code itself: ``PE(positions)`` of shape ``positions.shape + (dim,)``.

    Args:
        positions: an int ``n`` meaning ``0..n-1``, or an int64/int32 tensor of positions.
            Negative positions are relative ones: Transformer-XL's and Conformer's rows for
            ``L`` frames, relative positions ``L-1 .. -(L-1)``, are
            ``positional_encoding(torch.arange(L - 1, -L, -1), D)``.
        dim: width ``D`` of the code.
        kind, base, convention, layout: as in :func:`add_positional` (not ``"learned"``).
        grid: a patch grid, as in :func:`add_positional`; positions are token indices below
            ``extra_tokens + prod(sizes)``. ``positional_encoding(1 + H * W, D,
            grid=posenc.Grid((H, W), extra_tokens=1))`` is MAE's ``pos_embed`` with its cls row.
        dtype: float32, float64, bfloat16 or float16.
        device: where to build ``arange(n)`` when ``positions`` is an int; for a tensor, its
            device (``"cuda"`` matches any CUDA device index).
    """
    # Named explicitly: Dynamo before torch 2.14 cannot trace locals().
    arguments = dict(positions=positions, dim=dim, kind=kind, base=base, convention=convention,
                     layout=layout, dtype=dtype,
                     **grid_arguments("posenc.positional_encoding", grid))
    if isinstance(positions, bool) or not isinstance(positions, (int, Tensor)):
        raise TypeError(
            f"posenc.positional_encoding: positions must be an int or a Tensor, got "
            f"{type(positions).__name__}"
        )
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(
                f"posenc.positional_encoding: positions must be >= 0 when an int, got {positions}"
            )
        positions = torch.arange(positions, device=device)
    elif device is not None:
        wanted = torch.device(device)
        # "cuda" matches cuda:0, cuda:1, ...; "cpu:0" matches the CPU (whose index is None).
        same = positions.device.type == wanted.type and (
            wanted.index is None or positions.device.index in (None, wanted.index)
        )
        if not same:
            raise ValueError(
                f"posenc.positional_encoding: device={device} differs from positions.device="
                f"{positions.device}"
            )
    arguments["positions"] = positions
    return _call("positional_encoding", arguments)
