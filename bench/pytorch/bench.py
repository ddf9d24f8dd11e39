#!/usr/bin/env python3
"""PyTorch reference for `gradscope bench`: the same networks, the same loop.

gradscope runs this script beside its own measurements (`gradscope bench
--pytorch`), so every gradscope/PyTorch ratio in BENCHMARKS.md comes from one
run on one machine. It can also be run by hand:

    gradscope models show mlp-sigmoid-8x256 --json > m.json
    python3 bench/pytorch/bench.py --model m.json --data DIR --threads 1

What is identical to gradscope's `Trainer` (crates/train/src/trainer.rs):
- the network, built from gradscope's resolved model config (hidden widths,
  activation, BatchNorm and its placement, residual blocks; ResNet stages,
  blocks, shortcuts), checked by parameter count against gradscope's;
- the data: the same IDX files, uint8 pixels turned into a standardised
  float32 batch of 128 on every step, in a shuffled order;
- the step: forward, softmax cross-entropy, backward, SGD with momentum 0.9
  (PyTorch's own, dampening 0), plus the training-accuracy count gradscope
  accumulates on the device; losses are read back once per repetition.
Timing: one warm-up repetition, then `--reps` repetitions of `--steps` steps;
samples/s per repetition (the median is what gradscope reports).

`--peak` measures the fp32 matrix-multiply peak instead (GFLOP/s of a square
matmul, best of several sizes), the roof against which the training rows are
read; `--matmul MxKxN` one product's GFLOP/s, for the shapes a training step
multiplies (gradscope bench --matmul puts Burn's beside it).
"""

import argparse
import gzip
import json
import math
import resource
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    """An IDX file (plain or gzip) as a numpy array."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, dtype, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


# gradscope's `Activation` (serde: {"kind": ..., parameters}) -> the torch module.
ACTIVATIONS = {
    "sigmoid": lambda s: nn.Sigmoid(),
    "tanh": lambda s: nn.Tanh(),
    "relu": lambda s: nn.ReLU(),
    "leaky_relu": lambda s: nn.LeakyReLU(s["slope"]),
    "elu": lambda s: nn.ELU(s["alpha"]),
    "selu": lambda s: nn.SELU(),
    "gelu": lambda s: nn.GELU(),
    "identity": lambda s: nn.Identity(),
}


def activation(spec):
    if spec["kind"] not in ACTIVATIONS:
        sys.exit(f"unknown activation {spec}")
    return ACTIVATIONS[spec["kind"]](spec)


def classes(cfg):
    head = cfg["head"]
    return head["classes"] if head["kind"] == "softmax" else 1


class Mlp(nn.Module):
    """gradscope's `Mlp`: hidden layers `f(BN(W x + b))` (or `BN(f(.))`), identity
    skips around the residual blocks, a linear head."""

    def __init__(self, cfg):
        super().__init__()
        widths = cfg["widths"]
        self.blocks = [tuple(b) for b in cfg["residual_blocks"]]
        self.before = cfg["norm_placement"] == "before_activation"
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.acts = nn.ModuleList()
        d_in = cfg["input_size"]
        for w in widths:
            self.linears.append(nn.Linear(d_in, w))
            self.norms.append(nn.BatchNorm1d(w) if cfg["norm"] == "batchnorm" else nn.Identity())
            self.acts.append(activation(cfg["activation"]))
            d_in = w
        self.head = nn.Linear(d_in, classes(cfg))

    def forward(self, x):
        h = x.flatten(1)
        skip = None
        for i, (lin, norm, act) in enumerate(zip(self.linears, self.norms, self.acts)):
            if any(s == i for s, _ in self.blocks):
                skip = h
            z = lin(h)
            h = act(norm(z)) if self.before else norm(act(z))
            if any(e == i for _, e in self.blocks):
                h = skip + h
        return self.head(h)


def conv_norm(cfg, c_in, c_out, k, stride):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=not cfg["batchnorm"])
    return nn.Sequential(conv, nn.BatchNorm2d(c_out)) if cfg["batchnorm"] else conv


class Block(nn.Module):
    """gradscope's `BasicBlock`: `act(BN(conv(act(BN(conv(x))))) + shortcut(x))`."""

    def __init__(self, cfg, c_in, c_out, stride):
        super().__init__()
        self.conv1 = conv_norm(cfg, c_in, c_out, 3, stride)
        self.conv2 = conv_norm(cfg, c_out, c_out, 3, 1)
        self.act = activation(cfg["activation"])
        self.skip = cfg["skip"]
        reshapes = stride != 1 or c_in != c_out
        self.projection = (
            conv_norm(cfg, c_in, c_out, 1, stride)
            if self.skip and reshapes and cfg["shortcut"] == "projection"
            else None
        )
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x):
        y = self.conv2(self.act(self.conv1(x)))
        if not self.skip:
            return self.act(y)
        if self.projection is not None:
            s = self.projection(x)
        elif self.stride == 1 and self.pad == 0:
            s = x
        else:
            s = x[:, :, :: self.stride, :: self.stride]
            s = F.pad(s, (0, 0, 0, 0, 0, self.pad))
        return self.act(y + s)


class ResNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch = cfg["channels"]
        self.stem = conv_norm(cfg, cfg["in_channels"], ch[0], 3, 1)
        self.act = activation(cfg["activation"])
        blocks, c_in = [], ch[0]
        for si, (c_out, n) in enumerate(zip(ch, cfg["blocks"])):
            for bi in range(n):
                blocks.append(Block(cfg, c_in, c_out, 2 if si > 0 and bi == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, classes(cfg))

    def forward(self, x):
        x = self.blocks(self.act(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def build(cfg):
    if cfg["arch"] == "mlp":
        return Mlp(cfg)
    if cfg["arch"] == "resnet":
        return ResNet(cfg)
    sys.exit(f"unknown arch {cfg['arch']}")


def flops_per_sample(model, x, y):
    """Multiply-add FLOPs of one training step (forward + backward), per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def train(args):
    with open(args.model) as f:
        cfg = json.load(f)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    images = read_idx(args.images)
    labels = torch.from_numpy(read_idx(args.labels).astype(np.int64))
    pixels = torch.from_numpy(images.copy())  # uint8 [N, 28, 28]
    # gradscope's default `Normalization::Standard`: the training split's pixel mean and std.
    mean, std = images.mean() / 255.0, images.std() / 255.0
    model = build(cfg).to(device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    if "trainable_params" in cfg and params != cfg["trainable_params"]:
        sys.exit(f"{args.model}: PyTorch network has {params} parameters, gradscope's {cfg['trainable_params']}")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    n, b = len(labels), args.batch_size
    rng = torch.Generator().manual_seed(args.seed)
    order, cursor = torch.randperm(n, generator=rng), 0

    def batch():
        nonlocal order, cursor
        if cursor + b > n:  # drop the last partial batch, as gradscope does
            order, cursor = torch.randperm(n, generator=rng), 0
        idx = order[cursor : cursor + b]
        cursor += b
        x = (pixels[idx].to(torch.float32) / 255.0 - mean) / std
        x = x.unsqueeze(1).to(device, non_blocking=True)
        return x, labels[idx].to(device, non_blocking=True)

    x0, y0 = batch()
    flops = flops_per_sample(model, x0, y0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    samples = []
    for rep in range(args.reps + 1):
        losses, correct = [], torch.zeros((), device=device)
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            x, y = batch()
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            correct += (logits.detach().argmax(1) == y).sum()
        mean_loss = torch.stack(losses).mean().item()  # one read per repetition
        sync()
        elapsed = time.perf_counter() - start
        if not math.isfinite(mean_loss):
            sys.exit(f"loss is {mean_loss}")
        if rep > 0:  # repetition 0 is the warm-up
            samples.append(args.steps * b / elapsed)
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "median": statistics.median(samples),
        "samples": samples,
        "params": params,
        "flops_per_sample": flops,
    }


def mm_gflops(m, k, n, device, flop_budget):
    """GFLOP/s of `[m, k] @ [k, n]`: median of 7 timings (after one warm-up) of
    enough products to do about `flop_budget` FLOPs each. TF32 stays off
    (PyTorch's default for matmul), so this is true fp32."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    flops = 2 * m * k * n
    reps = max(3, int(flop_budget / flops))
    times = []
    for _ in range(8):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / reps)
    return flops / statistics.median(times[1:]) / 1e9


def peak(args):
    """The fp32 matmul roof: the best square product over a few sizes."""
    device = torch.device(args.device)
    sizes = (512, 1024, 2048) if device.type == "cpu" else (2048, 4096, 8192)
    return {"gflops": max(mm_gflops(n, n, n, device, 2e9) for n in sizes)}


def matmul(args):
    """One product's GFLOP/s, `--matmul MxKxN`."""
    m, k, n = (int(v) for v in args.matmul.split("x"))
    return {"gflops": mm_gflops(m, k, n, torch.device(args.device), 1e10)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="gradscope model config, JSON (`gradscope models show NAME --json`)")
    p.add_argument("--images", help="training images, IDX (plain or .gz)")
    p.add_argument("--labels", help="training labels, IDX (plain or .gz)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--peak", action="store_true", help="measure the fp32 matmul peak instead")
    p.add_argument("--matmul", metavar="MxKxN", help="measure one matmul shape instead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        torch.set_num_interop_threads(1)
    if args.peak:
        out = peak(args)
    elif args.matmul:
        out = matmul(args)
    else:
        if not (args.model and args.images and args.labels):
            p.error("--model, --images and --labels are required (or --peak)")
        out = train(args)
    out.update(torch=torch.__version__, threads=torch.get_num_threads(), device=args.device)
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
