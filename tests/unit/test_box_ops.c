/* test_box_ops.c - box conversions, IoU / GIoU known values and degenerate boxes, symmetry,
 * and finite-difference checks of the GIoU and L1 gradients. */
#include <math.h>
#include <string.h>
#include "box_ops.h"
#include "check.h"
#include "rng.h"

static int close_to(double a, double b, double tol) { return fabs(a - b) <= tol; }

/* ---- conversions ---- */

static void test_conversions(void) {
    const float cxcywh[8] = {0.5f, 0.5f, 0.25f, 0.5f, 0.125f, 0.75f, 0.0f, 0.25f}; /* [2, 4] */
    const float want[8] = {0.375f, 0.25f, 0.625f, 0.75f, 0.125f, 0.625f, 0.125f, 0.875f};
    float xyxy[8], back[8];
    boxes_cxcywh_to_xyxy(cxcywh, xyxy, 2);
    boxes_xyxy_to_cxcywh(xyxy, back, 2);
    CHECK("box: cxcywh -> xyxy", memcmp(xyxy, want, sizeof want) == 0, "got %g %g %g %g",
          xyxy[0], xyxy[1], xyxy[2], xyxy[3]);
    CHECK("box: xyxy -> cxcywh round trip", memcmp(back, cxcywh, sizeof back) == 0, "got %g %g %g %g",
          back[0], back[1], back[2], back[3]);

    /* backward = transpose of the Jacobian: d(x0,y0,x1,y1)/d(cx,cy,w,h) */
    double dx[4] = {1, 2, 3, 4}, dc[4] = {10, 10, 10, 10};
    box_cxcywh_to_xyxy_backward(dx, dc);
    CHECK("box: cxcywh->xyxy backward accumulates J^T dx",
          dc[0] == 14 && dc[1] == 16 && dc[2] == 11 && dc[3] == 11, "got %g %g %g %g", dc[0], dc[1],
          dc[2], dc[3]);
}

/* ---- known values ---- */

typedef struct {
    const char *name;
    double a[4], b[4];  /* xyxy */
    double iou, giou;
} KnownCase;

