/* test_criterion.c - DETR's set loss for one decoder layer:
 *   1. a hand-computed 1-image, 2-query case (values and gradients);
 *   2. finite-difference gradients wrt logits and boxes, the matching held fixed;
 *   3. images without targets, accumulation (+=), NULL gradients;
 *   4. NaN / Inf / invalid input -> -1 and a message naming the tensor, gradients untouched;
 *   5. $DETR_FIXTURES/criterion_cases.json (tests/ref/gen_criterion_cases.py): PyTorch's matching,
 *      loss dict and autograd gradients. */
#include <jansson.h>
#include <math.h>
#include <string.h>
#include "check.h"
#include "criterion.h"
#include "rng.h"

static int near(double a, double b, double rel, double abs_tol) {
    return fabs(a - b) <= abs_tol + rel * fabs(b);
}

/* ---- 1. hand-computed case ---- */

static void test_hand_case(void) {
    LossWeights w;
    loss_weights_default(&w);
    enum { Q = 2, C1 = 3 };
    const float logits[Q * C1] = {0, 1, 0, 0, 0, (float)log(8.0)}; /* [1, 2, 3] */
    /* query 0 contains the target: xyxy (0.25, 0.3125, 0.75, 0.6875) vs (0.375, 0.375, 0.625, 0.625) */
    const float boxes[Q * 4] = {0.5f, 0.5f, 0.5f, 0.375f, 0.125f, 0.125f, 0.125f, 0.125f}; /* [1, 2, 4] */
    const int labels[1] = {1};
    const float tboxes[4] = {0.5f, 0.5f, 0.25f, 0.25f};
    ImageTargets t = {1, labels, tboxes};
    float dl[Q * C1] = {0}, db[Q * 4] = {0};
    LayerLosses out;
    char err[256] = "";
    int rc = criterion_layer(logits, boxes, 1, Q, C1, &t, 1.0, &w, 1.0, &out, dl, db, err, sizeof err);
    CHECK("criterion: hand case runs", rc == 0, "rc %d: %s", rc, err);

    double e = exp(1.0), p8 = 8.0 / 10.0;
    double want_ce = ((log(2 + e) - 1) + 0.1 * -log(p8)) / 1.1;
    /* GIoU = inter / area(pred) = 0.0625 / 0.1875 (contained: union = enclosing = pred) */
    double want_l1 = 0.25 + 0.125, want_giou = 1 - 1.0 / 3;
    CHECK("criterion: hand case loss_ce", near(out.loss_ce, want_ce, 1e-6, 0), "%.10g vs %.10g", out.loss_ce, want_ce);
    CHECK("criterion: hand case loss_bbox", near(out.loss_bbox, want_l1, 1e-6, 0), "%.10g vs %.10g",
          out.loss_bbox, want_l1);
    CHECK("criterion: hand case loss_giou", near(out.loss_giou, want_giou, 1e-6, 0), "%.10g vs %.10g",
          out.loss_giou, want_giou);
    CHECK("criterion: hand case class_error 0, cardinality_error 0",
          out.class_error == 0 && out.cardinality_error == 0, "class_error %g cardinality %g",
          out.class_error, out.cardinality_error);

    /* d/dlogits: w_q / W * (p - onehot), W = 1 + 0.1 */
    double p0[3] = {1 / (2 + e), e / (2 + e), 1 / (2 + e)};
    double want_dl[Q * C1] = {p0[0] / 1.1, (p0[1] - 1) / 1.1, p0[2] / 1.1,
                              0.1 * 0.1 / 1.1, 0.1 * 0.1 / 1.1, 0.1 * (p8 - 1) / 1.1};
    /* d/dboxes of query 0: L1 5 * sign(0, 0, 0.25, 0.125); GIoU 2 * -d(0.0625 / (w h)) */
    double want_db[4] = {0, 0, 5 + 2 * 0.0625 / (0.25 * 0.375), 5 + 2 * 0.0625 / (0.5 * 0.375 * 0.375)};
    double dl_err = 0, db_err = 0;
    for (int i = 0; i < Q * C1; i++) dl_err = fmax(dl_err, fabs(dl[i] - want_dl[i]));
    for (int i = 0; i < 4; i++) db_err = fmax(db_err, fabs(db[i] - want_db[i]));
    for (int i = 4; i < 8; i++) db_err = fmax(db_err, fabs(db[i])); /* unmatched query: no box gradient */
    CHECK("criterion: hand case d(loss)/d(logits)", dl_err < 1e-6, "max error %.3g", dl_err);
    CHECK("criterion: hand case d(loss)/d(boxes), sign(0) = 0", db_err < 1e-5,
          "max error %.3g (db %g %g %g %g)", db_err, db[0], db[1], db[2], db[3]);
}

