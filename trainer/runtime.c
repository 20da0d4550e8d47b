/* runtime.c - see runtime.h */
#include "runtime.h"
#include <cblas.h>
#include <stdlib.h>
#include <unistd.h>
#include <omp.h>
#include "version.h"

int runtime_init(int threads) {
    char err[1024];
    if (version_check_runtime(err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    if (threads > 0) {
        omp_set_num_threads(threads);
        openblas_set_num_threads(threads);
    }
    return 0;
}

void runtime_print_versions(FILE *f) { version_print(f); }

void runtime_configure_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("GOMP_SPINCOUNT", "3000", 1) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: then run with the defaults */
}
