# dsb: from data to a checked submission, and the project's own checks.
#   make submit                      fetch -> train -> tune -> predict -> validate -> submit
#   make submit DATA_SOURCE=../shared/dsb2018 TIME_BUDGET=60
#   make test                        install with the test extras, check the layers, run the suite
#   make docs                        build the documentation site into docs/_build/html (warnings are errors)
#   make bench                       print speed and memory figures
# Every target installs what it needs into $(VENV) first.

PYTHON      ?= python3
VENV        ?= .venv
EXTRAS      ?= cpu
TEST_EXTRAS ?= cpu,jax,test
DOCS_EXTRAS ?= cpu,docs
DATA        ?= data
DATA_SOURCE ?=
CONFIG      ?=
RUN         ?= runs/default
TIME_BUDGET ?= 60
# At most EPOCHS; the cosine learning-rate schedule follows the share of TIME_BUDGET spent, so a
# slower CPU runs the whole schedule in fewer epochs and a faster one in more
# (dsb.training.schedule): the budget, not this cap, sets the length on any CPU (an epoch of 67
# steps of 8 crops and the 132 group-held-out validation images takes a minute or more on 2 cores).
# A cap of 42 ended runs 4 to 14 minutes inside a 60-minute budget on faster 2-core CPUs.
EPOCHS      ?= 300
# auto: a short probe times float32 against bfloat16 (mixed float16 on a GPU) and trains in the faster.
TRAIN_PRECISION ?= auto
# yes: tune on probabilities averaged over flips and quarter turns, and predict so (the run's
# predict.tta); eight network passes an image at prediction, a minute or two for stage1_test.
TTA         ?= yes
# Factors on the scale each image is predicted at that tune tries (predict.scale_factor): one
# prediction of the validation images each, at its square in pixels; tune keeps the best. 1.5
# scored higher still on the images tune sees, but lower at half their magnification.
SCALE_FACTORS ?= 1,1.25
# The number format tune and predict compute the network in: auto is bfloat16 on OpenVINO where the
# CPU has bfloat16 units, float32 elsewhere (int8 needs a model.int8.onnx, which make submit does not
# write); float32 writes the same CSV on every CPU.
PREDICT_PRECISION ?= auto
# The commit whose prediction make bench times beside today's, in the same run: 12e1dde (2026-12-04)
# predicted before the scale estimate's cross-check, the cell rule, the split of merged nuclei and
# the finer pass for small ones; empty for none. Needs the git history (a shallow clone lacks it).
BENCH_BASELINE ?= 12e1dde
SUBMISSION  ?= submissions/$(notdir $(RUN)).csv
MESSAGE     ?= dsb $(notdir $(RUN)), $(TIME_BUDGET)-minute CPU budget

BIN   := $(VENV)/bin
DSB   := $(BIN)/dsb
comma := ,
stamp  = $(VENV)/.installed-$(subst $(comma),-,$(1))

.PHONY: install install-test install-docs test docs fetch train tune predict validate submit bench clean
.DELETE_ON_ERROR:
# A failed or interrupted train or tune must not delete the run's best model or tuning table.
.PRECIOUS: $(RUN)/model.keras $(RUN)/model.onnx $(RUN)/tuning.csv

install: $(call stamp,$(EXTRAS))
install-test: $(call stamp,$(TEST_EXTRAS))
install-docs: $(call stamp,$(DOCS_EXTRAS))

$(VENV)/.installed-%: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(subst -,$(comma),$*)]"
	touch $@

# The layers contract (setup.cfg [importlinter]) first: a layer imports only the layers below it.
test: install-test
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

docs: install-docs
	rm -rf docs/_build docs/generated
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

fetch: install
	$(DSB) fetch --dest $(DATA) $(if $(DATA_SOURCE),--source $(DATA_SOURCE))

# A finished run folder is kept: delete it (or pick another RUN) to train again.
# A run that was interrupted (its folder has a checkpoint) is resumed, not restarted.
$(RUN)/model.keras: | fetch
	$(DSB) prepare --data $(DATA) $(if $(CONFIG),--config $(CONFIG))
	$(DSB) train --data $(DATA) --out $(RUN) --time-budget $(TIME_BUDGET) --epochs $(EPOCHS) --precision $(TRAIN_PRECISION) \
		$(if $(wildcard $(RUN)/checkpoints),--resume,$(if $(CONFIG),--config $(CONFIG)))

train: $(RUN)/model.keras

# The network as ONNX, so that tune and predict run on OpenVINO or ONNX Runtime (dsb.engines).
$(RUN)/model.onnx: $(RUN)/model.keras
	$(DSB) export $(RUN) --onnx

$(RUN)/tuning.csv: $(RUN)/model.onnx
	$(DSB) tune $(RUN) --data $(DATA) $(if $(filter yes,$(TTA)),--tta,--no-tta) --scale-factors $(SCALE_FACTORS) \
		--precision $(PREDICT_PRECISION)

tune: $(RUN)/tuning.csv

predict: tune
	$(DSB) predict $(RUN) --images $(DATA)/stage1_test --out $(SUBMISSION) --precision $(PREDICT_PRECISION)

validate: predict
	$(DSB) validate $(SUBMISSION) --images $(DATA)/stage1_test

submit: validate
	$(DSB) submit $(SUBMISSION) --images $(DATA)/stage1_test -m "$(MESSAGE)" --skip-without-credentials

bench: install-test
	$(BIN)/python bench/run_all.py --data $(DATA) --run $(RUN) $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis docs/_build docs/generated