/* ---- 2. finite differences ---- */

enum { FB = 4, FQ = 6, FC1 = 5 };
static const int k_fd_sizes[FB] = {2, 0, 4, 7}; /* image 3 has more targets than queries */

typedef struct {
    float logits[FB * FQ * FC1]; /* [B, Q, C1] */
    float boxes[FB * FQ * 4];    /* [B, Q, 4] */
    int labels[FB][8];
    float tboxes[FB][8 * 4];
    ImageTargets t[FB];
    LossWeights w;
    double num_boxes, grad_scale;
} FdProblem;

static void fd_problem_init(FdProblem *p) {
    Rng r = {31337, 0};
    for (int i = 0; i < FB * FQ * FC1; i++) p->logits[i] = (float)(2 * rng_next_normal(&r));
    for (int i = 0; i < FB * FQ; i++) {
        p->boxes[4 * i + 0] = 0.2f + 0.6f * rng_next_uniform(&r);
        p->boxes[4 * i + 1] = 0.2f + 0.6f * rng_next_uniform(&r);
        p->boxes[4 * i + 2] = 0.1f + 0.4f * rng_next_uniform(&r);
        p->boxes[4 * i + 3] = 0.1f + 0.4f * rng_next_uniform(&r);
    }
    int total = 0;
    for (int b = 0; b < FB; b++) {
        int n = k_fd_sizes[b];
        for (int j = 0; j < n; j++) {
            p->labels[b][j] = (int)(rng_next_uniform(&r) * (FC1 - 1));
            p->tboxes[b][4 * j + 0] = 0.2f + 0.6f * rng_next_uniform(&r);
            p->tboxes[b][4 * j + 1] = 0.2f + 0.6f * rng_next_uniform(&r);
            p->tboxes[b][4 * j + 2] = 0.1f + 0.4f * rng_next_uniform(&r);
            p->tboxes[b][4 * j + 3] = 0.1f + 0.4f * rng_next_uniform(&r);
        }
        p->t[b] = (ImageTargets){n, p->labels[b], p->tboxes[b]};
        total += n;
    }
    /* non-default weights, so that every coefficient is exercised */
    p->w = (LossWeights){.cost_class = 1, .cost_bbox = 5, .cost_giou = 2,
                         .ce_coef = 1.5f, .bbox_coef = 4, .giou_coef = 3, .eos_coef = 0.25f};
    p->num_boxes = total;
    p->grad_scale = 0.7;
}

/* grad_scale * (ce_coef ce + bbox_coef l1 + giou_coef giou), or NAN on failure. */
static double fd_total_loss(const FdProblem *p) {
    LayerLosses out;
    char err[256];
    if (criterion_layer(p->logits, p->boxes, FB, FQ, FC1, p->t, p->num_boxes, &p->w, 0, &out, NULL, NULL,
                        err, sizeof err))
        return NAN;
    return p->grad_scale * (p->w.ce_coef * out.loss_ce + p->w.bbox_coef * out.loss_bbox +
                            p->w.giou_coef * out.loss_giou);
}

static int fd_same_matching(const FdProblem *p, const int *reference) {
    int m[FB * FQ]; /* [B, Q] */
    char err[256];
    if (criterion_match(p->logits, p->boxes, FB, FQ, FC1, p->t, &p->w, m, err, sizeof err)) return 0;
    return memcmp(m, reference, sizeof m) == 0;
}

