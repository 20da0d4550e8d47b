/* criterion.c - see criterion.h. */
#include "criterion.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "box_ops.h"
#include "mem.h"

void loss_weights_default(LossWeights *w) {
    w->cost_class = 1.0f;
    w->cost_bbox = 5.0f;
    w->cost_giou = 2.0f;
    w->ce_coef = 1.0f;
    w->bbox_coef = 5.0f;
    w->giou_coef = 2.0f;
    w->eos_coef = 0.1f;
}

/* ---- input validation ---- */

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static const char *nonfinite_name(float x) { return isnan(x) ? "NaN" : "Inf"; }

static const char *const k_coord_names[4] = {"cx", "cy", "w", "h"};

static int check_arguments(const float *logits, const float *boxes, int B, int Q, int C1,
                           const ImageTargets *t, const LossWeights *w, char *err, size_t errlen) {
    if (!logits || !boxes || !t || !w)
        return fail(err, errlen, "criterion: NULL pred_logits, pred_boxes, targets or weights");
    if (B <= 0 || Q <= 0 || C1 < 2)
        return fail(err, errlen,
                    "criterion: bad shape B=%d Q=%d C1=%d (need B >= 1, Q >= 1, C1 = num_classes + 1 >= 2)",
                    B, Q, C1);
    return 0;
}

/* NaN/Inf logits, NaN/Inf boxes, and boxes with negative w or h (the reference asserts on those). */
static int check_predictions(const float *logits, const float *boxes, int B, int Q, int C1,
                             char *err, size_t errlen) {
    for (int b = 0; b < B; b++)
        for (int q = 0; q < Q; q++) {
            const float *lq = logits + ((size_t)b * Q + q) * C1; /* [C1] */
            for (int c = 0; c < C1; c++)
                if (!isfinite(lq[c]))
                    return fail(err, errlen, "pred_logits of image %d, query %d (class %d) is %s", b,
                                q, c, nonfinite_name(lq[c]));
            const float *bq = boxes + ((size_t)b * Q + q) * 4; /* [4] */
            for (int k = 0; k < 4; k++)
                if (!isfinite(bq[k]))
                    return fail(err, errlen, "pred_boxes of image %d, query %d (%s) is %s", b, q,
                                k_coord_names[k], nonfinite_name(bq[k]));
            for (int k = 2; k < 4; k++)
                if (bq[k] < 0)
                    return fail(err, errlen,
                                "pred_boxes of image %d, query %d has a negative %s (%g); cxcywh boxes "
                                "need w, h >= 0 (the box head ends in a sigmoid)",
                                b, q, k_coord_names[k], (double)bq[k]);
        }
    return 0;
}

static int check_targets(const ImageTargets *t, int B, int C1, char *err, size_t errlen) {
    for (int b = 0; b < B; b++) {
        int n = t[b].n;
        if (n < 0) return fail(err, errlen, "targets of image %d: negative box count %d", b, n);
        if (n > 0 && (!t[b].labels || !t[b].boxes))
            return fail(err, errlen, "targets of image %d: %d boxes but NULL labels or boxes", b, n);
        for (int j = 0; j < n; j++) {
            int y = t[b].labels[j];
            if (y < 0 || y >= C1 - 1)
                return fail(err, errlen,
                            "targets of image %d: label %d of box %d is outside [0, %d) (the class head "
                            "has %d outputs, the last one is no-object); fix the dataset's category ids "
                            "or raise num_classes",
                            b, y, j, C1 - 1, C1);
            const float *bj = t[b].boxes + 4 * (size_t)j; /* [4] */
            for (int k = 0; k < 4; k++)
                if (!isfinite(bj[k]))
                    return fail(err, errlen, "targets of image %d: box %d (%s) is %s", b, j,
                                k_coord_names[k], nonfinite_name(bj[k]));
            for (int k = 2; k < 4; k++)
                if (bj[k] < 0)
                    return fail(err, errlen,
                                "targets of image %d: box %d has a negative %s (%g); fix the dataset's "
                                "boxes (cxcywh needs w, h >= 0)",
                                b, j, k_coord_names[k], (double)bj[k]);
        }
    }
    return 0;
}

static int check_all(const float *logits, const float *boxes, int B, int Q, int C1,
                     const ImageTargets *t, const LossWeights *w, char *err, size_t errlen) {
    if (check_arguments(logits, boxes, B, Q, C1, t, w, err, errlen)) return -1;
    if (check_predictions(logits, boxes, B, Q, C1, err, errlen)) return -1;
    return check_targets(t, B, C1, err, errlen);
}

/* ---- softmax and matching ---- */

