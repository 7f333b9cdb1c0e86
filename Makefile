# lowshot: `make demo` runs the whole pipeline on the embedded glyph data set; `make test` runs the tests.
# Both create .venv and install the package into it when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOWSHOT := $(BIN)/lowshot
RUN    ?= runs/demo
TRAIN_CONFIG ?= configs/demo_train.json
# the demo's heads: those that need no stage beyond the demo's and take about a minute or less for the 25 cells;
# `make benchmark-slow` adds the transductive heads that take a minute or more each (TIM takes hours: run it by name)
HEADS  ?= logreg,imprint,imprint_ft,rand_ft,protonet,cosine_ncm,matching,repmet,magnet,raw_imprint,bd_cspn
SLOW_HEADS ?= laplacian_shot,pt_map,transductive_ft
SEED   ?= 0
# SEEDS=0,1,2: train and evaluate one representation per training seed, in $(RUN)-seed<k>, and report over the seeds
SEEDS  ?=
SEED_ARGS = $(if $(SEEDS),--seeds $(SEEDS),--seed $(SEED))
MATCH_LOG = $(if $(SEEDS),$(RUN)-train-matching.log,$(RUN)/train-matching.log)
# torch/torchvision known to work together on this machine (setup.cfg holds lower bounds only)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test docs docs-results data train features generate train-matching train-weight-generator train-pmn weight-generator pmn benchmark benchmark-slow benchmark-gen episodes episodes-cross gfsl report baselines representations objectives incremental incremental-cifar100 fscil clean-demo

install: $(VENV)/.installed

# uv (from PyPI, into the venv) unpacks and links the wheels in parallel: torch's CUDA build (5.5 GB) in about 16 s on
# this 2-core machine against 50 s with pip. uv does not read pip's configuration, so the indexes and find-links pip
# is configured with (a local mirror, say) are handed to it; where uv cannot be had or fails, pip installs.
PIP_SOURCES = $(BIN)/python -m pip config list 2>/dev/null \
	| sed -nE "s/^[^.]*\.(index-url|extra-index-url|find-links)='(.*)'$$/\1 \2/p" \
	| while read -r key values; do for v in $$values; do printf -- '--%s %s ' "$$key" "$$v"; done; done

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(BIN)/python -m pip install -q uv 2>/dev/null \
	  && $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --index-strategy unsafe-best-match $$($(PIP_SOURCES)) $(TORCH_PINS) -e '.[test]'; } \
	|| { $(BIN)/python -m pip install -q $(TORCH_PINS) 2>&1 | grep -v "is ignored"; \
	     $(BIN)/python -m pip install -q -e '.[test]' 2>&1 | grep -v "is ignored"; true; }
	$(BIN)/python -c "import lowshot.cli, torch, torchvision, h5py, pandas"
	touch $@

data: install
	$(LOWSHOT) data --dataset glyphs --seed $(SEED)

train: data
	$(LOWSHOT) train --config $(TRAIN_CONFIG) --run $(RUN) $(SEED_ARGS)

features: install
	$(LOWSHOT) features --run $(RUN) $(if $(SEEDS),--seeds $(SEEDS))

generate: install
	$(LOWSHOT) generate --run $(RUN) $(SEED_ARGS)

train-matching: install
	$(LOWSHOT) train-matching --run $(RUN) $(SEED_ARGS)

train-weight-generator: install
	$(LOWSHOT) train-weight-generator --run $(RUN) $(SEED_ARGS)

train-pmn: install
	$(LOWSHOT) train-pmn --run $(RUN) $(SEED_ARGS)

# Gidaris & Komodakis' few-shot weight generator: its stage-2 training on the base features, then its 25 cells
# (not part of `make demo`, which it would lengthen by minutes)
weight-generator: train-weight-generator
	$(LOWSHOT) benchmark --run $(RUN) --heads weight_generator $(SEED_ARGS)

# Wang et al.'s prototype matching networks + hallucinator, meta-learned together on the base features, then their 25
# cells and logistic regression on the learned hallucinator's rows (not part of `make demo`: training takes minutes)
pmn: train-pmn
	$(LOWSHOT) benchmark --run $(RUN) --heads pmn_hallucinator $(SEED_ARGS)
	$(LOWSHOT) benchmark --run $(RUN) --heads logreg --generator pmn --max-per-label 5 $(SEED_ARGS)
	$(LOWSHOT) benchmark --run $(RUN) --heads logreg --generator pmn --max-per-label 20 $(SEED_ARGS)

