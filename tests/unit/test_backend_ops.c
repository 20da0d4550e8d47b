/* test_backend_ops.c - every op of the Backend table (backend.h) on the CUDA backend against the
 * CPU backend, in the manner of ggml's test-backend-ops: fresh random inputs for several shapes
 * (odd sizes, leading dimensions larger than the row, strided batches, masks with padding,
 * dropout p > 0), the same inputs through backend_cpu() and backend_cuda(), and per output:
 *  - the normalised error max|a-b| / (max|b| + 1e-6) under a per-op threshold (see TOL_*);
 *  - no NaN or Inf (forward outputs start as NaN, so an element an op forgets to write fails);
 *  - guard zones: every buffer has GUARD_BYTES of a byte pattern before and after it, which
 *    must be unchanged after the op (on both backends);
 *  - the accumulate convention: backward outputs start with the same non-zero random values on
 *    both backends and what is compared is the increment (out - start), so an op that overwrites
 *    instead of adding fails even where the gradient itself is right;
 *  - dropout masks and max-pool argmax must match the CPU exactly.
 * Without a GPU, or in the CPU-only build, the CUDA comparisons are reported as skipped. The
 * harness itself is checked everywhere: deliberately broken copies of the CPU backend (an
 * overwriting backward, a write past the end, an unwritten element) must be caught.
 * DETR_BACKEND_OPS_SELF=1 runs the whole suite with the CPU backend in the CUDA role (a dry
 * run of the harness, e.g. under AddressSanitizer).
 * Mixed precision (backend.h, Precision): the matrix-product ops (convolutions, gemm, linear)
 * run again with both backends set to bf16 and then fp16 (the CPU emulates the low types), with
 * thresholds of the low types (TOL_BF16, TOL_FP16), and their forward outputs must hold only
 * values of the low type (rounded results); a last check makes sure bf16 really changes the
 * numbers (tested backend in bf16 vs the CPU in fp32 differ by more than TOL_GEMM). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "check.h"
#include "rng.h"
#ifdef DETR_CUDA
#include "cuda/backend_cuda.h"
#include "cuda/backend_cuda_table.h"
#endif

/* ---- thresholds on max|a-b| / (max|b| + 1e-6) ----
 * TOL_EXACT: pure data movement (copy, fill, transpose, relu, max-pool values): no arithmetic,
 *   so bit-identical results are required.
 * TOL_ELEM: one or two float operations per element (add, axpy, scale, dropout scaling, affine,
 *   AdamW): the backends may differ by contraction into an FMA or x/(1-p) vs x*(1/(1-p)), a few
 *   ulps (~1e-7 relative); 1e-5 leaves room for exp-based ops (sigmoid: the CPU's exp
 *   polynomial has 3e-7 relative error) while any wrong element is off by O(1).
 * TOL_ROW: row reductions (softmax, layer norm): sums of up to a few hundred terms in a
 *   different order, error ~ sqrt(N) eps ~ 1e-6; backward passes subtract row means (some
 *   cancellation), hence 5e-5 for them.
 * TOL_GEMM: GEMM, linear, convolution and attention in fp32 (no TF32): dot products of K <~ 2000
 *   terms summed in a different order (blocked, split-K, Winograd/FFT transforms in cuDNN),
 *   error ~ sqrt(K) eps relative to the sum of |terms|, ~1e-6..1e-5 of max|out|; 1e-4 keeps a
 *   margin and still fails on any indexing or layout error. TF32 (DETR_TF32=1) would need ~1e-2. */
#define TOL_EXACT 0.0
#define TOL_ELEM 1e-5
#define TOL_ROW 1e-5
#define TOL_ROW_BWD 5e-5
#define TOL_GEMM 1e-4
/* TOL_BF16, TOL_FP16: the matrix products with both backends at the same low precision. Both
 *   round the same operands to the same low values (round to nearest even on both), sum the
 *   products in float32 in different orders (~1e-6 relative apart) and round the sum: the two
 *   results are equal or, where the sum lies near a rounding boundary, neighbours one unit in the
 *   last place (ulp) apart. cuDNN algorithms that add rounded partial results (atomic split
 *   sums, a bias blended after a store) can add a second ulp. One ulp of an element is at most
 *   2^-7 = 7.8e-3 of the largest |output| in bf16 (8 significant bits) and 2^-10 = 9.8e-4 in
 *   fp16 (11 bits); two ulps plus margin gives 2e-2 and 2.5e-3. A wrong index, layout or a
 *   missed accumulate is still O(1); a missed output rounding is caught by BufSpec.low_exact. */
#define TOL_BF16 2e-2
#define TOL_FP16 2.5e-3

#define GUARD_BYTES 256        /* keeps the payload 256-byte aligned, as cudaMalloc's */
#define GUARD_PATTERN 0xA5     /* as a float: -2.9e-16, a value no op produces by chance */
#define UNWRITTEN_PATTERN 0xFF /* forward outputs start as 0xFFFFFFFF: NaN (int32: -1) */

/* ------------------------------------------------------------------------------------------ */
/* random inputs                                                                              */

static uint64_t g_seed = 1234;

/* Mixed precision: the precision each side runs at (set before every run, see run_case), a tag
 * that prefixes the case names, and the threshold of the matrix-product suites (conv, gemm,
 * linear), TOL_GEMM in fp32. */
static Precision g_ref_precision = PRECISION_FP32, g_test_precision = PRECISION_FP32;
static const char *g_case_tag = "";
static double g_tol_matmul = TOL_GEMM;

static float *rand_floats(size_t n, float lo, float hi) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    const uint64_t seed = g_seed++;
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * rng_uniform(seed, i);
    return p;
}

/* Values with |v| in [0.1, 1]: never 0, so a dropped element (exactly 0) is unambiguous. */
static float *rand_nonzero(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    const uint64_t seed = g_seed++;
    for (size_t i = 0; i < n; i++) {
        const float u = rng_uniform(seed, 2 * i), s = rng_uniform(seed, 2 * i + 1);
        p[i] = (s < 0.5f ? -1.0f : 1.0f) * (0.1f + 0.9f * u);
    }
    return p;
}

/* ------------------------------------------------------------------------------------------ */
/* one op call = a list of buffers + a function that calls the op on device pointers            */

typedef enum { BUF_F32, BUF_I32, BUF_U8 } BufKind;

typedef struct {
    const char *label;
    BufKind kind;
    size_t count;      /* elements */
    const void *init;  /* contents before the op; NULL = UNWRITTEN_PATTERN (forward outputs) */
    int is_out;        /* compared after the op */
    int delta;         /* compare out - init (accumulating outputs) */
    double tol;        /* BUF_F32 outputs: threshold; BUF_I32 outputs are compared exactly */
    int zeros_exact;   /* the positions of exact zeros must match (dropout masks) */
    int low_exact;     /* when the tested side runs at bf16/fp16: every element must be a value
                        * of that type (a forward output of a matrix product is rounded) */
} BufSpec;

#define MAX_BUFS 12
typedef void (*OpCall)(const Backend *be, void *const *p, const void *params);

typedef struct {
    char name[160];
    int nbuf;
    BufSpec buf[MAX_BUFS];
    OpCall call;
    const void *params;
    void *owned[2 * MAX_BUFS]; /* host arrays freed by case_free */
    int nowned;
} OpCase;

static size_t kind_size(BufKind k) { return k == BUF_F32 ? 4 : k == BUF_I32 ? 4 : 1; }

static void case_init(OpCase *c, OpCall call, const void *params, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void case_init(OpCase *c, OpCall call, const void *params, const char *fmt, ...) {
    memset(c, 0, sizeof *c);
    c->call = call;
    c->params = params;
    const int tag = snprintf(c->name, sizeof c->name, "%s", g_case_tag);
    va_list ap;
    va_start(ap, fmt);
    if (tag >= 0 && (size_t)tag < sizeof c->name)
        vsnprintf(c->name + tag, sizeof c->name - (size_t)tag, fmt, ap);
    va_end(ap);
}

static void *own(OpCase *c, void *p) {
    if (c->nowned < 2 * MAX_BUFS) c->owned[c->nowned++] = p;
    return p;
}

static BufSpec *add_buf(OpCase *c, const char *label, BufKind kind, size_t count, const void *init) {
    if (c->nbuf >= MAX_BUFS) {
        fprintf(stderr, "test_backend_ops: too many buffers in %s\n", c->name);
        exit(2);
    }
    BufSpec *b = &c->buf[c->nbuf++];
    memset(b, 0, sizeof *b);
    b->label = label;
    b->kind = kind;
    b->count = count;
    b->init = init;
    return b;
}

/* An input (owned: freed with the case). */
static void in_f(OpCase *c, const char *label, float *data, size_t n) {
    add_buf(c, label, BUF_F32, n, own(c, data));
}
/* A forward output: starts as NaN, overwritten by the op. */
static BufSpec *out_f(OpCase *c, const char *label, size_t n, double tol) {
    BufSpec *b = add_buf(c, label, BUF_F32, n, NULL);
    b->is_out = 1;
    b->tol = tol;
    return b;
}
/* An accumulating output: starts as random values, the increment is compared. */
static BufSpec *acc_f(OpCase *c, const char *label, size_t n, double tol) {
    BufSpec *b = add_buf(c, label, BUF_F32, n, own(c, rand_floats(n, -0.5f, 0.5f)));
    b->is_out = 1;
    b->delta = 1;
    b->tol = tol;
    return b;
}
/* An output updated in place from given contents, compared as a whole (in-place ops). */
static BufSpec *inout_f(OpCase *c, const char *label, float *data, size_t n, double tol) {
    BufSpec *b = add_buf(c, label, BUF_F32, n, own(c, data));
    b->is_out = 1;
    b->tol = tol;
    return b;
}

static void case_free(OpCase *c) {
    for (int i = 0; i < c->nowned; i++) free(c->owned[i]);
    c->nowned = 0;
}

/* ---- running a case on one backend ---- */

typedef struct {
    void *host[MAX_BUFS];  /* downloaded payload of each output */
    int guard_ok[MAX_BUFS];
} CaseResult;

static int guard_intact(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != GUARD_PATTERN) return 0;
    return 1;
}

