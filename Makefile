# `make demo` and `make test` each set up .venv (CPU torch) and run. GPU users: create
# .venv yourself with your CUDA torch build first; the torch pin below is then satisfied.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?= torch==2.13.0
STAMP    := $(VENV)/.installed
STUDY    ?= studies/default.yaml
DEMO_OUT ?= demo-out
# 2 processes x 1 thread: on 2 cores the small models here run faster on one thread each than two threads on one
JOBS     ?= 2

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[notebooks,test]"
	touch $(STAMP)

venv: $(STAMP)

# pytest-xdist: the test files split over $(JOBS) workers (a file's module fixtures are built once)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(JOBS) --dist loadfile tests

# The default study on the embedded mnist5k digits (see studies/default.yaml): five tokenizers,
# their latent structure, SiT on each, generation FD, correlations, report.html.
demo: $(STAMP)
	OMP_NUM_THREADS=$(JOBS) $(BIN)/latentlab run $(STUDY) --out $(DEMO_OUT) --jobs $(JOBS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) workspace
