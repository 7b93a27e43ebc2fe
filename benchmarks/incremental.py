"""Incremental occlusion (Nakandala et al., SIGMOD 2019) against full passes.

Run by hand (not part of the test suite; a few minutes on 2 cores):

    .venv/bin/python benchmarks/incremental.py [--size 224] [--repeat 3] [--archs resnet18,mobilenet_v2]

For each architecture (torchvision, seeded random weights, exported to ONNX), Occlusion
with a (3, 28, 28) window and stride (3, 14, 14) — 225 windows at 224×224 —,
``perturbations_per_eval=32`` on ONNX Runtime (CPU, 2 threads) is timed with
``incremental=True`` and ``False`` (median of ``--repeat`` alternating runs, after one
warm-up each). Prints the cut the planner chose, its estimated share of a full pass, the
speedup and the max |Δ| of the attributions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchvision

import onnxplain as ox
from onnxplain.core import incremental


def randomize_batchnorm(net: torch.nn.Module, seed: int = 0) -> None:
    """Seeded non-trivial BatchNorm statistics (folded into the convolutions on export)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archs", default="resnet18,mobilenet_v2")
    parser.add_argument("--window", type=int, default=28)
    parser.add_argument("--stride", type=int, default=14)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None).eval()
        randomize_batchnorm(net)  # outputs of a useful size (mobilenet_v2's are ~1e-10 otherwise)
        x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
        model = ox.adapters.torch.export(net, torch.from_numpy(np.concatenate([x, x])))
        occ = ox.Occlusion(model, backend="onnxruntime", device="cpu", num_threads=args.threads)
        kwargs = dict(
            sliding_window_shapes=(3, args.window, args.window),
            strides=(3, args.stride, args.stride),
            perturbations_per_eval=32,
            target=0,
            show_progress=False,
        )
        starts = range(
            0, (int(np.ceil((args.size - args.window) / args.stride)) + 1) * args.stride, args.stride
        )
        boxes = np.array(
            [
                (a, min(a + args.window, args.size), b, min(b + args.window, args.size))
                for a in starts
                for b in starts
            ]
        )
        plan = incremental.plan(model, (args.size, args.size), boxes)
        print(f"{arch}: {len(boxes)} windows, plan {incremental.describe(plan)}", flush=True)
        results: dict[bool, np.ndarray] = {}
        times: dict[bool, list[float]] = {True: [], False: []}
        for flag in (False, True):  # warm-up: sessions built
            results[flag] = occ.attribute(x, incremental=flag, **kwargs)
        for _ in range(args.repeat):
            for flag in (False, True):
                start = time.perf_counter()
                occ.attribute(x, incremental=flag, **kwargs)
                times[flag].append(time.perf_counter() - start)
        full, inc = statistics.median(times[False]), statistics.median(times[True])
        diff = float(np.abs(results[True] - results[False]).max())
        scale = float(np.abs(results[False]).max())
        logits = float(np.abs(model.predict(x)).max())
        print(
            f"{arch}: full {full:.2f} s, incremental {inc:.2f} s, speedup {full / inc:.2f}x, "
            f"max |diff| {diff:.3g} (max |attr| {scale:.3g}, max |logit| {logits:.3g})",
            flush=True,
        )


if __name__ == "__main__":
    main()
