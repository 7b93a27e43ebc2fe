"""Every method on many architectures: a by-hand check that onnxplain takes models as they come.

    .venv/bin/python benchmarks/zoo.py [--archs resnet18,vit,timm:resnest14d,keras:ResNet50,hf:cvt,...]
                                       [--exporter auto|dynamo|legacy] [--opset N]
                                       [--quantize qdq|qoperator|dynamic] [--methods saliency,...]
                                       [--out benchmarks/ZOO.md]

Each architecture (torchvision, seeded random weights, 10 classes; ``vit`` and ``swin`` are
small configurations of torchvision's VisionTransformer and SwinTransformer) is exported
with ``onnxplain.adapters.torch.export`` and explained with every method the command line
knows (``onnxplain.cli.methods.available``, the slow optimisations left out), at small
settings (``SMALL``), on two 64×64 images (96 for Inception), target class 1. A cell is the
time in seconds, or the error type and the start of its message: a refusal of our own
(``InputValidationError``, ``UnsupportedOperatorError``) names what the method needs;
any other exception is a bug. Writes a markdown table (default ``benchmarks/ZOO.md``).
``timm:NAME`` (or ``--archs timm``, the list ``TIMM``) builds timm's architecture NAME
(``pip install -e ".[zoo]"``; random weights, nothing downloaded), at 64×64 where it takes
``img_size``. ``keras:NAME`` (or ``--archs keras``, the list ``KERAS``) is
``keras.applications.NAME`` converted by tf2onnx, with channels-last inputs. ``hf:TYPE`` (or
``--archs hf``, the list ``HF``) is Hugging Face's image classifier of model type TYPE
(``pip install transformers``; random weights, nothing downloaded), shrunk (two layers
where it has layers, one block per stage), at 64×64 (128 for Swin), exported with its
``ModelOutput`` as it comes.
``--quantize``: explain the export quantized by ``onnxruntime.quantization`` instead
(static, calibrated on the two images, per channel; or dynamic).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

import onnxplain as ox
from onnxplain.cli.methods import available

ARCHS = ("resnet18,resnext50_32x4d,mobilenet_v3_large,efficientnet_b0,densenet121,squeezenet1_1,"
         "shufflenet_v2_x0_5,regnet_y_400mf,mnasnet0_5,googlenet,inception_v3,vgg11_bn,alexnet,"
         "convnext_tiny,vit,swin")
#: timm architectures, one or two of each family, for what torchvision lacks: split and selective
#: kernel attention, runtime weight standardisation, MLP-only and pooling-only mixers, distillation
#: and class-attention heads, convolutional and hybrid transformers, relative and rotary position
#: codes, recurrent token mixers, reparameterised blocks.
TIMM = ("resnest14d,skresnet18,ghostnet_100,rexnet_100,hrnet_w18_small,dla34,dpn68,cspresnet50,nf_resnet26,"
        "repvgg_a0,tresnet_m,mixnet_s,res2net50_14w_8s,xception41,mixer_s16_224,resmlp_12_224,gmlp_ti16_224,"
        "deit_tiny_distilled_patch16_224,cait_xxs24_224,levit_128s,pit_ti_224,coat_lite_tiny,"
        "twins_pcpvt_small,xcit_nano_12_p16_224,mobilevit_xxs,poolformer_s12,edgenext_xx_small,"
        "maxvit_nano_rw_256,fastvit_t8,efficientvit_b0,eva02_tiny_patch14_224,davit_tiny,convnextv2_atto,"
        "regnetz_b16,lcnet_050,hgnetv2_b0,focalnet_tiny_srf,gcvit_xxtiny,visformer_tiny,sequencer2d_s,"
        "volo_d1_224,selecsls42b,mobilenetv4_conv_small,mobileone_s0,inception_next_tiny,"
        "starnet_s1,beit_base_patch16_224,swinv2_cr_tiny_224,nest_tiny,ese_vovnet19b_dw,ecaresnet26t,rdnet_tiny,"
        "mambaout_femto,efficientvit_m0,tiny_vit_5m_224,hiera_tiny_224,vitamin_small_224")
#: Keras applications, converted by tf2onnx (TensorFlow backend; ``pip install -e ".[tensorflow]"``).
KERAS = ("MobileNetV2,MobileNetV3Small,MobileNetV3Large,EfficientNetB0,EfficientNetV2B0,ResNet50,ResNet50V2,"
         "DenseNet121,InceptionV3,Xception,NASNetMobile,VGG16,ConvNeXtTiny")
#: Hugging Face transformers' image classifiers (model types), as ``AutoConfig`` builds them.
HF = ("vit,deit,beit,data2vec-vision,dinov2,dinov2_with_registers,ijepa,vit_msn,bit,convnext,convnextv2,cvt,"
      "efficientnet,focalnet,hgnet_v2,hiera,levit,mobilenet_v1,mobilenet_v2,mobilevit,mobilevitv2,poolformer,"
      "pvt,pvt_v2,regnet,resnet,segformer,swiftformer,swin,swinv2,textnet")
#: Keyword arguments shrunk so that every method takes seconds, where a method takes them.
SMALL = {"n_steps": 4, "nt_samples": 2, "n_masks": 64, "n_samples": 40}
#: Methods that explain gates, not a target.
NO_TARGET = {"attention-maps"}


def network(arch: str) -> tuple[torch.nn.Module, int]:
    """The torch module (eval mode, seeded) and its input size."""
    torch.manual_seed(0)
    if arch.startswith("timm:"):
        import timm

        try:
            net = timm.create_model(arch[5:], num_classes=10, img_size=64).eval()
        except TypeError:  # no img_size: fully convolutional
            net = timm.create_model(arch[5:], num_classes=10).eval()
        heads = net.get_classifier()  # a distilled model has two: (head, head_dist)
        with torch.no_grad():  # some initialise their classifier to zero: every score would be 0
            for head in heads if isinstance(heads, tuple) else (heads,):
                for param in head.parameters():
                    if not param.any():
                        param.normal_(0, 0.05)
        return net, 64
    if arch.startswith("hf:"):
        return hf_network(arch[3:])
    if arch == "vit":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(image_size=64, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                 mlp_dim=128, num_classes=10).eval(), 64
    if arch == "swin":
        from torchvision.models.swin_transformer import SwinTransformer

        return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                               window_size=[4, 4], num_classes=10).eval(), 64
    kwargs: dict = {"num_classes": 10}
    if arch in ("inception_v3", "googlenet"):
        kwargs.update(aux_logits=False, init_weights=True)
    return getattr(torchvision.models, arch)(**kwargs).eval(), 96 if arch == "inception_v3" else 64


def hf_network(model_type: str) -> tuple[torch.nn.Module, int]:
    """Hugging Face's image classifier of ``model_type`` (random weights), shrunk, and its
    input size. The module returns its ``ModelOutput``, as users have it."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    cfg = transformers.AutoConfig.for_model(model_type, num_labels=10)
    if not hasattr(cfg, "hidden_sizes"):  # transformers: two small layers
        for key, value in {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                           "num_attention_heads": 2}.items():
            if isinstance(getattr(cfg, key, None), int):
                setattr(cfg, key, value)
    if isinstance(getattr(cfg, "depths", None), (list, tuple)):  # one block per stage
        cfg.depths = [1] * len(cfg.depths)
    size = 128 if "swin" in model_type else 64  # Swin: four stages of 4×4 windows
    if getattr(cfg, "image_size", None) is not None:
        cfg.image_size = size if isinstance(cfg.image_size, int) else [size] * len(cfg.image_size)
    if isinstance(getattr(cfg, "window_size", None), int):
        cfg.window_size = 4
    if model_type == "efficientnet":  # its default configuration is B7: B0
        cfg.width_coefficient, cfg.depth_coefficient, cfg.hidden_dim = 1.0, 1.0, 1280
    name = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES[model_type]
    torch.manual_seed(0)
    net = getattr(transformers, name if isinstance(name, str) else name[0])(cfg).eval()
    # Hugging Face initialises convolutions and BatchNorm scales with std 0.02 (for pretrained
    # weights to replace): through a deep CNN the map vanishes or saturates a ReLU6. BatchNorms
    # take the statistics of random images (two batches in training mode), as trained ones would.
    with torch.no_grad():
        norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for norm in norms:
            norm.reset_parameters()
            norm.momentum = None  # a cumulative average
        if norms:
            net.train()
            for seed in (10, 11):
                net(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed)))
            net.eval()
        for key, param in net.named_parameters():  # a zero classifier: every score would be 0
            if key.startswith("classifier") and not param.any():
                param.normal_(0, 0.05)
    return net, size


