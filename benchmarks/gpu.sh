#!/usr/bin/env bash
# The GPU run behind the "GPU (H100/H200)" sections of benchmarks/README.md.  Run on the GPU machine
# from a checkout:
#   .whl/        cp312 wheels the machine lacks: ppq, pycocotools, onnxslim, colorama, pytest(+pluggy,
#                iniconfig, pygments, packaging)
#   ORTSITE      an unpacked onnxruntime-gpu wheel (../shared/docs/gpu.md), default $HOME/ortsite
#   data/yolov8n_e2e.onnx   python -m xtrt.examples.yolo_e2e --out data/yolov8n_e2e.onnx
#   data/effnet_lite0.onnx  python -m xtrt.examples.effnet --out data/effnet_lite0.onnx
#   IMAGES       a folder of photos, default .gpudata/photos
# The whole-run step needs 32 + 115 images; when IMAGES holds fewer, it runs on IMAGES plus
# mirrored / flipped / rotated copies of its photos (new files under $RUN/photos, said in the output).
# Writes gpu.log-style output to stdout, and report.json, calib_*.json and runs.tgz (the run folders'
# small files) under $OUT (default /tmp/xtrt-gpu; few files, as the device tool brings back 8).
set -uo pipefail
OUT=${OUT:-/tmp/xtrt-gpu}
RUN=${RUN:-/tmp/xtrt-gpu-run}      # full run folders; a selection is packed into $OUT/runs.tgz
IMAGES=${IMAGES:-$PWD/.gpudata/photos}
ORTSITE=${ORTSITE:-$HOME/ortsite}
mkdir -p "$OUT" "$RUN"
DEVICE=${DEVICE:-cuda}              # DEVICE=cpu: the whole-run part on this CPU (no GPU setup)
# .pyc files go to a writable place: the device image has none for torch (about 12 s of compiling
# in the first run); the whole-run part runs twice, so the second shows a run with them
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$RUN/pyc}
if [ "$DEVICE" = cuda ]; then
python3 -m pip install -q --no-index --no-deps --target "$HOME/site" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$ORTSITE:$HOME/site:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
# The device image sets PYTHONDONTWRITEBYTECODE=1 and its site-packages have no .pyc files, so
# every process compiled torch & co. again (8.5-9.5 s of builtins.compile in each whole run,
# session 11's cProfile).  pip leaves .pyc files on a user's machine: compile once into the prefix.
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ] && [ ! -e "$PYTHONPYCACHEPREFIX/.compiled" ]; then
  SP=$(python3 -c "import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))")
  t0=$(date +%s)
  python3 -m compileall -q -j 0 "$SP" "$HOME/site" "$ORTSITE" "$PWD/xtrt" > /dev/null 2>&1
  mkdir -p "$PYTHONPYCACHEPREFIX" && touch "$PYTHONPYCACHEPREFIX/.compiled"
  echo "compiled .pyc files into $PYTHONPYCACHEPREFIX ($(( $(date +%s) - t0 )) s)"
fi
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"

step() { echo; echo "=== $1 ($(date +%T))"; }
PART=${1:-all}     # all | quant (tests, quant, calibration speed) | whole | profile | techniques | wholeprof
                   # | wholecounts (ORT sessions / forwards per stage of the whole run)
                   # | accuracy-lsq | accuracy-adaround | accuracy-adaround-yolo (issue 14; each < 10 min)
                   # | feed (issue 13 item 3: the feed table; about 3 minutes)

