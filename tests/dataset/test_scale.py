"""2,000 images of the bundled data set through Grad-CAM: memory stays flat with the
number of images, and Ray (a local cluster, one shard per actor) writes the same shards as
the local engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from dataset_helpers import stream_shapes

from onnxplain.dataset import explain_dataset, read_dataset

pytestmark = pytest.mark.slow

BATCH, SHARD = 50, 250

# Run in a fresh interpreter, so that the peak resident memory is this run's alone. The
# images are generated one at a time (image i of shapes.generate(n, seed=5)): the source
# never holds the data set.
RUN = """
import json, resource, sys, time
import numpy as np
import onnxplain as ox
from onnxplain.data import shapes
from onnxplain.dataset import explain_dataset

def stream(n, seed=5):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, _ = shapes.render(int(rng.integers(len(shapes.CLASSES))), rng, shapes.IMAGE_SIZE, True)
        yield image.transpose(2, 0, 1).astype(np.float32)

n, out = int(sys.argv[1]), sys.argv[2]
model = ox.examples.shapes_model()
start = time.perf_counter()
result = explain_dataset(model, "gradcam", stream(n), out, batch_size=BATCH, shard_size=SHARD,
                         show_progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"n": len(result), "seconds": seconds,
                  "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""".replace("BATCH", str(BATCH)).replace("SHARD", str(SHARD))


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """The local engine on 500 and on 2,000 images, each in its own process."""
    runs = {}
    for n in (500, 2000):
        out = tmp_path_factory.mktemp(f"local{n}")
        # two malloc arenas: less allocator noise in the resident size from torch's threads
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
        done = subprocess.run(
            [sys.executable, "-c", RUN, str(n), str(out)],
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[n] = {**json.loads(done.stdout.strip().splitlines()[-1]), "out": out}
    return runs


def test_peak_memory_is_flat_from_500_to_2000_images(local_runs):
    small, large = local_runs[500], local_runs[2000]
    mib = 1 << 20
    print(
        f"local engine: 500 images {small['seconds']:.1f} s, peak RSS {small['max_rss'] / mib:.1f} MiB; "
        f"2000 images {large['seconds']:.1f} s, peak RSS {large['max_rss'] / mib:.1f} MiB"
    )
    assert small["n"] == 500 and large["n"] == 2000
    # Four times the images, the same peak within 20 MiB (measured: +5 and +9 MiB in two runs). Keeping
    # the 1,500 extra maps would add 23 MiB, their inputs 70 MiB; one shard of 250 is ~16 MiB.
    assert large["max_rss"] <= small["max_rss"] + 20 * mib


def test_ray_writes_the_same_shards_as_the_local_engine(local_runs, ray_session, tmp_path):
    start = time.perf_counter()
    result = explain_dataset(
        _model_path(),
        "gradcam",
        stream_shapes(500),
        tmp_path / "ray",
        engine="ray",
        num_workers=2,
        batch_size=BATCH,
        shard_size=SHARD,
        show_progress=False,
    )
    seconds = time.perf_counter() - start
    local = read_dataset(local_runs[500]["out"])
    print(
        f"500 images: local engine {local_runs[500]['seconds']:.1f} s, Ray (2 actors, local cluster) "
        f"{seconds:.1f} s"
    )
    assert result.stats.engine == "ray" and len(result) == 500 and len(result.shard_paths) == 2
    assert result.settings == local.settings
    worst = 0.0
    for mine, theirs in zip(result.shard_paths, local.shard_paths):
        with np.load(mine) as a, np.load(theirs) as b:
            assert a.files == b.files
            for key in a.files:
                if key == "attributions":
                    worst = max(worst, float(np.abs(a[key] - b[key]).max()))
                else:
                    np.testing.assert_array_equal(a[key], b[key])
    print(f"largest difference between the engines' maps: {worst:g}")
    assert worst <= 1e-6  # the same batches on the same backend: identical in practice (0 measured)
    assert result.records() == local.records()


def _model_path() -> str:
    import onnxplain as ox

    return ox.examples.shapes_model_path()


def test_ray_reads_files_in_its_workers_and_finishes_a_local_run(ray_session, tmp_path):
    """Image files go to the actors as paths; Ray resumes what the local engine started and
    the folder ends up as one uninterrupted local run would leave it."""
    from PIL import Image

    import onnxplain as ox
    from onnxplain.dataset.sources import PathSource

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(ox.examples.shapes_dataset(12, seed=44).images):
        pixels = np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    kw = dict(batch_size=3, shard_size=4, show_progress=False)
    local = explain_dataset(_model_path(), "gradcam", folder, tmp_path / "local", **kw)
    mixed = tmp_path / "mixed"
    first8 = PathSource(sorted(folder.glob("*.png"))[:8], root=folder)  # the folder, cut short
    explain_dataset(_model_path(), "gradcam", first8, mixed, **kw)
    (mixed / "shard-00001.npz").unlink()  # lost: Ray must redo shard 1 and do shard 2
    done = explain_dataset(_model_path(), "gradcam", folder, mixed, engine="ray", num_workers=1, **kw)
    assert (done.stats.skipped_shards, done.stats.computed_shards) == (1, 2)
    # Ray runs each actor's torch on one thread: float32 sums may differ in the last bit
    np.testing.assert_allclose(done.attributions(), local.attributions(), rtol=1e-5, atol=1e-6)
    assert [r["id"] for r in done.records()] == [f"{i:02d}.png" for i in range(12)]
