#!/usr/bin/env bash
# GPU bench: kcnn (Keras fit through recipes.bench) vs PyTorch (AMP float16, channels-last), each library in
# its own process, ResNet-50 (then VGG16) at 224 px, mixed precision, synthetic data.
#
#   bash recipes/gpu_bench.sh [OUTDIR]          # SIZE=tiny for a CPU smoke test of the logic
#
# Uses the python3 on the PATH (PYTHON=... to choose). kcnn's side needs TensorFlow with CUDA; where it cannot
# be imported or sees no GPU, kcnn is reported as "not measured: <reason>" and PyTorch is still timed. With no
# GPU at all it says so and stops (unless SIZE=tiny). Every figure goes to OUTDIR/*.log and OUTDIR/*.json.
set -u
PYTHON=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-/tmp/gpu_bench}}
SIZE=${SIZE:-full}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -3
"$PYTHON" - <<'EOF'
import platform, sys
print("python", sys.version.split()[0], platform.machine())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
except Exception as err:  # noqa: BLE001
    print("torch: not importable:", err)
try:
    import tensorflow as tf
    print("tensorflow", tf.__version__, "built with CUDA", tf.test.is_built_with_cuda(),
          "GPUs", tf.config.list_physical_devices("GPU"))
except Exception as err:  # noqa: BLE001
    print("tensorflow: not importable:", type(err).__name__, err)
EOF

GPU=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$GPU" != 1 ] && [ "$SIZE" != tiny ]; then
    echo "no GPU: PyTorch sees no CUDA device here; nothing to measure (SIZE=tiny runs the logic on a CPU)"
    exit 3
fi

if [ "$SIZE" = tiny ]; then
    RESNET="--model resnet20 --image-size 32 --batch-size 8 --steps 2 --epochs 1 --rounds 1 --peak-size 128"
    VGG="--model vgg11 --image-size 32 --batch-size 4 --steps 2 --epochs 1 --rounds 1 --peak-size 128"
    MP=float32
else
    RESNET="--model resnet50 --image-size 224 --batch-size 64 --steps 50 --epochs 3 --rounds 3 --peak-size 8192"
    VGG="--model vgg16 --image-size 224 --batch-size 64 --steps 30 --epochs 3 --rounds 1 --peak-size 8192"
    MP=mixed_float16
fi

run() {  # name, then bench options
    local name=$1; shift
    echo "== $name: python -m recipes.bench $* --precision $MP --reference torch --json"
    timeout "${STEP_TIMEOUT:-240}" "$PYTHON" -m recipes.bench "$@" --precision "$MP" --reference torch \
        --worker-timeout "${STEP_TIMEOUT:-240}" --json 2>&1 | tee "$OUT_DIR/$name.log"
    tail -n 1 "$OUT_DIR/$name.log" > "$OUT_DIR/$name.json"
}

run resnet50_all $RESNET --train all
run vgg16_all $VGG --train all
run vgg16_head $VGG --train head
echo "== done"