typedef struct {
    double worst;       /* max |fd - analytic| / (max |analytic| + 1e-6) */
    int checked, kinks; /* coordinates compared; skipped as sitting on a kink (one-sided slopes differ) */
    int matching_changed;
} FdStats;

/* Central difference of the loss wrt x[i] (x inside p), compared with the analytic gradient g. */
static void fd_check_entry(FdProblem *p, float *x, double g, double gmax, const int *matching,
                           FdStats *st) {
    const float h = 1e-4f;
    float x0 = *x;
    double f0 = fd_total_loss(p);
    *x = x0 + h;
    double hp = (double)*x - x0, fp = fd_total_loss(p);
    st->matching_changed += !fd_same_matching(p, matching);
    *x = x0 - h;
    double hm = x0 - (double)*x, fm = fd_total_loss(p);
    st->matching_changed += !fd_same_matching(p, matching);
    *x = x0;
    double right = (fp - f0) / hp, left = (f0 - fm) / hm;
    if (fabs(right - left) > 1e-2 * (fabs(right) + fabs(left)) + 1e-5) { /* a max/min/abs kink */
        st->kinks++;
        return;
    }
    double fd = (fp - fm) / (hp + hm);
    st->worst = fmax(st->worst, fabs(fd - g) / (gmax + 1e-6));
    st->checked++;
}

