/* test_amp_ops.c - the CPU backend's matrix products under mixed precision (backend.h,
 * Precision) against PyTorch (tests/ref/amp_ops_ref.py, run with /usr/bin/python3):
 *   bf16: PyTorch's own CPU autocast (F.linear, F.conv2d, torch.bmm in bfloat16, and their
 *         backward: input, weight and bias gradients computed in bfloat16);
 *   fp16: the written-out reference (operands .half(), float32 product, result .half()).
 * Plus the rounding itself (ties to even, fp16 overflow to inf, subnormals, NaN) against torch's
 * conversions, bitwise.
 *
 * Measures per tensor: the fraction of elements bitwise equal to PyTorch and the normalised error
 * max|a-b| / max|b|. Both sides round the same float32-accumulated products, so they differ only
 * where a different summation order moves a product across a rounding boundary: nearly every
 * element must be equal (>= 90%), and no element more than one low-precision step off (error <=
 * 2^-7 for bf16, 2^-10 for fp16). So that the check can fail, the float32 backend's results
 * (PRECISION_FP32) must miss the equality criterion: float32 results are almost never exactly
 * representable in the low type. Backward ops accumulate (+=): checked by starting the gradient
 * buffers at 1 and comparing against 1 + reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "backend.h"
#include "check.h"
#include "rng.h"
#include "test_util.h"

/* shapes: tests/ref/amp_ops_ref.py */
enum { T = 37, IN = 70, O = 29 };
enum { B = 2, CIN = 5, H = 9, W = 11, COUT = 6, K = 3 };
enum { BATCH = 3, BM = 7, BN = 9, BK = 33 };
#define NROUND 40

static char g_dir[256];

static void write_f32(const char *name, const float *x, size_t n) {
    char path[512];
    snprintf(path, sizeof(path), "%s/in_%s.f32", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x, sizeof(float), n, f) != n) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

/* The reference's output, or NULL if missing or of another size. */
static float *read_ref(const char *name, size_t n) {
    char path[512];
    snprintf(path, sizeof(path), "%s/ref_%s.f32", g_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    float *x = malloc((n + 1) * sizeof(float));
    size_t got = fread(x, sizeof(float), n + 1, f);
    fclose(f);
    if (got != n) {
        free(x);
        return NULL;
    }
    return x;
}

static float *normal(Rng *r, size_t n, float scale) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_next_normal(r);
    return x;
}

static float *filled(size_t n, float v) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = v;
    return x;
}

/* CNHW [C, B, h, w] -> NCHW [B, C, h, w] */
static float *cnhw_to_nchw(const float *x, int C, int Bn, int h, int w) {
    float *y = malloc((size_t)C * Bn * h * w * sizeof(float));
    size_t plane = (size_t)h * w;
    for (int c = 0; c < C; c++)
        for (int b = 0; b < Bn; b++)
            memcpy(y + ((size_t)b * C + c) * plane, x + ((size_t)c * Bn + b) * plane, plane * sizeof(float));
    return y;
}

static double equal_fraction(const float *a, const float *b, size_t n) {
    size_t eq = 0;
    for (size_t i = 0; i < n; i++) eq += memcmp(&a[i], &b[i], sizeof(float)) == 0;
    return (double)eq / (double)n;
}

/* acc = buffers that started at 1: compare acc - 1 (exact for |values| well above 2^-23) */
static void minus_one(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] -= 1.0f;
}

typedef struct {
    const char *prec;   /* "bf16" / "fp16" */
    double max_err;     /* one low-precision step, relative */
} Tol;

/* One tensor: ours (at the low precision) and ours at float32 against the reference. */
static void compare(const Tol *tol, const char *what, const float *ours, const float *ours_f32,
                    const char *ref_name, size_t n) {
    char name[128];
    snprintf(name, sizeof(name), "%s %s", tol->prec, what);
    float *ref = read_ref(ref_name, n);
    if (!ref) {
        CHECK(name, 0, "reference output ref_%s.f32 missing or of the wrong size", ref_name);
        return;
    }
    double eq = equal_fraction(ours, ref, n), err = rel_err(ours, ref, n);
    double eq32 = equal_fraction(ours_f32, ref, n);
    CHECK(name, eq >= 0.9 && err <= tol->max_err && eq32 < 0.5,
          "bitwise equal %.3f (need >= 0.9), error %.3g (need <= %.3g), float32 equal %.3f "
          "(need < 0.5: the criterion must tell float32 from %s)", eq, err, tol->max_err, eq32, tol->prec);
    printf("     %-14s equal %.4f  error %.3g  (float32 backend: equal %.4f)\n", what, eq, err, eq32);
    free(ref);
}

