#!/usr/bin/env bash
# The one prepared GPU script: in ONE device call of at most 10 minutes, measure
#   (a) the scaling sweep on CUDA (peak memory, time per meta-step vs inner steps 1..20; suite `scaling`),
#   (b) the micro-benchmarks (pytest tests/perf, python -m benchmarks.perf.limits --device cuda),
#   (b') the evaluation throughput, serial against batched in both convolution modes
#       (python -m benchmarks.perf.eval_throughput --device cuda): the figures the per-device default follows,
#   (c) the papers' Omniglot 5-way protocol on the small split (suite `gpu-omniglot-small`: 6 cells,
#       each given a fair share of the time left by benchmarks/gpu/cells.py, cut short by --max-minutes),
#   (d) bundle everything into <= 8 flat files under $OUT (benchmarks/gpu/bundle.py) and print a table,
# inside a HARD budget: BUDGET_S seconds (default 540 = 9 min) from the start, the bundle included.
# The rehearsal (--rehearse, on CPU) runs the same steps on a FIXED amount of work instead (a few cells,
# tasks and PAPER_ITERS meta-iterations per paper cell, no step killed by a clock), so a slow or busy
# machine rehearses exactly what a fast one does: budgets are for the GPU run only.
#
# THE WHOLE PROCEDURE
#   1. Here, before the call (needs the network once, for the `higher` wheel):
#        make gpu-rehearsal     # the same steps on CPU in ~2 minutes: catches typos before the GPU call
#        make gpu-prepare       # .whl/higher-0.2.1-py3-none-any.whl, .gpu-data/omniglot/*.zip, .gpu-data/SOURCE.txt
#   2. The device call (exactly one; it prints this again):
#        run(command="bash benchmarks/gpu/results.sh", carry=[".whl", ".gpu-data"], timeout_s=600)
#      The files come back read-only under the reply's `files_at` folder. If `status` shows less than
#      ~12 minutes of device time left, shrink the budget in the command: "BUDGET_S=400 bash benchmarks/gpu/results.sh"
#      (the paper cells absorb the cut). The reply's output_tail ends with the summary table.
#   3. Here, after the call:
#        make gpu-import GPU_FILES=<files_at folder> CARD=h100     # (or h200: the card the reply names)
#      -> results/h100/{rows.csv,curves.csv,limits.json,provenance.txt,log.txt},
#         results/perf/h100-benchmarks.json, results/eval/throughput_h100.json, then
#         `python -m benchmarks.cli tables` and `python -m benchmarks.reporting.readme` regenerate the
#         tables, plots and the generated blocks of README.md and docs/.
#
# Usage: bash benchmarks/gpu/results.sh [--rehearse] [--dry-run] [--prepare]
#   (no flag)    GPU run: CUDA must be visible (fails fast otherwise), budget 540 s.
#   --rehearse   (or REHEARSE=1) the same steps on CPU, a fixed amount of work, no time limits (make gpu-rehearsal).
#   --dry-run    (or DRY_RUN=1) print each step's command and limit, run nothing.
#   --prepare    step 1 above (make gpu-prepare).
# Environment (optional): OUT (default: a new /tmp folder; must be empty), PYTHON (default python3),
#   BUDGET_S, RESERVE_S (kept for the bundle), STEPS (subset of "scaling micro eval paper"),
#   SCALING_CELLS, SCALING_MAX_S, MICRO_MAX_S, EVAL_MAX_S, EVAL_ARGS, PERF_SELECT (pytest -k), LIMITS_ARGS, PAPER_CELLS,
#   EVAL_TASKS, PAPER_ITERS (rehearsal: evaluation tasks and meta-iterations per paper cell),
#   TAIL, MIN_WINDOW (GPU run: see benchmarks/gpu/cells.py),
#   GPU_WORK (scratch folder), OMNIGLOT_ROOT (default .gpu-data/omniglot when present).
# What runs on the device: python3 (3.12, torch with CUDA, no higher, no wandb, no network) from the
# repository root; `higher` is installed from .whl into /tmp/site; the project runs from the tree
# (PYTHONPATH), wandb is disabled, nothing is downloaded (REPTILE_BENCH_OFFLINE=1).
set -euo pipefail