static double max_abs_f(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

static void test_finite_differences(void) {
    static FdProblem p;
    fd_problem_init(&p);
    static float dl[FB * FQ * FC1], db[FB * FQ * 4];
    LayerLosses out;
    char err[256] = "";
    int rc = criterion_layer(p.logits, p.boxes, FB, FQ, FC1, p.t, p.num_boxes, &p.w, p.grad_scale, &out,
                             dl, db, err, sizeof err);
    int matching[FB * FQ]; /* [B, Q] */
    rc |= criterion_match(p.logits, p.boxes, FB, FQ, FC1, p.t, &p.w, matching, err, sizeof err);
    CHECK("criterion: FD problem runs", rc == 0, "%s", err);
    int pairs = 0;
    for (int i = 0; i < FB * FQ; i++) pairs += matching[i] >= 0;
    CHECK("criterion: min(Q, n) pairs per image (2 + 0 + 4 + 6)", pairs == 12, "%d pairs", pairs);

    FdStats sl = {0}, sb = {0};
    double gl = max_abs_f(dl, FB * FQ * FC1), gb = max_abs_f(db, FB * FQ * 4);
    for (int i = 0; i < FB * FQ * FC1; i++) fd_check_entry(&p, &p.logits[i], dl[i], gl, matching, &sl);
    for (int i = 0; i < FB * FQ * 4; i++) fd_check_entry(&p, &p.boxes[i], db[i], gb, matching, &sb);
    CHECK("criterion: matching unchanged by the FD perturbations",
          sl.matching_changed + sb.matching_changed == 0, "changed %d times",
          sl.matching_changed + sb.matching_changed);
    CHECK("criterion: d(loss)/d(logits) matches finite differences", sl.worst < 1e-5 && sl.checked > 100,
          "worst %.3g over %d entries (%d kinks)", sl.worst, sl.checked, sl.kinks);
    CHECK("criterion: d(loss)/d(boxes) matches finite differences", sb.worst < 1e-5 && sb.kinks < 5,
          "worst %.3g over %d entries (%d kinks)", sb.worst, sb.checked, sb.kinks);
    printf("  FD logits: %d entries, worst %.3g; boxes: %d entries (%d on kinks skipped), worst %.3g\n",
           sl.checked, sl.worst, sb.checked, sb.kinks, sb.worst);

    /* unmatched queries get no box gradient */
    int leak = 0;
    for (int i = 0; i < FB * FQ; i++)
        if (matching[i] < 0)
            for (int k = 0; k < 4; k++) leak |= db[4 * i + k] != 0;
    CHECK("criterion: no box gradient on unmatched queries", !leak, "nonzero");

    /* accumulation: a second call adds the same gradient again; NULL gradients are allowed */
    static float dl2[FB * FQ * FC1], db2[FB * FQ * 4];
    memcpy(dl2, dl, sizeof dl2);
    memcpy(db2, db, sizeof db2);
    LayerLosses out2;
    rc = criterion_layer(p.logits, p.boxes, FB, FQ, FC1, p.t, p.num_boxes, &p.w, p.grad_scale, &out2, dl2,
                         db2, err, sizeof err);
    int doubled = rc == 0;
    for (int i = 0; i < FB * FQ * FC1; i++) doubled &= fabsf(dl2[i] - 2 * dl[i]) <= 1e-6f * fabsf(dl[i]) + 1e-12f;
    for (int i = 0; i < FB * FQ * 4; i++) doubled &= fabsf(db2[i] - 2 * db[i]) <= 1e-6f * fabsf(db[i]) + 1e-12f;
    CHECK("criterion: gradients accumulate (+=)", doubled, "second call did not add");
    rc = criterion_layer(p.logits, p.boxes, FB, FQ, FC1, p.t, p.num_boxes, &p.w, p.grad_scale, &out2, NULL,
                         NULL, err, sizeof err);
    CHECK("criterion: NULL gradients give the same losses", rc == 0 && out2.loss_ce == out.loss_ce &&
          out2.loss_bbox == out.loss_bbox && out2.loss_giou == out.loss_giou, "rc %d", rc);
}

/* ---- 3. images without targets ---- */

static void test_no_targets(void) {
    enum { B = 2, Q = 3, C1 = 4 };
    const float logits[B * Q * C1] = {1, 0, 0, 0,  0, 2, 0, 1,  0, 0, 0, 3,
                                      0, 0, 0, 0,  5, 1, 1, 1,  0, 1, 2, 3}; /* [2, 3, 4] */
    float boxes[B * Q * 4];                                                  /* [2, 3, 4] */
    for (int i = 0; i < B * Q; i++) {
        boxes[4 * i] = boxes[4 * i + 1] = 0.5f;
        boxes[4 * i + 2] = boxes[4 * i + 3] = 0.25f;
    }
    ImageTargets t[B] = {{0, NULL, NULL}, {0, NULL, NULL}};
    LossWeights w;
    loss_weights_default(&w);
    float dl[B * Q * C1] = {0}, db[B * Q * 4] = {0};
    LayerLosses out;
    char err[256] = "";
    int rc = criterion_layer(logits, boxes, B, Q, C1, t, 1.0, &w, 1.0, &out, dl, db, err, sizeof err);
    /* every query's target is no-object with the same weight: CE is the plain mean of -log p(no-object) */
    double want_ce = 0;
    for (int r = 0; r < B * Q; r++) {
        const float *x = logits + r * C1;
        double s = 0;
        for (int c = 0; c < C1; c++) s += exp(x[c]);
        want_ce += log(s) - x[C1 - 1];
    }
    want_ce /= B * Q;
    /* argmax != no-object: image 0 -> queries 0, 1; image 1 -> queries 0 (all-zero logits: the first
     * index wins ties) and 1; query 2 of each image argmaxes to no-object. |2 - 0| per image. */
    double want_card = (2.0 + 2.0) / 2;
    int db_zero = 1;
    for (int i = 0; i < B * Q * 4; i++) db_zero &= db[i] == 0;
    CHECK("criterion: no targets: runs", rc == 0, "%s", err);
    CHECK("criterion: no targets: loss_ce is the mean no-object NLL", near(out.loss_ce, want_ce, 1e-9, 0),
          "%.12g vs %.12g", out.loss_ce, want_ce);
    CHECK("criterion: no targets: box losses 0, no box gradient",
          out.loss_bbox == 0 && out.loss_giou == 0 && db_zero, "bbox %g giou %g", out.loss_bbox, out.loss_giou);
    CHECK("criterion: no targets: class_error 100 (reference accuracy() of nothing is 0)",
          out.class_error == 100, "%g", out.class_error);
    CHECK("criterion: no targets: cardinality_error counts non-empty argmax", out.cardinality_error == want_card,
          "%g vs %g", out.cardinality_error, want_card);

    /* eos_coef 0 and no target: every CE weight is 0 (the reference gives NaN); we give 0, no gradient */
    w.eos_coef = 0;
    float dl0[B * Q * C1] = {0};
    rc = criterion_layer(logits, boxes, B, Q, C1, t, 1.0, &w, 1.0, &out, dl0, NULL, err, sizeof err);
    int dl_zero = 1;
    for (int i = 0; i < B * Q * C1; i++) dl_zero &= dl0[i] == 0;
    CHECK("criterion: eos_coef 0 without targets: loss_ce 0, finite, no gradient",
          rc == 0 && out.loss_ce == 0 && dl_zero, "rc %d loss_ce %g", rc, out.loss_ce);
}

/* ---- 4. invalid input ---- */

typedef struct {
    const char *name;
    int field;          /* 0 logits, 1 boxes, 2 target boxes, 3 labels */
    int index;          /* flat index into that buffer */
    float value;
    const char *expect[3]; /* substrings the message must contain */
} BadCase;

static void test_invalid_input(void) {
    enum { B = 2, Q = 4, C1 = 3 };
    const BadCase cases[] = {
        {"NaN logit", 0, (1 * Q + 3) * C1 + 2, NAN, {"pred_logits", "image 1, query 3", "NaN"}},
        {"Inf logit", 0, 5, INFINITY, {"pred_logits", "image 0, query 1", "Inf"}},
        {"NaN box", 1, (1 * Q + 2) * 4 + 1, NAN, {"pred_boxes", "image 1, query 2", "NaN"}},
        {"-Inf box", 1, 2, -INFINITY, {"pred_boxes", "image 0, query 0", "Inf"}},
        {"negative predicted width", 1, 4 + 2, -0.1f, {"pred_boxes", "image 0, query 1", "negative w"}},
        {"NaN target box", 2, 4 + 3, NAN, {"targets of image 1", "box 1", "NaN"}},
        {"negative target height", 2, 3, -0.5f, {"targets of image 1", "box 0", "negative h"}},
        {"label = no-object index", 3, 1, (float)(C1 - 1), {"targets of image 1", "label 2 of box 1", "[0, 2)"}},
        {"negative label", 3, 0, -1, {"targets of image 1", "label -1 of box 0", "category"}},
    };
    LossWeights w;
    loss_weights_default(&w);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float logits[B * Q * C1], boxes[B * Q * 4], tboxes[2 * 4] = {0.5f, 0.5f, 0.2f, 0.2f, 0.3f, 0.3f, 0.1f, 0.1f};
        int labels[2] = {0, 1};
        for (int i = 0; i < B * Q * C1; i++) logits[i] = 0.1f * (float)(i % 7);
        for (int i = 0; i < B * Q; i++) {
            boxes[4 * i] = boxes[4 * i + 1] = 0.5f;
            boxes[4 * i + 2] = boxes[4 * i + 3] = 0.3f;
        }
        const BadCase *bc = &cases[c];
        if (bc->field == 0) logits[bc->index] = bc->value;
        if (bc->field == 1) boxes[bc->index] = bc->value;
        if (bc->field == 2) tboxes[bc->index] = bc->value;
        if (bc->field == 3) labels[bc->index] = (int)bc->value;
        ImageTargets t[B] = {{0, NULL, NULL}, {2, labels, tboxes}};
        float dl[B * Q * C1] = {0}, db[B * Q * 4] = {0};
        LayerLosses out = {.loss_ce = -7};
        char err[256] = "";
        int rc = criterion_layer(logits, boxes, B, Q, C1, t, 2.0, &w, 1.0, &out, dl, db, err, sizeof err);
        int has = 1, untouched = out.loss_ce == -7;
        for (int k = 0; k < 3; k++) has &= strstr(err, bc->expect[k]) != NULL;
        for (int i = 0; i < B * Q * C1; i++) untouched &= dl[i] == 0;
        for (int i = 0; i < B * Q * 4; i++) untouched &= db[i] == 0;
        char name[160];
        snprintf(name, sizeof name, "criterion: %s -> -1, message names it, outputs untouched", bc->name);
        CHECK(name, rc == -1 && has && untouched, "rc %d, message \"%s\"", rc, err);
    }
    float logits[C1] = {0, 0, 0}, boxes[4] = {0.5f, 0.5f, 0.1f, 0.1f};
    ImageTargets t = {0, NULL, NULL};
    LayerLosses out;
    char err[256] = "";
    int rc = criterion_layer(logits, boxes, 1, 1, C1, &t, 0.0, &w, 1.0, &out, NULL, NULL, err, sizeof err);
    CHECK("criterion: num_boxes 0 rejected", rc == -1 && strstr(err, "num_boxes"), "rc %d: %s", rc, err);
    rc = criterion_layer(logits, boxes, 1, 1, 1, &t, 1.0, &w, 1.0, &out, NULL, NULL, err, sizeof err);
    CHECK("criterion: C1 < 2 rejected", rc == -1 && strstr(err, "C1"), "rc %d: %s", rc, err);
}