# The whole xtrt.quant run of issue 13 (YOLOv8n e2e 640, 4 x 8 calibration images, 115 held out,
# auto, layer-wise, fallback to 0.9 mAP50-95) with its stage split, twice (the first compiles
# .pyc files).  On the CPU: DEVICE=cpu WHOLE_ARGS="--steps 2 --batch 4 --count 16" gpu.sh whole
whole_run() {
  QIMAGES=$IMAGES
  if [ "$(ls "$IMAGES" | wc -l)" -lt 147 ]; then
    QIMAGES=$RUN/photos
    python3 benchmarks/gpu_photos.py "$IMAGES" "$QIMAGES" 147
  fi
  for k in 1 2; do
    step "whole xtrt.quant run on $DEVICE, run $k of 2 ${WHOLE_ARGS:-}"
    dir=$RUN/quant; [ $k = 1 ] && dir=$RUN/quant_first
    rm -rf "$dir"
    python3 benchmarks/gpu_whole_run.py "$QIMAGES" "$dir" --device "$DEVICE" \
      --json "$OUT/whole_run_$k.json" ${WHOLE_ARGS:-}
  done
  cp "$RUN/quant/report.json" "$OUT/report.json" 2>/dev/null
  step "whole xtrt.quant run on $DEVICE, no accuracy target (no fallback: the run issue 13 first timed)"
  rm -rf "$RUN/quant_notarget"
  python3 benchmarks/gpu_whole_run.py "$QIMAGES" "$RUN/quant_notarget" --device "$DEVICE" --no-target \
    --json "$OUT/whole_run_notarget.json" ${WHOLE_ARGS:-}
}

if [ "$PART" = all ] || [ "$PART" = quant ]; then
step "gpu tests"
python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short -rs 2>&1 | tail -40

whole_run

step "calibration speed: YOLOv8n 640, 512 images, batch 32"
timeout 300 python3 benchmarks/calib_speed.py --device cuda --images "$IMAGES" --count 512 --batch 32 \
  --imgsz 640 --repeat 2 --ort --json "$OUT/calib_yolov8n.json"

step "calibration speed: YOLOv8n 640, minmax + auto, a new statistics session every run (--cold)"
timeout 200 python3 benchmarks/calib_speed.py --device cuda --images "$IMAGES" --count 512 --batch 32 \
  --imgsz 640 --repeat 2 --cold --methods minmax,auto --fp32-passes 2 --json "$OUT/calib_yolov8n_cold.json"

step "calibration speed: EfficientNet-Lite0 224, 512 images, batch 32"
timeout 300 python3 benchmarks/calib_speed.py --device cuda --model data/effnet_lite0.onnx \
  --preprocess-from data/effnet_lite0.yaml --images "$IMAGES" --count 512 --batch 32 --imgsz 224 \
  --repeat 2 --ort --json "$OUT/calib_effnet.json"
fi

if [ "$PART" = whole ]; then
whole_run
fi

# ORT sessions built (and the seconds building them), forwards run, per stage of the same whole
# run (benchmarks/whole_run_counts.py; about 1 minute): on CUDA a session costs a fixed ~0.3 s
if [ "$PART" = wholecounts ]; then
QIMAGES=$IMAGES
if [ "$(ls "$IMAGES" | wc -l)" -lt 147 ]; then
  QIMAGES=$RUN/photos
  python3 benchmarks/gpu_photos.py "$IMAGES" "$QIMAGES" 147
fi
step "whole run's ORT sessions and forwards per stage on $DEVICE"
rm -rf "$RUN/quantcounts"
python3 benchmarks/whole_run_counts.py "$QIMAGES" "$RUN/quantcounts" --device "$DEVICE" \
  --json "$OUT/whole_counts.json" ${WHOLE_ARGS:-} 2>&1 | grep -v '^\[xtrt\]' | tail -20
fi

if [ "$PART" = wholeprof ]; then
step "xtrt.quant on CUDA under cProfile"
python3 benchmarks/gpu_whole_run.py "$IMAGES" "$RUN/quantprof" "$RUN/quant.pstats" --device "$DEVICE" \
  ${WHOLE_ARGS:-} 2>&1 | head -120
fi

