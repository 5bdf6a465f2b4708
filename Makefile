# Two commands do all the set-up on a fresh machine (each creates/updates .venv first):
#   make demo   - the whole federation simulated on this machine (mnist-5k, 10 hospitals), report in demo_output/
#   make test   - the test suite, in 2 pytest-xdist workers (one file per worker at a time: a file's
#                 module fixtures, such as the demo runs, are built once)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/federated-factory demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile $(ARGS)

clean:
	rm -rf demo_output runs .pytest_cache
