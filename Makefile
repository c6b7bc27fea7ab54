# cserver: build, demo, test, check, bench. See README.md.
CARGO ?= cargo
RELEASE := target/release

.PHONY: all build docs demo test check bench deps clean mutants mutants-all mutants-tools

all: build

build:
	$(CARGO) build --release
	$(CARGO) run --release --quiet --example gendocs -- target/man target/completions >/dev/null

# Man pages (man -l target/man/cserverd.1) and bash/zsh/fish completions, from the clap
# definitions.
docs:
	$(CARGO) run --release --quiet --example gendocs -- target/man target/completions

# Start cserverd, hammer it with 1000 users, show the log counts, stop it.
demo: build
	loadtest/demo.sh

# Debian packages the tests drive (nc from netcat-openbsd, tmux, strace, ...); installed only when
# missing.
TEST_PACKAGES := nc:netcat-openbsd telnet:telnet tmux:tmux strace:strace logrotate:logrotate curl:curl man:man-db haproxy:haproxy ip:iproute2 prometheus:prometheus
deps:
	@missing=""; for pair in $(TEST_PACKAGES); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing for the tests"; \
		apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; fi

test: deps
	$(CARGO) test

check: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test

# Benchmarks (not tests): medians of 5 runs, then cserverd beside the ceiling (when
# ../shared/bench is beside the checkout): the concurrency sweep with 2 workers, 1000 sessions
# with 8 workers, 50 sessions with 1 worker, a connection per request in the two- and
# three-exchange forms (beside nginx's stream module), and durable acknowledgements
# (--sync always and batch, beside the ceiling's --sync and Redis's appendfsync always and
# everysec; nginx and Redis are installed, not started as services, when missing); CSV and
# SVG under loadtest/results/.
bench: build
	python3 loadtest/bench.py
	python3 loadtest/sweep.py --runs 5 --levels 50,200,1000,5000,10000
	python3 loadtest/sweep.py --runs 5 --levels 1000 --workers 8
	python3 loadtest/sweep.py --runs 5 --levels 50 --workers 1
	python3 loadtest/sweep.py --runs 5 --levels 200 --mode churn --form two --anchors nginx
	python3 loadtest/sweep.py --runs 5 --levels 200 --mode churn --form three --anchors nginx
	python3 loadtest/sweep.py --runs 5 --levels 1000 --sync always --anchors redis
	python3 loadtest/sweep.py --runs 5 --levels 1000 --sync batch --anchors redis

clean:
	$(CARGO) clean

# Mutation testing of the core modules (tools/mutants.py; not part of test or CI): every
# surviving mutant must be a documented equivalent (README, "Mutation testing"). `mutants`:
# the mutants in lines changed since each group's last complete run (tools/mutants-base);
# `mutants-all`: every mutant of every group (about 1000: three to four hours on two cores).
mutants: mutants-tools
	python3 tools/mutants.py --changed

mutants-all: mutants-tools
	python3 tools/mutants.py

mutants-tools: deps
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install --locked cargo-mutants
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest
