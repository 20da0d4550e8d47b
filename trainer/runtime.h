/* runtime.h - process start-up shared by the programs: thread counts for OpenMP and OpenBLAS,
 * library compatibility checks, and the --version report. */
#ifndef DETR_RUNTIME_H
#define DETR_RUNTIME_H
#include <stdio.h>

/* threads <= 0: all cores. Returns 0, or -1 after printing why the libraries cannot run. */
int runtime_init(int threads);
void runtime_print_versions(FILE *f);

#endif
