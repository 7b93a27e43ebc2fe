"""Time onnxplain's methods against the reference libraries: same model, same input, same run.

Run by hand on a quiet machine (not part of the test suite); the whole table:

    .venv/bin/python benchmarks/run.py

Options: ``--models resnet18,mobilenet_v2 --size 224 --repeat 5 --batch 32 --device cpu|cuda
--threads N --methods Occlusion,RISE --rise-masks 1000 --quick --out FILE``. ``--quick`` is a
smoke run (64×64, 1 repeat, fewer samples) that checks that every row works, not a result.

Writes ``benchmarks/RESULTS.md``. Per (model, method): both times (median of ``--repeat``
runs after one warm-up run), the speedup (reference time / onnxplain time), the peak memory
of each side, and, for forward-only methods, the runtime's limit: the time ONNX Runtime
alone needs for the same number of forward rows at its best batch size, and the method's
efficiency = limit / method time. Ratios are medians of each round's own ratio (the sides
of a round run back to back). Both sides do the same work: the same number of forward
(and backward) rows in batches of the same size. Seeded random weights (no downloads).

Peak memory: the growth of the process's peak resident set during the first timed run
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the run, after glibc's
``malloc_trim`` has returned the heap's free pages) over the resident set just before it; it
counts numpy, torch and ONNX Runtime allocations alike. Sessions, converted modules and
ONNX Runtime's arena already built by the warm-up run are not counted again. On CUDA the
torch peak allocation on the GPU is added (ONNX Runtime's CUDA arena is not visible to it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from perturbation_memory import proc_status  # benchmarks/ is on sys.path when run as a script

import onnxplain as ox
from onnxplain.backends.onnxruntime_backend import OnnxRuntimeBackend
from onnxplain.backends.registry import physical_cores

warnings.filterwarnings("ignore")

#: Forward-only methods: the ones with a "limit" (their time is forward passes and overhead).
FORWARD_ONLY = ("Occlusion", "FeatureAblation", "RISE", "Lime", "KernelShap", "ScoreCAM", "AblationCAM")


# -- measuring -----------------------------------------------------------------------------
def _malloc_trim() -> None:
    """Hand the heap's free pages back to the OS (glibc), so that memory freed by earlier runs
    no longer hides in the resident set: a run that needs it again must fault it back in."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak growth of the resident set (and of torch's CUDA allocation) inside the block."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.mib = cuda, float("nan")

    def __enter__(self) -> PeakMemory:
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            self.base = proc_status("VmRSS")
        except OSError:
            self.base = None
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.gpu_base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        peak = proc_status("VmHWM")
        if self.base is not None and peak is not None:
            self.mib = (peak - self.base) / 2**20
        if self.cuda:
            torch.cuda.synchronize()
            self.mib += (torch.cuda.max_memory_allocated() - self.gpu_base) / 2**20


def timed(fn: Callable[[], object], cuda: bool, memory: bool = False) -> tuple[float, float]:
    """(seconds, peak MiB or nan) of one call of ``fn``."""
    with PeakMemory(cuda) if memory else contextlib.nullcontext() as mem:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, mem.mib if memory else float("nan")


#: Distinct input buffers the runtime's own passes take in turn: a method sends new data in
#: every pass, so feeding one buffer again and again (which the CPU caches keep close) would
#: give the runtime an advantage no method can have.
ROTATE = 3


def input_buffers(row: np.ndarray, size: int) -> list[np.ndarray]:
    """``ROTATE`` separate arrays of ``size`` copies of ``row``."""
    return [np.ascontiguousarray(np.repeat(row, size, axis=0)) for _ in range(ROTATE)]


