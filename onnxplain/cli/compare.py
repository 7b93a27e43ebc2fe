"""``onnxplain compare MODEL IMAGE... --methods a,b,c --out grid.png``."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxplain.cli.common import load_from_args, parse_targets, read_images, run_methods, softmax
from onnxplain.cli.explain import check_view, view_per_method
from onnxplain.cli.methods import resolve
from onnxplain.core.errors import InputValidationError


def run(args: argparse.Namespace) -> int:
    from onnxplain import viz

    check_view(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InputValidationError(
            f"--out {args.out!r}: the figure is a PNG; give a file name ending in .png"
        )
    methods = resolve(args.methods)
    loaded = load_from_args(args)
    x = read_images(loaded, args.images)
    probs = softmax(loaded.model.predict(x, batch_size=args.batch_size))
    preds = probs.argmax(axis=1)
    targets = parse_targets(args.target, len(x), loaded)
    explained = [int(t) for t in (preds if targets is None else targets)]
    strict = args.methods not in ("all", "all+slow")  # methods named one by one must all run
    results, skipped = run_methods(methods, loaded, x, explained, args, strict=strict)
    if not results:
        raise InputValidationError("no method could explain these images: "
                                   + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    attributions = {r.method.name: r.attributions for r in results}
    signs, shifts = view_per_method(args, results)
    rows = []
    for i, path in enumerate(args.images):
        line = f"{Path(path).name}\n{loaded.class_name(explained[i])}"
        if explained[i] != int(preds[i]):
            line += f" (pred. {loaded.class_name(int(preds[i]))})"
        rows.append(line)
    layout = loaded.preprocess.layout
    figure = viz.compare(x, attributions, layout=layout, preprocess=loaded.preprocess, sign=signs,
                         subtract_min=shifts,
                         outlier_perc=args.outlier_perc, smooth=args.smooth, cmap=args.cmap, alpha=args.alpha,
                         row_titles=rows, cell_size=args.cell_size, max_columns=args.columns,
                         engine=args.engine)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)
    if args.html:
        viz.html_report(
            x, attributions, title="onnxplain compare",
            settings={"model": loaded.path, "target": args.target, "seed": args.seed,
                      "methods": {r.method.name: {"backend": r.backend, **r.attribute} for r in results},
                      "skipped": skipped, "sign": signs, "outlier_perc": args.outlier_perc},
            captions=[r.replace("\n", ": ") for r in rows], layout=layout, preprocess=loaded.preprocess,
            sign=signs, outlier_perc=args.outlier_perc, smooth=args.smooth, cmap=args.cmap, alpha=args.alpha,
            subtract_min=shifts, path=args.html,
        )
    if not args.quiet:
        for r in results:
            print(f"{r.method.name:24s} {r.seconds:6.2f} s on {r.backend}")
        print(f"wrote {out} ({figure.width}x{figure.height})" + (f" and {args.html}" if args.html else ""))
    return 0