static void run_on(const Backend *be, const OpCase *c, CaseResult *res) {
    void *base[MAX_BUFS], *payload[MAX_BUFS];
    for (int i = 0; i < c->nbuf; i++) {
        const BufSpec *b = &c->buf[i];
        const size_t bytes = b->count * kind_size(b->kind), total = bytes + 2 * GUARD_BYTES;
        unsigned char *img = malloc(total);
        memset(img, GUARD_PATTERN, total);
        if (b->init)
            memcpy(img + GUARD_BYTES, b->init, bytes);
        else
            memset(img + GUARD_BYTES, UNWRITTEN_PATTERN, bytes);
        /* float buffers through alloc/free, the others through alloc_bytes/free_bytes, so both
         * pairs of memory slots are exercised */
        base[i] = b->kind == BUF_F32 ? (void *)be->alloc(MEM_WORKSPACE, total / sizeof(float))
                                     : be->alloc_bytes(MEM_WORKSPACE, total);
        be->upload(base[i], img, total);
        payload[i] = (unsigned char *)base[i] + GUARD_BYTES;
        free(img);
    }
    c->call(be, payload, c->params);
    be->synchronize();
    for (int i = 0; i < c->nbuf; i++) {
        const BufSpec *b = &c->buf[i];
        const size_t bytes = b->count * kind_size(b->kind), total = bytes + 2 * GUARD_BYTES;
        unsigned char *img = malloc(total);
        be->download(img, base[i], total);
        res->guard_ok[i] = guard_intact(img, GUARD_BYTES) &&
                           guard_intact(img + GUARD_BYTES + bytes, GUARD_BYTES);
        res->host[i] = NULL;
        if (b->is_out) {
            res->host[i] = malloc(bytes ? bytes : 1);
            memcpy(res->host[i], img + GUARD_BYTES, bytes);
        }
        free(img);
        if (b->kind == BUF_F32)
            be->free((float *)base[i]);
        else
            be->free_bytes(base[i]);
    }
}

static void result_free(CaseResult *r, int nbuf) {
    for (int i = 0; i < nbuf; i++) free(r->host[i]);
}

/* ---- comparing ---- */

/* Normalised error of out (tested) against ref, of the increments when delta; NaN/Inf anywhere
 * (in either) gives INFINITY. *zero_mismatch counts positions that are exactly 0 in one only. */
static double compare_f32(const float *out, const float *ref, const float *init, size_t n,
                          int delta, size_t *zero_mismatch) {
    double md = 0, mb = 0;
    size_t zm = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i]) || !isfinite(ref[i])) return INFINITY;
        const double a = delta ? (double)out[i] - init[i] : out[i];
        const double b = delta ? (double)ref[i] - init[i] : ref[i];
        const double d = fabs(a - b);
        if (d > md) md = d;
        if (fabs(b) > mb) mb = fabs(b);
        if ((a == 0.0) != (b == 0.0)) zm++;
    }
    *zero_mismatch = zm;
    return md / (mb + 1e-6);
}

/* The precision of the matrix products of be (a backend without the slot is fp32 only; the
 * mixed-precision suite does not run with one). */
static void set_backend_precision(const Backend *be, Precision p) {
    if (be->set_precision) be->set_precision(p);
}

static const char *precision_name(Precision p) {
    return p == PRECISION_BF16 ? "bf16" : p == PRECISION_FP16 ? "fp16" : "fp32";
}

/* 1 when x is exactly a value of p's type (fp32: always). */
static int representable(float x, Precision p) {
    if (p == PRECISION_BF16) {
        uint32_t u;
        memcpy(&u, &x, sizeof u);
        return (u & 0xFFFFu) == 0;
    }
    if (p == PRECISION_FP16) return (float)(_Float16)x == x;
    return 1;
}

/* Runs c on ref (at g_ref_precision) and on test (at g_test_precision); the two may be the same
 * backend, since each run sets its precision first. */
static void run_both(const OpCase *c, const Backend *ref, const Backend *test, CaseResult *rr,
                     CaseResult *rt) {
    set_backend_precision(ref, g_ref_precision);
    run_on(ref, c, rr);
    set_backend_precision(test, g_test_precision);
    run_on(test, c, rt);
}

/* Runs c on ref and on test and checks every output. report: one CHECK per output (and one for
 * the guards); otherwise silent. Returns the number of failed checks. */
static int run_case(const OpCase *c, const Backend *ref, const Backend *test, int report) {
    CaseResult rr, rt;
    run_both(c, ref, test, &rr, &rt);
    int failures = 0;
    char label[256];
    for (int i = 0; i < c->nbuf; i++) {
        const BufSpec *b = &c->buf[i];
        if (!b->is_out) continue;
        snprintf(label, sizeof label, "%s: %s", c->name, b->label);
        int ok;
        char why[200] = "";
        if (b->kind == BUF_I32) {
            size_t bad = 0, first = 0;
            const int32_t *o = rt.host[i], *r = rr.host[i];
            for (size_t e = 0; e < b->count; e++)
                if (o[e] != r[e] && bad++ == 0) first = e;
            ok = bad == 0;
            if (!ok)
                snprintf(why, sizeof why, "%zu of %zu differ (first at %zu: %d, cpu %d)", bad,
                         b->count, first, (int)o[first], (int)r[first]);
        } else {
            size_t zm = 0;
            const double err = compare_f32(rt.host[i], rr.host[i], b->init, b->count, b->delta,
                                           &zm);
            ok = err <= b->tol && (!b->zeros_exact || zm == 0);
            if (!ok)
                snprintf(why, sizeof why,
                         "normalised error %.3g (threshold %.1g)%s; %zu zero positions differ",
                         err, b->tol, isinf(err) ? ", NaN/Inf in an output" : "", zm);
            if (ok && b->low_exact && g_test_precision != PRECISION_FP32) {
                const float *o = rt.host[i];
                size_t bad = 0, first = 0;
                for (size_t e = 0; e < b->count; e++)
                    if (!representable(o[e], g_test_precision) && bad++ == 0) first = e;
                ok = bad == 0;
                if (!ok)
                    snprintf(why, sizeof why,
                             "%zu of %zu elements are not %s values (first at %zu: %.9g): the "
                             "result was not rounded to the low type",
                             bad, b->count, precision_name(g_test_precision), first, o[first]);
            }
        }
        if (report) CHECK(label, ok, "%s", why);
        failures += !ok;
    }
    int guards_ok = 1;
    char where[256] = "";
    for (int i = 0; i < c->nbuf; i++) {
        for (int side = 0; side < 2; side++) {
            if ((side ? rt : rr).guard_ok[i]) continue;
            guards_ok = 0;
            const size_t len = strlen(where);
            snprintf(where + len, sizeof where - len, " %s (%s)", c->buf[i].label,
                     side ? test->name : "reference");
        }
    }
    if (report) {
        snprintf(label, sizeof label, "%s: guard zones intact", c->name);
        CHECK(label, guards_ok, "the op wrote next to:%s", where);
    }
    failures += !guards_ok;
    result_free(&rr, c->nbuf);
    result_free(&rt, c->nbuf);
    return failures;
}

/* The suite runs each case through this. */
static const Backend *g_ref, *g_test;
static void check_case(OpCase *c) {
    run_case(c, g_ref, g_test, 1);
    case_free(c);
}

/* ------------------------------------------------------------------------------------------ */
/* memory and elementwise ops                                                                 */

typedef struct { size_t n; float a, p; uint64_t seed; int relu; int C; } ElemParams;

