"""Peak memory of RISE, LIME, Kernel SHAP and Occlusion against the number of samples
(masks, perturbations, windows), and the cost of extremal perturbation's numpy mask
machinery per iteration.

Run by hand (not part of the test suite); ``benchmarks/run.py`` also runs the scan and
appends its table to RESULTS.md:

    .venv/bin/python benchmarks/perturbation_memory.py [--size 224] [--counts 1000,8000]

Memory is bounded by ``batch_size`` rows, never by the sample count, so each method's
peak must stay flat (within 10%) from 1000 to 8000 samples. Two measures per run, after a
warm-up run at the smallest count (sessions and arenas built): the peak of numpy
allocations (tracemalloc: what onnxplain's own code allocates; deterministic) and the
growth of the process's peak resident set (Linux VmHWM reset through
/proc/self/clear_refs; includes ONNX Runtime's buffers, but is coarser).
"""

from __future__ import annotations

import argparse
import math
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

import onnxplain as ox
from onnxplain.methods.perturbation import RISE
from onnxplain.methods.perturbation.extremal_perturbation import SmoothMask


def proc_status(key: str) -> int | None:
    """A byte count from /proc/self/status (``VmRSS``, ``VmHWM``...), None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peaks(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(tracemalloc peak MiB, peak resident-set growth MiB, seconds) of one call."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = proc_status("VmRSS")
    except OSError:
        base = None
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    hwm = proc_status("VmHWM")
    rss = (hwm - base) / 2**20 if base is not None and hwm is not None else float("nan")
    return traced / 2**20, rss, seconds


def _occlusion_stride(size: int, window: int, count: int) -> int:
    """The stride that gives about ``count`` windows of ``window`` pixels over ``size``²."""
    per_axis = max(2, round(math.sqrt(count)))
    return max(1, round((size - window) / (per_axis - 1)))


def scan(size: int = 224, counts: tuple[int, ...] = (1000, 8000), batch_size: int = 32) -> list[tuple]:
    """Rows (method, samples, traced MiB, RSS MiB, seconds) for each method and count."""
    model = ox.load(ox.examples.tiny_cnn())
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    cells = ox.segmentation.grid(x, cell_size=size // 8)
    window = max(2, 3 * size // 14)  # 48 at 224: strides 6 and 2 give 900 and 7921 windows
    quiet = {"show_progress": False, "target": 0}

    def occlusion(n: int) -> tuple[Callable[[], object], int]:
        stride = _occlusion_stride(size, window, n)
        windows = ((size - window) // stride + 1) ** 2
        return (
            lambda: ox.Occlusion(model).attribute(
                x,
                sliding_window_shapes=(3, window, window),
                strides=(3, stride, stride),
                perturbations_per_eval=batch_size,
                **quiet,
            )
        ), windows

    methods = {
        "RISE": lambda n: (lambda: RISE(model).attribute(x, n_masks=n, batch_size=batch_size, **quiet), n),
        "Lime": lambda n: (
            lambda: ox.Lime(model).attribute(
                x, feature_mask=cells, n_samples=n, batch_size=batch_size, **quiet
            ),
            n,
        ),
        "KernelShap": lambda n: (
            lambda: ox.KernelShap(model).attribute(
                x, feature_mask=cells, n_samples=n, batch_size=batch_size, **quiet
            ),
            n,
        ),
        "Occlusion": occlusion,
    }
    rows = []
    for name, make in methods.items():
        make(min(counts))[0]()  # warm-up: sessions, arenas
        for n in counts:
            fn, actual = make(n)
            rows.append((name, actual, *peaks(fn)))
            print(
                f"  {name:11s} {actual:>7d} samples  traced {rows[-1][2]:8.1f} MiB  "
                f"RSS +{rows[-1][3]:7.1f} MiB  {rows[-1][4]:7.2f} s",
                flush=True,
            )
    return rows


def markdown(rows: list[tuple]) -> list[str]:
    """RESULTS.md lines: the scan's table, and each method's largest-vs-smallest peak ratio."""
    lines = [
        "## Peak memory against the number of samples",
        "",
        "benchmarks/perturbation_memory.py on the bundled tiny CNN (tiny_cnn) at the benchmark's input "
        "size, batch 32. Traced = peak of numpy allocations (tracemalloc); RSS = growth of the peak "
        "resident set. Target: peak independent of the sample count (largest/smallest within 10%).",
        "",
        "| method | samples | traced peak MiB | RSS peak growth MiB | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, n, traced, rss, seconds in rows:
        lines.append(f"| {name} | {n} | {traced:.1f} | {rss:.1f} | {seconds:.2f} |")
    lines.append("")
    for name in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == name]
        ratio = mine[-1][2] / mine[0][2]
        lines.append(
            f"- {name}: traced peak at {mine[-1][1]} vs {mine[0][1]} samples = {ratio:.3f}× "
            f"({'✓' if ratio <= 1.1 else '✗'} within 10%)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--counts", default="1000,8000")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    counts = tuple(int(v) for v in args.counts.split(","))
    print(f"tiny_cnn, {args.size}x{args.size}, batch_size={args.batch_size}")
    print("\n".join(markdown(scan(args.size, counts, args.batch_size))))
    gen = SmoothMask((args.size, args.size), step=7, sigma=21)
    params = np.random.default_rng(1).random((1, 1, *gen.shape_in)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(5):
        full = gen.generate(params)
        gen.backward(params, full)
    per_iter = (time.perf_counter() - start) / 5
    print(
        f"ExtremalPerturbation mask generator + adjoint, one mask at {args.size}x{args.size} "
        f"(step 7, sigma 21): {per_iter * 1000:.0f} ms per iteration"
    )


if __name__ == "__main__":
    main()
