# The two commands of the README: `make demo` (the main job) and `make test` (what CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv lint format test test-slow demo demo-dalle notebook clean

# OpenAI's dall_e 0.1 (the dVAE parity tests) declares torchvision, mypy and blobfile as
# requirements but imports only torch, numpy, attrs and requests (all in the test extra): an extra
# cannot be installed with --no-deps, so it is installed on its own without its dependencies.
$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,test,serve,cpu]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt dall-e==0.1
	touch $(STAMP)

# oneDNN's convolutions for CPUs (nn/conv.py); without a C++ compiler the build says so and the
# models use XLA's.
NATIVE := unclip_jax/nn/native/_onednn_conv.so
$(NATIVE): unclip_jax/nn/native/onednn_conv.cc unclip_jax/nn/native/build.py $(STAMP)
	$(BIN)/python -m unclip_jax.nn.native.build

venv: $(STAMP) $(NATIVE)

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Everything but the slow learning gates (their smoke versions run here); pytest exits non-zero
# on a failure and also when it collects nothing.
test: lint
	$(BIN)/python -m pytest -m "not slow" -n $(PYTEST_WORKERS) --durations=15

test-slow: venv
	$(BIN)/python -m pytest -m slow -s --durations=0

# The main job: builds the shapes set, trains CLIP -> prior -> decoder -> upsampler, writes
# demo/samples.png and demo/metrics.json. Finished stages are skipped on a re-run;
# DEMO_FLAGS="--force=all" (or --force=decoder,...) retrains them from scratch (the finished
# runs are kept as workdirs/demo/<stage>.before-<time>).
DEMO_FLAGS ?=
demo: venv
	$(BIN)/python -m unclip_jax.demo --config configs/demo.py --workdir workdirs/demo \
		--demo_out demo $(DEMO_FLAGS)

# DALL·E (2021) on the same shapes: builds the set, trains the reranking CLIP, the dVAE and the
# transformer, writes demo/dalle_samples.png and demo/dalle_metrics.json; DEMO_FLAGS as above
# (stages data, clip, dvae, dalle; workdirs/demo_dalle/<stage>).
demo-dalle: venv
	$(BIN)/python -m unclip_jax.demo.dalle --config configs/demo_dalle.py \
		--workdir workdirs/demo_dalle --demo_out demo $(DEMO_FLAGS)

# notebooks/sampling.ipynb from its jupytext pair notebooks/sampling.py (the file to edit).
notebook: venv
	$(BIN)/jupytext --sync notebooks/sampling.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(NATIVE)
