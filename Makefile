# DETR trainer - the only build entry.
#   make            CPU binaries (and the CUDA backend when nvcc is found; CUDA=0 turns it off)
#   make test       set up Debian packages, build, run every test (ends with "N passed, N failed")
#   make run        set up, build, train the tiny preset on the embedded default with profiling
#   make asan       build and run the tests under AddressSanitizer + UndefinedBehaviorSanitizer
#   make bench      benchmarks against the PyTorch reference (results in docs/benchmarks.md)
#   make gpu-check  GPU verification script (needs a GPU; docs/gpu-check.md)
#   make gpu-bench  the GPU benchmark against PyTorch on the same card (docs/gpu-benchmark.md)
#   make gpu-bundle programs + runtime libraries for a GPU machine without package access

CC       ?= gcc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= /usr/local/cuda
ifeq ($(origin CUDA),undefined)
CUDA := $(if $(NVCC),1,0)
endif
# CPU-only builds get their own folder, so objects of the two configurations never mix.
BUILD    ?= build$(if $(filter 0,$(CUDA)),-cpu,)
CUDA_ARCHS ?= 80 90

OPT      ?= -O2
# Built from source on the machine that runs it, so tune for it (make ARCH= for a portable
# x86-64 build). -fno-math-errno lets sqrtf/expf vectorise (AdamW went from 15 to 5 ms a step in
# build/bench/bench_train's optimizer phase).
ARCH     ?= -march=native
SAN      ?=
CFLAGS   := -std=c11 -D_GNU_SOURCE $(OPT) $(ARCH) -fno-math-errno -ftree-vectorize \
            -fvect-cost-model=dynamic -g -Wall -Wextra -Werror -fopenmp -MMD -MP $(SAN) \
            -Itrainer -Iprofiler -Idataloader
# OpenBLAS's OpenMP build (Debian libopenblas0-openmp): its threads are our OpenMP pool, so BLAS
# calls and our parallel loops never fight over the cores (with the pthread build, OpenMP
# workers spin-waiting between loops made training 10x slower on 2 cores).
BLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
LDLIBS   := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -l:libopenblas.so.0 -ljansson -luv -lsqlite3 -lturbojpeg -lspng -lhttp_parser -lm -lpthread
LDFLAGS  := -fopenmp $(SAN)

