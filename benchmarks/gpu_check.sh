#!/usr/bin/env bash
# One call on a lent GPU machine: environment, install, every test (GPU ones included), then the GPU benchmarks.
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh [tests|bench|all]
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
