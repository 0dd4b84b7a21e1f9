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


# Every build of the vectorized CPU loops (baseline, AVX2, AVX-512, chosen at run time) rounds as
# the baseline does: the same call gives the same bits whichever build runs. The capped builds
# run in child processes (POSENC_CPU_CAPABILITY is read once per process).
_BUILDS_SCRIPT = r"""
import sys, torch, posenc
torch.manual_seed(0)
out = []
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    for dim in (40, 1000):  # a vector tail, and rows of many vectors
        x = torch.randn(3, 37, dim).to(dtype)
        for combine in ("add", "mul"):
            for dropout in (0.0, 0.1):
                out.append(posenc.add_positional(
                    x, combine=combine, scale=1.5, offset=5, dropout=dropout,
                    generator=torch.Generator().manual_seed(7)))
        ids = torch.randint(0, 50, (2, 33))
        weight = torch.randn(50, dim).to(dtype)
        out.append(posenc.embedding(ids, weight, dropout=0.2, padding_idx=3,
                                    generator=torch.Generator().manual_seed(8)))
# Every float16 bit pattern (NaNs with payloads, infinities, subnormals) through the float16
# loops, scaled up to overflow and down to subnormal and zero results.
every_half = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
for scale in (1.5, 3000.0, 1e-4):
    out.append(posenc.add_positional(every_half.view(1, 64, 1024), scale=scale, offset=3))
out.append(posenc.add_positional(every_half.view(1, 64, 1024), combine="mul", dropout=0.3,
                                 generator=torch.Generator().manual_seed(9)))
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_capped_builds_give_the_same_bits(tmp_path, capability):
    import os
    import subprocess
    import sys

    paths = {}
    for name, env_cap in (("native", None), ("capped", capability)):
        env = dict(os.environ)
        env.pop("POSENC_CPU_CAPABILITY", None)
        if env_cap is not None:
            env["POSENC_CPU_CAPABILITY"] = env_cap
        paths[name] = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, "-c", _BUILDS_SCRIPT, str(paths[name])], env=env,
                       check=True)
    native, capped = torch.load(paths["native"]), torch.load(paths["capped"])
    assert len(native) == len(capped) == 34
    for i, (a, b) in enumerate(zip(native, capped)):
        assert a.dtype == b.dtype and torch.equal(a.view(torch.int16 if a.element_size() == 2
                                                          else torch.int32),
                                                   b.view(torch.int16 if b.element_size() == 2
                                                          else torch.int32)), i
