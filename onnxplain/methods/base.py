"""What every method shares: backend choice, input checks, targets, batching, progress."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
from tqdm.auto import tqdm

from onnxplain.backends.base import Backend, Capability, GradientPost
from onnxplain.core import layout
from onnxplain.core.errors import InputValidationError, LayerNotFoundError
from onnxplain.core.model import MAX_DERIVED, Model
from onnxplain.core.outputs import TARGETS_OUTPUT, is_output_target, target_key
from onnxplain.core.targets import Channel, Neuron, Objective, TargetLike, resolve_target
from onnxplain.core.validation import broadcast_to_inputs, check_input

T = TypeVar("T")


#: True while an ``attribute`` call runs: calls nested in it (NoiseTunnel's wrapped
#: method, GuidedGradCAM's parts) already get channels-first arrays and resolved targets.
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("onnxplain_attribute", default=False)


def _convert_arguments(model: Model, args: dict[str, Any], inputs: Any) -> None:
    """The user's arguments of one ``attribute`` call, channels first (in place): NHWC
    ones, or an NHW model's, when ``inputs`` (the user's) are (N, H, W)."""
    if model.layout == "NHW":
        if "inputs" in args:
            args["inputs"] = model.to_internal(inputs)
        for name in ("baselines", "background"):
            value = layout.as_array(args.get(name))
            if isinstance(value, (list, tuple)):
                value = np.asarray(value)
            if isinstance(value, np.ndarray) and value.ndim in (2, 3):  # (H, W), (N, H, W)
                args[name] = value[..., None, :, :]
        if isinstance(args.get("noise"), np.ndarray) and args["noise"].ndim == 4:  # (samples, N, H, W)
            args["noise"] = args["noise"][:, :, None]
        for name in ("sliding_window_shapes", "strides"):  # (h, w); masks have no channel axis
            value = args.get(name)
            if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
                args[name] = (1, *value)
        return
    x = args.get("inputs")
    if "inputs" in args:
        args["inputs"] = x = model.to_internal(x)
    n = len(x) if isinstance(x, np.ndarray) and x.ndim else 1
    size = tuple(x.shape[2:]) if isinstance(x, np.ndarray) and x.ndim == 4 else (0, 0)
    for name in ("baselines", "background"):
        value = args.get(name)
        if value is not None and not isinstance(value, (int, float, np.number)):
            value = layout.to_channels_first(np.asarray(value) if isinstance(value, (list, tuple)) else value)
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.size > 1:
                value = value.reshape(-1, 1, 1)  # one value per channel, the last axis in NHWC
            args[name] = value
    if isinstance(args.get("noise"), np.ndarray) and args["noise"].ndim == 5:  # (samples, N, H, W, C)
        args["noise"] = np.moveaxis(args["noise"], -1, 2)
    if args.get("feature_mask") is not None:
        args["feature_mask"] = layout.mask_to_channels_first(args["feature_mask"], n, size)
    for name in ("sliding_window_shapes", "strides"):
        if args.get(name) is not None:
            args[name] = layout.window_to_channels_first(args[name])


def _convert_result(model: Model, result: Any, x: Any) -> Any:
    """Input-shaped arrays of a result back to the user's layout (tuples element-wise)."""
    if isinstance(result, tuple):
        return tuple(_convert_result(model, r, x) for r in result)
    if isinstance(result, np.ndarray) and isinstance(x, np.ndarray) and result.ndim == 4 == x.ndim \
            and result.shape[0] == x.shape[0] and result.shape[1] in (1, x.shape[1]) \
            and result.shape[2:] == x.shape[2:]:
        return model.to_user(result)
    return result


