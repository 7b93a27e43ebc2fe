"""What the commands share: the model and its card, preprocessing, targets, running a
method on batches, and the localisation score."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxplain.cli.methods import Method, as_maps_or_inputs
from onnxplain.core.errors import BackendCapabilityError, InputValidationError
from onnxplain.preprocess import Preprocess, find_spec, read_image

logger = logging.getLogger("onnxplain.cli")


@dataclass
class LoadedModel:
    """A model with what the command line knows about it."""

    model: Any
    path: str
    preprocess: Preprocess
    preprocess_source: str
    classes: list[str] | None = None
    card: dict = field(default_factory=dict)

    def class_name(self, index: int) -> str:
        if self.classes and 0 <= index < len(self.classes):
            return self.classes[index]
        return str(index)


def _card(path: Path) -> dict:
    candidate = path.with_suffix(".json")
    if not candidate.is_file():
        return {}
    try:
        data = json.loads(candidate.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def add_load_args(parser) -> None:
    """What :func:`onnxplain.load` takes besides the file, for a command that loads a model:
    ``--allow-domain`` (repeatable), ``--image-shape``, ``--layout``, ``--model-output`` and
    ``--fixed-input`` (repeatable)."""
    parser.add_argument("--allow-domain", action="append", default=[], metavar="DOMAIN",
                        help=ALLOW_DOMAIN_HELP)
    parser.add_argument("--image-shape", type=_image_shape, metavar="C,H,W",
                        help="the images a model with a flattened (N, F) input was fitted on, e.g. "
                             "3,32,32 (C,H,W), 32,32,3 with --layout NHWC, or 28,28; not needed when "
                             "the graph reshapes its input into images itself")
    parser.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NHWC", "NHW"],
                        help="the layout of the model's images (default: read from the graph)")
    parser.add_argument("--model-output", metavar="NAME",
                        help="the model output to explain (default: its first floating-point one)")
    parser.add_argument("--fixed-input", action="append", default=[], type=_fixed_input,
                        metavar="NAME=V[,V...]",
                        help="hold an input besides the image at a value, repeatable: one example's "
                             "numbers, e.g. meta=0.7,-0.7 (a batch axis is repeated for every image)")


def _fixed_input(text: str) -> tuple[str, list[float]]:
    """An argparse type: 'name=0.7,-0.7' → ('name', [0.7, -0.7])."""
    import argparse

    name, _, values = text.partition("=")
    try:
        numbers = [float(v) for v in values.split(",")]
    except ValueError:
        numbers = []
    if not name or not numbers:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER[,NUMBER...], got {text!r}")
    return name, numbers


def _image_shape(text: str) -> tuple[int, ...]:
    """An argparse type: '3,32,32' or '28x28' → a tuple of ints."""
    import argparse

    try:
        return tuple(int(part) for part in re.split(r"[,x]", text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 3,32,32, got {text!r}") from None


ALLOW_DOMAIN_HELP = ("an operator domain to allow besides the standard ones, repeatable: "
                     "com.microsoft for ONNX Runtime's contrib operators (its QOperator quantized "
                     "models use them); other domains also need a custom-op library")


def load_from_args(args) -> LoadedModel:
    """:func:`load_model` with a command's arguments (``model``, ``--preprocess`` and what
    :func:`add_load_args` added)."""
    return load_model(args.model, args.preprocess, args.allow_domain, args.image_shape, args.layout,
                      args.fixed_input, args.model_output)


def load_model(path: str, preprocess: str | None = None, allowed_domains: Sequence[str] | None = None,
               image_shape: Sequence[int] | None = None, layout: str = "auto",
               fixed_inputs: Sequence[tuple[str, list[float]]] = (), output: str | None = None
               ) -> LoadedModel:
    """Load ``path`` with :func:`onnxplain.load`, and find how to feed it: ``preprocess``
    (a JSON file), else a spec stored next to the model, else a guess from its input.
    ``allowed_domains``, ``image_shape``, ``layout``, ``fixed_inputs`` ((name, numbers)
    pairs), ``output``: see :func:`onnxplain.load`."""
    import onnxplain as ox

    fixed = {name: numbers for name, numbers in fixed_inputs}  # load reshapes them to the input
    model = ox.load(path, allowed_domains=tuple(allowed_domains or ()), image_shape=image_shape,
                    layout=layout, fixed_inputs=fixed, output=output)
    card = _card(Path(path))
    if preprocess is not None:
        spec, source = Preprocess.from_json(preprocess), preprocess
    else:
        spec = find_spec(path)
        source = "stored next to the model"
        if spec is None and model.preprocess is not None:
            spec, source = model.preprocess, "stored in the model's metadata"
        if spec is None:
            spec, source = Preprocess.for_model(model), "guessed from the input shape"
    classes = card.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        meta = model.ir.metadata_props.get("classes") if hasattr(model.ir, "metadata_props") else None
        classes = meta.split(",") if meta else None
    return LoadedModel(model, str(path), spec, source, classes, card)


def read_images(loaded: LoadedModel, paths: Sequence[str]) -> np.ndarray:
    if not paths:
        raise InputValidationError("give at least one image file")
    return loaded.preprocess.apply([read_image(p) for p in paths])


def parse_targets(text: str | None, n: int, loaded: LoadedModel,
                  labels: np.ndarray | None = None) -> list[int] | None:
    """``--target``: ``pred`` (the predicted class), ``label`` (the true class, where
    known), a class index or name, or a comma-separated list with one per image."""
    if text is None or text == "pred":
        return None
    if text == "label":
        if labels is None:
            raise InputValidationError("--target label needs known labels; use pred, a class index or name")
        return [int(v) for v in labels]
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, n):
        raise InputValidationError(f"--target has {len(parts)} values for {n} images; give 1 or {n}")
    out = []
    for part in parts:
        if part.lstrip("-").isdigit():
            out.append(int(part))
        elif loaded.classes and part in loaded.classes:
            out.append(loaded.classes.index(part))
        else:
            known = f"one of {', '.join(loaded.classes)}" if loaded.classes else "a class index"
            raise InputValidationError(
                f"--target {part!r} is not pred, a class index or a class name ({known})"
            )
    classes = loaded.model.num_classes
    for t in out:
        if classes is not None and not 0 <= t < classes:
            raise InputValidationError(f"--target {t} is out of range: the model has {classes} outputs")
    return out * n if len(out) == 1 else out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    if z.ndim != 2:
        z = z.reshape(len(z), -1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_device(device: str | None) -> None:
    """``--device``: auto, cpu, cuda or cuda:N, and CUDA only where torch sees a GPU."""
    if device in (None, "auto", "cpu"):
        return
    head, _, index = device.partition(":")
    if head != "cuda" or (index and not index.isdigit()):
        raise InputValidationError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    try:
        import torch
    except ImportError:  # ONNX Runtime alone says for itself whether it has CUDA
        return
    if not torch.cuda.is_available():
        raise InputValidationError(
            f"--device {device}: torch sees no CUDA device here; use --device cpu or auto"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise InputValidationError(
            f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (0..N-1)"
        )


def backend_options(backend: str, device: str | None, batch_size: int | None) -> dict[str, Any]:
    """Options for the built-in backends: ``--device`` becomes ``device=`` (torch) or
    ``providers=`` (ONNX Runtime); ``--batch-size`` bounds each backend call."""
    options: dict[str, Any] = {}
    if backend not in ("torch", "onnxruntime"):
        return options
    if batch_size is not None:
        options["max_batch_size"] = batch_size
    if device and device != "auto":
        if backend == "torch":
            options["device"] = device
        else:
            options["providers"] = "cuda" if device.startswith("cuda") else "cpu"
    return options


@dataclass
class Result:
    method: Method
    attributions: np.ndarray | None
    seconds: float
    backend: str | None
    init: dict
    attribute: dict
    error: str | None = None


def run_method(method: Method, loaded: LoadedModel, x: np.ndarray, targets: list[int] | None, *,
               backend: str = "auto", device: str | None = None, batch_size: int | None = None,
               seed: int | None = None, layer: str | None = None,
               show_progress: bool | None = None) -> Result:
    """Run ``method`` on ``x`` in batches of ``batch_size`` images; a progress bar over
    the batches when there are several (``show_progress=None``: on terminals only)."""
    from onnxplain.backends import registry

    check_device(device)
    layout = loaded.preprocess.layout
    shape = tuple(x.shape)
    name = backend
    if backend == "auto":
        name = registry.choose(method.requires)[0]
    else:
        caps = registry.available().get(backend)
        if caps is None:
            registry.entry(backend)  # raises with the list of backends
        if not method.requires <= caps:
            missing = ", ".join(sorted(c.value for c in method.requires - caps))
            raise BackendCapabilityError(f"{method.name} needs {missing}, which backend {backend!r} lacks")
    init = method.init_kwargs(shape, layout, layer=layer)
    kwargs = method.attribute_kwargs(shape, layout, seed=seed, show_progress=False)
    instance = method.cls(loaded.model, backend=name, **init, **backend_options(name, device, batch_size))
    step = batch_size or len(x)
    parts = []
    start = time.perf_counter()
    starts = range(0, len(x), step)
    if len(starts) > 1 and show_progress is not False:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=method.name, unit="batch", leave=False,
                      disable=None if show_progress is None else not show_progress)
    for i in starts:
        batch = x[i:i + step]
        target = None if targets is None else targets[i:i + step]
        attr = instance.attribute(batch, target=target, **kwargs)
        parts.append(as_maps_or_inputs(attr, batch, method.name))
    seconds = time.perf_counter() - start
    used = getattr(instance.backend, "name", name)
    return Result(method, np.concatenate(parts), seconds, used, init, kwargs)


def box_masks(masks: np.ndarray) -> np.ndarray:
    """Each (H, W) mask's bounding box, filled: (N, H, W) bool."""
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros_like(masks)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size:
            out[i, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    return out


def energy_in_mask(attributions: np.ndarray, masks: np.ndarray, layout: str = "NCHW",
                   sign: str = "absolute", subtract_min: bool = False) -> np.ndarray:
    """The share of the attribution energy inside each mask, per image, Σ_{mask} e / Σ e,
    where e is the map as shown (:func:`onnxplain.viz.attribution_map` with channels
    summed, the ``sign`` applied — magnitudes for ``"all"`` — and no clipping). A map
    spread evenly scores the mask's area fraction. With bounding boxes as the masks
    (:func:`box_masks`) this is the energy-based pointing game of Wang et al. (Score-CAM,
    CVPRW 2020)."""
    from onnxplain.viz.heatmap import attribution_map, resize_maps

    maps = np.abs(attribution_map(attributions, layout, sign, outlier_perc=0, subtract_min=subtract_min))
    masks = np.asarray(masks, dtype=bool)
    if maps.shape[1:] != masks.shape[1:]:
        maps = resize_maps(maps, masks.shape[1:])
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text``."""
    keep = "".join(c if c.isalnum() or c in "+-_." else "_" for c in text)
    return keep.strip("._") or "image"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):  # e.g. a feature_mask: described, not spelled out
        if value.size <= 16:
            return value.tolist()
        return f"<array shape={list(value.shape)} dtype={value.dtype}>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def run_methods(methods: list[Method], loaded: LoadedModel, x: np.ndarray, targets: list[int] | None,
                args: Any, strict: bool) -> tuple[list[Result], dict[str, str]]:
    """Run each method with a progress bar; with ``strict=False`` a method that fails is
    reported and skipped instead of ending the command."""
    from tqdm.auto import tqdm

    from onnxplain.core.errors import OnnxplainError

    results, skipped = [], {}
    bar = tqdm(methods, desc="methods", unit="method", disable=True if args.quiet else None, leave=False)
    for method in bar:
        bar.set_postfix_str(method.name)
        try:
            results.append(run_method(method, loaded, x, targets, backend=args.backend, device=args.device,
                                      batch_size=args.batch_size, seed=args.seed,
                                      layer=getattr(args, "layer", None),
                                      show_progress=False if args.quiet else None))
        except (OnnxplainError, NotImplementedError, TypeError, ValueError) as exc:
            if strict:
                raise
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            skipped[method.name] = reason
            logger.warning("skipped %s (%s)", method.name, reason)
    return results, skipped