static void call_copy(const Backend *be, void *const *p, const void *prm) {
    be->copy(p[1], p[0], ((const ElemParams *)prm)->n);
}
static void call_fill(const Backend *be, void *const *p, const void *prm) {
    be->fill(p[0], ((const ElemParams *)prm)->a, ((const ElemParams *)prm)->n);
}
static void call_relu_fwd(const Backend *be, void *const *p, const void *prm) {
    be->relu_forward(p[0], p[1], ((const ElemParams *)prm)->n);
}
static void call_relu_bwd(const Backend *be, void *const *p, const void *prm) {
    be->relu_backward(p[0], p[1], p[2], ((const ElemParams *)prm)->n);
}
static void call_add(const Backend *be, void *const *p, const void *prm) {
    be->add(p[0], p[1], p[2], ((const ElemParams *)prm)->n);
}
static void call_add_relu(const Backend *be, void *const *p, const void *prm) {
    be->add_relu(p[0], p[1], p[2], ((const ElemParams *)prm)->n);
}
static void call_axpy(const Backend *be, void *const *p, const void *prm) {
    be->axpy(((const ElemParams *)prm)->a, p[0], p[1], ((const ElemParams *)prm)->n);
}
static void call_scale(const Backend *be, void *const *p, const void *prm) {
    be->scale(p[0], ((const ElemParams *)prm)->a, ((const ElemParams *)prm)->n);
}
static void call_sigmoid_fwd(const Backend *be, void *const *p, const void *prm) {
    be->sigmoid_forward(p[0], p[1], ((const ElemParams *)prm)->n);
}
static void call_sigmoid_bwd(const Backend *be, void *const *p, const void *prm) {
    be->sigmoid_backward(p[0], p[1], p[2], ((const ElemParams *)prm)->n);
}
static void call_dropout_fwd(const Backend *be, void *const *p, const void *prm) {
    const ElemParams *e = prm;
    be->dropout_forward(p[0], p[1], e->n, e->p, e->seed);
}
static void call_dropout_bwd(const Backend *be, void *const *p, const void *prm) {
    const ElemParams *e = prm;
    be->dropout_backward(p[0], p[1], e->n, e->p, e->seed);
}
static void call_affine(const Backend *be, void *const *p, const void *prm) {
    const ElemParams *e = prm; /* x [C, n], scale [C], shift [C], y [C, n] */
    be->channel_affine(p[0], p[1], p[2], p[3], e->C, e->n, e->relu);
}
static void call_affine_inplace(const Backend *be, void *const *p, const void *prm) {
    const ElemParams *e = prm; /* x = y [C, n] */
    be->channel_affine(p[0], p[1], p[2], p[0], e->C, e->n, e->relu);
}
static void call_affine_bwd(const Backend *be, void *const *p, const void *prm) {
    const ElemParams *e = prm; /* dy, y [C, n], scale [C], dx [C, n] */
    be->channel_affine_backward(p[0], p[1], p[2], p[3], e->C, e->n, e->relu);
}

/* Element counts: tiny, odd, a multiple of the vector width and one past a typical block. */
static const size_t ELEM_SIZES[] = {1, 7, 1000, 65537};
#define N_ELEM_SIZES (sizeof ELEM_SIZES / sizeof ELEM_SIZES[0])

static void suite_elementwise(void) {
    for (size_t si = 0; si < N_ELEM_SIZES; si++) {
        const size_t n = ELEM_SIZES[si];
        ElemParams e = {.n = n, .a = -0.75f};
        OpCase c;

        case_init(&c, call_copy, &e, "copy n=%zu", n);
        in_f(&c, "x", rand_floats(n, -1, 1), n);
        out_f(&c, "y", n, TOL_EXACT);
        check_case(&c);

        case_init(&c, call_fill, &e, "fill n=%zu", n);
        out_f(&c, "x", n, TOL_EXACT);
        check_case(&c);

        case_init(&c, call_relu_fwd, &e, "relu_forward n=%zu", n);
        in_f(&c, "x", rand_floats(n, -1, 1), n);
        out_f(&c, "y", n, TOL_EXACT);
        check_case(&c);

        case_init(&c, call_relu_bwd, &e, "relu_backward n=%zu", n);
        in_f(&c, "dy", rand_floats(n, -1, 1), n);
        in_f(&c, "y", rand_floats(n, -1, 1), n); /* about half "inactive" */
        acc_f(&c, "dx", n, TOL_ELEM);
        check_case(&c);

        case_init(&c, call_add, &e, "add n=%zu", n);
        in_f(&c, "a", rand_floats(n, -1, 1), n);
        in_f(&c, "b", rand_floats(n, -1, 1), n);
        out_f(&c, "y", n, TOL_ELEM);
        check_case(&c);

        case_init(&c, call_add_relu, &e, "add_relu n=%zu", n);
        in_f(&c, "a", rand_floats(n, -1, 1), n);
        in_f(&c, "b", rand_floats(n, -1, 1), n);
        out_f(&c, "y", n, TOL_ELEM);
        check_case(&c);

        case_init(&c, call_axpy, &e, "axpy n=%zu", n);
        in_f(&c, "x", rand_floats(n, -1, 1), n);
        inout_f(&c, "y", rand_floats(n, -1, 1), n, TOL_ELEM);
        check_case(&c);

        case_init(&c, call_scale, &e, "scale n=%zu", n);
        inout_f(&c, "x", rand_floats(n, -1, 1), n, TOL_ELEM);
        check_case(&c);

        case_init(&c, call_sigmoid_fwd, &e, "sigmoid_forward n=%zu", n);
        in_f(&c, "x", rand_floats(n, -12, 12), n); /* both saturated ends */
        out_f(&c, "y", n, TOL_ELEM);
        check_case(&c);

        case_init(&c, call_sigmoid_bwd, &e, "sigmoid_backward n=%zu", n);
        in_f(&c, "dy", rand_floats(n, -1, 1), n);
        in_f(&c, "y", rand_floats(n, 0, 1), n);
        acc_f(&c, "dx", n, TOL_ELEM);
        check_case(&c);
    }
}

static void suite_dropout(void) {
    static const float PS[] = {0.0f, 0.1f, 0.5f, 0.9f};
    for (size_t si = 0; si < N_ELEM_SIZES; si++)
        for (size_t pi = 0; pi < sizeof PS / sizeof PS[0]; pi++) {
            const size_t n = ELEM_SIZES[si];
            /* a seed with high bits set: the hash must use all 64 bits the same way */
            ElemParams e = {.n = n, .p = PS[pi], .seed = 0x9E3779B97F4A7C15ull + si * 7 + pi};
            OpCase c;
            case_init(&c, call_dropout_fwd, &e, "dropout_forward n=%zu p=%.1f", n, PS[pi]);
            in_f(&c, "x", rand_nonzero(n), n);
            out_f(&c, "y", n, TOL_ELEM)->zeros_exact = 1;
            check_case(&c);

            case_init(&c, call_dropout_bwd, &e, "dropout_backward n=%zu p=%.1f", n, PS[pi]);
            in_f(&c, "dy", rand_nonzero(n), n);
            acc_f(&c, "dx", n, TOL_ELEM)->zeros_exact = 1;
            check_case(&c);
        }
}

static void suite_affine(void) {
    static const int CS[] = {1, 3, 64};
    static const size_t NS[] = {1, 37, 20000};
    for (size_t ci = 0; ci < 3; ci++)
        for (size_t ni = 0; ni < 3; ni++)
            for (int relu = 0; relu <= 1; relu++) {
                const int C = CS[ci];
                const size_t N = NS[ni], n = (size_t)C * N;
                ElemParams e = {.n = N, .C = C, .relu = relu};
                OpCase c;
                case_init(&c, call_affine, &e, "channel_affine C=%d N=%zu relu=%d", C, N, relu);
                in_f(&c, "x", rand_floats(n, -2, 2), n);
                in_f(&c, "scale", rand_floats(C, -1.5f, 1.5f), C);
                in_f(&c, "shift", rand_floats(C, -0.5f, 0.5f), C);
                out_f(&c, "y", n, TOL_ELEM);
                check_case(&c);

                case_init(&c, call_affine_inplace, &e, "channel_affine in place C=%d N=%zu relu=%d",
                          C, N, relu);
                inout_f(&c, "x=y", rand_floats(n, -2, 2), n, TOL_ELEM);
                in_f(&c, "scale", rand_floats(C, -1.5f, 1.5f), C);
                in_f(&c, "shift", rand_floats(C, -0.5f, 0.5f), C);
                check_case(&c);

                case_init(&c, call_affine_bwd, &e, "channel_affine_backward C=%d N=%zu relu=%d",
                          C, N, relu);
                in_f(&c, "dy", rand_floats(n, -1, 1), n);
                in_f(&c, "y", rand_floats(n, -1, 1), n);
                in_f(&c, "scale", rand_floats(C, -1.5f, 1.5f), C);
                acc_f(&c, "dx", n, TOL_ELEM);
                check_case(&c);
            }
}

/* ------------------------------------------------------------------------------------------ */
/* convolution and max-pool                                                                   */

typedef struct { ConvShape s; int with_bias; } ConvParams;

