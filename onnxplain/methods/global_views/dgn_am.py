"""DGN-AM, activation maximisation through a deep generator network: Nguyen, Dosovitskiy,
Yosinski, Brox & Clune, NeurIPS 2016 ("Synthesizing the preferred inputs for neurons in
neural networks via deep generator networks").

Instead of pixels, the latent code z of a generator G is optimised, so the image stays
on the generator's manifold of natural-looking images:

    z* = argmax_z  S(Φ(G(z))) − λ · ‖z‖² / d,      image = Φ(G(z*))

S is the target unit of the classifier, d the code's size, and Φ(y) = a ⊙ y + b the
per-channel affine map that sends the generator's output range [g_lo, g_hi] onto the
classifier's valid input range [lo, hi] (a = (hi − lo) / (g_hi − g_lo), b = lo − a·g_lo).
Generator, Φ and classifier are composed into one ONNX graph (Φ as Mul and Add nodes), so
a gradient backend differentiates the whole chain with respect to z. Adam ascent, seeded
random starting codes z₀ ~ N(0, σ²), optionally clipped to a box after every step (the
paper bounds its fc6 codes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pydantic
from onnx import helper, numpy_helper

from onnxplain.backends.base import INPUT, Backend, Capability, batches
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.base import Attribution
from onnxplain.methods.global_views._image import Adam, input_range
from onnxplain.methods.global_views.activation_maximization import expand_targets, resolve_targets

#: Name prefixes of the generator's and the classifier's parts in the composed graph.
GENERATOR_PREFIX = "generator/"
CLASSIFIER_PREFIX = "classifier/"
#: The classifier's input in the composed graph: the generator's output after Φ.
IMAGE = GENERATOR_PREFIX + "image"


class _DGNAMParams(Params):
    n_starts: pydantic.PositiveInt = 1
    n_steps: pydantic.PositiveInt = 200
    lr: float = pydantic.Field(default=0.05, gt=0)
    l2: float = pydantic.Field(default=0.0, ge=0)
    init_std: float = pydantic.Field(default=1.0, ge=0)
    code_clip: tuple[float, float] | None = None
    batch_size: pydantic.PositiveInt | None = None
    seed: pydantic.NonNegativeInt = 0


@dataclass
class DGNAMResult:
    """What :meth:`DGNAM.optimize` returns. ``codes``: (n, d) the optimised codes;
    ``images``: (n, C, H, W) their images in the classifier's input space; ``objective``:
    (n_steps, n) the target's score at each step; ``initial_scores`` / ``scores``: (n,)
    the target's score at the random starting codes and at the optimised ones;
    ``targets``: the target of each image."""

    codes: np.ndarray
    initial_codes: np.ndarray
    images: np.ndarray
    objective: np.ndarray
    initial_scores: np.ndarray
    scores: np.ndarray
    targets: list


def _upgrade(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current == opset:
        return proto
    from onnx import version_converter

    try:
        return version_converter.convert_version(proto, opset)
    except Exception as exc:
        raise InputValidationError(
            f"cannot bring the models to one opset ({current} -> {opset}): {exc}; export the "
            "generator and the classifier with the same opset"
        ) from None


def compose(
    generator: Model,
    classifier: Model,
    generator_range: tuple[float, float],
    classifier_range: tuple[np.ndarray, np.ndarray],
) -> Model:
    """One model: code → G → Φ → classifier, names prefixed ``generator/`` and
    ``classifier/``; its input is the generator's, ``IMAGE`` is Φ(G(z))."""
    g_proto, c_proto = generator.proto(), classifier.proto()
    opset = max(generator.opset, classifier.opset)
    g_proto, c_proto = _upgrade(g_proto, opset), _upgrade(c_proto, opset)
    ir_version = max(g_proto.ir_version, c_proto.ir_version)
    g_proto.ir_version = c_proto.ir_version = ir_version

    out_shape = generator.output_spec.shape
    in_shape = classifier.input_spec.shape
    if out_shape is None or in_shape is None or len(out_shape) != len(in_shape):
        raise InputValidationError(
            f"the generator's output {generator.output_name!r} {out_shape} does not fit the "
            f"classifier's input {classifier.input_name!r} {in_shape}"
        )
    for axis, (a, b) in enumerate(zip(out_shape[1:], in_shape[1:]), start=1):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise InputValidationError(
                f"the generator makes {out_shape} but the classifier takes {in_shape} (axis {axis})"
            )
    g_lo, g_hi = (float(v) for v in generator_range)
    if not g_hi > g_lo:
        raise InputValidationError(
            f"generator_range must be (low, high) with low < high, got {generator_range}"
        )
    lo, hi = classifier_range
    gain = (hi - lo) / (g_hi - g_lo)
    shift = lo - gain * g_lo
    shape = (1, gain.size) + (1,) * (len(out_shape) - 2)
    dtype = generator.output_spec.dtype or np.dtype(np.float32)
    gain_t = numpy_helper.from_array(gain.reshape(shape).astype(dtype), "range_gain")
    shift_t = numpy_helper.from_array(shift.reshape(shape).astype(dtype), "range_shift")
    graph = g_proto.graph
    raw = generator.output_name
    graph.initializer.extend([gain_t, shift_t])
    graph.node.extend(
        [
            helper.make_node("Mul", [raw, "range_gain"], ["range_scaled"], name="range_map/Mul"),
            helper.make_node("Add", ["range_scaled", "range_shift"], ["image"], name="range_map/Add"),
        ]
    )
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("image", elem, list(out_shape)))
    merged = onnx.compose.merge_models(
        onnx.compose.add_prefix(g_proto, GENERATOR_PREFIX),
        onnx.compose.add_prefix(c_proto, CLASSIFIER_PREFIX),
        io_map=[(IMAGE, CLASSIFIER_PREFIX + classifier.input_name)],
    )
    from onnxplain.core.loading import load

    model = load(merged)
    model.source = f"DGN-AM({generator.source} -> {classifier.source})"
    return model


