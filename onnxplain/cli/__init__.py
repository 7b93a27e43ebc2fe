"""The ``onnxplain`` command line.

    onnxplain demo --out DIR                          # the bundled model, every method, a figure
    onnxplain inspect MODEL                           # inputs, outputs, layers, backends, methods
    onnxplain explain MODEL IMAGE... --method gradcam --out DIR
    onnxplain compare MODEL IMAGE... --methods saliency,gradcam,occlusion --out grid.png
    onnxplain explain-dataset MODEL DIR --method gradcam --out OUT [--engine ray]

Errors are one line on stderr and a non-zero exit status (2 for a problem with what was
asked, 1 for an unexpected failure; ``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

PROG = "onnxplain"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"{PROG}: warning: {_one_line(str(message))}\n"


def _common(parser: argparse.ArgumentParser, run: bool = True) -> None:
    group = parser.add_argument_group("execution")
    group.add_argument("--backend", default="auto",
                       help="backend to run the methods on: auto (each method's fastest fit), "
                            "onnxruntime, torch, or a registered name (default: auto)")
    group.add_argument("--device", default="auto",
                       help="auto, cpu, cuda or cuda:N (torch device; ONNX Runtime uses CPU or CUDA)")
    if run:
        group.add_argument("--batch-size", type=_positive, default=32,
                           help="images per method call and rows per backend call (default: 32)")
        group.add_argument("--seed", type=_non_negative, default=0,
                           help="seed for random methods (and generated images in demo) (default: 0)")
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")
    group.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")


def _view(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pictures")
    group.add_argument("--sign", choices=("auto", "absolute", "positive", "negative", "all"), default="auto",
                       help="which attributions to show: auto (absolute for most methods), |a|, a > 0, "
                            "a < 0, or all with a diverging colour map (default: auto)")
    group.add_argument("--outlier-perc", type=float, default=2.0,
                       help="percent of the attribution mass allowed to saturate the colours (default: 2)")
    group.add_argument("--smooth", type=float, default=0.0,
                       help="Gaussian blur of the heat map, sigma in pixels (default: 0)")
    group.add_argument("--cmap", default=None,
                       help="colour map: jet, viridis, inferno, magma, turbo, hot, gray, Reds, Blues, "
                            "Greens, bwr, RdBu_r, coolwarm, or any matplotlib name")
    group.add_argument("--alpha", type=float, default=0.5,
                       help="heat map opacity over the image (default: 0.5)")
    group.add_argument("--cell-size", type=_positive, default=128,
                       help="pixels per picture in figures (default: 128)")
    group.add_argument("--columns", type=_positive, default=8,
                       help="methods side by side; more go into further bands below (default: 8)")
    group.add_argument("--engine", choices=("auto", "pillow", "matplotlib"), default="auto",
                       help="figure drawing: matplotlib when installed, else Pillow (default: auto)")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ONNX model file")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--target", default="pred",
                        help="class to explain: pred (the predicted class), an index, a class name, "
                             "or a comma-separated list with one per image (default: pred)")
    parser.add_argument("--preprocess", metavar="JSON",
                        help="preprocessing spec (see onnxplain.preprocess.Preprocess); default: the "
                             "one stored next to the model, else a guess from its input shape")
    parser.add_argument("--layer", help="feature map for CAM methods (default: auto)")
    from onnxplain.cli.common import add_load_args

    add_load_args(parser)


def _int_at_least(minimum: int, words: str):
    """An argparse type: an integer of at least ``minimum`` (``words`` says so in errors)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {words}")
        return value

    return parse


_positive = _int_at_least(1, "at least 1")
_non_negative = _int_at_least(0, "0 or more")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Explain image classifiers exported to ONNX. Start with: onnxplain demo --out DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'onnxplain COMMAND --help' for a command's options.",
    )
    from onnxplain import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="explain the bundled example model with every method, draw the figure",
                       description="Run every available method on the bundled shapes model and generated "
                                   "images (no network, no files of your own), write the comparison figure "
                                   "and score how much of each method's attribution lies on the object.")
    p.add_argument("--out", default="onnxplain-demo", help="output folder (default: ./onnxplain-demo)")
    p.add_argument("--n", type=_positive, default=5,
                   help="number of images, one per class in turn (default: 5)")
    p.add_argument("--methods", default="all",
                   help="comma-separated method names; all (every method but the slow optimisations: "
                        "meaningful and extremal perturbation) or all+slow (default: all)")
    p.add_argument("--html", action="store_true", help="also write demo.html, a self-contained report")
    _common(p)
    _view(p)
    p.set_defaults(func="demo")

    p = sub.add_parser("inspect", help="describe a model: inputs, outputs, layers, backends, methods",
                       description="Describe an ONNX model: its inputs and outputs, the feature maps with "
                                   "their shapes, the classifier head, the attention gates, and which "
                                   "methods each backend can run on it.")
    p.add_argument("model", help="an ONNX model file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--preprocess", metavar="JSON",
                   help="preprocessing spec to report instead of the stored one")
    from onnxplain.cli.common import add_load_args

    add_load_args(p)
    _common(p, run=False)
    p.set_defaults(func="inspect")

    p = sub.add_parser("explain", help="explain images with one method: overlays, .npy and a JSON record",
                       description="Explain each image with one method. Writes IMAGE.METHOD.png (overlay), "
                                   "IMAGE.METHOD.npy (the raw attribution) and explain.json (the settings, "
                                   "predictions and files) to --out.")
    _model_args(p)
    p.add_argument("--method", required=True, help="method name (onnxplain inspect MODEL lists them)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--html", action="store_true", help="also write explain.html, a self-contained report")
    _common(p)
    _view(p)
    p.set_defaults(func="explain")

    p = sub.add_parser("compare", help="explain images with several methods side by side in one figure",
                       description="Explain the images with several methods and draw one figure: a row per "
                                   "image, a column per method.")
    _model_args(p)
    p.add_argument("--methods", default="all",
                   help="comma-separated method names; all (every method but the slow optimisations: "
                        "meaningful and extremal perturbation) or all+slow (default: all)")
    p.add_argument("--out", required=True, help="the figure's file name (.png)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report to FILE")
    _common(p)
    _view(p)
    p.set_defaults(func="compare")

    from onnxplain.cli.explain_dataset import add_parser as _explain_dataset

    _explain_dataset(sub, _common, _positive)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.formatwarning = _format_warning
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s")
    from onnxplain.core.errors import OnnxplainError

    try:
        from onnxplain.cli.common import check_device

        check_device(args.device)  # once, before any work
        if args.func == "demo":
            from onnxplain.cli.demo import run
        elif args.func == "inspect":
            from onnxplain.cli.inspect_model import run
        elif args.func == "explain":
            from onnxplain.cli.explain import run
        elif args.func == "explain-dataset":
            from onnxplain.cli.explain_dataset import run
        else:
            from onnxplain.cli.compare import run
        return run(args)
    except OnnxplainError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"{PROG}: error: {where}{_one_line(exc.strerror or str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {_one_line(str(exc))} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


__all__ = ["build_parser", "main"]