static void call_conv_fwd(const Backend *be, void *const *p, const void *prm) {
    const ConvParams *c = prm; /* x, w, [bias], y */
    if (c->with_bias)
        be->conv2d_forward(&c->s, p[0], p[1], p[2], p[3]);
    else
        be->conv2d_forward(&c->s, p[0], p[1], NULL, p[2]);
}
static void call_conv_bwd_data(const Backend *be, void *const *p, const void *prm) {
    be->conv2d_backward_data(&((const ConvParams *)prm)->s, p[0], p[1], p[2]); /* dy, w, dx */
}
static void call_conv_bwd_weight(const Backend *be, void *const *p, const void *prm) {
    const ConvParams *c = prm; /* dy, x, dw, [dbias] */
    be->conv2d_backward_weight(&c->s, p[0], p[1], p[2], c->with_bias ? p[3] : NULL);
}

static void suite_conv(void) {
    /* B, Cin, H, W, Cout, kh, kw, stride, pad, dil: the ResNet-50 kinds (1x1, 3x3, the 7x7
     * stride-2 stem, the stride-2 1x1 downsample), dilation, non-square kernels, odd sizes,
     * B = 1 (where CNHW is also packed NCHW) */
    static const int SHAPES[][10] = {
        {2, 8, 9, 11, 16, 1, 1, 1, 0, 1},  {3, 5, 13, 7, 6, 3, 3, 1, 1, 1},
        {2, 3, 23, 19, 8, 7, 7, 2, 3, 1},  {2, 16, 10, 9, 12, 1, 1, 2, 0, 1},
        {1, 4, 12, 12, 5, 3, 3, 2, 1, 1},  {2, 6, 11, 13, 4, 3, 3, 1, 2, 2},
        {1, 7, 5, 9, 3, 1, 3, 1, 0, 1},    {4, 32, 8, 8, 32, 3, 3, 1, 1, 1},
    };
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++) {
        const int *v = SHAPES[k];
        ConvShape s = {.B = v[0], .Cin = v[1], .H = v[2], .W = v[3], .Cout = v[4], .kh = v[5],
                       .kw = v[6], .stride = v[7], .pad = v[8], .dil = v[9]};
        conv_shape_init(&s);
        const size_t nx = (size_t)s.Cin * s.B * s.H * s.W, ny = (size_t)s.Cout * s.B * s.Ho * s.Wo;
        const size_t nw = (size_t)s.Cout * s.Cin * s.kh * s.kw;
        char shape[96];
        snprintf(shape, sizeof shape, "B=%d Cin=%d %dx%d Cout=%d k=%dx%d s=%d p=%d d=%d", s.B,
                 s.Cin, s.H, s.W, s.Cout, s.kh, s.kw, s.stride, s.pad, s.dil);
        for (int with_bias = 0; with_bias <= 1; with_bias++) {
            ConvParams prm = {s, with_bias};
            OpCase c;
            case_init(&c, call_conv_fwd, &prm, "conv2d_forward %s bias=%d", shape, with_bias);
            in_f(&c, "x", rand_floats(nx, -1, 1), nx);
            in_f(&c, "w", rand_floats(nw, -1, 1), nw);
            if (with_bias) in_f(&c, "bias", rand_floats(s.Cout, -1, 1), s.Cout);
            out_f(&c, "y", ny, g_tol_matmul)->low_exact = 1;
            check_case(&c);

            case_init(&c, call_conv_bwd_weight, &prm, "conv2d_backward_weight %s dbias=%d", shape,
                      with_bias);
            in_f(&c, "dy", rand_floats(ny, -1, 1), ny);
            in_f(&c, "x", rand_floats(nx, -1, 1), nx);
            acc_f(&c, "dw", nw, g_tol_matmul);
            if (with_bias) acc_f(&c, "dbias", s.Cout, g_tol_matmul);
            check_case(&c);
        }
        ConvParams prm = {s, 0};
        OpCase c;
        case_init(&c, call_conv_bwd_data, &prm, "conv2d_backward_data %s", shape);
        in_f(&c, "dy", rand_floats(ny, -1, 1), ny);
        in_f(&c, "w", rand_floats(nw, -1, 1), nw);
        acc_f(&c, "dx", nx, g_tol_matmul);
        check_case(&c);
    }
}

typedef struct { PoolShape s; } PoolParams;

static void call_pool_fwd(const Backend *be, void *const *p, const void *prm) {
    be->maxpool_forward(&((const PoolParams *)prm)->s, p[0], p[1], p[2]); /* x, y, argmax */
}
static void call_pool_bwd(const Backend *be, void *const *p, const void *prm) {
    be->maxpool_backward(&((const PoolParams *)prm)->s, p[0], p[1], p[2]); /* dy, argmax, dx */
}

static void suite_maxpool(void) {
    /* C, B, H, W, k, stride, pad: the ResNet stem pool (3/2/1), 2/2/0, odd sizes */
    static const int SHAPES[][7] = {
        {3, 2, 17, 15, 3, 2, 1}, {4, 1, 8, 8, 2, 2, 0}, {2, 3, 9, 10, 3, 1, 1}, {5, 2, 7, 5, 3, 3, 0},
    };
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++)
        for (int ties = 0; ties <= 1; ties++) {
            const int *v = SHAPES[k];
            PoolShape s = {.C = v[0], .B = v[1], .H = v[2], .W = v[3], .k = v[4], .stride = v[5],
                           .pad = v[6]};
            pool_shape_init(&s);
            const size_t nx = (size_t)s.C * s.B * s.H * s.W, ny = (size_t)s.C * s.B * s.Ho * s.Wo;
            char shape[96];
            snprintf(shape, sizeof shape, "C=%d B=%d %dx%d k=%d s=%d p=%d%s", s.C, s.B, s.H, s.W,
                     s.k, s.stride, s.pad, ties ? " (ties)" : "");
            /* negative values (padding must never win); with ties, 3 distinct values so that
             * most windows hold equal maxima and the first in row-major order must win */
            float *x = rand_floats(nx, -2.0f, -0.1f);
            if (ties)
                for (size_t i = 0; i < nx; i++) x[i] = -0.5f * (float)(int)(-x[i] * 1.4f);
            PoolParams prm = {s};
            OpCase c;
            case_init(&c, call_pool_fwd, &prm, "maxpool_forward %s", shape);
            in_f(&c, "x", x, nx);
            out_f(&c, "y", ny, TOL_EXACT);
            add_buf(&c, "argmax", BUF_I32, ny, NULL)->is_out = 1;
            check_case(&c);

            /* backward from the CPU's argmax (the interface's contract) */
            float *xr = rand_floats(nx, -1, 1), *yr = malloc(ny * sizeof(float));
            int32_t *arg = malloc(ny * sizeof(int32_t));
            backend_cpu()->maxpool_forward(&s, xr, yr, arg);
            free(xr);
            free(yr);
            case_init(&c, call_pool_bwd, &prm, "maxpool_backward %s", shape);
            in_f(&c, "dy", rand_floats(ny, -1, 1), ny);
            add_buf(&c, "argmax", BUF_I32, ny, own(&c, arg));
            acc_f(&c, "dx", nx, TOL_ELEM); /* overlapping windows add in any order */
            check_case(&c);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* dense                                                                                      */

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc, batch;
    long sa, sb, sc;
    float alpha, beta;
} GemmParams;

static void call_gemm(const Backend *be, void *const *p, const void *prm) {
    const GemmParams *g = prm;
    be->gemm(g->ta, g->tb, g->M, g->N, g->K, g->alpha, p[0], g->lda, g->sa, p[1], g->ldb, g->sb,
             g->beta, p[2], g->ldc, g->sc, g->batch);
}

static void suite_gemm(void) {
    /* M, N, K, extra leading-dimension padding, batch, alpha, beta */
    static const struct { int M, N, K, pad, batch; float alpha, beta; } CASES[] = {
        {1, 1, 1, 0, 1, 1.0f, 0.0f},   {7, 5, 3, 0, 1, 1.0f, 0.0f},   {33, 17, 65, 3, 1, 0.5f, 1.0f},
        {64, 48, 100, 0, 3, 1.0f, 0.0f}, {13, 29, 7, 5, 4, -1.25f, 0.5f}, {100, 1, 300, 1, 2, 1.0f, 1.0f},
    };
    for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++)
        for (int ta = 0; ta <= 1; ta++)
            for (int tb = 0; tb <= 1; tb++) {
                GemmParams g = {.ta = ta, .tb = tb, .M = CASES[k].M, .N = CASES[k].N,
                                .K = CASES[k].K, .batch = CASES[k].batch,
                                .alpha = CASES[k].alpha, .beta = CASES[k].beta};
                const int pad = CASES[k].pad;
                /* row-major storage: op(A) [M,K] is A [M,K] or A [K,M]; likewise B */
                const int a_rows = ta ? g.K : g.M, a_cols = ta ? g.M : g.K;
                const int b_rows = tb ? g.N : g.K, b_cols = tb ? g.K : g.N;
                g.lda = a_cols + pad;
                g.ldb = b_cols + pad;
                g.ldc = g.N + pad;
                /* batch strides with a gap between matrices (odd, so not a multiple of 4) */
                g.sa = (long)a_rows * g.lda + (pad ? 3 : 0);
                g.sb = (long)b_rows * g.ldb + (pad ? 1 : 0);
                g.sc = (long)g.M * g.ldc + (pad ? 5 : 0);
                const size_t na = (size_t)g.sa * g.batch, nb = (size_t)g.sb * g.batch;
                const size_t nc = (size_t)g.sc * g.batch;
                OpCase c;
                case_init(&c, call_gemm, &g,
                          "gemm tA=%d tB=%d M=%d N=%d K=%d lda=%d ldb=%d ldc=%d batch=%d "
                          "alpha=%g beta=%g",
                          ta, tb, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.batch, g.alpha, g.beta);
                in_f(&c, "A", rand_floats(na, -1, 1), na);
                in_f(&c, "B", rand_floats(nb, -1, 1), nb);
                /* C starts random (beta may be 0: then its contents are ignored, but the
                 * padding between rows and matrices must stay as it was) */
                /* without padding and with beta 0 every element of C is a rounded product */
                inout_f(&c, "C (with padding)", rand_floats(nc, -1, 1), nc, g_tol_matmul)
                    ->low_exact = pad == 0 && g.beta == 0.0f;
                check_case(&c);
            }
}

