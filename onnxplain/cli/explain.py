"""``onnxplain explain MODEL IMAGE... --method M --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from onnxplain.cli.common import (
    load_from_args,
    parse_targets,
    read_images,
    run_method,
    safe_name,
    softmax,
    write_json,
)
from onnxplain.cli.methods import resolve
from onnxplain.core.errors import InputValidationError


def view_settings(args: argparse.Namespace, method) -> dict:
    """How one method's attributions are shown: ``--sign auto`` takes the registry's."""
    auto = args.sign == "auto"
    return {"sign": method.entry.sign if auto else args.sign,
            "subtract_min": method.entry.subtract_min and auto,
            "outlier_perc": args.outlier_perc, "smooth": args.smooth, "cmap": args.cmap, "alpha": args.alpha}


def view_per_method(args: argparse.Namespace, results) -> tuple[dict[str, str], dict[str, bool]]:
    """The sign and subtract_min of each result's method, by name."""
    views = {r.method.name: view_settings(args, r.method) for r in results}
    return ({k: v["sign"] for k, v in views.items()}, {k: v["subtract_min"] for k, v in views.items()})


def check_view(args: argparse.Namespace) -> None:
    """Fail early, before any computation, on picture options that cannot work."""
    from onnxplain.viz import colormaps

    if not 0 <= args.outlier_perc < 100:
        raise InputValidationError(f"--outlier-perc must lie in [0, 100), got {args.outlier_perc}")
    if args.smooth < 0:
        raise InputValidationError(f"--smooth must be >= 0, got {args.smooth}")
    if not 0 <= args.alpha <= 1:
        raise InputValidationError(f"--alpha must lie in [0, 1], got {args.alpha}")
    if args.cmap is not None:
        colormaps.lookup_table(args.cmap)


def stems(paths: list[str]) -> list[str]:
    """Unique, file-name-safe names for the images."""
    out, seen = [], set()
    for i, p in enumerate(paths):
        stem = safe_name(Path(p).stem)
        if stem in seen:
            stem = f"{i:03d}_{stem}"
        seen.add(stem)
        out.append(stem)
    return out


def run(args: argparse.Namespace) -> int:
    from onnxplain import __version__, viz

    check_view(args)
    method = resolve(args.method)
    if len(method) != 1:
        raise InputValidationError("explain takes one --method; use compare for several")
    method = method[0]
    loaded = load_from_args(args)
    x = read_images(loaded, args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    probs = softmax(loaded.model.predict(x, batch_size=args.batch_size))
    preds = probs.argmax(axis=1)
    targets = parse_targets(args.target, len(x), loaded)
    explained = [int(t) for t in (preds if targets is None else targets)]
    result = run_method(method, loaded, x, explained, backend=args.backend, device=args.device,
                        batch_size=args.batch_size, seed=args.seed, layer=args.layer,
                        show_progress=False if args.quiet else None)
    view = view_settings(args, method)
    layout = loaded.preprocess.layout
    maps = viz.attribution_map(result.attributions, layout, view["sign"], args.outlier_perc, args.smooth,
                               subtract_min=view["subtract_min"])
    pictures = viz.image_to_uint8(x, layout, loaded.preprocess)
    overlays = viz.overlay(pictures, maps, args.cmap, view["sign"], args.alpha)

    from PIL import Image

    records = []
    for i, (path, stem) in enumerate(zip(args.images, stems(args.images))):
        png = out / f"{stem}.{safe_name(method.name)}.png"
        npy = out / f"{stem}.{safe_name(method.name)}.npy"
        Image.fromarray(overlays[i]).save(png)
        np.save(npy, result.attributions[i])
        records.append({
            "image": str(path), "prediction": int(preds[i]),
            "prediction_name": loaded.class_name(int(preds[i])),
            "probability": round(float(probs[i, preds[i]]), 6), "target": explained[i],
            "target_name": loaded.class_name(explained[i]), "overlay": png.name, "attribution": npy.name,
            "attribution_shape": list(result.attributions[i].shape),
        })
        if not args.quiet:
            print(f"{path}: predicted {loaded.class_name(int(preds[i]))} ({probs[i, preds[i]]:.2f}), "
                  f"explained {loaded.class_name(explained[i])} -> {png}")
    record = {
        "onnxplain": __version__, "command": "explain", "model": loaded.path,
        "method": {"name": method.name, "class": method.cls.__name__, "init": result.init,
                   "attribute": result.attribute, "backend": result.backend,
                   "seconds": round(result.seconds, 3)},
        "target": args.target, "seed": args.seed, "batch_size": args.batch_size, "device": args.device,
        "preprocess": {"source": loaded.preprocess_source, **loaded.preprocess.model_dump(mode="json")},
        "view": view, "images": records,
    }
    write_json(out / "explain.json", record)
    if args.html:
        viz.html_report(
            x, {method.name: result.attributions}, title=f"onnxplain explain: {method.name}",
            settings={"model": loaded.path, "method": method.name, "backend": result.backend,
                      "attribute": result.attribute, **view},
            captions=[f"{Path(r['image']).name}: {r['target_name']}" for r in records],
            layout=layout, preprocess=loaded.preprocess, sign=view["sign"], outlier_perc=args.outlier_perc,
            smooth=args.smooth, cmap=args.cmap, alpha=args.alpha, subtract_min=view["subtract_min"],
            path=out / "explain.html",
        )
    if not args.quiet:
        print(f"wrote {len(records)} overlays, attributions and {out / 'explain.json'}")
    return 0
