# agentgate: `make demo` runs the demo, `make test` runs every test.
CARGO ?= cargo

.PHONY: demo test build check lint bench fuzz clean

build:
	scripts/deps.sh build
	$(CARGO) build --release

demo: build
	./target/release/agentgate demo

# Everything the tests need is installed first (as root), then every test runs:
# unit and integration tests, and the shipped Prometheus rules through promtool.
test:
	scripts/deps.sh test
	$(CARGO) build --tests
	scripts/run-tests.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --lib --bins -- -D warnings
	scripts/check-layers.py

check: lint test

bench:
	scripts/deps.sh bench
	benches/run.sh

fuzz:
	scripts/fuzz.sh

clean:
	$(CARGO) clean