/* probs [C1] = softmax(x [C1]); returns log(sum(exp(x))) so that -log p_y = logz - x_y stays finite. */
static double softmax_row(const float *x, int C1, double *probs) {
    double mx = x[0];
    for (int c = 1; c < C1; c++)
        if (x[c] > mx) mx = x[c];
    double sum = 0;
    for (int c = 0; c < C1; c++) {
        probs[c] = exp((double)x[c] - mx);
        sum += probs[c];
    }
    for (int c = 0; c < C1; c++) probs[c] /= sum;
    return mx + log(sum);
}

/* Lowest index of the largest value (torch.argmax / topk pick the first on CPU). */
static int argmax_row(const float *x, int C1) {
    int best = 0;
    for (int c = 1; c < C1; c++)
        if (x[c] > x[best]) best = c;
    return best;
}

/* probs [B, Q, C1], logz [B, Q] from logits [B, Q, C1]. */
static void softmax_all(const float *logits, int B, int Q, int C1, double *probs, double *logz) {
    for (size_t r = 0; r < (size_t)B * Q; r++)
        logz[r] = softmax_row(logits + r * C1, C1, probs + r * C1);
}

/* query_to_target [B, Q] from probs [B, Q, C1] and boxes [B, Q, 4]. */
static int match_all(const double *probs, const float *boxes, int B, int Q, int C1,
                     const ImageTargets *t, const LossWeights *w, int *query_to_target, char *err,
                     size_t errlen) {
    for (int b = 0; b < B; b++) {
        int pairs = matcher_match_image(probs + (size_t)b * Q * C1, boxes + (size_t)b * Q * 4, Q, C1,
                                        &t[b], w, query_to_target + (size_t)b * Q);
        if (pairs < 0)
            return fail(err, errlen,
                        "matcher: image %d has a non-finite matching cost (boxes or weights too large?)",
                        b);
    }
    return 0;
}

/* Scratch for one call: one host block. */
typedef struct {
    double *probs;        /* [B, Q, C1] softmax */
    double *logz;         /* [B, Q] log-sum-exp of the logits */
    int *query_to_target; /* [B, Q] */
} CriterionScratch;

static void *scratch_alloc(int B, int Q, int C1, CriterionScratch *s) {
    size_t rows = (size_t)B * Q;
    size_t bytes = rows * C1 * sizeof(double) + rows * sizeof(double) + rows * sizeof(int);
    char *block = host_alloc(MEM_WORKSPACE, bytes);
    if (!block) return NULL;
    s->probs = (double *)block;
    s->logz = s->probs + rows * C1;
    s->query_to_target = (int *)(s->logz + rows);
    return block;
}

int criterion_match(const float *logits, const float *boxes, int B, int Q, int C1,
                    const ImageTargets *t, const LossWeights *w, int *query_to_target, char *err,
                    size_t errlen) {
    if (check_all(logits, boxes, B, Q, C1, t, w, err, errlen)) return -1;
    CriterionScratch s;
    void *block = scratch_alloc(B, Q, C1, &s);
    if (!block) return fail(err, errlen, "criterion: out of memory budget for the matcher's scratch");
    softmax_all(logits, B, Q, C1, s.probs, s.logz);
    int rc = match_all(s.probs, boxes, B, Q, C1, t, w, query_to_target, err, errlen);
    host_free(block);
    return rc;
}

/* ---- losses ---- */

typedef struct {
    double ce_num;                /* sum w_q * (-log p_yq) */
    double l1_sum, giou_sum;      /* over matched pairs */
    long matched, correct;        /* matched queries, and those whose argmax is their label */
    double card_sum;              /* sum over images of |predicted non-empty - n| */
} LossSums;

/* Gradient scales of the three terms, for this call. */
typedef struct {
    double ce;   /* grad_scale * ce_coef / sum of CE weights (0 if that sum is 0) */
    double l1;   /* grad_scale * bbox_coef / num_boxes */
    double giou; /* grad_scale * giou_coef / num_boxes */
} GradScales;

/* Cross-entropy of one query with target class y and weight wq; adds its gradient to dl [C1]. */
static void ce_query(const float *lq, const double *pq, double logz, int C1, int y, double wq,
                     double scale, LossSums *sums, float *dl) {
    sums->ce_num += wq * (logz - (double)lq[y]);
    if (!dl || scale == 0) return;
    double g = scale * wq;
    for (int c = 0; c < C1; c++) dl[c] += (float)(g * (pq[c] - (c == y ? 1.0 : 0.0)));
}

