"""Peak memory and time of RISE against the number of masks, and the cost of extremal
perturbation's numpy mask machinery per iteration.

Run by hand (not part of the test suite):

    .venv/bin/python benchmarks/perturbation_memory.py [--size 224] [--masks 1000,2000,4000,8000]

RISE's peak memory (numpy allocations, measured with tracemalloc) must stay flat as the
number of masks grows: masks are generated and evaluated ``batch_size`` at a time.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

import onnxplain as ox
from onnxplain.methods.perturbation import RISE
from onnxplain.methods.perturbation.extremal_perturbation import SmoothMask


def rise_peak(model: ox.Model, x: np.ndarray, n_masks: int, batch_size: int) -> tuple[float, float]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    RISE(model).attribute(x, target=0, n_masks=n_masks, batch_size=batch_size, show_progress=False)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--masks", default="1000,2000,4000,8000")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = ox.load(ox.examples.tiny_cnn())
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    RISE(model).attribute(x, target=0, n_masks=8, show_progress=False)  # build the session
    print(f"RISE, tiny_cnn, {args.size}x{args.size}, batch_size={args.batch_size}")
    print(f"{'masks':>8} {'peak MiB':>10} {'seconds':>9}")
    for n in (int(v) for v in args.masks.split(",")):
        peak, seconds = rise_peak(model, x, n, args.batch_size)
        print(f"{n:>8} {peak:>10.1f} {seconds:>9.2f}")
    gen = SmoothMask((args.size, args.size), step=7, sigma=21)
    params = np.random.default_rng(1).random((1, 1, *gen.shape_in)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(5):
        full = gen.generate(params)
        gen.backward(params, full)
    per_iter = (time.perf_counter() - start) / 5
    print(f"ExtremalPerturbation mask generator + adjoint, one mask at {args.size}x{args.size} "
          f"(step 7, sigma 21): {per_iter * 1000:.0f} ms per iteration")


if __name__ == "__main__":
    main()