if [ "$PART" = techniques ]; then
step "techniques on CUDA (calibration + passes on the GPU, scored on ONNX Runtime CPU)"
TECH=${TECH_VARIANTS:-minmax,minmax+lsq20}
timeout ${TECH_TIMEOUT:-500} python3 benchmarks/techniques.py --device cuda --photos "$IMAGES" \
  --effnet-model data/effnet_lite0.onnx --yolo-model data/yolov8n_e2e.onnx --work "$RUN/bench" \
  --models "${TECH_MODELS:-effnet,yolo}" --variants "$TECH" --json "$OUT/techniques_cuda.jsonl" \
  ${TECH_EXTRA:-} 2>&1 | tail -40
fi

# Issue 14, all-INT8 targets (EfficientNet-Lite0 >= 95 % / 25 dB, YOLOv8n >= 0.90): LSQ with more
# steps, another lr and more training batches.  Expected (0.17 s / LSQ step on EfficientNet,
# 1.3 s on YOLOv8n at 2 batches of 4, from the 2026-12-02 H200 run): about 8 minutes.
if [ "$PART" = accuracy-lsq ]; then
step "accuracy: LSQ variants on CUDA (scored on ONNX Runtime CPU)"
L="quantization.lsq.batches"
timeout 560 python3 benchmarks/techniques.py --device cuda --photos "$IMAGES" \
  --effnet-model data/effnet_lite0.onnx --yolo-model data/yolov8n_e2e.onnx --work "$RUN/bench" \
  --json "$OUT/accuracy_lsq.jsonl" --models effnet \
  --variants "lsq200,lsq200-lr1e-4,lsq200-b8,pct+lsq200" --timeout 200 \
  --extra "lsq200=calibration.method=minmax;quantization.lsq.steps=200;$L=2" \
  --extra "lsq200-lr1e-4=calibration.method=minmax;quantization.lsq.steps=200;quantization.lsq.lr=1e-4;$L=2" \
  --extra "lsq200-b8=calibration.method=minmax;quantization.lsq.steps=200;$L=8" \
  --extra "pct+lsq200=calibration.method=percentile;quantization.lsq.steps=200;$L=2" 2>&1 | tail -8
timeout 300 python3 benchmarks/techniques.py --device cuda --photos "$IMAGES" \
  --effnet-model data/effnet_lite0.onnx --yolo-model data/yolov8n_e2e.onnx --work "$RUN/bench" \
  --json "$OUT/accuracy_lsq.jsonl" --models yolo --variants "lsq100,lsq100-lr1e-4" --timeout 150 \
  --extra "lsq100=calibration.method=minmax;quantization.lsq.steps=100;$L=2" \
  --extra "lsq100-lr1e-4=calibration.method=minmax;quantization.lsq.steps=100;quantization.lsq.lr=1e-4;$L=2" \
  2>&1 | tail -6
fi

# Issue 14: PPQ's AdaRound as it is (its tune_block_weight_scale: 900 Adam steps on every weight
# scale, never withdrawn; it broke MTCNN ONet on CPU, 21.9 -> 12.1 dB) against the same pass with
# that step off (benchmarks/adaround_check.py --scale-tune off), trained on all 8 calibration batches
# (2 batches overfit: MTCNN ONet lost 0.8-2.5 dB on CPU at 500 steps), then enough steps for the rounding
# variables to settle.  Expected: about 8 minutes (PPQ's pass ~110 s at 100 steps, most of it the
# scale tuning; ~0.2 s / step without it on EfficientNet, ~1.3 s on YOLOv8n: its own part).
if [ "$PART" = accuracy-adaround ]; then
step "accuracy: AdaRound on CUDA, PPQ as is vs weight-scale tuning off (test part, ORT CPU)"
A="python3 benchmarks/adaround_check.py --device cuda --photos $IMAGES --effnet-model data/effnet_lite0.onnx --yolo-model data/yolov8n_e2e.onnx --work $RUN/bench --score test --method mse --batches 8"
timeout 220 $A --model effnet --steps 100 --lr 1e-3 --scale-tune ppq,off 2>&1 | grep "^effnet"
timeout 240 $A --model effnet --steps 600 --lr 1e-2 --scale-tune off 2>&1 | grep "^effnet"
fi
if [ "$PART" = accuracy-adaround-yolo ]; then     # about 4 minutes
step "accuracy: AdaRound on CUDA, YOLOv8n 640, weight-scale tuning off"
timeout 300 python3 benchmarks/adaround_check.py --device cuda --photos "$IMAGES" \
  --effnet-model data/effnet_lite0.onnx --yolo-model data/yolov8n_e2e.onnx --work "$RUN/bench" \
  --score test --method minmax --batches 8 --model yolo --steps 100 --lr 1e-2 --scale-tune off \
  2>&1 | grep "^yolo"
