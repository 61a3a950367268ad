# Two commands matter: `make demo` (creates .venv when missing, then reconstructs the bundled
# example with the embedded model) and `make test` (creates .venv when missing, then pytest).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONSTRAINTS := requirements/constraints.txt

CORE_STAMP := $(VENV)/.core-stamp

.PHONY: venv test demo embedded-model bench blender-addon clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev,hub,open3d,nerfstudio,blender]"
	# the official implementation, only a test oracle: no dependencies of its own
	$(PY) -m pip install -q --no-deps -c $(CONSTRAINTS) depth-anything-3
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# the demo needs only the core: a lean install when no environment exists yet
$(CORE_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -f $(STAMP) || $(PY) -m pip install -q -c $(CONSTRAINTS) -e .
	touch $(CORE_STAMP)

demo: $(CORE_STAMP)
	$(VENV)/bin/da3p demo -o da3-demo --overwrite

# reproduces the embedded model: trains da3-tiny on synthetic scenes (about 45 min on 2 CPU
# cores), then packs it into da3_plugins/data/da3-tiny and evaluates it
embedded-model: $(STAMP)
	$(VENV)/bin/da3p train -o runs/da3-tiny --threads 2
	$(PY) scripts/pack_embedded_model.py runs/da3-tiny

bench: $(STAMP)
	$(PY) benchmarks/bench_network.py

blender-addon: $(STAMP)
	$(VENV)/bin/da3p blender build -o dist

clean-venv:
	rm -rf $(VENV)