/* The values whose rounding is compared bitwise: ties, the fp16 and bf16 overflow thresholds,
 * fp16 subnormals, infinities, NaN, zeros, a float32 denormal, random values. */
static void write_rounding_inputs(void) {
    float v[NROUND] = {1.0f, 1.00390625f, 1.01171875f, 1.0009765625f, 1.0029296875f, 65504.0f,
                       65519.0f, 65520.0f, 70000.0f, -70000.0f, 1e-5f, 6e-8f, 3e-8f, 2.9e-8f,
                       3.3895314e38f, 3.3961e38f, INFINITY, -INFINITY, NAN, 0.0f, -0.0f,
                       1e-40f, -2.5f, 0.1f, 1234.5678f, 3.14159265f};
    Rng r = {77, 0};
    for (int i = 26; i < NROUND; i++) v[i] = 100.0f * rng_next_normal(&r);
    write_f32("round", v, NROUND);
}

static int run_reference(const char *prec) {
    char cmd[1024], *out, *err;
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 tests/ref/amp_ops_ref.py %s %s", g_dir, prec);
    int rc = run_capture(g_dir, cmd, &out, &err);
    if (rc != 0) printf("     reference failed (exit %d): %s%s\n", rc, out, err);
    free(out);
    free(err);
    return rc;
}