usage() { sed -n '/^# Usage:/,/^# What runs/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

MODE=gpu
DRY=${DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --rehearse) MODE=rehearse ;;
    --dry-run) DRY=1 ;;
    --prepare) MODE=prepare ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ "${REHEARSE:-0}" == 1 && $MODE == gpu ]]; then MODE=rehearse; fi
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
PY=${PYTHON:-python3}
SMALL_ZIPS=(images_background_small1.zip images_background_small2.zip)
declare -A MD5=([images_background_small1.zip]=e704a628b5459e08445c13499850abc4
                [images_background_small2.zip]=b75a71a51d3b13f821f212756fe481fd)
CALL='run(command="bash benchmarks/gpu/results.sh", carry=[".whl", ".gpu-data"], timeout_s=600)'

# ---------------------------------------------------------------------------------------------- prepare
prepare() {
  local src=${OMNIGLOT_ROOT:-data/omniglot} z sum
  mkdir -p .whl .gpu-data/omniglot
  # A folder that ignores itself: git status stays clean (rows' git_dirty) even where .gitignore lacks it.
  [[ -f .gpu-data/.gitignore ]] || printf '# written by make gpu-prepare: carried to the device, never committed\n*\n' > .gpu-data/.gitignore
  # higher, and TorchOpt with what it imports (its backend is timed there too); learn2learn is not carried
  # (it needs a build: the GPU run skips it and says so).
  for spec in higher==0.2.1 torchopt==0.7.3 optree graphviz submitit; do
    name=${spec%%==*}
    if compgen -G ".whl/${name}-*.whl" >/dev/null; then
      echo "have $(ls .whl/${name}-*.whl)"
    else
      "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$spec"
    fi
  done
  for z in "${SMALL_ZIPS[@]}"; do
    if [[ ! -f "$src/$z" ]]; then
      echo "error: $src/$z not found; set OMNIGLOT_ROOT to the folder holding the two Omniglot small zips" >&2
      exit 3
    fi
    cp -f "$src/$z" .gpu-data/omniglot/
    chmod u+w ".gpu-data/omniglot/$z"
    sum=$(md5sum ".gpu-data/omniglot/$z" | cut -d' ' -f1)
    if [[ $sum != "${MD5[$z]}" ]]; then
      echo "error: .gpu-data/omniglot/$z has md5 $sum, expected ${MD5[$z]} (the official file); get it again" >&2
      exit 3
    fi
    echo "copied $src/$z -> .gpu-data/omniglot/ (md5 ok)"
  done
  { echo "prepared: $(date -u +%FT%TZ)"
    echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "files differing from that commit (git status --porcelain, results excluded):"
    git status --porcelain -- . ':(exclude)results' 2>/dev/null | sed 's/^/  /' || true
  } > .gpu-data/SOURCE.txt
  if [[ -n "$(git status --porcelain -- . ':(exclude)results' 2>/dev/null)" ]]; then
    echo "warning: the tree differs from HEAD; the device runs the tree as it is now (listed in .gpu-data/SOURCE.txt)"
  fi
  for p in .whl/x .gpu-data/x; do
    git check-ignore -q "$p" 2>/dev/null || echo "warning: ${p%/x}/ is not git-ignored: add /${p%/x}/ to .gitignore"
  done
  echo "carry size: $(du -sch .whl .gpu-data | tail -1 | cut -f1) (limit 64 MiB)"
  echo
  echo "Rehearse first if not done (make gpu-rehearsal), then make exactly this device call:"
  echo "  $CALL"
  echo "and import its files:  make gpu-import GPU_FILES=<files_at folder> CARD=h100"
}
if [[ $MODE == prepare ]]; then prepare; exit 0; fi

