#!/usr/bin/env bash
# The GPU check for issue 12, prepared to run in under 10 minutes on one CUDA machine:
#   1. tests/backends/test_cuda.py: both backends on CUDA agree with CPU, methods end to end,
#      out-of-memory back-off on a real device (skipped on machines without CUDA);
#   2. the parity tests against Captum / pytorch-grad-cam, whose onnxplain side picks CUDA by
#      itself (device="auto"), with TF32 off so that fp32 tolerances hold;
#   3. benchmarks/run.py --device cuda (both models, 3 repeats) -> benchmarks/RESULTS_cuda.md.
# Usage, from the repository root:  bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export NVIDIA_TF32_OVERRIDE=0 OMP_WAIT_POLICY=PASSIVE
status=0

"$PY" - <<'PYEOF' || exit 1
import onnxruntime as ort
import torch

assert torch.cuda.is_available(), "torch sees no CUDA GPU: nothing to check here"
assert "CUDAExecutionProvider" in ort.get_available_providers(), "onnxruntime-gpu is not installed"
print("GPU:", torch.cuda.get_device_name(0), "| ORT providers:", ort.get_available_providers())
PYEOF

echo "== 1/3 CUDA backend tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/backends/test_cuda.py || status=1

echo "== 2/3 parity tests with onnxplain on CUDA"
timeout 210 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
    tests/backends/test_backends.py tests/methods/test_gradient_parity.py \
    tests/methods/test_gradient_captum_parity.py tests/methods/test_cam_parity.py \
    tests/methods/test_gradcam.py tests/methods/test_occlusion.py tests/methods/test_rise.py \
    tests/methods/test_lime.py tests/methods/test_kernel_shap.py || status=1

echo "== 3/3 benchmark on CUDA"
timeout 210 "$PY" benchmarks/run.py --device cuda --repeat 3 --no-memory-scan \
    --out benchmarks/RESULTS_cuda.md || status=1

exit $status
