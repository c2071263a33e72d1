#!/usr/bin/env bash
# Data-parallel training speed on this machine (BENCHMARKS.md, "Training across processes"): the Mamba-1
# reference config (vocab 256, d_model 256, 4 layers, d_state 16, L 2048, global batch 4) trained for STEPS steps
# as 1 process × 1 thread, 1 × 2 threads, 2 processes × 1 thread (overlap on), and 2 × 1 with overlap off.
# Prints tokens/s (mean over the steps after the first two) and rank 0's communication line for each.
# Usage: scripts/bench-mpi.sh [STEPS]   (needs .build/release/mambakit and Open MPI's mpirun)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-10}
bin=.build/release/mambakit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MAMBAKIT_CACHE="$tmp/cache"
args=(train --data samples/text/genesis.txt --steps "$steps" --batch-size 4 --seq-len 2048 --d-model 256 --layers 4
      --d-state 16 --expand 2 --seed 1 --log-every 1 --eval-every 0 --checkpoint-every 0)
rate() {
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > 2]
print(f"{sum(tps) / len(tps):.0f}")
PY
}
run() {  # NAME THREADS LAUNCHER...
  local name=$1 threads=$2; shift 2
  "$@" "$bin" "${args[@]}" --threads "$threads" --out "$tmp/$name" > /dev/null 2> "$tmp/$name.log"
  printf '%-28s %8s tokens/s   %s\n' "$name" "$(rate "$tmp/$name/metrics.jsonl")" \
    "$(grep -o 'communication (rank 0).*' "$tmp/$name.log" || true)"
}
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); $(mpirun --version | head -1)"
run "1 process x 1 thread" 1 env
run "1 process x 2 threads" 2 env
run "2 processes x 1 thread" 1 mpirun -np 2 --bind-to core
run "2 x 1, overlap off" 1 env MAMBAKIT_MPI_OVERLAP=0 mpirun -np 2 --bind-to core -x MAMBAKIT_MPI_OVERLAP