# ------------------------------------------------------------------------------------------ settings
START=$(date +%s)
if [[ $MODE == rehearse ]]; then
  DEVICE=cpu
  # Fixed work: the limits below are only reported, never enforced (see `step`).
  : "${BUDGET_S:=160}" "${RESERVE_S:=15}" "${SCALING_MAX_S:=35}" "${MICRO_MAX_S:=70}" "${MIN_WINDOW:=4}"
  : "${EVAL_MAX_S:=25}" "${EVAL_ARGS=--tasks 4 --repeats 1}"
  : "${SCALING_CELLS=scaling-*-k1}" "${PERF_SELECT=sampling or reptile}" "${LIMITS_ARGS=--repeats 1 --only reptile --compile}"
  : "${EVAL_TASKS=10}" "${PAPER_ITERS:=4}" "${TAIL:=reptile=8,fomaml=5,maml=5}" "${PAPER_CELLS=5w1s}"
else
  DEVICE=cuda
  # Budget split (s): setup + data ~15, scaling <= 120, micro-benchmarks <= 110 (torch.compile's trial
  # last: what it has not finished when the step's time is up is lost alone), evaluation throughput
  # <= 50 (40 tasks x 2 repeats: serial Reptile fine-tuning, 50 launch-bound Adam steps a task, is
  # most of it), bundle 30, the rest (~210) to the 6 paper cells: ~140 for their evaluations (TAIL,
  # first guesses, then measured), the remainder shared equally as training windows.
  : "${BUDGET_S:=540}" "${RESERVE_S:=30}" "${SCALING_MAX_S:=120}" "${MICRO_MAX_S:=110}" "${MIN_WINDOW:=10}"
  : "${EVAL_MAX_S:=50}" "${EVAL_ARGS=--tasks 40 --repeats 2}"
  : "${SCALING_CELLS=}" "${PERF_SELECT=}" "${LIMITS_ARGS=--repeats 15 --compile}" "${EVAL_TASKS=}" "${TAIL:=reptile=45,fomaml=12,maml=12}"
  : "${PAPER_CELLS=}" "${PAPER_ITERS=}"
fi
: "${STEPS:=scaling micro eval paper}"
DEADLINE=$((START + BUDGET_S))
if [[ $DRY == 1 ]]; then
  OUT=${OUT:-/tmp/gpu-results-out.DRYRUN}; WORK=${GPU_WORK:-/tmp/gpu-work.DRYRUN}
else
  OUT=${OUT:-$(mktemp -d /tmp/gpu-results-out.XXXXXX)}
  WORK=${GPU_WORK:-$(mktemp -d /tmp/gpu-work.XXXXXX)}
  mkdir -p "$OUT" "$WORK"
  if [[ -n "$(ls -A "$OUT")" ]]; then
    echo "error: OUT=$OUT is not empty; at most 8 files come back, so give an empty folder" >&2
    exit 2
  fi
  if [[ -n "$(ls -A "$WORK")" ]]; then
    echo "error: GPU_WORK=$WORK is not empty; give an empty (or new) folder" >&2
    exit 2
  fi
  exec > >(tee -a "$WORK/log.txt") 2>&1
fi
SITE=$([[ $MODE == gpu ]] && echo /tmp/site || echo "$WORK/site")
# The zips carried in .gpu-data (make gpu-prepare) win; else $OMNIGLOT_ROOT, else ./data/omniglot.
if compgen -G '.gpu-data/omniglot/*.zip' >/dev/null; then OMNIGLOT_ROOT=$REPO/.gpu-data/omniglot; fi
export OMNIGLOT_ROOT=${OMNIGLOT_ROOT:-$REPO/data/omniglot}
export REPTILE_BENCH_CACHE=${REPTILE_BENCH_CACHE:-$([[ $MODE == gpu ]] && echo /tmp/cache || echo "$WORK/cache")}
export REPTILE_BENCH_OFFLINE=1 WANDB_MODE=disabled CI=1
# .git does not travel to the device: the rows' git columns come from what `make gpu-prepare` recorded.
if [[ -f .gpu-data/SOURCE.txt ]] && ! git rev-parse HEAD >/dev/null 2>&1; then
  REPTILE_BENCH_GIT_COMMIT=$(sed -n 's/^git commit: //p' .gpu-data/SOURCE.txt)
  REPTILE_BENCH_GIT_DIRTY=$([[ $(sed -n '4,$p' .gpu-data/SOURCE.txt | grep -c .) -gt 0 ]] && echo true || echo false)
  export REPTILE_BENCH_GIT_COMMIT REPTILE_BENCH_GIT_DIRTY