def keras_application(name: str, opset: int | None) -> tuple[ox.Model, np.ndarray]:
    """``keras.applications.<name>`` (random weights, 10 classes, logits), converted by
    tf2onnx through the TensorFlow adapter, and two channels-last 64×64 images (96×96
    for the Inceptions and Xception)."""
    import os

    from onnxplain._compat import triton_before_tensorflow

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    triton_before_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    size = 96 if name in ("InceptionV3", "InceptionResNetV2", "Xception") else 64
    net = getattr(keras.applications, name)(weights=None, classes=10, input_shape=(size, size, 3),
                                            classifier_activation=None)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    return ox.adapters.tensorflow.export(net, x, opset=opset), x


def explain(model: ox.Model, x: np.ndarray, only: set[str] | None = None) -> dict[str, str]:
    """Every method's cell for one model (the methods in ``only``, when given)."""
    cells = {}
    for name, method in available().items():
        if method.entry.slow or (only and name not in only):
            continue
        start = time.perf_counter()
        try:
            obj = method.cls(model, **method.init_kwargs(x.shape, model.layout))
            kwargs = method.attribute_kwargs(x.shape, model.layout)
            kwargs.update({k: v for k, v in SMALL.items() if k in kwargs})
            if name not in NO_TARGET:
                kwargs["target"] = 1
            out = obj.attribute(x, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            parts = out.values() if isinstance(out, dict) else [out]  # AttentionMaps: gate → values
            ok = all(np.isfinite(np.asarray(p)).all() for p in parts)
            cells[name] = f"{time.perf_counter() - start:.1f}" if ok else "non-finite"
        except Exception as exc:  # a row of the table, not a crash of the sweep
            message = str(exc).split(";")[0].replace("|", "/")[:90]
            cells[name] = f"**{type(exc).__name__}**: {message}"
    return cells


def quantized(model: ox.Model, x: np.ndarray, form: str) -> ox.Model:
    """``model`` quantized by ONNX Runtime's tools in format ``form``."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{model.input_name: x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.rows, None)

    with tempfile.TemporaryDirectory() as folder:
        model.save(f"{folder}/float.onnx")
        quant_pre_process(f"{folder}/float.onnx", f"{folder}/pre.onnx")
        if form == "dynamic":
            quantize_dynamic(f"{folder}/pre.onnx", f"{folder}/q.onnx")
        else:
            fmt = QuantFormat.QDQ if form == "qdq" else QuantFormat.QOperator
            quantize_static(f"{folder}/pre.onnx", f"{folder}/q.onnx", Reader(), quant_format=fmt,
                            per_channel=True)
        return ox.load(f"{folder}/q.onnx", allowed_domains=["com.microsoft"] if form == "qoperator" else ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=ARCHS)
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"])
    parser.add_argument("--opset", type=int, default=None)
    parser.add_argument("--quantize", default=None, choices=["qdq", "qoperator", "dynamic"])
    parser.add_argument("--methods", default=None, help="comma-separated CLI method names (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("ZOO.md")))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    began = time.time()
    rows = {}
    archs = {"timm": ",".join("timm:" + a for a in TIMM.split(",")),
             "keras": ",".join("keras:" + a for a in KERAS.split(",")),
             "hf": ",".join("hf:" + a for a in HF.split(","))}.get(args.archs, args.archs)
    only = set(args.methods.split(",")) if args.methods else None
    for arch in archs.split(","):
        try:
            if arch.startswith("keras:"):
                model, x = keras_application(arch[6:], args.opset)
            else:
                net, size = network(arch)
                x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
                model = ox.adapters.torch.export(net, x, exporter=args.exporter, opset=args.opset)
            if args.quantize:
                model = quantized(model, np.asarray(x), args.quantize)
        except Exception as exc:
            rows[arch] = {"export": f"**{type(exc).__name__}**: {str(exc)[:90]}"}
            print(arch, rows[arch], flush=True)
        else:
            rows[arch] = explain(model, np.asarray(x), only)
            cells = " ".join(f"{k}={v}" for k, v in rows[arch].items())
            print(arch, f"{time.time() - began:.0f}s", cells, flush=True)
        _write(args, rows, began)  # after each architecture: a crash or a stop keeps the rows so far
    print(f"wrote {args.out}")


def _write(args: argparse.Namespace, rows: dict[str, dict[str, str]], began: float) -> None:
    methods = list(dict.fromkeys(m for cells in rows.values() for m in cells))
    lines = [
        "# Every method on many architectures",
        "",
        f"Generated by `benchmarks/zoo.py` (exporter {args.exporter}, opset {args.opset or 'default'}"
        f"{', quantized ' + args.quantize if args.quantize else ''}) "
        f"on {platform.machine()}, {datetime.date.today()}, in {(time.time() - began) / 60:.1f} min. "
        f"Seeded random weights, two 64×64 images (Inception 96×96), target class 1, settings {SMALL}. "
        "A cell is the method's time in seconds, or the error it raised.",
        "",
    ]
    for arch, cells in rows.items():
        lines += [f"## {arch}", "", "| method | result |", "|---|---|"]
        lines += [f"| {m} | {cells[m]} |" for m in methods if m in cells]
        lines.append("")
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
