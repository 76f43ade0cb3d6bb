# tandem: the README's two commands (`make demo`, `make test`) and a few more.
# CMake does the building; this file installs what is missing, configures and drives it.
#
#   make            build the library, tests, examples and benchmarks (build/)
#   make demo       build, then run `tandem demo` (threads or processes? measured here)
#   make test       build, then run every test through CTest
#   make bench      build, then run `tandem bench` (tandem against its peers)
#   make test-asan  the whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make test-tsan  the whole test suite under ThreadSanitizer
#   make install    install the library, headers, the tandem command and its man page into
#                   PREFIX (default /usr/local; DESTDIR is honoured)
#   make fuzz       build the libFuzzer targets with clang (build-fuzz/), run each FUZZ_TIME s
#   make format     apply .clang-format;  make format-check: fail if it would change anything
#
# Variables: BUILD (build directory), SANITIZE, WERROR=1, PREFIX, JOBS, FUZZ_TIME (20),
# DEMO_ARGS and BENCH_ARGS (options for `tandem demo` and `tandem bench`: make demo DEMO_ARGS=--json).

MAKEFLAGS += --no-print-directory

BUILD ?= build
SANITIZE ?=
WERROR ?= $(TDM_WERROR)
PREFIX ?= /usr/local
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=
FUZZ_TIME ?= 20

ifeq ($(WERROR),1)
  CMAKE_ARGS += -DTDM_WERROR=ON
endif

SOURCES := $(shell git ls-files '*.c' '*.h' 2>/dev/null)

.PHONY: all build configure demo test bench install test-asan test-tsan fuzz format format-check clean

all: build

configure:
	@scripts/ensure-deps "$(DEPS_GOAL)" "$(SANITIZE)"
	@cmake -S . -B $(BUILD) -DTDM_SANITIZE="$(SANITIZE)" -DCMAKE_INSTALL_PREFIX="$(PREFIX)" $(CMAKE_ARGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# The demo is the first thing a new user sees: build quietly, show the log only if it fails.
demo: DEPS_GOAL = demo
demo: configure
	@echo "tandem: building in $(BUILD)/ (log: $(BUILD)/build.log)"
	@cmake --build $(BUILD) -j $(JOBS) --target tandem-cli >$(BUILD)/build.log 2>&1 || { tail -n 40 $(BUILD)/build.log; exit 1; }
	@$(BUILD)/src/cli/tandem demo $(DEMO_ARGS)

test: DEPS_GOAL = test
test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: DEPS_GOAL = bench
bench: configure
	@cmake --build $(BUILD) -j $(JOBS) --target tandem-cli
	@$(BUILD)/src/cli/tandem bench $(BENCH_ARGS)

install: build
	@cmake --install $(BUILD)

test-asan:
	@$(MAKE) test BUILD=build-asan SANITIZE=address,undefined

test-tsan:
	@$(MAKE) test BUILD=build-tsan SANITIZE=thread

# The parsers that read what a peer sends (frames, the handshake), under libFuzzer with ASan+UBSan.
fuzz:
	@scripts/ensure-deps fuzz address,undefined
	@cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DTDM_SANITIZE=address,undefined -DTDM_FUZZ=ON \
	  -DTDM_BUILD_TESTS=OFF -DTDM_BUILD_EXAMPLES=OFF -DTDM_BUILD_CLI=OFF >/dev/null
	@cmake --build build-fuzz -j $(JOBS) --target fuzz_frame fuzz_auth_server fuzz_auth_client fuzz_manager
	@tests/fuzz/run build-fuzz $(FUZZ_TIME)

format:
	@scripts/ensure-deps format
	@clang-format -i $(SOURCES)

format-check:
	@scripts/ensure-deps format
	@clang-format --dry-run --Werror $(SOURCES)

clean:
	@rm -rf build build-asan build-tsan build-fuzz
