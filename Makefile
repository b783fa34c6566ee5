# Entry points. `make setup` then `make benchmark`; `make test` (quick tier) and `make test-slow` are what CI runs.
PY_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build on this project's machines; GPU users: see docs/gpu.md.
TORCH_SPEC ?= torch==2.13.0
# Omniglot is read from $OMNIGLOT_ROOT when set, else ./data/omniglot (downloaded there when online).
CPU_THREADS = $(shell $(PY_SYS) -c "import os; print(os.cpu_count())")

.PHONY: setup setup-learn2learn setup-peers peer-official-reptile peer-official-reptile-accuracy peer-official-maml test test-slow test-slurm test-all slurm-up slurm-down perf benchmark paper-tables gpu-results gpu-rehearsal gpu-prepare gpu-import clean

setup: $(VENV)/.installed

# The library backends: TorchOpt from its wheel (extra "backends"); learn2learn built by a recipe of ours
# (algorithms/libraries/install_learn2learn.sh). A learn2learn build that fails is reported and setup goes
# on: every other backend works, and the learn2learn backend names `make setup-learn2learn` to retry.
$(VENV)/.installed: pyproject.toml
	$(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test,backends]"
	@bash algorithms/libraries/install_learn2learn.sh $(PY) || echo "warning: the learn2learn backend was not built (reason above); everything else is installed; retry with: make setup-learn2learn"
	touch $@

setup-learn2learn:
	bash algorithms/libraries/install_learn2learn.sh $(PY)

# Test tiers (README "Tests"): the quick one, the end-to-end one (tests marked slow), the SLURM one (jobs through
# the cluster SLURM_CONF names, default the local one of `make slurm-up`; skipped without one), all of them;
# all cores (xdist), each test file on one worker (its module-scoped fixtures are built once).
# CI runs test, test-slow, and test-slurm between slurm-up and slurm-down.
PYTEST = $(PY) -m pytest -q -n auto --dist loadfile
test: setup
	$(PYTEST) -m "not slow and not slurm"

test-slow: setup
	$(PYTEST) -m "slow and not slurm"

test-slurm: setup
	$(PYTEST) -m slurm -rs

test-all: setup
	$(PYTEST)

# A real one-node SLURM cluster on this machine (munge, slurmctld, slurmd, slurmdbd + MariaDB for sacct), every
# file under .slurm/; installs Debian's packages with apt where missing (root). Exit 4: it cannot run here.
slurm-up:
	bash benchmarks/slurm/local.sh up

slurm-down:
	bash benchmarks/slurm/local.sh down

# The malloc timed processes run with, as the cell processes do (benchmarks/running/allocator.py: tcmalloc
# where installed, REPTILE_BENCH_MALLOC=glibc for glibc's); the allocator command times each setting itself.
WITH_MALLOC = env $$($(PY) -m benchmarks.running.allocator --env)

# The limit benchmark on one thread (thread CPU time), then second-order MAML again on every core
# (wall time): whether the one-thread ratios against higher hold when torch may use all cores.
perf: setup
	mkdir -p results/perf
	$(WITH_MALLOC) $(PY) -m pytest -q tests/perf --benchmark-only --benchmark-json=results/perf/cpu-benchmarks.json
	mkdir -p results/limits results/eval results/backends results/distributed results/profile
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.limits --compile --json results/limits/cpu.json
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.limits --only maml-5 maml-1 --no-memory --threads $(CPU_THREADS) --json results/limits/cpu_all_threads.json
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.eval_throughput --json results/eval/throughput_cpu.json
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.eval_throughput --agreement --json results/eval/agreement_cpu.json
	$(PY) -m benchmarks.perf.backend_check --json results/backends/correctness.json
	$(PY) -m benchmarks.perf.data_parallel --json results/distributed/cpu.json
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.profile_reptile --json results/profile/reptile_cpu.json
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.step_variants --json results/profile/step_variants_cpu.json
	$(PY) -m benchmarks.perf.allocator --json results/profile/allocator_cpu.json
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.time_meta_step --layouts --steps 5 --warmup 1 --json results/profile/layouts_cpu.json
	$(WITH_MALLOC) $(PY) -m benchmarks.perf.conv_calls --json results/profile/conv_calls_cpu.json
	$(PY) -m benchmarks.reporting.readme