benchmark: install
	$(LOWSHOT) benchmark --run $(RUN) --heads $(HEADS) $(SEED_ARGS)

benchmark-slow: install
	$(LOWSHOT) benchmark --run $(RUN) --heads $(SLOW_HEADS) $(SEED_ARGS)

# logistic regression on hallucinated + real shots, topped up to 5 and to 20 per class
benchmark-gen: install
	$(LOWSHOT) benchmark --run $(RUN) --heads logreg --generator analogies --max-per-label 5 $(SEED_ARGS)
	$(LOWSHOT) benchmark --run $(RUN) --heads logreg --generator analogies --max-per-label 20 $(SEED_ARGS)

# the standard settings (5-way 1- and 5-shot, 15 queries per class, 600 episodes) from the fixed episode files of
# experiment_cfgs/glyphs/episodes/ (drawn and written on first use, then shared by every run)
EPISODE_SETTINGS ?= standard
episodes: install
	$(LOWSHOT) episodes --run $(RUN) $(SEED_ARGS) --settings $(EPISODE_SETTINGS)

# cross-domain (Chen et al.'s miniImageNet -> CUB, on glyphs): $(RUN)'s representation on the test classes of the
# outline glyphs (another lettering style), beside its own test classes; one paired table per episode file
XDOMAIN_ARGS ?= {"variant": "outline"}
XDOMAIN_TAG ?= glyphs-variant-outline
episodes-cross: install
	$(LOWSHOT) features --run $(RUN) --dataset glyphs --set 'dataset_args=$(XDOMAIN_ARGS)'
	$(LOWSHOT) episodes --run $(RUN) $(SEED_ARGS) --settings $(EPISODE_SETTINGS)
	$(LOWSHOT) episodes --run $(RUN) $(SEED_ARGS) --settings $(EPISODE_SETTINGS) --dataset glyphs --set 'dataset_args=$(XDOMAIN_ARGS)'
	$(LOWSHOT) report $(RUN)/episodes $(RUN)/cross/$(XDOMAIN_TAG)/episodes --out $(RUN)/episodes-cross-report

gfsl: install
	$(LOWSHOT) gfsl --run $(RUN) $(SEED_ARGS)

report: install
	$(LOWSHOT) report $(RUN)/results $(if $(SEEDS),--seeds $(SEEDS))

# train-matching uses one core (its LSTM steps are sequential): generation and the cells of every other
# head run beside it, then the matching cells and the report
comma := ,
demo: train features
	@echo "train-matching runs in the background; its log: $(MATCH_LOG)"
	@$(MAKE) --no-print-directory train-matching > $(MATCH_LOG) 2>&1 & bg=$$!; \
	$(MAKE) --no-print-directory generate benchmark-gen benchmark HEADS=$(subst $(comma)matching$(comma),$(comma),$(HEADS)); \
	ok=$$?; wait $$bg; matched=$$?; cat $(MATCH_LOG); [ $$ok = 0 ] && [ $$matched = 0 ]
	$(MAKE) --no-print-directory benchmark report

test: install
	$(BIN)/python -m pytest -q

# the documentation site (mkdocs.yml, docs/) into site/; --strict: a broken link or anchor, or a page left out of
# the nav, fails the build
docs: install
	$(BIN)/python -m mkdocs build --strict -d site

# the tables the docs include (docs/results/demo/report.md, the markdown `lowshot report` prints), from the demo's
# results: run it after `make demo`; only report.md is committed
docs-results: install
	$(LOWSHOT) report $(RUN)/results --out docs/results/demo

# the README's reference rows: raw pixels and a randomly initialised network through the same grid
baselines: data
	$(LOWSHOT) train --config configs/baseline_pixels.json --run runs/pixels --seed $(SEED)
	$(LOWSHOT) features --run runs/pixels
	$(LOWSHOT) benchmark --run runs/pixels --heads logreg,cosine_ncm --seed $(SEED)
	$(LOWSHOT) train --config $(TRAIN_CONFIG) --run runs/random-init --epochs 0 --seed $(SEED)
	$(LOWSHOT) features --run runs/random-init
	$(LOWSHOT) benchmark --run runs/random-init --heads logreg,cosine_ncm --seed $(SEED)
	$(LOWSHOT) report runs/pixels/results runs/random-init/results $(RUN)/results --out runs/baselines-report

