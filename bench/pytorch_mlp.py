#!/usr/bin/python3
"""The PyTorch peer for bench/train_vs_pytorch.sh: the same MLP (784-H-10, ReLU), the same optimizer
(Adam by default, or SGD with momentum), the same batch, one thread, data already in memory. Prints one JSON line with
samples_per_s of the training loop (evaluation excluded) and the test accuracy."""
import argparse, gzip, json, struct, time

import numpy as np
import torch


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--optimizer", choices=["adam", "momentum"], default="adam")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    x = torch.from_numpy(idx(f"{a.data}/train-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255)
    y = torch.from_numpy(idx(f"{a.data}/train-labels-idx1-ubyte.gz").astype(np.int64))
    tx = torch.from_numpy(idx(f"{a.data}/t10k-images-idx3-ubyte.gz").reshape(-1, 784).astype(np.float32) / 255)
    ty = torch.from_numpy(idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").astype(np.int64))
    model = torch.nn.Sequential(torch.nn.Linear(784, a.hidden), torch.nn.ReLU(), torch.nn.Linear(a.hidden, 10))
    if a.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    lossf = torch.nn.CrossEntropyLoss()
    n = x.shape[0]
    train_s = 0.0
    for epoch in range(a.epochs):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        for i in range(0, n - a.batch + 1, a.batch):
            b = perm[i:i + a.batch]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(x[b]), y[b])
            loss.backward()
            opt.step()
        train_s += time.perf_counter() - t0
    with torch.no_grad():
        acc = (model(tx).argmax(1) == ty).float().mean().item()
    steps = (n // a.batch) * a.epochs
    print(json.dumps({"samples_per_s": steps * a.batch / train_s, "train_s": train_s, "test_accuracy": acc,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