/* ---- 5. PyTorch fixture ---- */

static int json_floats(json_t *arr, float *out, size_t n) {
    if (!json_is_array(arr) || json_array_size(arr) != n) return -1;
    for (size_t i = 0; i < n; i++) out[i] = (float)json_number_value(json_array_get(arr, i));
    return 0;
}

static double json_num(json_t *obj, const char *key) {
    return json_number_value(json_object_get(obj, key));
}

typedef struct {
    int B, Q, C1;
    float *logits, *boxes, *dl_ref, *db_ref; /* [B, Q, C1], [B, Q, 4], same */
    int *matching_ref;                       /* [B, Q] */
    ImageTargets *t;                         /* [B] */
    int **labels;
    float **tboxes;
    LossWeights w;
    double num_boxes;
} RefCase;

static void ref_case_free(RefCase *c) {
    for (int b = 0; c->labels && b < c->B; b++) {
        free(c->labels[b]);
        free(c->tboxes[b]);
    }
    free(c->labels);
    free(c->tboxes);
    free(c->t);
    free(c->logits);
    free(c->boxes);
    free(c->dl_ref);
    free(c->db_ref);
    free(c->matching_ref);
}

static int ref_case_targets(json_t *jt, RefCase *c) {
    if (!json_is_array(jt) || (int)json_array_size(jt) != c->B) return -1;
    for (int b = 0; b < c->B; b++) {
        json_t *img = json_array_get(jt, b), *jl = json_object_get(img, "labels");
        int n = (int)json_array_size(jl);
        c->labels[b] = malloc((n + 1) * sizeof(int));
        c->tboxes[b] = malloc((n + 1) * 4 * sizeof(float));
        for (int j = 0; j < n; j++) c->labels[b][j] = (int)json_integer_value(json_array_get(jl, j));
        if (json_floats(json_object_get(img, "boxes"), c->tboxes[b], (size_t)n * 4)) return -1;
        c->t[b] = (ImageTargets){n, c->labels[b], c->tboxes[b]};
    }
    return 0;
}

