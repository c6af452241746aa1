# Common commands. Each target sets up .venv (pinned) on first use.
PY := .venv/bin/python

.PHONY: setup setup-run test test-fast demo demo-heldout small quality lint bench-kernels gpu-check clean
setup:                ## .venv with everything the tests use
	@bash scripts/setup_env.sh

setup-run:            ## .venv with what the pipeline needs (no Triton, DeepSpeed or test tools: 30 s less)
	@EXTRAS= bash scripts/setup_env.sh

test: setup           ## the whole test suite (what CI runs)
	$(PY) -m pytest -q tests

test-fast: setup      ## skip end-to-end runs
	$(PY) -m pytest -q -m "not slow" tests

demo: setup-run       ## the main job at toy scale on the embedded data
	$(PY) -m encoder.pipeline

demo-heldout: setup-run ## the demo plus a held-out domain (Debian handbook, fetched with apt-get download)
	$(PY) -m encoder.pipeline --config configs/pipeline_demo_heldout.yaml

small: setup-run      ## the largest CPU run: 12 languages of real documentation, a 4-layer model (< 2 h on 2 cores)
	$(PY) -m encoder.pipeline --config configs/pipeline_small.yaml

quality: setup-run    ## the quality table and checks of finished runs (RUNS="runs/demo runs/small")
	$(PY) bench/quality.py $(or $(RUNS),runs/demo)

lint: setup
	$(PY) -m ruff check .

# No setup: runs with the GPU image's own python3 (torch + triton). ~6 min on one H100, capped at 7.
GPU_PYTHON ?= python3
gpu-check:            ## GPU validation: make gpu-check OUT=runs/gpu-check (ARGS=--help: what it runs)
	$(GPU_PYTHON) scripts/gpu_check.py $(or $(OUT),runs/gpu-check) $(ARGS)

clean:
	rm -rf runs/ .pytest_cache
