"""ONNX Runtime's CUDA provider by cuDNN search mode: per-pass times, run to run, and CPU fallbacks.

Run by hand on a GPU machine (``benchmarks/gpu_check.sh`` runs it after the benchmark):

    .venv/bin/python benchmarks/ort_cuda_modes.py [--models resnet18,mobilenet_v2] [--passes 8]

For each model (seeded random weights, 224×224) it prints how many nodes of the optimized CUDA
graph copy tensors between host and device (``Memcpy*``: a node the provider left to the
CPU), then, for the backend's own CUDA provider options and for each ``cudnn_conv_algo_search``
mode, the milliseconds of ``--passes`` consecutive passes at batches 8 and 32 through the
backend (IO binding), and PyTorch eager's for comparison. The first pass of a shape shows the
search; the later ones the steady state. ``--device cpu`` runs the same passes on the CPU (a
dry run of the script where there is no GPU).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

import onnxplain as ox

MODES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def report(label: str, batch: int, fn: Callable[[], object], n: int, sync: Callable[[], None]) -> None:
    """Print the milliseconds of ``n`` consecutive calls of ``fn``."""
    times = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    print(f"  {label:10s} batch {batch:2d} ms/pass: " + " ".join(f"{t:.1f}" for t in times), flush=True)


def eager(net: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        net(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--passes", type=int, default=8)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit("this onnxruntime has no CUDA provider (install onnxruntime-gpu); or --device cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rng = np.random.default_rng(0)
    for arch in args.models.split(","):
        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None).eval()
        x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
        model = ox.adapters.torch.export(net, torch.from_numpy(x))
        if cuda:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.optimized_model_filepath = os.path.join(tempfile.mkdtemp(), "optimized.onnx")
            ort.InferenceSession(model.serialized(), opts, providers=["CUDAExecutionProvider"])
            ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
            copies = sum("Memcpy" in o for o in ops)
            print(f"{arch}: optimized graph {len(ops)} nodes, {copies} Memcpy", flush=True)
        configs = [("backend's", {"device": args.device})]
        if cuda:
            configs += [(mode, {"providers": [("CUDAExecutionProvider", {"cudnn_conv_algo_search": mode}),
                                              "CPUExecutionProvider"]}) for mode in MODES]
        for label, options in configs:
            be = model.backend("onnxruntime", **options)
            for batch in (8, 32):
                xb = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
                report(label, batch, functools.partial(be.forward, xb), args.passes, sync)
        net = net.to(args.device)
        for batch in (8, 32):
            xt = torch.randn(batch, 3, 224, 224, device=args.device)
            report("torch", batch, functools.partial(eager, net, xt), args.passes, sync)


if __name__ == "__main__":
    main()
