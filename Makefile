# The two commands of the README: `make run` and `make test`. Everything else is CMake.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
DEPS = gcc make cmake pkg-config liblua5.4-dev lua5.4 lua-cjson lua-cjson-dev libuv1-dev \
       libsqlite3-dev libcurl4-openssl-dev lua-busted

.PHONY: all deps build build-asan run test clean

all: build

# Installs the Debian packages that are missing (needs root, as on a fresh machine).
deps:
	@missing=""; for p in $(DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

build-asan: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DWF_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)

# Runs the host with the example workflows end to end on an embedded SQLite database.
run: build
	@scripts/demo.sh $(BUILD)

# Benchmarks (bench/run.sh, docs/performance.md): `make bench` is the quick profile (under
# 2 minutes), `make bench-full` adds the one-million-parked-instances run. Never part of test.
.PHONY: bench bench-full
bench: build
	@bench/run.sh $(BUILD) quick

bench-full: build
	@bench/run.sh $(BUILD) full

# Every test: the C tests, the C tests again under ASan/UBSan, and the busted specs.
test: build build-asan
	@scripts/run-tests.sh $(BUILD) $(ASAN_BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
