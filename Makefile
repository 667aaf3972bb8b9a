# Everything a fresh machine needs (Python 3.11 + Java 17): `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(CURDIR)/$(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    := demo-output
MODEL  := fixtures/tiny-llama

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

# Spark's Python workers must use the project's interpreter (torch lives there).
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)

.PHONY: install demo test bench fixture package clean cluster-start cluster-stop test-cluster

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) spark_jobs/build_corpus.py --output $(OUT)/corpus
	$(PY) spark_jobs/detect_heads.py --model $(MODEL) --output $(OUT)/head_scores --heads-out $(OUT)/heads.json
	$(PY) spark_jobs/score.py --input $(OUT)/corpus --output $(OUT)/scored --model $(MODEL) \
	    --heads $(OUT)/heads.json | tee $(OUT)/score_summary.txt
	$(PY) notebooks/04_analyse.py
	$(PY) spark_jobs/select.py --input $(OUT)/scored --output $(OUT)/selected --fraction 0.2
	@echo "== summary =="
	@cat $(OUT)/score_summary.txt
	@echo "tables: $(OUT)/corpus $(OUT)/head_scores $(OUT)/scored $(OUT)/selected (Delta)"
	@echo "files:  $(OUT)/heads.json $(OUT)/heads.png $(OUT)/plots/"

test: install
	$(PY) -m pytest -ra

bench: install
	$(PY) benchmarks/bench.py

# Rebuild the committed fixture model (about 10 minutes on 2 cores; see fixtures/tiny-llama/RECIPE.md).
fixture: install
	$(PY) scripts/build_fixture_model.py --output $(MODEL) --seed 0

# The job's Python code as one archive for spark-submit --py-files.
package: install
	mkdir -p dist
	cd $(CURDIR) && $(PY) -c "import zipfile, pathlib; z = zipfile.ZipFile('dist/attention_influence_jobs.zip', 'w'); [z.write(p) for d in ('attention_influence', 'udfs', 'spark_jobs') for p in sorted(pathlib.Path(d).rglob('*')) if '__pycache__' not in p.parts]"
	@echo "dist/attention_influence_jobs.zip"

# A local Spark standalone cluster (master 127.0.0.1:7077, two workers with one placeholder GPU each)
# for conf/spark/standalone.conf; see the README's "Cluster" section.
cluster-start: install
	PY=$(PY) scripts/cluster.sh start

cluster-stop:
	PY=$(PY) scripts/cluster.sh stop

# The cluster and fault tests alone (make test runs them too); they start and stop their own cluster.
test-cluster: install
	$(PY) -m pytest -ra tests/test_cluster.py tests/test_security.py

clean:
	rm -rf $(OUT) bench-output spark-warehouse metastore_db derby.log
