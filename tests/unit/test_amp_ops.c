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

/* The ops' inputs (our layouts: conv tensors CNHW) and their shapes. */
typedef struct {
    float *lx, *lw, *lb, *ldy;  /* linear: x [T, IN], w [O, IN], b [O], dy [T, O] */
    ConvShape cs;               /* stride 2, padding 1 */
    float *cx, *cw, *cb, *cdy;  /* conv: x [CIN, B, H, W], w [COUT, CIN, K, K], b [COUT], dy [COUT, B, Ho, Wo] */
    float *ga, *gb;             /* gemm: a [BATCH, BK, BM] used transposed, b [BATCH, BK, BN] */
} OpInputs;

/* The outputs compared with the reference, in the reference's layouts (conv NCHW). */
enum { OUT_LY, OUT_LDX, OUT_LDW, OUT_LDB, OUT_CY, OUT_CDX, OUT_CDW, OUT_CDB, OUT_GC, OUT_N };
static const struct {
    const char *what, *ref;
} OUTPUTS[OUT_N] = {{"linear y", "ly"}, {"linear dx", "ldx"}, {"linear dw", "ldw"}, {"linear db", "ldb"},
                    {"conv y", "cy"},   {"conv dx", "cdx"},   {"conv dw", "cdw"},   {"conv db", "cdb"},
                    {"gemm (A^T B)", "gc"}};

/* Draws the inputs and writes them for the reference (conv tensors as NCHW). */
static void make_inputs(OpInputs *in, Precision p, size_t count[OUT_N]) {
    Rng r = {p == PRECISION_BF16 ? 11u : 12u, 0};
    in->lx = normal(&r, (size_t)T * IN, 1.0f), in->lw = normal(&r, (size_t)O * IN, 0.2f);
    in->lb = normal(&r, O, 0.5f), in->ldy = normal(&r, (size_t)T * O, 1.0f);
    in->cs = (ConvShape){.B = B, .Cin = CIN, .H = H, .W = W, .Cout = COUT, .kh = K, .kw = K, .stride = 2,
                         .pad = 1, .dil = 1};
    conv_shape_init(&in->cs);
    size_t nx = (size_t)CIN * B * H * W, nw = (size_t)COUT * CIN * K * K;
    size_t ny = (size_t)COUT * B * in->cs.Ho * in->cs.Wo;
    in->cx = normal(&r, nx, 1.0f), in->cw = normal(&r, nw, 0.3f), in->cb = normal(&r, COUT, 0.5f);
    in->cdy = normal(&r, ny, 1.0f);
    size_t na = (size_t)BATCH * BK * BM, nb = (size_t)BATCH * BK * BN;
    in->ga = normal(&r, na, 1.0f), in->gb = normal(&r, nb, 1.0f);
    write_f32("lx", in->lx, (size_t)T * IN), write_f32("lw", in->lw, (size_t)O * IN);
    write_f32("lb", in->lb, O), write_f32("ldy", in->ldy, (size_t)T * O);
    float *cx_n = cnhw_to_nchw(in->cx, CIN, B, H, W), *cdy_n = cnhw_to_nchw(in->cdy, COUT, B, in->cs.Ho, in->cs.Wo);
    write_f32("cx", cx_n, nx), write_f32("cw", in->cw, nw), write_f32("cb", in->cb, COUT);
    write_f32("cdy", cdy_n, ny);
    free(cx_n), free(cdy_n);
    write_f32("ga", in->ga, na), write_f32("gb", in->gb, nb);
    const size_t n[OUT_N] = {(size_t)T * O, (size_t)T * IN, (size_t)O * IN, O, ny, nx, nw, COUT,
                             (size_t)BATCH * BM * BN};
    memcpy(count, n, sizeof(n));
}

static void free_inputs(OpInputs *in) {
    float *all[] = {in->lx, in->lw, in->lb, in->ldy, in->cx, in->cw, in->cb, in->cdy, in->ga, in->gb};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) free(all[i]);
}

/* Runs every op at precision p into out[OUT_N] (malloc'd). Gradients start at 1 (the ops
 * accumulate) and 1 is taken off again; gemm's C starts as NaN (beta 0: it must not be read). */
