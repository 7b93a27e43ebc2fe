"""explain_dataset on the local engine: sources, shards, index, metrics, resuming, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from dataset_helpers import stream_shapes
from PIL import Image

import onnxplain as ox
from onnxplain.cli import main
from onnxplain.cli.common import box_masks, energy_in_mask
from onnxplain.dataset import explain_dataset, read_dataset
from onnxplain.dataset.metrics import energy, pointing_game

QUIET = {"show_progress": False}


def shard_contents(out) -> list[dict]:
    result = read_dataset(out)
    out = []
    for path in result.shard_paths:
        with np.load(path) as data:
            out.append({k: data[k] for k in data.files})
    return out


def test_array_source_gives_the_gradcam_maps_of_direct_calls_and_an_index(
    tmp_path, shapes_model, shapes_batch
):
    x = shapes_batch.images[:10]
    result = explain_dataset(
        shapes_model, "gradcam", x, tmp_path / "out", batch_size=4, shard_size=4, **QUIET
    )
    logits = shapes_model.predict(x)
    expected = ox.GradCAM(shapes_model).attribute(x, target=logits.argmax(1).tolist())
    assert len(result) == 10 and [p.name for p in result.shard_paths] == [
        "shard-00000.npz",
        "shard-00001.npz",
        "shard-00002.npz",
    ]
    # batches of 4 here vs 10 at once: float32 sums in another order
    np.testing.assert_allclose(result.attributions(), expected, atol=1e-5, rtol=1e-5)
    records = result.records()
    assert [r["id"] for r in records] == [str(i) for i in range(10)]
    assert [(r["shard"], r["row"]) for r in records] == [(i // 4, i % 4) for i in range(10)]
    assert [r["prediction"] for r in records] == logits.argmax(1).tolist() == [r["target"] for r in records]
    np.testing.assert_allclose([r["score"] for r in records], logits.max(1), rtol=1e-5)
    lines = (tmp_path / "out" / "index.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == 10
    assert manifest["settings"]["method"] == "gradcam" and len(manifest["settings"]["model_sha256"]) == 64
    assert {r["settings"] for r in records} == {manifest["settings_hash"]}
    pairs = list(result)
    assert len(pairs) == 10 and np.array_equal(pairs[7][1], result.load(7)) and pairs[7][0] == records[7]


def test_folder_list_iterator_and_array_sources_write_the_same_shards(tmp_path, shapes_model, shapes_batch):
    x = shapes_batch.images[:7]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(x):  # names sort in source order
        Image.fromarray(np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(
            folder / f"im{i:02d}.png"
        )
    (folder / "notes.txt").write_text("not an image")
    pixels = np.stack(
        [np.asarray(Image.open(folder / f"im{i:02d}.png")) for i in range(7)]
    )  # uint8 (N, H, W, 3)
    kw = dict(batch_size=3, shard_size=5, **QUIET)
    model_path = ox.examples.shapes_model_path()  # its stored preprocess spec reads the PNGs
    by_folder = explain_dataset(model_path, "saliency", folder, tmp_path / "a", **kw)
    by_list = explain_dataset(model_path, "saliency", sorted(folder.glob("*.png")), tmp_path / "b", **kw)
    explain_dataset(model_path, "saliency", pixels, tmp_path / "c", **kw)
    explain_dataset(model_path, "saliency", iter(list(pixels)), tmp_path / "d", **kw)
    assert [r["id"] for r in by_folder.records()] == [f"im{i:02d}.png" for i in range(7)]
    assert by_list.records()[0]["id"].endswith("im00.png")
    ref = shard_contents(tmp_path / "a")
    for other in "bcd":
        got = shard_contents(tmp_path / other)
        assert len(got) == len(ref) == 2
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g["attributions"], r["attributions"])  # same batches: exact
            np.testing.assert_array_equal(g["predictions"], r["predictions"])


def test_fixed_and_per_image_targets(tmp_path, shapes_model, shapes_batch):
    x = shapes_batch.images[:6]
    one = explain_dataset(shapes_model, ox.GradCAM, x, tmp_path / "one", target=2, **QUIET)
    assert {r["target"] for r in one.records()} == {2}
    labels = shapes_batch.labels[:6]
    per = explain_dataset(shapes_model, "gradcam", x, tmp_path / "per", target=labels, **QUIET)
    assert [r["target"] for r in per.records()] == labels.tolist()
    np.testing.assert_allclose(
        per.attributions(), ox.GradCAM(shapes_model).attribute(x, target=labels.tolist()), atol=1e-6
    )
    with pytest.raises(ox.InputValidationError, match="target"):
        explain_dataset(shapes_model, "gradcam", x, tmp_path / "bad", target="dog", **QUIET)


def test_pointing_game_and_energy_match_their_definitions(tmp_path, shapes_model, shapes_batch):
    maps = np.zeros((3, 8, 8))
    maps[0, 2, 2] = 1.0  # on the object
    maps[1, 7, 7] = 1.0  # off it, 5 rows and columns away
    maps[2, 7, 7], maps[2, 3, 3] = 3.0, 1.0  # 1/4 of the energy inside
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 1:4, 1:4] = True
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(maps, masks, tolerance=5.7).tolist() == [1.0, 1.0, 1.0]  # √(4²+4²) ≈ 5.66
    np.testing.assert_allclose(energy(maps, masks), [1.0, 0.0, 0.25])
    # against the command line's energy-based pointing game, on real Grad-CAM maps and boxes
    x, m = shapes_batch.images[:8], shapes_batch.masks[:8]
    result = explain_dataset(shapes_model, "gradcam", x, tmp_path / "m", masks=box_masks(m), **QUIET)
    expected = energy_in_mask(result.attributions(), box_masks(m))
    np.testing.assert_allclose([r["energy"] for r in result.records()], expected, atol=1e-9)
    assert np.mean([r["pointing_game"] for r in result.records()]) >= 0.75  # the model looks at the shapes


class Interrupted(RuntimeError):
    pass


def failing_after(items, n):
    for i, item in enumerate(items):
        if i == n:
            raise Interrupted(f"stopped at image {n}")
        yield item


def test_a_resumed_run_skips_finished_shards_and_redoes_a_partial_one(tmp_path, shapes_model, monkeypatch):
    calls = []
    original = ox.GradCAM.attribute

    def counting(self, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(ox.GradCAM, "attribute", counting)
    kw = dict(batch_size=4, shard_size=8, **QUIET)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):  # dies inside shard 2, after 2 full shards
        explain_dataset(shapes_model, "gradcam", failing_after(stream_shapes(40), 20), out, **kw)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.npz", "shard-00001.npz"]
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    assert sum(calls) == 16
    times = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    # a shard file written but not recorded (killed between the write and the manifest)
    (out / "shard-00002.npz").write_bytes(b"half a shard")
    calls.clear()
    result = explain_dataset(shapes_model, "gradcam", stream_shapes(40), out, **kw)
    assert result.stats.skipped_shards == 2 and result.stats.computed_shards == 3
    assert sum(calls) == 24  # only images 16..39 were explained again
    assert {p: out.joinpath(p).stat().st_mtime_ns for p in times} == times
    fresh = explain_dataset(shapes_model, "gradcam", stream_shapes(40), tmp_path / "fresh", **kw)
    np.testing.assert_array_equal(result.attributions(), fresh.attributions())
    # a finished run is a no-op; a damaged shard (checksum mismatch) is redone
    calls.clear()
    with open(out / "shard-00001.npz", "r+b") as f:
        f.seek(200)
        f.write(b"\0\1\2\3")
    again = explain_dataset(shapes_model, "gradcam", stream_shapes(40), out, **kw)
    assert again.stats.computed_shards == 1 and sum(calls) == 8
    np.testing.assert_array_equal(again.attributions(), fresh.attributions())


def test_other_settings_in_the_output_folder_need_overwrite(tmp_path, shapes_model, shapes_batch):
    x = shapes_batch.images[:4]
    out = tmp_path / "o"
    explain_dataset(shapes_model, "gradcam", x, out, **QUIET)
    with pytest.raises(ox.InputValidationError, match=r"other settings \(differing: class, method\)"):
        explain_dataset(shapes_model, "saliency", x, out, **QUIET)
    result = explain_dataset(shapes_model, "saliency", x, out, overwrite=True, **QUIET)
    assert result.settings["method"] == "saliency" and result.load(0).shape == (3, 64, 64)


def test_bad_arguments_are_named(tmp_path, shapes_model, shapes_batch):
    x = shapes_batch.images[:2]
    with pytest.raises(ox.InputValidationError, match="batch_size"):
        explain_dataset(shapes_model, "gradcam", x, tmp_path, batch_size=0)
    with pytest.raises(ox.InputValidationError, match="engine"):
        explain_dataset(shapes_model, "gradcam", x, tmp_path, engine="spark")
    with pytest.raises(ox.InputValidationError, match="unknown method"):
        explain_dataset(shapes_model, "no-such-method", x, tmp_path)
    with pytest.raises(ox.InputValidationError, match="need masks"):
        explain_dataset(shapes_model, "gradcam", x, tmp_path, metrics=["pointing_game"])
    with pytest.raises(ox.InputValidationError, match="not a folder"):
        explain_dataset(shapes_model, "gradcam", str(tmp_path / "missing"), tmp_path)
    with pytest.raises(ox.InputValidationError, match="instance"):
        explain_dataset(shapes_model, ox.GradCAM(shapes_model), x, tmp_path, engine="ray")


def test_cli_explain_dataset_writes_shards_and_prints_a_summary(tmp_path, shapes_batch, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(shapes_batch.images[:6]):
        Image.fromarray(np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    args = [
        "explain-dataset",
        ox.examples.shapes_model_path(),
        str(folder),
        "--method",
        "gradcam",
        "--out",
        str(tmp_path / "out"),
        "--batch-size",
        "2",
        "--shard-size",
        "2",
        "--limit",
        "5",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "explained 5 images with gradcam on local: 3 shards computed, 0 already done" in printed
    assert "predictions: " in printed and "index.jsonl" in printed
    assert len(read_dataset(tmp_path / "out").records()) == 5
    assert main(args) == 0  # again: everything is skipped
    assert "0 shards computed, 3 already done" in capsys.readouterr().out
    assert main([*args[:3], "--method", "occlusion", *args[5:]]) == 2
    assert "other settings" in capsys.readouterr().err
    assert os.path.isfile(tmp_path / "out" / "manifest.json")


def test_parquet_index_on_request_holds_the_same_records(tmp_path, shapes_model, shapes_batch):
    pq = pytest.importorskip("pyarrow.parquet")
    result = explain_dataset(
        shapes_model,
        "gradcam",
        shapes_batch.images[:5],
        tmp_path,
        parquet=True,
        masks=shapes_batch.masks[:5],
        **QUIET,
    )
    assert pq.read_table(tmp_path / "index.parquet").to_pylist() == result.records()
