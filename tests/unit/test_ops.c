/* test_ops.c - every op of the backend table against a naive reference (the pattern of ggml's
 * test-backend-ops), CPU backend for now.
 *
 * For every op:
 *  1. forward against a straightforward loop implementation in double, on random inputs drawn
 *     from a fresh seed (printed; DETR_TEST_SEED=<n> repeats a run), odd sizes included;
 *  2. every backward against finite differences of L = sum(y * r) (r random), and against the
 *     double reference where one exists;
 *  3. the accumulate convention: gradient buffers start non-zero and must end at start + grad;
 *  4. guard zones: every buffer has GUARD sentinel floats before and after it. The sentinel is a
 *     NaN, so an op that reads outside an input poisons its output, and one that writes outside
 *     an output changes the sentinel's bits. NaN/Inf in any output fails.
 *
 * Tolerances (float32 backend against a double reference): forward ops 2e-5 of the largest
 * reference value (sums of up to ~1000 products have rounding around 1e-6). Finite differences
 * are taken in float32 with a step of 1e-2 (1e-3 next to kinks); the loss itself is summed in
 * double. The rounding of L (~1e-6) divided by 2h gives ~1e-4 of noise on a derivative of order
 * one, and the O(h^2) truncation adds ~1e-4 for the curved ops, so FD checks use 2e-3 of the
 * largest analytic gradient. A wrong term, factor or index gives errors of order one. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "backend_cpu_internal.h" /* backend.h, plus cpu_expf and the conv column-limit hook */
#include "rng.h"
#include "check.h"

#ifndef TOL_FWD /* overridable to print the actual errors: -DTOL_FWD=0 -DTOL_FD=0 */
#define TOL_FWD 2e-5
#endif
#ifndef TOL_FD
#define TOL_FD 2e-3
#endif
#define GUARD 16

static const Backend *be;
static Rng g_rng;

/* ------------------------------------------------------------------------------------------ */
/* random numbers and names                                                                   */

static float urand(float lo, float hi) { return lo + (hi - lo) * rng_next_uniform(&g_rng); }
static int irand(int n) { return (int)(rng_next_uniform(&g_rng) * n) % n; }

static float *host_random(size_t n, float lo, float hi) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = urand(lo, hi);
    return p;
}
static double *host_zeros_d(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

/* Test names are built with printf formats; a few rotating buffers keep call sites short. */
static const char *nm(const char *fmt, ...) {
    static char bufs[8][192];
    static int at;
    char *b = bufs[at++ % 8];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof bufs[0], fmt, ap);
    va_end(ap);
    return b;
}

/* ------------------------------------------------------------------------------------------ */
/* guarded backend buffers                                                                    */

static const uint32_t GUARD_BITS = 0x7FC0DEADu; /* a quiet NaN with a recognisable payload */
#define GUARD_BYTE 0xA5

typedef struct {
    float *base; /* [GUARD + n + GUARD] in backend memory */
    float *d;    /* base + GUARD: the n floats the op sees */
    size_t n;
} Buf;

typedef struct {
    uint8_t *base; /* [GUARD + bytes + GUARD] */
    uint8_t *d;
    size_t bytes;
} ByteBuf;

static Buf buf_new(size_t n) {
    Buf b;
    b.n = n;
    b.base = be->alloc(MEM_ACTS, n + 2 * GUARD);
    b.d = b.base + GUARD;
    float guard[GUARD];
    for (int i = 0; i < GUARD; i++) memcpy(&guard[i], &GUARD_BITS, sizeof(float));
    be->upload(b.base, guard, sizeof guard);
    be->upload(b.d + n, guard, sizeof guard);
    return b;
}
static void buf_set(Buf b, const float *host) { be->upload(b.d, host, b.n * sizeof(float)); }
static Buf buf_from(const float *host, size_t n) {
    Buf b = buf_new(n);
    buf_set(b, host);
    return b;
}
static void buf_get(Buf b, float *host) { be->download(host, b.d, b.n * sizeof(float)); }
static void buf_free(Buf b) { be->free(b.base); }

static int buf_guards_ok(Buf b) {
    uint32_t g[2 * GUARD];
    be->download(g, b.base, GUARD * sizeof(float));
    be->download(g + GUARD, b.d + b.n, GUARD * sizeof(float));
    for (int i = 0; i < 2 * GUARD; i++)
        if (g[i] != GUARD_BITS) return 0;
    return 1;
}

