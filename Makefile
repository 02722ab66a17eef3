# kube-gpu-exporter: `make run` (simulated node on :9400), `make check` (the fast tests, for the edit
# loop), `make test` (everything CI runs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# `make test` runs a worker per core (pytest-xdist), a test file's tests in one worker, so that a
# file's shared Prometheus or agent starts once; most integration tests wait on real servers, so
# two workers on two cores take about half the time of one. PYTEST_PARALLEL= runs them in one.
PYTEST_PARALLEL ?= -n auto --dist loadfile
# python3-venv gives Debian's Python its venv; gcc + libc6-dev build the fake libnvidia-ml.so.1
# for the tests, and prometheus brings promtool; prometheus-alertmanager (alertmanager, amtool) for
# the alerting tests; chromium loads the status page in tests/test_status_page.py.
RUN_DEB_PACKAGES  := python3-venv
TEST_DEB_PACKAGES := $(RUN_DEB_PACKAGES) prometheus prometheus-alertmanager gcc libc6-dev chromium

.PHONY: run check test run-deps test-deps venv test-venv protos golden docs rules bench dashboards dashboards-png clean

## run: set up (only what running needs) and serve the built-in simulated 4-GPU node, with its
## pods and workloads, at http://localhost:9400/metrics; more flags with ARGS='--collector.interval 2'
run: run-deps venv
	$(VENV)/bin/kube-gpu-exporter --simulate --kubernetes.enabled $(ARGS)

## check: the fast tier, for the edit loop: every test not marked integration (no real server, no
## waiting on real time; under a minute on two cores); it prints how long it took
check: test-deps test-venv
	$(PY) -m pytest -q -m 'not integration' $(PYTEST_PARALLEL) $(PYTEST_ARGS)

## test: set up (Python and Debian packages, test extras included) and run the whole suite
test: test-deps test-venv
	$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# Installs the Debian packages of $(1) that are missing (nothing when all are there).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

## run-deps / test-deps: the Debian packages running / testing needs
run-deps:
	$(call apt_install,$(RUN_DEB_PACKAGES))
test-deps:
	$(call apt_install,$(TEST_DEB_PACKAGES))

# One stamp per install, so that `make run` then `make test` (or the reverse) each install what
# they need: the package alone for running, the package with its test extras for testing.
venv: $(VENV)/.installed-run
test-venv: $(VENV)/.installed-test

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV)/.installed-run: pyproject.toml | $(VENV)/.created
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/.created
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## bench: every benchmark of bench/ (about 75 minutes, the fleet 50 of them): one table of targets against measurements,
## bench/results/*.json and the plots of docs/performance.md; BENCH_ARGS='--quick' for a smoke run
bench: test-deps test-venv
	$(PY) bench/run.py $(BENCH_ARGS)

## protos: regenerate the committed kubelet pod-resources stubs from their .proto: the messages
## (api_pb2.py, .pyi) and the grpclib client and server classes (api_grpc.py)
protos: test-venv
	PYTHON=$(PY) sh exporter/sources/kubelet/podresources/generate.sh

## golden: rewrite tests/fixtures/e2e-output.txt and dcgm-output.txt from the current code (review the diff!)
golden: test-deps test-venv
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/test_e2e.py
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/test_dcgm.py -k golden

clean:
	rm -rf $(VENV) .pytest_cache tests/.build

## docs: rewrite the generated tables of docs/metrics.md (the metrics, the collector groups' sizes)
docs: venv
	$(PY) -m exporter.catalog docs/metrics.md
	$(PY) -m exporter.sizing docs/metrics.md

## rules: regenerate the rule files, the PrometheusRule, their promtool tests and the alert docs
## from the rule set (alerts/rules.py lists its modules) and the runbooks (alerts/runbooks/*.md)
rules: venv
	$(PY) -m alerts.generate

## dashboards: regenerate dashboards/*.json and their ConfigMap from dashboards/generate.py
dashboards: test-venv
	$(PY) dashboards/generate.py

## dashboards-png: redraw docs/images/ (the dashboards from a Prometheus holding a day of the simulated
## demo node's history, the status page and the report's HTML in headless Chromium) by running their tests with UPDATE_IMAGES=1
dashboards-png: test-deps test-venv
	UPDATE_IMAGES=1 $(PY) -m pytest tests/test_dashboards.py tests/test_status_page.py tests/test_report.py -q
