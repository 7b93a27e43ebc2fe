"""The abstract backend: what a method may ask of a model, and nothing more.

Methods never import torch or onnxruntime; they call a :class:`Backend`. A backend
declares its :class:`Capability` set; a method declares what it ``requires``; the model
picks a backend that has it (``backend="auto"``) or refuses with a clear error.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from onnxplain.core.errors import BackendCapabilityError

if TYPE_CHECKING:
    from onnxplain.core.model import Model
    from onnxplain.core.noise import NoisyCopies
    from onnxplain.core.targets import Objective

#: Name under which gradients with respect to the model input are returned.
INPUT = "__input__"

#: What :meth:`Backend.smoothed_gradients` makes of each gradient: itself, its absolute
#: value, or its product with the (noisy) input.
GradientPost = Literal["gradient", "abs", "times_input"]


class Capability(str, Enum):
    FORWARD = "forward"  # outputs for a batch of inputs
    ACTIVATIONS = "activations"  # intermediate tensors by name
    GRADIENTS = "gradients"  # d objective / d input and / d intermediate tensors (+ overrides)
    RULES = "rules"  # replace the backward rule of individual graph nodes


#: The backward rules every backend with :attr:`Capability.RULES` understands by name.
#: Methods ask for rules by name (a :class:`BackwardRule`), never by framework code, so
#: a method file needs neither torch nor any other framework. For a rectifier node
#: (Relu, LeakyRelu, Clip with min 0) with input z, output a = f(z), incoming gradient
#: g = ∂S/∂a and ordinary input gradient f'(z)·g:
#:
#: - ``"gradient"``: f'(z)·g, the ordinary derivative (a no-op rule);
#: - ``"guided"``: max(f'(z)·g, 0), guided backpropagation (Springenberg et al. 2015),
#:   as Captum's ``GuidedBackprop`` computes it;
#: - ``"deconvnet"``: max(g, 0), the deconvnet's backward ReLU (Zeiler & Fergus 2014),
#:   which ignores the forward switch, as Captum's ``Deconvolution``;
#: - ``"rectgrad"`` (param ``q``, a percentile in [0, 100]): f'(z)·g where a·g ≥ τ and 0
#:   elsewhere, τ the q-th percentile of a·g over each example's units (Kim et al. 2019).
RULE_NAMES = ("gradient", "guided", "deconvnet", "rectgrad")

#: The layer-wise relevance propagation rules (:mod:`onnxplain.methods.lrp.rules` gives
#: their formulas). Here the "gradient" of the backward pass is the relevance itself: the
#: rule of a node receives the relevance of its output and returns that of its inputs.
#: ``"lrp.epsilon"`` (``epsilon``), ``"lrp.zplus"``, ``"lrp.alphabeta"`` (``alpha``,
#: ``beta``), ``"lrp.gamma"`` (``gamma``), ``"lrp.zbox"`` (``low``, ``high``: scalars or
#: arrays), ``"lrp.flat"``, ``"lrp.wsquare"`` (each with ``stabilizer``) need a node with
#: constant weights; ``"lrp.norm"`` (proportional split), ``"lrp.uniform"`` (the
#: proportional split divided among the computed inputs), ``"lrp.pass"`` (unchanged) and
#: ``"lrp.gate"`` (``signal``: the input that gets all relevance) apply to any node.
LRP_RULE_NAMES = (
    "lrp.epsilon", "lrp.zplus", "lrp.alphabeta", "lrp.gamma", "lrp.zbox", "lrp.flat", "lrp.wsquare",
    "lrp.norm", "lrp.uniform", "lrp.pass", "lrp.gate",
)


@dataclass(frozen=True)
class BackwardRule:
    """A backward rule by name and parameters, e.g. ``BackwardRule("rectgrad", {"q": 98})``.

    This is how methods talk about rules: the backend maps the name to its own
    implementation (for torch, :mod:`onnxplain.backends.torch_rules`). A plain string
    ``"guided"`` means ``BackwardRule("guided")``. See :data:`RULE_NAMES`.
    """

    name: str
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass
class GradientResult:
    """What :meth:`Backend.gradients` returns, all numpy.

    ``scores``: the objective per example (N,); ``gradients``: name -> d sum(scores) / d
    tensor, same shape as the tensor; ``activations``: name -> the tensor's value.
    """

    scores: np.ndarray
    gradients: dict[str, np.ndarray]
    activations: dict[str, np.ndarray] = field(default_factory=dict)


class Backend(ABC):
    """Runs one model. Subclasses set ``name`` and ``capabilities``.

    ``forward`` is the only required operation. ``max_batch_size`` bounds the number of
    examples sent to the model at once: every backend splits larger inputs itself.
    """

    name: ClassVar[str] = "abstract"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: leave numpy's BLAS threads as they are during method calls (see :meth:`computing`)
    keep_blas_threads: bool = False

    def __init__(self, model: Model | None, max_batch_size: int = 32) -> None:
        if max_batch_size < 1:
            from onnxplain.core.errors import InputValidationError

            raise InputValidationError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.max_batch_size = int(max_batch_size)

    # -- description -------------------------------------------------------------------
    @property
    def input_name(self) -> str:
        assert self.model is not None
        return self.model.input_name

    @property
    def output_name(self) -> str:
        assert self.model is not None
        return self.model.output_name

    @property
    def device(self) -> str:
        """Where the computation really runs (e.g. ``"cpu"``, ``"cuda:0"``)."""
        return "cpu"

    def computing(self) -> contextlib.AbstractContextManager[Any]:
        """The context every method call enters around its work on this backend.

        On the CPU, numpy's BLAS is held to one thread meanwhile: its idle workers
        busy-wait on the cores the backend computes on (see
        :mod:`onnxplain.backends._threads`). Set ``keep_blas_threads = True`` on a
        backend to leave BLAS alone.
        """
        if self.device != "cpu" or self.keep_blas_threads:
            return contextlib.nullcontext()
        from onnxplain.backends._threads import single_threaded_blas

        return single_threaded_blas()

    def has(self, *needs: Capability) -> bool:
        return set(needs) <= self.capabilities

    def require(self, needs: frozenset[Capability], what: str) -> None:
        missing = set(needs) - self.capabilities
        if missing:
            names = ", ".join(sorted(c.value for c in missing))
            raise BackendCapabilityError(
                f"{what} needs {names}, which the {self.name!r} backend does not provide; "
                f"use backend='auto' or a backend with {names} (e.g. 'torch')"
            )

    # -- operations --------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run ``x`` (N, ...) and return the tensors named in ``outputs``.

        ``outputs=None`` means the model output. Batches larger than ``max_batch_size``
        are split here.
        """

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model output for ``x``."""
        return self.forward(x)[self.output_name]

    def gradients(
        self,
        x: np.ndarray,
        objective: Objective,
        wrt: Sequence[str] = (INPUT,),
        rules: Mapping[str, Any] | None = None,
        overrides: Mapping[str, np.ndarray] | None = None,
    ) -> GradientResult:
        """Gradients of ``sum(objective.scores)`` w.r.t. the input and/or named tensors.

        ``wrt``: :data:`INPUT` and/or tensor names. ``rules``: node name -> backward rule
        (a :class:`BackwardRule`, a rule name from :data:`RULE_NAMES`, or a backend-native
        rule), applied during this call only (needs :attr:`Capability.RULES`).
        ``overrides``: tensor name -> value (N, ...) aligned with ``x``; during the
        forward pass the tensor takes that value instead of the one its node computes,
        so everything downstream (the objective, other tensors) sees the replacement and
        ``gradients[name]`` is the gradient with respect to it. Layer integrated gradients
        uses this to move an intermediate tensor along a path.
        """
        raise BackendCapabilityError(f"the {self.name!r} backend cannot compute gradients")

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
        """Σ_k ``weights[k]`` · ∂objective/∂input at ``start + alphas[k] · (end − start)``, per
        example, in float64: the sum integrated gradients takes.

        The points are the rows of the flattened (steps × examples) grid, row r being step
        r // N of example r % N (as in Captum), ``chunk`` rows per pass; ``progress`` wraps
        the list of row slices (a progress bar). This default builds the points and sums
        the gradients in numpy around :meth:`gradients`; a backend whose tensors live on a
        device overrides it to keep the whole sum there.
        """
        def gradient(points: np.ndarray, examples: np.ndarray) -> np.ndarray:
            return self.gradients(points, objective.take(examples), wrt=[INPUT]).gradients[INPUT]

        return accumulate_path(start, end, alphas, weights, gradient, chunk, progress)

    def smoothed_gradients(
        self,
        x: np.ndarray,
        objective: Objective,
        noise: NoisyCopies,
        chunk: int,
        rules: Mapping[str, Any] | None = None,
        post: GradientPost = "gradient",
        squares: bool = False,
        progress: Callable[[list[int]], Iterable[int]] = iter,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Σ_s a_s and (with ``squares``) Σ_s a_s² per example, in float64, over the noisy
        copies s of ``x`` that ``noise`` describes: the sums of SmoothGrad and its noise-tunnel
        kin. a_s is the gradient of the objective at copy s, taken under ``rules`` (as in
        :meth:`gradients`), then ``post``: ``"gradient"`` as is, ``"abs"`` its absolute value,
        ``"times_input"`` times the noisy input.

        ``chunk`` copies of the N examples go to the model at once (split further at
        ``max_batch_size`` rows); ``progress`` wraps the list of each chunk's first copy.
        This default builds the copies and sums the gradients in numpy around
        :meth:`gradients`; a backend whose tensors live on a device overrides it, so that the
        noise is drawn and the gradients summed there.
        """
        n = len(x)
        total = np.zeros(x.shape, np.float64)
        total_sq = np.zeros(x.shape, np.float64) if squares else None
        for first in progress(list(range(0, noise.copies, chunk))):
            count = min(chunk, noise.copies - first)
            noisy = noise.rows(x, first, count)
            g = self.gradients(noisy, objective.take(np.tile(np.arange(n), count)), wrt=[INPUT],
                               rules=rules).gradients[INPUT]
            a = np.abs(g) if post == "abs" else noisy * g if post == "times_input" else g
            part, part_sq = copy_sums(a.reshape(count, *x.shape), squares)
            total += part
            if total_sq is not None:
                total_sq += part_sq
        return total, total_sq

    @contextlib.contextmanager
    def node_rules(self, rules: Mapping[str, Any]) -> Iterator[None]:
        """Within the block, replace the backward rule of the named graph nodes.

        ``rules``: node name -> :class:`BackwardRule`, a name from :data:`RULE_NAMES`, or a
        rule in the backend's own terms (for torch, a function of a ``RuleContext``).
        """
        raise BackendCapabilityError(f"the {self.name!r} backend cannot replace backward rules")
        yield  # pragma: no cover


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def copy_sums(a: np.ndarray, squares: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Σ_k a[k] and (with ``squares``) Σ_k a[k]², in float64 without a float64 copy of ``a``."""
    total = a.sum(0, dtype=np.float64)
    if not squares:
        return total, None
    return total, np.einsum("k...,k...->...", a, a, dtype=np.float64, casting="unsafe")


def accumulate_path(
    start: np.ndarray,
    end: np.ndarray,
    alphas: np.ndarray,
    weights: np.ndarray,
    gradient: Callable[[np.ndarray, np.ndarray], np.ndarray],
    chunk: int,
    progress: Callable[[list[slice]], Iterable[slice]] = iter,
) -> np.ndarray:
    """Σ_k ``weights[k]`` · g(start + alphas[k] (end − start)) per example, in float64.

    ``gradient(points, examples)`` returns the gradient at ``points``, row i belonging to
    example ``examples[i]``; rows as in :meth:`Backend.path_integral`.
    """
    n, steps = len(start), len(alphas)
    diff = end - start
    shape = (-1, *([1] * (start.ndim - 1)))
    total = np.zeros(start.shape, dtype=np.float64)
    flat = total.reshape(n, -1)
    for sl in progress(list(batches(n * steps, chunk))):
        r = np.arange(sl.start, sl.stop)
        step, example = r // n, r % n
        points = diff[example]
        points *= alphas[step].astype(start.dtype).reshape(shape)
        points += start[example]
        g = gradient(points, example).reshape(len(r), -1)
        # the chunk's rows of one example are every n-th row from its first: a weighted sum
        # of that strided view per example, accumulated in float64 without a float64 copy
        for first in range(min(n, len(r))):
            rows = slice(first, None, n)
            flat[example[first]] += np.einsum("k,kd->d", weights[step[rows]], g[rows], dtype=np.float64,
                                              casting="unsafe")
    return total