/* L1 and GIoU terms of one matched pair; adds their gradient to db [4]. */
static void box_pair(const float *pred, const float *gt, const GradScales *gs, LossSums *sums,
                     float *db) {
    sums->l1_sum += box_l1(pred, gt);
    sums->giou_sum += 1.0 - box_giou_cxcywh(pred, gt);
    if (!db) return;
    double g[4] = {0, 0, 0, 0};
    box_l1_backward(pred, gt, gs->l1, g);
    box_giou_cxcywh_backward(pred, gt, -gs->giou, g, NULL); /* d(1 - GIoU) = -dGIoU */
    for (int k = 0; k < 4; k++) db[k] += (float)g[k];
}

static void image_losses(const float *logits, const float *boxes, const CriterionScratch *s, int b,
                         int Q, int C1, const ImageTargets *t, const LossWeights *w,
                         const GradScales *gs, LossSums *sums, float *dlogits, float *dboxes) {
    int no_object = C1 - 1, predicted_objects = 0;
    for (int q = 0; q < Q; q++) {
        size_t r = (size_t)b * Q + q;
        const float *lq = logits + r * C1; /* [C1] */
        int j = s->query_to_target[r];
        int y = j >= 0 ? t->labels[j] : no_object;
        double wq = y == no_object ? (double)w->eos_coef : 1.0;
        ce_query(lq, s->probs + r * C1, s->logz[r], C1, y, wq, gs->ce, sums,
                 dlogits ? dlogits + r * C1 : NULL);
        int top = argmax_row(lq, C1);
        predicted_objects += top != no_object;
        if (j < 0) continue;
        sums->matched++;
        sums->correct += top == y;
        box_pair(boxes + r * 4, t->boxes + 4 * (size_t)j, gs, sums, dboxes ? dboxes + r * 4 : NULL);
    }
    sums->card_sum += fabs((double)predicted_objects - (double)t->n);
}

/* ---- normalisers ---- */

void loss_normalisers_init(LossNormalisers *n) {
    *n = (LossNormalisers){0};
    n->num_boxes = 1;
}

void loss_normalisers_add(LossNormalisers *n, const ImageTargets *t, int B, int Q, float eos_coef) {
    for (int b = 0; b < B; b++) {
        int nb = t[b].n > 0 ? t[b].n : 0;
        n->target_boxes += nb;
        n->matched += nb < Q ? nb : Q; /* the matcher pairs min(Q, n) queries of every image */
    }
    n->images += B;
    n->queries += (long)B * Q;
    n->num_boxes = n->target_boxes > 1 ? (double)n->target_boxes : 1.0;
    n->ce_weight_sum = (double)n->matched + eos_coef * (double)(n->queries - n->matched);
}

static int check_normalisers(const LossNormalisers *n, int B, int Q, const ImageTargets *t,
                             char *err, size_t errlen) {
    if (!n) return fail(err, errlen, "criterion: NULL normalisers");
    if (!isfinite(n->num_boxes) || n->num_boxes <= 0)
        return fail(err, errlen, "criterion: num_boxes is %g; it must be finite and > 0 (clamp to >= 1)",
                    n->num_boxes);
    if (!isfinite(n->ce_weight_sum) || n->ce_weight_sum < 0)
        return fail(err, errlen, "criterion: the CE weight sum is %g; it must be finite and >= 0",
                    n->ce_weight_sum);
    long matched = 0;
    for (int b = 0; b < B; b++) matched += t[b].n < Q ? t[b].n : Q;
    if (n->images < B || n->matched < matched)
        return fail(err, errlen, "criterion: the normalisers cover %ld images and %ld matched queries, "
                    "fewer than this batch's %d images and %ld matches; add every micro-batch's targets "
                    "with loss_normalisers_add before the first loss", n->images, n->matched, B, matched);
    return 0;
}

/* Every query_to_target row of the batch is a valid matching: each entry -1 or a target index of
 * its image, no target used twice, min(Q, n) pairs (what the matcher produces). */
static int check_matching(const int *query_to_target, int B, int Q, const ImageTargets *t,
                          char *err, size_t errlen) {
    if (!query_to_target) return fail(err, errlen, "criterion: NULL matching");
    for (int b = 0; b < B; b++) {
        const int *row = query_to_target + (size_t)b * Q;
        int pairs = 0, n = t[b].n > 0 ? t[b].n : 0;
        for (int q = 0; q < Q; q++) {
            int j = row[q];
            if (j < -1 || j >= n)
                return fail(err, errlen, "criterion: matching of image %d pairs query %d with target %d "
                            "of %d", b, q, j, n);
            if (j < 0) continue;
            pairs++;
            for (int r = 0; r < q; r++)
                if (row[r] == j)
                    return fail(err, errlen, "criterion: matching of image %d pairs target %d with "
                                "queries %d and %d", b, j, r, q);
        }
        if (pairs != (n < Q ? n : Q))
            return fail(err, errlen, "criterion: matching of image %d has %d pairs, expected min(Q=%d, "
                        "n=%d)", b, pairs, Q, n);
    }
    return 0;
}

