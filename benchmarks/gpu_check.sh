#!/usr/bin/env bash
# One call on a lent GPU machine: environment, install, every test (GPU ones included), then the GPU benchmarks.
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh [tests|bench|all|masked|sweep]
#
# ``masked``: the masked-linear / block-sparse work alone, sized for one call of about 8 minutes: the GPU
# benchmarks first (each checks its own outputs against float64 / float32 references), then the Triton tests of
# those ops on CUDA, three files side by side (their Triton compiles dominate), with whatever time is left;
# everything in $OUT/masked.log plus the result tables.
#
# Written for a short lease: each step has its own time limit, logs go under $OUT (what comes back from the
# machine), and a failing step does not stop the later ones. The machine has torch, triton and transformers
# but no package registry, hence the --no-deps install.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-/tmp/bermo-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch, triton, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"

$PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "Running pip as the 'root'" | tail -3

if [[ $what == sweep ]]; then
  # The block-skipping kernels' candidates (benchmarks/masked_linear_experiments.py) against the package's
  # forward and BlockSparseLinear kernels, and the crossovers with the package's tiles: four to six minutes
  # (~60 candidate configurations, each compiled, then timed on three shapes; the log keeps every line).
  timeout "${SWEEP_TIMEOUT:-420}" $PY benchmarks/masked_linear_sweep.py --no-tiles --experiments \
    --densities ${SWEEP_DENSITIES:-0.1 0.2 1.0} --out "$OUT" 2>&1 | tee "$OUT/sweep.log" | grep -E "best|PARITY|Error"
fi

if [[ $what == masked ]]; then
  L="$OUT/masked.log"
  start=$SECONDS
  step() {  # step NAME SECONDS COMMAND...: run under its own time limit, log it, say how it ended
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s, at $((SECONDS - start))s)" >>"$L"
    timeout "$limit" "$@" >>"$L" 2>&1
    local rc=$?
    echo "=== $name exit $rc after $((SECONDS - start))s" | tee -a "$L"
  }
  cat "$OUT/env.txt" >>"$L"
  step "masked_linear benchmark" "${ML_TIMEOUT:-170}" $PY benchmarks/masked_linear.py --out "$OUT" \
    --densities 1.0 0.1 --reps "${ML_REPS:-20}" ${ML_ARGS:-}
  step "block_sparse_gpu benchmark" "${BSG_TIMEOUT:-80}" $PY benchmarks/block_sparse_gpu.py --out "$OUT" \
    --blocks 32 64 --densities 1.0 0.1 0.05 --reps "${BSG_REPS:-20}"
  step "pruned_throughput benchmark" "${PT_TIMEOUT:-110}" $PY benchmarks/pruned_throughput.py --out "$OUT" \
    --reps "${PT_REPS:-10}" ${PT_ARGS:-}
  left=$(( ${MASKED_BUDGET:-480} - (SECONDS - start) ))
  (( left < 60 )) && left=60
  echo "=== tests (limit ${left}s each, side by side)" | tee -a "$L"
  for t in "parity:tests/test_masked_linear_parity.py:triton" \
           "block_sparse:tests/test_block_sparse_linear.py:triton or cuda" \
           "tiles_module:tests/test_masked_linear_tiles.py tests/test_masked_linear_module.py:triton or gpu or tiles"; do
    IFS=: read -r name files sel <<<"$t"
    ( timeout "$left" $PY -m pytest -q -rf -p no:cacheprovider --durations=5 $files -k "$sel" \
        >"$OUT/pytest_$name.txt" 2>&1; echo "pytest $name exit $?" >>"$OUT/pytest_$name.txt" ) &
  done
  wait
  for name in parity block_sparse tiles_module; do
    echo "=== pytest $name" >>"$L"
    cat "$OUT/pytest_$name.txt" >>"$L"
    grep -E "passed|failed|error|exit" "$OUT/pytest_$name.txt" | tail -3
    rm -f "$OUT/pytest_$name.txt"
  done
  grep -E "^#|PARITY|Error|Traceback" "$L" | head -20
  rm -f "$OUT/env.txt"  # (in the log: at most 8 files come back from a lent machine)
  echo "total $((SECONDS - start))s"
fi

if [[ $what == all || $what == tests ]]; then
  # Every test, less what runs on the CPU alone and CI covers (the ahead-of-time compile sweep, the CPU
  # benchmark smoke tests, the two-process gloo run).
  timeout "${TEST_TIMEOUT:-330}" $PY -m pytest -q -rs --maxfail=40 --durations=12 -p no:cacheprovider \
    --ignore tests/test_kernels_compile.py --ignore tests/test_benchmarks.py \
    --ignore tests/test_models_distributed.py ${TEST_ARGS:-} 2>&1 | tee "$OUT/pytest.log" | tail -45
  echo "pytest exit: ${PIPESTATUS[0]}"
fi

if [[ $what == all || $what == bench ]]; then
  # The kernels alone (both access variants), then whole calls against the other providers.
  timeout "${KERNEL_TIMEOUT:-120}" $PY benchmarks/scalar_mix_kernels.py --out "$OUT" ${KERNEL_ARGS:-} 2>&1 \
    | tee "$OUT/kernels.log"
  echo "kernel benchmark exit: ${PIPESTATUS[0]}"
  if [[ -z ${SKIP_MIX_BENCH:-} ]]; then
    timeout "${BENCH_TIMEOUT:-240}" $PY benchmarks/scalar_mix.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 \
      | tee "$OUT/bench.log" | grep -v "^\.\.\." | grep -E "^#|bermo|compile \||FAIL|exit|Error" | tail -30
    echo "benchmark exit: ${PIPESTATUS[0]}"
  fi
  timeout "${LN_TIMEOUT:-150}" $PY benchmarks/scalar_mix.py --layer-norm --dtypes bfloat16 --out "$OUT" 2>&1 \
    | tee "$OUT/bench_ln.log" | grep -E "^#|bermo \||FAIL|Error" | tail -12
  echo "layer-norm benchmark exit: ${PIPESTATUS[0]}"
fi
