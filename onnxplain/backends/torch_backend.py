"""PyTorch backend: the canonical graph converted with onnx2torch, for gradients and rules.

Each ONNX node becomes one torch module, so a tensor of the graph is a module output
(captured with a forward hook), a tensor's value can be replaced during the forward pass
(``overrides``, a forward hook that returns the replacement) and a node's backward rule
can be replaced by hooking its module (named rules live in :mod:`torch_rules`). Hooks are
always registered in context managers that remove them. Passes that hook none of the nodes
it changes run a plain module instead, with activations and linear layers written out as
several nodes fused and shape arithmetic cached (:mod:`torch_fusion`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from onnx import defs

from onnxplain._compat import triton_before_tensorflow
from onnxplain.backends import torch_fusion
from onnxplain.backends.base import (
    INPUT,
    Backend,
    BackwardRule,
    Capability,
    GradientPost,
    GradientResult,
    batches,
)
from onnxplain.backends.registry import cuda_index, is_out_of_memory, resolve_max_batch_size
from onnxplain.core.errors import (
    InputValidationError,
    OnnxplainError,
    UnsupportedOperatorError,
)

if TYPE_CHECKING:
    from onnxplain.core.model import Model
    from onnxplain.core.noise import NoisyCopies
    from onnxplain.core.targets import Objective

logger = logging.getLogger(__name__)


#: Inputs larger than this (elements per example) skip the conversion check.
VERIFY_MAX_ELEMENTS = 16 * 1024**2
#: How far a quantized model's torch conversion may be from its simulation on ONNX Runtime,
#: relative to the largest output: the two round the same values, but a value that lands
#: on the other side of a rounding boundary moves by one quantization step, and the layers
#: after it carry that on (see :mod:`onnxplain.core.quantized`).
QUANTIZED_TOLERANCE = 0.05


class ConversionMismatchError(OnnxplainError):
    """The converted torch module computes something else than ONNX Runtime."""


@dataclass
class RuleContext:
    """What a backward rule sees for one node: see :meth:`TorchBackend.node_rules`.

    ``inputs``/``output``: the node's forward values (output with its autograd graph);
    ``grad_output``: the gradient arriving at each output; ``grad_input``: the ordinary
    gradient of each input (None for inputs that need none, or when the rule says it reads
    none: ``rule.needs_grad_input = False``); ``kwargs``: the keyword arguments the module
    was called with (to call ``module.forward`` again).
    """

    node: str
    op_type: str
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    output: Any
    grad_output: tuple[torch.Tensor | None, ...]
    grad_input: tuple[torch.Tensor | None, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


#: A rule maps a node's context to new gradients for its inputs (None keeps them).
Rule = Callable[[RuleContext], "tuple[torch.Tensor | None, ...] | None"]


def _unsupported_operators(proto) -> list[str]:
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain: o.version for o in proto.opset_import}
    missing = set()
    for node in proto.graph.node:
        domain = node.domain or ""
        version = opsets.get(domain, opsets.get("ai.onnx", 0))
        try:
            get_converter(node.op_type, version, domain)
        except NotImplementedError:
            try:
                since = defs.get_schema(node.op_type, version, domain).since_version
            except Exception:
                since = version
            prefix = f"{domain}::" if domain not in ("", "ai.onnx") else ""
            missing.add(f"{prefix}{node.op_type}-{since}")
    return sorted(missing)


def _simulation_outputs(model: Model, x: np.ndarray) -> np.ndarray:
    """The output of a quantized model's float simulation (the graph the torch module is
    converted from) on ONNX Runtime's reference kernels: its graph optimisations fuse
    quantized operators, which round differently."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.serialized(simulated=True), options,
                                   providers=["CPUExecutionProvider"])
    return session.run([model.output_name], {model.input_name: x})[0]


