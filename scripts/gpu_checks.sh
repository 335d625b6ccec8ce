#!/usr/bin/env bash
# Every GPU measurement the open issues ask for, in one device call: the seed recipe by path
# (#9 A), the fast recipe against airbench94 (#9 B) and the step-time benchmark's GPU rows
# (#5). Expected 6-7 minutes on an H100/H200 once the machine has started (a session's device
# time is 15 minutes, start-up included: run it once, with timeout_s 600); each step has its
# own timeout (together 580 s: 10 + 30 to name the GPU, 40 for the data, 80 + 130 for the
# seed recipe's XLA and Pallas paths, 200 + 90 for the other two parts; under the device
# tool's 600 s a call), so one that hangs does not cost the others, and each part saves its
# results into $OUT as it goes (after every path, run or case), so a part stopped by its time
# limit keeps what it measured.
#
# Prepare on the CPU machine, once, from the repository root (both folders are git-ignored):
#   mkdir -p .data .whl && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#   python3 -m pip download --no-deps airbench==0.1.8 -d .whl
# then run through the device tool: command "bash scripts/gpu_checks.sh", carry [".data", ".whl"].
# Results land in $OUT (the device tool's output folder; benchmarks/results without it).
# QUICK=1 shrinks every part to a smoke test (a minute or two on a CPU), to check the script
# itself: the test suite runs it so (tests/test_gpu_checks.py), with PYTHON (the interpreter
# that has jaxcifar's dependencies; default python3) and DATA_DIR (default .data) set.
# PARTS (default "seed speedrun bench", always run in that order) names the parts to run: a
# rerun of one part fits the device time a full call leaves. Everything printed is also saved as
# $OUT/gpu_checks.log (the device tool returns only the output's last 12,000 characters).
# Exits 1 if any part failed or ran out of time, after running them all.
# The GPU machine's JAX is newer than this project's CPU one (0.11.2 there in 2026-11, 0.10.2
# here, untestable here): Pallas' Triton backend is deprecated from 0.11, so the two Pallas
# paths (fused-pallas, fused-pallas-all) may end as failure rows; the other paths import no
# Pallas and run regardless.
set -uo pipefail
cd "$(dirname "$0")/.."
# Absolute: benchmarks/speedrun.py works in a temporary folder while airbench runs.
out=$(realpath -m "${OUT:-benchmarks/results}")
mkdir -p "$out"
quick=${QUICK:-0}
python=${PYTHON:-python3}
data=${DATA_DIR:-.data}
parts=" ${PARTS:-seed speedrun bench} "
failed=()
# Unbuffered, so a part stopped by its time limit keeps its printed lines in the log.
export PYTHONUNBUFFERED=1
exec > >(tee "$out/gpu_checks.log") 2>&1
tee_pid=$!
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT

# wanted PART: whether PARTS names it.
wanted() { [[ $parts == *" $1 "* ]]; }
for part in $parts; do
  case $part in
    seed | speedrun | bench) ;;
    *) echo "PARTS: unknown part '$part' (expected some of: seed speedrun bench)"; exit 2 ;;
  esac
done

# run_part NAME SECONDS COMMAND...: the command under its own time limit; a failure is
# noted and the next part runs.
run_part() {
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" || failed+=("$name (exit $?)")
}

# No pip install: the GPU machine reaches no package index, and building even a pure-Python
# sdist wants setuptools from one. The project runs from this checkout, and airbench94 (pure
# Python; torch and numpy are already there) from its unpacked sdist.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/airbench-*.tar.gz >/dev/null 2>&1; then
  airbench_src=$(mktemp -d)
  tar xzf .whl/airbench-*.tar.gz -C "$airbench_src"
  export PYTHONPATH="$PYTHONPATH:$(ls -d "$airbench_src"/airbench-*)"
fi
# Decoded data and compiled programs in the checkout (git-ignored), not a machine path.
export JAXCIFAR_CACHE=${JAXCIFAR_CACHE:-$PWD/.cache}
# The GPU as the driver and JAX see it, each under a time limit: a GPU initialisation that
# hangs must not take the parts' time. No nvidia-smi (a CPU machine) is not a failure; its
# timing out is.
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
[ $? -ne 124 ] || failed+=("nvidia-smi (timed out)")
run_part "devices" 30 "$python" -c "import jax; print('jax', jax.__version__, jax.devices())"

# Decode the JPEGs once (the cache makes every later load ~0.4 s; a part that finds no cache
# decodes them itself).
timeout 40 "$python" -c "from jaxcifar.data import load; import sys
[load('cifar10', s, data_dir=sys.argv[1]) for s in ('train', 'test')]" "$data"

if [ "$quick" = 1 ]; then
  seed_args=(--epochs 1 --limit-train 16 --limit-test 50)
  speedrun_args=(--runs 1 --epochs 0.2 --limit-train 2048 --limit-test 500 --widths 16 32 32)
  bench_args=(--models cnn --batch-sizes 4 --dtypes float32 --steps 2 --epoch-images 16
              --epoch-batch-sizes 8)
else
  # The fused paths again at 4 steps per loop iteration: what one iteration of XLA's while
  # loop costs on the GPU besides the step (a host round-trip for its condition, unless it
  # runs from a known trip count) is what unrolling divides. The Pallas paths run in a
  # process of their own, after the XLA ones and with their own time: Triton's kernels are
  # the least proven code here, and a fault that broke the GPU context, or a slow compile,
  # must not cost the other rows. fused-pallas-all, the candidate for #9 A, runs first.
  # --profile traces one more epoch of fused-pallas-all at unroll 1 (six kernels a step,
  # ~100,000 events; a second or two), before the unroll-4 rows: which kernels the step's
  # time goes to, for the next change to act on. --graph-paths runs fused-pallas-all again
  # right after each of its runs with every epoch one CUDA graph whose loop the GPU runs
  # (FusedRunner(graph=True); benchmarks/gpu_programs.py): no host launch an iteration.
  seed_args=(--unroll 1 4)
  speedrun_args=(--runs 5 --dtypes bfloat16 float16)
  # 45 cases, ~35 of them compiling: 0.25 s of timing each is ~11 s in all (GPU steps take
  # microseconds to milliseconds: still hundreds of timed steps per case); how long the GPU
  # takes to compile them is not measured yet, so the last cases may not fit the 90 s this
  # part has (fused-pallas-all's graph epochs took its 30 s: #9 A comes first). Each case is
  # saved as it finishes, and the step-time benchmark's figures are #5's, already resolved.
  bench_args=(--seconds-per-case 0.25)
fi
if wanted seed; then
  run_part "seed recipe by path, XLA (#9 A)" 80 "$python" benchmarks/seed_recipe.py \
    --data-dir "$data" --paths scan fused --out "$out" "${seed_args[@]}"
  run_part "seed recipe by path, Pallas (#9 A)" 130 "$python" benchmarks/seed_recipe.py \
    --data-dir "$data" --paths fused-pallas-all fused-pallas --append --out "$out" \
    --profile fused-pallas-all --graph-paths fused-pallas-all "${seed_args[@]}"
fi
if wanted speedrun; then
  run_part "fast recipe vs airbench94 (#9 B)" 200 "$python" benchmarks/speedrun.py \
    --data-dir "$data" --out "$out" "${speedrun_args[@]}"
fi
if wanted bench; then
  run_part "step-time benchmark (#5)" 90 "$python" -m jaxcifar bench --out "$out" \
    "${bench_args[@]}"
fi
ls -l "$out"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}"
  exit 1
fi