class DGNAM(Attribution):
    """Activation maximisation in a generator's code space.

    ``model``: the classifier; ``generator``: a Model that maps a code (N, d) to images
    (N, C, H, W) with values in ``generator_range`` (default (−1, 1), a tanh output).
    ``input_range``: the classifier's valid inputs, as for
    :class:`~onnxplain.ActivationMaximization` (None: from the model card or
    preprocessing spec). ``composed``: the composed Model (code → image → scores).
    """

    requires = frozenset({Capability.GRADIENTS})

    def __init__(
        self,
        model: Model,
        generator: Model,
        generator_range: Sequence[float] = (-1.0, 1.0),
        input_range: Any = None,
        backend: str | Backend = "auto",
        **backend_options: Any,
    ) -> None:
        if not isinstance(model, Model) or not isinstance(generator, Model):
            raise InputValidationError(
                "DGNAM takes the classifier and the generator as onnxplain Models (from ox.load), "
                f"got {type(model).__name__} and {type(generator).__name__}"
            )
        self.classifier = model
        self.generator = generator
        shape = model.input_spec.shape or ()
        channels = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else 1
        self.input_range = _input_range(model, input_range, channels)
        self.composed = compose(generator, model, tuple(generator_range), self.input_range)
        super().__init__(self.composed, backend, **backend_options)

    def optimize(
        self,
        target: TargetLike,
        n_starts: int = 1,
        n_steps: int = 200,
        lr: float = 0.05,
        l2: float = 0.0,
        init_std: float = 1.0,
        code_clip: tuple[float, float] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        show_progress: bool | None = None,
    ) -> DGNAMResult:
        """Optimise ``n_starts`` codes per target.

        ``target``: a class index, a sequence of class indices (``n_starts`` codes each),
        or ``Neuron``/``Channel`` of the classifier (its own tensor names).
        ``l2``: λ of the code decay; ``init_std``: σ of the random starting codes;
        ``code_clip``: (low, high) box the code is clipped to after each step.
        ``batch_size`` codes are optimised together; code i depends only on ``seed`` and i.
        """
        p = validate_params(
            _DGNAMParams,
            "DGNAM",
            n_starts=n_starts,
            n_steps=n_steps,
            lr=lr,
            l2=l2,
            init_std=init_std,
            code_clip=code_clip,
            batch_size=batch_size,
            seed=seed,
        )
        if p.code_clip is not None and not p.code_clip[0] < p.code_clip[1]:
            raise InputValidationError(f"code_clip must be (low, high) with low < high, got {code_clip}")
        targets, n = expand_targets(target, p.n_starts)
        objective = resolve_targets(self.model, targets, self.backend.output_name, CLASSIFIER_PREFIX)
        code_shape = self.model.input_spec.shape or ()
        if len(code_shape) < 2 or not all(isinstance(d, int) and d > 0 for d in code_shape[1:]):
            raise InputValidationError(
                f"the generator's input must have a static code size, got {code_shape}"
            )
        dims = tuple(int(d) for d in code_shape[1:])
        d = int(np.prod(dims))
        streams = np.random.SeedSequence(p.seed).spawn(n)
        codes = np.stack([np.random.default_rng(s).standard_normal(dims) * p.init_std for s in streams])
        if p.code_clip is not None:
            np.clip(codes, *p.code_clip, out=codes)
        size = p.batch_size or self.backend.max_batch_size
        curve = np.empty((p.n_steps, n))
        initial = self._target_scores(codes, objective)
        initial_codes = codes.astype(self.model.input_dtype)
        for sl in batches(n, size):
            z = codes[sl]
            adam = Adam([z], p.lr)
            obj = objective.take(sl)
            for step in self._progress(range(p.n_steps), p.n_steps, show_progress, "DGNAM"):
                result = self.backend.gradients(z.astype(self.model.input_dtype), obj, wrt=[INPUT])
                grad = result.gradients[INPUT].astype(np.float64) - p.l2 * 2.0 * z / d
                curve[step, sl] = result.scores
                adam.step([grad])
                if p.code_clip is not None:
                    np.clip(z, *p.code_clip, out=z)
        images = np.concatenate(
            [
                self.backend.forward(codes[sl].astype(self.model.input_dtype), outputs=[IMAGE])[IMAGE]
                for sl in batches(n, size)
            ]
        )
        return DGNAMResult(
            codes=codes.astype(self.model.input_dtype),
            initial_codes=initial_codes,
            images=images,
            objective=curve,
            initial_scores=initial,
            scores=self._target_scores(codes, objective),
            targets=targets,
        )

    def _target_scores(self, codes: np.ndarray, objective: Any) -> np.ndarray:
        size = self.backend.max_batch_size
        return np.concatenate(
            [
                self._scores(codes[sl].astype(self.model.input_dtype), objective.take(sl))
                for sl in batches(len(codes), size)
            ]
        )


def _input_range(model: Model, given: Any, channels: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = input_range(model, given, channels)
    return lo.reshape(-1), hi.reshape(-1)
