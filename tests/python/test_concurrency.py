"""Threads and determinism: concurrent calls equal serial ones; the same seed gives the same
bits for any number of threads."""

import threading

import pytest
import torch

import posenc


def _workloads():
    """(name, fn(i) -> tensors) with shared weights and per-call inputs."""
    torch.manual_seed(0)
    weight = torch.randn(100, 48, requires_grad=True)
    table = torch.randn(64, 48, requires_grad=True)
    gens = [torch.Generator().manual_seed(i) for i in range(8)]
    xs = [torch.randn(4, 40, 48, generator=g) for g in gens]
    ids = [torch.randint(0, 100, (4, 40), generator=g) for g in gens]
    qs = [torch.randn(2, 40, 4, 32, generator=g) for g in gens]

    def add_positional(i):
        x = xs[i].clone().requires_grad_()
        y = posenc.add_positional(x, kind="learned", table=table, combine="mul", dropout=0.1,
                                  generator=torch.Generator().manual_seed(100 + i))
        gx, gt = torch.autograd.grad(y.pow(2).sum(), (x, table))
        return y.detach(), gx, gt

    def embedding(i):
        y = posenc.embedding(ids[i], weight, dropout=0.2, padding_idx=0,
                             generator=torch.Generator().manual_seed(200 + i))
        (gw,) = torch.autograd.grad(y.pow(2).sum(), (weight,))
        return y.detach(), gw

    def rotary(i):
        q = qs[i].clone().requires_grad_()
        out = posenc.rotary(q, offset=i * 7, rotary_dim=16)
        (gq,) = torch.autograd.grad(out.pow(3).sum(), (q,))
        return out.detach(), gq

    return [("add_positional", add_positional), ("embedding", embedding), ("rotary", rotary)]


@pytest.mark.parametrize("name,fn", _workloads())
def test_eight_threads_equal_serial(name, fn):
    serial = [fn(i) for i in range(8)]
    results = [None] * 8
    errors = []

    def work(i):
        try:
            results[i] = fn(i)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("name,fn", _workloads())
def test_same_bits_for_one_and_two_threads(name, fn):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [fn(i) for i in range(3)]
        torch.set_num_threads(2)
        two = [fn(i) for i in range(3)]
    finally:
        torch.set_num_threads(previous)
    for got, want in zip(two, one):
        for a, b in zip(got, want):
            assert torch.equal(a, b), name