def user_layout(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a method's ``attribute`` with what every call shares at the user's boundary.

    - compiled output targets (:mod:`onnxplain.core.outputs`) run the method on the
      model with the target nodes appended (``Model.with_targets``);
    - for an NHWC model, the arguments in the user's layout become channels first and
      input-shaped results go back (see :mod:`onnxplain.core.layout`);
    - ``last_metadata`` records what was explained.

    Applied to every subclass's ``attribute`` automatically; a call nested in another
    method's call is passed through unchanged.
    """
    if getattr(fn, "_onnxplain_boundary", False):
        return fn
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def attribute(self: Attribution, *args: Any, **kwargs: Any) -> Any:
        if _INSIDE.get():
            return fn(self, *args, **kwargs)
        token = _INSIDE.set(True)
        try:
            bound = signature.bind(self, *args, **kwargs)
            arguments = bound.arguments
            extra = next((p.name for p in signature.parameters.values()
                          if p.kind is inspect.Parameter.VAR_KEYWORD), None)
            method, reduced = self, None
            if "target" in arguments and is_output_target(arguments["target"]):
                method, arguments["target"], reduced = self._with_output_targets(arguments["target"])
                arguments["self"] = method
            model = method.model
            user = arguments.get("inputs")
            # an NHW model's (N, 1, H, W) inputs, and the arguments with them, are already channels first
            convert = model is not None and model.layout != "NCHW" and not model.taken_as_it_is(user)
            if convert:
                _convert_arguments(model, arguments, user)
                if extra is not None and arguments.get(extra):
                    arguments[extra] = dict(arguments[extra])
                    _convert_arguments(model, arguments[extra], user)
            method._explained = None
            backend = getattr(method, "backend", None)
            with backend.computing() if backend is not None else contextlib.nullcontext():
                result = fn(*bound.args, **bound.kwargs)
            if convert and method._input_shaped:
                result = _convert_result(model, result, arguments.get("inputs"))
            self.last_metadata = method._metadata()
            if reduced is not None:  # what the compiled targets reduce, not their own output
                self.last_metadata["output"] = reduced[0] if len(set(reduced)) == 1 else reduced
                self.last_metadata["logits"] = self.model.logits() in reduced
            return result
        finally:
            _INSIDE.reset(token)

    attribute._onnxplain_boundary = True  # type: ignore[attr-defined]
    return attribute


def _record_init(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Attribution, *args: Any, **kwargs: Any) -> None:
        if "_init_args" not in self.__dict__:  # the outermost constructor's arguments
            self._init_args = (args, kwargs)
        init(self, *args, **kwargs)

    __init__._onnxplain_boundary = True  # type: ignore[attr-defined]
    return __init__


@dataclass(frozen=True)
class GradientView:
    """A method whose attribution is the input gradient under backward ``rules`` (node name
    -> rule, as :meth:`~onnxplain.backends.base.Backend.gradients` takes them), made
    ``post`` (see :meth:`~onnxplain.backends.base.Backend.smoothed_gradients`): what lets
    :class:`~onnxplain.methods.gradient.NoiseTunnel` hand the whole average to the backend."""

    rules: Mapping[str, Any] | None = None
    post: GradientPost = "gradient"


class Attribution:
    """Base of all methods.

    ``model``: a :class:`~onnxplain.Model`, or a :class:`~onnxplain.backends.Backend`
    already bound to one (e.g. a ``CallableBackend`` around a served model).
    ``backend``: ``"auto"`` (the first registered backend with what the method
    ``requires``: forward-only methods get ONNX Runtime, gradient methods torch), a
    registered name, or a Backend instance. ``backend_options`` go to the backend factory
    (``device=``, ``providers=``, ``max_batch_size=``...).

    ``use_logits``: for a model whose output is ``Softmax(z)`` (or ``LogSoftmax``), explain
    the pre-softmax logit ``z_c`` (see :meth:`~onnxplain.Model.logits`) instead of the
    probability. ``None`` (default): gradient and CAM methods use the logit, perturbation
    and surrogate methods the model output. After each ``attribute`` call,
    ``last_metadata`` says which tensor was explained (``"output"``), whether that is the
    pre-softmax logit (``"logits"``), the model's layout and the backend.

    Targets are documented once, in :mod:`onnxplain.core.targets` (class indices,
    neurons, channels) and :mod:`onnxplain.core.outputs` (segmentation regions,
    detection scores, any output tensor, reductions). For an NHWC model, arrays go in and
    come out in NHWC: see :mod:`onnxplain.core.layout`.
    """

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.FORWARD})
    #: Whether the method explains the pre-softmax logit when ``use_logits=None``
    #: (None: when it needs gradients).
    prefers_logits: ClassVar[bool | None] = None
    #: Whether arguments and results are shaped like the input (False for the layer
    #: methods, whose results are shaped like the layer).
    _input_shaped: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "attribute" in cls.__dict__:
            cls.attribute = user_layout(cls.__dict__["attribute"])
        if "__init__" in cls.__dict__ and not getattr(cls.__dict__["__init__"], "_onnxplain_boundary", False):
            cls.__init__ = _record_init(cls.__dict__["__init__"])

    def __init__(
        self, model: Model | Backend, backend: str | Backend = "auto", use_logits: bool | None = None,
        **backend_options: Any,
    ) -> None:
        name = type(self).__name__
        if "_init_args" not in self.__dict__:
            self._init_args = ((model, backend), {"use_logits": use_logits, **backend_options})
        if use_logits is not None and not isinstance(use_logits, bool):
            raise InputValidationError(f"{name}: use_logits must be True, False or None, got {use_logits!r}")
        self.use_logits = use_logits
        self.last_metadata: dict[str, Any] = {}
        self._explained: dict[str, Any] | None = None
        self._rebound: dict[int, Attribution] = {}
        if isinstance(model, Backend):
            model.require(self.requires, name)
            self.backend = model
            self.model = model.model
        elif isinstance(model, Model):
            self.model = model
            self.backend = model.backend_for(self.requires, backend, what=name, **backend_options)
        else:
            raise InputValidationError(
                f"{name} takes an onnxplain Model (from ox.load) or a Backend, "
                f"got {type(model).__name__}"
            )

    # -- what is explained -------------------------------------------------------------
    def _uses_logits(self) -> bool:
        choice = getattr(self, "use_logits", None)
        if choice is None:
            choice = self.prefers_logits
        if choice is None:
            choice = Capability.GRADIENTS in self.requires
        return bool(choice)

    def _output_tensor(self) -> str:
        """The tensor class targets index: the model output, or its pre-softmax logits."""
        output = self.backend.output_name
        if self.model is not None and output == self.model.output_name and self._uses_logits():
            logits = self.model.logits()
            if logits is not None:
                return logits
        return output

    def _note(self, objective: Objective) -> None:
        self._explained = {"output": objective.tensor, "kind": objective.kind}

    def _metadata(self) -> dict[str, Any]:
        model = self.model
        explained = getattr(self, "_explained", None) or {}
        tensor = explained.get("output")
        logits = model.logits() if model is not None else None
        return {
            "method": type(self).__name__,
            "output": tensor,
            "logits": tensor is not None and tensor == logits,
            "model_output": model.output_name if model is not None else self.backend.output_name,
            "layout": model.layout if model is not None else "NCHW",
            "backend": self.backend.name,
            "targets_compiled": bool(model is not None and TARGETS_OUTPUT in model.output_names),
        }

    # -- compiled output targets ---------------------------------------------------------
    def _rebind(self, model: Model) -> Attribution:
        """This method, constructed again with ``model`` in place of its model (cached)."""
        rebound = self.__dict__.setdefault("_rebound", {})
        found = rebound.get(id(model))
        if found is not None and found.model is model:
            return found
        args, kwargs = self.__dict__.get("_init_args", ((), {}))
        if not args or not isinstance(args[0], (Model, Attribution)):
            raise InputValidationError(
                f"{type(self).__name__} was built on a Backend; output targets such as "
                "SegmentationTarget compile nodes into the model, so build the method on a Model"
            )
        first = model if isinstance(args[0], Model) else args[0]._rebind(model)

        def fresh(value: Any) -> Any:  # a backend of the old model: the same kind for the new one
            return value.name if isinstance(value, Backend) else value

        clone = type(self)(first, *map(fresh, args[1:]), **{k: fresh(v) for k, v in kwargs.items()})
        rebound[id(model)] = clone
        while len(rebound) > MAX_DERIVED:
            rebound.pop(next(iter(rebound)))
        return clone

    def _with_output_targets(self, target: Any) -> tuple[Attribution, Any, list[str]]:
        """The method bound to the model with ``target``'s nodes, the target there, and the
        tensors the targets reduce."""
        if self.model is None:
            raise InputValidationError("output targets need a Model (they compile nodes into its graph)")
        targets = list(target) if isinstance(target, (list, tuple)) else [target]
        unique = list({target_key(t): t for t in targets}.values())
        derived, _ = self.model.with_targets(unique, default_output=self._output_tensor())
        column = {target_key(t): i for i, t in enumerate(unique)}
        index = [column[target_key(t)] for t in targets]
        reduced = [t.output or self._output_tensor() for t in targets]
        return self._rebind(derived), (index[0] if not isinstance(target, (list, tuple)) else index), reduced

    def _gradient_view(self, **kwargs: Any) -> GradientView | None:
        """The method as a :class:`GradientView` for these ``attribute`` keyword arguments,
        or None (the default: it is not one). Declared next to the ``attribute`` it
        describes: a subclass that overrides ``attribute`` alone is not taken for one."""
        return None

    # -- shared helpers ----------------------------------------------------------------
    def _inputs(self, inputs: Any) -> np.ndarray:
        return check_input(self.model, inputs)

    def _objective(self, x: np.ndarray, target: TargetLike) -> Objective:
        classes = self.model.num_classes if self.model is not None else None
        objective = resolve_target(
            target, len(x), self._output_tensor(), classes, predict=lambda: self.backend.predict(x)
        )
        if self.model is not None and isinstance(target, (Neuron, Channel)):
            # the unit lies within the layer's static dims, checked before any evaluation (a
            # tensor this model does not name, e.g. of a rewritten graph, is checked when read)
            try:
                dims = self.model.tensor_shape(objective.tensor)
            except LayerNotFoundError:
                dims = None
            objective.check_shape(dims)
        self._note(objective)
        return objective

    def _scores(self, batch: np.ndarray, objective: Objective) -> np.ndarray:
        """The objective for each row of ``batch`` from a forward pass."""
        out = self.backend.forward(batch, outputs=[objective.tensor])[objective.tensor]
        return np.asarray(objective.scores(out), dtype=np.float64)

    @staticmethod
    def _progress(items: Iterable[T], total: int, show: bool | None, desc: str) -> Iterator[T]:
        """A tqdm bar: ``show=None`` shows it on terminals only, False never."""
        disable = None if show is None else not show
        yield from tqdm(items, total=total, disable=disable, desc=desc, leave=False)


def take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]``; when every row is the same example, a read-only broadcast view of it
    instead of copies (the common case of one explained example)."""
    if len(rows) and (rows == rows[0]).all():
        return np.broadcast_to(a[rows[0]], (len(rows), *a.shape[1:]))
    return a[rows]


def expand_baseline(baselines: Any, x: np.ndarray, name: str = "baselines") -> np.ndarray:
    """Broadcast a scalar, a single example or a per-example array to ``x``'s shape."""
    if baselines is None:
        return np.zeros_like(x)
    return broadcast_to_inputs(baselines, x, name)