static int ref_case_load(json_t *jc, RefCase *c) {
    memset(c, 0, sizeof *c);
    c->B = (int)json_integer_value(json_object_get(jc, "B"));
    c->Q = (int)json_integer_value(json_object_get(jc, "Q"));
    c->C1 = (int)json_integer_value(json_object_get(jc, "C1"));
    if (c->B <= 0 || c->Q <= 0 || c->C1 < 2) return -1;
    size_t nl = (size_t)c->B * c->Q * c->C1, nb = (size_t)c->B * c->Q * 4;
    c->logits = malloc(nl * sizeof(float));
    c->dl_ref = malloc(nl * sizeof(float));
    c->boxes = malloc(nb * sizeof(float));
    c->db_ref = malloc(nb * sizeof(float));
    c->matching_ref = malloc((size_t)c->B * c->Q * sizeof(int));
    c->t = calloc(c->B, sizeof(ImageTargets));
    c->labels = calloc(c->B, sizeof(int *));
    c->tboxes = calloc(c->B, sizeof(float *));
    if (json_floats(json_object_get(jc, "logits"), c->logits, nl) ||
        json_floats(json_object_get(jc, "boxes"), c->boxes, nb) ||
        json_floats(json_object_get(jc, "dlogits"), c->dl_ref, nl) ||
        json_floats(json_object_get(jc, "dboxes"), c->db_ref, nb) ||
        ref_case_targets(json_object_get(jc, "targets"), c))
        return -1;
    json_t *jm = json_object_get(jc, "matching");
    for (int b = 0; b < c->B; b++)
        for (int q = 0; q < c->Q; q++)
            c->matching_ref[b * c->Q + q] = (int)json_integer_value(json_array_get(json_array_get(jm, b), q));
    json_t *jw = json_object_get(jc, "weights");
    c->w = (LossWeights){(float)json_num(jw, "cost_class"), (float)json_num(jw, "cost_bbox"),
                         (float)json_num(jw, "cost_giou"), (float)json_num(jw, "ce_coef"),
                         (float)json_num(jw, "bbox_coef"), (float)json_num(jw, "giou_coef"),
                         (float)json_num(jw, "eos_coef")};
    c->num_boxes = json_num(jc, "num_boxes");
    return 0;
}