# --jobs auto: one training per core, each pinned to its own core (results identical to --jobs 1; the
# step-time columns shift, see docs/running.md). Exit 5 = cut by the budget: tables are still rendered; rerun to finish.
JOBS ?= auto
benchmark: setup
	$(PY) -m benchmarks.cli run --suite default --max-minutes 28 --jobs $(JOBS); rc=$$?; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi; \
	  $(MAKE) paper-tables; exit $$rc

# Tables, plots and the generated blocks of README.md and docs/, regenerated from results/ alone.
paper-tables: setup
	$(PY) -m benchmarks.cli tables
	$(PY) -m benchmarks.reporting.readme

# The one prepared GPU script and its procedure (see the header of benchmarks/gpu/results.sh):
# gpu-rehearsal (CPU, ~2 min) and gpu-prepare here, one device call, then gpu-import here.
gpu-results: setup
	PYTHON=$(PY) bash benchmarks/gpu/results.sh

gpu-rehearsal: setup
	PYTHON=$(PY) bash benchmarks/gpu/results.sh --rehearse

gpu-prepare: setup
	PYTHON=$(PY) bash benchmarks/gpu/results.sh --prepare

gpu-import: setup
	@test -n "$(GPU_FILES)" -a -n "$(CARD)" || { echo "usage: make gpu-import GPU_FILES=<folder of the device call's files> CARD=h100 [FORCE=1]" >&2; exit 2; }
	$(PY) -m benchmarks.gpu.bundle import --files "$(GPU_FILES)" --card "$(CARD)" $(if $(FORCE),--force)

# The TensorFlow environment the authors' codes run in (.venv-official, about 1.5 GB): an optional extra, never
# made by setup or CI; the peer targets make it on first use.
setup-peers: setup
	$(PY) -m benchmarks.peers.tf_env

# The authors' TensorFlow Reptile timed beside ours (each malloc on both sides; its own environment; never CI).
peer-official-reptile: setup
	@test -n "$(REPTILE_CHECKOUT)" || { echo "usage: make peer-official-reptile REPTILE_CHECKOUT=<a clone of https://github.com/openai/supervised-reptile>" >&2; exit 2; }
	$(PY) -m benchmarks.peers.official_reptile --checkout "$(REPTILE_CHECKOUT)"
	$(PY) -m benchmarks.cli tables
	$(PY) -m benchmarks.reporting.readme

# The authors' code trained at a suite's Reptile settings (SUITE=default unless given) and scored on its
# evaluation tasks; SUITE=reptile-seeds for three training seeds (run that suite first: ours).
peer-official-reptile-accuracy: setup
	@test -n "$(REPTILE_CHECKOUT)" || { echo "usage: make peer-official-reptile-accuracy REPTILE_CHECKOUT=<a clone of https://github.com/openai/supervised-reptile>" >&2; exit 2; }
	$(PY) -m benchmarks.peers.official_reptile_accuracy --checkout "$(REPTILE_CHECKOUT)" --suite "$(or $(SUITE),default)"
	$(PY) -m benchmarks.cli tables
	$(PY) -m benchmarks.reporting.readme

# The authors' MAML (cbfinn/maml, patched by benchmarks/peers/official_maml.patch) trained and scored on the
# maml-official suite's tasks (run that suite first: ours), then timed beside ours, each malloc on both sides.
peer-official-maml: setup
	@test -n "$(MAML_CHECKOUT)" || { echo "usage: make peer-official-maml MAML_CHECKOUT=<a clone of https://github.com/cbfinn/maml>" >&2; exit 2; }
	$(PY) -m benchmarks.peers.official_maml --checkout "$(MAML_CHECKOUT)" --suite "$(or $(SUITE),maml-official)"
	$(PY) -m benchmarks.cli tables
	$(PY) -m benchmarks.reporting.readme

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