static void test_known_values(void) {
    const KnownCase cases[] = {
        {"identical", {0.1, 0.2, 0.5, 0.7}, {0.1, 0.2, 0.5, 0.7}, 1.0, 1.0},
        {"disjoint", {0, 0, 1, 1}, {2, 0, 3, 1}, 0.0, -1.0 / 3},
        {"touching", {0, 0, 1, 1}, {1, 0, 2, 1}, 0.0, 0.0},
        {"touching at a corner", {0, 0, 1, 1}, {1, 1, 2, 2}, 0.0, -0.5},
        {"contained", {0, 0, 4, 4}, {1, 1, 2, 2}, 1.0 / 16, 1.0 / 16},
        {"partial overlap", {0, 0, 2, 2}, {1, 1, 3, 3}, 1.0 / 7, 1.0 / 7 - 2.0 / 9},
        {"zero-width vs box (reference finite)", {0, 0, 0, 1}, {0, 0, 1, 1}, 0.0, 0.0},
        {"zero-width inside box", {0.5, 0, 0.5, 1}, {0, 0, 1, 1}, 0.0, 0.0},
        /* the reference divides 0/0 here; we define IoU 0 and no penalty (box_ops.h) */
        {"identical points (union 0, enclose 0)", {0.5, 0.5, 0.5, 0.5}, {0.5, 0.5, 0.5, 0.5}, 0.0, 0.0},
        {"distinct points (union 0)", {0, 0, 0, 0}, {1, 1, 1, 1}, 0.0, -1.0},
        {"collinear zero-width boxes (enclose 0)", {0, 0, 0, 1}, {0, 0.5, 0, 2}, 0.0, 0.0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const KnownCase *c = &cases[i];
        double iou = box_iou(c->a, c->b), giou = box_giou(c->a, c->b);
        double da[4] = {0, 0, 0, 0}, db[4] = {0, 0, 0, 0};
        box_giou_backward(c->a, c->b, 1.0, da, db);
        int grads_finite = 1;
        for (int k = 0; k < 4; k++) grads_finite &= isfinite(da[k]) && isfinite(db[k]);
        char name[160];
        snprintf(name, sizeof name, "box: %s: IoU %.4g, GIoU %.4g, finite gradient", c->name, c->iou, c->giou);
        CHECK(name, close_to(iou, c->iou, 1e-15) && close_to(giou, c->giou, 1e-15) && grads_finite,
              "IoU %.17g GIoU %.17g grads %g %g %g %g", iou, giou, da[0], da[1], da[2], da[3]);
    }

    /* At identical boxes GIoU is at its maximum 1: with PyTorch's tie rule (half the gradient to each
     * side of max/min) the gradient is exactly 0. */
    double a[4] = {0.1, 0.2, 0.5, 0.7}, da[4] = {0, 0, 0, 0};
    box_giou_backward(a, a, 1.0, da, NULL);
    CHECK("box: GIoU gradient is 0 at identical boxes", da[0] == 0 && da[1] == 0 && da[2] == 0 && da[3] == 0,
          "got %g %g %g %g", da[0], da[1], da[2], da[3]);
}

/* ---- symmetry ---- */

/* Random valid cxcywh box in [0, 1]-ish coordinates. */
static void random_box(Rng *r, float c[4]) {
    c[0] = 0.1f + 0.8f * rng_next_uniform(r);
    c[1] = 0.1f + 0.8f * rng_next_uniform(r);
    c[2] = 0.02f + 0.5f * rng_next_uniform(r);
    c[3] = 0.02f + 0.5f * rng_next_uniform(r);
}

static void test_symmetry(void) {
    enum { NA = 7, NB = 5 };
    Rng r = {99, 0};
    float a[NA * 4], b[NB * 4];    /* cxcywh, then xyxy in place */
    for (int i = 0; i < NA; i++) random_box(&r, a + 4 * i);
    for (int j = 0; j < NB; j++) random_box(&r, b + 4 * j);
    /* make one pair identical to exercise ties */
    memcpy(b, a, 4 * sizeof(float));
    float ac[NA * 4];
    memcpy(ac, a, sizeof ac);
    boxes_cxcywh_to_xyxy(a, a, NA);
    boxes_cxcywh_to_xyxy(b, b, NB);
    double ab[NA * NB], ba[NB * NA], iab[NA * NB]; /* [NA, NB], [NB, NA], [NA, NB] */
    box_giou_matrix(a, NA, b, NB, ab);
    box_giou_matrix(b, NB, a, NA, ba);
    box_iou_matrix(a, NA, b, NB, iab);
    int sym = 1, in_range = 1, grad_sym = 1, scalar_same = 1;
    for (int i = 0; i < NA; i++)
        for (int j = 0; j < NB; j++) {
            sym &= ab[i * NB + j] == ba[j * NA + i];
            in_range &= ab[i * NB + j] >= -1 && ab[i * NB + j] <= 1 && iab[i * NB + j] >= 0 &&
                        iab[i * NB + j] <= 1 && ab[i * NB + j] <= iab[i * NB + j];
            double ad[4], bd[4], ga1[4] = {0}, gb1[4] = {0}, ga2[4] = {0}, gb2[4] = {0};
            for (int k = 0; k < 4; k++) {
                ad[k] = a[4 * i + k];
                bd[k] = b[4 * j + k];
            }
            scalar_same &= box_giou(ad, bd) == ab[i * NB + j] && box_iou(ad, bd) == iab[i * NB + j];
            box_giou_backward(ad, bd, 1.0, ga1, gb1);
            box_giou_backward(bd, ad, 1.0, gb2, ga2);
            for (int k = 0; k < 4; k++) grad_sym &= ga1[k] == ga2[k] && gb1[k] == gb2[k];
        }
    CHECK("box: GIoU(a, b) == GIoU(b, a) (matrix transpose)", sym, "asymmetric");
    CHECK("box: -1 <= GIoU <= IoU <= 1, IoU >= 0", in_range, "out of range");
    CHECK("box: matrices equal the scalar functions", scalar_same, "differ");
    CHECK("box: GIoU gradient symmetric in its arguments", grad_sym, "asymmetric");
    CHECK("box: identical pair in the matrix has GIoU 1", ab[0] == 1.0, "got %.17g", ab[0]);
    CHECK("box: cxcywh GIoU equals the xyxy matrix", box_giou_cxcywh(ac, ac) == 1.0, "differs");
}

/* ---- finite differences ---- */

/* GIoU of cxcywh boxes in double (the function box_giou_cxcywh_backward differentiates). */
static double giou_cxcywh_d(const double a[4], const double b[4]) {
    double ax[4], bx[4];
    box_cxcywh_to_xyxy(a, ax);
    box_cxcywh_to_xyxy(b, bx);
    return box_giou(ax, bx);
}

/* Smallest distance between any two corner coordinates of a and b on the same axis, and of the
 * sides themselves: far from 0 means no max/min/clamp kink within a finite-difference step. */
static double kink_distance(const float ac[4], const float bc[4]) {
    double a[4], b[4], a4[4], b4[4];
    for (int k = 0; k < 4; k++) { a4[k] = ac[k]; b4[k] = bc[k]; }
    box_cxcywh_to_xyxy(a4, a);
    box_cxcywh_to_xyxy(b4, b);
    double m = INFINITY;
    for (int axis = 0; axis < 2; axis++) {
        double pa[2] = {a[axis], a[axis + 2]}, pb[2] = {b[axis], b[axis + 2]};
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) m = fmin(m, fabs(pa[i] - pb[j]));
    }
    return m;
}