# trainer/cuda/*.c is plain C (e.g. the caching allocator's core, tested on the CPU): built in both configurations
LIB_SRC  := $(filter-out %_main.c,$(wildcard trainer/*.c trainer/cuda/*.c dataloader/*.c profiler/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)

ifeq ($(CUDA),1)
CFLAGS   += -DDETR_CUDA -I$(CUDA_HOME)/include
# NVFLAGS is recursive (=) so that -MF names each object's own .d file ($@ exists only in the
# recipe); DETR_CUDA_ARCHS lets the program name the GPU code it has in its error messages.
NVFLAGS   = -O2 -g -std=c++17 -Xcompiler -Wall,-Wextra,-Werror -Itrainer -I$(CUDA_HOME)/include \
            -DDETR_CUDA '-DDETR_CUDA_ARCHS="$(CUDA_ARCHS)"' -MMD -MP -MF $(@:.o=.d) \
            $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a))
CUDA_SRC := $(wildcard trainer/cuda/*.cu)
CUDA_OBJ := $(CUDA_SRC:%.cu=$(BUILD)/%.o)
LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudnn -lcublasLt -lcublas -lcupti \
            -lnccl -lcudart -lstdc++
endif

BINS := $(BUILD)/detr-train $(BUILD)/detr-infer $(BUILD)/detr-data $(BUILD)/detr-prof
TEST_SRC  := $(wildcard tests/unit/test_*.c)
TEST_BINS := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all test run asan tsan bench gpu-check gpu-bench gpu-bundle setup clean
all: $(BINS) $(TEST_BINS) $(BENCH_BINS)

# Front-end files embedded into detr-prof (profiler/assets.h): the report and dashboard pages and
# the charting library, installed from npm (package.json, package-lock.json) at build time.
ECHARTS    := node_modules/echarts/dist/echarts.min.js
ASSET_SRC  := $(sort $(wildcard reports/*.html reports/*.js reports/*.css dashboards/*.html dashboards/*.js dashboards/*.css))
$(ECHARTS): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@
$(BUILD)/assets.c: scripts/embed_assets.py $(ASSET_SRC) $(ECHARTS)
	@mkdir -p $(dir $@)
	python3 scripts/embed_assets.py $@ $(foreach f,$(ASSET_SRC),$(f)=$(f)) vendor/echarts.min.js=$(ECHARTS)
$(BUILD)/assets.o: $(BUILD)/assets.c $(FLAGS_STAMP)
	$(CC) $(filter-out -g -march=native,$(CFLAGS)) -O0 -c $< -o $@

$(BUILD)/libdetr.a: $(LIB_OBJ) $(CUDA_OBJ) $(BUILD)/assets.o
	@rm -f $@
	ar rcs $@ $^

# Objects depend on the flags they were built with: changing OPT/ARCH/SAN/CUDA rebuilds.
FLAGS_STAMP := $(BUILD)/flags.stamp
$(shell mkdir -p $(BUILD) && echo '$(CC) $(CFLAGS) $(LDLIBS)' | cmp -s - $(FLAGS_STAMP) || \
        echo '$(CC) $(CFLAGS) $(LDLIBS)' > $(FLAGS_STAMP))

# The git revision recorded in profiles: a generated header, rewritten only when it changes.
GIT_REV := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(shell git diff --quiet HEAD 2>/dev/null || echo -modified)
$(shell echo '#define DETR_GIT_REV "$(GIT_REV)"' | cmp -s - $(BUILD)/git_rev.h || \
        echo '#define DETR_GIT_REV "$(GIT_REV)"' > $(BUILD)/git_rev.h)
$(BUILD)/trainer/train_loop.o $(BUILD)/trainer/version.o: $(BUILD)/git_rev.h
$(BUILD)/trainer/train_loop.o $(BUILD)/trainer/version.o: CFLAGS += -I$(BUILD)

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/detr-train: $(BUILD)/trainer/detr_train_main.o $(BUILD)/libdetr.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/detr-infer: $(BUILD)/trainer/detr_infer_main.o $(BUILD)/libdetr.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/detr-data: $(BUILD)/dataloader/detr_data_main.o $(BUILD)/libdetr.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/detr-prof: $(BUILD)/profiler/detr_prof_main.o $(BUILD)/libdetr.a
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libdetr.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(BUILD)/libdetr.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

setup:
	@scripts/setup.sh

test: setup
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) tests/run_tests.sh

# Sanitizer build in its own folder, CPU only (the CUDA runtime does not run under ASan here).
asan: setup
	@$(MAKE) --no-print-directory BUILD=build-asan CUDA=0 OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	@BUILD=build-asan ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 tests/run_tests.sh

# ThreadSanitizer on the data loader's and the profiler's tests, CPU only.
tsan: setup
	@$(MAKE) --no-print-directory BUILD=build-tsan CUDA=0 OPT=-O1 SAN="-fsanitize=thread" \
	    build-tsan/detr-train build-tsan/detr-data build-tsan/detr-prof \
	    $(patsubst tests/unit/%.c,build-tsan/tests/%,$(wildcard tests/unit/test_loader*.c tests/unit/test_prof*.c))
	@for t in build-tsan/tests/test_loader* build-tsan/tests/test_prof*; do [ -x "$$t" ] || continue; echo "== $$t (TSan)"; \
	    TSAN_OPTIONS=halt_on_error=1 DETR_BUILD=build-tsan $$t || exit 1; done

run: setup
	@$(MAKE) --no-print-directory all
	@scripts/run_default.sh

bench: setup
	@$(MAKE) --no-print-directory all
	@bench/run_bench.sh

gpu-check:
	@$(MAKE) --no-print-directory all CUDA=1
	@scripts/gpu_check.sh

gpu-bench:
	@$(MAKE) --no-print-directory all CUDA=1
	@/usr/bin/env python3 bench/gpu_bench.py $(GPU_BENCH_ARGS)

gpu-bundle:
	@scripts/gpu_bundle.sh

clean:
	rm -rf build build-cpu build-asan build-tsan build-gpu .gpu-deps node_modules

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
