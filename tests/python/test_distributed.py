"""Distributed training on torch.distributed with the gloo backend: 2 processes on this machine,
talking over the loopback interface only."""

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import posenc

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = posenc.nn.PositionalEmbedding(30, 16, padding_idx=0, kind="learned",
                                                   max_positions=32)
        self.rope = posenc.nn.RotaryEmbedding(8)
        self.out = nn.Linear(16, 30)

    def forward(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        h = self.embed(ids, offset=offset)
        q = self.rope(h.unflatten(-1, (2, 8)), offset=offset).flatten(-2)
        return self.out(q)


def data(steps: int, batch: int, length: int):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 30, (batch, length), generator=g) for _ in range(steps)]


def train_single(steps: int):
    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for ids in data(steps, 4 * WORLD, 10):
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ddp_worker(rank: int, port: int, steps: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(Model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for ids in data(steps, 4 * WORLD, 10):
        local = ids.chunk(WORLD)[rank]
        loss = nn.functional.cross_entropy(model(local).flatten(0, 1), local.flatten())
        opt.zero_grad()
        loss.backward()  # DDP averages gradients: the mean loss over the whole batch
        opt.step()
    if rank == 0:
        torch.save({k: v.detach() for k, v in model.module.state_dict().items()},
                   os.path.join(out_dir, "ddp.pt"))
    dist.barrier()  # both ranks done before either tears gloo down
    dist.destroy_process_group()
    # Leave without the interpreter's teardown, where gloo's threads intermittently abort the
    # process ("terminate called without an active exception", seen 3 times in 10 runs before).
    os._exit(0)


def sequence_parallel_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    model = Model()
    ids = data(1, 3, 12)[0]
    upstream = torch.randn(3, 12, 30, generator=torch.Generator().manual_seed(3))
    length = ids.shape[1] // WORLD
    start = rank * length
    out = model(ids[:, start : start + length], offset=start)  # this rank's slice of T
    gathered = [torch.empty_like(out) for _ in range(WORLD)]
    dist.all_gather(gathered, out.detach())
    (out * upstream[:, start : start + length]).sum().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)  # the sum over slices is the unsharded gradient
    if rank == 0:
        torch.save({"out": torch.cat(gathered, dim=1),
                    "grads": {n: p.grad for n, p in model.named_parameters()}},
                   os.path.join(out_dir, "sp.pt"))
    dist.barrier()  # both ranks done before either tears gloo down
    dist.destroy_process_group()
    # Leave without the interpreter's teardown, where gloo's threads intermittently abort the
    # process ("terminate called without an active exception", seen 3 times in 10 runs before).
    os._exit(0)



def test_ddp_matches_single_process_on_the_whole_batch():
    steps = 3
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(ddp_worker, args=(free_port(), steps, out_dir), nprocs=WORLD, join=True)
        ddp = torch.load(os.path.join(out_dir, "ddp.pt"))
    single = train_single(steps)
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, atol=1e-5, rtol=1e-5, msg=name)


def test_sequence_parallel_equals_unsharded():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(sequence_parallel_worker, args=(free_port(), out_dir), nprocs=WORLD, join=True)
        sharded = torch.load(os.path.join(out_dir, "sp.pt"))
    torch.manual_seed(0)
    model = Model()
    ids = data(1, 3, 12)[0]
    upstream = torch.randn(3, 12, 30, generator=torch.Generator().manual_seed(3))
    out = model(ids)
    (out * upstream).sum().backward()
    torch.testing.assert_close(sharded["out"], out.detach(), atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(sharded["grads"][name], p.grad, atol=1e-5, rtol=1e-5, msg=name)
