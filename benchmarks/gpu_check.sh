#!/usr/bin/env bash
# The GPU check in one command: benchmarks/gpu_check.py (its docstring says what it measures),
# one JSON of results. Run from anywhere; arguments pass through (--dry-run, --out, --budget-s, --parts).
#   bash benchmarks/gpu_check.sh                  # on one GPU, about 9 min
#   bash benchmarks/gpu_check.sh --dry-run --out r.json
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python}"
if [[ -z "${PYTHON:-}" && -x "$root/.venv/bin/python" ]]; then
    python="$root/.venv/bin/python"
elif [[ -z "${PYTHON:-}" ]] && ! command -v python >/dev/null; then
    python=python3
fi

out="gpu_check.json"
if [[ -n "${OUT:-}" ]]; then
    out="$OUT/gpu_check.json"
fi
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out) out="${args[i + 1]:-$out}" ;;
        --out=*) out="${args[i]#--out=}" ;;
    esac
done

# The budget (--budget-s) counts from here: interpreter start and imports included.
export GPU_CHECK_T0="$(date +%s.%N)"
status=0
"$python" "$here/gpu_check.py" "$@" || status=$?
echo "gpu_check: results in $out (exit $status)"
exit "$status"