int criterion_layer_matched(const float *logits, const float *boxes, int B, int Q, int C1,
                            const ImageTargets *t, const LossNormalisers *norm, const LossWeights *w,
                            const int *query_to_target, double grad_scale, LayerLosses *out,
                            float *dlogits, float *dboxes, char *err, size_t errlen) {
    if (check_all(logits, boxes, B, Q, C1, t, w, err, errlen)) return -1;
    if (!out) return fail(err, errlen, "criterion: NULL output");
    if (check_normalisers(norm, B, Q, t, err, errlen)) return -1;
    if (check_matching(query_to_target, B, Q, t, err, errlen)) return -1;
    CriterionScratch s;
    void *block = scratch_alloc(B, Q, C1, &s);
    if (!block) return fail(err, errlen, "criterion: out of memory budget for the loss scratch");
    softmax_all(logits, B, Q, C1, s.probs, s.logz);
    memcpy(s.query_to_target, query_to_target, (size_t)B * Q * sizeof(int));

    double weight_sum = norm->ce_weight_sum, num_boxes = norm->num_boxes;
    GradScales gs = {
        .ce = weight_sum > 0 ? grad_scale * w->ce_coef / weight_sum : 0,
        .l1 = grad_scale * w->bbox_coef / num_boxes,
        .giou = grad_scale * w->giou_coef / num_boxes,
    };
    LossSums sums = {0};
    for (int b = 0; b < B; b++)
        image_losses(logits, boxes, &s, b, Q, C1, &t[b], w, &gs, &sums, dlogits, dboxes);
    host_free(block);

    out->loss_ce = weight_sum > 0 ? sums.ce_num / weight_sum : 0;
    out->loss_bbox = sums.l1_sum / num_boxes;
    out->loss_giou = sums.giou_sum / num_boxes;
    /* Written as this batch's share, so that micro-batch values add up to the whole batch's:
     * 100 * (matched - correct) / all matched. The reference's accuracy() returns 0 for no
     * matched query, so class_error is then 100 (each batch's share: its images / all images). */
    out->class_error = norm->matched ? 100.0 * (double)(sums.matched - sums.correct) / (double)norm->matched
                                     : 100.0 * B / (double)norm->images;
    out->cardinality_error = sums.card_sum / (double)norm->images;
    return 0;
}

int criterion_layer_partial(const float *logits, const float *boxes, int B, int Q, int C1,
                            const ImageTargets *t, const LossNormalisers *norm, const LossWeights *w,
                            double grad_scale, LayerLosses *out, float *dlogits, float *dboxes,
                            char *err, size_t errlen) {
    if (check_all(logits, boxes, B, Q, C1, t, w, err, errlen)) return -1;
    if (!out) return fail(err, errlen, "criterion: NULL output");
    if (check_normalisers(norm, B, Q, t, err, errlen)) return -1;
    int *matching = host_alloc(MEM_WORKSPACE, (size_t)B * Q * sizeof(int)); /* [B, Q] */
    if (!matching) return fail(err, errlen, "criterion: out of memory budget for the matching");
    /* The matching first, so that a failure leaves the gradients untouched. */
    int rc = criterion_match(logits, boxes, B, Q, C1, t, w, matching, err, errlen);
    if (rc == 0)
        rc = criterion_layer_matched(logits, boxes, B, Q, C1, t, norm, w, matching, grad_scale, out,
                                     dlogits, dboxes, err, errlen);
    host_free(matching);
    return rc;
}

int criterion_layer(const float *logits, const float *boxes, int B, int Q, int C1,
                    const ImageTargets *t, double num_boxes, const LossWeights *w,
                    double grad_scale, LayerLosses *out, float *dlogits, float *dboxes, char *err,
                    size_t errlen) {
    if (check_arguments(logits, boxes, B, Q, C1, t, w, err, errlen)) return -1;
    if (check_targets(t, B, C1, err, errlen)) return -1;
    LossNormalisers norm;
    loss_normalisers_init(&norm);
    loss_normalisers_add(&norm, t, B, Q, w->eos_coef);
    norm.num_boxes = num_boxes; /* the caller's divisor (e.g. averaged over ranks) */
    return criterion_layer_partial(logits, boxes, B, Q, C1, t, &norm, w, grad_scale, out, dlogits,
                                   dboxes, err, errlen);
}
