"""Time onnxplain's methods against the reference libraries, same model, same input, same run.

Run by hand on a quiet machine (not part of the test suite):

    .venv/bin/python benchmarks/run.py [--size 224] [--models resnet18,mobilenet_v2] [--repeat 3]

Writes benchmarks/RESULTS.md: one row per (model, method) with both times and the ratio
(reference time / onnxplain time; > 1 means onnxplain is faster). Seeded random weights.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

import onnxplain as ox

warnings.filterwarnings("ignore")


def _best(fn, repeat: int) -> float:
    fn()  # warm-up: sessions, conversions, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _cases(net, model, x: np.ndarray, target: int, batch: int):
    from captum.attr import IntegratedGradients, Occlusion, Saliency
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    xt = torch.from_numpy(x)
    size = x.shape[-1]
    win, stride = (3, size // 8, size // 8), (3, size // 16, size // 16)
    layer = net.layer4[-1] if hasattr(net, "layer4") else net.features[-1]
    yield (
        "Occlusion",
        lambda: ox.Occlusion(model).attribute(x, target=target, sliding_window_shapes=win, strides=stride,
                                              perturbations_per_eval=batch, show_progress=False),
        lambda: Occlusion(net).attribute(xt, target=target, sliding_window_shapes=win, strides=stride,
                                         perturbations_per_eval=batch),
    )
    yield (
        "IntegratedGradients (50 steps)",
        lambda: ox.IntegratedGradients(model).attribute(x, target=target, n_steps=50,
                                                        internal_batch_size=batch, show_progress=False),
        lambda: IntegratedGradients(net).attribute(xt, target=target, n_steps=50, internal_batch_size=batch),
    )
    yield (
        "Saliency",
        lambda: ox.Saliency(model).attribute(x, target=target),
        lambda: Saliency(net).attribute(xt.clone().requires_grad_(), target=target),
    )
    cam = GradCAM(model=net, target_layers=[layer])
    yield (
        "GradCAM",
        lambda: ox.GradCAM(model).attribute(x, target=target),
        lambda: cam(input_tensor=xt, targets=[ClassifierOutputTarget(target)] * len(x)),
    )
    from captum.attr import KernelShap, Lime
    from pytorch_grad_cam import ScoreCAM

    score_cam = ScoreCAM(model=net, target_layers=[layer])
    score_cam.batch_size = batch
    yield (
        "ScoreCAM",
        lambda: ox.ScoreCAM(model, batch_size=batch).attribute(x, target=target, show_progress=False),
        lambda: score_cam(input_tensor=xt, targets=[ClassifierOutputTarget(target)] * len(x)),
    )
    cells = ox.segmentation.grid(x, cell_size=size // 8)  # 64 features
    mask = torch.from_numpy(cells[:, None].repeat(3, axis=1))
    for name, ours_cls, ref_cls in (("KernelShap (256 samples)", ox.KernelShap, KernelShap),
                                    ("Lime (256 samples)", ox.Lime, Lime)):
        yield (
            name,
            lambda c=ours_cls: c(model).attribute(x, target=target, feature_mask=cells, n_samples=256,
                                                  batch_size=batch, show_progress=False),
            lambda c=ref_cls: c(net).attribute(xt, target=target, feature_mask=mask, n_samples=256,
                                               perturbations_per_eval=batch),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--examples", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--methods", default="", help="comma-separated subset of the method names")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for arch in args.models.split(","):
        torch.manual_seed(0)
        net = getattr(torchvision.models, arch)(weights=None).eval()
        shape = (args.examples, 3, args.size, args.size)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        model = ox.adapters.torch.export(net, torch.from_numpy(np.concatenate([x, x])))
        for name, ours, ref in _cases(net, model, x, target=1, batch=args.batch):
            if args.methods and name.split(" (")[0] not in args.methods.split(","):
                continue
            t_ours, t_ref = _best(ours, args.repeat), _best(ref, args.repeat)
            rows.append((arch, name, t_ours, t_ref))
            print(f"{arch:14s} {name:32s} onnxplain {t_ours:8.3f}s  reference {t_ref:8.3f}s  "
                  f"ratio {t_ref / t_ours:5.2f}")
    refs = {"GradCAM": "pytorch-grad-cam", "ScoreCAM": "pytorch-grad-cam"}
    lines = [
        "# Benchmarks: onnxplain vs the reference libraries",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()}; torch {torch.__version__}, CPU only. Date: {datetime.date.today()}.",
        f"Input: {args.examples}×3×{args.size}×{args.size}, batch {args.batch}, best of {args.repeat}.",
        "Ratio = reference time / onnxplain time (> 1: onnxplain faster). Seeded random weights.",
        "",
        "| model | method | reference | onnxplain (s) | reference (s) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for arch, name, t_ours, t_ref in rows:
        ratio, ref = t_ref / t_ours, refs.get(name, "Captum")
        lines.append(f"| {arch} | {name} | {ref} | {t_ours:.3f} | {t_ref:.3f} | {ratio:.2f} |")
    lines.append("")
    lines.append(f"Geometric mean ratio: {statistics.geometric_mean([r / o for _, _, o, r in rows]):.2f}")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
