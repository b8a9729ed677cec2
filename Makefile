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

.PHONY: install demo examples test test-slow bench-representation release-small clean

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
	@echo "== 2. tokenizer: train the tiny preset ($(DEMO_TOKENIZER_LATENTS) latents, $(DEMO_TOKENIZER_STEPS) steps), evaluate on held-out windows, encode to code shards"
	OMP_NUM_THREADS=$(DEMO_TOKENIZER_THREADS) $(BIN)/neurofm tokenizer train --config configs/tokenizer_tiny.yaml shards=$(DEMO_OUT)/shards out=$(DEMO_OUT)/tokenizer steps=$(DEMO_TOKENIZER_STEPS) model.n_latents=$(DEMO_TOKENIZER_LATENTS) --quiet
	$(BIN)/neurofm tokenizer eval --checkpoint $(DEMO_OUT)/tokenizer --shards $(DEMO_OUT)/shards --out $(DEMO_OUT)/tokenizer_eval
	$(BIN)/neurofm tokenizer encode --checkpoint $(DEMO_OUT)/tokenizer --shards $(DEMO_OUT)/shards --out $(DEMO_OUT)/codes --quiet
	$(BIN)/neurofm shards verify $(DEMO_OUT)/codes
	@echo "== 3. pretraining: the tiny masked-code model on the code shards (DeepSpeed ZeRO-1), then a release"
	$(BIN)/neurofm pretrain train --config configs/pretrain_tiny.yaml codes=$(DEMO_OUT)/codes out=$(DEMO_OUT)/pretrain --quiet
	$(BIN)/neurofm export --run $(DEMO_OUT)/pretrain --out $(DEMO_OUT)/release --overwrite
	@ls $(DEMO_OUT)/release
	@echo "== 4. probing: per-layer linear probes of the release for the simulated conditions (known ground truth),"
	@echo "      on event-locked windows of held-out subjects, beside random weights, shuffled labels and raw features"
	$(BIN)/neurofm shards build --config configs/demo_probe.yaml --out $(DEMO_OUT)/probe_set --quiet > /dev/null
	$(BIN)/neurofm probe --release $(DEMO_OUT)/release --shards $(DEMO_OUT)/probe_set --out $(DEMO_OUT)/probe --label-key event --pooling $(DEMO_POOLING)
	@echo "== 5. finetuning examples, short form ($(DEMO_EPOCHS) epochs; \`make examples\` runs them in full)"
	$(MAKE) --no-print-directory examples RELEASE=$(DEMO_OUT)/release EX_OUT=$(DEMO_OUT)/examples EX_EPOCHS=$(DEMO_EPOCHS)

# The representation benchmark (CPU preset, about 80 minutes on 2 cores): corpus → tokenizer → DeepSpeed
# pretraining → release → probes on held-out subjects and devices; results.md / results.json / layers.png.
BENCH_OUT ?= runs/bench_representation
bench-representation: $(STAMP)
	$(BIN)/neurofm bench representation --config configs/bench/representation_cpu.yaml out=$(BENCH_OUT) --quiet

# A small release worth finetuning on a CPU: the benchmark's release (its corpus, tokenizer and model),
# built without the probes; `make bench-representation` afterwards probes this very release (the stages
# resume). `make examples` uses it when it exists.
SMALL_RELEASE := $(BENCH_OUT)/release
release-small: $(STAMP)
	$(BIN)/neurofm bench representation --config configs/bench/representation_cpu.yaml out=$(BENCH_OUT) --release-only --quiet
	@echo "small release: $(SMALL_RELEASE) (its probes: make bench-representation)"

# Finetuning examples on a release (default: the small release when `make release-small` made one, else the demo's). Each prints its test metrics beside chance and
# the shuffled-label and random-encoder baselines; run folders hold metrics.json and plots.
RELEASE ?= $(if $(wildcard $(SMALL_RELEASE)/config.json),$(SMALL_RELEASE),$(DEMO_OUT)/release)
EX_OUT ?= runs/examples
EX_EPOCHS ?= 50
DEMO_EPOCHS ?= 5
DEMO_POOLING ?= event
# 300 steps keep the rhythms but lose the evoked response the probe looks for; 16 latents and 2000 steps
# lift the demo's probe from 0.67–0.72 (8 latents, 600 steps) to 0.92–0.95 per layer for ≈ 1.5 min more
# (benchmarks/RESULTS.md, representation candidates, items 1 and 31)
DEMO_TOKENIZER_STEPS ?= 2000
DEMO_TOKENIZER_LATENTS ?= 16
# The demo's stages run one at a time, so its tokenizer training takes both cores of a 2-core machine: 212 vs
# 152 windows/s with one thread, ≈ 60 s of the demo's 10-minute budget (everything else keeps OMP_NUM_THREADS)
DEMO_TOKENIZER_THREADS ?= 2
FINETUNE = $(BIN)/neurofm finetune release=$(RELEASE) epochs=$(EX_EPOCHS) --quiet --overwrite

