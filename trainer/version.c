/* version.c - see version.h. Run-time versions are asked of the libraries themselves where
 * they can tell; the headers' versions are printed beside them, so a mismatch between what was
 * compiled against and what the loader found is visible at a glance. */
#include "version.h"
#include <stdio.h>
#include <string.h>
#include <cblas.h>
#include <jansson.h>
#include <sqlite3.h>
#include <uv.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__has_include)
#if __has_include(<jconfig.h>)
#include <jconfig.h> /* libjpeg-turbo's build configuration: LIBJPEG_TURBO_VERSION */
#endif
#endif
#ifdef DETR_CUDA
#include "cuda/cuda_info.h"
#endif

/* Width of the name column of version_print(). */
#define LABEL_WIDTH 14

#define STR2(x) #x
#define STR(x) STR2(x)

static void print_label(FILE *f, const char *label) { fprintf(f, "  %-*s ", LABEL_WIDTH, label); }

static void print_compiler(FILE *f) {
    print_label(f, "compiler");
#if defined(__clang__)
    fprintf(f, "clang %s\n", __clang_version__);
#elif defined(__GNUC__)
    fprintf(f, "gcc %s\n", __VERSION__);
#else
    fprintf(f, "unknown C compiler\n");
#endif
}

/* The OpenMP specification version a _OPENMP date stands for. */
static const char *openmp_spec(long date) {
    if (date >= 202111) return "5.2";
    if (date >= 202011) return "5.1";
    if (date >= 201811) return "5.0";
    if (date >= 201511) return "4.5";
    if (date >= 201307) return "4.0";
    if (date >= 201107) return "3.1";
    return "3.0 or older";
}

static void print_openmp(FILE *f) {
    print_label(f, "OpenMP");
#ifdef _OPENMP
    fprintf(f, "%s (_OPENMP %ld), %d threads (OMP_NUM_THREADS)\n", openmp_spec((long)_OPENMP),
            (long)_OPENMP, omp_get_max_threads());
#else
    fprintf(f, "not enabled (built without -fopenmp)\n");
#endif
}

static const char *openblas_parallel_name(int mode) {
    switch (mode) {
    case 0: return "sequential";
    case 1: return "pthreads";
    case 2: return "OpenMP";
    default: return "unknown threading";
    }
}

/* openblas_get_config() reads "OpenBLAS <version> <build options>"; OPENBLAS_VERSION is
 * " OpenBLAS <version> ". */
static void openblas_version_of(const char *text, char *version, size_t n) {
    char word[32];
    snprintf(version, n, "unknown");
    if (text && sscanf(text, " OpenBLAS %31s", word) == 1) snprintf(version, n, "%s", word);
}

static void print_openblas(FILE *f) {
    const char *config = openblas_get_config();
    char run[32], hdr[32];
    openblas_version_of(config, run, sizeof run);
#ifdef OPENBLAS_VERSION
    openblas_version_of(OPENBLAS_VERSION, hdr, sizeof hdr);
#else
    openblas_version_of(NULL, hdr, sizeof hdr);
#endif
    print_label(f, "OpenBLAS");
    fprintf(f, "%s (headers %s; core %s, %d threads, %s; config: %s)\n", run, hdr,
            openblas_get_corename(), openblas_get_num_threads(),
            openblas_parallel_name(openblas_get_parallel()), config ? config : "unknown");
}

static void print_libuv(FILE *f) {
    print_label(f, "libuv");
    fprintf(f, "%s (headers %d.%d.%d)\n", uv_version_string(), UV_VERSION_MAJOR,
            UV_VERSION_MINOR, UV_VERSION_PATCH);
}

static void print_sqlite(FILE *f) {
    print_label(f, "SQLite");
    fprintf(f, "%s (headers %s)\n", sqlite3_libversion(), SQLITE_VERSION);
}

/* TurboJPEG 2.1 has no run-time version call: the headers' version is all there is. */
static void print_libjpeg_turbo(FILE *f) {
    print_label(f, "libjpeg-turbo");
#ifdef LIBJPEG_TURBO_VERSION
    fprintf(f, "%s (compile-time)\n", STR(LIBJPEG_TURBO_VERSION));
#else
    fprintf(f, "unknown (no jconfig.h at compile time; TurboJPEG has no run-time version call)\n");
#endif
}

static void print_jansson(FILE *f) {
    print_label(f, "jansson");
#if JANSSON_VERSION_HEX >= 0x020d00 /* jansson_version_str() appeared in 2.13 */
    fprintf(f, "%s (headers %s)\n", jansson_version_str(), JANSSON_VERSION);
#else
    fprintf(f, "%s (compile-time)\n", JANSSON_VERSION);
#endif
}

void version_print(FILE *f) {
    fprintf(f, "DETR trainer %s\n", DETR_VERSION);
    print_compiler(f);
    print_openmp(f);
    print_openblas(f);
    print_libuv(f);
    print_sqlite(f);
    print_libjpeg_turbo(f);
    print_jansson(f);
#ifdef DETR_CUDA
    cuda_info_print(f, LABEL_WIDTH);
#else
    print_label(f, "CUDA");
    fprintf(f, "not built (CPU only; make CUDA=1 with nvcc installed adds the GPU backend)\n");
#endif
}

/* The OpenMP build of OpenBLAS shares our OpenMP thread pool; another build's threads compete
 * with our parallel loops for the cores. A warning, not an error: results are the same. */
static void warn_openblas_threading(void) {
    int mode = openblas_get_parallel();
    if (mode == 2) return;
    fprintf(stderr,
            "warning: the OpenBLAS loaded is the %s build, not the OpenMP one: its threads and "
            "ours compete for the cores (training can be several times slower)\nHINT: install "
            "libopenblas0-openmp and rebuild (the Makefile links the one in BLAS_DIR), or check "
            "LD_LIBRARY_PATH.\n",
            openblas_parallel_name(mode));
}

int version_check_runtime(char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    warn_openblas_threading();
#ifdef DETR_CUDA
    return cuda_info_check_runtime(err, errlen);
#else
    return 0;
#endif
}

int version_cuda_device_count(void) {
#ifdef DETR_CUDA
    return cuda_info_device_count();
#else
    return 0;
#endif
}
