# Two commands matter: `make demo` (creates .venv when missing, then reconstructs the bundled
# example with the embedded model) and `make test` (creates .venv when missing, then pytest;
# `make test-fast` is the quick inner-loop subset).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONSTRAINTS := requirements/constraints.txt

CORE_STAMP := $(VENV)/.core-stamp
# the embedded model's data (issue 19): domain-randomised scenes, each step at one of these sizes
# (several resolutions and aspect ratios, 112-504 px) under a budget of patch tokens per step
EMBEDDED_SIZES := 126x168,168x126,168x168,112x196,168x224,224x168,252x336,336x252,294x504,378x504,504x378
EMBEDDED_DATA := --generator randomized --sizes $(EMBEDDED_SIZES) --max-tokens 1300 --scenes 1000
# its two training stages (see embedded-model)
EMBEDDED_STAGE1 := --steps 1500 $(EMBEDDED_DATA)
EMBEDDED_STAGE2 := --steps 2500 --views 2-4 --view-gap 3 --correspondence 1 $(EMBEDDED_DATA)
# continue a run folder that holds an unfinished (or finished) run instead of starting over
resume_if = $$(test -f $(1)/train_state.json && echo --resume)

.PHONY: venv test test-fast demo embedded-model bench blender-addon clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev,hub,open3d,nerfstudio,blender,ray]"
	# the official implementation, only a test oracle: no dependencies of its own
	$(PY) -m pip install -q --no-deps -c $(CONSTRAINTS) depth-anything-3
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# the inner loop (about 3 minutes on 2 cores): no oracle comparisons, no host tools (Blender,
# nerfstudio, Open3D), no slow runs; stops at the first failure
test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not oracle and not host and not slow"

# the demo needs only the core: a lean install when no environment exists yet
$(CORE_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -f $(STAMP) || $(PY) -m pip install -q -c $(CONSTRAINTS) -e .
	touch $(CORE_STAMP)

demo: $(CORE_STAMP)
	$(VENV)/bin/da3p demo -o da3-demo --overwrite

# reproduces the embedded model in two stages on domain-randomised synthetic scenes at several
# sizes (measured: 1 h 46 min of training + 12 min of evaluation on 2 CPU cores): from
# scratch with the paper's losses, then a fine-tune on overlapping views with the
# attention-matching aid; then packs it into da3_plugins/data/da3-tiny and evaluates it per
# held-out family at 168 and 504 px.  Interrupted, the same command resumes each stage from its
# last checkpoint (every 250 steps).
embedded-model: $(STAMP)
	$(VENV)/bin/da3p train -o runs/da3-tiny-base --threads 2 $(EMBEDDED_STAGE1) $(call resume_if,runs/da3-tiny-base)
	$(VENV)/bin/da3p train -o runs/da3-tiny --init runs/da3-tiny-base --threads 2 $(EMBEDDED_STAGE2) $(call resume_if,runs/da3-tiny)
	$(PY) scripts/pack_embedded_model.py runs/da3-tiny

# every benchmark in one table (short settings; each script alone takes more options)
bench: $(STAMP)
	$(PY) benchmarks/bench_all.py

blender-addon: $(STAMP)
	$(VENV)/bin/da3p blender build -o dist

clean-venv:
	rm -rf $(VENV)
