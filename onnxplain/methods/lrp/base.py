"""What the LRP family shares: the BatchNorm-folded graph, the rule assignment, the
seeded backward pass and batching."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import INPUT, Backend, BackwardRule, Capability, batches
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.targets import Objective
from onnxplain.methods.base import Attribution
from onnxplain.methods.lrp._graph import fold_batch_norms
from onnxplain.methods.lrp.composites import Assignment, Composite, DeepTaylorComposite


@dataclass(frozen=True)
class SeededObjective(Objective):
    """Σ_k seed_k · y_k over the flattened tensor y: its gradient at y is the seed.

    ``index`` holds the seed, (N, K) float. Lets the LRP family start the backward pass
    from any relevance vector at the output (softmax gradient, all other classes).
    """

    def scores(self, values: Any) -> Any:
        n = values.shape[0]
        seed = self.index
        if not isinstance(values, np.ndarray):  # a framework tensor (torch), without importing it
            seed = values.new_tensor(seed)
        return (values.reshape(n, -1) * seed).sum(1)

    def take(self, rows: np.ndarray | slice) -> SeededObjective:
        return SeededObjective(self.tensor, self.kind, self.index[rows])

    def repeat(self, times: int) -> SeededObjective:
        return SeededObjective(self.tensor, self.kind, np.repeat(self.index, times, axis=0))


#: Assignments already made, per model: (composite entries, tensor) -> Assignment. A
#: method is often built per call, and walking the graph would be paid each time.
_ASSIGNED: weakref.WeakKeyDictionary[Model, dict[Any, Assignment]] = weakref.WeakKeyDictionary()


def _assign(composite: Composite, model: Model, tensor: str) -> Assignment:
    """``composite.assign(model, tensor)``, cached on the model for composites that only
    differ by their (hashable) entries."""
    kind = type(composite)
    key = None
    if kind.assign is Composite.assign and kind.rule_for is Composite.rule_for:
        try:
            key = (tuple(composite.entries), tensor)
            hash(key)
        except TypeError:  # e.g. ZBox bounds given as arrays
            key = None
    if key is None:
        return composite.assign(model, tensor)
    try:
        cache = _ASSIGNED.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced
        return composite.assign(model, tensor)
    found = cache.get(key)
    if found is None:
        found = cache[key] = composite.assign(model, tensor)
    return Assignment(dict(found.rules), found.first, found.last)


class LRPBase(Attribution):
    """Base of the LRP family: a composite of rules over the BatchNorm-folded graph.

    ``model``: a Model (its Conv → BatchNormalization pairs are folded in a copy used only
    here) or a Backend (used as it is, BatchNormalization then gets the ε rule).
    The rule assignment is checked when the method is built, before anything runs.
    """

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.GRADIENTS, Capability.RULES})

    def __init__(
        self,
        model: Model | Backend,
        composite: Composite,
        backend: str | Backend = "auto",
        use_logits: bool | None = None,
        **backend_options: Any,
    ) -> None:
        if not isinstance(composite, Composite):
            raise InputValidationError(
                f"{type(self).__name__}: composite must be an onnxplain Composite (EpsilonPlusFlat(), "
                f"EpsilonGammaBox(low, high), Composite([...]), ...), got {type(composite).__name__}"
            )
        self.composite = composite
        self._assignments: dict[str, Assignment] = {}
        if isinstance(model, Model):
            model = fold_batch_norms(model)
            # check the rules on the path to the output before any backend is built
            logits = getattr(model, "logits", lambda: None)() if use_logits is not False else None
            self._assignment_for(model, logits or model.output_name)
        super().__init__(model, backend, use_logits=use_logits, **backend_options)

    # -- rules -------------------------------------------------------------------------
    def _assignment_for(self, model: Model, tensor: str) -> Assignment:
        found = self._assignments.get(tensor)
        if found is None:
            found = self._assignments[tensor] = _assign(self.composite, model, tensor)
        return found

    def rules(self, tensor: str | None = None) -> dict[str, str]:
        """Which rule each node on the path to ``tensor`` (default: the explained output)
        gets: node name → rule."""
        tensor = tensor or self._output_tensor()
        return {n: repr(r) for n, r in self._assignment_for(self.model, tensor).rules.items()}

    def _backward_rules(self, tensor: str) -> dict[str, BackwardRule]:
        rules = {}
        for name, rule in self._assignment_for(self.model, tensor).rules.items():
            spec = rule.backward_rule()
            if spec is not None:
                rules[name] = spec
        return rules

    # -- the backward pass ----------------------------------------------------------------
    def _propagate(
        self, x: np.ndarray, objective: Objective, batch_size: int | None, show_progress: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Relevance at the input for the seed ∂objective/∂tensor, and the objective's
        values, in batches of ``batch_size`` examples."""
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise InputValidationError(
                f"{type(self).__name__}: batch_size must be an int >= 1, got {batch_size!r}"
            )
        rules = self._backward_rules(objective.tensor)
        size = batch_size or self.backend.max_batch_size
        parts = list(batches(len(x), size))
        relevance, scores = [], []
        for sl in self._progress(parts, len(parts), show_progress, type(self).__name__):
            result = self.backend.gradients(x[sl], objective.take(sl), wrt=[INPUT], rules=rules)
            relevance.append(result.gradients[INPUT])
            scores.append(np.asarray(result.scores, dtype=np.float64))
        return np.concatenate(relevance), np.concatenate(scores)

    def _class_logits(self, x: np.ndarray, target: Any) -> tuple[Objective, np.ndarray]:
        """The class objective and the logits (N, K) it indexes (class targets only)."""
        objective = self._objective(x, target)
        if objective.kind != "index" or objective.index.shape[1] != 1:
            raise InputValidationError(
                f"{type(self).__name__} explains output classes: target must be a class index, one "
                "per example, or None (the predicted class)"
            )
        logits = self.backend.forward(x, outputs=[objective.tensor])[objective.tensor]
        return objective, np.asarray(logits, dtype=np.float64).reshape(len(x), -1)


def per_example_sum(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1).sum(1, dtype=np.float64)


class ClassContrastBase(LRPBase):
    """LRP variants that contrast the target with the other classes (CLRP, SGLRP).

    ``composite``: the rules of the passes (default: deep Taylor, z^B at the input with the
    pixel bounds ``low``/``high``, w² when they are not given).
    """

    def __init__(
        self,
        model: Model | Backend,
        composite: Composite | None = None,
        low: Any = None,
        high: Any = None,
        backend: str | Backend = "auto",
        use_logits: bool | None = None,
        **backend_options: Any,
    ) -> None:
        super().__init__(
            model,
            composite if composite is not None else DeepTaylorComposite(low, high),
            backend,
            use_logits=use_logits,
            **backend_options,
        )
