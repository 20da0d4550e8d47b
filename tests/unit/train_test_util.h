/* train_test_util.h - what the detr-train command-line tests share: a small synthetic dataset
 * and the options of a small, fast model trained on it. */
#ifndef DETR_TRAIN_TEST_UTIL_H
#define DETR_TRAIN_TEST_UTIL_H
#include <stdio.h>
#include <stdlib.h>
#include "check.h"
#include "test_util.h"

/* Writes root/ds (32 train + 8 val images of 64x64, 3 classes, up to 2 objects) with
 * build/detr-data and fills common with the detr-train options that train on it (cache under
 * root, 1 thread, batch 4, 64-pixel transforms, hidden 32, 1+2 layers, 5 queries), followed by
 * extra. Records the setup as a check; returns its exit code (0 ok). */
static inline int train_test_setup(const char *build, const char *root, const char *extra, char *common,
                                   size_t len) {
    char cmd[2048], *out, *err;
    snprintf(cmd, sizeof(cmd), "%s/detr-data synth %s/ds --images 32 --val 8 --size 64x64 --classes 3 "
             "--max-objects 2", build, root);
    int rc = run_capture(root, cmd, &out, &err);
    CHECK("setup: synthetic dataset", rc == 0, "exit %d: %s", rc, err);
    free(out);
    free(err);
    snprintf(common, len,
             "--data %s/ds --cache %s/cache --threads 1 --batch 4 --scales 64 --max-size 64 "
             "--resize-choices 48,56,64 --crop 40,48 --val-size 64 --hidden 32 --ffn 64 --queries 5 "
             "--enc-layers 1 --dec-layers 2 --log-every 100 %s", root, root, extra);
    return rc;
}

#endif
