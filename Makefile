# Common commands. Each target sets up .venv (pinned) on first use.
PY := .venv/bin/python

.PHONY: setup test test-fast demo lint bench-kernels clean
setup:
	@bash scripts/setup_env.sh

test: setup           ## the whole test suite (what CI runs)
	$(PY) -m pytest -q tests

test-fast: setup      ## skip end-to-end runs
	$(PY) -m pytest -q -m "not slow" tests

demo: setup           ## the main job at toy scale on the embedded data
	$(PY) -m encoder.pipeline

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf runs/ .pytest_cache
