#!/usr/bin/python3
"""The PyTorch DistributedDataParallel peer for bench/dp_scaling.sh: the MLP (784-H-10) trained on
Fashion-MNIST by N processes (gloo backend, loopback, 1 thread each), each on its own shard with
batch GLOBAL/N rows, Adam, data in memory. Prints one JSON line: samples_per_s (all ranks, training
loop only) and the test accuracy of rank 0's replica."""
import argparse, json, os, time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pytorch_mlp import idx


def worker(rank, a, port, q):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=a.nproc)
    torch.manual_seed(a.seed)
    x = torch.from_numpy(idx(f"{a.data}/train-images-idx3-ubyte.gz").reshape(-1, 784).astype("float32") / 255)
    y = torch.from_numpy(idx(f"{a.data}/train-labels-idx1-ubyte.gz").astype("int64"))
    n = x.shape[0] // a.nproc
    x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
    model = torch.nn.Sequential(torch.nn.Linear(784, a.hidden), torch.nn.ReLU(), torch.nn.Linear(a.hidden, 10))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=a.lr)
    lossf = torch.nn.CrossEntropyLoss()
    b = a.batch // a.nproc
    steps = n // b
    dist.barrier()
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        perm = torch.randperm(n)
        for i in range(steps):
            idxs = perm[i * b:(i + 1) * b]
            opt.zero_grad(set_to_none=True)
            lossf(ddp(x[idxs]), y[idxs]).backward()
            opt.step()
    dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        tx = torch.from_numpy(idx(f"{a.data}/t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype("float32") / 255)
        ty = torch.from_numpy(idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").astype("int64"))
        with torch.no_grad():
            acc = (model(tx).argmax(1) == ty).float().mean().item()
        q.put({"samples_per_s": steps * b * a.nproc * a.epochs / dt, "train_s": dt, "test_accuracy": acc,
               "workers": a.nproc, "torch": torch.__version__})
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("-n", "--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=512, help="global batch")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--port", type=int, default=29511)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.spawn(worker, args=(a, a.port, q), nprocs=a.nproc, join=True)
    print(json.dumps(q.get()))


if __name__ == "__main__":
    main()
