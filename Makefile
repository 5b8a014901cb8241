# Set-up and checks. `make demo` runs the demo; `make test` runs everything CI runs.
SHELL := /bin/bash
CARGO ?= cargo
# The optional integrations, checked and tested alongside the default build. `rustls` is the TLS
# back-end the HTTPS tests run on (pure Rust, nothing to install). docs.rs builds the same set.
FEATURES := active-health discovery metrics rustls etcd

.PHONY: demo test deps bench bench-micro chaos

# Pingora builds zlib-ng through cmake: install it when missing (as root on Debian), otherwise
# say what to install.
deps:
	@if ! command -v cmake >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing cmake (needed to build pingora)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null; \
	  else \
	    echo "pingora needs cmake and a C compiler: install cmake (Debian/Ubuntu: apt-get install cmake; macOS: brew install cmake)"; \
	    exit 1; \
	  fi; \
	fi
	@command -v cc >/dev/null 2>&1 || { echo "pingora needs a C compiler: install gcc or clang"; exit 1; }
	@# The etcd tests run a real etcd (Debian's etcd-server, 3.4) on loopback ports of their own.
	@if ! command -v etcd >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing etcd-server (the etcd tests run a real etcd)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; \
	  else \
	    echo "the etcd tests need etcd: install it (Debian/Ubuntu: apt-get install etcd-server; macOS: brew install etcd)"; \
	    exit 1; \
	  fi; \
	fi
	@# The test of a blackholed upstream drops its packets on loopback with iptables (as root).
	@if ! command -v iptables >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing iptables (the blackhole test drops packets on loopback)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null; \
	fi

demo: deps
	$(CARGO) run --example demo

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --no-default-features -- -D warnings
	$(CARGO) clippy --all-targets --features "$(FEATURES)" -- -D warnings
	$(CARGO) build --examples --benches --features "$(FEATURES)"
	ci/examples-standalone.sh
	$(CARGO) test --all-targets --features "$(FEATURES)"
	$(CARGO) test --doc --features "$(FEATURES)"
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features "$(FEATURES)"
	$(CARGO) publish --dry-run --allow-dirty --no-verify --quiet
	@# The MSRV check (a check of the dependency tree with another toolchain: about a minute on
	@# a first run, seconds after) runs after the tests, not beside them: a compile beside them
	@# starves the stall cut's timing tests (50 ms limits) of CPU.
	FEATURES="$(FEATURES)" ci/msrv.sh

# End to end (see BENCHMARKS.md): failover_proxy against a bare pingora proxy under wrk in the
# steady state, four scenarios; then the onset of four faults mid-run (bench onset, about 3
# minutes); then endpoints 100x apart at 1, 4 and 32 clients, with a proxy that stalls too
# (bench mixed, about 2 minutes); then WebSocket upgrades against bare pingora (bench upgrade,
# seconds); then balancing around a slowed peer (bench balance, 20 s); then protecting the pool:
# every peer down with and without the retry budget, failover under a limit, a partly failing
# peer, a shared overload, a hot key (bench pool, about 4 minutes); then hedging against a peer
# slow on 1 request in 100 (bench hedge, 35 s); then peers from etcd: put to traffic, churn
# under load, 5,000 peers beside the peers file (bench discovery, about a minute). Installs wrk
# when missing.
bench: deps
	@command -v wrk >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "the benchmark needs wrk: install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"; exit 1; fi; }
	$(CARGO) build --release --features etcd --example failover_proxy --example bare_proxy --example bench_upstream
	python3 bench/e2e.py
	python3 bench/side_by_side.py
	SBS_THREADS=2 python3 bench/side_by_side.py
	$(CARGO) bench --bench onset
	$(CARGO) bench --bench mixed
	$(CARGO) bench --bench upgrade
	$(CARGO) bench --bench balance
	$(CARGO) bench --bench pool
	$(CARGO) bench --bench hedge
	$(CARGO) bench --features etcd --bench discovery

# Micro-benchmarks (criterion): selection, policy, budget, health.
bench-micro: deps
	$(CARGO) bench --bench select --bench engine

# The chaos test for a minute instead of the test suite's 6 s; CHAOS_SEED=N replays a run.
chaos: deps
	CHAOS_SECONDS=$${CHAOS_SECONDS:-60} $(CARGO) test --release --test chaos -- --nocapture
