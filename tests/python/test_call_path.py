# The wrappers' direct call (posenc._C.call) against the operators' own Python entry (_op): the
# same results, the same errors, and torch's dispatch (modes, subclasses) where it applies.
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import posenc
from posenc import _C


def _ops(name):
    return getattr(torch.ops.posenc, name).default


def _schema_arguments(name, **given):
    """Every argument of posenc::<name> in schema order: `given`, else the schema default."""
    values = []
    for argument in _ops(name)._schema.arguments:
        if argument.name in given:
            values.append(given.pop(argument.name))
        else:
            values.append(argument.default_value)
    assert not given, given
    return values


def _op_call(name, **given):
    return _ops(name)._op(**given)


CALLS = [
    ("add_positional", dict(x=torch.randn(2, 5, 12), offset=7, kind="damped", scale=1.5)),
    ("add_positional", dict(x=torch.randn(1, 7, 12), grid=[2, 3], extra_tokens=1,
                            grid_scale=[0.5, 2.0], grid_origin=[1, 0])),
    ("add_positional", dict(x=torch.randn(2, 4, 8), positions=torch.tensor([3, 1, 4, 1]),
                            table=torch.randn(6, 8), kind="learned", combine="mul")),
    ("add_positional", dict(x=torch.randn(2, 4, 8), seed=torch.tensor(11), dropout=0.4)),
    ("embedding", dict(ids=torch.randint(0, 30, (2, 6)), weight=torch.randn(30, 16),
                       offset=4, padding_idx=0)),
    ("rotary", dict(q=torch.randn(1, 5, 4, 16), k=torch.randn(1, 5, 2, 16), offset=3)),
    ("positional_encoding", dict(positions=torch.arange(-4, 5), dim=10, dtype=torch.float64)),
    ("attention_bias", dict(weight=torch.randn(32, 3), query_length=5, key_length=7,
                            kind="t5", dtype=torch.float64)),
]


@pytest.mark.parametrize("name,given", CALLS, ids=[c[0] for c in CALLS])
def test_direct_call_gives_the_operators_results(name, given):
    direct = _C.direct_call(name)
    assert direct is not None
    result = _C.call(direct, *_schema_arguments(name, **dict(given)))
    expected = _op_call(name, **dict(given))
    if isinstance(expected, torch.Tensor):
        expected, result = [expected], [result]
    assert isinstance(result, list) and len(result) == len(expected)
    for r, e in zip(result, expected):
        assert r.dtype == e.dtype and torch.equal(r, e)


def test_direct_call_leaves_what_it_does_not_convert_to_the_operator():
    direct = _C.direct_call("add_positional")
    x = torch.randn(1, 3, 8)
    plain = _schema_arguments("add_positional", x=x)
    assert isinstance(_C.call(direct, *plain), torch.Tensor)
    offset = [a.name for a in _ops("add_positional")._schema.arguments].index("offset")
    for odd in (True, 2.0, torch.tensor(2)):  # a bool, a float and a tensor for an int
        arguments = list(plain)
        arguments[offset] = odd
        assert _C.call(direct, *arguments) is NotImplemented
    with pytest.raises(TypeError, match="takes 19 arguments, got 1"):
        _C.call(direct, x)


def test_operator_errors_keep_their_type_and_message():
    with pytest.raises(ValueError, match="offset must be >= 0, got -2"):
        posenc.add_positional(torch.randn(1, 3, 8), offset=-2)
    with pytest.raises(TypeError, match="x must be a floating"):
        posenc.add_positional(torch.ones(1, 3, 8, dtype=torch.int64))


class _Recording(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_torch_function_modes_see_the_operator():
    x = torch.randn(2, 3, 8)
    with _Recording() as mode:
        y = posenc.add_positional(x, offset=2)
        q, k = posenc.rotary(torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8))
    assert _ops("add_positional") in mode.seen
    assert _ops("rotary") in mode.seen
    assert torch.equal(y, posenc.add_positional(x, offset=2))


class _Logged(torch.Tensor):
    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_tensor_subclasses_get_their_torch_function():
    _Logged.calls.clear()
    x = torch.randn(2, 3, 8).as_subclass(_Logged)
    y = posenc.add_positional(x)
    assert _ops("add_positional") in _Logged.calls
    assert type(y) is _Logged


class _Dispatched(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_torch_dispatch_modes_see_the_operator():
    # The direct call runs the dispatcher without the GIL; a Python mode takes it back.
    x = torch.randn(2, 3, 8)
    with _Dispatched() as mode:
        y = posenc.add_positional(x, offset=5, dropout=0.2, generator=torch.Generator())
    assert _ops("add_positional") in mode.seen
    assert y.shape == x.shape


def test_parameters_and_autograd_go_the_direct_way():
    table = torch.nn.Parameter(torch.randn(6, 8))
    x = torch.randn(2, 4, 8, requires_grad=True)
    positions = torch.tensor([0, 2, 5, 1])
    arguments = _schema_arguments("add_positional", x=x, positions=positions, table=table,
                                  kind="learned")
    y = _C.call(_C.direct_call("add_positional"), *arguments)
    assert y is not NotImplemented and y.grad_fn is not None
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(table.grad, torch.zeros(6, 8).index_add_(
        0, positions, torch.full((4, 8), 2.0)))