/* Runs ops at precision p and at float32, compares with the reference. */
static void check_precision(Precision p, const Tol *tol) {
    const Backend *be = backend_cpu();
    Rng r = {p == PRECISION_BF16 ? 11u : 12u, 0};
    /* linear: x [T, IN], w [O, IN], b [O], dy [T, O] */
    float *lx = normal(&r, (size_t)T * IN, 1.0f), *lw = normal(&r, (size_t)O * IN, 0.2f);
    float *lb = normal(&r, O, 0.5f), *ldy = normal(&r, (size_t)T * O, 1.0f);
    write_f32("lx", lx, (size_t)T * IN), write_f32("lw", lw, (size_t)O * IN);
    write_f32("lb", lb, O), write_f32("ldy", ldy, (size_t)T * O);
    /* conv: x CNHW [CIN, B, H, W], w [COUT, CIN, K, K], stride 2, padding 1 */
    ConvShape cs = {.B = B, .Cin = CIN, .H = H, .W = W, .Cout = COUT, .kh = K, .kw = K, .stride = 2,
                    .pad = 1, .dil = 1};
    conv_shape_init(&cs);
    size_t nx = (size_t)CIN * B * H * W, nw = (size_t)COUT * CIN * K * K;
    size_t ny = (size_t)COUT * B * cs.Ho * cs.Wo;
    float *cx = normal(&r, nx, 1.0f), *cw = normal(&r, nw, 0.3f), *cb = normal(&r, COUT, 0.5f);
    float *cdy = normal(&r, ny, 1.0f);
    float *cx_n = cnhw_to_nchw(cx, CIN, B, H, W), *cdy_n = cnhw_to_nchw(cdy, COUT, B, cs.Ho, cs.Wo);
    write_f32("cx", cx_n, nx), write_f32("cw", cw, nw), write_f32("cb", cb, COUT);
    write_f32("cdy", cdy_n, ny);
    /* gemm: a [BATCH, BK, BM] used transposed, b [BATCH, BK, BN] */
    size_t na = (size_t)BATCH * BK * BM, nb = (size_t)BATCH * BK * BN, nc = (size_t)BATCH * BM * BN;
    float *ga = normal(&r, na, 1.0f), *gb = normal(&r, nb, 1.0f);
    write_f32("ga", ga, na), write_f32("gb", gb, nb);
    write_rounding_inputs();

    char name[64];
    snprintf(name, sizeof(name), "%s reference", tol->prec);
    int rc = run_reference(tol->prec);
    CHECK(name, rc == 0, "tests/ref/amp_ops_ref.py failed (exit %d)", rc);
    if (rc == 0) {
        /* rounding, bitwise (NaN: both NaN) */
        float *ref = read_ref("round", NROUND);
        float v[NROUND];
        snprintf(name, sizeof(name), "%s rounding", tol->prec);
        char path[512];
        snprintf(path, sizeof(path), "%s/in_round.f32", g_dir);
        FILE *f = fopen(path, "rb");
        size_t got = f ? fread(v, sizeof(float), NROUND, f) : 0;
        if (f) fclose(f);
        int bad = -1;
        float ours = 0;
        for (int i = 0; ref && got == NROUND && i < NROUND && bad < 0; i++) {
            float x = v[i];
            be->set_precision(p);
            /* round through the op: a 1x1 linear with weight 1 returns round(round(x) * 1) */
            float one = 1.0f;
            be->linear_forward(&x, &one, NULL, &ours, 1, 1, 1);
            be->set_precision(PRECISION_FP32);
            /* the sign of a zero does not survive the probe's GEMM (0 + -0 = +0) */
            int same = isnan(ref[i]) ? isnan(ours)
                       : ref[i] == 0.0f ? ours == 0.0f : memcmp(&ours, &ref[i], sizeof(float)) == 0;
            if (!same) bad = i;
        }
        CHECK(name, ref && got == NROUND && bad < 0, "value %.9g: ours %.9g, torch %.9g",
              bad >= 0 ? v[bad] : 0.0, bad >= 0 ? ours : 0.0, bad >= 0 && ref ? ref[bad] : 0.0);
        free(ref);

        for (int pass = 0; pass < 2; pass++) { /* 0: precision p, 1: float32 (must fail) */
            static float *res[2][11];
            be->set_precision(pass == 0 ? p : PRECISION_FP32);
            float *y = malloc((size_t)T * O * sizeof(float));
            be->linear_forward(lx, lw, lb, y, T, IN, O);
            float *dx = filled((size_t)T * IN, 1.0f), *dw = filled((size_t)O * IN, 1.0f), *db = filled(O, 1.0f);
            be->linear_backward(ldy, lx, lw, dx, dw, db, T, IN, O);
            minus_one(dx, (size_t)T * IN), minus_one(dw, (size_t)O * IN), minus_one(db, O);
            float *cy = malloc(ny * sizeof(float));
            be->conv2d_forward(&cs, cx, cw, cb, cy);
            float *cdx = filled(nx, 1.0f), *cdw = filled(nw, 1.0f), *cdb = filled(COUT, 1.0f);
            be->conv2d_backward_data(&cs, cdy, cw, cdx);
            be->conv2d_backward_weight(&cs, cdy, cx, cdw, cdb);
            minus_one(cdx, nx), minus_one(cdw, nw), minus_one(cdb, COUT);
            float *gc = malloc(nc * sizeof(float));
            for (size_t i = 0; i < nc; i++) gc[i] = NAN; /* beta 0: C must not be read */
            be->gemm(1, 0, BM, BN, BK, 1.0f, ga, BM, (long)BK * BM, gb, BN, (long)BK * BN, 0.0f, gc,
                     BN, (long)BM * BN, BATCH);
            be->set_precision(PRECISION_FP32);
            float *cy_n = cnhw_to_nchw(cy, COUT, B, cs.Ho, cs.Wo), *cdx_n = cnhw_to_nchw(cdx, CIN, B, H, W);
            free(cy), free(cdx);
            float *all[11] = {y, dx, dw, db, cy_n, cdx_n, cdw, cdb, gc, NULL, NULL};
            memcpy(res[pass], all, sizeof(all));
            if (pass == 1) {
                compare(tol, "linear y", res[0][0], res[1][0], "ly", (size_t)T * O);
                compare(tol, "linear dx", res[0][1], res[1][1], "ldx", (size_t)T * IN);
                compare(tol, "linear dw", res[0][2], res[1][2], "ldw", (size_t)O * IN);
                compare(tol, "linear db", res[0][3], res[1][3], "ldb", O);
                compare(tol, "conv y", res[0][4], res[1][4], "cy", ny);
                compare(tol, "conv dx", res[0][5], res[1][5], "cdx", nx);
                compare(tol, "conv dw", res[0][6], res[1][6], "cdw", nw);
                compare(tol, "conv db", res[0][7], res[1][7], "cdb", COUT);
                compare(tol, "gemm (A^T B)", res[0][8], res[1][8], "gc", nc);
                for (int k = 0; k < 9; k++) free(res[0][k]), free(res[1][k]);
            }
        }
    }
    float *ins[] = {lx, lw, lb, ldy, cx, cw, cb, cdy, cx_n, cdy_n, ga, gb};
    for (size_t i = 0; i < sizeof(ins) / sizeof(ins[0]); i++) free(ins[i]);
}

int main(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/test_amp_ops.XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (access("/usr/bin/python3", X_OK) != 0) {
        test_skip("amp ops vs PyTorch", "/usr/bin/python3 (Debian's, with torch) is not installed");
        return test_finish();
    }
    CHECK("cpu backend has set_precision", backend_cpu()->set_precision != NULL, "missing");
    if (backend_cpu()->set_precision) {
        Tol bf = {"bf16", 1.0 / 128}, fp = {"fp16", 1.0 / 1024};
        check_precision(PRECISION_BF16, &bf);
        check_precision(PRECISION_FP16, &fp);
    }
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
    return test_finish();
}
