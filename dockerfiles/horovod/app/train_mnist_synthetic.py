#!/usr/bin/env python3
"""Minimal Horovod data-parallel training on synthetic data (no dataset download).

    horovodrun -np 4 -H node1:1,node2:1,node3:1,node4:1 -p 2222 python3 /app/train_mnist_synthetic.py

`fleetimg run horovod` runs it across boards; `--steps N` sets how long (default 20). The
last line rank 0 prints ("replicas identical on N workers") is the verdict fleetimg checks.
"""
import argparse

import horovod.torch as hvd
import torch
from torch import nn


def main():
    parser = argparse.ArgumentParser(description="Horovod training on synthetic MNIST-sized data")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    args = parser.parse_args()
    hvd.init()
    torch.manual_seed(hvd.rank())
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01 * hvd.size()),
                                   named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    for step in range(args.steps):
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if hvd.rank() == 0 and (step % 5 == 0 or step == args.steps - 1):
            print("step {} loss {:.3f} on {} workers".format(step, loss.item(), hvd.size()))
    # Every rank saw different data; only averaged gradients leave the replicas identical.
    flat = torch.cat([p.detach().flatten() for p in model.parameters()]).unsqueeze(0)
    replicas = hvd.allgather(flat)
    if not all(torch.equal(replicas[0], r) for r in replicas):
        raise SystemExit("replicas diverged: gradients were not averaged across workers")
    if hvd.rank() == 0:
        print("replicas identical on {} workers".format(hvd.size()))


if __name__ == "__main__":
    main()
