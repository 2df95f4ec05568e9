# The README's two commands, on a fresh machine with Python >= 3.10:
#   make demo   installs what is needed and trains the README's main model (MaxSup on the embedded Fashion-MNIST)
#   make test   installs what is needed and runs the test suite (what CI runs: .ci/run calls it)
#   make test-floors   the dependencies at pyproject.toml's lower bounds, in .venv-floors, and the fast tests of the
#               engine, the losses, the trainer and the Hub against them (CI runs it after make test)
#   make gpu-wheels    downloads into .whl/ the wheels benchmarks/gpu_day_one.py needs on the GPU machine (docs/gpu.md)
# Each installs into the active virtual environment ($VIRTUAL_ENV), or creates .venv and installs there when none is
# active. `make -n demo` prints the steps without running them.

PYTHON ?= python3
VENV ?= .venv
ifdef VIRTUAL_ENV
PY := $(VIRTUAL_ENV)/bin/python
else
PY := $(VENV)/bin/python
endif
# The one DeepSpeed op every run on CPU compiles on first use, kept between runs.
TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions

.PHONY: demo test lint install install-deepspeed test-floors gpu-wheels

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: it comes from the local CPU wheel; an unpinned torch would pull several GB of CUDA packages.
install: $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,analysis,gpu]"

# DeepSpeed as a pure-Python wheel (building all its ops at install would take many minutes and need CUDA for most),
# and its shm_comm op built once here rather than inside a test's time-out (1-2.5 min on 2 cores); torch reuses it
# from TORCH_EXTENSIONS_DIR while its sources are unchanged.
install-deepspeed: install
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e ".[deepspeed]"
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR="$(TORCH_EXTENSIONS_DIR)" $(PY) -c \
	    "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"

# --overwrite_output_dir: a second `make demo` trains again, replacing the first run's folder.
demo: install
	$(PY) recipes/image_classification.py --loss maxsup --do_train --do_eval --do_predict \
	    --output_dir runs/fmnist-maxsup --num_train_epochs 4 --learning_rate 2e-3 --per_device_train_batch_size 64 \
	    --per_device_eval_batch_size 256 --weight_decay 0.05 --lr_scheduler_type cosine --warmup_steps 0.05 \
	    --augment false --save_strategy epoch --save_total_limit 1 --overwrite_output_dir
	@echo
	@echo "The demo run is in runs/fmnist-maxsup (metrics: all_results.json, model card: README.md)."
	@echo "hf_maxsup is installed in $(dir $(PY)): use its programs by path, e.g."
	@echo "    $(dir $(PY))hf-maxsup --help"
	@echo "    $(dir $(PY))python recipes/text_classification.py --help"
	@echo "    $(dir $(PY))python -m pytest tests/recipes"
	@echo "or activate it first (source $(dir $(PY))activate), then run hf-maxsup, python and pytest as usual."

# The formatter and linter configured in pyproject.toml: the code as committed must pass both.
lint: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

test: lint install-deepspeed
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR="$(TORCH_EXTENSIONS_DIR)" $(PY) -m pytest -q

# Each dependency at exactly its lower bound (.ci/floors.py reads them from pyproject.toml), in its own venv: a bound
# is written there only once this passes with it. torch stays the local CPU wheel 2.13 (PyPI's torch 2.11 for Linux
# pulls several GB of CUDA packages): its floor, 2.11, is the GPU machine's, run by benchmarks/gpu_day_one.py there.
# numpy < 2.4: triton 3.6's interpreter (tests only) converts 1-element arrays with int(), an error from numpy 2.4.
FLOORS_VENV ?= .venv-floors
FLOOR_TESTS ?= tests/kernels/test_engine.py tests/kernels/test_losses.py tests/kernels/test_triton_backend.py \
	tests/kernels/test_triton_losses.py tests/kernels/test_distillation_loss.py tests/trainer/test_trainer.py \
	tests/hub/test_card_and_push.py

$(FLOORS_VENV)/bin/python:
	$(PYTHON) -m venv $(FLOORS_VENV)

test-floors: $(FLOORS_VENV)/bin/python
	$(FLOORS_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(PYTHON) .ci/floors.py test gpu > $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --quiet -c $(FLOORS_VENV)/floors.txt -e ".[test,gpu]" "numpy<2.4"
	DS_ACCELERATOR=cpu $(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow" \
	    $(FLOOR_TESTS)

gpu-wheels:
	PYTHON=$(PYTHON) bash benchmarks/prepare_gpu_wheels.sh