fi
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}

FAILED=""
# note TEXT: print it and keep it in provenance.txt.
note() { echo "note: $*"; if [[ $DRY != 1 ]]; then echo "note: $*" >> "$WORK/provenance.txt"; fi; }
left() { echo $((DEADLINE - RESERVE_S - $(date +%s))); }
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# step NAME CAP_S CMD...: run CMD under `timeout` with min(CAP_S, time left before the bundle reserve); in the
# rehearsal the work is fixed and CMD runs to its end whatever the clock says.
# A failing step is recorded and the script goes on: the other steps' numbers are still worth bringing back.
step() {
  local name=$1 cap=$2; shift 2
  local l; l=$(left)
  local limit=$((cap < l ? cap : l)) t0 rc=0
  if [[ $DRY == 1 ]]; then
    printf '[dry-run] %-9s limit <= %4s s: %s\n' "$name" "$cap" "${*@Q}"
    return 0
  fi
  t0=$(date +%s)
  if [[ $MODE == rehearse ]]; then
    echo "== $name (fixed work, no time limit): $*"
    "$@" || rc=$?
  elif ((limit < 5)); then
    echo "== $name: SKIPPED, ${l} s left before the bundle" | tee -a "$WORK/steps.txt"
    return 0
  else
    echo "== $name: limit ${limit} s ($((DEADLINE - $(date +%s))) s of the budget left): $*"
    timeout -k 10 "$limit" "$@" || rc=$?
  fi
  # 5: the CLI's "not finished" (a --max-minutes budget cut it): expected here, the rows say complete=False.
  if ((rc && rc != 5)); then FAILED="$FAILED $name"; fi
  echo "$name: exit $rc after $(($(date +%s) - t0)) s ($([[ $MODE == rehearse ]] && echo "fixed work" || echo "limit ${limit} s"))" \
    | tee -a "$WORK/steps.txt"
}

finish() {
  local rc=$?
  trap - EXIT
  echo "== bundle ($((DEADLINE - $(date +%s))) s of the budget left; script status so far $rc)"
  { echo; echo "== steps (exit status, seconds) =="; cat "$WORK/steps.txt" 2>/dev/null || true
    echo; echo "== paper-protocol schedule (benchmarks/gpu/cells.py) =="; cat "$WORK/schedule.txt" 2>/dev/null || echo "(did not run)"
    echo; echo "total wall time before the bundle: $(($(date +%s) - START)) s of BUDGET_S=$BUDGET_S"
  } >> "$WORK/provenance.txt"
  local brc=0 limit=()
  if [[ $MODE != rehearse ]]; then limit=(timeout -k 5 $((RESERVE_S + 15))); fi
  "${limit[@]}" "$PY" -m benchmarks.gpu.bundle bundle --work "$WORK" --out "$OUT" || brc=$?
  echo "results.sh: $MODE run done in $(($(date +%s) - START)) s; files in OUT=$OUT"
  if [[ -n $FAILED ]]; then echo "steps that failed or ran out of time:$FAILED (see log.txt)"; fi
  if ((rc == 0 && brc == 0)) && [[ -n $FAILED ]]; then rc=1; fi
  exit $((rc ? rc : brc))
}

