# Kefu — the two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION := 2.13.0
PODMAN_COMPOSE_VERSION := 1.6.0
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint bench run clean images test-images
MODELS ?= models

install: $(STAMP)

# Re-runs only when the project's dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet --disable-pip-version-check torch==$(TORCH_VERSION)
	$(PIP) install --quiet --disable-pip-version-check -e '.[llmcore,dev]'
	@command -v redis-server >/dev/null || bash .ci/install-redis
	@bash .ci/install-nginx
	@bash .ci/install-chromium
	@touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check llmcore bot bench tests

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Everything on this machine: a private Redis (data under var/), the demo model on first use (about 3 minutes
# on 2 CPU cores), llmcore serve, and the bot: Telegram with TELEGRAM_BOT_TOKEN, the terminal chat without.
run: install
	$(PY) -m bot up --models $(MODELS)

# Container images (deploy/docker/): podman where no Docker daemon answers, a local Debian base where no registry serves
# python:3.11-slim (deploy/scripts/images.sh; IMAGES="bot llmcore" builds only those). Not part of `make test`.
IMAGES ?=
images: install
	@bash .ci/install-podman
	bash deploy/scripts/images.sh $(IMAGES)

# Smoke tests of the built images and of deploy/docker-compose.yml brought up for real (tests/test_images.py, minutes).
test-images: install
	@bash .ci/install-podman
	@docker compose version >/dev/null 2>&1 || $(PIP) install --quiet --disable-pip-version-check podman-compose==$(PODMAN_COMPOSE_VERSION)
	$(PY) -m pytest -m images tests/test_images.py $(PYTEST_ARGS)

bench: install
	$(PIP) install --quiet --disable-pip-version-check -e '.[llmcore,dev,bench]'
	$(PY) bench/train.py
	$(PY) bench/serve.py
	$(PY) bench/bot.py
	$(PY) bench/loop.py
	$(PY) bench/quality.py
	$(PY) bench/demo_kb.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
