"""PyTorch backend: the canonical graph converted with onnx2torch, for gradients and rules.

Each ONNX node becomes one torch module, so a tensor of the graph is a module output
(captured with a forward hook) and a node's backward rule can be replaced by hooking its
module. Hooks are always registered in context managers that remove them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from onnx import defs

from onnxplain.backends.base import INPUT, Backend, Capability, GradientResult, batches
from onnxplain.core.errors import (
    InputValidationError,
    OnnxplainError,
    UnsupportedOperatorError,
)

if TYPE_CHECKING:
    from onnxplain.core.model import Model
    from onnxplain.core.targets import Objective

logger = logging.getLogger(__name__)


class ConversionMismatchError(OnnxplainError):
    """The converted torch module computes something else than ONNX Runtime."""


@dataclass
class RuleContext:
    """What a backward rule sees for one node: see :meth:`TorchBackend.node_rules`."""

    node: str
    op_type: str
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    output: Any
    grad_output: tuple[torch.Tensor | None, ...]
    grad_input: tuple[torch.Tensor | None, ...]


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
            missing.add(f"{node.op_type}-{since}")
    return sorted(missing)


class TorchBackend(Backend):
    """Gradients and backward-rule hooks on a torch module converted from the graph.

    ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    ``verify``: compare the converted module with ONNX Runtime once, on a random input,
    when the input shape is static (a converter bug would otherwise give silently wrong
    explanations).
    """

    name = "torch"
    capabilities = frozenset(
        {Capability.FORWARD, Capability.ACTIVATIONS, Capability.GRADIENTS, Capability.RULES}
    )

    def __init__(
        self,
        model: Model,
        device: str = "auto",
        max_batch_size: int = 32,
        verify: bool = True,
    ) -> None:
        super().__init__(model, max_batch_size)
        from onnx2torch import convert
        from onnx2torch.onnx_graph import OnnxGraph

        from onnxplain.backends import torch_converters

        torch_converters.install()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self._device = torch.device(device)
        except RuntimeError as exc:
            raise InputValidationError(f"device {device!r}: {exc}") from None
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
        for unique, node in zip(graph.nodes, proto.graph.node):
            self._modules[node.name] = module.get_submodule(unique)
            self._op_types[node.name] = node.op_type
            for i, out in enumerate(node.output):
                self._producers[out] = (node.name, i)
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
        shape = self.model.input_spec.shape
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return
        rng = np.random.default_rng(0)
        x = rng.standard_normal((min(2, self.model.fixed_batch or 2), *shape[1:])).astype(
            self.model.input_dtype
        )
        ours = self.predict(x)
        ref = self.model.backend("onnxruntime").predict(x)
        err = float(np.abs(ours - ref).max())
        scale = float(np.abs(ref).max()) + 1e-6
        if not err <= 1e-3 * scale:
            raise ConversionMismatchError(
                f"the torch conversion differs from ONNX Runtime by {err:.3g} (max |output| "
                f"{scale:.3g}); gradient methods would be wrong, so they are refused. "
                "Forward-only methods still run on backend='onnxruntime'."
            )

    # -- hooks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _capture(self, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        store: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name in names:
                if name == self.model.input_name:
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
    def node_rules(self, rules: Mapping[str, Rule]) -> Iterator[None]:
        """Within the block, the backward pass of each named node is ``rules[node](ctx)``.

        The rule receives a :class:`RuleContext` (inputs, output, grad_output and the
        gradient autograd computed for the inputs) and returns new input gradients.
        """
        handles = []
        saved: dict[str, tuple] = {}
        try:
            for node, rule in rules.items():
                module = self.node_module(node)

                def fwd(mod, args, output, node=node):
                    saved[node] = (args, output)

                def bwd(mod, grad_input, grad_output, node=node, rule=rule):
                    args, output = saved[node]
                    ctx = RuleContext(node, self._op_types[node], mod, tuple(args), output,
                                      tuple(grad_output), tuple(grad_input))
                    new = rule(ctx)
                    return None if new is None else tuple(new)

                handles.append(module.register_forward_hook(fwd))
                handles.append(module.register_full_backward_hook(bwd))
            yield
        finally:
            for h in handles:
                h.remove()
            saved.clear()

    # -- operations --------------------------------------------------------------------
    def _outputs(self, result: Any) -> dict[str, torch.Tensor]:
        names = self.model.output_names
        if isinstance(result, (tuple, list)):
            return dict(zip(names, result))
        return {names[0]: result}

    def forward(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else [self.model.output_name]
        inner = [n for n in names if n not in self.model.output_names]
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        x = np.asarray(x, dtype=self.model.input_dtype)
        with torch.inference_mode(), self._capture(inner) as store:
            for sl in batches(len(x), self.max_batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[sl])).to(self._device)
                result = self._outputs(self.module(xb))
                for n in names:
                    value = xb if n == self.model.input_name else store.get(n, result.get(n))
                    parts[n].append(value.detach().cpu().numpy())
        return {n: np.concatenate(p) for n, p in parts.items()}

    def gradients(
        self,
        x: np.ndarray,
        objective: Objective,
        wrt: Sequence[str] = (INPUT,),
        rules: Mapping[str, Rule] | None = None,
    ) -> GradientResult:
        x = np.asarray(x, dtype=self.model.input_dtype)
        inner = [n for n in wrt if n != INPUT]
        tensors = list(dict.fromkeys([*inner, objective.tensor]))
        scores, grads, acts = [], {n: [] for n in wrt}, {n: [] for n in inner}
        rule_ctx = self.node_rules(rules) if rules else contextlib.nullcontext()
        with rule_ctx:
            for sl in batches(len(x), self.max_batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[sl])).to(self._device)
                xb.requires_grad_(True)
                with torch.enable_grad(), self._capture(tensors) as store:
                    result = self._outputs(self.module(xb))
                    store.update({k: v for k, v in result.items() if k not in store})
                    store[self.model.input_name] = xb
                    try:
                        target = store[objective.tensor]
                    except KeyError:
                        raise InputValidationError(
                            f"target tensor {objective.tensor!r} was not computed"
                        ) from None
                    score = objective.take(sl).scores(target)
                    srcs = [xb if n == INPUT else store[n] for n in wrt]
                    got = torch.autograd.grad(score.sum(), srcs, allow_unused=True)
                scores.append(score.detach().cpu().numpy())
                for n, g, s in zip(wrt, got, srcs):
                    g = torch.zeros_like(s) if g is None else g
                    grads[n].append(g.detach().cpu().numpy())
                for n in inner:
                    acts[n].append(store[n].detach().cpu().numpy())
        return GradientResult(
            scores=np.concatenate(scores),
            gradients={n: np.concatenate(v) for n, v in grads.items()},
            activations={n: np.concatenate(v) for n, v in acts.items()},
        )