typedef struct { int T, In, O, with_bias, want_dx, want_dw; } LinearParams;

static void call_linear_fwd(const Backend *be, void *const *p, const void *prm) {
    const LinearParams *l = prm; /* x, w, [b], y */
    be->linear_forward(p[0], p[1], l->with_bias ? p[2] : NULL, p[l->with_bias ? 3 : 2], l->T,
                       l->In, l->O);
}
static void call_linear_bwd(const Backend *be, void *const *p, const void *prm) {
    const LinearParams *l = prm; /* dy, x, w, then the requested of dx, dw, db in that order */
    int i = 3;
    float *dx = l->want_dx ? p[i++] : NULL;
    float *dw = l->want_dw ? p[i++] : NULL;
    float *db = l->with_bias ? p[i++] : NULL;
    be->linear_backward(p[0], p[1], p[2], dx, dw, db, l->T, l->In, l->O);
}

static void suite_linear(void) {
    /* T, In, O: DETR-like (T = queries x batch, d_model 256, 92 classes, 4 box coords), odd */
    static const int SHAPES[][3] = {{1, 1, 1}, {7, 13, 5}, {200, 256, 92}, {33, 64, 4}, {1000, 8, 300}};
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++)
        for (int variant = 0; variant < 3; variant++) {
            /* variant 0: everything; 1: no bias, dx only; 2: dw and db only */
            LinearParams l = {.T = SHAPES[k][0], .In = SHAPES[k][1], .O = SHAPES[k][2],
                              .with_bias = variant != 1, .want_dx = variant != 2,
                              .want_dw = variant != 1};
            const size_t nx = (size_t)l.T * l.In, nw = (size_t)l.O * l.In, ny = (size_t)l.T * l.O;
            OpCase c;
            case_init(&c, call_linear_fwd, &l, "linear_forward T=%d In=%d O=%d bias=%d", l.T, l.In,
                      l.O, l.with_bias);
            in_f(&c, "x", rand_floats(nx, -1, 1), nx);
            in_f(&c, "w", rand_floats(nw, -1, 1), nw);
            if (l.with_bias) in_f(&c, "b", rand_floats(l.O, -1, 1), l.O);
            out_f(&c, "y", ny, g_tol_matmul)->low_exact = 1;
            check_case(&c);

            case_init(&c, call_linear_bwd, &l, "linear_backward T=%d In=%d O=%d dx=%d dw=%d db=%d",
                      l.T, l.In, l.O, l.want_dx, l.want_dw, l.with_bias);
            in_f(&c, "dy", rand_floats(ny, -1, 1), ny);
            in_f(&c, "x", rand_floats(nx, -1, 1), nx);
            in_f(&c, "w", rand_floats(nw, -1, 1), nw);
            if (l.want_dx) acc_f(&c, "dx", nx, g_tol_matmul);
            if (l.want_dw) acc_f(&c, "dw", nw, g_tol_matmul);
            if (l.with_bias) acc_f(&c, "db", l.O, g_tol_matmul);
            check_case(&c);
        }
}

typedef struct { int batch, R, C; } TransposeParams;

static void call_transpose(const Backend *be, void *const *p, const void *prm) {
    const TransposeParams *t = prm;
    be->transpose(p[0], p[1], t->batch, t->R, t->C);
}

