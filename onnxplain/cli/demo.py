"""``onnxplain demo``: the bundled model, generated images, every method, one figure.

The images come from :mod:`onnxplain.data.shapes`, so each object's mask is known and
every method gets a localisation score: the share of its attribution energy inside the
object's bounding box (the energy-based pointing game of Score-CAM; ``demo.json`` also
has the share inside the mask itself). A method that spreads its attribution evenly
scores the box's area fraction, printed as the baseline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from onnxplain.cli.common import (
    box_masks,
    energy_in_mask,
    load_model,
    run_methods,
    softmax,
    write_json,
)
from onnxplain.cli.explain import check_view, view_per_method
from onnxplain.cli.methods import resolve

SCORE = "energy in box"


def pick_images(n: int, seed: int, classes: int):
    """``n`` generated images, one per class in turn (circle, square, ...)."""
    from onnxplain.examples import shapes_dataset

    pool = shapes_dataset(max(50, 12 * n), seed=seed)
    chosen, used = [], set()
    for want in [i % classes for i in range(n)]:
        for j in np.flatnonzero(pool.labels == want):
            if j not in used:
                used.add(j)
                chosen.append(int(j))
                break
    idx = np.array(chosen)
    return pool.images[idx], pool.labels[idx], pool.masks[idx]


def run(args: argparse.Namespace) -> int:
    from onnxplain import __version__, viz
    from onnxplain.examples import shapes_model_path

    check_view(args)
    methods = resolve(args.methods)
    loaded = load_model(shapes_model_path())
    card = loaded.card
    classes = loaded.classes or []
    x, labels, masks = pick_images(args.n, args.seed, len(classes) or 5)
    probs = softmax(loaded.model.predict(x, batch_size=args.batch_size))
    preds = probs.argmax(axis=1)
    targets = [int(t) for t in labels]
    results, skipped = run_methods(methods, loaded, x, targets, args, strict=False)
    boxes = box_masks(masks)
    signs, shifts = view_per_method(args, results)
    scores, in_mask = {}, {}
    for r in results:
        name = r.method.name
        scores[name] = energy_in_mask(r.attributions, boxes, sign=signs[name], subtract_min=shifts[name])
        in_mask[name] = energy_in_mask(r.attributions, masks, sign=signs[name], subtract_min=shifts[name])
    baseline = float(boxes.mean())

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(x)):
        name = loaded.class_name(int(labels[i]))
        if preds[i] == labels[i]:
            rows.append(f"{name}\np = {probs[i, preds[i]]:.2f}")
        else:
            rows.append(f"{name}\npred. {loaded.class_name(int(preds[i]))}")
    accuracy = card.get("accuracy", {}).get("test")
    title = "onnxplain demo: " + (f"shapes_cnn ({accuracy:.1%} test accuracy)" if accuracy else "shapes_cnn")
    title += (", every method explaining the true class\nnumbers: share of the attribution energy inside "
              f"the object's box (an even spread scores {baseline:.2f})")
    figure_path = out / "demo.png"
    if results:
        figure = viz.compare(
            x, {r.method.name: r.attributions for r in results}, sign=signs, outlier_perc=args.outlier_perc,
            smooth=args.smooth, cmap=args.cmap, alpha=args.alpha, subtract_min=shifts, row_titles=rows,
            scores=scores,
            score_name="in box", masks=boxes, title=title, cell_size=args.cell_size, max_columns=args.columns,
            engine=args.engine,
        )
        figure.save(figure_path)
    record = {
        "onnxplain": __version__, "command": "demo", "model": "shapes_cnn",
        "model_accuracy": card.get("accuracy"), "seed": args.seed, "score": SCORE,
        "score_definition": "attribution energy as shown (channels summed, then |a|, or max(a, 0) for "
                            "methods shown with sign 'positive', minus the minimum where subtract_min) "
                            "inside the object's bounding box / in the whole image (energy-based pointing "
                            "game, Wang et al. 2020)",
        "even_spread_baseline": round(baseline, 4),
        "even_spread_baseline_mask": round(float(masks.mean()), 4),
        "images": [{"label": loaded.class_name(int(labels[i])),
                    "prediction": loaded.class_name(int(preds[i])),
                    "probability": round(float(probs[i, preds[i]]), 4),
                    "box_fraction": round(float(boxes[i].mean()), 4),
                    "object_fraction": round(float(masks[i].mean()), 4)} for i in range(len(x))],
        "methods": {r.method.name: {"class": r.method.cls.__name__, "backend": r.backend,
                                    "init": r.init, "attribute": r.attribute, "sign": signs[r.method.name],
                                    "subtract_min": shifts[r.method.name],
                                    "seconds": round(r.seconds, 3),
                                    "energy_in_box": [round(float(v), 4) for v in scores[r.method.name]],
                                    "mean_energy_in_box": round(float(np.mean(scores[r.method.name])), 4),
                                    "energy_in_mask": [round(float(v), 4) for v in in_mask[r.method.name]],
                                    "mean_energy_in_mask": round(float(np.mean(in_mask[r.method.name])), 4)}
                    for r in results},
        "skipped": skipped,
        "figure": figure_path.name if results else None,
    }
    write_json(out / "demo.json", record)
    if args.html and results:
        viz.html_report(
            x, {r.method.name: r.attributions for r in results}, title="onnxplain demo",
            settings={"model": f"shapes_cnn ({accuracy:.1%} test accuracy)" if accuracy else "shapes_cnn",
                      "target": "the true class", "seed": args.seed, "sign": signs,
                      "outlier_perc": args.outlier_perc, "skipped": skipped},
            scores=scores, score_name=SCORE, captions=[r.replace("\n", ", ") for r in rows], masks=boxes,
            sign=signs, outlier_perc=args.outlier_perc, smooth=args.smooth, cmap=args.cmap, alpha=args.alpha,
            subtract_min=shifts, path=out / "demo.html",
        )
    if not results:
        from onnxplain.core.errors import InputValidationError

        raise InputValidationError("no method ran: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if not args.quiet:
        print(f"{'method':24s} {SCORE:>16s} {'time':>8s}")
        for r in sorted(results, key=lambda r: -float(np.mean(scores[r.method.name]))):
            print(f"{r.method.name:24s} {np.mean(scores[r.method.name]):16.2f} {r.seconds:7.2f}s")
        print(f"{'(even spread)':24s} {baseline:16.2f}")
        if skipped:
            print(f"skipped (see the warnings above): {', '.join(skipped)}")
    print(f"wrote {figure_path}" + (f" and {out / 'demo.html'}" if args.html else ""))
    return 0