static ByteBuf bytebuf_new(size_t bytes) {
    ByteBuf b;
    b.bytes = bytes;
    b.base = be->alloc_bytes(MEM_ACTS, bytes + 2 * GUARD);
    b.d = b.base + GUARD;
    uint8_t guard[GUARD];
    memset(guard, GUARD_BYTE, sizeof guard);
    be->upload(b.base, guard, GUARD);
    be->upload(b.d + bytes, guard, GUARD);
    return b;
}
static int bytebuf_guards_ok(ByteBuf b) {
    uint8_t g[2 * GUARD];
    be->download(g, b.base, GUARD);
    be->download(g + GUARD, b.d + b.bytes, GUARD);
    for (int i = 0; i < 2 * GUARD; i++)
        if (g[i] != GUARD_BYTE) return 0;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* comparisons                                                                                */

/* Compares backend buffer `out` with the double reference `ref`: when `init` is given the op
 * accumulated, and out - init is compared. Error = max|a - ref| / scale, scale = the largest
 * |ref| (or |init|: out - init cannot be exact to better than the float rounding of init), and
 * absolute below 1e-6. Fails on error > tol, NaN/Inf in out, or a touched guard. */
static void expect_close(const char *name, Buf out, const float *init, const double *ref,
                         double tol) {
    float *o = malloc((out.n ? out.n : 1) * sizeof(float));
    buf_get(out, o);
    double max_err = 0, max_ref = 0;
    size_t worst = 0, nonfinite = 0;
    for (size_t i = 0; i < out.n; i++) {
        if (!isfinite(o[i])) {
            nonfinite++;
            continue;
        }
        double a = (double)o[i] - (init ? (double)init[i] : 0.0);
        double e = fabs(a - ref[i]);
        if (e > max_err) {
            max_err = e;
            worst = i;
        }
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
        if (init && fabs(init[i]) > max_ref) max_ref = fabs(init[i]);
    }
    double rel = max_err / (max_ref > 1e-6 ? max_ref : 1e-6);
    int guards = buf_guards_ok(out);
    CHECK(name, rel <= tol && nonfinite == 0 && guards,
          "max rel err %.3g (tol %.1g; abs %.3g at %zu: got %.7g, want %.7g), %zu NaN/Inf, "
          "guards %s",
          rel, tol, max_err, worst, out.n ? (double)o[worst] - (init ? init[worst] : 0) : 0.0,
          out.n ? ref[worst] : 0.0, nonfinite, guards ? "intact" : "OVERWRITTEN");
    free(o);
}

/* Inputs must come back bit for bit unchanged (and their guards intact). */
static void expect_unchanged(const char *name, Buf in, const float *host) {
    float *o = malloc((in.n ? in.n : 1) * sizeof(float));
    buf_get(in, o);
    size_t changed = 0;
    for (size_t i = 0; i < in.n; i++) changed += memcmp(&o[i], &host[i], sizeof(float)) != 0;
    int guards = buf_guards_ok(in);
    CHECK(name, changed == 0 && guards, "%zu input values changed, guards %s", changed,
          guards ? "intact" : "OVERWRITTEN");
    free(o);
}

static double *to_double(const float *x, size_t n) {
    double *d = host_zeros_d(n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* ------------------------------------------------------------------------------------------ */
/* finite differences                                                                         */

/* Runs the forward op on the current backend buffers and returns L = sum(y * r) in double. */
typedef double (*LossFn)(void *ctx);

static double projected_loss(Buf y, const float *r) {
    float *h = malloc(y.n * sizeof(float));
    buf_get(y, h);
    double L = 0;
    for (size_t i = 0; i < y.n; i++) L += (double)h[i] * r[i];
    free(h);
    return L;
}

/* Central differences of `loss` with respect to every element of the input whose host copy is
 * `x` and backend buffer `xb` (at most max_points elements, evenly spread); compared with the
 * analytic gradient `an`. Restores the input. */
static void expect_fd(const char *name, LossFn loss, void *ctx, float *x, Buf xb, const float *an,
                      double h, size_t max_points) {
    size_t stride = xb.n > max_points ? (xb.n + max_points - 1) / max_points : 1;
    double max_err = 0, max_an = 0, fd_worst = 0, an_worst = 0;
    size_t worst = 0;
    for (size_t i = 0; i < xb.n; i += stride) {
        const float x0 = x[i];
        const float xp = (float)(x0 + h), xm = (float)(x0 - h);
        x[i] = xp;
        buf_set(xb, x);
        double Lp = loss(ctx);
        x[i] = xm;
        buf_set(xb, x);
        double Lm = loss(ctx);
        x[i] = x0;
        double fd = (Lp - Lm) / ((double)xp - (double)xm);
        double e = fabs(fd - an[i]);
        if (e > max_err) {
            max_err = e;
            worst = i;
            fd_worst = fd;
            an_worst = an[i];
        }
        if (fabs(an[i]) > max_an) max_an = fabs(an[i]);
    }
    buf_set(xb, x);
    double rel = max_err / (max_an > 1e-6 ? max_an : 1e-6);
    CHECK(name, rel <= TOL_FD && isfinite(rel),
          "finite differences: max rel err %.3g (tol %.1g) at %zu: fd %.7g, analytic %.7g", rel,
          TOL_FD, worst, fd_worst, an_worst);
}

/* Downloads a gradient the op accumulated into a buffer that started at `init`: returns
 * grad = out - init (malloc'ed). */
static float *grad_delta(Buf g, const float *init) {
    float *d = malloc((g.n ? g.n : 1) * sizeof(float));
    buf_get(g, d);
    for (size_t i = 0; i < g.n; i++) d[i] -= init ? init[i] : 0.0f;
    return d;
}

/* ------------------------------------------------------------------------------------------ */
/* memory                                                                                     */

static void test_memory(void) {
    const size_t n = 1003;
    MemStats before = mem_stats();
    float *p = be->alloc(MEM_WORKSPACE, n);
    MemStats during = mem_stats();
    CHECK("alloc charges its category", during.current[MEM_WORKSPACE] -
                                                 before.current[MEM_WORKSPACE] == n * sizeof(float),
          "workspace grew by %zu bytes, want %zu",
          during.current[MEM_WORKSPACE] - before.current[MEM_WORKSPACE], n * sizeof(float));
    CHECK("alloc is 64-byte aligned", ((uintptr_t)p & 63) == 0, "pointer %p", (void *)p);
    be->free(p);
    MemStats after = mem_stats();
    CHECK("free releases its category", after.current[MEM_WORKSPACE] == before.current[MEM_WORKSPACE],
          "workspace %zu bytes after free, %zu before", after.current[MEM_WORKSPACE],
          before.current[MEM_WORKSPACE]);

    void *bytes = be->alloc_bytes(MEM_INPUTS, 77);
    CHECK("alloc_bytes charges its category",
          mem_stats().current[MEM_INPUTS] - before.current[MEM_INPUTS] == 77, "inputs grew by %zu",
          mem_stats().current[MEM_INPUTS] - before.current[MEM_INPUTS]);
    be->free_bytes(bytes);

    float *x = host_random(n, -1, 1);
    double *xd = to_double(x, n);
    Buf a = buf_from(x, n), b = buf_new(n);
    float *back = malloc(n * sizeof(float));
    buf_get(a, back);
    CHECK("upload/download round trip", memcmp(back, x, n * sizeof(float)) == 0 && buf_guards_ok(a),
          "data differs after upload + download");
    be->copy(b.d, a.d, n);
    be->synchronize();
    expect_close("copy", b, NULL, xd, 0);
    be->fill(b.d, -2.5f, n);
    for (size_t i = 0; i < n; i++) xd[i] = -2.5;
    expect_close("fill", b, NULL, xd, 0);
    /* a large fill takes the threaded path */
    Buf big = buf_new(100003);
    be->fill(big.d, 0.75f, big.n);
    double *bd = host_zeros_d(big.n);
    for (size_t i = 0; i < big.n; i++) bd[i] = 0.75;
    expect_close("fill n=100003 (threaded)", big, NULL, bd, 0);
    buf_free(a), buf_free(b), buf_free(big);
    free(x), free(xd), free(back), free(bd);
}

/* ------------------------------------------------------------------------------------------ */
/* elementwise                                                                                */

typedef struct { /* FD context for the unary elementwise ops */
    Buf x, y;
    const float *r;
    int op; /* 0 relu, 1 sigmoid, 2 dropout */
    float p;
    uint64_t seed;
} UnaryCtx;

static double unary_loss(void *ctx) {
    UnaryCtx *c = ctx;
    if (c->op == 0) be->relu_forward(c->x.d, c->y.d, c->x.n);
    if (c->op == 1) be->sigmoid_forward(c->x.d, c->y.d, c->x.n);
    if (c->op == 2) be->dropout_forward(c->x.d, c->y.d, c->x.n, c->p, c->seed);
    return projected_loss(c->y, c->r);
}

/* x away from 0 by at least `margin`, so a FD step never crosses the ReLU kink */
static float *host_random_away_from_zero(size_t n, float margin) {
    float *x = host_random(n, -1, 1);
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) < margin) x[i] = x[i] < 0 ? x[i] - margin : x[i] + margin;
    return x;
}

static void test_relu_sigmoid(size_t n) {
    float *x = host_random_away_from_zero(n, 0.05f);
    float *dy = host_random(n, -1, 1), *dx0 = host_random(n, -1, 1);
    Buf X = buf_from(x, n), Y = buf_new(n), DY = buf_from(dy, n), DX = buf_from(dx0, n);
    double *ref = host_zeros_d(n), *gref = host_zeros_d(n);

    be->relu_forward(X.d, Y.d, n);
    for (size_t i = 0; i < n; i++) ref[i] = x[i] > 0 ? x[i] : 0;
    expect_close(nm("relu_forward n=%zu", n), Y, NULL, ref, 0);
    be->relu_backward(DY.d, Y.d, DX.d, n);
    for (size_t i = 0; i < n; i++) gref[i] = x[i] > 0 ? dy[i] : 0;
    expect_close(nm("relu_backward n=%zu (+= into nonzero dx)", n), DX, dx0, gref, 1e-6);

    be->sigmoid_forward(X.d, Y.d, n);
    for (size_t i = 0; i < n; i++) ref[i] = 1.0 / (1.0 + exp(-(double)x[i]));
    expect_close(nm("sigmoid_forward n=%zu", n), Y, NULL, ref, TOL_FWD);
    buf_set(DX, dx0);
    be->sigmoid_backward(DY.d, Y.d, DX.d, n);
    for (size_t i = 0; i < n; i++) gref[i] = dy[i] * ref[i] * (1 - ref[i]);
    expect_close(nm("sigmoid_backward n=%zu (+= into nonzero dx)", n), DX, dx0, gref, TOL_FWD);

    /* extreme inputs: finite, saturating */
    float ext[6] = {-200.f, -88.f, -30.f, 30.f, 88.f, 200.f};
    double eref[6];
    Buf EX = buf_from(ext, 6), EY = buf_new(6);
    be->sigmoid_forward(EX.d, EY.d, 6);
    for (int i = 0; i < 6; i++) eref[i] = 1.0 / (1.0 + exp(-(double)ext[i]));
    expect_close("sigmoid_forward saturates at +-200 without NaN/Inf", EY, NULL, eref, 1e-6);
    buf_free(EX), buf_free(EY);

    if (n <= 4096) { /* FD through the projection loss with r = dy */
        UnaryCtx c = {.x = X, .y = Y, .r = dy, .op = 0};
        buf_set(DX, dx0);
        be->relu_forward(X.d, Y.d, n);
        be->relu_backward(DY.d, Y.d, DX.d, n);
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("relu_backward n=%zu vs finite differences", n), unary_loss, &c, x, X, an,
                  1e-3, 300);
        free(an);
        c.op = 1;
        buf_set(DX, dx0);
        be->sigmoid_forward(X.d, Y.d, n);
        be->sigmoid_backward(DY.d, Y.d, DX.d, n);
        an = grad_delta(DX, dx0);
        expect_fd(nm("sigmoid_backward n=%zu vs finite differences", n), unary_loss, &c, x, X, an,
                  1e-2, 300);
        free(an);
    }
    buf_free(X), buf_free(Y), buf_free(DY), buf_free(DX);
    free(x), free(dy), free(dx0), free(ref), free(gref);
}

static void test_binary_ops(size_t n) {
    float *a = host_random(n, -1, 1), *b = host_random(n, -1, 1);
    Buf A = buf_from(a, n), B = buf_from(b, n), Y = buf_new(n);
    double *ref = host_zeros_d(n);

    be->add(A.d, B.d, Y.d, n);
    for (size_t i = 0; i < n; i++) ref[i] = (double)a[i] + b[i];
    expect_close(nm("add n=%zu", n), Y, NULL, ref, 1e-7);
    be->add_relu(A.d, B.d, Y.d, n);
    for (size_t i = 0; i < n; i++) ref[i] = fmax((double)a[i] + b[i], 0.0);
    expect_close(nm("add_relu n=%zu", n), Y, NULL, ref, 1e-7);

    buf_set(Y, b);
    be->axpy(-0.37f, A.d, Y.d, n);
    for (size_t i = 0; i < n; i++) ref[i] = b[i] - 0.37 * a[i];
    expect_close(nm("axpy n=%zu", n), Y, NULL, ref, 1e-6);
    buf_set(Y, b);
    be->scale(Y.d, 1.7f, n);
    for (size_t i = 0; i < n; i++) ref[i] = 1.7 * b[i];
    expect_close(nm("scale n=%zu", n), Y, NULL, ref, 1e-6);

    /* in place: y == a */
    buf_set(Y, a);
    be->add(Y.d, B.d, Y.d, n);
    for (size_t i = 0; i < n; i++) ref[i] = (double)a[i] + b[i];
    expect_close(nm("add in place n=%zu", n), Y, NULL, ref, 1e-7);
    expect_unchanged(nm("add leaves its inputs unchanged n=%zu", n), B, b);
    buf_free(A), buf_free(B), buf_free(Y);
    free(a), free(b), free(ref);
}