fi

if [ "$PART" = all ] || [ "$PART" = profile ]; then
step "xtrt.profile on CUDA (ORT CUDA EP): FP32 vs INT8, batch 1,8,32, --workers 1 (decode as run today)"
python3 -m xtrt.profile data/yolov8n_e2e.onnx --images "$IMAGES" --device cuda --imgsz 640 \
  --batch 1,8,32 --compare "$RUN/quant/quantized.onnx" --workers 1 --out "$RUN/profile" 2>&1 | tail -60

step "xtrt.profile on CUDA: FP32 vs INT8, batch 32, default --workers (one per core, at most 8)"
python3 -m xtrt.profile data/yolov8n_e2e.onnx --images "$IMAGES" --device cuda --imgsz 640 \
  --batch 32 --compare "$RUN/quant/quantized.onnx" --out "$RUN/profile_workers" 2>&1 | tail -40
cp "$RUN/profile_workers/profile.json" "$OUT/profile_workers.json" 2>/dev/null

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
# Issue 13 item 3, the pipeline that feeds the GPU (about 3 minutes): the feed's gpu tests, then
# xtrt.profile on YOLOv8n e2e 640 at batch 32 on all of IMAGES (147 photos), FP32, with the feed
# table: "as you run it today (1 thread)" (the traced sweep), "N workers" (pageable synchronous
# copy), "N workers + pinned/async" (batch k+1's copy overlaps batch k's inference) and "GPU
# decode" (nvJPEG + letterbox in torch on the device), at the default N (one per core, at most 8)
# and at N=16; then how far GPU decode's pixels are from the host path's on the same photos.
if [ "$PART" = feed ]; then
step "feed: gpu tests of the feed paths"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider --tb=short -rs \
  tests/profile/test_profile_feed.py tests/profile/test_profile_workers.py tests/runtime/test_feed.py \
  2>&1 | tail -15
for n in default 16; do
  step "feed: xtrt.profile on CUDA, YOLOv8n 640 batch 32, --workers $n"
  W=""; [ $n != default ] && W="--workers $n"
  timeout 200 python3 -m xtrt.profile data/yolov8n_e2e.onnx --images "$IMAGES" --device cuda \
    --imgsz 640 --batch 32 --max-images 147 $W --out "$RUN/profile_feed_$n" > "$RUN/feed_$n.log" 2>&1
  sed -n '/^verdict:/,/^top ops/p' "$RUN/feed_$n.log" | grep -v '^top ops'
  grep -E '^(error|FAILED|PASSED|Traceback)|Error' "$RUN/feed_$n.log" | tail -5
  cp "$RUN/profile_feed_$n/profile.json" "$OUT/profile_feed_$n.json" 2>/dev/null
done
step "feed: GPU decode pixels against the host decode + letterbox (640), every photo"
timeout 120 python3 benchmarks/feed_pixels.py "$IMAGES"
fi

(cd "$RUN" && tar czf "$OUT/runs.tgz" --exclude='*.onnx' --exclude=trace.json \
  $(ls -d quant profile profile_ppq profile_feed_* 2>/dev/null))
echo "done $(date +%T)"