static void run_ops(const OpInputs *in, Precision p, const size_t count[OUT_N], float *out[OUT_N]) {
    const Backend *be = backend_cpu();
    const ConvShape *cs = &in->cs;
    be->set_precision(p);
    out[OUT_LY] = malloc(count[OUT_LY] * sizeof(float));
    be->linear_forward(in->lx, in->lw, in->lb, out[OUT_LY], T, IN, O);
    for (int k = OUT_LDX; k <= OUT_LDB; k++) out[k] = filled(count[k], 1.0f);
    be->linear_backward(in->ldy, in->lx, in->lw, out[OUT_LDX], out[OUT_LDW], out[OUT_LDB], T, IN, O);
    float *cy = malloc(count[OUT_CY] * sizeof(float)), *cdx = filled(count[OUT_CDX], 1.0f);
    be->conv2d_forward(cs, in->cx, in->cw, in->cb, cy);
    out[OUT_CDW] = filled(count[OUT_CDW], 1.0f), out[OUT_CDB] = filled(count[OUT_CDB], 1.0f);
    be->conv2d_backward_data(cs, in->cdy, in->cw, cdx);
    be->conv2d_backward_weight(cs, in->cdy, in->cx, out[OUT_CDW], out[OUT_CDB]);
    out[OUT_GC] = filled(count[OUT_GC], NAN);
    be->gemm(1, 0, BM, BN, BK, 1.0f, in->ga, BM, (long)BK * BM, in->gb, BN, (long)BK * BN, 0.0f, out[OUT_GC],
             BN, (long)BM * BN, BATCH);
    be->set_precision(PRECISION_FP32);
    minus_one(cdx, count[OUT_CDX]);
    out[OUT_CY] = cnhw_to_nchw(cy, COUT, B, cs->Ho, cs->Wo), out[OUT_CDX] = cnhw_to_nchw(cdx, CIN, B, H, W);
    free(cy), free(cdx);
    const int accumulated[] = {OUT_LDX, OUT_LDW, OUT_LDB, OUT_CDW, OUT_CDB};
    for (size_t i = 0; i < sizeof(accumulated) / sizeof(accumulated[0]); i++)
        minus_one(out[accumulated[i]], count[accumulated[i]]);
}

/* The rounding itself, bitwise (NaN: both NaN), probed through a 1x1 linear with weight 1. */
static void check_rounding(Precision p, const Tol *tol) {
    const Backend *be = backend_cpu();
    char name[64], path[512];
    snprintf(name, sizeof(name), "%s rounding", tol->prec);
    float *ref = read_ref("round", NROUND), v[NROUND], ours = 0;
    snprintf(path, sizeof(path), "%s/in_round.f32", g_dir);
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(v, sizeof(float), NROUND, f) : 0;
    if (f) fclose(f);
    int bad = -1;
    for (int i = 0; ref && got == NROUND && i < NROUND && bad < 0; i++) {
        float x = v[i], one = 1.0f;
        be->set_precision(p);
        be->linear_forward(&x, &one, NULL, &ours, 1, 1, 1); /* round(round(x) * 1) */
        be->set_precision(PRECISION_FP32);
        /* the sign of a zero does not survive the probe's GEMM (0 + -0 = +0) */
        int same = isnan(ref[i]) ? isnan(ours)
                   : ref[i] == 0.0f ? ours == 0.0f : memcmp(&ours, &ref[i], sizeof(float)) == 0;
        if (!same) bad = i;
    }
    CHECK(name, ref && got == NROUND && bad < 0, "value %.9g: ours %.9g, torch %.9g",
          bad >= 0 ? v[bad] : 0.0, bad >= 0 ? ours : 0.0, bad >= 0 && ref ? ref[bad] : 0.0);
    free(ref);
}

/* Runs the ops at precision p and at float32 and compares both with the reference. */
static void check_precision(Precision p, const Tol *tol) {
    OpInputs in;
    size_t count[OUT_N];
    make_inputs(&in, p, count);
    write_rounding_inputs();
    char name[64];
    snprintf(name, sizeof(name), "%s reference", tol->prec);
    int rc = run_reference(tol->prec);
    CHECK(name, rc == 0, "tests/ref/amp_ops_ref.py failed (exit %d)", rc);
    if (rc == 0) {
        check_rounding(p, tol);
        float *low[OUT_N], *f32[OUT_N]; /* f32: the float32 backend, which must miss the criterion */
        run_ops(&in, p, count, low);
        run_ops(&in, PRECISION_FP32, count, f32);
        for (int k = 0; k < OUT_N; k++) {
            compare(tol, OUTPUTS[k].what, low[k], f32[k], OUTPUTS[k].ref, count[k]);
            free(low[k]), free(f32[k]);
        }
    }
    free_inputs(&in);
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