def forward_rows(plan: list[tuple[OnnxRuntimeBackend, int, list[np.ndarray]]]) -> None:
    """The runtime's own forward passes for (backend, rows, input buffers) in ``plan``: ``rows``
    rows in full batches (the buffers in turn) plus the remainder, straight through
    ``InferenceSession.run`` (see ``runtime_pass``)."""
    for be, rows, bufs in plan:
        run = runtime_pass(be)
        size = len(bufs[0])
        for i in range(rows // size):
            run(bufs[i % len(bufs)])
        if rows % size:
            run(bufs[0][: rows % size])


@contextlib.contextmanager
def counting_rows() -> Iterator[dict[OnnxRuntimeBackend, list]]:
    """Rows each ONNX Runtime backend is asked to run inside the block (and one row of input)."""
    counts: dict[OnnxRuntimeBackend, list] = {}
    real = OnnxRuntimeBackend.forward

    def forward(self, x, outputs=None):
        entry = counts.setdefault(self, [0, np.array(x[:1])])
        entry[0] += len(x)
        return real(self, x, outputs)

    OnnxRuntimeBackend.forward = forward
    try:
        yield counts
    finally:
        OnnxRuntimeBackend.forward = real


@dataclass
class RuntimeSpeed:
    """ONNX Runtime's own seconds per row for one backend: at each batch size, and the best."""

    per_row: dict[int, float] = field(default_factory=dict)

    @property
    def best_batch(self) -> int:
        return min(self.per_row, key=self.per_row.get)

    @property
    def best(self) -> float:
        return self.per_row[self.best_batch]


def runtime_pass(be: OnnxRuntimeBackend) -> Callable[[np.ndarray], object]:
    """One ``InferenceSession.run`` of a batch to the model's outputs: plain on CPU, through the
    backend's IO binding where it uses one (CUDA), the way its own passes run."""
    sess, names = be._session(()), list(be.model.output_names)
    return lambda batch: be._run(sess, names, batch)


def runtime_speed(
    be: OnnxRuntimeBackend, row: np.ndarray, sizes: tuple[int, ...], rows: int, repeat: int
) -> RuntimeSpeed:
    """Raw ``InferenceSession.run`` time per row (the runtime's limit, no onnxplain code) at each
    batch size; the sizes take turns in each round, so that load changes hit them alike. On
    CUDA the run goes through IO binding, as the backend's own passes do."""
    run = runtime_pass(be)
    batches = {size: input_buffers(row, size) for size in sizes}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for bufs in batches.values():
        for _ in range(2):  # the first pass of a shape may tune kernels (cuDNN's search on CUDA)
            run(bufs[0])
    for _ in range(repeat):
        for size, bufs in batches.items():
            calls = max(1, rows // size)
            start = time.perf_counter()
            for i in range(calls):
                run(bufs[i % len(bufs)])
            times[size].append((time.perf_counter() - start) / (calls * size))
    return RuntimeSpeed({size: statistics.median(t) for size, t in times.items()})


def lead_sampler(
    be: OnnxRuntimeBackend, net: torch.nn.Module, x: np.ndarray, size: int, rows: int
) -> Callable[[], tuple[float, float]]:
    """A function that times ``rows`` rows at ``size`` rows per call through ONNX Runtime
    (``InferenceSession.run``) and then through PyTorch eager under ``torch.inference_mode``,
    and returns the seconds per row of each."""
    run = runtime_pass(be)
    bufs = input_buffers(x[:1], size)
    device = next(net.parameters()).device
    bufs_t = [torch.from_numpy(b).to(device) for b in bufs]
    calls = max(1, rows // size)

    def ort_pass(i: int) -> None:
        run(bufs[i % len(bufs)])

    def torch_pass(i: int) -> None:
        with torch.inference_mode():
            net(bufs_t[i % len(bufs_t)])
        if device.type == "cuda":
            torch.cuda.synchronize()

    def sample() -> tuple[float, float]:
        got = []
        for fn in (ort_pass, torch_pass):
            start = time.perf_counter()
            for i in range(calls):
                fn(i)
            got.append((time.perf_counter() - start) / (calls * size))
        return got[0], got[1]

    ort_pass(0)
    torch_pass(0)
    return sample


def runtime_lead(sample: Callable[[], tuple[float, float]], repeat: int) -> tuple[float, float]:
    """Seconds per row (ONNX Runtime, PyTorch eager) from ``sample``: medians of ``repeat``."""
    got = [sample() for _ in range(repeat)]
    return statistics.median(g[0] for g in got), statistics.median(g[1] for g in got)


# -- the TorchRay-style RISE reference -----------------------------------------------------------
def torchray_rise(
    net: torch.nn.Module,
    x: torch.Tensor,
    target: int,
    num_masks: int,
    num_cells: int = 7,
    p: float = 0.5,
    batch_size: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """RISE (Petsiuk et al., BMVC 2018) as TorchRay's ``torchray.attribution.rise`` computes it,
    in plain torch: per batch, a ``num_cells``² grid of cells kept with probability p, bilinearly
    upsampled (``align_corners=False``) to (num_cells + 1) · ⌈H / num_cells⌉ and cropped at a
    random shift; the softmax scores of ``x ⊙ M`` weight the masks; the sum is divided by
    N · p. Only the target class's map is accumulated (TorchRay accumulates all classes, a
    1000×H×W buffer that onnxplain does not need), so both sides do the same work.
    """
    gen = torch.Generator().manual_seed(seed)
    _, _, h, w = x.shape
    ch, cw = math.ceil(h / num_cells), math.ceil(w / num_cells)
    up = ((num_cells + 1) * ch, (num_cells + 1) * cw)
    saliency = torch.zeros(len(x), h * w, device=x.device)
    with torch.no_grad():
        for start in range(0, num_masks, batch_size):
            n = min(batch_size, num_masks - start)
            grid = (torch.rand(n, 1, num_cells, num_cells, generator=gen) < p).float().to(x.device)
            grid = F.interpolate(grid, size=up, mode="bilinear", align_corners=False)
            sy = torch.randint(0, ch, (n,), generator=gen).tolist()
            sx = torch.randint(0, cw, (n,), generator=gen).tolist()
            masks = torch.stack([grid[i, :, y : y + h, xx : xx + w] for i, (y, xx) in enumerate(zip(sy, sx))])
            for i in range(len(x)):
                probs = F.softmax(net(x[i : i + 1] * masks), dim=1)[:, target]
                saliency[i] += probs @ masks.view(n, h * w)
    return (saliency / (num_masks * p)).view(len(x), h, w)


# -- the cases -----------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    reference: str
    work: str
    ours: Callable[[], object]
    ref: Callable[[], object]
    #: whose forward rows make the limit, when not ``ours``'s (incremental Occlusion: the
    #: plain method's full passes, so that efficiency > 1 is time saved beyond the limit)
    limit_of: Callable[[], object] | None = None


@dataclass
class Settings:
    batch: int = 32
    rise_masks: int = 1000
    samples: int = 256  # LIME / Kernel SHAP
    ig_steps: int = 50
    nt_samples: int = 64
    device: str = "cpu"
    threads: int = 1


def cases(
    arch: str, net: torch.nn.Module, model: ox.Model, x: np.ndarray, target: int, s: Settings
) -> Iterator[Case]:
    from captum.attr import (
        FeatureAblation,
        GuidedBackprop,
        IntegratedGradients,
        KernelShap,
        Lime,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )
    from pytorch_grad_cam import AblationCAM, GradCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    dev = s.device
    fwd = {"device": dev, "num_threads": s.threads}  # forward-only methods run on ONNX Runtime
    grad = {"device": dev}  # gradient methods run on the torch backend
    b = s.batch
    xt = torch.from_numpy(x).to(dev)
    size = x.shape[-1]
    layer = net.layer4[-1] if hasattr(net, "layer4") else net.features[-1]
    targets = [ClassifierOutputTarget(target)] * len(x)
    quiet = {"show_progress": False}

    # gradient methods (torch backend vs the same torch network)
    yield Case(
        "Saliency",
        "Captum",
        "1 fwd+bwd",
        lambda: ox.Saliency(model, **grad).attribute(x, target=target),
        lambda: Saliency(net).attribute(xt.clone().requires_grad_(), target=target),
    )
    yield Case(
        "IntegratedGradients",
        "Captum",
        f"{s.ig_steps} fwd+bwd rows, batch {b}",
        lambda: ox.IntegratedGradients(model, **grad).attribute(
            x, target=target, n_steps=s.ig_steps, internal_batch_size=b, **quiet
        ),
        lambda: IntegratedGradients(net).attribute(
            xt, target=target, n_steps=s.ig_steps, internal_batch_size=b
        ),
    )
    yield Case(
        "GuidedBackprop",
        "Captum",
        "1 fwd+bwd",
        lambda: ox.GuidedBackprop(model, **grad).attribute(x, target=target),
        lambda: GuidedBackprop(net).attribute(xt.clone().requires_grad_(), target=target),
    )
    yield Case(
        "NoiseTunnel (SmoothGrad)",
        "Captum",
        f"{s.nt_samples} fwd+bwd rows, batch {b}",
        lambda: ox.NoiseTunnel(ox.Saliency(model, **grad)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=s.nt_samples,
            nt_samples_batch_size=b,
            stdevs=0.1,
            target=target,
            **quiet,
        ),
        lambda: NoiseTunnel(Saliency(net)).attribute(
            xt,
            nt_type="smoothgrad",
            nt_samples=s.nt_samples,
            nt_samples_batch_size=b,
            stdevs=0.1,
            target=target,
        ),
    )
    grad_cam = GradCAM(model=net, target_layers=[layer])
    yield Case(
        "GradCAM",
        "pytorch-grad-cam",
        "1 fwd+bwd",
        lambda: ox.GradCAM(model, **grad).attribute(x, target=target),
        lambda: grad_cam(input_tensor=xt, targets=targets),
    )
    yield from lrp_cases(arch, net, model, x, xt, target, grad)

    # forward-only methods (ONNX Runtime vs the torch network)
    win, stride = (3, size // 8, size // 8), (3, size // 16, size // 16)
    windows = ((size - win[1]) // stride[1] + 1) ** 2
    occlusion = {"sliding_window_shapes": win, "strides": stride, "perturbations_per_eval": b}
    plain = lambda: ox.Occlusion(model, **fwd).attribute(x, target=target, **occlusion, **quiet)  # noqa: E731
    captum_occlusion = lambda: Occlusion(net).attribute(xt, target=target, **occlusion)  # noqa: E731
    yield Case("Occlusion", "Captum", f"{windows} windows, batch {b}", plain, captum_occlusion)
    yield Case(
        "Occlusion (incremental)",
        "Captum",
        f"{windows} windows, batch {b} (ours: only what each window reaches; limit: full passes)",
        lambda: ox.Occlusion(model, **fwd).attribute(
            x, target=target, incremental=True, **occlusion, **quiet
        ),
        captum_occlusion,
        limit_of=plain,
    )
    fine = ox.segmentation.grid(x, cell_size=size // 16)  # 256 features
    fine_t = torch.from_numpy(fine[:, None].repeat(3, axis=1)).to(dev)
    ablation = {"target": target, "feature_mask": fine[:, None], "perturbations_per_eval": b}
    plain_ablation = lambda: ox.FeatureAblation(model, **fwd).attribute(x, **ablation, **quiet)  # noqa: E731
    captum_ablation = lambda: FeatureAblation(net).attribute(  # noqa: E731
        xt, target=target, feature_mask=fine_t, perturbations_per_eval=b
    )
    features = f"{int(fine.max()) + 1} features, batch {b}"
    yield Case("FeatureAblation", "Captum", features, plain_ablation, captum_ablation)
    yield Case(
        "FeatureAblation (incremental)",
        "Captum",
        f"{features} (ours: only what each feature reaches; limit: full passes)",
        lambda: ox.FeatureAblation(model, **fwd).attribute(x, incremental=True, **ablation, **quiet),
        captum_ablation,
        limit_of=plain_ablation,
    )
    yield Case(
        "RISE",
        "TorchRay-style",
        f"{s.rise_masks} masks, 7×7 cells, batch {b}",
        lambda: ox.RISE(model, **fwd).attribute(
            x, target=target, n_masks=s.rise_masks, s=7, p=0.5, batch_size=b, **quiet
        ),
        lambda: torchray_rise(net, xt, target, s.rise_masks, 7, 0.5, b),
    )
    cells = ox.segmentation.grid(x, cell_size=size // 8)  # 64 features
    cells_t = torch.from_numpy(cells[:, None].repeat(3, axis=1)).to(dev)
    for name, ours_cls, ref_cls in (("Lime", ox.Lime, Lime), ("KernelShap", ox.KernelShap, KernelShap)):
        yield Case(
            name,
            "Captum",
            f"{s.samples} samples, 64 features, batch {b}",
            lambda c=ours_cls: c(model, **fwd).attribute(
                x, target=target, feature_mask=cells, n_samples=s.samples, batch_size=b, **quiet
            ),
            lambda c=ref_cls: c(net).attribute(
                xt, target=target, feature_mask=cells_t, n_samples=s.samples, perturbations_per_eval=b
            ),
        )
    _silence_grad_cam_progress()
    score_cam = ScoreCAM(model=net, target_layers=[layer])
    score_cam.batch_size = b
    yield Case(
        "ScoreCAM",
        "pytorch-grad-cam",
        f"1 + K masked inputs, batch {b}",
        lambda: ox.ScoreCAM(model, batch_size=b, **fwd).attribute(x, target=target, **quiet),
        lambda: score_cam(input_tensor=xt, targets=targets),
    )
    ablation_ref = AblationCAM(model=net, target_layers=[layer], batch_size=b)
    ablation_ours = ox.AblationCAM(model, batch_size=b, **fwd)  # builds the tail session once
    yield Case(
        "AblationCAM",
        "pytorch-grad-cam",
        f"K ablated maps, batch {b} (ours: layers after the map)",
        lambda: ablation_ours.attribute(x, target=target, **quiet),
        lambda: ablation_ref(input_tensor=xt, targets=targets),
    )


def _silence_grad_cam_progress() -> None:
    """pytorch-grad-cam's AblationCAM and ScoreCAM draw tqdm bars (they have no switch): give
    their modules a tqdm that draws nothing."""
    import types

    import pytorch_grad_cam.ablation_cam
    import pytorch_grad_cam.score_cam

    for module in (pytorch_grad_cam.ablation_cam, pytorch_grad_cam.score_cam):
        module.tqdm = types.SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)


#: Rows left out by design in this run ("what: why"), listed in RESULTS.md.
SKIPPED: list[str] = []


def _skip(note: str) -> None:
    if note not in SKIPPED:
        SKIPPED.append(note)
    print(f"  (skipped {note})", file=sys.stderr)


def _onnxplain_lrp():
    """onnxplain's LRP class, or None while the package has none."""
    if hasattr(ox, "LRP"):
        return ox.LRP
    try:
        from onnxplain.methods.lrp import LRP
    except ImportError:
        return None
    return LRP


def lrp_cases(
    arch: str, net: torch.nn.Module, model: ox.Model, x: np.ndarray, xt: torch.Tensor, target: int, grad: dict
) -> Iterator[Case]:
    """LRP with EpsilonPlusFlat (onnxplain's default composite) vs zennit's EpsilonPlusFlat, and
    vs Captum's LRP where Captum accepts the network.

    No row while onnxplain has no ``LRP`` or zennit is missing.
    """
    lrp = _onnxplain_lrp()
    if lrp is None:
        _skip("LRP rows: onnxplain has no LRP yet")
        return
    try:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer, SequentialMergeBatchNorm
    except ImportError:
        _skip("LRP rows: zennit is not installed")
        return
    canonizer = ResNetCanonizer() if hasattr(net, "layer4") else SequentialMergeBatchNorm()
    onehot = torch.zeros(len(x), 1000, device=xt.device)
    onehot[:, target] = 1

    def zennit_lrp():
        with Gradient(model=net, composite=EpsilonPlusFlat(canonizers=[canonizer])) as attributor:
            return attributor(xt.clone().requires_grad_(), onehot)[1]

    yield Case(
        "LRP (EpsilonPlusFlat)",
        "zennit",
        "1 fwd+bwd",
        lambda: lrp(model, **grad).attribute(x, target=target),
        zennit_lrp,
    )
    from captum.attr import LRP as CaptumLRP

    try:  # Captum's LRP refuses networks with skip connections and reused or in-place ReLUs
        CaptumLRP(net).attribute(xt.clone().requires_grad_(), target=target)
    except Exception as exc:
        _skip(f"Captum LRP on {arch}: {type(exc).__name__}: {str(exc)[:100]}")
        return
    yield Case(
        "LRP (vs Captum's rules)",
        "Captum",
        "1 fwd+bwd",
        lambda: lrp(model, **grad).attribute(x, target=target),
        lambda: CaptumLRP(net).attribute(xt.clone().requires_grad_(), target=target),
    )


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Row:
    """One method on one model: the seconds of each timed run, run i of each side taken in the
    same round. Times are medians; ratios are the medians of the rounds' ratios (a run compared
    with its neighbour in time, not with a run from a quieter minute)."""

    arch: str
    case: Case
    ours: list[float]
    ref: list[float]
    mem_ours: float
    mem_ref: float
    limits: list[float] | None = None  # forward-only methods: the runtime's own time for the same rows
    leads: list[float] | None = None  # forward-only methods: the runtime's lead, sampled each round

    @property
    def lead(self) -> float | None:
        return None if self.leads is None else statistics.median(self.leads)

    @property
    def t_ours(self) -> float:
        return statistics.median(self.ours)

    @property
    def t_ref(self) -> float:
        return statistics.median(self.ref)

    @property
    def limit(self) -> float | None:
        return None if self.limits is None else statistics.median(self.limits)

    @property
    def speedup(self) -> float:
        return statistics.median(r / o for r, o in zip(self.ref, self.ours))

    @property
    def efficiency(self) -> float | None:
        if self.limits is None:
            return None
        return statistics.median(lim / o for lim, o in zip(self.limits, self.ours))


@dataclass
class Lead:
    arch: str
    batch: int
    ort: RuntimeSpeed  # per row at each batch size, for the best batch
    ort_per_row: float  # at ``batch``, measured alternately with torch
    torch_per_row: float

    @property
    def lead(self) -> float:
        return self.torch_per_row / self.ort_per_row


def run_model(arch: str, args: argparse.Namespace, s: Settings) -> tuple[Lead, list[Row]]:
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    x = np.random.default_rng(0).standard_normal((args.examples, 3, args.size, args.size)).astype(np.float32)
    model = ox.adapters.torch.export(net, torch.from_numpy(np.concatenate([x, x])))
    net = net.to(s.device)
    cuda = s.device.startswith("cuda")
    sizes = tuple(sorted({8, 16, s.batch} if args.quick else {8, 16, 32, 64, s.batch}))
    probe = {"rows": 16 if args.quick else 128, "repeat": 1 if args.quick else 5}
    main_be = model.backend("onnxruntime", device=s.device, num_threads=s.threads)
    speeds: dict[int, RuntimeSpeed] = {id(main_be): runtime_speed(main_be, x[:1], sizes, **probe)}
    sample = lead_sampler(main_be, net, x, s.batch, probe["rows"])
    lead = Lead(arch, s.batch, speeds[id(main_be)], *runtime_lead(sample, 3 if args.quick else 5))
    # each forward-only row measures the lead again in every round, next to the reference,
    # on fewer rows (two batches)
    row_sample = lead_sampler(main_be, net, x, s.batch, 2 * s.batch)
    print(
        f"{arch}: ONNX Runtime {1e3 * lead.ort_per_row:.2f} ms/row, torch eager "
        f"{1e3 * lead.torch_per_row:.2f} ms/row at batch {s.batch}: lead {lead.lead:.2f}×; best ORT batch "
        f"{lead.ort.best_batch} ({1e3 * lead.ort.best:.2f} ms/row)",
        flush=True,
    )
    rows = []
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
    for case in cases(arch, net, model, x, target=1, s=s):
        if wanted and case.name.split(" (")[0] not in wanted:
            continue
        try:
            row = run_case(arch, case, args, speeds, sizes, probe, cuda, row_sample)
        except Exception as exc:  # a broken row must not cost the rest of the table
            FAILED.append(f"{arch} {case.name}: {type(exc).__name__}: {str(exc)[:200]}")
            print(f"  {case.name:26s} FAILED {FAILED[-1]}", flush=True)
            continue
        rows.append(row)
        extra = "" if row.limit is None else (
            f"  limit {row.limit:7.3f}s  efficiency {row.efficiency:4.2f}  lead {row.lead:4.2f}"
        )
        print(
            f"  {case.name:26s} onnxplain {row.t_ours:8.3f}s  {case.reference} {row.t_ref:8.3f}s  "
            f"speedup {row.speedup:5.2f}{extra}",
            flush=True,
        )
    return lead, rows


#: Rows that raised, as "model method: error" lines for RESULTS.md.
FAILED: list[str] = []


def run_case(
    arch: str,
    case: Case,
    args: argparse.Namespace,
    speeds: dict,
    sizes: tuple,
    probe: dict,
    cuda: bool,
    lead_sample: Callable[[], tuple[float, float]],
) -> Row:
    """One row. After a warm-up run of each side, the runs alternate (onnxplain, reference,
    and for forward-only methods the runtime's own passes), so that load changes on a shared
    machine hit all three alike; each time is the median of ``args.repeat`` runs. Forward-only
    rows also take a sample of the runtime's lead (``lead_sample``) next to each reference run."""
    limit_fn = None
    if case.name.split(" (")[0] in FORWARD_ONLY:
        with counting_rows() as counts:
            (case.limit_of or case.ours)()  # a warm-up run, counting the rows sent to each session
        if case.limit_of is not None:
            case.ours()
        plan = []
        for be, (n_rows, row) in counts.items():
            if id(be) not in speeds:  # e.g. AblationCAM's tail model
                speeds[id(be)] = runtime_speed(be, row, sizes, **probe)
            plan.append((be, n_rows, input_buffers(row, min(n_rows, speeds[id(be)].best_batch))))
        limit_fn = lambda: forward_rows(plan)  # noqa: E731
        limit_fn()
    else:
        case.ours()
    case.ref()
    ours, ref, limit, leads = [], [], [], []
    for i in range(args.repeat):
        # onnxplain and the limit run next to each other, in turns first and last, so that each
        # efficiency ratio compares two runs under the same load; the lead's sample runs next
        # to the reference
        steps = [(ours, case.ours), (limit, limit_fn), (ref, case.ref)]
        for runs, fn in steps if i % 2 == 0 else steps[::-1]:
            if fn is not None:
                runs.append(timed(fn, cuda, memory=i == 0 and fn is not limit_fn))
            if fn is case.ref and limit_fn is not None:
                ort_row, torch_row = lead_sample()
                leads.append(torch_row / ort_row)
    return Row(
        arch,
        case,
        [t for t, _ in ours],
        [t for t, _ in ref],
        ours[0][1],
        ref[0][1],
        [t for t, _ in limit] or None,
        leads or None,
    )


def verdict(row: Row, lead: Lead) -> str:
    """The issue's targets: forward-only methods within 1.1× of the runtime's limit (so at
    least 0.9× the runtime's lead faster than the reference); gradient and rule methods at
    most 1.1× the reference's time."""
    if row.limit is None:
        return "✓" if row.speedup >= 1 / 1.1 else "✗ > 1.1× reference"
    misses = []
    if row.efficiency < 0.9:
        misses.append("efficiency < 0.9")
    if row.speedup < 0.9 * (row.lead or lead.lead):
        misses.append("speedup < 0.9× lead")
    return "✓" if not misses else "✗ " + ", ".join(misses)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in (
        "onnxplain",
        "onnxruntime-gpu",
        "onnxruntime",
        "torch",
        "torchvision",
        "numpy",
        "captum",
        "grad-cam",
        "zennit",
    ):
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def report(
    args: argparse.Namespace,
    s: Settings,
    leads: list[Lead],
    rows: list[Row],
    load: tuple,
    minutes: float,
    memory_md: list[str],
) -> str:
    fmt = lambda v, spec: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)  # noqa: E731
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Benchmarks: onnxplain vs the reference libraries",
        "",
        "Regenerate on a quiet machine (about 45–55 minutes on 2 CPU cores, of which the memory scan "
        "takes 3; `--repeat 3` takes about 30):",
        "",
        "    .venv/bin/python benchmarks/run.py",
        "",
        "On a GPU machine: `bash benchmarks/gpu_check.sh` (the CUDA tests, then this benchmark with "
        "`--device cuda`).",
        "",
        f"Machine: {cpu}, {os.cpu_count()} logical CPUs ({physical_cores()} physical cores usable), "
        f"{platform.system()}; device {s.device}; {s.threads} threads for torch and ONNX Runtime. "
        f"Date: {datetime.date.today()}. Run took {minutes:.1f} min; 1-minute load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after (above the core count means a shared, noisy machine).",
        f"Versions: {versions()}.",
        f"Input: {args.examples}×3×{args.size}×{args.size}, seeded random weights, target class 1; "
        f"batch {s.batch} on both sides; times are the median of {args.repeat} runs after a warm-up run."
        + (" **Quick smoke run: not a result.**" if args.quick else ""),
        "",
        "## The runtime's lead (forward passes alone)",
        "",
        "ONNX Runtime `InferenceSession.run` vs the same network in PyTorch eager under "
        f"`torch.inference_mode`, milliseconds per row at batch {s.batch}, timed alternately (median of 5); "
        "the best ONNX Runtime batch (of 8, 16, 32, 64; 128 rows per size, median of 5 rounds) is the one "
        f"the limits below use. Every timed pass here and in the limits takes one of {ROTATE} separate input "
        "arrays in turn, as a method sends new data in every pass (one array fed again and again stays in "
        "the CPU caches, an advantage no method has).",
        "",
        "| model | ORT ms/row | torch ms/row | lead | best ORT batch | ORT ms/row at best |",
        "|---|---|---|---|---|---|",
    ]
    for ld in leads:
        lines.append(
            f"| {ld.arch} | {1e3 * ld.ort_per_row:.2f} | {1e3 * ld.torch_per_row:.2f} | "
            f"{ld.lead:.2f}× | {ld.ort.best_batch} | {1e3 * ld.ort.best:.2f} |"
        )
    lines += [
        "",
        "## Methods",
        "",
        "Speedup = reference time / onnxplain time (> 1: onnxplain faster). Limit = the time ONNX Runtime "
        "alone (`InferenceSession.run`, no onnxplain code) takes for the rows the method sent it, at the "
        "runtime's best batch size (for AblationCAM: one full pass plus the rows of the layers after the "
        "map); efficiency = limit / onnxplain time. Each round times onnxplain and the limit next to each "
        "other and the reference before or after them (in turns); the times shown are medians over the "
        "rounds, speedup and efficiency the medians of each round's own ratio, so that a load change "
        "between rounds does not enter a ratio. Lead (forward-only rows): the runtime's lead sampled again "
        f"in every round right next to the reference run (ONNX Runtime, then PyTorch eager, on {2 * s.batch} "
        f"rows at batch {s.batch}), median of the rounds, because PyTorch's speed on this machine drifts "
        "by more than the target's margin over a run. Target: forward-only "
        "methods efficiency ≥ 0.9 and speedup ≥ 0.9 × the row's lead; gradient and rule methods (torch "
        "backend) at most 1.1× the reference's time. Peak MiB: growth of the peak resident set in the first "
        "timed run (see benchmarks/run.py).",
        "",
        "| model | method | reference | work (both sides) | onnxplain s | reference s | speedup | limit s "
        "| efficiency | lead | target | peak MiB onnxplain | peak MiB reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_arch = {ld.arch: ld for ld in leads}
    for r in rows:
        lines.append(
            f"| {r.arch} | {r.case.name} | {r.case.reference} | {r.case.work} | {r.t_ours:.3f} "
            f"| {r.t_ref:.3f} | {r.speedup:.2f} | {fmt(r.limit, '.3f')} | {fmt(r.efficiency, '.2f')} "
            f"| {fmt(r.lead, '.2f')} | "
            f"{verdict(r, by_arch[r.arch])} | {fmt(r.mem_ours, '.0f')} | {fmt(r.mem_ref, '.0f')} |"
        )
    if rows:
        lines += ["", f"Geometric mean speedup: {statistics.geometric_mean([r.speedup for r in rows]):.2f}."]
    lines += [
        "",
        "Notes: AblationCAM in onnxplain re-runs only the layers after the feature map (Model.tail), "
        "pytorch-grad-cam re-runs the whole network for every ablated batch; at the default layer, the "
        "input of a GAP → linear head, onnxplain evaluates the ablations in closed form "
        "(y − W_ck·GAP(A^k), exact), so its time is one forward pass. On mobilenet_v2 Captum's "
        "GuidedBackprop leaves ReLU6 unmodified (it hooks nn.ReLU only), onnxplain guides every "
        "rectifier; the backward work is the same. The RISE reference follows "
        "TorchRay's definition, written out in plain torch so that the benchmark does not need torchray. "
        "The incremental rows pass `incremental=True` (Nakandala et al., SIGMOD 2019): each window or "
        "feature re-runs only the early layers' region it can reach, pasted into the unperturbed feature "
        "maps, and the layers after the last cut; the same attributions up to float rounding "
        "(tests/methods/perturbation/test_incremental.py, benchmarks/incremental.py). Their limit is the "
        "plain method's: the runtime's time for the full passes, so an efficiency above 1 is time saved "
        "beyond it.",
    ]
    if SKIPPED:
        lines += ["", "Rows left out:", ""] + [f"- {f}" for f in SKIPPED]
    if FAILED:
        lines += ["", "Rows that failed in this run:", ""] + [f"- {f}" for f in FAILED]
    lines += memory_md
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--examples", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per row (median); default 5")
    parser.add_argument("--methods", default="", help="comma-separated subset, e.g. Occlusion,RISE")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument(
        "--threads",
        type=int,
        default=physical_cores(),
        help="torch and ONNX Runtime threads (default: physical cores)",
    )
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=256, help="LIME / Kernel SHAP samples")
    parser.add_argument(
        "--no-memory-scan",
        action="store_true",
        help="skip benchmarks/perturbation_memory.py's 1000-vs-8000-sample scan",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 64×64, 1 repeat, few samples")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeat = min(args.size, 64), 1
        args.rise_masks, args.samples = min(args.rise_masks, 64), min(args.samples, 64)
    s = Settings(
        batch=args.batch,
        rise_masks=args.rise_masks,
        samples=args.samples,
        device=args.device,
        threads=args.threads,
        ig_steps=8 if args.quick else 50,
        nt_samples=16 if args.quick else 64,
    )
    torch.set_num_threads(s.threads)
    began, load0 = time.perf_counter(), os.getloadavg()[0]
    leads, rows = [], []
    for arch in args.models.split(","):
        lead, got = run_model(arch, args, s)
        leads.append(lead)
        rows += got
    memory_md: list[str] = []
    if not args.no_memory_scan:
        sys.path.insert(0, str(Path(__file__).parent))
        import perturbation_memory

        counts = (250, 500) if args.quick else (1000, 8000)
        memory_md = ["", *perturbation_memory.markdown(perturbation_memory.scan(args.size, counts, s.batch))]
    text = report(
        args, s, leads, rows, (load0, os.getloadavg()[0]), (time.perf_counter() - began) / 60, memory_md
    )
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
