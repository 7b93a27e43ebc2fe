#!/usr/bin/env bash
# The GPU check for issue 12, prepared to run in under 10 minutes on one CUDA machine (on an H200,
# 2026-11-30, parts 0-3 took about 6 minutes: parts 1 and 2 one, the benchmark the rest):
#   0. what runs where: the GPU, torch's CUDA build, ONNX Runtime's providers. torch without CUDA
#      stops here; an onnxruntime without its CUDA provider (the CPU package) is reported and
#      ONNX Runtime's CUDA parts are skipped, so the torch backend is still checked;
#   1. tests/backends/test_cuda.py: both backends on CUDA agree with CPU, methods end to end,
#      out-of-memory back-off on a real device;
#   2. the parity tests against Captum / pytorch-grad-cam / zennit / torch-cam, whose onnxplain
#      side picks CUDA by itself (device="auto"), with TF32 off so that fp32 tolerances hold;
#   3. benchmarks/run.py --device cuda (both models, 3 repeats) -> benchmarks/RESULTS_cuda.md
#      (with the gradient and rule methods only where ONNX Runtime has no CUDA provider);
#   4. benchmarks/ort_cuda_modes.py: ONNX Runtime's CUDA passes by cuDNN search mode, pass by
#      pass, and its CPU fallbacks (where it has a CUDA provider; about a minute).
# Usage, from the repository root:  bash benchmarks/gpu_check.sh [all|tests|bench]
# Environment: PYTHON (default .venv/bin/python), JOBS (pytest-xdist workers for part 2, default 4).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PART=${1:-all}
export NVIDIA_TF32_OVERRIDE=0 OMP_WAIT_POLICY=PASSIVE
status=0

echo "== 0/4 devices"
"$PY" - <<'PYEOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU: nothing to check here")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "CUDA", torch.version.cuda)
import onnxruntime as ort

print("onnxruntime", ort.__version__, "providers:", ort.get_available_providers())
if "CUDAExecutionProvider" not in ort.get_available_providers():
    print("WARNING: this onnxruntime has no CUDA provider (install onnxruntime-gpu):"
          " ONNX Runtime's CUDA parts are skipped")
PYEOF
[ $? -eq 0 ] || exit 1
ORT_CUDA=$("$PY" -c "import onnxruntime as o; print(int('CUDAExecutionProvider' in o.get_available_providers()))")

if [ "$PART" != bench ]; then
    echo "== 1/4 CUDA backend tests"
    timeout 90 "$PY" -m pytest -q -p no:cacheprovider -rsx tests/backends/test_cuda.py || status=1

    echo "== 2/4 parity tests with onnxplain on CUDA"
    # Deselected: integrated gradients and noise tunnels compared across devices (onnxplain on
    # CUDA, Captum on CPU). Their sums over many points cross ReLU and max-pool ties within
    # float32 rounding, which cuDNN's last bits break otherwise than the CPU's; part 1 checks
    # them on CUDA against float64 and Captum on the same GPU instead.
    ACROSS_DEVICES="not integrated_gradients_equal_captum and not integrated_gradients_on_resnet18"
    ACROSS_DEVICES="$ACROSS_DEVICES and not noise_tunnel_equals_captum"
    XDIST=()
    "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "${JOBS:-4}" --dist loadfile)
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" -k "$ACROSS_DEVICES" "${XDIST[@]}" \
        tests/backends/test_backends.py tests/methods/test_gradient_parity.py \
        tests/methods/test_gradient_captum_parity.py tests/methods/test_gradient_noise_tunnel.py \
        tests/methods/test_cam_parity.py tests/methods/test_gradcam.py \
        tests/methods/test_smooth_grad_cam_plus_plus.py tests/methods/lrp/test_lrp_zennit_parity.py \
        tests/methods/test_occlusion.py tests/methods/test_rise.py \
        tests/methods/test_lime.py tests/methods/test_kernel_shap.py || status=1
fi

if [ "$PART" != tests ]; then
    echo "== 3/4 benchmark on CUDA"
    METHODS=()
    [ "$ORT_CUDA" = 1 ] || METHODS=(--methods "Saliency,IntegratedGradients,GuidedBackprop,NoiseTunnel,GradCAM,LRP")
    timeout 330 "$PY" benchmarks/run.py --device cuda --repeat 3 --no-memory-scan "${METHODS[@]}" \
        --out benchmarks/RESULTS_cuda.md || status=1
    if [ "$ORT_CUDA" = 1 ]; then
        echo "== 4/4 ONNX Runtime's CUDA passes by cuDNN search mode"
        timeout 90 "$PY" benchmarks/ort_cuda_modes.py || status=1
    fi
fi

exit $status