# ------------------------------------------------------------------------------------------- setup
echo "results.sh: mode $MODE, device $DEVICE, budget ${BUDGET_S} s (bundle reserve ${RESERVE_S} s), steps: $STEPS"
echo "OUT=$OUT WORK=$WORK OMNIGLOT_ROOT=$OMNIGLOT_ROOT PYTHON=$PY"
if [[ $DRY == 1 ]]; then
  echo "[dry-run] setup: install .whl/*.whl into $SITE (pip --target, or unzip), check torch/higher/CUDA, write provenance"
  echo "[dry-run] data: load the Omniglot small split once (cache in $REPTILE_BENCH_CACHE)"
else
  trap finish EXIT
  if compgen -G '.whl/*.whl' >/dev/null; then
    mkdir -p "$SITE"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl; then
      echo "pip could not install .whl/*.whl; unpacking the (pure-Python) wheels instead"
      for w in .whl/*.whl; do "$PY" -m zipfile -e "$w" "$SITE"; done
    fi
    # Compile once, quietly: higher 0.2.1 has an `is 1` that makes every fresh compile print a SyntaxWarning.
    "$PY" -W ignore -m compileall -q "$SITE" >/dev/null || true
  elif [[ $MODE == gpu ]] && ! "$PY" -c 'import higher' 2>/dev/null; then
    echo "error: no .whl/*.whl and \`higher\` is not importable: run \`make gpu-prepare\` and carry .whl" >&2
    exit 3
  else
    echo "note: no .whl/ folder; using the environment's own \`higher\`"
  fi
  {
    echo "== provenance of this GPU-script run =="
    echo "date (UTC): $(date -u +%FT%TZ)  host: ${HOSTNAME:-unknown}  mode: $MODE  budget: ${BUDGET_S} s"
    echo "command: bash benchmarks/gpu/results.sh $*  STEPS='$STEPS'"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo 'no .git here')$(git status --porcelain 2>/dev/null | grep -q . && echo ' (tree differs from HEAD)' || true)"
    if [[ -f .gpu-data/SOURCE.txt ]]; then echo "-- .gpu-data/SOURCE.txt (written by make gpu-prepare) --"; cat .gpu-data/SOURCE.txt; fi
    echo "-- nvidia-smi --"
    nvidia-smi 2>&1 || echo "(nvidia-smi not available)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv 2>&1 || true
    echo "-- python / torch --"
  } > "$WORK/provenance.txt"
  # One interpreter start: versions, device, and the checks (exit 3: a package missing; 4: no CUDA on the GPU run).
  check=0
  NEED_CUDA=$([[ $MODE == gpu ]] && echo 1 || echo 0) "$PY" - >> "$WORK/provenance.txt" 2>&1 <<'EOF' || check=$?
import os, platform, sys
try:
    import torch, higher, pandas, matplotlib, tqdm, numpy  # noqa: F401  (what the steps import)
except ImportError as e:
    print(f"error: {e}: a package the benchmark needs does not import"); sys.exit(3)
print("python", platform.python_version(), "| torch", torch.__version__, "| torch CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
      "| higher from", os.path.dirname(higher.__file__), "| pandas", pandas.__version__, "| numpy", numpy.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("torch.cuda.get_device_name():", torch.cuda.get_device_name(), "| capability",
          torch.cuda.get_device_capability(), "| memory", round(p.total_memory / 2**30, 1), "GiB | devices",
          torch.cuda.device_count())
else:
    print("torch.cuda.get_device_name(): no CUDA device visible to torch")
    if os.environ.get("NEED_CUDA") == "1":
        print("error: torch sees no CUDA device; this script is for the GPU (use --rehearse on CPU)"); sys.exit(4)
EOF
  cat "$WORK/provenance.txt"
  if ((check)); then echo "error: setup check failed (exit $check, message above)" >&2; exit "$check"; fi
  if ! grep -qE '^backends *=.*batched' benchmarks/suites/scaling.toml; then
    note "benchmarks/suites/scaling.toml lists only the reference backend: the sweep will not show 'batched'"
  fi
  step data 90 "$PY" -c "from datasets import load_pool
for part in ('train', 'test'):
    p = load_pool('omniglot', 'small', part, download=False)
    print(f'omniglot small {part}: {p.num_classes} classes x {p.examples_per_class} images')"
fi

# ---------------------------------------------------------------------------------- (a) scaling sweep
if wants scaling; then
  l=$(left); cap=$((SCALING_MAX_S < l ? SCALING_MAX_S : l))
  # --max-minutes lets the CLI stop cleanly (cells not started are listed) 15 s before `timeout` would kill it.
  mm=()
  if [[ $MODE == gpu ]]; then mm=(--max-minutes "$("$PY" -c "print(max(0.05, ($cap - 15) / 60))" 2>/dev/null || echo 1)"); fi
  step scaling "$cap" "$PY" -m benchmarks.cli run --suite scaling --device "$DEVICE" --out "$WORK/results" \
    --wandb disabled "${mm[@]}" ${SCALING_CELLS:+--cells "$SCALING_CELLS"}
fi

# ------------------------------------------------------------------------------- (b) micro-benchmarks
if wants micro; then
  l=$(left); micro_end=$(($(date +%s) + (MICRO_MAX_S < l ? MICRO_MAX_S : l)))
  if grep -qs -- '--perf-device' tests/perf/conftest.py tests/conftest.py; then
    step perf $((MICRO_MAX_S / 2)) "$PY" -m pytest -q -p no:cacheprovider tests/perf --benchmark-only \
      --perf-device "$DEVICE" --benchmark-json "$WORK/benchmarks.json" ${PERF_SELECT:+-k "$PERF_SELECT"}
  elif [[ $DEVICE == cpu ]]; then
    step perf $((MICRO_MAX_S / 2)) "$PY" -m pytest -q -p no:cacheprovider tests/perf --benchmark-only \
      --benchmark-json "$WORK/benchmarks.json" ${PERF_SELECT:+-k "$PERF_SELECT"}
  else
    note "tests/perf has no --perf-device option, so its meta-step benchmarks would time the CPU;" \
      "only the sampler benchmark (CPU-side by nature) runs; benchmarks.perf.limits times the meta-steps on CUDA"
    step perf $((MICRO_MAX_S / 3)) "$PY" -m pytest -q -p no:cacheprovider tests/perf/test_sampling.py \
      --benchmark-only --benchmark-json "$WORK/benchmarks.json"
  fi
  # shellcheck disable=SC2086 # LIMITS_ARGS is a list of words on purpose
  step limits $((micro_end - $(date +%s))) "$PY" -m benchmarks.perf.limits --device "$DEVICE" --json "$WORK/limits.json" $LIMITS_ARGS
fi

# ---------------------------------------------------------------------- (b') evaluation throughput
if wants eval; then
  # shellcheck disable=SC2086 # EVAL_ARGS is a list of words on purpose
  step eval "$EVAL_MAX_S" "$PY" -m benchmarks.perf.eval_throughput --device "$DEVICE" --json "$WORK/eval.json" $EVAL_ARGS
fi

# ------------------------------------------------------------------ (c) paper protocol, Omniglot small
if wants paper; then
  # The GPU run shares the time left fairly between the cells; the rehearsal trains each PAPER_ITERS iterations.
  if [[ $MODE == rehearse ]]; then work=(--iterations "$PAPER_ITERS")
  else work=(--deadline "$((DEADLINE - RESERVE_S - 5))" --tail "$TAIL" --min-window "$MIN_WINDOW"); fi
  step paper "$(left)" "$PY" -m benchmarks.gpu.cells --suite gpu-omniglot-small --out "$WORK/results" \
    --device "$DEVICE" "${work[@]}" --wandb disabled --log "$WORK/schedule.txt" \
    ${EVAL_TASKS:+--eval-tasks "$EVAL_TASKS"} ${PAPER_CELLS:+--cells "$PAPER_CELLS"}
fi

if [[ $DRY == 1 ]]; then
  echo "[dry-run] bundle: $PY -m benchmarks.gpu.bundle bundle --work $WORK --out $OUT   (<= 8 files, table last)"
  echo "[dry-run] device call: $CALL"
fi
# (d) the bundle runs in the EXIT trap (finish), also after a failure.