static void test_dropout(size_t n, float p, uint64_t seed) {
    float *x = host_random_away_from_zero(n, 0.01f); /* no zeros: y == 0 means dropped */
    float *dy = host_random(n, -1, 1), *dx0 = host_random(n, -1, 1);
    Buf X = buf_from(x, n), Y = buf_new(n), DY = buf_from(dy, n), DX = buf_from(dx0, n);
    float *y = malloc(n * sizeof(float));
    double *ref = host_zeros_d(n), *gref = host_zeros_d(n);

    be->dropout_forward(X.d, Y.d, n, p, seed);
    buf_get(Y, y);
    size_t kept = 0, rule_mismatch = 0;
    for (size_t i = 0; i < n; i++) {
        int keep = rng_uniform(seed, i) >= p;
        kept += y[i] != 0.0f;
        rule_mismatch += keep != (y[i] != 0.0f);
        ref[i] = keep ? (double)x[i] / (1.0 - p) : 0.0;
        gref[i] = keep ? (double)dy[i] / (1.0 - p) : 0.0;
    }
    double frac = (double)kept / n, sigma = sqrt(p * (1.0 - p) / n);
    CHECK(nm("dropout p=%.2f n=%zu keeps ~1-p", p, n), fabs(frac - (1.0 - p)) <= 5 * sigma + 1e-9,
          "kept fraction %.5f, want %.5f +- %.5f", frac, 1.0 - p, 5 * sigma);
    CHECK(nm("dropout p=%.2f n=%zu mask is keep = rng_uniform(seed, i) >= p", p, n),
          rule_mismatch == 0, "%zu elements disagree with the rng rule", rule_mismatch);
    expect_close(nm("dropout_forward p=%.2f n=%zu scales kept by 1/(1-p)", p, n), Y, NULL, ref,
                 1e-6);
    be->dropout_backward(DY.d, DX.d, n, p, seed);
    expect_close(nm("dropout_backward p=%.2f n=%zu same mask (+= into nonzero dx)", p, n), DX, dx0,
                 gref, 1e-6);
    if (n <= 4096) {
        UnaryCtx c = {.x = X, .y = Y, .r = dy, .op = 2, .p = p, .seed = seed};
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("dropout_backward p=%.2f n=%zu vs finite differences", p, n), unary_loss, &c,
                  x, X, an, 1e-2, 300);
        free(an);
    }
    /* another seed, another mask */
    Buf Y2 = buf_new(n);
    be->dropout_forward(X.d, Y2.d, n, p, seed + 1);
    float *y2 = malloc(n * sizeof(float));
    buf_get(Y2, y2);
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) differ += (y[i] != 0.0f) != (y2[i] != 0.0f);
    CHECK(nm("dropout p=%.2f n=%zu another seed gives another mask", p, n), differ > 0,
          "masks of seeds %llu and %llu are identical", (unsigned long long)seed,
          (unsigned long long)seed + 1);
    /* p = 0: plain copy, backward plain add */
    be->dropout_forward(X.d, Y.d, n, 0.0f, seed);
    for (size_t i = 0; i < n; i++) ref[i] = x[i], gref[i] = dy[i];
    expect_close(nm("dropout_forward p=0 n=%zu is a copy", n), Y, NULL, ref, 0);
    buf_set(DX, dx0);
    be->dropout_backward(DY.d, DX.d, n, 0.0f, seed);
    expect_close(nm("dropout_backward p=0 n=%zu adds dy", n), DX, dx0, gref, 1e-6);
    buf_free(X), buf_free(Y), buf_free(Y2), buf_free(DY), buf_free(DX);
    free(x), free(y), free(y2), free(dy), free(dx0), free(ref), free(gref);
}

/* ------------------------------------------------------------------------------------------ */
/* channel affine (FrozenBatchNorm), x: [C, N]                                                */

typedef struct {
    Buf x, scale, shift, y;
    const float *r;
    int C, relu;
    size_t N;
} AffineCtx;

static double affine_loss(void *ctx) {
    AffineCtx *c = ctx;
    be->channel_affine(c->x.d, c->scale.d, c->shift.d, c->y.d, c->C, c->N, c->relu);
    return projected_loss(c->y, c->r);
}

static void test_channel_affine(int C, size_t N, int relu, int fd) {
    const size_t n = (size_t)C * N;
    float *scale = host_random(C, 0.5f, 1.5f), *shift = host_random(C, -0.5f, 0.5f);
    for (int c = 0; c < C; c++)
        if (irand(2)) scale[c] = -scale[c];
    float *x = host_random(n, -1, 1);
    for (int c = 0; c < C; c++) /* keep x*scale+shift away from the ReLU kink */
        for (size_t i = 0; i < N; i++) {
            float *xi = &x[(size_t)c * N + i];
            while (fabsf(*xi * scale[c] + shift[c]) < 0.05f) *xi = urand(-1, 1);
        }
    float *dy = host_random(n, -1, 1), *dx0 = host_random(n, -1, 1);
    Buf X = buf_from(x, n), S = buf_from(scale, C), T = buf_from(shift, C), Y = buf_new(n);
    Buf DY = buf_from(dy, n), DX = buf_from(dx0, n);
    double *ref = host_zeros_d(n), *gref = host_zeros_d(n);
    for (int c = 0; c < C; c++)
        for (size_t i = 0; i < N; i++) {
            size_t k = (size_t)c * N + i;
            double v = (double)x[k] * scale[c] + shift[c];
            int on = !relu || v > 0;
            ref[k] = relu && v < 0 ? 0 : v;
            gref[k] = on ? (double)dy[k] * scale[c] : 0;
        }
    char tag[160];
    snprintf(tag, sizeof tag, "C=%d N=%zu relu=%d", C, N, relu);
    be->channel_affine(X.d, S.d, T.d, Y.d, C, N, relu);
    expect_close(nm("channel_affine %s", tag), Y, NULL, ref, 1e-6);
    be->channel_affine_backward(DY.d, Y.d, S.d, DX.d, C, N, relu);
    expect_close(nm("channel_affine_backward %s (+= into nonzero dx)", tag), DX, dx0, gref, 1e-6);
    if (fd) {
        AffineCtx c = {.x = X, .scale = S, .shift = T, .y = Y, .r = dy, .C = C, .relu = relu, .N = N};
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("channel_affine_backward %s vs finite differences", tag), affine_loss, &c, x, X,
                  an, 1e-3, 300);
        free(an);
    }
    /* in place (y == x) */
    Buf XI = buf_from(x, n);
    be->channel_affine(XI.d, S.d, T.d, XI.d, C, N, relu);
    expect_close(nm("channel_affine in place %s", tag), XI, NULL, ref, 1e-6);
    buf_free(X), buf_free(S), buf_free(T), buf_free(Y), buf_free(DY), buf_free(DX), buf_free(XI);
    free(scale), free(shift), free(x), free(dy), free(dx0), free(ref), free(gref);
}

/* ------------------------------------------------------------------------------------------ */
/* max-pool                                                                                   */

/* PyTorch semantics: padding never wins, the first maximum in row-major window order wins. */
static void maxpool_ref(const PoolShape *s, const float *x, double *y, int32_t *arg) {
    for (int pl = 0; pl < s->C * s->B; pl++)
        for (int oy = 0; oy < s->Ho; oy++)
            for (int ox = 0; ox < s->Wo; ox++) {
                double best = -INFINITY;
                int at = -1;
                for (int i = 0; i < s->k; i++)
                    for (int j = 0; j < s->k; j++) {
                        int iy = oy * s->stride - s->pad + i, ix = ox * s->stride - s->pad + j;
                        if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) continue;
                        double v = x[(size_t)pl * s->H * s->W + iy * s->W + ix];
                        if (at < 0 || v > best) best = v, at = iy * s->W + ix;
                    }
                size_t o = ((size_t)pl * s->Ho + oy) * s->Wo + ox;
                y[o] = best;
                arg[o] = at;
            }
}

typedef struct {
    const PoolShape *s;
    Buf x, y;
    ByteBuf arg;
    const float *r;
} PoolCtx;

static double pool_loss(void *ctx) {
    PoolCtx *c = ctx;
    be->maxpool_forward(c->s, c->x.d, c->y.d, (int32_t *)c->arg.d);
    return projected_loss(c->y, c->r);
}

static void test_maxpool(int C, int B, int H, int W, int k, int stride, int pad, int fd) {
    PoolShape s = {.C = C, .B = B, .H = H, .W = W, .k = k, .stride = stride, .pad = pad};
    pool_shape_init(&s);
    const size_t nx = (size_t)C * B * H * W, ny = (size_t)C * B * s.Ho * s.Wo;
    /* distinct values 0.01 apart in random order: no ties, and a FD step of 1e-3 never changes
     * which element is the maximum */
    float *x = malloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; i++) x[i] = 0.01f * (float)i - 0.005f * (float)nx;
    for (size_t i = nx - 1; i > 0; i--) {
        size_t j = (size_t)irand((int)i + 1);
        float t = x[i];
        x[i] = x[j], x[j] = t;
    }
    float *dy = host_random(ny, -1, 1), *dx0 = host_random(nx, -1, 1);
    double *yref = host_zeros_d(ny), *dxref = host_zeros_d(nx);
    int32_t *aref = malloc(ny * sizeof(int32_t)), *arg = malloc(ny * sizeof(int32_t));
    maxpool_ref(&s, x, yref, aref);
    for (size_t o = 0; o < ny; o++) {
        size_t plane = o / ((size_t)s.Ho * s.Wo);
        dxref[plane * H * W + aref[o]] += dy[o];
    }
    Buf X = buf_from(x, nx), Y = buf_new(ny), DY = buf_from(dy, ny), DX = buf_from(dx0, nx);
    ByteBuf A = bytebuf_new(ny * sizeof(int32_t));
    char tag[160];
    snprintf(tag, sizeof tag, "C%d B%d %dx%d k%d s%d p%d", C, B, H, W, k, stride, pad);
    be->maxpool_forward(&s, X.d, Y.d, (int32_t *)A.d);
    expect_close(nm("maxpool_forward %s", tag), Y, NULL, yref, 0);
    be->download(arg, A.d, ny * sizeof(int32_t));
    size_t wrong = 0;
    for (size_t o = 0; o < ny; o++) wrong += arg[o] != aref[o];
    CHECK(nm("maxpool_forward argmax %s", tag), wrong == 0 && bytebuf_guards_ok(A),
          "%zu of %zu argmax indices differ, guards %s", wrong, ny,
          bytebuf_guards_ok(A) ? "intact" : "OVERWRITTEN");
    be->maxpool_backward(&s, DY.d, (int32_t *)A.d, DX.d);
    expect_close(nm("maxpool_backward %s (+= into nonzero dx)", tag), DX, dx0, dxref, 1e-6);
    if (fd) {
        PoolCtx c = {.s = &s, .x = X, .y = Y, .arg = A, .r = dy};
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("maxpool_backward %s vs finite differences", tag), pool_loss, &c, x, X, an,
                  1e-3, 400);
        free(an);
    }
    buf_free(X), buf_free(Y), buf_free(DY), buf_free(DX);
    be->free_bytes(A.base);
    free(x), free(dy), free(dx0), free(yref), free(dxref), free(aref), free(arg);
}

