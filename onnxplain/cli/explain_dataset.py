"""``onnxplain explain-dataset MODEL DIR --method M --out OUT [--engine ray]``."""

from __future__ import annotations

import argparse
import itertools
from collections import Counter

from onnxplain.cli.common import add_load_args
from onnxplain.core.errors import InputValidationError


def add_parser(sub, common, positive) -> None:
    """Register the command (called by :func:`onnxplain.cli.build_parser`)."""
    p = sub.add_parser(
        "explain-dataset",
        help="explain every image of a folder with one method, into resumable shards",
        description="Explain every image under DIR (sorted, recursively) with one method. Writes "
        "shard-NNNNN.npz files (attributions and per-image ids, targets, predictions, scores), "
        "manifest.json (settings, checksums) and index.jsonl to --out. Rerunning the command "
        "skips the shards already finished.",
    )
    p.add_argument("model", help="an ONNX model file")
    p.add_argument("folder", metavar="DIR", help="folder of image files")
    p.add_argument("--method", required=True, help="method name (onnxplain inspect MODEL lists them)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--target", default="pred", help="pred (the predicted class) or a class index (default: pred)"
    )
    p.add_argument("--layer", help="feature map for CAM methods (default: auto)")
    add_load_args(p)
    p.add_argument(
        "--preprocess",
        metavar="JSON",
        help="preprocessing spec (default: the one stored next to the model, else a guess)",
    )
    p.add_argument("--shard-size", type=positive, default=256, help="images per shard file (default: 256)")
    p.add_argument("--limit", type=positive, help="explain only the first N images (sorted by path)")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (stream on this machine) or ray (Ray Data actors; pip install onnxplain[ray])",
    )
    p.add_argument("--ray-address", help="address of a running Ray cluster (default: start a local one)")
    p.add_argument("--workers", type=positive, help="Ray actors (default: one per CPU, or per GPU)")
    p.add_argument("--overwrite", action="store_true", help="replace results made with other settings")
    p.add_argument("--no-resume", action="store_true", help="recompute shards that are already finished")
    common(p)
    p.set_defaults(func="explain-dataset")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from onnxplain.cli.common import load_from_args
    from onnxplain.dataset import explain_dataset
    from onnxplain.dataset.sources import as_source

    loaded = load_from_args(args)
    source = as_source(args.folder)
    images = source.paths[: args.limit] if args.limit else source.paths
    if args.target in (None, "pred"):
        target = None
    elif args.target.lstrip("-").isdigit():
        target = int(args.target)
    elif loaded.classes and args.target in loaded.classes:
        target = loaded.classes.index(args.target)
    else:
        raise InputValidationError(f"--target {args.target!r} is not pred, a class index or a class name")
    from onnxplain.dataset.sources import PathSource

    result = explain_dataset(
        loaded.model,
        args.method,
        PathSource(list(images), source.root),
        args.out,
        target=target,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        preprocess=loaded.preprocess,
        method_kwargs={"layer": args.layer} if args.layer else None,
        attribute_kwargs={"seed": args.seed} if _takes_seed(args.method) else None,
        backend=args.backend,
        device=args.device,
        engine=args.engine,
        ray_address=args.ray_address,
        num_workers=args.workers,
        show_progress=False if args.quiet else None,
        resume=not args.no_resume,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        stats = result.stats
        counts = Counter(r["prediction"] for r in result.records())
        top = ", ".join(f"{loaded.class_name(k)} {v}" for k, v in itertools.islice(counts.most_common(), 8))
        print(
            f"explained {len(result)} images with {result.settings['method']} on {stats.engine}: "
            f"{stats.computed_shards} shards computed, {stats.skipped_shards} already done, "
            f"{stats.seconds:.1f} s"
        )
        print(f"predictions: {top}")
        print(f"wrote {len(result.shard_paths)} shards and {Path(result.index_path)} to {result.out}")
    return 0


def _takes_seed(name: str) -> bool:
    import inspect

    from onnxplain.cli.methods import resolve

    method = resolve(name)[0]
    return "seed" in inspect.signature(method.cls.attribute).parameters