static void suite_transpose(void) {
    static const int SHAPES[][3] = {{1, 1, 1}, {1, 31, 33}, {3, 64, 64}, {2, 100, 7}, {5, 1, 70}};
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++) {
        TransposeParams t = {SHAPES[k][0], SHAPES[k][1], SHAPES[k][2]};
        const size_t n = (size_t)t.batch * t.R * t.C;
        OpCase c;
        case_init(&c, call_transpose, &t, "transpose batch=%d R=%d C=%d", t.batch, t.R, t.C);
        in_f(&c, "x", rand_floats(n, -1, 1), n);
        out_f(&c, "y", n, TOL_EXACT);
        check_case(&c);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* layer norm and softmax                                                                     */

typedef struct { int T, D; float eps; int affine; } RowParams;

static void call_ln_fwd(const Backend *be, void *const *p, const void *prm) {
    const RowParams *r = prm; /* x, gamma, beta, y, mean, rstd */
    be->layernorm_forward(p[0], r->affine ? p[1] : NULL, r->affine ? p[2] : NULL, p[3], p[4], p[5],
                          r->T, r->D, r->eps);
}
static void call_ln_bwd(const Backend *be, void *const *p, const void *prm) {
    const RowParams *r = prm; /* dy, x, mean, rstd, gamma, dx, dgamma, dbeta */
    be->layernorm_backward(p[0], p[1], p[2], p[3], r->affine ? p[4] : NULL, p[5], p[6], p[7], r->T,
                           r->D);
}
static void call_softmax_fwd(const Backend *be, void *const *p, const void *prm) {
    const RowParams *r = prm;
    be->softmax_forward(p[0], p[1], r->T, r->D);
}
static void call_softmax_bwd(const Backend *be, void *const *p, const void *prm) {
    const RowParams *r = prm; /* dy, y, dx */
    be->softmax_backward(p[0], p[1], p[2], r->T, r->D);
}

static void suite_rows(void) {
    static const int SHAPES[][2] = {{1, 1}, {5, 7}, {100, 256}, {3, 1025}, {64, 33}};
    for (size_t k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++)
        for (int affine = 0; affine <= 1; affine++) {
            RowParams r = {SHAPES[k][0], SHAPES[k][1], 1e-5f, affine};
            const size_t n = (size_t)r.T * r.D;
            /* rows with a large mean: the variance must not cancel */
            float *x = rand_floats(n, -1, 1);
            for (size_t i = 0; i < n; i++) x[i] += (float)((i / (size_t)r.D) % 3) * 10.0f;
            float *gamma = rand_floats(r.D, 0.5f, 1.5f), *beta = rand_floats(r.D, -0.5f, 0.5f);
            OpCase c;
            case_init(&c, call_ln_fwd, &r, "layernorm_forward T=%d D=%d affine=%d", r.T, r.D, affine);
            in_f(&c, "x", x, n);
            in_f(&c, "gamma", gamma, r.D);
            in_f(&c, "beta", beta, r.D);
            out_f(&c, "y", n, TOL_ROW);
            out_f(&c, "mean", r.T, TOL_ROW);
            out_f(&c, "rstd", r.T, TOL_ROW);
            /* the backward below reads x, mean and rstd of the CPU forward */
            float *xc = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
            float *mean = malloc(r.T * sizeof(float)), *rstd = malloc(r.T * sizeof(float));
            memcpy(xc, x, n * sizeof(float));
            backend_cpu()->layernorm_forward(xc, gamma, beta, y, mean, rstd, r.T, r.D, r.eps);
            free(y);
            float *gc = malloc(r.D * sizeof(float));
            memcpy(gc, gamma, r.D * sizeof(float));
            check_case(&c);

            case_init(&c, call_ln_bwd, &r, "layernorm_backward T=%d D=%d affine=%d", r.T, r.D,
                      affine);
            in_f(&c, "dy", rand_floats(n, -1, 1), n);
            in_f(&c, "x", xc, n);
            in_f(&c, "mean", mean, r.T);
            in_f(&c, "rstd", rstd, r.T);
            in_f(&c, "gamma", gc, r.D);
            acc_f(&c, "dx", n, TOL_ROW_BWD);
            acc_f(&c, "dgamma", r.D, TOL_ROW_BWD);
            acc_f(&c, "dbeta", r.D, TOL_ROW_BWD);
            check_case(&c);

            if (affine) continue; /* softmax has no affine variant */
            case_init(&c, call_softmax_fwd, &r, "softmax_forward R=%d N=%d", r.T, r.D);
            float *xs = rand_floats(n, -8, 8);
            xs[0] = 80.0f; /* a large logit: exp must not overflow (max subtraction) */
            in_f(&c, "x", xs, n);
            out_f(&c, "y", n, TOL_ROW);
            check_case(&c);

            float *ys = rand_floats(n, -1, 1), *yp = malloc(n * sizeof(float));
            backend_cpu()->softmax_forward(ys, yp, r.T, r.D);
            free(ys);
            case_init(&c, call_softmax_bwd, &r, "softmax_backward R=%d N=%d", r.T, r.D);
            in_f(&c, "dy", rand_floats(n, -1, 1), n);
            in_f(&c, "y", yp, n);
            acc_f(&c, "dx", n, TOL_ROW_BWD);
            check_case(&c);
        }
}

/* ------------------------------------------------------------------------------------------ */
/* attention                                                                                  */

/* q, k, v are column blocks of packed projections [rows, ld] (as a fused QKV projection
 * leaves them); dq, dk, dv the same blocks of the gradient buffers. */
typedef struct { AttnShape s; int masked, want_dq, want_dk, want_dv; } AttnParams;

static void call_attn_fwd(const Backend *be, void *const *p, const void *prm) {
    const AttnParams *a = prm; /* q, k, v (each [rows, ld], D columns used), mask, probs, out */
    be->attention_forward(&a->s, p[0], p[1], p[2], a->masked ? p[3] : NULL, p[4], p[5]);
}
static void call_attn_bwd(const Backend *be, void *const *p, const void *prm) {
    const AttnParams *a = prm; /* dout, q, k, v, probs, dq, dk, dv */
    be->attention_backward(&a->s, p[0], p[1], p[2], p[3], p[4], a->want_dq ? p[5] : NULL,
                           a->want_dk ? p[6] : NULL, a->want_dv ? p[7] : NULL);
}

static void suite_attention(void) {
    /* B, Sq, Sk, D, H, extra leading-dimension columns, dropout, mask (0 none, 1 padded tails,
     * 2 batch 0 fully padded) */
    static const struct { int B, Sq, Sk, D, H, pad; float p; int mask; } CASES[] = {
        {1, 1, 1, 8, 1, 0, 0.0f, 0},       {2, 7, 7, 16, 2, 0, 0.0f, 1},
        {2, 10, 23, 32, 8, 5, 0.1f, 1},    {3, 5, 40, 24, 3, 0, 0.5f, 1},
        {2, 12, 9, 16, 4, 16, 0.0f, 2},    {1, 100, 60, 64, 8, 0, 0.1f, 0},
    };
    for (size_t k = 0; k < sizeof CASES / sizeof CASES[0]; k++) {
        AttnParams a = {0};
        a.s = (AttnShape){.B = CASES[k].B, .Sq = CASES[k].Sq, .Sk = CASES[k].Sk, .D = CASES[k].D,
                          .H = CASES[k].H, .dropout = CASES[k].p, .seed = 77 + k};
        a.s.ldq = a.s.ldk = a.s.ldv = a.s.D + CASES[k].pad;
        a.masked = CASES[k].mask != 0;
        const AttnShape *s = &a.s;
        const size_t nq = (size_t)s->B * s->Sq * s->ldq, nk = (size_t)s->B * s->Sk * s->ldk;
        const size_t nv = (size_t)s->B * s->Sk * s->ldv, no = (size_t)s->B * s->Sq * s->D;
        const size_t np = (size_t)s->B * s->H * s->Sq * s->Sk, nm = (size_t)s->B * s->Sk;
        uint8_t *mask = calloc(nm, 1);
        for (int b = 0; b < s->B; b++)
            for (int j = 0; j < s->Sk; j++) {
                if (CASES[k].mask == 1) mask[(size_t)b * s->Sk + j] = j >= s->Sk - 2 * b - 1 && j > 0;
                if (CASES[k].mask == 2) mask[(size_t)b * s->Sk + j] = b == 0 || j % 3 == 2;
            }
        char shape[128];
        snprintf(shape, sizeof shape, "B=%d Sq=%d Sk=%d D=%d H=%d ld=%d dropout=%.1f mask=%d", s->B,
                 s->Sq, s->Sk, s->D, s->H, s->ldq, s->dropout, CASES[k].mask);
        float *q = rand_floats(nq, -1.5f, 1.5f), *kk = rand_floats(nk, -1.5f, 1.5f);
        float *v = rand_floats(nv, -1, 1);
        OpCase c;
        case_init(&c, call_attn_fwd, &a, "attention_forward %s", shape);
        in_f(&c, "q", q, nq);
        in_f(&c, "k", kk, nk);
        in_f(&c, "v", v, nv);
        add_buf(&c, "mask", BUF_U8, nm, own(&c, mask));
        out_f(&c, "probs", np, TOL_GEMM);
        out_f(&c, "out", no, TOL_GEMM)->zeros_exact = CASES[k].mask == 2; /* masked rows: 0 */
        /* the backward reads the CPU forward's probs */
        float *probs = malloc(np * sizeof(float)), *out = malloc(no * sizeof(float));
        backend_cpu()->attention_forward(s, q, kk, v, a.masked ? mask : NULL, probs, out);
        free(out);
        float *q2 = malloc(nq * 4), *k2 = malloc(nk * 4), *v2 = malloc(nv * 4);
        memcpy(q2, q, nq * 4);
        memcpy(k2, kk, nk * 4);
        memcpy(v2, v, nv * 4);
        check_case(&c);

        for (int variant = 0; variant < 2; variant++) {
            /* variant 0: all gradients; 1: dv only (the dq/dk-free path) */
            AttnParams ab = a;
            ab.want_dq = ab.want_dk = variant == 0;
            ab.want_dv = 1;
            case_init(&c, call_attn_bwd, &ab, "attention_backward %s dq=%d dk=%d dv=1", shape,
                      ab.want_dq, ab.want_dk);
            in_f(&c, "dout", rand_floats(no, -1, 1), no);
            add_buf(&c, "q", BUF_F32, nq, q2);
            add_buf(&c, "k", BUF_F32, nk, k2);
            add_buf(&c, "v", BUF_F32, nv, v2);
            add_buf(&c, "probs", BUF_F32, np, probs);
            if (variant == 1) { /* owned by the last case that uses them */
                own(&c, q2);
                own(&c, k2);
                own(&c, v2);
                own(&c, probs);
            }
            /* the gradient buffers have the layouts of q, k, v, padding columns included: those
             * must come back unchanged */
            acc_f(&c, "dq", nq, TOL_GEMM);
            acc_f(&c, "dk", nk, TOL_GEMM);
            acc_f(&c, "dv", nv, TOL_GEMM);
            run_case(&c, g_ref, g_test, 1);
            case_free(&c);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* reductions and AdamW                                                                       */

static void suite_reductions(void) {
    static const size_t NS[] = {1, 1023, 100003};
    const Backend *bes[2] = {g_ref, g_test};
    for (size_t k = 0; k < sizeof NS / sizeof NS[0]; k++) {
        const size_t n = NS[k];
        float *x = rand_floats(n, -1, 1);
        double sum[2], sq[2], abs_sum = 0, sq_ref = 0;
        for (size_t i = 0; i < n; i++) {
            abs_sum += fabs((double)x[i]);
            sq_ref += (double)x[i] * x[i];
        }
        int guards = 1;
        for (int side = 0; side < 2; side++) {
            const Backend *be = bes[side];
            const size_t total = n * sizeof(float) + 2 * GUARD_BYTES;
            float *base = be->alloc(MEM_WORKSPACE, total / sizeof(float));
            unsigned char *img = malloc(total);
            memset(img, GUARD_PATTERN, total);
            memcpy(img + GUARD_BYTES, x, n * sizeof(float));
            be->upload(base, img, total);
            const float *dev = (const float *)((unsigned char *)base + GUARD_BYTES);
            sum[side] = be->sum(dev, n);
            sq[side] = be->sum_squares(dev, n);
            be->download(img, base, total);
            guards &= guard_intact(img, GUARD_BYTES) &&
                      guard_intact(img + GUARD_BYTES + n * sizeof(float), GUARD_BYTES);
            free(img);
            be->free(base);
        }
        /* relative to the sum of |x| (the sum itself may cancel to ~0): float partial sums of
         * 1e5 terms are within ~1e-7 of that; 1e-6 */
        const double e_sum = fabs(sum[1] - sum[0]) / (abs_sum + 1e-6);
        const double e_sq = fabs(sq[1] - sq[0]) / (sq_ref + 1e-6);
        char name[96];
        snprintf(name, sizeof name, "sum n=%zu", n);
        CHECK(name, isfinite(sum[1]) && e_sum <= 1e-6, "got %.9g, cpu %.9g (error %.3g of sum|x|)",
              sum[1], sum[0], e_sum);
        snprintf(name, sizeof name, "sum_squares n=%zu", n);
        CHECK(name, isfinite(sq[1]) && e_sq <= 1e-6, "got %.9g, cpu %.9g (relative error %.3g)",
              sq[1], sq[0], e_sq);
        snprintf(name, sizeof name, "sum/sum_squares n=%zu: guard zones intact", n);
        CHECK(name, guards, "a reduction wrote into its input's guard zone");
        free(x);
    }
}

typedef struct { size_t n; float lr, b1, b2, eps, wd, gscale; int step; } AdamParams;

static void call_adamw(const Backend *be, void *const *p, const void *prm) {
    const AdamParams *a = prm; /* p, grad, m, v */
    be->adamw(p[0], p[1], p[2], p[3], a->n, a->lr, a->b1, a->b2, a->eps, a->wd, a->step, a->gscale);
}

static void suite_adamw(void) {
    static const size_t NS[] = {1, 1000, 65537};
    static const int STEPS[] = {1, 10, 1000};
    for (size_t k = 0; k < sizeof NS / sizeof NS[0]; k++) {
        const size_t n = NS[k];
        AdamParams a = {n, 1e-3f, 0.9f, 0.999f, 1e-8f, 1e-4f, 0.7f, STEPS[k]};
        OpCase c;
        case_init(&c, call_adamw, &a, "adamw n=%zu step=%d", n, a.step);
        inout_f(&c, "p", rand_floats(n, -1, 1), n, TOL_ELEM);
        in_f(&c, "grad", rand_floats(n, -1, 1), n);
        inout_f(&c, "m", rand_floats(n, -0.1f, 0.1f), n, TOL_ELEM);
        inout_f(&c, "v", rand_floats(n, 0.0f, 0.01f), n, TOL_ELEM);
        check_case(&c);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* mixed precision: the matrix products at bf16 / fp16 on both sides                          */

/* Largest normalised error over c's float outputs (INFINITY on NaN/Inf), at the precisions
 * g_ref_precision / g_test_precision. */
static double max_output_error(const OpCase *c, const Backend *ref, const Backend *test) {
    CaseResult rr, rt;
    run_both(c, ref, test, &rr, &rt);
    double worst = 0.0;
    for (int i = 0; i < c->nbuf; i++) {
        const BufSpec *b = &c->buf[i];
        if (!b->is_out || b->kind != BUF_F32) continue;
        size_t zm = 0;
        const double e = compare_f32(rt.host[i], rr.host[i], b->init, b->count, b->delta, &zm);
        if (!(e <= worst)) worst = e; /* also takes INFINITY */
    }
    result_free(&rr, c->nbuf);
    result_free(&rt, c->nbuf);
    return worst;
}

/* A case run only to see that bf16 changes the numbers: its error against the fp32 CPU must be
 * above TOL_GEMM (the fp32 agreement), else the low precision was not applied. */
static void check_low_precision_changes(OpCase *c) {
    const double err = max_output_error(c, g_ref, g_test);
    CHECK(c->name, isfinite(err) && err > TOL_GEMM,
          "normalised error %.3g against the fp32 CPU: not above the fp32 threshold %.1g, so "
          "set_precision(bf16) did not change the result",
          err, TOL_GEMM);
    case_free(c);
}

static void suite_mixed_precision(void) {
    if (!g_ref->set_precision || !g_test->set_precision) {
        test_skip("mixed precision (bf16, fp16): conv, gemm, linear",
                  "a backend has no set_precision slot (backend_cpu()'s comes with "
                  "backend_cpu_amp.c)");
        return;
    }
    static const struct { Precision p; const char *tag; double tol; } LOW[] = {
        {PRECISION_BF16, "[bf16] ", TOL_BF16},
        {PRECISION_FP16, "[fp16] ", TOL_FP16},
    };
    for (size_t k = 0; k < sizeof LOW / sizeof LOW[0]; k++) {
        g_ref_precision = g_test_precision = LOW[k].p;
        g_case_tag = LOW[k].tag;
        g_tol_matmul = LOW[k].tol;
        suite_conv();
        suite_gemm();
        suite_linear();
    }

    /* bf16 on the tested side, fp32 on the CPU: the results must differ by more than fp32's
     * threshold (bf16 rounds every operand and result to 8 significant bits: ~1e-3..1e-2) */
    static char tag[96];
    snprintf(tag, sizeof tag, "[%s bf16 vs %s fp32: differs] ", g_test->name, g_ref->name);
    g_ref_precision = PRECISION_FP32;
    g_test_precision = PRECISION_BF16;
    g_case_tag = tag;
    g_tol_matmul = TOL_GEMM;
    OpCase c;

    GemmParams g = {.M = 64, .N = 48, .K = 100, .lda = 100, .ldb = 48, .ldc = 48, .batch = 1,
                    .alpha = 1.0f, .beta = 0.0f};
    case_init(&c, call_gemm, &g, "gemm M=64 N=48 K=100");
    in_f(&c, "A", rand_floats(64 * 100, -1, 1), 64 * 100);
    in_f(&c, "B", rand_floats(100 * 48, -1, 1), 100 * 48);
    inout_f(&c, "C", rand_floats(64 * 48, -1, 1), 64 * 48, TOL_GEMM);
    check_low_precision_changes(&c);

    LinearParams l = {.T = 200, .In = 256, .O = 92, .with_bias = 1, .want_dx = 1, .want_dw = 1};
    const size_t nx = (size_t)l.T * l.In, nw = (size_t)l.O * l.In, ny = (size_t)l.T * l.O;
    case_init(&c, call_linear_fwd, &l, "linear_forward T=200 In=256 O=92");
    in_f(&c, "x", rand_floats(nx, -1, 1), nx);
    in_f(&c, "w", rand_floats(nw, -1, 1), nw);
    in_f(&c, "b", rand_floats(l.O, -1, 1), l.O);
    out_f(&c, "y", ny, TOL_GEMM);
    check_low_precision_changes(&c);

    case_init(&c, call_linear_bwd, &l, "linear_backward T=200 In=256 O=92");
    in_f(&c, "dy", rand_floats(ny, -1, 1), ny);
    in_f(&c, "x", rand_floats(nx, -1, 1), nx);
    in_f(&c, "w", rand_floats(nw, -1, 1), nw);
    acc_f(&c, "dx", nx, TOL_GEMM);
    acc_f(&c, "dw", nw, TOL_GEMM);
    acc_f(&c, "db", l.O, TOL_GEMM);
    check_low_precision_changes(&c);

    ConvShape s = {.B = 4, .Cin = 32, .H = 8, .W = 8, .Cout = 32, .kh = 3, .kw = 3, .stride = 1,
                   .pad = 1, .dil = 1};
    conv_shape_init(&s);
    const size_t cx = (size_t)s.Cin * s.B * s.H * s.W, cy = (size_t)s.Cout * s.B * s.Ho * s.Wo;
    const size_t cw = (size_t)s.Cout * s.Cin * s.kh * s.kw;
    ConvParams cp = {s, 1};
    case_init(&c, call_conv_fwd, &cp, "conv2d_forward B=4 Cin=32 8x8 Cout=32 k=3x3 p=1");
    in_f(&c, "x", rand_floats(cx, -1, 1), cx);
    in_f(&c, "w", rand_floats(cw, -1, 1), cw);
    in_f(&c, "bias", rand_floats(s.Cout, -1, 1), s.Cout);
    out_f(&c, "y", cy, TOL_GEMM);
    check_low_precision_changes(&c);

    case_init(&c, call_conv_bwd_data, &cp, "conv2d_backward_data B=4 Cin=32 8x8 Cout=32 k=3x3 p=1");
    in_f(&c, "dy", rand_floats(cy, -1, 1), cy);
    in_f(&c, "w", rand_floats(cw, -1, 1), cw);
    acc_f(&c, "dx", cx, TOL_GEMM);
    check_low_precision_changes(&c);

    case_init(&c, call_conv_bwd_weight, &cp,
              "conv2d_backward_weight B=4 Cin=32 8x8 Cout=32 k=3x3 p=1");
    in_f(&c, "dy", rand_floats(cy, -1, 1), cy);
    in_f(&c, "x", rand_floats(cx, -1, 1), cx);
    acc_f(&c, "dw", cw, TOL_GEMM);
    acc_f(&c, "dbias", s.Cout, TOL_GEMM);
    check_low_precision_changes(&c);

    /* back to fp32 for everything that follows (and for other users of the backends) */
    g_ref_precision = g_test_precision = PRECISION_FP32;
    set_backend_precision(g_ref, PRECISION_FP32);
    set_backend_precision(g_test, PRECISION_FP32);
    g_case_tag = "";
    g_tol_matmul = TOL_GEMM;
}

/* ------------------------------------------------------------------------------------------ */
/* the harness must be able to fail: broken copies of the CPU backend                          */

static const Backend *g_cpu_ops;

static void relu_backward_overwrites(const float *dy, const float *y, float *dx, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] = 0.0f; /* forgets to accumulate */
    g_cpu_ops->relu_backward(dy, y, dx, n);
}
static void add_writes_past_end(const float *a, const float *b, float *y, size_t n) {
    g_cpu_ops->add(a, b, y, n);
    y[n] = 0.0f; /* one float into the guard zone */
}
static void relu_forward_skips_last(const float *x, float *y, size_t n) {
    if (n > 1) g_cpu_ops->relu_forward(x, y, n - 1);
}
static void dropout_forward_other_mask(const float *x, float *y, size_t n, float p, uint64_t seed) {
    g_cpu_ops->dropout_forward(x, y, n, p, seed + 1); /* a different (but valid) mask */
}
/* Mixed precision: a linear forward that computes in fp32 whatever the precision (its output is
 * close to the bf16 one but not rounded), and a set_precision that does nothing. */
static void linear_forward_in_fp32(const float *x, const float *w, const float *b, float *y, int T,
                                   int In, int O) {
    g_cpu_ops->set_precision(PRECISION_FP32);
    g_cpu_ops->linear_forward(x, w, b, y, T, In, O);
    g_cpu_ops->set_precision(g_test_precision);
}
static void set_precision_ignored(Precision p) { (void)p; }

/* The two mixed-precision checks catch broken backends: the low_exact check an unrounded bf16
 * output, the "differs" check a backend that ignores set_precision. Needs the CPU emulation. */
static void harness_mixed_precision_checks(void) {
    if (!backend_cpu()->set_precision) {
        test_skip("harness: mixed-precision checks catch broken backends",
                  "backend_cpu() has no set_precision slot");
        return;
    }
    Backend unrounded = *backend_cpu(), deaf = *backend_cpu();
    unrounded.linear_forward = linear_forward_in_fp32;
    deaf.set_precision = set_precision_ignored;
    LinearParams l = {.T = 33, .In = 64, .O = 20, .with_bias = 1};
    const size_t nx = (size_t)l.T * l.In, nw = (size_t)l.O * l.In, ny = (size_t)l.T * l.O;
    OpCase c;
    case_init(&c, call_linear_fwd, &l, "harness: linear_forward bf16");
    in_f(&c, "x", rand_floats(nx, -1, 1), nx);
    in_f(&c, "w", rand_floats(nw, -1, 1), nw);
    in_f(&c, "b", rand_floats(l.O, -1, 1), l.O);
    out_f(&c, "y", ny, TOL_BF16)->low_exact = 1;

    g_ref_precision = g_test_precision = PRECISION_BF16;
    int correct = run_case(&c, backend_cpu(), backend_cpu(), 0);
    int caught = run_case(&c, backend_cpu(), &unrounded, 0);
    CHECK("harness: catches a bf16 forward whose output is not rounded to bf16",
          correct == 0 && caught > 0, "failures: correct %d, broken %d", correct, caught);

    g_ref_precision = PRECISION_FP32; /* the "differs" check: test bf16 against ref fp32 */
    const double err_correct = max_output_error(&c, backend_cpu(), backend_cpu());
    const double err_deaf = max_output_error(&c, backend_cpu(), &deaf);
    CHECK("harness: catches a set_precision that changes nothing (bf16 vs fp32 must differ)",
          err_correct > TOL_GEMM && !(err_deaf > TOL_GEMM),
          "bf16 vs fp32 error: correct %.3g, ignoring set_precision %.3g (threshold %.1g)",
          err_correct, err_deaf, TOL_GEMM);
    case_free(&c);
    g_ref_precision = g_test_precision = PRECISION_FP32;
    set_backend_precision(backend_cpu(), PRECISION_FP32);
}

static void harness_self_checks(void) {
    g_cpu_ops = backend_cpu();
    Backend broken = *backend_cpu();
    broken.relu_backward = relu_backward_overwrites;
    broken.add = add_writes_past_end;
    broken.relu_forward = relu_forward_skips_last;
    broken.dropout_forward = dropout_forward_other_mask;
    const size_t n = 1000;
    ElemParams e = {.n = n, .p = 0.5f, .seed = 5};
    OpCase c;

    case_init(&c, call_relu_bwd, &e, "harness: relu_backward");
    in_f(&c, "dy", rand_floats(n, -1, 1), n);
    in_f(&c, "y", rand_floats(n, -1, 1), n);
    acc_f(&c, "dx", n, TOL_ELEM);
    int correct = run_case(&c, backend_cpu(), backend_cpu(), 0);
    int caught = run_case(&c, backend_cpu(), &broken, 0);
    case_free(&c);
    CHECK("harness: passes a correct backward, catches one that overwrites instead of adding",
          correct == 0 && caught > 0, "failures: correct %d, broken %d", correct, caught);

    case_init(&c, call_add, &e, "harness: add");
    in_f(&c, "a", rand_floats(n, -1, 1), n);
    in_f(&c, "b", rand_floats(n, -1, 1), n);
    out_f(&c, "y", n, TOL_ELEM);
    correct = run_case(&c, backend_cpu(), backend_cpu(), 0);
    caught = run_case(&c, backend_cpu(), &broken, 0);
    case_free(&c);
    CHECK("harness: catches a write past the end of an output (guard zone)",
          correct == 0 && caught > 0, "failures: correct %d, broken %d", correct, caught);

    case_init(&c, call_relu_fwd, &e, "harness: relu_forward");
    in_f(&c, "x", rand_floats(n, -1, 1), n);
    out_f(&c, "y", n, TOL_EXACT);
    correct = run_case(&c, backend_cpu(), backend_cpu(), 0);
    caught = run_case(&c, backend_cpu(), &broken, 0);
    case_free(&c);
    CHECK("harness: catches an output element a forward op never writes (NaN start)",
          correct == 0 && caught > 0, "failures: correct %d, broken %d", correct, caught);

    case_init(&c, call_dropout_fwd, &e, "harness: dropout_forward");
    in_f(&c, "x", rand_nonzero(n), n);
    out_f(&c, "y", n, TOL_ELEM)->zeros_exact = 1;
    correct = run_case(&c, backend_cpu(), backend_cpu(), 0);
    caught = run_case(&c, backend_cpu(), &broken, 0);
    case_free(&c);
    CHECK("harness: catches a dropout mask that differs from the CPU's",
          correct == 0 && caught > 0, "failures: correct %d, broken %d", correct, caught);

    harness_mixed_precision_checks();
}

/* ------------------------------------------------------------------------------------------ */

/* Every slot of the table, for the skip report and the table check. */
static const char *const ALL_OPS[] = {
    "copy", "fill", "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight",
    "channel_affine", "channel_affine_backward", "relu_forward", "relu_backward", "add",
    "add_relu", "axpy", "scale", "sigmoid_forward", "sigmoid_backward", "dropout_forward",
    "dropout_backward", "maxpool_forward", "maxpool_backward", "gemm", "linear_forward",
    "linear_backward", "transpose", "layernorm_forward", "layernorm_backward", "softmax_forward",
    "softmax_backward", "attention_forward", "attention_backward", "sum", "sum_squares", "adamw",
};

static void skip_all(const char *why) {
    char name[96];
    for (size_t i = 0; i < sizeof ALL_OPS / sizeof ALL_OPS[0]; i++) {
        snprintf(name, sizeof name, "cuda vs cpu: %s", ALL_OPS[i]);
        test_skip(name, why);
    }
    test_skip("cuda vs cpu: mixed precision (bf16, fp16): conv, gemm, linear", why);
}

/* Every function slot of the table is set (the struct is a name then only function
 * pointers; checked slot by slot through memcpy so no pointer-type games are needed). */
static void check_table_complete(const Backend *be) {
    const size_t first = offsetof(Backend, alloc), nslots = (sizeof(Backend) - first) / sizeof(void (*)(void));
    size_t missing = 0;
    for (size_t i = 0; i < nslots; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)be + first + i * sizeof fn, sizeof fn);
        missing += fn == NULL;
    }
    CHECK("backend table: every slot is set", missing == 0, "%zu of %zu slots of '%s' are NULL",
          missing, nslots, be->name);
}

static void run_suite(void) {
    suite_elementwise();
    suite_dropout();
    suite_affine();
    suite_conv();
    suite_maxpool();
    suite_gemm();
    suite_linear();
    suite_transpose();
    suite_rows();
    suite_attention();
    suite_reductions();
    suite_adamw();
    suite_mixed_precision();
}

int main(void) {
    harness_self_checks();
    g_ref = backend_cpu();
    const char *self = getenv("DETR_BACKEND_OPS_SELF");
    if (self && strcmp(self, "1") == 0) { /* dry run of the harness: the CPU in both roles */
        printf("DETR_BACKEND_OPS_SELF=1: comparing the CPU backend with itself (no CUDA)\n");
        g_test = backend_cpu();
        check_table_complete(g_test);
        run_suite();
        return test_finish();
    }
#ifdef DETR_CUDA
    char err[512];
    if (cuda_device_init(0, err, sizeof err) != 0) {
        char *nl = strchr(err, '\n');
        if (nl) *nl = '\0';
        skip_all(err);
        return test_finish();
    }
    g_test = backend_cuda();
    check_table_complete(g_test);
    run_suite();
#else
    skip_all("built without DETR_CUDA (make CUDA=1 on a machine with a GPU runs it)");
#endif
    return test_finish();
}
