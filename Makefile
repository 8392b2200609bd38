# mmc — `make run` starts the service, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: help run test lint fmt check-system postgres clean plugin plugin-memcheck bench bench-fleet soak \
	mosquitto-2.1 bench-import bench-replicas

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-deps: setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps  ## start mmc on 127.0.0.1:8088 with its store in ./data
	$(BIN)/mmc serve

# The tests start real mosquitto brokers and nginx, and build the client-control plugin:
# install Debian's packages when they are missing.
check-system:
	@missing=""; \
	{ command -v mosquitto && command -v mosquitto_ctrl \
	  && [ -e /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so ]; } >/dev/null \
	  || missing="$$missing mosquitto"; \
	{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null || missing="$$missing nginx"; \
	command -v $(CC) >/dev/null || missing="$$missing gcc"; \
	[ -e /usr/include/mosquitto_broker.h ] || missing="$$missing mosquitto-dev"; \
	[ -e /usr/include/mosquitto.h ] || missing="$$missing libmosquitto-dev"; \
	[ -e /usr/include/cjson/cJSON.h ] || missing="$$missing libcjson-dev"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing from Debian's packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "these Debian packages are required:$$missing"; \
	    echo "  sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# The companion mosquitto plugin (plugin/README.md). Override CC or PLUGIN_CFLAGS as needed.
ifeq ($(origin CC),default)
CC := gcc
endif
PLUGIN_CFLAGS ?= -O2 -g -Wall -Wextra -Wshadow -Wformat=2 -Werror
PLUGIN_SO     := plugin/mmc_client_control.so

plugin: $(PLUGIN_SO)  ## build the companion mosquitto plugin (client control, inspect)

PLUGIN_SRC    := plugin/mmc_client_control.c plugin/mmc_inspect.c plugin/mmc_subtree.c

$(PLUGIN_SO): $(PLUGIN_SRC) plugin/mmc_plugin.h
	$(CC) $(PLUGIN_CFLAGS) -fPIC -shared -o $@ $(PLUGIN_SRC) -lcjson

# mosquitto 2.1 for the tests, built from Debian sid's source package into build/ (about a
# minute on two cores) and reused: `rm -rf build/mosquitto-2.1` to build sid's current one.
# The plugin is built a second time against 2.1's headers, for 2.1's brokers.
MOSQUITTO_21 := build/mosquitto-2.1

mosquitto-2.1: $(MOSQUITTO_21)/VERSION $(MOSQUITTO_21)/mmc_client_control.so  ## build mosquitto 2.1 (and the plugin for it) under build/

$(MOSQUITTO_21)/VERSION: testbed/build-mosquitto-2.1.sh
	testbed/build-mosquitto-2.1.sh $(MOSQUITTO_21)

$(MOSQUITTO_21)/mmc_client_control.so: $(PLUGIN_SRC) plugin/mmc_plugin.h $(MOSQUITTO_21)/VERSION
	$(CC) $(PLUGIN_CFLAGS) -I$(MOSQUITTO_21)/include -fPIC -shared -o $@ $(PLUGIN_SRC) -lcjson

# Opt-in: the client-control and inspect tests with every broker under valgrind; fails
# on any memory error or definite leak (logs in build/memcheck/).
plugin-memcheck: $(VENV)/.test-deps check-system plugin
	rm -rf build/memcheck && mkdir -p build/memcheck
	MMC_TEST_MOSQUITTO_WRAPPER="valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99 --log-file=$(CURDIR)/build/memcheck/vg-%p.log" \
	  $(BIN)/python -m pytest -p no:cacheprovider tests/test_client_control.py tests/test_inspect.py
	@# Brokers a test SIGKILLs on purpose leave no summary; every other one must be clean.
	@grep -H "ERROR SUMMARY" build/memcheck/vg-*.log
	@grep -L "ERROR SUMMARY" build/memcheck/vg-*.log | sed 's/$$/: killed by its test, not checked/'
	@! grep -h "ERROR SUMMARY" build/memcheck/vg-*.log | grep -v "ERROR SUMMARY: 0 errors"

# The store tests also run on PostgreSQL: each creates and drops a database of its own on the
# local server (or on MMC_TEST_POSTGRES_URL's, left alone). Install and start it when missing;
# a fresh install gets the password the tests' default URL uses.
PG_TEST_URL := postgresql://postgres:postgres@127.0.0.1:5432/postgres

postgres:
	@if [ -n "$$MMC_TEST_POSTGRES_URL" ]; then exit 0; fi; \
	fresh=""; \
	if ! command -v pg_ctlcluster >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "PostgreSQL is required: sudo apt-get install -y postgresql"; exit 1; fi; \
	  echo "installing from Debian's packages: postgresql"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  fresh=1; \
	fi; \
	if ! pg_isready -q -h 127.0.0.1 -p 5432; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "PostgreSQL is not running on 127.0.0.1:5432: start it (pg_ctlcluster <version> main start)"; exit 1; fi; \
	  for version in $$(ls /etc/postgresql); do \
	    pg_ctlcluster --skip-systemctl-redirect $$version main start || exit 1; done; \
	  for i in $$(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done; \
	fi; \
	if [ -n "$$fresh" ]; then \
	  runuser -u postgres -- psql -qc "ALTER ROLE postgres PASSWORD 'postgres'"; fi

# Three pytest-xdist workers, whole files each, in the order tests/conftest.py gives (the
# files that take minutes first): the suite mostly waits on brokers, so three workers on
# two cores take about half the time of one. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3

test: $(VENV)/.test-deps check-system postgres plugin mosquitto-2.1  ## run the whole test suite against real brokers and PostgreSQL
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# MINUTES=2 make soak for a shorter run; see bench/soak.py for what it measures.
soak: $(VENV)/.test-deps check-system  ## 10 minutes of mixed traffic with brokers restarting; prints its figures
	$(BIN)/python bench/soak.py --minutes $(or $(MINUTES),10)

lint: $(VENV)/.test-deps  ## ruff and mypy
	$(BIN)/ruff check mmc tests bench testbed
	$(BIN)/ruff format --check mmc tests bench testbed
	$(BIN)/mypy

fmt: $(VENV)/.test-deps
	$(BIN)/ruff check --fix mmc tests bench testbed
	$(BIN)/ruff format mmc tests bench testbed

# Both start their own mosquitto brokers and mmc on 127.0.0.1, print a table with the
# targets as pass/fail and write JSON to bench/results/. About 2 to 3 minutes each.
# BENCH_ARGS="--store postgresql" measures mmc on a new database of the local PostgreSQL.
# BENCH_ARGS="--mosquitto 2.1" runs the brokers on 2.1 (built by `make mosquitto-2.1`).
# Then bench.publish: mosquitto 2.0's publish throughput with 0, 1,000 and 10,000 of the
# plugin's own subscriptions (about a minute). Both run; either failing fails the target.
bench: $(VENV)/.test-deps check-system plugin $(if $(findstring 2.1,$(BENCH_ARGS)),mosquitto-2.1)  ## API latency/throughput vs bare MQTT and mosquitto_ctrl; publish throughput with plugin subscriptions
	$(BIN)/python -m bench.run $(BENCH_ARGS); api=$$?; \
	$(BIN)/python -m bench.publish; publish=$$?; \
	[ $$api = 0 ] && [ $$publish = 0 ]

bench-fleet: $(VENV)/.test-deps check-system  ## 1,000 links in one mmc: start, memory, broker restart
	ulimit -n 65536 2>/dev/null || ulimit -n $$(ulimit -Hn); $(BIN)/python -m bench.fleet $(BENCH_ARGS)

# BENCH_ARGS="--before /path/to/other/checkout" also runs that mmc code, alternating with
# this one's (before/after in the same run); --quick is shorter.
bench-import: $(VENV)/.test-deps check-system  ## import of 1,000 clients / 200 roles: time, MQTT messages, commands
	$(BIN)/python -m bench.import_cost $(BENCH_ARGS)

bench-replicas: $(VENV)/.test-deps check-system postgres  ## two replicas on one PostgreSQL: modifyClient at c=64, login writes
	$(BIN)/python -m bench.replicas $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info plugin/*.so plugin/*.o
