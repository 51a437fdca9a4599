# `make demo` and `make test` each set up .venv (CPU torch) and run. GPU users: create
# .venv yourself with your CUDA torch build first; the torch pin below is then satisfied.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?= torch==2.13.0
STAMP    := $(VENV)/.installed
STUDY    ?= studies/default.yaml
DEMO_OUT ?= demo-out

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[notebooks,test]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests

# Interim demo until the study runner exists (then: latentlab run $(STUDY) --out $(DEMO_OUT)):
# the mnist5k pixels baseline store, then GMM NLL against the number of components. Diagonal
# covariances: full ones with K >= 20 in the 84 PCA dimensions over-fit the 3,200 training digits.
demo: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/latentlab import-latents --dataset mnist5k --out $(DEMO_OUT)/stores/pixels
	OMP_NUM_THREADS=2 $(BIN)/latentlab fit-gmm --tokenizer pixels=$(DEMO_OUT)/stores/pixels --covariance diag --out $(DEMO_OUT)/gmm

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) workspace
