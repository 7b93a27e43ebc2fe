"""``onnxplain inspect MODEL``: what a model takes and gives, and what can explain it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from onnxplain.cli.common import backend_options, load_from_args
from onnxplain.cli.methods import available
from onnxplain.core.errors import OnnxplainError


def _dims(shape: Any) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def attention_gates(model: Any) -> list[dict[str, Any]]:
    """Multiplicative gates: a Mul of a 4-D feature map by a Sigmoid's output. A gate of
    shape (N, C, 1, 1) is a channel gate (squeeze-and-excitation), (N, 1, H, W) a spatial
    one (as in CBAM)."""
    gates = []
    for node in model.ir.graph:
        if node.op_type != "Mul" or len(node.inputs) != 2:
            continue
        for i, value in enumerate(node.inputs):
            producer = value.producer() if value is not None else None
            if producer is None or producer.op_type not in ("Sigmoid", "HardSigmoid"):
                continue
            other = node.inputs[1 - i]
            gate = model.tensor_shape(value.name) if value.name else None
            fmap = model.tensor_shape(other.name) if other is not None and other.name else None
            kind = "gate"
            if gate and len(gate) == 4:
                if gate[2] == 1 and gate[3] == 1:
                    kind = "channel (squeeze-and-excitation)"
                elif gate[1] == 1:
                    kind = "spatial (CBAM-like)"
            gates.append({"node": node.name, "gate": value.name, "gate_shape": gate,
                          "feature_map": other.name if other is not None else None,
                          "feature_shape": fmap, "output": node.outputs[0].name, "kind": kind})
            break
    return gates


def describe(args: argparse.Namespace) -> dict[str, Any]:
    from onnxplain.backends import registry

    loaded = load_from_args(args)
    model = loaded.model
    try:
        auto = model.find_layer("auto").name
    except OnnxplainError:
        auto = None
    head = model.classifier_head()
    methods = available()
    backends = {}
    chosen = registry.available()
    if args.backend != "auto":
        registry.entry(args.backend)  # an unknown name is an error listing the registered ones
        chosen = {args.backend: chosen[args.backend]}
    for name, caps in chosen.items():
        info: dict[str, Any] = {"capabilities": sorted(c.value for c in caps)}
        try:
            be = model.backend(name, **backend_options(name, args.device, None))
            info["status"] = "ok"
            info["device"] = str(getattr(be, "device", ""))
        except (OnnxplainError, TypeError) as exc:  # TypeError: a factory that needs options
            info["status"] = f"unavailable: {' '.join(str(exc).split())}"
        info["methods"] = [m for m, meth in methods.items() if meth.requires <= caps]
        backends[name] = info
    return {
        "model": loaded.path,
        "opset": model.opset,
        "quantized": model.quantized,
        "producer": getattr(model.ir, "producer_name", None),
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": s.shape} for s in model.inputs],
        # the arrays users pass: NHWC models take (N, H, W, C), NHW ones (N, H, W)
        "layout": model.layout,
        "user_input_shape": model.user_input_shape,
        "outputs": [{"name": s.name, "dtype": str(s.dtype), "shape": s.shape} for s in model.outputs],
        "classes": loaded.classes,
        "preprocess": {"source": loaded.preprocess_source, **loaded.preprocess.model_dump(mode="json")},
        "layers": [{"name": s.name, "op_type": s.op_type, "node": s.node, "shape": s.shape}
                   for s in model.layers()],
        "auto_layer": auto,
        "head": None if head is None else {
            "type": "GAP -> FC", "feature_map": head.feature_map, "pool": head.pool, "linear": head.linear,
            "channels": int(head.weight.shape[1]), "classes": int(head.weight.shape[0]),
        },
        "attention_gates": attention_gates(model),
        "backends": backends,
        "methods": {name: {"class": m.cls.__name__, "family": m.entry.family,
                           "needs": sorted(c.value for c in m.requires),
                           "backends": [b for b, info in backends.items() if name in info["methods"]]}
                    for name, m in methods.items()},
    }


def _print(info: dict[str, Any]) -> None:
    quantized = ", quantized: gradients and LRP read its float simulation" if info["quantized"] else ""
    print(f"model    {info['model']}  (opset {info['opset']}, producer {info['producer'] or '?'}{quantized})")
    for key in ("inputs", "outputs"):
        for s in info[key]:
            yours = f"  (layout {info['layout']}: arrays {_dims(info['user_input_shape'])})" \
                if key == "inputs" and info["layout"] != "NCHW" else ""
            print(f"{key[:-1]:8s} {s['name']}  {s['dtype']}  {_dims(s['shape'])}{yours}")
    if info["classes"]:
        print(f"classes  {', '.join(info['classes'])}")
    pre = {k: v for k, v in info["preprocess"].items() if k != "source"}
    print(f"preprocess ({info['preprocess']['source']}): "
          + ", ".join(f"{k}={v}" for k, v in pre.items()))
    print(f"\nfeature layers ({len(info['layers'])}; * = layer 'auto' for CAM methods):")
    width = max([len(s["name"]) for s in info["layers"]] + [10])
    for s in info["layers"]:
        mark = "*" if s["name"] == info["auto_layer"] else " "
        print(f" {mark} {s['name']:{width}s}  {s['op_type']:18s} {_dims(s['shape'])}")
    head = info["head"]
    if head:
        print(f"\nhead     GAP -> FC: {head['feature_map']} ({head['channels']} channels) -> "
              f"{head['classes']} outputs; CAM applies")
    else:
        print("\nhead     no GAP -> FC head: CAM does not apply (Grad-CAM and the others do)")
    for gate in info["attention_gates"]:
        print(f"gate     {gate['kind']}: {gate['node']} multiplies {gate['feature_map']} "
              f"{_dims(gate['feature_shape'])} by {gate['gate']} {_dims(gate['gate_shape'])}")
    print("\nbackends:")
    for name, b in info["backends"].items():
        where = f" on {b['device']}" if b.get("device") else ""
        print(f"  {name:12s} {b['status']}{where}; can run {', '.join(b['capabilities'])}")
    print("\nmethods (CLI name, class, needs -> backends that can run it):")
    width = max([len(n) for n in info["methods"]] + [8])
    for name, m in info["methods"].items():
        runs = ", ".join(m["backends"]) or "none registered"
        print(f"  {name:{width}s}  {m['class']:22s} {'+'.join(m['needs']):28s} -> {runs}")


def run(args: argparse.Namespace) -> int:
    info = describe(args)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print(info)
    return 0
