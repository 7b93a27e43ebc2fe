"""``explain_dataset``: one method over a whole data set, streamed, sharded, resumable."""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.dataset import metrics as _metrics
from onnxplain.dataset.sources import Loader, ShardItems, Source, as_source
from onnxplain.dataset.store import DatasetResult, Store
from onnxplain.preprocess import Preprocess, find_spec


# -- the method, described so that any worker can build it again --------------------------
@dataclass
class MethodSpec:
    """A method to build on a model: its class, constructor and ``attribute`` keyword
    arguments, and the backend. Picklable (Ray ships it to each worker); ``instance`` is
    used as it is by the local engine when the user passed one."""

    name: str
    cls: type
    init: dict = field(default_factory=dict)
    attribute: dict = field(default_factory=dict)
    backend: str = "auto"
    backend_options: dict = field(default_factory=dict)
    instance: Any = None

    def build(self, model: Any) -> Any:
        if self.instance is not None:
            return self.instance
        return self.cls(model, backend=self.backend, **self.init, **self.backend_options)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["instance"] = None
        return state


def _accepts(func: Callable, name: str) -> bool:
    params = inspect.signature(func).parameters
    return name in params


def resolve_method(
    method: Any,
    shape: tuple[int, ...],
    layout: str,
    method_kwargs: dict,
    attribute_kwargs: dict,
    backend: str,
    backend_options: dict,
) -> MethodSpec:
    """A CLI name (``"gradcam"``, see ``onnxplain inspect``), a method class or an instance."""
    from onnxplain.cli.methods import kebab, resolve
    from onnxplain.methods.base import Attribution

    if isinstance(method, str):
        found = resolve(method)
        if len(found) != 1:
            raise InputValidationError(f"method: give one method name, got {method!r}")
        m = found[0]
        init = {**m.init_kwargs(shape, layout), **method_kwargs}
        attribute = {**m.attribute_kwargs(shape, layout, show_progress=False), **attribute_kwargs}
        return MethodSpec(m.name, m.cls, init, attribute, backend, backend_options)
    if isinstance(method, type) and issubclass(method, Attribution):
        attribute = dict(attribute_kwargs)
        if "show_progress" not in attribute and _accepts(method.attribute, "show_progress"):
            attribute["show_progress"] = False
        return MethodSpec(
            kebab(method.__name__), method, dict(method_kwargs), attribute, backend, backend_options
        )
    if isinstance(method, Attribution):
        if method_kwargs:
            raise InputValidationError(
                "method_kwargs: a method instance is already built; pass its class instead"
            )
        attribute = dict(attribute_kwargs)
        if "show_progress" not in attribute and _accepts(method.attribute, "show_progress"):
            attribute["show_progress"] = False
        init = {"layer": method.layer.name} if getattr(method, "layer", None) is not None else {}
        return MethodSpec(
            kebab(type(method).__name__),
            type(method),
            init,
            attribute,
            getattr(method.backend, "name", backend),
            backend_options,
            instance=method,
        )
    raise InputValidationError(
        f"method must be a method name (e.g. 'gradcam'), an onnxplain method class or instance, "
        f"got {type(method).__name__}"
    )


