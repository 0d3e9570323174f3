#!/bin/bash
# GPU / many-core checks (projects/gpu_checks/README.md): the demo trained and evaluated on CUDA,
# tools/benchmark.py with its CUDA columns, CPU latency at 16 threads with and without the
# threaded RoIAlign, and the per-op profile. Writes logs and JSON to ${OUT:-output/gpu_checks}.
# Run from the repository root with a Python that imports torch (CUDA), detectron2 and sa_ejhead.
set -o pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-output/gpu_checks}
THREADS=${THREADS:-16}
T=sa_ejhead.modeling.ThreadedROIPooler
BASE="base=d2://common/models/mask_rcnn_fpn.py"
BASE_T="base_threaded=d2://common/models/mask_rcnn_fpn.py,model.roi_heads.box_pooler._target_=$T,model.roi_heads.mask_pooler._target_=$T"
EFF_SRC=common/models/mask_rcnn_safpn_ejhead_efficient.py
EFF="efficient=$EFF_SRC"
EFF_P="efficient_plain=$EFF_SRC,model.roi_heads.threaded_pooling=False"
FAITH="faithful=common/models/mask_rcnn_safpn_ejhead.py"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
$PY -c "import torch, detectron2; print(torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/env.txt" || exit 1

# 1. the demo on CUDA: 615 iterations, COCO box/mask AP
$PY tools/train_demo.py --iters 615 --output-dir "$OUT/demo_cuda" --num-vis 1 --threads 8 \
    --time-budget 0 train.device=cuda 2>&1 | tee "$OUT/demo_cuda.log" | tail -8
# 2. the cost table with CUDA columns (FLOPs, CPU and CUDA latency, train step, memory)
$PY tools/benchmark.py --runs 5 --threads "$THREADS" --output "$OUT/bench.json" \
    --configs "$BASE" "$FAITH" "$EFF" 2>&1 | tee "$OUT/bench.log" | tail -12
# 3. RoIAlign threading: inference latency, threaded vs plain, for the baseline and efficient
$PY tools/benchmark.py --runs 7 --threads "$THREADS" --no-flops --no-train --output "$OUT/lat.json" \
    --configs "$BASE" "$BASE_T" "$EFF_P" "$EFF" 2>&1 | tee "$OUT/lat.log" | tail -8
# 4. training step with and without it (the RoIAlign backward stays single-threaded)
$PY tools/benchmark.py --runs 5 --threads "$THREADS" --no-flops --no-cuda --output "$OUT/train.json" \
    --configs "$BASE" "$BASE_T" "$EFF_P" "$EFF" 2>&1 | tee "$OUT/train.log" | tail -8
# 5. thread scaling and the ops behind it
$PY projects/gpu_checks/profile_roi_ops.py 2>&1 | tee "$OUT/profile.txt" | grep SCALING
