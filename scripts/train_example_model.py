"""Train the bundled example model, export it to ONNX and record how it was made.

    .venv/bin/python scripts/train_example_model.py            # writes onnxplain/data/shapes_cnn.*

A ~26k-parameter CNN (Conv–BatchNorm–ReLU blocks, a squeeze-and-excitation gate, global
average pooling and one fully-connected layer, so CAM, LRP through BatchNorm and the
model's own attention all apply) learns the five classes of
:mod:`onnxplain.data.shapes` in a few minutes on two CPU cores. The data are generated
here with fixed seeds; the test seed differs from the training and validation seeds.
Needs torch (a development dependency; the package itself never imports it for this).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import onnxplain as ox
from onnxplain.data import shapes
from onnxplain.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3


class SqueezeExcitation(nn.Module):
    """Hu et al. 2018: a channel gate sigmoid(W2 · relu(W1 · GAP(x))) multiplied onto x."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


def conv_bn(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class ShapesCNN(nn.Module):
    """64×64 → 32×32 → 16×16 feature maps; the last block is dilated for a larger
    receptive field at 16×16, so class activation maps keep a useful resolution."""

    def __init__(self, classes: int = len(shapes.CLASSES),
                 widths: tuple[int, ...] = (16, 24, 32, 48)) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.block1 = conv_bn(3, w1)
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = conv_bn(w1, w2)
        self.pool2 = nn.MaxPool2d(2)
        self.block3 = conv_bn(w2, w3)
        self.block4 = conv_bn(w3, w4, dilation=2)
        self.se = SqueezeExcitation(w4)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.se(self.block4(self.block3(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: every class is invariant to them."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    k = int(torch.randint(4, (1,), generator=gen).item())
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def export(net: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """TorchScript export without constant folding, so BatchNormalization stays a node of
    its own (rules such as LRP treat it separately), with a dynamic batch axis. The
    export must match the module."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buffer, dynamo=False, do_constant_folding=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    proto = ox.load(buffer.getvalue()).proto()  # canonical: Identity nodes gone, shapes inferred
    with torch.no_grad():
        expected = net(example).numpy()
    got = ox.load(proto).predict(example.numpy())
    err = float(np.abs(got - expected).max())
    if err > 1e-4 * float(np.abs(expected).max()):
        raise SystemExit(f"the ONNX export differs from the module by {err:.3g}")
    return proto


def accuracy(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(torch.from_numpy(images[i:i + 256])) for i in range(0, len(images), 256)])
    return float((logits.argmax(1).numpy() == labels).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="torch seed (initialisation, shuffling)")
    parser.add_argument("--out", type=Path, default=ROOT / "onnxplain" / "data")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    train = shapes.generate(args.train_images, seed=TRAIN_SEED)
    val = shapes.generate(args.val_images, seed=VAL_SEED)
    print(f"generated {args.train_images}+{args.val_images} images in {time.perf_counter() - start:.1f} s")

    net = ShapesCNN()
    params = sum(p.numel() for p in net.parameters())
    print(f"ShapesCNN: {params} parameters")
    steps = args.epochs * ((args.train_images + args.batch_size - 1) // args.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    x_all, y_all = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    train_start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            logits = net(augment(x_all[idx], gen))
            loss = nn.functional.cross_entropy(logits, y_all[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(order):.4f}, "
              f"val accuracy {accuracy(net, val.images, val.labels):.4f} "
              f"({time.perf_counter() - train_start:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - train_start

    net.eval()
    proto = export(net, torch.from_numpy(val.images[:8]))
    proto.doc_string = "ShapesCNN trained on onnxplain.data.shapes; see shapes_cnn.json"
    proto.producer_name = "onnxplain scripts/train_example_model.py"
    onnx.helper.set_model_props(proto, {"classes": ",".join(shapes.CLASSES)})
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "shapes_cnn.onnx"
    onnx.save(proto, onnx_path)

    # Accuracy of the shipped file itself, on ONNX Runtime, on images no one trained on.
    shipped = ox.load(onnx_path)
    test = shapes.generate(args.test_images, seed=TEST_SEED)
    test_acc = float((shipped.predict(test.images, batch_size=256).argmax(1) == test.labels).mean())
    val_acc = float((shipped.predict(val.images, batch_size=256).argmax(1) == val.labels).mean())
    ops = sorted({n.op_type for n in proto.graph.node})
    card = {
        "name": "shapes_cnn",
        "description": "A small CNN (Conv-BatchNorm-ReLU blocks, squeeze-and-excitation, "
                       "GAP -> FC) classifying the procedurally generated shapes of "
                       "onnxplain.data.shapes.",
        "classes": list(shapes.CLASSES),
        "input": {"name": shipped.input_name, "shape": ["batch", 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE],
                  "range": [0.0, 1.0]},
        "preprocess": Preprocess(size=(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)).model_dump(mode="json"),
        "generator": {"module": "onnxplain.data.shapes", "image_size": shapes.IMAGE_SIZE,
                      "train_seed": TRAIN_SEED, "train_images": args.train_images,
                      "val_seed": VAL_SEED, "val_images": args.val_images,
                      "test_seed": TEST_SEED, "test_images": args.test_images},
        "accuracy": {"validation": round(val_acc, 4), "test": round(test_acc, 4)},
        "parameters": params,
        "operators": ops,
        "feature_map": shipped.find_layer("auto").name,
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "AdamW + one-cycle",
                     "lr": args.lr, "augmentation": "random flips and quarter turns",
                     "seconds": round(train_seconds, 1), "threads": args.threads, "torch_seed": args.seed,
                     "torch": torch.__version__, "python": platform.python_version()},
    }
    json_path = args.out / "shapes_cnn.json"
    json_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"test accuracy {test_acc:.4f} (seed {TEST_SEED}); wrote {onnx_path} "
          f"({onnx_path.stat().st_size / 1024:.0f} KiB) and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