class TorchBackend(Backend):
    """Gradients and backward-rule hooks on a torch module converted from the graph.

    ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...;
    asking for CUDA on a machine without it is an :class:`~onnxplain.InputValidationError`.
    ``max_batch_size``: rows per module call (``"auto"``: 32 on CPU, 256 on CUDA); a
    forward pass that runs out of memory is retried at half the batch, and the smaller size
    is kept.
    ``verify``: compare the converted module with ONNX Runtime (a converter bug would
    otherwise give silently wrong explanations): once, on a random input, when the input
    shape is static, else on the first rows of each new image shape it is given.
    """

    name = "torch"
    capabilities = frozenset(
        {Capability.FORWARD, Capability.ACTIVATIONS, Capability.GRADIENTS, Capability.RULES}
    )

    def __init__(
        self,
        model: Model,
        device: str = "auto",
        max_batch_size: int | str = "auto",
        verify: bool = True,
    ) -> None:
        self._device = _torch_device(device)
        super().__init__(model, resolve_max_batch_size(max_batch_size, self._device.type))
        triton_before_tensorflow()  # onnx2torch imports torchvision, which loads triton
        from onnx2torch import convert
        from onnx2torch.onnx_graph import OnnxGraph

        from onnxplain.backends import torch_converters

        torch_converters.install()
        proto = model.proto()
        missing = _unsupported_operators(proto)
        if missing:
            raise UnsupportedOperatorError(
                f"the torch backend cannot convert operators {missing} of this model, so "
                "gradient and rule methods are unavailable; forward-only methods (Occlusion, "
                "RISE, LIME, SHAP, Score-CAM) still run on backend='onnxruntime'",
                missing,
            )
        try:
            with torch.random.fork_rng(devices=[]):  # onnx2torch initialises modules randomly
                module = convert(proto)
        except NotImplementedError as exc:
            raise UnsupportedOperatorError(
                f"the torch backend cannot convert this model: {exc}; forward-only methods "
                "still run on backend='onnxruntime'",
                [str(exc).split(":")[0]],
            ) from None
        except Exception as exc:
            raise UnsupportedOperatorError(
                f"onnx2torch failed on this model ({type(exc).__name__}: {exc}); forward-only "
                "methods still run on backend='onnxruntime'"
            ) from None
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module.to(self._device)
        # ONNX node name -> torch submodule; tensor name -> (node name, output index)
        graph = OnnxGraph(proto.graph)
        self._modules: dict[str, torch.nn.Module] = {}
        self._op_types: dict[str, str] = {}
        self._producers: dict[str, tuple[str, int]] = {}
        unique = dict(zip((node.name for node in proto.graph.node), graph.nodes))
        for node in proto.graph.node:
            self._modules[node.name] = module.get_submodule(unique[node.name])
            self._op_types[node.name] = node.op_type
            for i, out in enumerate(node.output):
                self._producers[out] = (node.name, i)
        # the module for passes that hook none of the nodes it changes (see torch_fusion):
        # activations and linear layers written out as several nodes in one call each,
        # shape arithmetic computed once per input shape
        self._fused: torch.nn.Module | None = None
        self._fused_nodes: list[torch.nn.Module] = []
        try:
            shapes = torch_fusion.shape_arithmetic(proto.graph)
            changed = {n for v in shapes for n in v.nodes}
            fusions = torch_fusion.find(proto.graph, taken=changed)
            changed.update(n for f in fusions for n in f.nodes)
            self._fused = torch_fusion.build(self.module, unique, fusions, shapes)
            self._fused_nodes = [self._modules[n] for n in changed]
        except Exception as exc:  # an optimisation: never a reason to refuse the model
            logger.warning("the torch backend runs every node as its own module (%s: %s)",
                           type(exc).__name__, exc)
        self._verified: set[tuple[int, ...]] = set()
        self._unverified = False  # True: dynamic image dims, checked per shape as they come
        if verify:
            self._verify()

    # -- description -------------------------------------------------------------------
    @property
    def device(self) -> str:
        return str(self._device)

    def node_module(self, node: str) -> torch.nn.Module:
        """The torch module that computes ONNX node ``node``."""
        try:
            return self._modules[node]
        except KeyError:
            raise InputValidationError(f"no node named {node!r} in the model") from None

    def _verify(self) -> None:
        """Compare the conversion with ONNX Runtime on a random input of a static shape now;
        a model with dynamic image dims is compared on the first rows of each new image shape
        it is given (:meth:`_verify_shape`)."""
        shape = self.model.input_spec.shape
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            self._unverified = True
            return
        rng = np.random.default_rng(0)
        x = rng.standard_normal((min(2, self.model.fixed_batch or 2), *shape[1:]))
        self._verify_shape(x.astype(self.model.input_dtype), always=True)

    def _verify_shape(self, x: np.ndarray, always: bool = False) -> None:
        """The check of :meth:`_verify` on the first two rows of ``x``, once per image shape.
        A plain module that fails it is dropped for the node-by-node module."""
        key = tuple(x.shape[1:])
        if not (always or self._unverified) or key in self._verified:
            return
        self._verified.add(key)
        if np.prod(key, dtype=np.float64) > VERIFY_MAX_ELEMENTS:
            logger.info("input %s too large to verify the conversion on", key)
            return
        x = np.asarray(x[: min(2, len(x))], dtype=self.model.input_dtype)
        problem = self._mismatch(x)
        if problem is not None and self._fused is not None:
            logger.warning("the torch backend's fused module failed its check (%s); it runs every "
                           "node as its own module from now on", problem)
            self._fused = None
            problem = self._mismatch(x)
        if problem is not None:
            raise ConversionMismatchError(problem)

    def _mismatch(self, x: np.ndarray) -> str | None:
        """What is wrong with the converted module's outputs on ``x`` against ONNX Runtime's
        (None: nothing)."""
        key = tuple(x.shape[1:])
        try:
            ours = self.predict(x)
        except OnnxplainError:
            raise
        except Exception as exc:  # a converted module that cannot run what ONNX Runtime runs
            return (f"the torch conversion cannot run inputs of shape {key} ({type(exc).__name__}: "
                    f"{str(exc)[:300]}), so gradient methods are refused. Forward-only methods still "
                    "run on backend='onnxruntime'.")
        if self.model.quantized:
            ref = _simulation_outputs(self.model, x)
            tolerance = QUANTIZED_TOLERANCE
        else:
            ref, tolerance = self.model.backend("onnxruntime").predict(x), 1e-3
        both_nan = np.isnan(ours) & np.isnan(ref)
        err = float(np.where(both_nan, 0.0, np.abs(ours - ref)).max())
        scale = float(np.nanmax(np.abs(ref), initial=0.0)) + 1e-6
        logger.info("torch conversion on %s: max |Δ| %.3g of max |output| %.3g", key, err, scale)
        if not err <= tolerance * scale:
            return (f"the torch conversion differs from ONNX Runtime by {err:.3g} (max |output| "
                    f"{scale:.3g}) on inputs of shape {key}; gradient methods would be wrong, so they "
                    "are refused. Forward-only methods still run on backend='onnxruntime'.")
        return None

    # -- hooks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _capture(self, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Forward hooks that put the named tensors in the yielded dict as they are computed;
        the input and the model's outputs need none (:meth:`_scores` stores them)."""
        store: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name in names:
                if name == self.model.input_name or name in self.model.output_names:
                    continue
                if name not in self._producers:
                    self.model.check_tensors([name])
                    raise InputValidationError(f"tensor {name!r} is not computed by a node")
                node, index = self._producers[name]

                def hook(mod, args, output, name=name, index=index):
                    value = output[index] if isinstance(output, (tuple, list)) else output
                    store[name] = value

                handles.append(self._modules[node].register_forward_hook(hook))
            yield store
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def node_rules(self, rules: Mapping[str, Rule | str | BackwardRule]) -> Iterator[None]:
        """Within the block, the backward pass of each named node is ``rules[node](ctx)``.

        A rule is a :class:`~onnxplain.backends.base.BackwardRule` or a rule name (see
        :data:`~onnxplain.backends.base.RULE_NAMES`, implemented in
        :mod:`onnxplain.backends.torch_rules`), or a function that receives a
        :class:`RuleContext` (inputs, output, grad_output and the gradient autograd
        computed for the inputs) and returns new input gradients (``None`` keeps them).

        The node's output is replaced, in a forward hook, by an identical tensor whose
        backward is the rule; the rule therefore also applies when the objective or a
        ``wrt`` tensor is that very output (a neuron of a ReLU layer, as in Captum).
        """
        from onnxplain.backends import torch_rules

        handles = []
        try:
            for node, rule in rules.items():
                module = self.node_module(node)
                fn = torch_rules.resolve(rule, self, node)

                def fwd(mod, args, kwargs, output, node=node, fn=fn):
                    call = _RuledCall(node, self._op_types[node], mod, args, output, fn, kwargs)
                    return call.apply()

                handles.append(module.register_forward_hook(fwd, with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def _overridden(self, names: Sequence[str], current: dict[str, torch.Tensor]) -> Iterator[None]:
        """Forward hooks that return ``current[name]`` in place of the tensor ``name``."""
        handles = []
        try:
            for name in names:
                if name not in self._producers:
                    self.model.check_tensors([name])
                    raise InputValidationError(f"tensor {name!r} is not computed by a node")
                node, index = self._producers[name]

                def hook(mod, args, output, name=name, index=index):
                    value = current[name]
                    old = output[index] if isinstance(output, (tuple, list)) else output
                    if tuple(value.shape) != tuple(old.shape):
                        raise InputValidationError(
                            f"overrides[{name!r}] has shape {tuple(value.shape)} but the tensor "
                            f"has shape {tuple(old.shape)} for this batch"
                        )
                    if value.dtype != old.dtype:
                        value = value.to(old.dtype)
                    if isinstance(output, (tuple, list)):
                        return type(output)(value if i == index else o for i, o in enumerate(output))
                    return value

                handles.append(self._modules[node].register_forward_hook(hook))
            yield
        finally:
            for h in handles:
                h.remove()

    # -- operations --------------------------------------------------------------------
    def _outputs(self, result: Any) -> dict[str, torch.Tensor]:
        names = self.model.output_names
        if isinstance(result, (tuple, list)):
            return dict(zip(names, result))
        return {names[0]: result}

    def _run(self, xb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The converted module on ``xb``, its outputs by name. What onnx2torch converts but
        finds it cannot compute only when it runs (its NotImplementedError) is an
        UnsupportedOperatorError."""
        module = self.module
        if self._fused is not None and not torch_fusion.hooked(self._fused_nodes):
            module = self._fused
        try:
            return self._outputs(module(xb))
        except NotImplementedError as exc:
            raise UnsupportedOperatorError(
                f"the torch backend cannot run this model: {exc}; forward-only methods still run "
                "on backend='onnxruntime'"
            ) from None

    @property
    def _chunk(self) -> int:
        """Rows per module call: the batch the model was exported with, if it is fixed."""
        return self.model.fixed_batch or self.max_batch_size

    def _pad(self, n: int) -> np.ndarray:
        """Row indices that fill the last chunk of a fixed-batch model (repeating the last)."""
        fixed = self.model.fixed_batch
        extra = (-n) % fixed if fixed else 0
        return np.concatenate([np.arange(n), np.full(extra, n - 1)])

    def forward(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        self._verify_shape(x)
        names = list(outputs) if outputs is not None else [self.model.output_name]
        inner = [n for n in names if n not in self.model.output_names]
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        n_rows = len(x)
        x = np.asarray(x, dtype=self.model.input_dtype)
        rows = self._pad(n_rows)
        if len(rows) > n_rows:
            x = x[rows]
        fixed = self.model.fixed_batch
        size, start = self._chunk, 0
        with torch.inference_mode(), self._capture(inner) as store:
            while start < len(x):
                xb = _tensor(x[start : start + size]).to(self._device)
                store.clear()
                try:
                    result = self._run(xb)
                except Exception as exc:
                    if fixed or size == 1 or not is_out_of_memory(exc):
                        raise
                    del xb
                    if self._device.type == "cuda":
                        torch.cuda.empty_cache()
                    size = self.max_batch_size = max(1, size // 2)  # keep the size that fits
                    logger.warning("torch ran out of memory; retrying with batches of %d", size)
                    continue
                for n in names:
                    value = xb if n == self.model.input_name else store.get(n, result.get(n))
                    parts[n].append(value.detach().cpu().numpy())
                start += len(xb)
        return {n: _joined(p, n_rows) for n, p in parts.items()}

    def gradients(
        self,
        x: np.ndarray,
        objective: Objective,
        wrt: Sequence[str] = (INPUT,),
        rules: Mapping[str, Rule | str | BackwardRule] | None = None,
        overrides: Mapping[str, np.ndarray] | None = None,
    ) -> GradientResult:
        x = np.asarray(x, dtype=self.model.input_dtype)
        self._verify_shape(x)
        overrides = dict(overrides or {})
        for name, value in overrides.items():
            if np.shape(value)[:1] != (len(x),):
                raise InputValidationError(
                    f"overrides[{name!r}] must hold one value per example ({len(x)}), got shape "
                    f"{np.shape(value)}"
                )
        n_rows = len(x)
        rows = self._pad(n_rows)
        if len(rows) > n_rows:
            x, objective = x[rows], objective.take(rows)
            overrides = {k: np.asarray(v)[rows] for k, v in overrides.items()}
        input_override = overrides.pop(self.model.input_name, None)
        inner = [n for n in wrt if n != INPUT]
        tensors = list(dict.fromkeys([*inner, objective.tensor]))
        scores, grads, acts = [], {n: [] for n in wrt}, {n: [] for n in inner}
        current: dict[str, torch.Tensor] = {}
        # hook order matters: rules, then overrides, then capture (each sees the previous)
        rule_ctx = self.node_rules(rules) if rules else contextlib.nullcontext()
        with rule_ctx, self._overridden(list(overrides), current):
            for sl in batches(len(x), self._chunk):
                xs = x[sl] if input_override is None else np.asarray(input_override[sl], x.dtype)
                xb = _tensor(xs).to(self._device)
                xb.requires_grad_(True)
                for name, value in overrides.items():
                    v = torch.as_tensor(np.ascontiguousarray(value[sl]), device=self._device)
                    current[name] = v.to(self._float_dtype(v)).requires_grad_(True)
                with torch.enable_grad(), self._capture(tensors) as store:
                    score = self._scores(xb, store, objective.take(sl))
                    srcs = [xb if n == INPUT else store[n] for n in wrt]
                    got = torch.autograd.grad(score.sum(), srcs, allow_unused=True)
                scores.append(score.detach().cpu().numpy())
                for n, g, s in zip(wrt, got, srcs):
                    g = torch.zeros_like(s) if g is None else g
                    grads[n].append(g.detach().cpu().numpy())
                for n in inner:
                    acts[n].append(store[n].detach().cpu().numpy())
                current.clear()
        return GradientResult(
            scores=_joined(scores, n_rows),
            gradients={n: _joined(v, n_rows) for n, v in grads.items()},
            activations={n: _joined(v, n_rows) for n, v in acts.items()},
        )

    def _scores(self, xb: torch.Tensor, store: dict[str, torch.Tensor], objective: Objective) -> torch.Tensor:
        """The objective's scores of a pass of ``xb``; ``store`` (filled by :meth:`_capture`)
        gets the outputs and the input too, the tensors the caller differentiates."""
        result = self._run(xb)
        store.update({k: v for k, v in result.items() if k not in store})
        store[self.model.input_name] = xb
        try:
            target = store[objective.tensor]
        except KeyError:
            raise InputValidationError(f"target tensor {objective.tensor!r} was not computed") from None
        return objective.scores(target)

    def _input_gradient(self, xb: torch.Tensor, objective: Objective) -> torch.Tensor:
        """∂ sum(objective's scores) / ∂ ``xb`` (which requires grad) on the device; zeros
        where the objective does not depend on the input."""
        with torch.enable_grad(), self._capture([objective.tensor]) as store:
            score = self._scores(xb, store, objective)
            (grad,) = torch.autograd.grad(score.sum(), [xb], allow_unused=True)
        return torch.zeros_like(xb) if grad is None else grad

    def path_integral(
        self,
        start: np.ndarray,
        end: np.ndarray,
        alphas: np.ndarray,
        weights: np.ndarray,
        objective: Objective,
        chunk: int,
        progress: Callable[[list[slice]], Iterable[slice]] = iter,
    ) -> np.ndarray:
        """As :meth:`Backend.path_integral`, with the points built, the gradients taken and
        summed (in float64) on this backend's device: only the inputs go there and only the
        sum comes back, where the default moves every point and gradient through numpy."""
        if self.model.fixed_batch:  # the default pads each pass to the fixed batch
            return super().path_integral(start, end, alphas, weights, objective, chunk, progress)
        dtype = self.model.input_dtype
        start, end = np.asarray(start, dtype), np.asarray(end, dtype)
        self._verify_shape(start)
        n, dev = len(start), self._device
        origin = _tensor(start).to(dev)
        diff = _tensor(end).to(dev) - origin
        alpha = torch.as_tensor(np.asarray(alphas, dtype), device=dev)
        weight = torch.as_tensor(np.asarray(weights, np.float64), device=dev)
        total = torch.zeros(origin.shape, dtype=torch.float64, device=dev)
        shape = (-1,) + (1,) * (origin.ndim - 1)
        for sl in progress(list(batches(n * len(alphas), min(chunk, self.max_batch_size)))):
            r = np.arange(sl.start, sl.stop)
            rows = torch.from_numpy(r).to(dev)
            step, example = rows // n, rows % n
            xb = diff[example] * alpha[step].view(shape)
            xb = (xb + origin[example]).requires_grad_(True)
            grad = self._input_gradient(xb, objective.take(r % n))
            total.index_add_(0, example, grad.to(torch.float64) * weight[step].view(shape))
        return total.cpu().numpy()

    def smoothed_gradients(
        self,
        x: np.ndarray,
        objective: Objective,
        noise: NoisyCopies,
        chunk: int,
        rules: Mapping[str, Rule | str | BackwardRule] | None = None,
        post: GradientPost = "gradient",
        squares: bool = False,
        progress: Callable[[list[int]], Iterable[int]] = iter,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """As :meth:`Backend.smoothed_gradients`, with the noise drawn, the gradients taken and
        summed (in float64) on this backend's device: only the examples go there and only
        the sums come back."""
        if self.model.fixed_batch:  # the default pads each pass to the fixed batch
            return super().smoothed_gradients(x, objective, noise, chunk, rules, post, squares, progress)
        x = np.asarray(x, dtype=self.model.input_dtype)
        self._verify_shape(x)
        n, dev = len(x), self._device
        clean = _tensor(x).to(dev)
        total = torch.zeros(clean.shape, dtype=torch.float64, device=dev)
        total_sq = torch.zeros_like(total) if squares else None
        rule_ctx = self.node_rules(rules) if rules else contextlib.nullcontext()
        with rule_ctx:
            for first in progress(list(range(0, noise.copies, chunk))):
                count = min(chunk, noise.copies - first)
                noisy = noise.rows(clean, first, count)
                for sl in batches(len(noisy), self.max_batch_size):
                    example = np.arange(sl.start, sl.stop) % n
                    xb = noisy[sl].requires_grad_(True)
                    g = self._input_gradient(xb, objective.take(example))
                    a = g.abs() if post == "abs" else xb.detach() * g if post == "times_input" else g
                    a = a.to(torch.float64)
                    rows = torch.from_numpy(example).to(dev)
                    total.index_add_(0, rows, a)
                    if total_sq is not None:
                        total_sq.index_add_(0, rows, a * a)
        return total.cpu().numpy(), None if total_sq is None else total_sq.cpu().numpy()

    @staticmethod
    def _float_dtype(v: torch.Tensor) -> torch.dtype:
        return v.dtype if v.is_floating_point() else torch.float32


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A CPU tensor on ``a``'s memory, or on a C-ordered writable copy of it (torch takes
    neither a read-only nor a strided array without a warning or a copy of its own)."""
    return torch.from_numpy(np.require(a, requirements=["C", "W"]))


def _joined(parts: list[np.ndarray], n_rows: int) -> np.ndarray:
    """The first ``n_rows`` rows of the parts, one after the other (a single part as it is)."""
    whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return whole[:n_rows]


def _torch_device(device: str) -> torch.device:
    """``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` as a torch device, checked against what
    this machine has."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    index = cuda_index(device)
    if index is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputValidationError(
            f"device={device!r} but torch sees no CUDA GPU on this machine (a CPU-only torch "
            "build or no driver); use device='cpu' (or 'auto')"
        )
    if index >= torch.cuda.device_count():
        raise InputValidationError(
            f"device={device!r} but torch sees {torch.cuda.device_count()} CUDA device(s); "
            "use 'cuda:0' ... or device='cpu'"
        )
    return torch.device(device)


class _RuledCall:
    """One call of a node whose backward is a rule: see :meth:`TorchBackend.node_rules`."""

    def __init__(self, node: str, op_type: str, module: torch.nn.Module, args: tuple,
                 output: Any, rule: Rule, kwargs: Mapping[str, Any] | None = None) -> None:
        self.node, self.op_type, self.module, self.rule = node, op_type, module, rule
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.output = output
        self.outputs = tuple(output) if isinstance(output, (tuple, list)) else (output,)
        self.diff = [i for i, a in enumerate(self.args)
                     if isinstance(a, torch.Tensor) and a.requires_grad]

    def apply(self) -> Any:
        """The output again, now with the rule as its backward (or None: unchanged)."""
        if not torch.is_grad_enabled() or not self.diff:
            return None
        if not all(isinstance(o, torch.Tensor) for o in self.outputs):
            return None
        new = _RuleFunction.apply(self, *(self.args[i] for i in self.diff))
        if isinstance(self.output, (tuple, list)):
            return type(self.output)(new)
        return new[0]

    def backward(self, grad_outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
        live = [(o, g) for o, g in zip(self.outputs, grad_outputs) if o.requires_grad]
        inputs = [self.args[i] for i in self.diff]
        auto: tuple[torch.Tensor | None, ...] = (None,) * len(inputs)
        if live and getattr(self.rule, "needs_grad_input", True):
            auto = torch.autograd.grad([o for o, _ in live], inputs, [g for _, g in live],
                                       retain_graph=True, allow_unused=True)
        grad_input: list[torch.Tensor | None] = [None] * len(self.args)
        for i, g in zip(self.diff, auto):
            grad_input[i] = g
        ctx = RuleContext(self.node, self.op_type, self.module, self.args, self.output,
                          tuple(grad_outputs), tuple(grad_input), self.kwargs)
        new = self.rule(ctx)
        if new is not None:
            new = tuple(new)
            for i in self.diff:
                if i < len(new) and new[i] is not None:
                    grad_input[i] = new[i]
        return tuple(grad_input[i] for i in self.diff)


class _RuleFunction(torch.autograd.Function):
    """Identity on a node's outputs whose backward sends the rule's gradients to its inputs."""

    @staticmethod
    def forward(ctx, call: _RuledCall, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.call = call
        return tuple(o.detach() for o in call.outputs)  # aliases: no copy of the activations

    @staticmethod
    def backward(ctx, *grad_outputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        call: _RuledCall = ctx.call
        return (None, *call.backward(grad_outputs))
