/* runtime.c - see runtime.h */
#include "runtime.h"
#include <cblas.h>
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
