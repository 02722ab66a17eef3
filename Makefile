# kube-gpu-exporter: `make run` (simulated node on :9400), `make test` (everything CI runs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# gcc + libc6-dev build the fake libnvidia-ml.so.1; prometheus brings promtool.
DEB_PACKAGES := prometheus gcc libc6-dev python3-venv

.PHONY: run test deps venv protos golden docs clean

## run: set up and serve the built-in simulated 4-GPU node at http://localhost:9400/metrics
run: venv
	$(VENV)/bin/kube-gpu-exporter --simulate $(ARGS)

## test: set up (Python and Debian packages) and run the whole suite
test: deps venv
	$(PY) -m pytest $(PYTEST_ARGS)

## deps: Debian packages the tests use
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## protos: regenerate the committed kubelet pod-resources stubs from their .proto
protos: venv
	PYTHON=$(PY) sh exporter/kubelet/podresources/generate.sh

## golden: rewrite tests/fixtures/e2e-output.txt from the current code (review the diff!)
golden: venv
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/test_e2e.py

clean:
	rm -rf $(VENV) .pytest_cache tests/.build

## docs: rewrite the generated metric table in docs/metrics.md
docs: venv
	$(PY) -m exporter.catalog docs/metrics.md
