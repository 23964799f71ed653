# The two commands a newcomer needs: `make serve` and `make test`; `make check` is the edit-test loop.
# Both build .venv on first use (python3.11 + pip), so a fresh machine needs nothing else.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first and pinned: it must come from the CPU wheel, never a CUDA build.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/charrnn serve

lint: $(STAMP)
	$(VENV)/bin/ruff check app worker tests benchmarks

# The whole suite, three test files at a time, the longest first (tests/conftest.py, LONGEST_FILES), and the
# 20 slowest tests printed at the end. Three on 2 cores:
# many tests wait on real server and worker processes, so a third file's waits overlap the others' work
# (measured on 2 cores: 794 s at -n 2, 604 s at -n 3; at -n 4 the CPUs are the limit and it was no faster).
test: lint
	$(VENV)/bin/python -m pytest -n 3 --dist loadfile --no-loadscope-reorder --reruns 1 --reruns-delay 2 --durations=20

# Lint and the tests that run in-process (no server, worker or torchrun processes; one torch thread per
# test process, tests/conftest.py): under a minute on 2 cores.
check: lint
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -m "not slow and not browser" --durations=10

# Every benchmark the README's Results table cites, in a seconds-long mode that only checks it runs to the
# end (benchmarks/smoke.py: about a minute on 2 cores). CI runs it after `make test`.
bench-smoke: $(STAMP)
	$(VENV)/bin/python benchmarks/smoke.py

.PHONY: install serve lint test check bench-smoke