# -- targets ----------------------------------------------------------------------------
@dataclass
class TargetRule:
    """``"predicted"`` (the argmax of the output), one class for all, or one per image
    (an array indexed by the image's position in the source)."""

    mode: str
    value: Any = None

    @classmethod
    def parse(cls, target: Any) -> TargetRule:
        if target is None or (isinstance(target, str) and target in ("predicted", "pred")):
            return cls("predicted")
        if isinstance(target, (bool, np.bool_)) or isinstance(target, str):
            raise InputValidationError(
                f"target must be None, 'predicted', an int or an array of ints, got {target!r}"
            )
        if isinstance(target, (int, np.integer)):
            return cls("class", int(target))
        arr = np.asarray(target)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputValidationError(
                f"target: an array of targets must be 1-D integers, got {arr.dtype} {arr.shape}"
            )
        return cls("array", arr)

    def describe(self) -> Any:
        if self.mode == "array":
            return {
                "per_image_sha256": hashlib.sha256(np.ascontiguousarray(self.value, np.int64)).hexdigest()
            }
        return self.value if self.mode == "class" else "predicted"

    def for_rows(self, index: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if self.mode == "predicted":
            return logits.reshape(len(logits), -1).argmax(axis=1).astype(np.int64)
        if self.mode == "class":
            return np.full(len(index), self.value, dtype=np.int64)
        if index.max() >= len(self.value):
            raise InputValidationError(
                f"target has {len(self.value)} entries, but the source has image {index.max()}"
            )
        return self.value[index].astype(np.int64)


def explain_batch(
    model: Any, instance: Any, spec: MethodSpec, rule: TargetRule, x: np.ndarray, index: np.ndarray
) -> dict[str, np.ndarray]:
    """One batch: predictions, targets, the model's score for each target, attributions."""
    from onnxplain.cli.methods import as_maps_or_inputs

    logits = np.asarray(model.predict(x))
    flat = logits.reshape(len(x), -1)
    targets = rule.for_rows(index, logits)
    attributions = instance.attribute(x, target=targets.tolist(), **spec.attribute)
    attributions = np.asarray(as_maps_or_inputs(attributions, x, spec.name), dtype=np.float32)
    return {
        "attributions": attributions,
        "targets": targets,
        "predictions": flat.argmax(axis=1).astype(np.int64),
        "scores": flat[np.arange(len(x)), targets].astype(np.float64),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.size <= 16:
            return value.tolist()
        return {
            "array_sha256": hashlib.sha256(np.ascontiguousarray(value)).hexdigest(),
            "shape": list(value.shape),
        }
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def model_sha256(model: Any) -> str:
    return hashlib.sha256(model.serialized()).hexdigest()


def _load_model(model: Any) -> Any:
    from onnxplain.core.loading import load
    from onnxplain.core.model import Model

    return model if isinstance(model, Model) else load(model)


def _layout(preprocess: Preprocess | None, shape: tuple[int, ...]) -> str:
    if preprocess is not None:
        return preprocess.layout
    if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def _source_preprocess(model: Any, preprocess: Any) -> Preprocess | None:
    if preprocess is not None:
        return Preprocess.parse(preprocess)
    source = getattr(model, "source", None)
    if isinstance(source, str) and os.path.isfile(source):
        found = find_spec(source)
        if found is not None:
            return found
    try:
        return Preprocess.for_model(model)
    except InputValidationError:
        return None


def _masks_for(masks: Any, index: np.ndarray) -> np.ndarray:
    if callable(masks):
        return np.stack([np.asarray(masks(int(i)), dtype=bool) for i in index])
    if index.max() >= len(masks):
        raise InputValidationError(f"masks has {len(masks)} entries, but the source has image {index.max()}")
    return np.asarray(
        masks[index[0] : index[-1] + 1]
        if np.all(np.diff(index) == 1)
        else np.stack([masks[int(i)] for i in index]),
        dtype=bool,
    )


@dataclass
class RunPlan:
    """What both engines need: the source, how to load items, the method and the store."""

    model: Any
    source: Source
    loader: Loader
    spec: MethodSpec
    rule: TargetRule
    store: Store
    skip: dict[int, int]
    batch_size: int
    layout: str
    metric_names: tuple[str, ...]
    masks: Any
    tolerance: float
    show_progress: bool | None

    def finish_shard(
        self,
        shard: ShardItems | None,
        shard_no: int,
        index: np.ndarray,
        ids: Sequence[str],
        parts: list[dict[str, np.ndarray]],
    ) -> None:
        """Concatenate a shard's batches, add metrics, write it."""
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        scores = _metrics.compute(
            self.metric_names,
            out["attributions"],
            _masks_for(self.masks, index) if self.metric_names else None,
            self.layout,
            self.tolerance,
        )
        meta = {
            "ids": np.asarray(list(ids), dtype=str),
            "index": index.astype(np.int64),
            "targets": out["targets"],
            "predictions": out["predictions"],
            "scores": out["scores"],
            **{f"metric_{k}": v for k, v in scores.items()},
        }
        self.store.write_shard(shard_no, out["attributions"], meta)

    def progress(self, desc: str):
        from tqdm.auto import tqdm

        disable = None if self.show_progress is None else not self.show_progress
        return tqdm(total=self.source.length, desc=desc, unit="img", disable=disable, leave=False)


@dataclass
class RunStats:
    """Shards and images computed in this run, and those skipped as already done."""

    computed_shards: int = 0
    skipped_shards: int = 0
    computed_images: int = 0
    skipped_images: int = 0
    seconds: float = 0.0
    engine: str = "local"


def _run_local(plan: RunPlan) -> tuple[int, RunStats]:
    stats = RunStats(engine="local")
    instance = None
    shards = 0
    bar = plan.progress("explain-dataset")
    try:
        for item in plan.source.shards(plan.store.shard_size, plan.skip):
            if isinstance(item, int):
                shards = item + 1
                stats.skipped_shards += 1
                stats.skipped_images += plan.skip[item]
                bar.update(plan.skip[item])
                continue
            shards = item.shard + 1
            if instance is None:
                instance = plan.spec.build(plan.model)
            parts = []
            index = np.arange(item.start, item.start + len(item))
            for b in range(0, len(item), plan.batch_size):
                x = plan.loader(item.items[b : b + plan.batch_size])
                parts.append(
                    explain_batch(
                        plan.model, instance, plan.spec, plan.rule, x, index[b : b + plan.batch_size]
                    )
                )
                bar.update(len(x))
            plan.finish_shard(item, item.shard, index, item.ids, parts)
            stats.computed_shards += 1
            stats.computed_images += len(item)
    finally:
        bar.close()
    return shards, stats


def explain_dataset(
    model: Any,
    method: Any,
    images: Any,
    out: str | os.PathLike,
    *,
    target: Any = None,
    batch_size: int = 32,
    shard_size: int = 256,
    method_kwargs: dict | None = None,
    attribute_kwargs: dict | None = None,
    preprocess: Preprocess | dict | None = None,
    masks: Any = None,
    metrics: Sequence[str] | None = None,
    tolerance: float = 0.0,
    backend: str = "auto",
    device: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    num_workers: int | None = None,
    use_gpu: bool | None = None,
    chunk_shards: int | None = None,
    show_progress: bool | None = None,
    resume: bool = True,
    overwrite: bool = False,
    parquet: bool = False,
) -> DatasetResult:
    """Explain every image of a data set with one method, streaming, into shards on disk.

    Parameters
    ----------
    model : Model, path, bytes or onnx.ModelProto
    method : str, method class or instance
        A command-line name (``"gradcam"``, ``"saliency"``, ...: ``onnxplain inspect MODEL``
        lists them, with the command line's default keyword arguments), an onnxplain
        method class (built with ``method_kwargs``) or a built instance (local engine only).
    images : folder, list of paths, numpy array or iterator
        A folder is read recursively, sorted by path. Paths, Pillow images and uint8 pixel
        arrays go through ``preprocess``; floating-point arrays are model inputs as they
        are. An iterator is consumed once, one shard at a time, never held whole.
    out : folder
        Receives ``shard-NNNNN.npz`` files, ``manifest.json`` and ``index.jsonl`` (see
        :mod:`onnxplain.dataset.store`).
    target : None, "predicted", int or array of ints
        The class explained: the predicted one (default), one for all, or one per image
        (indexed by the image's position in the source).
    batch_size, shard_size : int
        Images per method call, and per output file. Memory is bounded by ``shard_size``
        images (inputs and attributions), never by the size of the data set. Image ``i``
        always goes to shard ``i // shard_size``.
    method_kwargs, attribute_kwargs : dict
        For the method's constructor (e.g. ``layer``) and for ``attribute`` (e.g. ``n_steps``).
    preprocess : Preprocess or dict
        How files are fed to the model; default: the spec stored next to the model file,
        else a guess from its input shape (:meth:`onnxplain.Preprocess.for_model`).
    masks : array (N, H, W) of bools, or a function of the image's index
        Object masks; with them, ``metrics`` (default ``("pointing_game", "energy")``, see
        :mod:`onnxplain.dataset.metrics`) are computed per image and written to the index.
        ``tolerance``: the pointing game's tolerance in pixels.
    backend, device : str
        The method's backend (``"auto"``, ``"torch"``, ``"onnxruntime"``) and device.
    engine : "local" or "ray"
        ``"ray"`` runs the batches on Ray Data actors (``pip install onnxplain[ray]``): on
        the cluster at ``ray_address``, or on a local Ray started with ``num_workers``
        CPUs. ``num_workers`` actors each build the model and method once; GPUs are given
        to them when the cluster has some (``use_gpu``). The shards are the same files the
        local engine writes. ``chunk_shards`` shards are sent to Ray at a time.
    show_progress : bool or None
        A progress bar over the images (None: on terminals only).
    resume, overwrite : bool
        With ``resume``, shards already finished in ``out`` with the same settings (listed
        in the manifest with a matching SHA-256) are skipped and a partly written one is
        redone. Results made with other settings raise an error unless ``overwrite``.
    parquet : bool
        Also write ``index.parquet`` (needs pyarrow).

    Returns
    -------
    DatasetResult
        The output folder, read lazily: ``len(result)``, ``result.records()`` (the index),
        ``result.load(i)``, iteration over ``(record, attribution)``; ``result.stats`` says
        what this run computed and skipped.

    Examples
    --------
    >>> import tempfile, onnxplain as ox
    >>> from onnxplain.dataset import explain_dataset
    >>> images, labels, masks = ox.examples.shapes_dataset(6, seed=9)
    >>> result = explain_dataset(ox.examples.shapes_model(), "gradcam", images, tempfile.mkdtemp(),
    ...                          batch_size=4, shard_size=4, masks=masks, show_progress=False)
    >>> len(result), [p.name for p in result.shard_paths]
    (6, ['shard-00000.npz', 'shard-00001.npz'])
    >>> result.load(5).shape, sorted(result.records()[0])[:4]
    ((64, 64), ['energy', 'id', 'index', 'pointing_game'])
    """
    start_time = time.perf_counter()
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InputValidationError(f"{name} must be a positive integer, got {value!r}")
    if engine not in ("local", "ray"):
        raise InputValidationError(f"engine must be 'local' or 'ray', got {engine!r}")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise InputValidationError(f"num_workers must be a positive integer, got {num_workers!r}")
    if metrics is None:
        metric_names = _metrics.METRICS if masks is not None else ()
    else:
        metric_names = tuple(metrics)
        unknown = [m for m in metric_names if m not in _metrics.METRICS]
        if unknown:
            raise InputValidationError(
                f"metrics: unknown {unknown}; available: {', '.join(_metrics.METRICS)}"
            )
        if metric_names and masks is None:
            raise InputValidationError(f"metrics {list(metric_names)} need masks")
    model = _load_model(model)
    source = as_source(images)
    spec_pre = _source_preprocess(model, preprocess)
    loader = Loader(spec_pre)
    source, first = _peek(source)
    shape = tuple(loader([first]).shape)
    layout = _layout(spec_pre if loader.needs_preprocess(first) else None, shape)
    from onnxplain.cli.common import backend_options

    spec = resolve_method(
        method, shape, layout, dict(method_kwargs or {}), dict(attribute_kwargs or {}), backend, {}
    )
    if spec.instance is None:
        from onnxplain.backends import registry

        # "auto" becomes the backend it picks, so that device and batch size reach it
        name = registry.choose(spec.cls.requires)[0] if backend == "auto" else backend
        spec.backend, spec.backend_options = name, backend_options(name, device, batch_size)
    if engine == "ray" and spec.instance is not None:
        raise InputValidationError(
            "engine='ray' builds the method in each worker: pass the method's name "
            "or class (with method_kwargs) instead of an instance"
        )
    rule = TargetRule.parse(target)
    settings = {
        "method": spec.name,
        "class": spec.cls.__name__,
        "init": _jsonable(spec.init),
        "attribute": _jsonable({k: v for k, v in spec.attribute.items() if k != "show_progress"}),
        "backend": backend,
        "model_sha256": model_sha256(model),
        "target": _jsonable(rule.describe()),
        "metrics": list(metric_names),
        "tolerance": tolerance if "pointing_game" in metric_names else None,
        "preprocess": spec_pre.model_dump(mode="json") if spec_pre is not None else None,
        "input_shape": list(shape[1:]),
    }
    store = Store(out, settings, int(shard_size))
    skip = store.open(resume=resume, overwrite=overwrite)
    plan = RunPlan(
        model,
        source,
        loader,
        spec,
        rule,
        store,
        skip,
        int(batch_size),
        layout,
        metric_names,
        masks,
        float(tolerance),
        show_progress,
    )
    if engine == "ray":
        from onnxplain.dataset.ray_engine import run_ray

        shards, stats = run_ray(
            plan, address=ray_address, num_workers=num_workers, use_gpu=use_gpu, chunk_shards=chunk_shards
        )
    else:
        shards, stats = _run_local(plan)
    result = store.finish(shards, parquet)
    stats.seconds = time.perf_counter() - start_time
    result.stats = stats
    return result


def _peek(source: Source) -> tuple[Source, Any]:
    """The first raw item, without losing it from an iterator."""
    import itertools

    from onnxplain.dataset.sources import IteratorSource

    if isinstance(source, IteratorSource):
        try:
            first = next(source.iterator)
        except StopIteration:
            raise InputValidationError("images: the iterator yields no images") from None
        source.iterator = itertools.chain([first], source.iterator)
        return source, first
    return source, next(s for s in source.shards(1, {}) if not isinstance(s, int)).items[0]


__all__ = ["MethodSpec", "RunStats", "TargetRule", "explain_dataset"]
