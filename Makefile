# The two commands a newcomer needs are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# Local defaults for the process targets (web, worker, consumer, beat); override in the environment.
PG_URL    ?= postgres://postgres@127.0.0.1:5432/allocation
REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: run test venv dev-venv lint check chromium unit integration api admin e2e web worker beat consumer createdb clean

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.dev-installed: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed
dev-venv: $(BIN)/.dev-installed

## run: the embedded default (SQLite, eager tasks, console email) with demo data
run: export DJANGO_DEBUG ?= 1
run: $(BIN)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@echo ""
	@echo "  Service:  http://127.0.0.1:$(PORT)/   (admin at http://127.0.0.1:$(PORT)/admin/)"
	@echo "  Try:      curl -H 'Authorization: Token <token above>' http://127.0.0.1:$(PORT)/allocations/order-1"
	@echo ""
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

## test: lint, contract checks, then every test layer on PostgreSQL, Redis and real processes
test: $(BIN)/.dev-installed chromium lint check
	$(BIN)/pytest tests/unit tests/integration tests/api tests/admin tests/e2e

## chromium: Debian's Chromium and its driver, for the admin's browser test (tests/admin)
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

lint: $(BIN)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict allocation/domain

## check: migrations match the models, the OpenAPI schema builds with no warning, and the
## production settings pass Django's deployment checks
check: export DJANGO_SECRET_KEY ?= check-only-$(shell head -c 48 /dev/urandom | base64 | tr -d '/+=')
check: $(BIN)/.dev-installed
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py spectacular --fail-on-warn --validate --file /dev/null
	DJANGO_SECURE_SSL_REDIRECT=1 DJANGO_SESSION_COOKIE_SECURE=1 DJANGO_CSRF_COOKIE_SECURE=1 \
	  DJANGO_SECURE_HSTS_SECONDS=31536000 DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS=1 \
	  DJANGO_SECURE_HSTS_PRELOAD=1 $(BIN)/python manage.py check --deploy --fail-level WARNING

unit integration api admin e2e: $(BIN)/.dev-installed
	$(BIN)/pytest tests/$@

## The processes of a deployment, on PostgreSQL and Redis (docker-compose.yml runs the same).
web worker beat consumer: export DATABASE_URL ?= $(PG_URL)
web worker beat consumer: export REDIS_URL := $(REDIS_URL)
web worker beat consumer: export DJANGO_DEBUG ?= 1

web: $(BIN)/.installed createdb
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput -v0
	$(BIN)/gunicorn -c config/gunicorn.py config.wsgi -b 127.0.0.1:$(PORT)

worker: $(BIN)/.installed
	$(BIN)/celery -A config worker -l info -c 2

beat: $(BIN)/.installed
	$(BIN)/celery -A config beat -l info

consumer: $(BIN)/.installed
	$(BIN)/python manage.py consume_external_events

createdb:
	@psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='allocation'" | grep -q 1 \
	  || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE allocation"

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles tests/artifacts

## bench: the benchmark suite (about 12 minutes; bench-quick: about 4). It starts gunicorn,
## a Celery worker and beat on PostgreSQL (database allocation_bench) and a private redis-server,
## loads them with wrk and writes bench/results/<timestamp>.json, summary.md and plots. Needs
## PostgreSQL on 127.0.0.1:5432; installs wrk (apt-get) and bench/requirements.txt if missing.
## bench-soak: RSS of web and worker over 100,000 events (about 17 minutes).
.PHONY: bench bench-quick bench-soak
bench bench-quick bench-soak: $(BIN)/.installed
	@if ! command -v wrk >/dev/null || ! command -v redis-server >/dev/null; then \
	  echo "installing wrk and redis-server (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-server; \
	fi
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(if $(filter bench-soak,$@),$(BIN)/python -m bench.soak,\
	  MPLBACKEND=Agg $(BIN)/python -m bench.run $(if $(filter bench-quick,$@),--quick))
