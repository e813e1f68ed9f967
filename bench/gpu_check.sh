#!/usr/bin/env bash
# GPU check, under 8 minutes on one GPU: build a small digits-cnn table (generate + ingest), train
# monomial_nfn with `scaling.use_gpu=true` (NCCL) in fp32, in bf16 and compiled, then time every metanetwork
# on CUDA eager against compiled (bench/layers.py). Figures go to OUT/figures.txt; logs to OUT/*.log.
#
#     bash bench/gpu_check.sh [--out DIR] [--dry-run]
#
# --dry-run: the same steps on CPU (gloo, 1 worker), tiny (a few networks, one epoch, the small models,
# the aot_eager compile backend), so a default-suite test (tests/bench/test_gpu_check.py) keeps it working.
# PYTHON (default: python) runs everything; the repository root goes first on PYTHONPATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/zoo_store/gpu_check"
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --out DIR, --dry-run)" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
FIG="$OUT/figures.txt"
cd "$ROOT"

if [[ $DRY == 1 ]]; then
  N=12; EPOCHS=1; BATCH=8; WORKERS=1; GPU=false; DEVICE=cpu; LAYER_BATCH=4; REPEATS=1
  MODELS=statnet,np; BACKEND=aot_eager; KW="{hidden: 2, num_layers: 1}"; INGEST=(--no-ray)
  TRAIN=(data.val_split=train)  # 12 networks leave the ReLU validation split empty
else
  N=400; EPOCHS=3; BATCH=64; WORKERS=1; GPU=true; DEVICE=cuda; LAYER_BATCH=64; REPEATS=20
  MODELS=statnet,np,hnp,monomial_nfn,monomial_nfn_quasi,transformer_nfn; BACKEND=inductor; KW="{hidden: 16}"
  INGEST=(); TRAIN=()
fi

stage() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$FIG"; }
: > "$FIG"
stage "gpu_check (dry run: $DRY) in $OUT"
if [[ $DRY == 0 ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$FIG" 2>&1 || true
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())" >> "$FIG"

t0=$SECONDS
"$PY" -m cluster.cli generate digits-cnn --out "$OUT/zoo" --n "$N" --seed 0 --no-progress > "$OUT/generate.log" 2>&1
stage "generate: $N digits-cnn networks in $((SECONDS - t0)) s"
t0=$SECONDS
"$PY" -m cluster.cli ingest "$OUT/zoo" --format checkpoints --out "$OUT/table" --zoo digits-cnn \
  --split-by network_id --overwrite --no-progress "${INGEST[@]}" > "$OUT/ingest.log" 2>&1
stage "ingest: $((SECONDS - t0)) s"

COMMON=(data.table="$OUT/table" data.activation=relu model.name=monomial_nfn "model.kwargs=$KW"
        epochs="$EPOCHS" batch_size="$BATCH" scaling.num_workers="$WORKERS" scaling.use_gpu="$GPU"
        progress=false checkpoint.storage_path="$OUT/runs" mlflow.tracking_uri="sqlite:///$OUT/mlflow.db"
        mlflow.artifact_location="$OUT/mlartifacts" mlflow.system_metrics=false mlflow.register_model=false
        mlflow.experiment=gpu-check "${TRAIN[@]}")
RUNS=(fp32 bf16)
[[ $DRY == 0 ]] && RUNS+=(fp32-compiled)
for run in "${RUNS[@]}"; do
  extra=(run_name="$run")
  [[ $run == bf16 ]] && extra+=(deepspeed.precision=bf16)
  [[ $run == fp32-compiled ]] && extra+=(model.compile=true)
  t0=$SECONDS
  "$PY" -m cluster.cli train --config configs/digits-cnn/monomial_nfn.yaml "${COMMON[@]}" "${extra[@]}" \
    > "$OUT/train-$run.log" 2>&1
  stage "train $run: $((SECONDS - t0)) s"
done

# the last epoch's figures of every run, read back from MLflow
"$PY" - "$OUT/mlflow.db" >> "$FIG" <<'EOF'
import sys

from mlflow import MlflowClient

client = MlflowClient(f"sqlite:///{sys.argv[1]}")
exp = client.get_experiment_by_name("gpu-check")
keys = ["train_networks_per_s", "data_wait_fraction", "worker_first_step_s", "train_loss", "val_kendall_tau"]
print(f"{'run':<16}" + "".join(f"{k:>22}" for k in keys))
for run in sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time):
    m = run.data.metrics
    print(f"{run.info.run_name:<16}" + "".join(f"{m.get(k, float('nan')):>22.4f}" for k in keys))
EOF

t0=$SECONDS
"$PY" bench/layers.py --device "$DEVICE" --batch "$LAYER_BATCH" --repeats "$REPEATS" --models "$MODELS" \
  --compile --compile-backend "$BACKEND" --profile > "$OUT/layers.log" 2>&1
grep -v -e "^compiled " -e "^USDT:" "$OUT/layers.log" >> "$FIG"  # USDT: the profiler's own log lines
stage "layers eager vs compiled ($BACKEND) on $DEVICE: $((SECONDS - t0)) s"
stage "done; figures in $FIG"
