/* test_version.c - version_print() names every linked library with a version, the run-time
 * checks pass on this machine, and (CUDA build) the check macros, device selection and device
 * memory behave as backend_cuda.h says: on a machine without GPU or driver everything must
 * degrade to a clear message, never crash; with a GPU the memory ops are checked for real.
 *
 * Exit paths (a failing cudaCheck, device out of memory) run in a child process: this program
 * re-executes itself with a --child-* argument. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cblas.h>
#include <jansson.h>
#include <omp.h>
#include <sqlite3.h>
#include <uv.h>
#include "check.h"
#include "mem.h"
#include "version.h"
#ifdef DETR_CUDA
#include <cuda_runtime_api.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include <cupti.h>
#include <nccl.h>
#include "cuda/backend_cuda.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_info.h"
#endif

/* ------------------------------------------------------------------------------------------ */
/* helpers                                                                                    */

/* version_print() output as one NUL-terminated string (caller frees). */
static char *capture_version_print(void) {
    FILE *f = tmpfile();
    if (!f) return NULL;
    version_print(f);
    long n = ftell(f);
    rewind(f);
    char *text = calloc((size_t)n + 1, 1);
    if (text && fread(text, 1, (size_t)n, f) != (size_t)n) text[0] = '\0';
    fclose(f);
    return text;
}

/* Copies the line "  <label> <value>" (label followed by spaces) into line; 0 if absent. */
static int find_line(const char *text, const char *label, char *line, size_t n) {
    size_t len = strlen(label);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, "  ", 2) == 0 && strncmp(p + 2, label, len) == 0 && p[2 + len] == ' ') {
            const char *end = strchr(p, '\n');
            size_t m = end ? (size_t)(end - p) : strlen(p);
            if (m >= n) m = n - 1;
            memcpy(line, p, m);
            line[m] = '\0';
            return 1;
        }
    }
    line[0] = '\0';
    return 0;
}

