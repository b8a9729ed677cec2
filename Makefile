# make demo — set up and run the pipeline end to end (as far as it exists).
# make test — set up and run the tests.
# Both create .venv and install everything on first use (CPU build of torch unless TORCH_SPEC says otherwise).

PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch; a GPU user sets e.g. TORCH_SPEC="torch==2.13.0" PIP_TORCH_ARGS="--index-url <CUDA index>".
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-neurofm
SHARED_DATA ?= ../shared/data
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?= -n 2

export OMP_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg

.PHONY: install demo test test-slow clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# The embedded default (package-shipped fMRI + the simulator), plus ../shared/data when it is there.
DEMO_CONFIGS := --config configs/demo.yaml $(if $(wildcard $(SHARED_DATA)),--config configs/shared_data.yaml root=$(SHARED_DATA),)

demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	@echo "== 1. shards. Demo data: package-shipped fMRI + simulated EEG/MEG/sEEG/ECoG/fMRI$(if $(wildcard $(SHARED_DATA)), + the recordings in $(SHARED_DATA),)"
	$(BIN)/neurofm shards build $(DEMO_CONFIGS) --out $(DEMO_OUT)/shards --quiet
	$(BIN)/neurofm shards verify $(DEMO_OUT)/shards
	@echo "== 2. tokenizer: train the tiny preset, evaluate on held-out windows, encode to code shards"
	$(BIN)/neurofm tokenizer train --config configs/tokenizer_tiny.yaml shards=$(DEMO_OUT)/shards out=$(DEMO_OUT)/tokenizer --quiet
	$(BIN)/neurofm tokenizer eval --checkpoint $(DEMO_OUT)/tokenizer --shards $(DEMO_OUT)/shards --out $(DEMO_OUT)/tokenizer_eval
	$(BIN)/neurofm tokenizer encode --checkpoint $(DEMO_OUT)/tokenizer --shards $(DEMO_OUT)/shards --out $(DEMO_OUT)/codes --quiet
	$(BIN)/neurofm shards verify $(DEMO_OUT)/codes
	@echo "== 3. pretraining: the tiny masked-code model on the code shards (DeepSpeed ZeRO-1), then a release"
	$(BIN)/neurofm pretrain train --config configs/pretrain_tiny.yaml codes=$(DEMO_OUT)/codes out=$(DEMO_OUT)/pretrain --quiet
	$(BIN)/neurofm export --run $(DEMO_OUT)/pretrain --out $(DEMO_OUT)/release
	@ls $(DEMO_OUT)/release
	@echo "== 4. probing: per-layer linear probes of the release for the simulated conditions (known ground truth)"
	$(BIN)/neurofm probe --release $(DEMO_OUT)/release --shards $(DEMO_OUT)/shards --out $(DEMO_OUT)/probe --labels auditory,visual,somatosensory

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
