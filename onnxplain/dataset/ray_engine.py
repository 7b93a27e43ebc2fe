"""The Ray engine of :func:`~onnxplain.dataset.explain_dataset` (``engine="ray"``).

The pending shards are cut into the same batches the local engine uses (batch ``b`` of
shard ``k`` covers images ``k·shard_size + b·batch_size`` onwards) and sent to Ray Data
as one row per batch. ``map_batches`` runs them on a pool of actors, each of which loads
the model and builds the method once (an ONNX Runtime session or torch module per actor,
a GPU each when the cluster has them); image files are read and preprocessed in the
actors, arrays and iterator items are preprocessed by the driver. The driver gathers the
batches of each shard and writes it with the same writer as the local engine, so the
files are the same. Shards go to Ray ``chunk_shards`` at a time, which bounds the
driver's memory and lets an iterator source stream.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError


class _Worker:
    """A Ray Data actor: the model and method are built once, then batches flow through."""

    def __init__(self, model_ref: list, spec: Any, rule: Any, loader: Any) -> None:
        import ray

        from onnxplain.core.loading import load

        self.model = load(ray.get(model_ref[0]))
        self.spec = spec
        self.rule = rule
        self.loader = loader
        self.instance = spec.build(self.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from onnxplain.dataset.engine import explain_batch

        results = []
        for payload in batch["payload"]:
            job = pickle.loads(payload)
            x = self.loader(job["paths"]) if "paths" in job else job["x"]
            out = explain_batch(self.model, self.instance, self.spec, self.rule, x, job["index"])
            results.append(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
        return {"shard": batch["shard"], "batch": batch["batch"], "result": np.array(results, dtype=object)}


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputValidationError(
            "engine='ray' needs Ray Data: pip install 'onnxplain[ray]' (or pip install 'ray[data]')"
        ) from None
    return ray


def run_ray(
    plan: Any,
    address: str | None = None,
    num_workers: int | None = None,
    use_gpu: bool | None = None,
    chunk_shards: int | None = None,
) -> tuple[int, Any]:
    """Run ``plan`` on Ray; returns (number of shards in the source, run statistics)."""
    from onnxplain.dataset.engine import RunStats
    from onnxplain.dataset.sources import PathSource

    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_workers or 2, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if use_gpu is None:
            use_gpu = gpus > 0
        if use_gpu and gpus == 0:
            raise InputValidationError("use_gpu=True, but the Ray cluster has no GPUs")
        workers = num_workers or max(1, gpus if use_gpu else int(resources.get("CPU", 1)))
        chunk = chunk_shards or max(8, 2 * workers)
        source = plan.model.source
        payload = (
            Path(source).read_bytes()
            if isinstance(source, str) and os.path.isfile(source)
            else plan.model.serialized()
        )
        model_ref = ray.put(payload)
        spec = plan.spec
        if use_gpu:
            from onnxplain.cli.common import backend_options

            spec.backend_options = {
                **spec.backend_options,
                **backend_options(spec.backend, "cuda", plan.batch_size),
            }
        remote = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
        read_in_workers = isinstance(plan.source, PathSource)

        stats = RunStats(engine="ray")
        shards = 0
        bar = plan.progress("explain-dataset (ray)")
        pending: list = []

        def run_chunk() -> None:
            rows, meta = [], {}
            for item in pending:
                index = np.arange(item.start, item.start + len(item))
                starts = list(range(0, len(item), plan.batch_size))
                meta[item.shard] = (item, index, len(starts), {})
                for b, s in enumerate(starts):
                    part = item.items[s : s + plan.batch_size]
                    job = {"index": index[s : s + plan.batch_size]}
                    if read_in_workers:
                        job["paths"] = [str(p) for p in part]
                    else:
                        job["x"] = plan.loader(part)
                    rows.append({"shard": item.shard, "batch": b, "payload": pickle.dumps(job)})
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.map_batches(
                _Worker,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers),
                batch_format="numpy",
                fn_constructor_kwargs={
                    "model_ref": [model_ref],
                    "spec": spec,
                    "rule": plan.rule,
                    "loader": plan.loader,
                },
                **remote,
            )
            for row in ds.iter_rows():
                item, index, n_batches, parts = meta[int(row["shard"])]
                out = pickle.loads(row["result"])
                parts[int(row["batch"])] = out
                bar.update(len(out["targets"]))
                if len(parts) == n_batches:
                    plan.finish_shard(item, item.shard, index, item.ids, [parts[b] for b in range(n_batches)])
                    del meta[item.shard]
                    stats.computed_shards += 1
                    stats.computed_images += len(item)
            if meta:
                raise RuntimeError(f"Ray returned no results for shards {sorted(meta)}")
            pending.clear()

        try:
            for item in plan.source.shards(plan.store.shard_size, plan.skip):
                if isinstance(item, int):
                    shards = item + 1
                    stats.skipped_shards += 1
                    stats.skipped_images += plan.skip[item]
                    bar.update(plan.skip[item])
                    continue
                shards = item.shard + 1
                pending.append(item)
                if len(pending) >= chunk:
                    run_chunk()
            if pending:
                run_chunk()
        finally:
            bar.close()
        return shards, stats
    finally:
        if started:
            ray.shutdown()
