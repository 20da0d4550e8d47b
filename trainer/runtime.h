/* runtime.h - process start-up shared by the programs: thread counts for OpenMP and OpenBLAS,
 * library compatibility checks, and the --version report. */
#ifndef DETR_RUNTIME_H
#define DETR_RUNTIME_H
#include <stdio.h>

/* Call first in main. libgomp's default lets idle workers spin for ~300k iterations between
 * parallel loops: fastest on an idle machine, but when anything else wants the cores (the data
 * loader's decode threads, a second job) a step becomes 2-3x slower. Unless the user set
 * OMP_WAIT_POLICY or GOMP_SPINCOUNT, this sets GOMP_SPINCOUNT=3000 and re-executes the program
 * (libgomp reads its environment before main). Measured with build/bench/bench_train on 2
 * cores, tiny preset: -4% alone, +60% with two jobs sharing the cores. */
void runtime_configure_openmp(char **argv);
/* threads <= 0: all cores. Returns 0, or -1 after printing why the libraries cannot run. */
int runtime_init(int threads);
void runtime_print_versions(FILE *f);

#endif
