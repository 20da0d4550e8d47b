/* test_sgemm_peak.c - the MFU base on the CPU: the measured sgemm rate, and the cache that keeps
 * the best measurement of this machine (a run measured on busy cores must not inflate MFU). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "sgemm_peak.h"
#include "test_util.h"

int main(void) {
    char root[] = "/tmp/detr-sgemm-peak-XXXXXX";
    if (!mkdtemp(root)) return 1;
    setenv("XDG_CACHE_HOME", root, 1);
    char path[600];
    snprintf(path, sizeof(path), "%s/detr/sgemm-peak-t2-n256", root);

    double first = sgemm_peak_flops_best(256, 2);
    char *text = read_text(path);
    double stored = atof(text);
    CHECK("peak: a measurement is positive and cached", first > 1e8 &&
          stored > 0 && fabs(stored - first) <= 1e-5 * first, "measured %g, cached '%s'", first, text);
    /* the model line follows the number: keep it, raise the number */
    char *model = strchr(text, '\n');
    FILE *f = fopen(path, "w");
    fprintf(f, "%.6e%s", 1e15, model ? model : "\n");
    fclose(f);
    double best = sgemm_peak_flops_best(256, 2);
    CHECK("peak: a higher cached value of this machine is kept", best == 1e15, "%g", best);
    f = fopen(path, "w");
    fprintf(f, "%.6e\nsome other CPU\n", 1e15);
    fclose(f);
    double other = sgemm_peak_flops_best(256, 2);
    CHECK("peak: a value cached for another CPU model is ignored and replaced", other < 1e14 && other > 1e8,
          "%g", other);
    free(text);
    text = read_text(path);
    CHECK("peak: the cache now holds this machine's measurement", atof(text) == other ||
          fabs(atof(text) - other) <= 1e-5 * other, "'%s' vs %g", text, other);
    free(text);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    if (system(cmd) != 0) printf("could not remove %s\n", root);
    return test_finish();
}
