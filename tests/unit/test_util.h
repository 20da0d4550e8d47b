/* test_util.h - helpers shared by the tests that run the programs: read a whole file, and run a
 * shell command with a hang guard, capturing its stdout and stderr. */
#ifndef DETR_TEST_UTIL_H
#define DETR_TEST_UTIL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* The file's contents, NUL-terminated (an empty string if it cannot be read); caller frees. */
static inline char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = n > 0 ? fread(s, 1, (size_t)n, f) : 0;
    s[got] = 0;
    fclose(f);
    return s;
}

/* Runs `timeout 120 CMD` with stdout and stderr in files under dir; fills *out and *err with
 * them (caller frees). Returns the exit status (124: hung, -1: killed by a signal). */
static inline int run_capture(const char *dir, const char *cmd, char **out, char **err) {
    char full[8192], po[600], pe[600];
    snprintf(po, sizeof(po), "%s/run_out.txt", dir);
    snprintf(pe, sizeof(pe), "%s/run_err.txt", dir);
    snprintf(full, sizeof(full), "timeout 120 %s >%s 2>%s", cmd, po, pe);
    int rc = system(full);
    *out = read_text(po);
    *err = read_text(pe);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* run_capture with stdout and stderr joined into one text (*log, caller frees). */
static inline int run_merged(const char *dir, const char *cmd, char **log) {
    char *out, *err;
    int rc = run_capture(dir, cmd, &out, &err);
    size_t n = strlen(out) + strlen(err) + 2;
    *log = malloc(n);
    snprintf(*log, n, "%s\n%s", out, err);
    free(out);
    free(err);
    return rc;
}

#endif