/* 1 when s holds a version-looking "digits.digits". */
static int has_version(const char *s) {
    regex_t re;
    if (regcomp(&re, "[0-9]+\\.[0-9]+", REG_EXTENDED | REG_NOSUB) != 0) return 0;
    int ok = regexec(&re, s, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

static void check_library_line(const char *text, const char *label) {
    char line[1024], name[96];
    int found = find_line(text, label, line, sizeof line);
    snprintf(name, sizeof name, "version_print: %s line", label);
    CHECK(name, found && has_version(line + 2 + strlen(label)),
          "no line \"  %s <version>\" (got \"%s\")", label, line);
}

static void check_line_contains(const char *text, const char *label, const char *want) {
    char line[1024], name[128];
    find_line(text, label, line, sizeof line);
    snprintf(name, sizeof name, "version_print: %s shows %s", label, want);
    CHECK(name, strstr(line, want) != NULL, "line \"%s\" lacks \"%s\"", line, want);
}

/* ------------------------------------------------------------------------------------------ */
/* CPU-side checks (every build)                                                              */

static void test_version_print(const char *text) {
    CHECK("version_print: first line names the project version",
          strncmp(text, "DETR trainer " DETR_VERSION "\n", strlen("DETR trainer " DETR_VERSION "\n")) == 0,
          "output starts with \"%.40s\"", text);
    CHECK("DETR_VERSION is 0.1.0", strcmp(DETR_VERSION, "0.1.0") == 0, "got %s", DETR_VERSION);
    const char *labels[] = {"compiler", "OpenMP", "OpenBLAS", "libuv", "SQLite", "jansson"};
    for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++) check_library_line(text, labels[i]);

    /* libjpeg-turbo's version comes only from jconfig.h (libjpeg62-turbo-dev), which the
     * TurboJPEG dev package does not pull in */
    char line[1024];
    find_line(text, "libjpeg-turbo", line, sizeof line);
    if (strstr(line, "no jconfig.h"))
        test_skip("version_print: libjpeg-turbo line",
                  "jconfig.h was absent at build time (install libjpeg62-turbo-dev)");
    else {
        check_library_line(text, "libjpeg-turbo");
        check_line_contains(text, "libjpeg-turbo", "(compile-time)");
    }

    /* the printed versions are the ones the libraries report at run time */
    check_line_contains(text, "SQLite", sqlite3_libversion());
    check_line_contains(text, "libuv", uv_version_string());
    check_line_contains(text, "jansson", jansson_version_str());
    check_line_contains(text, "OpenBLAS", openblas_get_corename());
#if defined(__clang__)
    check_line_contains(text, "compiler", "clang");
#else
    check_line_contains(text, "compiler", "gcc");
#endif
    char threads[32];
    snprintf(threads, sizeof threads, "%d threads", omp_get_max_threads());
    check_line_contains(text, "OpenMP", threads);
}

static void test_runtime_checks(void) {
    CHECK("linked OpenBLAS is the OpenMP build (shares our thread pool)",
          openblas_get_parallel() == 2, "openblas_get_parallel() = %d (1 = pthreads)",
          openblas_get_parallel());
    char err[2048] = "untouched";
    int rc = version_check_runtime(err, sizeof err);
    CHECK("version_check_runtime passes on this machine", rc == 0 && err[0] == '\0',
          "rc=%d err=\"%s\"", rc, err);
    CHECK("version_check_runtime accepts a NULL buffer", version_check_runtime(NULL, 0) == rc,
          "different result without a buffer");
    int n = version_cuda_device_count();
#ifdef DETR_CUDA
    CHECK("version_cuda_device_count is the runtime's count", n == cuda_info_device_count() && n >= 0,
          "got %d", n);
#else
    CHECK("version_cuda_device_count is 0 without a CUDA build", n == 0, "got %d", n);
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* CUDA build                                                                                 */
#ifdef DETR_CUDA

static char g_self[4096]; /* this program's path, for the child runs */

/* Runs this program with `arg`; returns its exit status (-1 if it died by a signal) and its
 * stdout+stderr in out. */
static int run_child(const char *arg, char *out, size_t n) {
    char cmd[4352];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", g_self, arg);
    out[0] = '\0';
    FILE *p = popen(cmd, "r");
    if (!p) return -2;
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cuda_version_lines(const char *text) {
    const char *labels[] = {"CUDA runtime", "nvcc", "cuDNN", "cuBLAS", "NCCL"};
    for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++) check_library_line(text, labels[i]);
    char line[1024], want[64];
    CHECK("version_print: CUPTI line", find_line(text, "CUPTI", line, sizeof line) &&
                                           strstr(line, "API version") != NULL,
          "got \"%s\"", line);
    size_t v = cudnnGetVersion();
    snprintf(want, sizeof want, "%zu.%zu.%zu", v / 10000, v % 10000 / 100, v % 100);
    check_line_contains(text, "cuDNN", want);

    int drv = 0;
    if (cudaDriverGetVersion(&drv) != cudaSuccess) drv = 0;
    find_line(text, "CUDA driver", line, sizeof line);
    if (drv == 0)
        CHECK("version_print: CUDA driver says \"no driver\"", strstr(line, "no driver") != NULL,
              "got \"%s\"", line);
    else
        CHECK("version_print: CUDA driver shows its version", has_version(line), "got \"%s\"", line);

    int gpus = version_cuda_device_count();
    if (gpus == 0) {
        CHECK("version_print: GPUs line says none", find_line(text, "GPUs", line, sizeof line) &&
                                                        strstr(line, "none") != NULL,
              "got \"%s\"", line);
    } else {
        CHECK("version_print: GPU 0 line with compute capability",
              find_line(text, "GPU 0", line, sizeof line) &&
                  strstr(line, "compute capability") != NULL && strstr(line, "GiB") != NULL,
              "got \"%s\"", line);
    }
}

static void test_check_messages(void) {
    char msg[2048];
    gpu_format_error(msg, sizeof msg, GPU_LIB_CUDA, cudaErrorMemoryAllocation, "cudaMalloc(&p, 1)",
                     "x.cu", 42);
    CHECK("cudaCheck message: call, file:line, name, text, HINT",
          strstr(msg, "`cudaMalloc(&p, 1)`") && strstr(msg, "x.cu:42") &&
              strstr(msg, "cudaErrorMemoryAllocation") && strstr(msg, "out of memory") &&
              strstr(msg, "\nHINT: ") && strncmp(msg, "error: CUDA call", 16) == 0,
          "got \"%s\"", msg);
    CHECK("cudaErrorMemoryAllocation counts as out of memory",
          gpu_status_is_oom(GPU_LIB_CUDA, cudaErrorMemoryAllocation) &&
              !gpu_status_is_oom(GPU_LIB_CUDA, cudaErrorInvalidValue),
          "wrong classification");
    CHECK("no-driver hint suggests --device cpu",
          strstr(gpu_error_hint(GPU_LIB_CUDA, cudaErrorInsufficientDriver), "--device cpu") != NULL &&
              strstr(gpu_error_hint(GPU_LIB_CUDA, cudaErrorNoDevice), "--device cpu") != NULL,
          "hint: %s", gpu_error_hint(GPU_LIB_CUDA, cudaErrorInsufficientDriver));

    gpu_format_error(msg, sizeof msg, GPU_LIB_CUBLAS, CUBLAS_STATUS_INVALID_VALUE, "cublasSgemm(...)",
                     "y.cu", 7);
    CHECK("cublasCheck message names the status",
          strstr(msg, "cuBLAS call") && strstr(msg, "CUBLAS_STATUS_INVALID_VALUE") &&
              strstr(msg, "y.cu:7") && strstr(msg, "HINT: "),
          "got \"%s\"", msg);
    CHECK("CUBLAS_STATUS_ALLOC_FAILED counts as out of memory",
          gpu_status_is_oom(GPU_LIB_CUBLAS, CUBLAS_STATUS_ALLOC_FAILED), "not OOM");

    gpu_format_error(msg, sizeof msg, GPU_LIB_CUDNN, CUDNN_STATUS_BAD_PARAM, "cudnnX(...)", "z.cu", 9);
    CHECK("cudnnCheck message names the status and its category",
          strstr(msg, "cuDNN call") && strstr(msg, "CUDNN_STATUS_BAD_PARAM") &&
              strstr(msg, "bad parameter") && strstr(msg, "HINT: "),
          "got \"%s\"", msg);
    CHECK("cuDNN device allocation failure counts as out of memory",
          gpu_status_is_oom(GPU_LIB_CUDNN, CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED) &&
              !gpu_status_is_oom(GPU_LIB_CUDNN, CUDNN_STATUS_BAD_PARAM),
          "wrong classification");

    gpu_format_error(msg, sizeof msg, GPU_LIB_NCCL, ncclSystemError, "ncclAllReduce(...)", "n.cu", 1);
    CHECK("ncclCheck message", strstr(msg, "ncclSystemError") && strstr(msg, "NCCL_DEBUG"),
          "got \"%s\"", msg);
    gpu_format_error(msg, sizeof msg, GPU_LIB_CUPTI, CUPTI_ERROR_INSUFFICIENT_PRIVILEGES, "cupti(...)",
                     "c.cu", 2);
    CHECK("cuptiCheck message", strstr(msg, "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES") != NULL,
          "got \"%s\"", msg);

    char small[8];
    int full = gpu_format_error(small, sizeof small, GPU_LIB_CUDA, cudaErrorNoDevice, "f()", "a", 1);
    CHECK("gpu_format_error truncates safely", strlen(small) == 7 && full > 7,
          "len %zu, full %d", strlen(small), full);
}

static void test_check_exits(void) {
    char out[8192];
    int rc = run_child("--child-cuda-check", out, sizeof out);
    CHECK("failing cudaCheck exits 1 with file:line, the call and a HINT",
          rc == 1 && strstr(out, "cudaSetDevice(-1)") && strstr(out, "test_version.c:") &&
              strstr(out, "HINT: "),
          "rc=%d output: %s", rc, out);
    rc = run_child("--child-cuda-check-oom", out, sizeof out);
    CHECK("out-of-memory cudaCheck exits EXIT_OOM with the memory report",
          rc == EXIT_OOM && strstr(out, "memory charged by this process") &&
              strstr(out, "activations"),
          "rc=%d output: %s", rc, out);
}

static void test_archs(void) {
    const char *archs = cuda_info_archs();
    CHECK("GPU code architectures are recorded", archs && archs[0], "empty");
    int all_listed_supported = 1;
    for (const char *s = archs; *s;) {
        char *end;
        long cc = strtol(s, &end, 10);
        if (end == s) { s++; continue; }
        if (!cuda_info_arch_supported((int)(cc / 10), (int)(cc % 10))) all_listed_supported = 0;
        s = end;
    }
    CHECK("every listed architecture counts as supported", all_listed_supported, "archs \"%s\"",
          archs);
    if (strcmp(archs, "80 90") == 0) {
        CHECK("sm_80 + sm_90 code: 8.6 and 9.0 run it, 7.5 and 10.0 do not",
              cuda_info_arch_supported(8, 6) && cuda_info_arch_supported(9, 0) &&
                  !cuda_info_arch_supported(7, 5) && !cuda_info_arch_supported(10, 0),
              "wrong answer");
    }
}

static void test_device_init_without_gpu(void) {
    char err[2048];
    int rc = cuda_device_init(0, err, sizeof err);
    CHECK("cuda_device_init without a GPU fails with a clear message",
          rc == -1 && strncmp(err, "error: ", 7) == 0 && strstr(err, "HINT: ") &&
              strstr(err, "--device cpu"),
          "rc=%d err=\"%s\"", rc, err);
    CHECK("no device selected after the failure", cuda_current_device() == -1, "got %d",
          cuda_current_device());
    CHECK("cuda_device_init(NULL buffer) still fails cleanly", cuda_device_init(0, NULL, 0) == -1,
          "succeeded");
    test_skip("GPU memory ops", "no GPU on this machine (the same test checks them on a GPU)");
}

/* Upload, copy, fill, download on real device memory, with the byte accounting. */
static void test_device_memory(void) {
    const size_t n = (1u << 20) + 3; /* odd size: not a multiple of the block size */
    MemStats before = mem_stats();
    float *a = cuda_alloc(MEM_ACTS, n);      /* [n] */
    float *b = cuda_alloc(MEM_WORKSPACE, n); /* [n] */
    MemStats during = mem_stats();
    CHECK("cuda_alloc charges its category",
          a && b && during.current[MEM_ACTS] == before.current[MEM_ACTS] + n * sizeof(float) &&
              during.current[MEM_WORKSPACE] == before.current[MEM_WORKSPACE] + n * sizeof(float),
          "acts %zu -> %zu", before.current[MEM_ACTS], during.current[MEM_ACTS]);
    CHECK("live block count", cuda_live_blocks() == 2, "got %zu", cuda_live_blocks());

    float *h = malloc(n * sizeof(float));   /* [n] */
    float *back = malloc(n * sizeof(float)); /* [n] */
    for (size_t i = 0; i < n; i++) h[i] = (float)i * 0.5f - 3.0f;
    cuda_upload(a, h, n * sizeof(float));
    cuda_copy(b, a, n);
    cuda_fill(a, 7.0f, n / 2);
    cuda_synchronize();
    cuda_download(back, b, n * sizeof(float));
    CHECK("upload + copy + download round trip", memcmp(back, h, n * sizeof(float)) == 0,
          "first %g vs %g", back[0], h[0]);
    cuda_download(back, a, n * sizeof(float));
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += back[i] != (i < n / 2 ? 7.0f : h[i]);
    CHECK("fill writes exactly n values", bad == 0, "%zu wrong values", bad);
    free(h);
    free(back);

    CHECK("zero-size allocation gives NULL", cuda_alloc(MEM_ACTS, 0) == NULL, "not NULL");
    cuda_free(a);
    cuda_free(b);
    cuda_free(NULL);
    MemStats after = mem_stats();
    CHECK("cuda_free releases the charge",
          after.current[MEM_ACTS] == before.current[MEM_ACTS] &&
              after.current[MEM_WORKSPACE] == before.current[MEM_WORKSPACE] &&
              cuda_live_blocks() == 0,
          "acts %zu, live %zu", after.current[MEM_ACTS], cuda_live_blocks());

    void *huge = cuda_try_alloc_bytes(MEM_ACTS, (size_t)1 << 50);
    CHECK("cuda_try_alloc_bytes: device OOM gives NULL, nothing charged",
          huge == NULL && mem_stats().total_current == before.total_current, "p=%p", huge);

    mem_set_limit(before.total_current + 1024);
    mem_set_exit_on_oom(0);
    void *over = cuda_alloc_bytes(MEM_ACTS, 4096);
    mem_set_exit_on_oom(1);
    mem_set_limit(0);
    CHECK("--mem-limit budget applies to device memory", over == NULL, "allocation went through");
    if (over) cuda_free_bytes(over);

    char out[8192];
    int rc = run_child("--child-device-oom", out, sizeof out);
    CHECK("device out of memory exits EXIT_OOM with the report and a HINT",
          rc == EXIT_OOM && strstr(out, "out of GPU memory") && strstr(out, "HINT: "),
          "rc=%d output: %s", rc, out);
}

static void test_device_init_with_gpu(int gpus) {
    char err[2048];
    int rc = cuda_device_init(gpus, err, sizeof err);
    CHECK("cuda_device_init: index out of range is refused", rc == -1 && strstr(err, "found"),
          "rc=%d err=\"%s\"", rc, err);
    rc = cuda_device_init(0, err, sizeof err);
    CHECK("cuda_device_init(0) succeeds on a GPU machine", rc == 0, "err=\"%s\"", err);
    if (rc != 0) return;
    CHECK("cuda_device_init is idempotent", cuda_device_init(0, err, sizeof err) == 0 &&
                                                cuda_current_device() == 0,
          "err=\"%s\"", err);
    test_device_memory();
}

/* Child modes: each ends the process through the path under test. */
static int child_main(const char *mode) {
    if (strcmp(mode, "--child-cuda-check") == 0) {
        cudaCheck(cudaSetDevice(-1));
        return 0; /* not reached when the macro works */
    }
    if (strcmp(mode, "--child-cuda-check-oom") == 0) {
        cudaCheck(cudaErrorMemoryAllocation);
        return 0;
    }
    if (strcmp(mode, "--child-device-oom") == 0) {
        char err[2048];
        if (cuda_device_init(0, err, sizeof err) != 0) {
            fputs(err, stderr);
            return 10;
        }
        cuda_alloc_bytes(MEM_ACTS, (size_t)1 << 50);
        return 0;
    }
    fprintf(stderr, "unknown child mode %s\n", mode);
    return 20;
}
#endif /* DETR_CUDA */

int main(int argc, char **argv) {
#ifdef DETR_CUDA
    if (argc > 1) return child_main(argv[1]);
    ssize_t len = readlink("/proc/self/exe", g_self, sizeof g_self - 1);
    g_self[len > 0 ? len : 0] = '\0';
#else
    (void)argc;
    (void)argv;
#endif
    char *text = capture_version_print();
    CHECK("version_print writes something", text && text[0], "empty output");
    if (!text) return test_finish();
    printf("---- version_print ----\n%s-----------------------\n", text);
    test_version_print(text);
    test_runtime_checks();
#ifdef DETR_CUDA
    test_cuda_version_lines(text);
    test_check_messages();
    test_check_exits();
    test_archs();
    int gpus = version_cuda_device_count();
    if (gpus == 0)
        test_device_init_without_gpu();
    else
        test_device_init_with_gpu(gpus);
#else
    char line[1024];
    CHECK("version_print: CUDA line says not built",
          find_line(text, "CUDA", line, sizeof line) && strstr(line, "not built"), "got \"%s\"",
          line);
#endif
    free(text);
    return test_finish();
}