# H&G's representation table (README "Does SGM or L2 help?"): none / l2 / sgm / batchsgm (weights chosen on
# setup 1) and the cosine classifier, each trained, extracted and benchmarked; runs/rep-*, not part of the demo
representations: data
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python benchmarks/representations.py --config configs/representations.json

# Episodic training objectives (README "Episodic training objectives"): protonet, magnet and repmet trained with the
# demo's config; each extracted, benchmarked with the heads that need no trained classifier, and run through the
# 5/20-way 1/5-shot episodes; `ce` is the demo's representation ($(RUN), from `make demo`, whose results it reuses);
# runs/obj-*, not part of the demo
OBJECTIVES ?= protonet magnet repmet
OBJ_HEADS ?= logreg,protonet,cosine_ncm,repmet,magnet,bd_cspn
OBJ_EPISODE_HEADS ?= ["protonet","cosine_ncm","repmet"]
objectives: data
	@test -f $(RUN)/features/train.hdf5 || { echo "run make demo first: its representation is the ce row"; exit 1; }
	set -e; for o in $(OBJECTIVES); do \
	  $(LOWSHOT) train --config $(TRAIN_CONFIG) --objective $$o --run runs/obj-$$o --seed $(SEED); \
	  $(LOWSHOT) features --run runs/obj-$$o; \
	  $(LOWSHOT) benchmark --run runs/obj-$$o --heads $(OBJ_HEADS) --seed $(SEED); \
	  $(LOWSHOT) episodes --run runs/obj-$$o --seed $(SEED) --set 'heads=$(OBJ_EPISODE_HEADS)'; \
	done
	$(LOWSHOT) benchmark --run $(RUN) --heads $(OBJ_HEADS) --seed $(SEED)
	$(LOWSHOT) episodes --run $(RUN) --seed $(SEED) --set 'heads=$(OBJ_EPISODE_HEADS)' --set out_dir=runs/obj-ce-episodes
	$(LOWSHOT) report $(RUN)/results $(foreach o,$(OBJECTIVES),runs/obj-$(o)/results) --out runs/obj-report --no-plot

# N base classes + 1 new class (README "Incremental imprinting"): a cosine network on 40 glyph base classes, then
# lowshot incremental (the fair "40 + 1" protocol: feature heads and full-network FT); not part of the demo
INCR_RUN ?= runs/incremental_glyphs40
incremental: data
	$(LOWSHOT) train --config configs/incremental_train.json --run $(INCR_RUN) --seed $(SEED)
	$(LOWSHOT) incremental --run $(INCR_RUN) --config configs/incremental_glyphs.json --seed $(SEED)

# the same on a local CIFAR-100 copy (CIFAR_ROOT=DIR): ResNet-18 from scratch on labels 0-39, BmLMz's ten novel
# classes x 4 draws, full-network FT on all 40 runs per n (heads-and-protocols.md section 8); sized for a GPU
CIFAR_ROOT ?=
incremental-cifar100: install
	@test -n "$(CIFAR_ROOT)" || { echo "set CIFAR_ROOT to a folder holding cifar-100-binary/ or cifar-100-python/"; exit 1; }
	$(LOWSHOT) train --config configs/incremental_cifar100_train.json --root $(CIFAR_ROOT) --run runs/incremental_cifar100 --seed $(SEED)
	$(LOWSHOT) incremental --run runs/incremental_cifar100 --dataset cifar100 --root $(CIFAR_ROOT) --config configs/incremental_cifar100.json --seed $(SEED)

# Few-shot class-incremental sessions on the demo's features (docs "Few-shot class-incremental learning"): 100 base
# classes (base_classes_2, seen in training), then 10 sessions of 10-way 5-shot from novel_classes_2, 5 trials; reuses
# $(RUN)'s features and generator, making them (the demo's train, features and generate stages) when missing
fscil: install
	@test -f $(RUN)/features/train.hdf5 || $(MAKE) --no-print-directory train features
	@test -f $(RUN)/generator/generator.pt || $(MAKE) --no-print-directory generate
	$(LOWSHOT) fscil --run $(RUN) --config configs/fscil_glyphs.json --seed $(SEED)

clean-demo:
	rm -rf $(RUN)