/* Many ties: values from {0, 1, 2} (or all equal). The first maximum in row-major window order
 * must win, as in PyTorch, whatever the window is clipped to. */
static void test_maxpool_ties(int C, int B, int H, int W, int k, int stride, int pad, int levels) {
    PoolShape s = {.C = C, .B = B, .H = H, .W = W, .k = k, .stride = stride, .pad = pad};
    pool_shape_init(&s);
    const size_t nx = (size_t)C * B * H * W, ny = (size_t)C * B * s.Ho * s.Wo;
    float *x = malloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; i++) x[i] = (float)irand(levels) - 1.0f;
    double *yref = host_zeros_d(ny);
    int32_t *aref = malloc(ny * sizeof(int32_t)), *arg = malloc(ny * sizeof(int32_t));
    maxpool_ref(&s, x, yref, aref);
    Buf X = buf_from(x, nx), Y = buf_new(ny);
    ByteBuf A = bytebuf_new(ny * sizeof(int32_t));
    be->maxpool_forward(&s, X.d, Y.d, (int32_t *)A.d);
    be->download(arg, A.d, ny * sizeof(int32_t));
    size_t wrong = 0;
    for (size_t o = 0; o < ny; o++) wrong += arg[o] != aref[o];
    char tag[160];
    snprintf(tag, sizeof tag, "C%d B%d %dx%d k%d s%d p%d, %d distinct values", C, B, H, W, k, stride,
             pad, levels);
    expect_close(nm("maxpool_forward ties %s", tag), Y, NULL, yref, 0);
    CHECK(nm("maxpool_forward ties: the first maximum wins (PyTorch) %s", tag),
          wrong == 0 && bytebuf_guards_ok(A), "%zu of %zu argmax indices differ", wrong, ny);
    buf_free(X), buf_free(Y);
    be->free_bytes(A.base);
    free(x), free(yref), free(aref), free(arg);
}

/* ------------------------------------------------------------------------------------------ */
/* convolution, CNHW                                                                          */

typedef struct {
    int B, Cin, H, W, Cout, kh, kw, stride, pad, dil, bias, fd;
} ConvCase;

static ConvShape conv_case_shape(const ConvCase *c) {
    ConvShape s = {.B = c->B, .Cin = c->Cin, .H = c->H, .W = c->W, .Cout = c->Cout, .kh = c->kh,
                   .kw = c->kw, .stride = c->stride, .pad = c->pad, .dil = c->dil};
    conv_shape_init(&s);
    return s;
}

/* Visits every (output position, weight tap) pair that reads a real input pixel. */
#define CONV_FOR_EACH_TAP(s, body)                                                               \
    for (int co = 0; co < (s)->Cout; co++)                                                       \
        for (int b = 0; b < (s)->B; b++)                                                         \
            for (int oy = 0; oy < (s)->Ho; oy++)                                                 \
                for (int ox = 0; ox < (s)->Wo; ox++)                                             \
                    for (int ci = 0; ci < (s)->Cin; ci++)                                        \
                        for (int i = 0; i < (s)->kh; i++)                                        \
                            for (int j = 0; j < (s)->kw; j++) {                                  \
                                int iy = oy * (s)->stride - (s)->pad + i * (s)->dil;             \
                                int ix = ox * (s)->stride - (s)->pad + j * (s)->dil;             \
                                if (iy < 0 || iy >= (s)->H || ix < 0 || ix >= (s)->W) continue;  \
                                size_t yi = (((size_t)co * (s)->B + b) * (s)->Ho + oy) * (s)->Wo + ox; \
                                size_t xi = (((size_t)ci * (s)->B + b) * (s)->H + iy) * (s)->W + ix;   \
                                size_t wi = (((size_t)co * (s)->Cin + ci) * (s)->kh + i) * (s)->kw + j; \
                                body                                                             \
                            }

static void conv_ref_forward(const ConvShape *s, const float *x, const float *w,
                             const float *bias, double *y) {
    size_t ny = (size_t)s->Cout * s->B * s->Ho * s->Wo, plane = (size_t)s->B * s->Ho * s->Wo;
    for (size_t o = 0; o < ny; o++) y[o] = bias ? bias[o / plane] : 0.0;
    CONV_FOR_EACH_TAP(s, { y[yi] += (double)w[wi] * x[xi]; })
}

static void conv_ref_backward(const ConvShape *s, const float *dy, const float *x, const float *w,
                              double *dx, double *dw, double *db) {
    size_t ny = (size_t)s->Cout * s->B * s->Ho * s->Wo, plane = (size_t)s->B * s->Ho * s->Wo;
    for (size_t o = 0; o < ny; o++) db[o / plane] += dy[o];
    CONV_FOR_EACH_TAP(s, {
        dx[xi] += (double)w[wi] * dy[yi];
        dw[wi] += (double)x[xi] * dy[yi];
    })
}

typedef struct {
    const ConvShape *s;
    Buf x, w, b, y;
    const float *r;
    int bias;
} ConvCtx;

static double conv_loss(void *ctx) {
    ConvCtx *c = ctx;
    be->conv2d_forward(c->s, c->x.d, c->w.d, c->bias ? c->b.d : NULL, c->y.d);
    return projected_loss(c->y, c->r);
}

static void test_conv(const ConvCase *cc, const char *variant) {
    ConvShape s = conv_case_shape(cc);
    const size_t nx = (size_t)s.Cin * s.B * s.H * s.W, ny = (size_t)s.Cout * s.B * s.Ho * s.Wo;
    const size_t nw = (size_t)s.Cout * s.Cin * s.kh * s.kw;
    float *x = host_random(nx, -1, 1), *w = host_random(nw, -1, 1), *b = host_random(s.Cout, -1, 1);
    float *dy = host_random(ny, -1, 1);
    float *dx0 = host_random(nx, -1, 1), *dw0 = host_random(nw, -1, 1);
    float *db0 = host_random(s.Cout, -1, 1);
    double *yref = host_zeros_d(ny), *dxref = host_zeros_d(nx), *dwref = host_zeros_d(nw);
    double *dbref = host_zeros_d(s.Cout);
    conv_ref_forward(&s, x, w, cc->bias ? b : NULL, yref);
    conv_ref_backward(&s, dy, x, w, dxref, dwref, dbref);

    Buf X = buf_from(x, nx), Wt = buf_from(w, nw), Bb = buf_from(b, s.Cout), Y = buf_new(ny);
    Buf DY = buf_from(dy, ny), DX = buf_from(dx0, nx), DW = buf_from(dw0, nw);
    Buf DB = buf_from(db0, s.Cout);
    char tag[160];
    snprintf(tag, sizeof tag, "B%d Cin%d %dx%d Cout%d k%dx%d s%d p%d d%d%s%s", s.B, s.Cin, s.H, s.W,
                         s.Cout, s.kh, s.kw, s.stride, s.pad, s.dil, cc->bias ? " bias" : "",
                         variant);
    be->conv2d_forward(&s, X.d, Wt.d, cc->bias ? Bb.d : NULL, Y.d);
    expect_close(nm("conv2d_forward %s", tag), Y, NULL, yref, TOL_FWD);
    be->conv2d_backward_data(&s, DY.d, Wt.d, DX.d);
    expect_close(nm("conv2d_backward_data %s (+= into nonzero dx)", tag), DX, dx0, dxref, TOL_FWD);
    be->conv2d_backward_weight(&s, DY.d, X.d, DW.d, DB.d);
    expect_close(nm("conv2d_backward_weight dw %s (+= into nonzero dw)", tag), DW, dw0, dwref,
                 TOL_FWD);
    expect_close(nm("conv2d_backward_weight dbias %s (+= into nonzero db)", tag), DB, db0, dbref,
                 TOL_FWD);
    expect_unchanged(nm("conv2d leaves x unchanged %s", tag), X, x);
    expect_unchanged(nm("conv2d leaves w unchanged %s", tag), Wt, w);
    expect_unchanged(nm("conv2d leaves dy unchanged %s", tag), DY, dy);

    if (cc->fd) {
        ConvCtx c = {.s = &s, .x = X, .w = Wt, .b = Bb, .y = Y, .r = dy, .bias = cc->bias};
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("conv2d_backward_data %s vs finite differences", tag), conv_loss, &c, x, X, an,
                  1e-2, 200);
        free(an);
        an = grad_delta(DW, dw0);
        expect_fd(nm("conv2d_backward_weight dw %s vs finite differences", tag), conv_loss, &c, w,
                  Wt, an, 1e-2, 200);
        free(an);
        if (cc->bias) {
            an = grad_delta(DB, db0);
            expect_fd(nm("conv2d_backward_weight dbias %s vs finite differences", tag), conv_loss,
                      &c, b, Bb, an, 1e-2, 200);
            free(an);
        }
    }
    /* NULL gradients are skipped */
    be->conv2d_backward_data(&s, DY.d, Wt.d, NULL);
    be->conv2d_backward_weight(&s, DY.d, X.d, NULL, NULL);
    buf_free(X), buf_free(Wt), buf_free(Bb), buf_free(Y), buf_free(DY), buf_free(DX), buf_free(DW);
    buf_free(DB);
    free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0);
    free(yref), free(dxref), free(dwref), free(dbref);
}

