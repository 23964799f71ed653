# The two commands a newcomer needs: `make serve` and `make test`.
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

test: $(STAMP)
	$(VENV)/bin/ruff check app worker tests benchmarks
	$(VENV)/bin/python -m pytest

.PHONY: install serve test
