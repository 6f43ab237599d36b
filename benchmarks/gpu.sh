#!/usr/bin/env bash
# The GPU run behind "GPU (H100)" in benchmarks/README.md.  Run on the GPU machine from a checkout:
#   .whl/        cp312 wheels the machine lacks: ppq, pycocotools, onnxslim, colorama, pytest(+pluggy, iniconfig)
#   ORTSITE      an unpacked onnxruntime-gpu wheel (../shared/docs/gpu.md), default $HOME/ortsite
#   data/yolov8n_e2e.onnx   python -m xtrt.examples.yolo_e2e --out data/yolov8n_e2e.onnx
#   IMAGES       a folder of photos, default .gpudata/photos
# Writes everything under $OUT (default /tmp/xtrt-gpu) and prints the figures.
set -uo pipefail
OUT=${OUT:-/tmp/xtrt-gpu}
RUN=${RUN:-/tmp/xtrt-gpu-run}      # full run folders; a selection is copied to $OUT
IMAGES=${IMAGES:-$PWD/.gpudata/photos}
ORTSITE=${ORTSITE:-$HOME/ortsite}
mkdir -p "$OUT" "$RUN"
python3 -m pip install -q --no-index --no-deps --target "$HOME/site" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$ORTSITE:$HOME/site:$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"

step() { echo; echo "=== $1 ($(date +%T))"; }
PART=${1:-all}     # all | quant (tests, quant, calibration speed) | profile

if [ "$PART" != profile ]; then
step "gpu tests"
python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short 2>&1 | tail -40

step "xtrt.quant on CUDA: YOLOv8n 640, 32 calibration images, 115 held out, auto method, layer-wise + fallback"
python3 -m xtrt.quant --config data/yolov8n_e2e.yaml --device cuda -q \
  --set 'input.shape=[8,3,640,640]' --set 'preprocess.size=[640,640]' \
  --set "calibration.data=$IMAGES" --set calibration.steps=4 --set calibration.batch_size=8 \
  --set calibration.method=auto --set "evaluation.data=$IMAGES" --set evaluation.count=115 \
  --set evaluation.batch_size=8 --set analysis.layerwise=true --set analysis.target.metric=map50_95 \
  --set analysis.target.min_value=0.9 --output-dir "$RUN/quant" 2>&1 | tail -3
python3 - "$RUN/quant/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("timings_s", r["timings_s"])
print("summary", r["summary"])
EOF

step "calibration speed: 512 images, batch 32, 640"
timeout 300 python3 benchmarks/calib_speed.py --device cuda --images "$IMAGES" --count 512 --batch 32 --imgsz 640

fi
if [ "$PART" != quant ]; then
step "xtrt.profile on CUDA (ORT CUDA EP): FP32 vs INT8, batch 1,8,32"
python3 -m xtrt.profile data/yolov8n_e2e.onnx --images "$IMAGES" --device cuda --imgsz 640 \
  --batch 1,8,32 --compare "$RUN/quant/quantized.onnx" --out "$RUN/profile" 2>&1 | tail -60

step "xtrt.profile on CUDA, PPQ executor, batch 8"
python3 -m xtrt.profile data/yolov8n_e2e.onnx --images "$IMAGES" --device cuda --imgsz 640 \
  --backend ppq --batch 8 --out "$RUN/profile_ppq" 2>&1 | tail -25
python3 - "$RUN/profile/trace.json" <<'EOF'
import json, sys, collections
ev = json.load(open(sys.argv[1]))["traceEvents"]
c = collections.Counter(e.get("cat") for e in ev)
print("trace event categories:", dict(c.most_common(8)))
EOF
fi
for d in quant profile profile_ppq; do
  mkdir -p "$OUT/$d"; cp "$RUN/$d"/*.json "$RUN/$d"/*.png "$RUN/$d"/*.md "$OUT/$d/" 2>/dev/null
done
rm -f "$OUT"/*/trace.json
echo "done $(date +%T)"