static void test_convs(void) {
    static const ConvCase cases[] = {
        /* B Cin  H   W Cout kh kw s  p  d bias fd */
        {1, 3, 7, 9, 4, 1, 1, 1, 0, 1, 1, 1},     /* 1x1: x is the column matrix */
        {3, 5, 8, 7, 6, 1, 1, 2, 0, 1, 0, 1},     /* 1x1 stride 2 (downsample) */
        {3, 4, 9, 11, 5, 3, 3, 1, 1, 1, 1, 1},    /* 3x3 same */
        {1, 4, 6, 5, 2, 3, 3, 1, 0, 1, 0, 1},     /* 3x3 valid */
        {3, 3, 10, 12, 4, 3, 3, 2, 1, 1, 1, 1},   /* 3x3 stride 2 */
        {3, 2, 10, 12, 3, 3, 3, 2, 1, 2, 0, 1},   /* dilation 2, stride 2 */
        {2, 3, 9, 8, 3, 3, 3, 1, 3, 2, 1, 1},     /* dilation 2, pad 3 */
        {1, 3, 13, 10, 5, 7, 7, 2, 3, 1, 1, 1},   /* 7x7 stem */
        {3, 2, 15, 17, 3, 7, 7, 2, 3, 1, 0, 0},   /* 7x7 stem, batch 3 */
        {3, 3, 5, 7, 4, 1, 3, 1, 1, 1, 1, 1},     /* 1x3, pad 1 */
        {2, 3, 6, 5, 2, 2, 2, 3, 0, 1, 1, 1},     /* 2x2 stride 3 */
        {2, 16, 20, 17, 24, 3, 3, 1, 1, 1, 1, 0}, /* large enough for the threaded loops */
        {2, 32, 16, 16, 16, 1, 1, 1, 0, 1, 0, 0}, /* threaded 1x1 */
        {2, 24, 17, 15, 32, 1, 1, 2, 0, 1, 1, 0}, /* threaded 1x1 stride 2 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_conv(&cases[i], "");
    /* Column chunks of a few output rows, forced with small limits: chunk boundaries inside an
     * image and across images, each chunk writing its own columns of y / reading its own of dy. */
    static const ConvCase split[] = {
        {3, 4, 9, 11, 5, 3, 3, 1, 1, 1, 1, 1},
        {3, 5, 8, 7, 6, 1, 1, 2, 0, 1, 1, 0},
        {2, 3, 13, 10, 5, 7, 7, 2, 3, 1, 0, 0},
        {3, 2, 10, 12, 3, 3, 3, 2, 1, 2, 1, 0},
    };
    static const int rows_per_chunk[] = {1, 4, 7};
    for (size_t r = 0; r < sizeof rows_per_chunk / sizeof rows_per_chunk[0]; r++)
        for (size_t i = 0; i < sizeof split / sizeof split[0]; i++) {
            ConvShape s = conv_case_shape(&split[i]);
            cpu_conv_set_col_limit((size_t)s.Cin * s.kh * s.kw * s.Wo * rows_per_chunk[r]);
            test_conv(&split[i], nm(" (%d output rows/chunk)", rows_per_chunk[r]));
        }
    cpu_conv_set_col_limit(0);
}

/* ------------------------------------------------------------------------------------------ */
/* dense: gemm, linear, transpose                                                             */

static void test_gemm(int transA, int transB, int M, int N, int K, int batch, float alpha,
                      float beta) {
    /* leading dimensions wider than needed and batch strides with gaps, as views use them */
    const int rowsA = transA ? K : M, colsA = transA ? M : K;
    const int rowsB = transB ? N : K, colsB = transB ? K : N;
    const int lda = colsA + 3, ldb = colsB + 2, ldc = N + 1;
    const long sA = (long)rowsA * lda + 5, sB = (long)rowsB * ldb + 7, sC = (long)M * ldc + 4;
    const size_t nA = (size_t)sA * batch, nB = (size_t)sB * batch, nC = (size_t)sC * batch;
    float *a = host_random(nA, -1, 1), *b = host_random(nB, -1, 1), *c0 = host_random(nC, -1, 1);
    double *ref = to_double(c0, nC); /* untouched padding keeps its value */
    for (int t = 0; t < batch; t++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                double acc = 0;
                for (int k = 0; k < K; k++) {
                    double av = transA ? a[t * sA + (size_t)k * lda + i] : a[t * sA + (size_t)i * lda + k];
                    double bv = transB ? b[t * sB + (size_t)j * ldb + k] : b[t * sB + (size_t)k * ldb + j];
                    acc += av * bv;
                }
                size_t ci = t * sC + (size_t)i * ldc + j;
                ref[ci] = alpha * acc + beta * (double)c0[ci];
            }
    Buf A = buf_from(a, nA), B = buf_from(b, nB), C = buf_from(c0, nC);
    be->gemm(transA, transB, M, N, K, alpha, A.d, lda, sA, B.d, ldb, sB, beta, C.d, ldc, sC, batch);
    expect_close(nm("gemm tA%d tB%d M%d N%d K%d batch%d alpha%.2f beta%.2f (padded ld, strides)",
                    transA, transB, M, N, K, batch, alpha, beta),
                 C, NULL, ref, TOL_FWD);
    buf_free(A), buf_free(B), buf_free(C);
    free(a), free(b), free(c0), free(ref);
}

typedef struct {
    Buf x, w, b, y;
    const float *r;
    int T, In, O, bias;
} LinearCtx;

static double linear_loss(void *ctx) {
    LinearCtx *c = ctx;
    be->linear_forward(c->x.d, c->w.d, c->bias ? c->b.d : NULL, c->y.d, c->T, c->In, c->O);
    return projected_loss(c->y, c->r);
}

static void test_linear(int T, int In, int O, int bias, int fd) {
    float *x = host_random((size_t)T * In, -1, 1), *w = host_random((size_t)O * In, -1, 1);
    float *b = host_random(O, -1, 1), *dy = host_random((size_t)T * O, -1, 1);
    float *dx0 = host_random((size_t)T * In, -1, 1), *dw0 = host_random((size_t)O * In, -1, 1);
    float *db0 = host_random(O, -1, 1);
    double *yref = host_zeros_d((size_t)T * O), *dxref = host_zeros_d((size_t)T * In);
    double *dwref = host_zeros_d((size_t)O * In), *dbref = host_zeros_d(O);
    for (int t = 0; t < T; t++)
        for (int o = 0; o < O; o++) {
            double acc = bias ? b[o] : 0;
            for (int i = 0; i < In; i++) acc += (double)x[(size_t)t * In + i] * w[(size_t)o * In + i];
            yref[(size_t)t * O + o] = acc;
            double g = dy[(size_t)t * O + o];
            dbref[o] += g;
            for (int i = 0; i < In; i++) {
                dxref[(size_t)t * In + i] += g * w[(size_t)o * In + i];
                dwref[(size_t)o * In + i] += g * x[(size_t)t * In + i];
            }
        }
    Buf X = buf_from(x, (size_t)T * In), W = buf_from(w, (size_t)O * In), B = buf_from(b, O);
    Buf Y = buf_new((size_t)T * O), DY = buf_from(dy, (size_t)T * O);
    Buf DX = buf_from(dx0, (size_t)T * In), DW = buf_from(dw0, (size_t)O * In), DB = buf_from(db0, O);
    char tag[160];
    snprintf(tag, sizeof tag, "T%d I%d O%d%s", T, In, O, bias ? " bias" : "");
    be->linear_forward(X.d, W.d, bias ? B.d : NULL, Y.d, T, In, O);
    expect_close(nm("linear_forward %s", tag), Y, NULL, yref, TOL_FWD);
    be->linear_backward(DY.d, X.d, W.d, DX.d, DW.d, DB.d, T, In, O);
    expect_close(nm("linear_backward dx %s (+= into nonzero dx)", tag), DX, dx0, dxref, TOL_FWD);
    expect_close(nm("linear_backward dw %s (+= into nonzero dw)", tag), DW, dw0, dwref, TOL_FWD);
    expect_close(nm("linear_backward db %s (+= into nonzero db)", tag), DB, db0, dbref, TOL_FWD);
    if (fd) {
        LinearCtx c = {.x = X, .w = W, .b = B, .y = Y, .r = dy, .T = T, .In = In, .O = O, .bias = bias};
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("linear_backward dx %s vs finite differences", tag), linear_loss, &c, x, X, an,
                  1e-2, 200);
        free(an);
        an = grad_delta(DW, dw0);
        expect_fd(nm("linear_backward dw %s vs finite differences", tag), linear_loss, &c, w, W, an,
                  1e-2, 200);
        free(an);
        if (bias) {
            an = grad_delta(DB, db0);
            expect_fd(nm("linear_backward db %s vs finite differences", tag), linear_loss, &c, b, B,
                      an, 1e-2, 200);
            free(an);
        }
    }
    /* NULL gradients are skipped; only db requested */
    buf_set(DB, db0);
    be->linear_backward(DY.d, X.d, W.d, NULL, NULL, DB.d, T, In, O);
    expect_close(nm("linear_backward db only (dx, dw NULL) %s", tag), DB, db0, dbref, TOL_FWD);
    buf_free(X), buf_free(W), buf_free(B), buf_free(Y), buf_free(DY), buf_free(DX), buf_free(DW);
    buf_free(DB);
    free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0);
    free(yref), free(dxref), free(dwref), free(dbref);
}

static void test_transpose(int batch, int R, int C) {
    const size_t n = (size_t)batch * R * C;
    float *x = host_random(n, -1, 1);
    double *ref = host_zeros_d(n);
    for (int t = 0; t < batch; t++)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++)
                ref[(size_t)t * R * C + (size_t)c * R + r] = x[(size_t)t * R * C + (size_t)r * C + c];
    Buf X = buf_from(x, n), Y = buf_new(n);
    be->transpose(X.d, Y.d, batch, R, C);
    expect_close(nm("transpose batch%d %dx%d", batch, R, C), Y, NULL, ref, 0);
    buf_free(X), buf_free(Y);
    free(x), free(ref);
}

