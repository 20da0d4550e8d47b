/* mem_estimate.c - per-category memory estimate of a training run (see mem_estimate.h). */
#include "mem_estimate.h"
#include <stdlib.h>
#include <string.h>

int mem_estimate_training(Detr *m, int B, int side, int slots, MemEstimate *e, char *err,
                          size_t errlen) {
    memset(e, 0, sizeof(*e));
    e->B = B;
    e->side = side;
    e->slots = slots;
    size_t pixels = (size_t)B * side * side;
    float *images = calloc(pixels * 3, sizeof(float)); /* [B, 3, side, side], not charged: the */
    uint8_t *mask = calloc(pixels, 1);                 /* loader's slots are counted below */
    ImageTargets *t = calloc((size_t)B, sizeof(ImageTargets)); /* no objects */
    if (!images || !mask || !t) {
        free(images), free(mask), free(t);
        snprintf(err, errlen, "memory estimate: cannot allocate a %d x 3 x %d x %d probe batch", B, side,
                 side);
        return -1;
    }
    mem_reset_peaks();
    LossWeights lw;
    loss_weights_default(&lw);
    DetrLosses losses;
    params_zero_grad(&m->ps);
    detr_forward(m, images, mask, B, side, side, 1, 0);
    int rc = detr_loss_backward(m, t, &lw, 1, 1.0, &losses, err, errlen);
    params_zero_grad(&m->ps);
    free(images), free(mask), free(t);
    if (rc != 0) return -1;
    MemStats s = mem_stats();
    for (int c = 0; c < MEM_NCAT; c++) e->bytes[c] = s.peak[c];
    /* AdamW's first and second moments, allocated by the trainer later (optim.c) */
    if (e->bytes[MEM_OPTIM] == 0) e->bytes[MEM_OPTIM] = 2 * m->ps.n_train * sizeof(float);
    e->bytes[MEM_INPUTS] += (size_t)slots * pixels * (3 * sizeof(float) + 1);
    for (int c = 0; c < MEM_NCAT; c++) e->total += e->bytes[c];
    return 0;
}

static void print_bytes(FILE *f, const char *name, size_t bytes) {
    fprintf(f, "  %-12s %14zu bytes (%9.1f MiB)\n", name, bytes, bytes / 1048576.0);
}

void mem_estimate_print(FILE *f, const MemEstimate *e, size_t limit) {
    for (int c = 0; c < MEM_NCAT; c++) print_bytes(f, mem_category_name((MemCategory)c), e->bytes[c]);
    print_bytes(f, "total", e->total);
    if (limit) print_bytes(f, "budget", limit);
}