static void ref_case_check(json_t *jc, const RefCase *c) {
    const char *name = json_string_value(json_object_get(jc, "name"));
    size_t nl = (size_t)c->B * c->Q * c->C1, nb = (size_t)c->B * c->Q * 4;
    float *dl = calloc(nl, sizeof(float)), *db = calloc(nb, sizeof(float));
    int *matching = malloc((size_t)c->B * c->Q * sizeof(int));
    LayerLosses out;
    char err[256] = "", label[256];
    int rc = criterion_layer(c->logits, c->boxes, c->B, c->Q, c->C1, c->t, c->num_boxes, &c->w, 1.0, &out,
                             dl, db, err, sizeof err);
    rc |= criterion_match(c->logits, c->boxes, c->B, c->Q, c->C1, c->t, &c->w, matching, err, sizeof err);
    snprintf(label, sizeof label, "criterion vs PyTorch [%s]: runs, same matching", name);
    CHECK(label, rc == 0 && memcmp(matching, c->matching_ref, (size_t)c->B * c->Q * sizeof(int)) == 0,
          "rc %d %s", rc, err);
    double ce = json_num(jc, "loss_ce"), l1 = json_num(jc, "loss_bbox"), gi = json_num(jc, "loss_giou");
    double ce_err = json_num(jc, "class_error"), card = json_num(jc, "cardinality_error");
    snprintf(label, sizeof label, "criterion vs PyTorch [%s]: loss dict", name);
    CHECK(label, near(out.loss_ce, ce, 1e-5, 1e-6) && near(out.loss_bbox, l1, 1e-5, 1e-6) &&
          near(out.loss_giou, gi, 1e-5, 1e-6) && near(out.class_error, ce_err, 1e-5, 1e-4) &&
          out.cardinality_error == card,
          "ours ce %.8g bbox %.8g giou %.8g class_error %.6g card %g; torch %.8g %.8g %.8g %.6g %g",
          out.loss_ce, out.loss_bbox, out.loss_giou, out.class_error, out.cardinality_error, ce, l1, gi,
          ce_err, card);
    double el = rel_err(dl, c->dl_ref, nl), eb = rel_err(db, c->db_ref, nb);
    snprintf(label, sizeof label, "criterion vs PyTorch [%s]: gradients", name);
    CHECK(label, el < 1e-5 && eb < 1e-5, "rel err logits %.3g boxes %.3g", el, eb);
    printf("  [%s] grad rel err: logits %.2g, boxes %.2g\n", name, el, eb);
    free(dl);
    free(db);
    free(matching);
}

