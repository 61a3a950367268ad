# Two commands matter: `make test` (creates .venv when missing, then runs pytest) and,
# later, `make demo`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONSTRAINTS := requirements/constraints.txt

.PHONY: venv test bench blender-addon clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev,hub,open3d,nerfstudio,blender]"
	# the official implementation, only a test oracle: no dependencies of its own
	$(PY) -m pip install -q --no-deps -c $(CONSTRAINTS) depth-anything-3
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_network.py

blender-addon: $(STAMP)
	$(VENV)/bin/da3p blender build -o dist

clean-venv:
	rm -rf $(VENV)