/* ------------------------------------------------------------------------------------------ */
/* LayerNorm, softmax                                                                         */

typedef struct {
    Buf x, g, b, y, mean, rstd;
    const float *r;
    int T, D;
    float eps;
} LnCtx;

static double ln_loss(void *ctx) {
    LnCtx *c = ctx;
    be->layernorm_forward(c->x.d, c->g.d, c->b.d, c->y.d, c->mean.d, c->rstd.d, c->T, c->D, c->eps);
    return projected_loss(c->y, c->r);
}

static void test_layernorm(int T, int D, float offset, int fd) {
    const size_t n = (size_t)T * D;
    const float eps = 1e-5f;
    float *x = host_random(n, -1, 1);
    for (size_t i = 0; i < n; i++) x[i] += offset; /* a large mean tests the variance pass */
    float *g = host_random(D, 0.5f, 1.5f), *b = host_random(D, -0.5f, 0.5f);
    float *dy = host_random(n, -1, 1), *dx0 = host_random(n, -1, 1);
    float *dg0 = host_random(D, -1, 1), *db0 = host_random(D, -1, 1);
    double *yref = host_zeros_d(n), *mref = host_zeros_d(T), *rref = host_zeros_d(T);
    double *dxref = host_zeros_d(n), *dgref = host_zeros_d(D), *dbref = host_zeros_d(D);
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * D;
        double mu = 0, var = 0;
        for (int d = 0; d < D; d++) mu += xt[d];
        mu /= D;
        for (int d = 0; d < D; d++) var += (xt[d] - mu) * (xt[d] - mu);
        var /= D; /* biased, as PyTorch */
        double rs = 1.0 / sqrt(var + eps);
        mref[t] = mu, rref[t] = rs;
        double sum_g = 0, sum_gx = 0;
        for (int d = 0; d < D; d++) {
            double xh = (xt[d] - mu) * rs, gg = (double)dy[(size_t)t * D + d] * g[d];
            yref[(size_t)t * D + d] = xh * g[d] + b[d];
            dgref[d] += dy[(size_t)t * D + d] * xh;
            dbref[d] += dy[(size_t)t * D + d];
            sum_g += gg, sum_gx += gg * xh;
        }
        for (int d = 0; d < D; d++) {
            double xh = (xt[d] - mu) * rs, gg = (double)dy[(size_t)t * D + d] * g[d];
            dxref[(size_t)t * D + d] = rs * (gg - sum_g / D - xh * sum_gx / D);
        }
    }
    Buf X = buf_from(x, n), G = buf_from(g, D), B = buf_from(b, D), Y = buf_new(n);
    Buf M = buf_new(T), R = buf_new(T), DY = buf_from(dy, n), DX = buf_from(dx0, n);
    Buf DG = buf_from(dg0, D), DB = buf_from(db0, D);
    char tag[160];
    snprintf(tag, sizeof tag, "T%d D%d mean%+g", T, D, offset);
    be->layernorm_forward(X.d, G.d, B.d, Y.d, M.d, R.d, T, D, eps);
    expect_close(nm("layernorm_forward y %s", tag), Y, NULL, yref, TOL_FWD);
    expect_close(nm("layernorm_forward mean %s", tag), M, NULL, mref, 1e-6);
    expect_close(nm("layernorm_forward rstd %s", tag), R, NULL, rref, 1e-6);
    be->layernorm_backward(DY.d, X.d, M.d, R.d, G.d, DX.d, DG.d, DB.d, T, D);
    /* a mean of 100 costs x - mean its low bits in float: errors reach ~5e-6, still < TOL_FWD */
    expect_close(nm("layernorm_backward dx %s (+= into nonzero dx)", tag), DX, dx0, dxref, TOL_FWD);
    expect_close(nm("layernorm_backward dgamma %s (+= into nonzero)", tag), DG, dg0, dgref, TOL_FWD);
    expect_close(nm("layernorm_backward dbeta %s (+= into nonzero)", tag), DB, db0, dbref, TOL_FWD);
    if (fd) {
        LnCtx c = {.x = X, .g = G, .b = B, .y = Y, .mean = M, .rstd = R, .r = dy, .T = T, .D = D,
                   .eps = eps};
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("layernorm_backward dx %s vs finite differences", tag), ln_loss, &c, x, X, an,
                  1e-2, 200);
        free(an);
        an = grad_delta(DG, dg0);
        expect_fd(nm("layernorm_backward dgamma %s vs finite differences", tag), ln_loss, &c, g, G,
                  an, 1e-2, 200);
        free(an);
        an = grad_delta(DB, db0);
        expect_fd(nm("layernorm_backward dbeta %s vs finite differences", tag), ln_loss, &c, b, B,
                  an, 1e-2, 200);
        free(an);
    }
    buf_free(X), buf_free(G), buf_free(B), buf_free(Y), buf_free(M), buf_free(R), buf_free(DY);
    buf_free(DX), buf_free(DG), buf_free(DB);
    free(x), free(g), free(b), free(dy), free(dx0), free(dg0), free(db0);
    free(yref), free(mref), free(rref), free(dxref), free(dgref), free(dbref);
}

typedef struct {
    Buf x, y;
    const float *r;
    int R, N;
} SoftmaxCtx;

static double softmax_loss(void *ctx) {
    SoftmaxCtx *c = ctx;
    be->softmax_forward(c->x.d, c->y.d, c->R, c->N);
    return projected_loss(c->y, c->r);
}

static void softmax_ref_row(const float *x, int N, double *y) {
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < N; j++) mx = fmax(mx, x[j]);
    for (int j = 0; j < N; j++) sum += y[j] = exp(x[j] - mx);
    for (int j = 0; j < N; j++) y[j] /= sum;
}

static void test_softmax(int R, int N, float spread, int fd) {
    const size_t n = (size_t)R * N;
    float *x = host_random(n, -spread, spread), *dy = host_random(n, -1, 1);
    float *dx0 = host_random(n, -1, 1);
    for (int r = 0; r < R; r += 3) x[(size_t)r * N] += 80.0f; /* exp would overflow unshifted */
    double *yref = host_zeros_d(n), *dxref = host_zeros_d(n);
    for (int r = 0; r < R; r++) {
        double *yr = yref + (size_t)r * N, dot = 0;
        softmax_ref_row(x + (size_t)r * N, N, yr);
        for (int j = 0; j < N; j++) dot += dy[(size_t)r * N + j] * yr[j];
        for (int j = 0; j < N; j++) dxref[(size_t)r * N + j] = yr[j] * (dy[(size_t)r * N + j] - dot);
    }
    Buf X = buf_from(x, n), Y = buf_new(n), DY = buf_from(dy, n), DX = buf_from(dx0, n);
    char tag[160];
    snprintf(tag, sizeof tag, "R%d N%d spread%g", R, N, spread);
    be->softmax_forward(X.d, Y.d, R, N);
    expect_close(nm("softmax_forward %s", tag), Y, NULL, yref, TOL_FWD);
    be->softmax_backward(DY.d, Y.d, DX.d, R, N);
    expect_close(nm("softmax_backward %s (+= into nonzero dx)", tag), DX, dx0, dxref, TOL_FWD);
    if (fd) {
        SoftmaxCtx c = {.x = X, .y = Y, .r = dy, .R = R, .N = N};
        float *an = grad_delta(DX, dx0);
        expect_fd(nm("softmax_backward %s vs finite differences", tag), softmax_loss, &c, x, X, an,
                  1e-2, 300);
        free(an);
    }
    /* in place */
    Buf XI = buf_from(x, n);
    be->softmax_forward(XI.d, XI.d, R, N);
    expect_close(nm("softmax_forward in place %s", tag), XI, NULL, yref, TOL_FWD);
    buf_free(X), buf_free(Y), buf_free(DY), buf_free(DX), buf_free(XI);
    free(x), free(dy), free(dx0), free(yref), free(dxref);
}

/* ------------------------------------------------------------------------------------------ */
/* attention                                                                                  */

typedef struct {
    int B, Sq, Sk, D, H;
    int packed;              /* q, k, v: column blocks of one [B*S, 3D] matrix (self-attention) */
    int pad_q, pad_k, pad_v; /* unpacked: ld = D + pad (extra columns the op must ignore) */
    int mask;                /* 0 none, 1 random key padding, 2 as 1 and batch 0 all padding */
    float dropout;
    int fd;
} AttnCase;

/* Reference forward and backward in double. q/k/v (and dq/dk/dv) point at element 0 of their
 * views, with the leading dimensions of s; dout: [B, Sq, D]. */
