# Stage-decoupled latent interpolant pipeline. `make help` lists targets and variables.
# Every target runs its stage every time: each stage compares what it would produce with what it recorded
# and does only the work that changed (by content fingerprints, not timestamps).

SHELL := /bin/bash
.DEFAULT_GOAL := help

DATASET    ?= demo
INTERP     ?= ours
OUT        ?= outputs
DATA_DIR   ?= data/$(DATASET)
NPROC      ?= 1
NNODES     ?= 1
RDZV       ?=
ARGS       ?=
SMOKE      ?= 0
RAW        ?=
VQVAE_CKPT ?=
FORCE      ?= 0
CKPT       ?=
I3D        ?=

PYTHON     ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
CONFIG     := configs/$(DATASET).yaml
SMOKE_FLAG := $(if $(filter 1,$(SMOKE)),--smoke,)
VQ_SET     := $(if $(VQVAE_CKPT),--set vqvae.ckpt=$(VQVAE_CKPT),)
COMMON     := --config $(CONFIG) $(SMOKE_FLAG) --set data.root=$(DATA_DIR) $(VQ_SET)
FORCE_FLAG := $(if $(filter 1,$(FORCE)),--force,)

# One process: plain python. Several: torchrun (standalone on one node, c10d rendezvous across nodes).
ifeq ($(NNODES),1)
TORCHRUN   := $(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC)
else
TORCHRUN   := $(PY) -m torch.distributed.run --nnodes=$(NNODES) --nproc_per_node=$(NPROC) --rdzv_backend=c10d --rdzv_endpoint=$(RDZV)
endif
LAUNCH     := $(if $(and $(filter 1,$(NPROC)),$(filter 1,$(NNODES))),$(PY),$(TORCHRUN))
# make demo trains with one process per GPU, or with 2 single-thread CPU processes (DDP over gloo): on a small
# network that is ~20 % faster than one process with 2 threads. Evaluated only when the demo runs.
DEMO_NPROC ?= $(shell $(PY) -c 'import torch; print(torch.cuda.device_count() or 2)' 2>/dev/null || echo 1)

.PHONY: help setup data autoencoder encode train forecast eval demo bench test clean-venv

help: ## Show targets and variables
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (current value):"
	@echo "  DATASET=$(DATASET)      demo | kth | clevrer; selects configs/\$$(DATASET).yaml"
	@echo "  INTERP=$(INTERP)        ours | linear: the interpolant trained / forecast / evaluated"
	@echo "  OUT=$(OUT)         outputs root; a dataset's outputs live in \$$(OUT)/\$$(DATASET)/"
	@echo "  DATA_DIR=$(DATA_DIR)  shard root holding <split>/shard_NNNN.hdf5"
	@echo "  RAW=$(RAW)              raw videos for 'make data' (KTH, CLEVRER or <split>/<video> folders)"
	@echo "  VQVAE_CKPT=$(VQVAE_CKPT)       VQVAE checkpoint overriding vqvae.ckpt of the config"
	@echo "  CKPT=$(CKPT)             flow checkpoint for 'make forecast' (ours or published; default the run's latest.pt)"
	@echo "  I3D=$(I3D)              StyleGAN-V TorchScript i3d_torchscript.pt for FVD in 'make eval' (FVD is null without it)"
	@echo "  FORCE=$(FORCE)          1 = rebuild a stage output that was made from different inputs"
	@echo "  NPROC=$(NPROC)          processes per node (torchrun); NNODES=$(NNODES), RDZV=host:port for multi-node"
	@echo "  DEMO_NPROC=...     training processes of 'make demo' (default: one per GPU, else 2 single-thread CPU processes)"
	@echo "  SMOKE=$(SMOKE)          1 = every stage at its smoke setting (seconds, to check the wiring)"
	@echo "  ARGS=$(ARGS)             extra CLI arguments, e.g. ARGS='--set train.steps=100'"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml (torch==2.13.0): a range would let pip pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the project (re-runs only when pyproject.toml changes)

data: $(STAMP) ## Write $(DATA_DIR)/<split>/shard_NNNN.hdf5 (demo generator, or RAW=dir converter)
	$(PY) -m pipeline.data $(COMMON) $(if $(RAW),--raw $(RAW),) $(ARGS)

autoencoder: $(STAMP) ## Retrain the demo VQVAE from scratch into vqvae.ckpt, then print its test PSNR
	$(PY) -m pipeline.vqvae.train $(COMMON) --fresh $(ARGS)
	$(PY) -m pipeline.vqvae.train psnr $(COMMON)

encode: $(STAMP) ## Stage 1: encode every shard into $(OUT)/$(DATASET)/latents.zarr (NPROC>1: torchrun)
	$(LAUNCH) encode_latents.py $(COMMON) --out $(OUT) $(FORCE_FLAG) $(ARGS)

train: $(STAMP) ## Stage 2: train INTERP on the cached latents into $(OUT)/$(DATASET)/$(INTERP)/ (NPROC>1: DDP)
	$(LAUNCH) train_latent.py $(COMMON) --interp $(INTERP) --out $(OUT) $(FORCE_FLAG) $(ARGS)

forecast: $(STAMP) ## Stage 3: forecast the test videos into $(OUT)/$(DATASET)/$(INTERP)/forecasts.zarr (CKPT=any flow checkpoint)
	$(LAUNCH) forecast.py $(COMMON) --interp $(INTERP) --out $(OUT) $(if $(CKPT),--ckpt $(CKPT),) $(FORCE_FLAG) $(ARGS)

eval: $(STAMP) ## Stage 4: PSNR/SSIM/FVD of $(OUT)/$(DATASET)/$(INTERP)/forecasts.zarr -> eval/metrics.json, $(OUT)/$(DATASET)/report.md (I3D=i3d_torchscript.pt for FVD)
	$(PY) evaluate.py $(COMMON) --interp $(INTERP) --out $(OUT) $(if $(I3D),--i3d $(I3D),) $(FORCE_FLAG) $(ARGS)

demo: $(STAMP) ## Everything on the demo dataset: data, encode, train/forecast/eval for ours and linear, report
	$(MAKE) --no-print-directory data encode DATASET=demo FORCE=1
	for interp in ours linear; do \
	  $(MAKE) --no-print-directory train DATASET=demo INTERP=$$interp NPROC=$(DEMO_NPROC) FORCE=1 && \
	  $(MAKE) --no-print-directory forecast DATASET=demo INTERP=$$interp FORCE=1 && \
	  $(MAKE) --no-print-directory eval DATASET=demo INTERP=$$interp || exit 1; \
	done
	@echo "demo: report in $(OUT)/demo/report.md"

bench: $(STAMP) ## Run the benchmarks; results in benchmarks/results.json
	$(PY) -m benchmarks.bench_loader
	$(PY) -m benchmarks.bench_encode
	$(PY) -m benchmarks.bench_train
	$(PY) -m benchmarks.bench_samplers --interp ours --solvers euler_maruyama,heun_sde --steps 6,11,21,101
	$(PY) -m benchmarks.bench_samplers --interp linear --solvers euler,heun --steps 6,11,21,101

test: $(STAMP) ## Run the test suite
	$(PY) -m pytest -q $(ARGS)

clean-venv: ## Remove the virtual environment
	rm -rf $(VENV)
