# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RUNTIME := $(VENV)/.installed-runtime
# pip runs as `python -m pip` (a copied .venv's pip script would target the original tree).
# torch is pinned and installed first so pip never resolves a (CUDA) build from the registry.
TORCH   := torch==2.13.0

.PHONY: install demo demo-priming demo-scaling test test-slow bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the demo needs only the runtime dependencies (a fresh `make demo` is timed install included); tests add dev.
$(RUNTIME): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e . "$(TORCH)"
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install -q -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME)
	$(BIN)/python -m gpt3lab demo

# a small model in which few-shot priming works (induction heads): accuracy at k = 0, 1, 2, 4, 8
demo-priming: $(STAMP)
	$(BIN)/python -m gpt3lab demo --priming

# an IsoFLOP ladder on Shakespeare bytes: scaling-law fits, hold-out prediction, runs/scaling/scaling.png
demo-scaling: $(RUNTIME)
	$(BIN)/python -m gpt3lab demo --scaling

test: $(STAMP)
	$(BIN)/python -m pytest -q -x -p no:cacheprovider

test-slow: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,lmeval]" "$(TORCH)"
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs data .cache