examples: $(STAMP)
	@test -f $(RELEASE)/config.json || { echo "no release at $(RELEASE): run 'make demo' first, or set RELEASE=<release dir>"; exit 1; }
	@echo "-- every number below comes from the release in $(RELEASE)"
	@echo "-- SYNTHETIC speech set: speech-like utterances projected onto the demo shards' EEG windows"
	$(BIN)/neurofm simulate-speech --background $(DEMO_OUT)/shards --out $(EX_OUT)/speech --overwrite
	$(BIN)/neurofm targets --kind speech --inputs $(EX_OUT)/speech/audio --out $(EX_OUT)/targets/speech_logmel
	$(FINETUNE) --config configs/examples/finetune_speech.yaml shards=$(EX_OUT)/speech/shards targets=$(EX_OUT)/targets/speech_logmel out=$(EX_OUT)/speech/run
	@echo "-- simulated evoked conditions (auditory / visual / somatosensory), event-locked windows of held-out subjects, classification head with LoRA"
	$(BIN)/neurofm shards build --config configs/demo_probe.yaml --out $(EX_OUT)/conditions/shards --quiet > /dev/null
	$(FINETUNE) --config configs/examples/finetune_simulated_conditions.yaml shards=$(EX_OUT)/conditions/shards out=$(EX_OUT)/conditions/run
ifneq ($(wildcard $(SHARED_DATA)),)
	@echo "-- motor imagery, fists vs feet (eegmmidb S088R10)"
	$(BIN)/neurofm shards build --config configs/examples/eegmmidb_motor.yaml root=$(SHARED_DATA) --out $(EX_OUT)/motor/shards --quiet > /dev/null
	$(FINETUNE) --config configs/examples/finetune_motor.yaml shards=$(EX_OUT)/motor/shards out=$(EX_OUT)/motor/run
	@echo "-- face vs house (Muse), vision head onto EfficientNet-Lite0 embeddings of the Haxby images"
	$(BIN)/neurofm shards build --config configs/examples/muse_face_house.yaml root=$(SHARED_DATA) --out $(EX_OUT)/muse/shards --quiet > /dev/null
	$(BIN)/neurofm targets --kind image --inputs $(SHARED_DATA)/images --average-by parent --out $(EX_OUT)/targets/haxby_efficientnet
	$(FINETUNE) --config configs/examples/finetune_face_house.yaml shards=$(EX_OUT)/muse/shards targets=$(EX_OUT)/targets/haxby_efficientnet out=$(EX_OUT)/muse/run
	@echo "-- N400 word pairs: text head onto MiniLM embeddings of the words; related vs unrelated classifier"
	$(BIN)/neurofm shards build --config configs/examples/n400_words.yaml root=$(SHARED_DATA) --out $(EX_OUT)/n400/shards --quiet > /dev/null
	$(BIN)/neurofm targets --kind text --from-shards $(EX_OUT)/n400/shards --key association --out $(EX_OUT)/targets/n400_minilm
	$(FINETUNE) --config configs/examples/finetune_n400_words.yaml shards=$(EX_OUT)/n400/shards targets=$(EX_OUT)/targets/n400_minilm out=$(EX_OUT)/n400/text
	$(FINETUNE) --config configs/examples/finetune_n400_related.yaml shards=$(EX_OUT)/n400/shards out=$(EX_OUT)/n400/related
	@echo "-- seizure onset (ECoG clip): before vs after the annotated onset"
	$(BIN)/neurofm shards build --config configs/examples/ecog_seizure.yaml root=$(SHARED_DATA) --out $(EX_OUT)/seizure/shards --quiet > /dev/null
	$(FINETUNE) --config configs/examples/finetune_seizure.yaml shards=$(EX_OUT)/seizure/shards out=$(EX_OUT)/seizure/run
endif

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