/* Central differences of GIoU wrt the 8 cxcywh coordinates of (a, b) against the analytic gradient. */
static double giou_fd_error(const float a[4], const float b[4]) {
    double da[4] = {0, 0, 0, 0}, db[4] = {0, 0, 0, 0};
    box_giou_cxcywh_backward(a, b, 1.0, da, db);
    double worst = 0, h = 1e-6;
    for (int side = 0; side < 2; side++)
        for (int k = 0; k < 4; k++) {
            double x[4], y[4];
            for (int i = 0; i < 4; i++) { x[i] = a[i]; y[i] = b[i]; }
            double *p = side ? &y[k] : &x[k], p0 = *p;
            *p = p0 + h;
            double fp = giou_cxcywh_d(x, y);
            *p = p0 - h;
            double fm = giou_cxcywh_d(x, y);
            double fd = (fp - fm) / (2 * h), an = side ? db[k] : da[k];
            worst = fmax(worst, fabs(fd - an) / (fabs(fd) + 1e-3));
        }
    return worst;
}

static void test_giou_gradient(void) {
    Rng r = {2024, 0};
    int checked = 0, overlapping = 0;
    double worst = 0;
    while (checked < 500) {
        float a[4], b[4];
        random_box(&r, a);
        random_box(&r, b);
        if (kink_distance(a, b) < 1e-3) continue;
        double ax[4], bx[4], a4[4], b4[4];
        for (int k = 0; k < 4; k++) { a4[k] = a[k]; b4[k] = b[k]; }
        box_cxcywh_to_xyxy(a4, ax);
        box_cxcywh_to_xyxy(b4, bx);
        overlapping += box_iou(ax, bx) > 0;
        worst = fmax(worst, giou_fd_error(a, b));
        checked++;
    }
    CHECK("box: GIoU gradient matches finite differences (500 random pairs)", worst < 1e-6,
          "worst relative error %.3g", worst);
    printf("  GIoU FD: %d pairs (%d overlapping), worst rel err %.3g\n", checked, overlapping, worst);

    /* Touching boxes: GIoU is smooth along x there (both one-sided slopes are 1/2 wrt x1 of a). */
    const float ta[4] = {0.5f, 0.5f, 1.0f, 1.0f}, tb[4] = {1.5f, 0.5f, 1.0f, 1.0f};
    double err = giou_fd_error(ta, tb);
    double da[4] = {0, 0, 0, 0};
    box_giou_cxcywh_backward(ta, tb, 1.0, da, NULL);
    CHECK("box: touching boxes: gradient matches finite differences along x", fabs(da[0] - 0.5) < 1e-12 &&
          fabs(da[2] - 0.25) < 1e-12, "dcx %.17g dw %.17g (FD rel err %.3g)", da[0], da[2], err);
}

static void test_l1_gradient(void) {
    const float a[4] = {0.5f, 0.25f, 0.75f, 0.125f}, b[4] = {0.25f, 0.25f, 1.0f, 0.0f};
    CHECK("box: L1 value", box_l1(a, b) == 0.25 + 0 + 0.25 + 0.125, "got %.17g", box_l1(a, b));
    double da[4] = {1, 1, 1, 1};
    box_l1_backward(a, b, 2.0, da);
    CHECK("box: L1 gradient 2*sign(a-b) accumulated, sign(0) = 0",
          da[0] == 3 && da[1] == 1 && da[2] == -1 && da[3] == 3, "got %g %g %g %g", da[0], da[1], da[2], da[3]);

    /* finite differences away from 0 */
    Rng r = {7, 0};
    double worst = 0;
    for (int t = 0; t < 200; t++) {
        float x[4], y[4];
        random_box(&r, x);
        random_box(&r, y);
        double g[4] = {0, 0, 0, 0};
        box_l1_backward(x, y, 1.0, g);
        for (int k = 0; k < 4; k++) {
            if (fabs((double)x[k] - y[k]) < 1e-3) continue;
            float xp[4], xm[4];
            memcpy(xp, x, sizeof xp);
            memcpy(xm, x, sizeof xm);
            xp[k] += 1e-4f;
            xm[k] -= 1e-4f;
            double fd = (box_l1(xp, y) - box_l1(xm, y)) / ((double)xp[k] - (double)xm[k]);
            worst = fmax(worst, fabs(fd - g[k]));
        }
    }
    CHECK("box: L1 gradient matches finite differences", worst < 1e-9, "worst abs error %.3g", worst);
}

int main(void) {
    test_conversions();
    test_known_values();
    test_symmetry();
    test_giou_gradient();
    test_l1_gradient();
    return test_finish();
}