static void attn_ref(const AttnShape *s, const float *q, const float *k, const float *v,
                     const uint8_t *mask, const float *dout, double *probs, double *out,
                     double *dq, double *dk, double *dv) {
    const int dh = s->D / s->H;
    const double scale = 1.0 / sqrt((double)dh);
    const double keep_scale = 1.0 / (1.0 - s->dropout);
    double *P = host_zeros_d((size_t)s->Sq * s->Sk), *Pd = host_zeros_d((size_t)s->Sq * s->Sk);
    double *dS = host_zeros_d((size_t)s->Sq * s->Sk);
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++) {
            const float *qb = q + (size_t)b * s->Sq * s->ldq + h * dh;
            const float *kb = k + (size_t)b * s->Sk * s->ldk + h * dh;
            const float *vb = v + (size_t)b * s->Sk * s->ldv + h * dh;
            const float *gb = dout + (size_t)b * s->Sq * s->D + h * dh;
            const size_t base = ((size_t)b * s->H + h) * s->Sq * s->Sk;
            for (int i = 0; i < s->Sq; i++) {
                double *p = P + (size_t)i * s->Sk, mx = -INFINITY, sum = 0;
                for (int j = 0; j < s->Sk; j++) {
                    double acc = 0;
                    for (int d = 0; d < dh; d++)
                        acc += (double)qb[(size_t)i * s->ldq + d] * kb[(size_t)j * s->ldk + d];
                    p[j] = (mask && mask[(size_t)b * s->Sk + j]) ? -INFINITY : acc * scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < s->Sk; j++) {
                    p[j] = mx == -INFINITY ? 0.0 : exp(p[j] - mx);
                    sum += p[j];
                }
                for (int j = 0; j < s->Sk; j++) {
                    p[j] = sum > 0 ? p[j] / sum : 0.0;
                    probs[base + (size_t)i * s->Sk + j] = p[j];
                    int keep = s->dropout <= 0 ||
                               rng_uniform(s->seed, base + (size_t)i * s->Sk + j) >= s->dropout;
                    Pd[(size_t)i * s->Sk + j] = keep ? p[j] * (s->dropout > 0 ? keep_scale : 1) : 0;
                }
                for (int d = 0; d < dh; d++) {
                    double acc = 0;
                    for (int j = 0; j < s->Sk; j++)
                        acc += Pd[(size_t)i * s->Sk + j] * vb[(size_t)j * s->ldv + d];
                    out[((size_t)b * s->Sq + i) * s->D + h * dh + d] = acc;
                }
            }
            /* backward */
            for (int i = 0; i < s->Sq; i++) {
                double dot = 0;
                for (int j = 0; j < s->Sk; j++) {
                    double dpd = 0;
                    for (int d = 0; d < dh; d++)
                        dpd += (double)gb[(size_t)i * s->D + d] * vb[(size_t)j * s->ldv + d];
                    double p = P[(size_t)i * s->Sk + j];
                    int keep = s->dropout <= 0 ||
                               rng_uniform(s->seed, base + (size_t)i * s->Sk + j) >= s->dropout;
                    double dp = keep ? dpd * (s->dropout > 0 ? keep_scale : 1) : 0;
                    dS[(size_t)i * s->Sk + j] = dp;
                    dot += dp * p;
                }
                for (int j = 0; j < s->Sk; j++) {
                    size_t e = (size_t)i * s->Sk + j;
                    dS[e] = P[e] * (dS[e] - dot);
                }
            }
            double *dqb = dq + (size_t)b * s->Sq * s->ldq + h * dh;
            double *dkb = dk + (size_t)b * s->Sk * s->ldk + h * dh;
            double *dvb = dv + (size_t)b * s->Sk * s->ldv + h * dh;
            for (int i = 0; i < s->Sq; i++)
                for (int j = 0; j < s->Sk; j++) {
                    double g = dS[(size_t)i * s->Sk + j], pd = Pd[(size_t)i * s->Sk + j];
                    for (int d = 0; d < dh; d++) {
                        dqb[(size_t)i * s->ldq + d] += scale * g * kb[(size_t)j * s->ldk + d];
                        dkb[(size_t)j * s->ldk + d] += scale * g * qb[(size_t)i * s->ldq + d];
                        dvb[(size_t)j * s->ldv + d] += pd * gb[(size_t)i * s->D + d];
                    }
                }
        }
    free(P), free(Pd), free(dS);
}

/* One input role (q, k or v): host copy, backend buffer, offset of the view, gradient. */
typedef struct {
    float *host;
    Buf buf;
    size_t off;
    float *grad0;
    Buf grad;
    double *gref;
} AttnRole;

typedef struct {
    const AttnShape *s;
    AttnRole *q, *k, *v;
    ByteBuf mask;
    int use_mask;
    Buf probs, out;
    const float *r;
} AttnCtx;

static double attn_loss(void *ctx) {
    AttnCtx *c = ctx;
    be->attention_forward(c->s, c->q->buf.d + c->q->off, c->k->buf.d + c->k->off,
                          c->v->buf.d + c->v->off, c->use_mask ? c->mask.d : NULL, c->probs.d,
                          c->out.d);
    return projected_loss(c->out, c->r);
}

static AttnRole attn_role_new(size_t n, size_t off) {
    AttnRole r = {.off = off};
    r.host = host_random(n, -1, 1);
    r.buf = buf_from(r.host, n);
    r.grad0 = host_random(n, -1, 1);
    r.grad = buf_from(r.grad0, n);
    r.gref = host_zeros_d(n);
    return r;
}
static void attn_role_free(AttnRole *r) {
    buf_free(r->buf), buf_free(r->grad);
    free(r->host), free(r->grad0), free(r->gref);
}

static void test_attention(const AttnCase *ac) {
    AttnShape s = {.B = ac->B, .Sq = ac->Sq, .Sk = ac->Sk, .D = ac->D, .H = ac->H,
                   .dropout = ac->dropout, .seed = 1000 + (uint64_t)irand(1 << 20)};
    AttnRole roles[3], *q, *k, *v;
    AttnRole kview, vview; /* packed: views of roles[0] at columns D and 2D */
    int nroles;
    if (ac->packed) { /* one [B*S, 3D] matrix; q, k, v start at columns 0, D, 2D */
        s.ldq = s.ldk = s.ldv = 3 * s.D;
        roles[0] = attn_role_new((size_t)s.B * s.Sq * 3 * s.D, 0);
        kview = roles[0], kview.off = (size_t)s.D;
        vview = roles[0], vview.off = (size_t)2 * s.D;
        q = &roles[0], k = &kview, v = &vview;
        nroles = 1;
    } else {
        s.ldq = s.D + ac->pad_q, s.ldk = s.D + ac->pad_k, s.ldv = s.D + ac->pad_v;
        roles[0] = attn_role_new((size_t)s.B * s.Sq * s.ldq, 0);
        roles[1] = attn_role_new((size_t)s.B * s.Sk * s.ldk, 0);
        roles[2] = attn_role_new((size_t)s.B * s.Sk * s.ldv, 0);
        q = &roles[0], k = &roles[1], v = &roles[2];
        nroles = 3;
    }
    const size_t np = (size_t)s.B * s.H * s.Sq * s.Sk, no = (size_t)s.B * s.Sq * s.D;
    uint8_t *mask = calloc((size_t)s.B * s.Sk, 1);
    for (int b = 0; ac->mask && b < s.B; b++) {
        for (int j = 1; j < s.Sk; j++) mask[(size_t)b * s.Sk + j] = urand(0, 1) < 0.3f;
        if (ac->mask == 2 && b == 0) memset(mask, 1, s.Sk);
    }
    ByteBuf M = bytebuf_new((size_t)s.B * s.Sk);
    be->upload(M.d, mask, (size_t)s.B * s.Sk);
    float *dout = host_random(no, -1, 1);
    double *pref = host_zeros_d(np), *oref = host_zeros_d(no);
    attn_ref(&s, q->host + q->off, k->host + k->off, v->host + v->off, ac->mask ? mask : NULL, dout,
             pref, oref, q->gref + q->off, k->gref + k->off, v->gref + v->off);
    Buf P = buf_new(np), O = buf_new(no), DO = buf_from(dout, no);
    char tag[160];
    snprintf(tag, sizeof tag, "B%d Sq%d Sk%d D%d H%d %s mask%d drop%.2f", s.B, s.Sq, s.Sk, s.D, s.H,
                         ac->packed ? "packed qkv ld=3D" : nm("ld %d/%d/%d", s.ldq, s.ldk, s.ldv),
                         ac->mask, s.dropout);
    const uint8_t *md = ac->mask ? M.d : NULL;
    be->attention_forward(&s, q->buf.d + q->off, k->buf.d + k->off, v->buf.d + v->off, md, P.d, O.d);
    expect_close(nm("attention_forward probs (before dropout) %s", tag), P, NULL, pref, TOL_FWD);
    expect_close(nm("attention_forward out %s", tag), O, NULL, oref, TOL_FWD);
    if (ac->mask) { /* padded keys get exactly zero probability, not merely a tiny one */
        float *ph = malloc(np * sizeof(float));
        buf_get(P, ph);
        size_t nonzero = 0;
        for (size_t e = 0; e < np; e++) {
            size_t j = e % s.Sk, b = e / ((size_t)s.H * s.Sq * s.Sk);
            nonzero += mask[b * s.Sk + j] && ph[e] != 0.0f;
        }
        CHECK(nm("attention_forward padded keys have probability exactly 0 %s", tag), nonzero == 0,
              "%zu probabilities of padded keys are not 0", nonzero);
        free(ph);
    }
    be->attention_backward(&s, DO.d, q->buf.d + q->off, k->buf.d + k->off, v->buf.d + v->off, P.d,
                           q->grad.d + q->off, k->grad.d + k->off, v->grad.d + v->off);
    static const char *names[3] = {"dq", "dk", "dv"};
    for (int r = 0; r < nroles; r++)
        expect_close(nm("attention_backward %s %s (+= into nonzero)",
                        ac->packed ? "dqkv" : names[r], tag),
                     roles[r].grad, roles[r].grad0, roles[r].gref, TOL_FWD);
    for (int r = 0; r < nroles; r++)
        expect_unchanged(nm("attention leaves %s unchanged %s", ac->packed ? "qkv" : names[r] + 1,
                            tag),
                         roles[r].buf, roles[r].host);

    if (ac->fd) {
        AttnCtx c = {.s = &s, .q = q, .k = k, .v = v, .mask = M, .use_mask = ac->mask != 0,
                     .probs = P, .out = O, .r = dout};
        for (int r = 0; r < nroles; r++) {
            float *an = grad_delta(roles[r].grad, roles[r].grad0);
            expect_fd(nm("attention_backward %s %s vs finite differences",
                         ac->packed ? "dqkv" : names[r], tag),
                      attn_loss, &c, roles[r].host, roles[r].buf, an, 1e-2, 300);
            free(an);
        }
        attn_loss(&c); /* P back to the unperturbed probabilities */
    }
    if (!ac->packed) { /* NULL gradients: dv only, then dq only */
        buf_set(v->grad, v->grad0);
        be->attention_backward(&s, DO.d, q->buf.d, k->buf.d, v->buf.d, P.d, NULL, NULL, v->grad.d);
        expect_close(nm("attention_backward dv only %s", tag), v->grad, v->grad0, v->gref, TOL_FWD);
        buf_set(q->grad, q->grad0);
        be->attention_backward(&s, DO.d, q->buf.d, k->buf.d, v->buf.d, P.d, q->grad.d, NULL, NULL);
        expect_close(nm("attention_backward dq only %s", tag), q->grad, q->grad0, q->gref, TOL_FWD);
    }
    for (int r = 0; r < nroles; r++) attn_role_free(&roles[r]);
    buf_free(P), buf_free(O), buf_free(DO);
    be->free_bytes(M.base);
    free(mask), free(dout), free(pref), free(oref);
}