static void test_pytorch_fixture(void) {
    const char *dir = getenv("DETR_FIXTURES");
    char path[4096];
    snprintf(path, sizeof path, "%s/criterion_cases.json", dir ? dir : "build/fixtures");
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        char why[8400];
        snprintf(why, sizeof why, "%s missing or unreadable (generate it with /usr/bin/python3 "
                 "tests/ref/gen_criterion_cases.py %s)", path, path);
        test_skip("criterion vs PyTorch", why);
        return;
    }
    json_t *cases = json_object_get(root, "cases");
    CHECK("criterion vs PyTorch: fixture has cases", json_is_array(cases) && json_array_size(cases) > 0,
          "%s has no \"cases\" array", path);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        RefCase c;
        json_t *jc = json_array_get(cases, i);
        int ok = ref_case_load(jc, &c) == 0;
        CHECK("criterion vs PyTorch: case loads", ok, "case %zu of %s is malformed", i, path);
        if (ok) ref_case_check(jc, &c);
        ref_case_free(&c);
    }
    json_decref(root);
}

/* ---- 6. the loss with a given matching (criterion_layer_matched) ---- */

static void test_given_matching(void) {
    enum { B = 1, Q = 3, C1 = 3 };
    const float logits[B * Q * C1] = {2, 0, 1,  0, 1, 0,  1, 1, 3}; /* [1, 3, 3] */
    const float boxes[B * Q * 4] = {0.3f, 0.3f, 0.2f, 0.2f,  0.6f, 0.6f, 0.3f, 0.3f,
                                    0.5f, 0.5f, 0.5f, 0.5f};          /* [1, 3, 4] cxcywh */
    const int labels[2] = {0, 1};
    const float tboxes[8] = {0.32f, 0.3f, 0.2f, 0.25f,  0.6f, 0.55f, 0.3f, 0.35f};
    ImageTargets t = {2, (int *)labels, (float *)tboxes};
    LossWeights w;
    loss_weights_default(&w);
    LossNormalisers n;
    loss_normalisers_init(&n);
    loss_normalisers_add(&n, &t, B, Q, w.eos_coef);
    char err[256] = "";
    int matching[Q];
    int rc = criterion_match(logits, boxes, B, Q, C1, &t, &w, matching, err, sizeof err);
    LayerLosses a, b;
    float dla[B * Q * C1] = {0}, dba[B * Q * 4] = {0}, dlb[B * Q * C1] = {0}, dbb[B * Q * 4] = {0};
    rc |= criterion_layer_partial(logits, boxes, B, Q, C1, &t, &n, &w, 1.0, &a, dla, dba, err, sizeof err);
    rc |= criterion_layer_matched(logits, boxes, B, Q, C1, &t, &n, &w, matching, 1.0, &b, dlb, dbb, err,
                                  sizeof err);
    int same = a.loss_ce == b.loss_ce && a.loss_bbox == b.loss_bbox && a.loss_giou == b.loss_giou;
    for (int i = 0; i < B * Q * C1; i++) same &= dla[i] == dlb[i];
    for (int i = 0; i < B * Q * 4; i++) same &= dba[i] == dbb[i];
    CHECK("criterion: the matcher's matching given = matched inside, bit for bit", rc == 0 && same, "%s", err);

    /* invalid matchings are refused with a message and leave the gradients untouched */
    const int bad[4][Q] = {{0, 0, -1}, {0, 2, -1}, {0, -1, -1}, {-2, 0, 1}};
    const char *what[4] = {"a target twice", "a target out of range", "too few pairs", "an entry below -1"};
    for (int k = 0; k < 4; k++) {
        float dl[B * Q * C1] = {0};
        err[0] = 0;
        rc = criterion_layer_matched(logits, boxes, B, Q, C1, &t, &n, &w, bad[k], 1.0, &b, dl, NULL, err,
                                     sizeof err);
        int untouched = 1;
        for (int i = 0; i < B * Q * C1; i++) untouched &= dl[i] == 0;
        char name[128];
        snprintf(name, sizeof name, "criterion: a matching with %s is refused", what[k]);
        CHECK(name, rc == -1 && untouched && strstr(err, "matching of image 0"), "rc %d err '%s'", rc, err);
    }
}

int main(void) {
    test_hand_case();
    test_finite_differences();
    test_no_targets();
    test_invalid_input();
    test_pytorch_fixture();
    test_given_matching();
    return test_finish();
}
