"""The output of :func:`~onnxplain.dataset.explain_dataset`: shards, a manifest, an index.

An output folder holds

- ``shard-00000.npz``, ``shard-00001.npz``, ...: ``attributions`` (n, ...) float32, and per
  row ``ids`` (str), ``index`` (the image's position in the source), ``targets``,
  ``predictions``, ``scores`` (the model output for the target) and one array per metric;
- ``manifest.json``: the settings (method, its keyword arguments, the model's SHA-256,
  target, shard size) and each finished shard's row count and SHA-256. A shard counts as
  done only once it is listed here with a matching checksum, so a run interrupted while
  writing a shard rewrites it;
- ``index.jsonl``: one JSON line per image (``id``, ``index``, ``shard``, ``row``,
  ``target``, ``prediction``, ``score``, metrics, ``settings`` = the settings' hash),
  rebuilt from the shards at the end of a run, and on request ``index.parquet`` with
  the same columns (needs pyarrow).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError

FORMAT = "onnxplain-dataset/1"
MANIFEST = "manifest.json"
INDEX = "index.jsonl"
PARQUET = "index.parquet"
_META = ("ids", "index", "targets", "predictions", "scores")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.npz"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class Store:
    """Reads and writes one output folder; the local and the Ray engine share it."""

    def __init__(self, out: str | os.PathLike, settings: dict, shard_size: int) -> None:
        self.out = Path(out)
        self.settings = settings
        self.shard_size = shard_size
        self.shards: dict[int, dict] = {}

    # -- opening -------------------------------------------------------------------
    def open(self, resume: bool, overwrite: bool) -> dict[int, int]:
        """Prepare the folder; returns the finished shards to skip (shard → rows)."""
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(self.out)
        if manifest is not None and overwrite:
            self.clear()
            manifest = None
        if manifest is not None:
            old = manifest.get("settings", {})
            if old != self.settings or manifest.get("shard_size") != self.shard_size:
                changed = sorted(
                    k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k)
                )
                if manifest.get("shard_size") != self.shard_size:
                    changed.append("shard_size")
                raise InputValidationError(
                    f"out: {self.out} holds results made with other settings (differing: "
                    f"{', '.join(changed)}); choose another folder or pass overwrite=True to replace them"
                )
            if resume:
                for key, entry in manifest.get("shards", {}).items():
                    path = self.out / entry["file"]
                    if path.is_file() and sha256_file(path) == entry["sha256"]:
                        self.shards[int(key)] = entry
        for stale in self.out.glob("shard-*.npz.tmp*"):
            stale.unlink()
        self._save_manifest(complete=False)
        return {k: v["count"] for k, v in self.shards.items()}

    def clear(self) -> None:
        """Remove this package's files (shards, manifest, index) from the folder."""
        for path in [
            *self.out.glob("shard-*.npz*"),
            self.out / MANIFEST,
            self.out / INDEX,
            self.out / PARQUET,
        ]:
            if path.exists():
                path.unlink()

    # -- writing -------------------------------------------------------------------
    def write_shard(self, shard: int, attributions: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        """Write one shard atomically (temporary file, then rename), then record it."""
        path = self.out / shard_name(shard)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, attributions=np.asarray(attributions, dtype=np.float32), **meta)
        os.replace(tmp, path)
        self.shards[shard] = {"file": path.name, "count": int(len(attributions)), "sha256": sha256_file(path)}
        self._save_manifest(complete=False)

    def _save_manifest(self, complete: bool) -> None:
        _write_json_atomic(
            self.out / MANIFEST,
            {
                "format": FORMAT,
                "settings": self.settings,
                "settings_hash": settings_hash(self.settings),
                "shard_size": self.shard_size,
                "complete": complete,
                "count": int(sum(e["count"] for e in self.shards.values())),
                "shards": {str(k): self.shards[k] for k in sorted(self.shards)},
            },
        )

    def finish(self, total_shards: int, parquet: bool = False) -> DatasetResult:
        """Drop shards beyond the source's end, write the index, mark the run complete."""
        for k in [k for k in self.shards if k >= total_shards]:
            (self.out / self.shards.pop(k)["file"]).unlink(missing_ok=True)
        missing = [k for k in range(total_shards) if k not in self.shards]
        if missing:
            raise RuntimeError(f"shards {missing} were not written")
        self._save_manifest(complete=True)
        result = DatasetResult(self.out)
        write_index(result, parquet)
        return result