static void test_attentions(void) {
    static const AttnCase cases[] = {
        /* B Sq Sk  D  H packed pad q/k/v mask drop  fd */
        {2, 5, 7, 8, 2, 0, 0, 0, 0, 0, 0.0f, 1},
        {3, 9, 9, 12, 3, 1, 0, 0, 0, 1, 0.0f, 1},  /* packed self-attention, key padding */
        {2, 4, 11, 8, 2, 0, 5, 8, 3, 1, 0.3f, 1},  /* cross-attention, ld > D, dropout */
        {3, 6, 6, 6, 3, 1, 0, 0, 0, 2, 0.2f, 1},   /* packed, batch 0 fully padded, dropout */
        {2, 50, 64, 64, 8, 0, 64, 0, 16, 1, 0.1f, 0}, /* threaded softmax / dropout loops */
        {2, 40, 40, 32, 4, 1, 0, 0, 0, 2, 0.1f, 0},   /* batch 0 fully padded */
        {1, 100, 120, 16, 2, 0, 0, 0, 0, 1, 0.2f, 0}, /* a (b, h) block spans several work items */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        AttnCase c = cases[i];
        if (c.packed) c.Sk = c.Sq; /* self-attention: keys are the queries' tokens */
        test_attention(&c);
    }
}

/* The CPU backend's own vectorisable exp (softmax, sigmoid, attention): a few ulp everywhere. */
static void test_cpu_expf(void) {
    double max_rel = 0;
    float worst = 0;
    for (long i = 0; i <= 400000; i++) {
        float x = -87.0f + 175.0f * (float)i / 400000.0f;
        double e = fabs(cpu_expf(x) / exp((double)x) - 1.0);
        if (e > max_rel) max_rel = e, worst = x;
    }
    CHECK("cpu_expf relative error over [-87, 88]", max_rel <= 4e-7,
          "max rel err %.3g at x = %.7g (tol 4e-7)", max_rel, worst);
    float tiny = cpu_expf(-INFINITY), one = cpu_expf(0.0f);
    CHECK("cpu_expf(-inf) ~ 0 and cpu_expf(0) = 1", tiny >= 0 && tiny < 1.2e-38f && one == 1.0f,
          "exp(-inf) = %g, exp(0) = %.9g", tiny, one);
}

/* ------------------------------------------------------------------------------------------ */
/* reductions, AdamW                                                                          */

static void test_reductions(size_t n) {
    float *x = host_random(n, -1, 1);
    for (size_t i = 0; i < n; i++) x[i] += 0.25f; /* non-zero mean: the sum grows with n */
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++) s += x[i], ss += (double)x[i] * x[i];
    Buf X = buf_from(x, n);
    double got_s = be->sum(X.d, n), got_ss = be->sum_squares(X.d, n);
    /* double partial sums: the error is far below 1e-6 of sum |x| */
    double sum_abs = 0;
    for (size_t i = 0; i < n; i++) sum_abs += fabs(x[i]);
    CHECK(nm("sum n=%zu", n), fabs(got_s - s) <= 1e-6 * sum_abs + 1e-12, "got %.10g want %.10g", got_s,
          s);
    CHECK(nm("sum_squares n=%zu", n), fabs(got_ss - ss) <= 1e-6 * ss + 1e-12, "got %.10g want %.10g",
          got_ss, ss);
    expect_unchanged(nm("sum leaves x unchanged n=%zu", n), X, x);
    buf_free(X);
    free(x);
}

static void test_adamw(size_t n) {
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 1e-4f * 50, gscale = 0.37f;
    float *p = host_random(n, -1, 1), *m = host_random(n, -0.1f, 0.1f), *v = host_random(n, 0, 0.01f);
    double *pr = to_double(p, n), *mr = to_double(m, n), *vr = to_double(v, n);
    Buf P = buf_from(p, n), M = buf_from(m, n), V = buf_from(v, n), G = buf_new(n);
    for (int step = 1; step <= 3; step++) {
        float *g = host_random(n, -1, 1);
        g[0] = 0.0f; /* a zero gradient: only decay and momentum move the parameter */
        buf_set(G, g);
        be->adamw(P.d, G.d, M.d, V.d, n, lr, b1, b2, eps, wd, step, gscale);
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        for (size_t i = 0; i < n; i++) {
            double gi = (double)g[i] * gscale;
            pr[i] *= 1 - (double)lr * wd;
            mr[i] = b1 * mr[i] + (1 - (double)b1) * gi;
            vr[i] = b2 * vr[i] + (1 - (double)b2) * gi * gi;
            pr[i] -= lr / bc1 * mr[i] / (sqrt(vr[i]) / sqrt(bc2) + eps);
        }
        free(g);
    }
    /* float state against double: the update of ~1e-2 per step is exact to ~1e-6 of itself,
     * and p (order 1) carries float rounding of ~1e-7 per step */
    expect_close(nm("adamw p after 3 steps n=%zu", n), P, NULL, pr, 2e-6);
    expect_close(nm("adamw m after 3 steps n=%zu", n), M, NULL, mr, 2e-6);
    expect_close(nm("adamw v after 3 steps n=%zu", n), V, NULL, vr, 2e-6);
    buf_free(P), buf_free(M), buf_free(V), buf_free(G);
    free(p), free(m), free(v), free(pr), free(mr), free(vr);
}

/* ------------------------------------------------------------------------------------------ */

static uint64_t pick_seed(void) {
    const char *env = getenv("DETR_TEST_SEED");
    if (env && *env) return strtoull(env, NULL, 10);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000003u + (uint64_t)t.tv_nsec;
}

int main(void) {
    be = backend_cpu();
    g_rng.seed = pick_seed();
    g_rng.counter = 0;
    printf("test_ops: backend %s, seed %llu (DETR_TEST_SEED=%llu repeats this run)\n", be->name,
           (unsigned long long)g_rng.seed, (unsigned long long)g_rng.seed);

    test_memory();
    test_cpu_expf();
    test_relu_sigmoid(1);
    test_relu_sigmoid(1003);
    test_relu_sigmoid(100003);
    test_binary_ops(17);
    test_binary_ops(100003);
    test_dropout(2000, 0.1f, 12345);
    test_dropout(200003, 0.3f, 777);
    test_channel_affine(3, 37, 0, 1);
    test_channel_affine(5, 41, 1, 1);
    test_channel_affine(64, 3001, 1, 0);
    test_channel_affine(2, 40000, 0, 0);
    test_maxpool(2, 1, 7, 9, 3, 2, 1, 1);   /* ResNet stem pool, odd sizes */
    test_maxpool(3, 3, 8, 6, 2, 2, 0, 1);
    test_maxpool(2, 3, 6, 7, 3, 1, 1, 1);
    test_maxpool(16, 3, 33, 30, 3, 2, 1, 0); /* threaded */
    test_maxpool(4, 2, 9, 40, 3, 1, 1, 0);   /* wide rows: vectorised interior */
    test_maxpool(2, 2, 11, 13, 5, 3, 2, 1);  /* k5 s3 p2 */
    test_maxpool_ties(2, 1, 5, 6, 3, 2, 1, 1);
    test_maxpool_ties(3, 2, 9, 11, 3, 2, 1, 3);
    test_maxpool_ties(2, 3, 8, 37, 3, 1, 1, 3);
    test_maxpool_ties(2, 2, 10, 10, 2, 2, 0, 2);
    test_maxpool_ties(2, 2, 12, 9, 5, 2, 2, 3);
    test_convs();
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) test_gemm(ta, tb, 7, 9, 5, 3, 0.7f, 0.4f);
    test_gemm(0, 1, 33, 65, 129, 2, 1.0f, 0.0f);
    test_gemm(1, 0, 64, 48, 31, 1, -1.5f, 1.0f);
    test_linear(7, 5, 3, 1, 1);
    test_linear(6, 9, 4, 0, 1);
    test_linear(300, 256, 65, 1, 0);
    test_transpose(1, 1, 1);
    test_transpose(2, 37, 45);
    test_transpose(3, 70, 100);
    test_layernorm(7, 33, 0.0f, 1);
    test_layernorm(5, 16, 100.0f, 0); /* FD would only measure the rounding of x ~ 100 */
    test_layernorm(6, 20, 3.0f, 1);
    test_layernorm(200, 256, 0.0f, 0);
    test_softmax(5, 17, 3.0f, 1);
    test_softmax(7, 1, 1.0f, 1);
    test_softmax(300, 100, 5.0f, 0);
    test_attentions();
    test_reductions(1);
    test_reductions(1000);
    test_reductions(1000003);
    test_adamw(1001);
    test_adamw(100003);
    return test_finish();
}