def read_manifest(out: Path) -> dict | None:
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputValidationError(
            f"{path} is not valid JSON ({exc.msg}); remove it or pass overwrite=True"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputValidationError(f"{path} is not an onnxplain data set manifest ({FORMAT})")
    return data


def _records(result: DatasetResult) -> Iterator[dict]:
    tag = result.manifest["settings_hash"]
    for shard in result.shard_numbers:
        with np.load(result.out / result.manifest["shards"][str(shard)]["file"]) as data:
            meta = {k: data[k] for k in data.files if k != "attributions"}
        metrics = [k for k in meta if k.startswith("metric_")]
        for row in range(len(meta["ids"])):
            record = {
                "id": str(meta["ids"][row]),
                "index": int(meta["index"][row]),
                "shard": shard,
                "row": row,
                "target": int(meta["targets"][row]),
                "prediction": int(meta["predictions"][row]),
                "score": float(meta["scores"][row]),
            }
            for k in metrics:
                record[k[len("metric_") :]] = float(meta[k][row])
            record["settings"] = tag
            yield record


def write_index(result: DatasetResult, parquet: bool = False) -> None:
    """``index.jsonl`` (and with ``parquet`` ``index.parquet``), rebuilt from the shards'
    metadata, never from their attributions."""
    tmp = result.out / (INDEX + ".tmp")
    with open(tmp, "w") as f:
        for record in _records(result):
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, result.out / INDEX)
    if not parquet:
        return
    try:
        import pyarrow.json as pj
        import pyarrow.parquet as pq
    except ImportError:
        raise InputValidationError("parquet=True needs pyarrow (pip install pyarrow)") from None
    pq.write_table(pj.read_json(result.out / INDEX), result.out / PARQUET)  # no Python objects per row


@dataclass
class DatasetResult:
    """A finished (or partly finished) output folder, read lazily.

    ``len(result)`` images; ``result.records()`` the index as dicts; iterating yields
    ``(record, attribution)`` pairs one shard at a time; ``result.load(i)`` one map by
    position or id; ``result.shard(k)`` one shard's attributions; ``result.maps()`` the
    shards' attribution arrays in order (memory: one shard at a time).
    """

    out: Path

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        manifest = read_manifest(self.out)
        if manifest is None:
            raise InputValidationError(f"{self.out} holds no onnxplain data set results (no {MANIFEST})")
        self.manifest = manifest
        self._index: list[dict] | None = None

    @property
    def settings(self) -> dict:
        return self.manifest["settings"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def shard_numbers(self) -> list[int]:
        return sorted(int(k) for k in self.manifest["shards"])

    @property
    def shard_paths(self) -> list[Path]:
        return [self.out / self.manifest["shards"][str(k)]["file"] for k in self.shard_numbers]

    @property
    def index_path(self) -> Path:
        return self.out / INDEX

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"DatasetResult({str(self.out)!r}, {self.count} images in {len(self.shard_numbers)} shards, "
            f"method={self.settings.get('method')!r}, {state})"
        )

    def records(self) -> list[dict]:
        """The index: one dict per image, in source order."""
        if self._index is None:
            if self.index_path.is_file():
                with open(self.index_path) as f:
                    self._index = [json.loads(line) for line in f if line.strip()]
            else:
                self._index = list(_records(self))
        return self._index

    def shard(self, k: int) -> np.ndarray:
        """The attributions of shard ``k`` (n, ...) float32."""
        with np.load(self.out / self.manifest["shards"][str(k)]["file"]) as data:
            return data["attributions"]

    def maps(self) -> Iterator[np.ndarray]:
        """Each shard's attributions, in order."""
        for k in self.shard_numbers:
            yield self.shard(k)

    def __iter__(self) -> Iterator[tuple[dict, np.ndarray]]:
        records = iter(self.records())
        for attributions in self.maps():
            for a in attributions:
                yield next(records), a

    def load(self, key: int | str) -> np.ndarray:
        """One attribution, by position in the source (int) or id (str)."""
        records = self.records()
        if isinstance(key, str):
            found = [r for r in records if r["id"] == key]
            if not found:
                raise InputValidationError(f"no image with id {key!r} in {self.out}")
            record = found[0]
        else:
            if not -len(records) <= key < len(records):
                raise InputValidationError(f"image {key} is out of range: there are {len(records)}")
            record = records[key]
        return self.shard(record["shard"])[record["row"]]

    def attributions(self) -> np.ndarray:
        """Every attribution in one array (N, ...): memory grows with the data set."""
        return np.concatenate(list(self.maps()))


def read_dataset(out: str | os.PathLike) -> DatasetResult:
    """Open the results :func:`~onnxplain.dataset.explain_dataset` wrote to ``out``."""
    return DatasetResult(Path(out))
