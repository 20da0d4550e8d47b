/* test_transformer.c - DETR's transformer (trainer/transformer.c) on the CPU backend.
 *   1. Finite differences of L = sum(hs * r) w.r.t. src, query_pos and sampled entries of every
 *      parameter tensor, post-norm and pre-norm (D=8, H=2, F=12, 2+2 layers, Q=3, B=2, S=5,
 *      image 1 has its last two keys padded).
 *   2. Dropout: same seed -> identical hs, other seed -> different hs, and the finite-difference
 *      check again with dropout on (the masks are fixed by the seed).
 *   3. Padded keys have no influence: changing src at padded positions of image 1 leaves image
 *      1's hs unchanged, and their src gradient is zero.
 *   4. Backward accumulates (twice = double), and NULL dsrc / dquery_pos change nothing else.
 *   5. Parameter names and counts at the R50 shape (17,363,456 floats, detr.md §1.8), and the
 *      reference initialisation. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "arena.h"
#include "backend.h"
#include "check.h"
#include "params.h"
#include "rng.h"
#include "transformer.h"

#define B_IMG 2
#define S_TOK 5
#define FD_TOL 2e-2 /* max |analytic - fd| / (max |fd| of the tensor + FD_FLOOR) */
#define FD_FLOOR 5e-2
#define SAMPLES_PER_TENSOR 6

typedef struct {
    const Backend *be;
    DetrConfig cfg;
    ParamSet ps;
    Transformer *tf;
    Arena *acts;
    int B, S, L, Q, D;
    float *src, *pos; /* [B*S, D] */
    float *qpos;      /* [Q, D] */
    uint8_t *mask;    /* [B, S] */
    float *hs, *r;    /* [L, B*Q, D] */
    float *dsrc;      /* [B*S, D] */
    float *dqpos;     /* [Q, D] */
    int training;
    uint64_t seed;
} Fixture;

static void fill_normal(Rng *rng, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_next_normal(rng);
}

static DetrConfig tiny_config(int pre_norm, float dropout) {
    DetrConfig c;
    memset(&c, 0, sizeof c);
    c.hidden = 8, c.nheads = 2, c.ffn = 12, c.enc_layers = 2, c.dec_layers = 2, c.queries = 3;
    c.dropout = dropout, c.pre_norm = pre_norm;
    return c;
}

/* Tiny transformer with reference init plus noise on every parameter (so LayerNorm affine and
 * attention biases are not at their trivial 1/0 values), random inputs and projection r. */
static void fixture_init(Fixture *f, int pre_norm, float dropout, int training) {
    memset(f, 0, sizeof *f);
    f->be = backend_cpu();
    f->cfg = tiny_config(pre_norm, dropout);
    f->B = B_IMG, f->S = S_TOK, f->L = f->cfg.dec_layers, f->Q = f->cfg.queries,
    f->D = f->cfg.hidden;
    params_init(&f->ps, f->be);
    f->tf = transformer_create(&f->cfg, &f->ps);
    params_allocate(&f->ps);
    Rng rng = {.seed = 1234, .counter = 0};
    transformer_init(f->tf, f->be, &rng);
    /* Vectors get +-0.5: with small attention biases the first decoder layer normalises an
     * almost constant row (its self-attention output does not depend on the zero tgt), whose
     * tiny variance makes the loss so curved that finite differences lose their accuracy. */
    for (int i = 0; i < f->ps.n; i++) {
        Param *p = &f->ps.p[i];
        float amp = p->ndim == 1 ? 1.0f : 0.2f;
        for (size_t j = 0; j < p->numel; j++) p->data[j] += amp * (rng_next_uniform(&rng) - 0.5f);
    }
    f->acts = arena_create(f->be, MEM_ACTS);
    size_t TD = (size_t)f->B * f->S * f->D, HS = (size_t)f->L * f->B * f->Q * f->D;
    f->src = calloc(TD, sizeof(float));
    f->pos = calloc(TD, sizeof(float));
    f->dsrc = calloc(TD, sizeof(float));
    f->qpos = calloc((size_t)f->Q * f->D, sizeof(float));
    f->dqpos = calloc((size_t)f->Q * f->D, sizeof(float));
    f->hs = calloc(HS, sizeof(float));
    f->r = calloc(HS, sizeof(float));
    f->mask = calloc((size_t)f->B * f->S, 1);
    fill_normal(&rng, f->src, TD, 1.0f);
    fill_normal(&rng, f->pos, TD, 1.0f);
    fill_normal(&rng, f->qpos, (size_t)f->Q * f->D, 1.0f);
    fill_normal(&rng, f->r, HS, 1.0f);
    f->mask[1 * f->S + 3] = f->mask[1 * f->S + 4] = 1; /* image 1: keys 3, 4 are padding */
    f->training = training;
    f->seed = 777;
}

static void fixture_free(Fixture *f) {
    transformer_destroy(f->tf);
    params_free(&f->ps);
    arena_destroy(f->acts);
    free(f->src), free(f->pos), free(f->dsrc), free(f->qpos), free(f->dqpos);
    free(f->hs), free(f->r), free(f->mask);
}

static void forward(Fixture *f) {
    arena_reset(f->acts);
    transformer_forward(f->tf, f->be, f->acts, f->src, f->pos, f->mask, f->qpos, f->B, f->S, f->hs,
                        f->training, f->seed);
}

static double loss(Fixture *f) {
    forward(f);
    size_t n = (size_t)f->L * f->B * f->Q * f->D;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)f->hs[i] * f->r[i];
    return s;
}

/* Fresh gradients of L: parameter grads, dsrc and dqpos (each NULL-able via the flags). */
static void gradients(Fixture *f, int want_dsrc, int want_dqpos) {
    params_zero_grad(&f->ps);
    memset(f->dsrc, 0, (size_t)f->B * f->S * f->D * sizeof(float));
    memset(f->dqpos, 0, (size_t)f->Q * f->D * sizeof(float));
    forward(f);
    transformer_backward(f->tf, f->be, f->acts, f->r, want_dsrc ? f->dsrc : NULL,
                         want_dqpos ? f->dqpos : NULL);
}

/* Central difference of L at x with step h (the float step actually taken as denominator). */
static double fd_step(Fixture *f, float *x, double h) {
    float v = *x, up = v + (float)h, down = v - (float)h;
    *x = up;
    double lp = loss(f);
    *x = down;
    double lm = loss(f);
    *x = v;
    return (lp - lm) / ((double)up - (double)down);
}

/* |fd - analytic| for the best of a few steps: LayerNorm over 8 features and softmax make the
 * loss strongly curved in places (large steps are biased) while float32 rounding limits small
 * steps; a wrong analytic gradient matches at none of them. *fd_out gets the best estimate. */
static double fd_entry_error(Fixture *f, float *x, double analytic, double *fd_out) {
    static const double steps[] = {1e-2, 3e-3, 1e-3, 3e-4, 1e-4};
    double best = INFINITY;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        double fd = fd_step(f, x, steps[i]), err = fabs(fd - analytic);
        if (err < best) best = err, *fd_out = fd;
    }
    return best;
}

/* Compares analytic[idx[k]] with finite differences of x[idx[k]]; returns the normalised error. */
static double fd_compare(Fixture *f, float *x, const float *analytic, const size_t *idx, int n,
                         double *max_grad) {
    double max_diff = 0, max_fd = 0;
    for (int k = 0; k < n; k++) {
        double fd = 0;
        max_diff = fmax(max_diff, fd_entry_error(f, x + idx[k], analytic[idx[k]], &fd));
        max_fd = fmax(max_fd, fabs(fd));
    }
    *max_grad = max_fd;
    return max_diff / (max_fd + FD_FLOOR);
}

/* Stratified sample of n indices in [0, numel) (so in_proj gets q, k and v rows). */
static int sample_indices(Rng *rng, size_t numel, size_t *idx, int n) {
    if ((size_t)n > numel) n = (int)numel;
    for (int k = 0; k < n; k++) {
        size_t lo = numel * k / n, hi = numel * (k + 1) / n;
        idx[k] = lo + (size_t)(rng_next_uniform(rng) * (float)(hi - lo)) % (hi - lo);
    }
    return n;
}

/* FD check of src, query_pos and every parameter tensor; one CHECK per group. */
static void fd_check_all(Fixture *f, const char *label) {
    char name[256];
    Rng rng = {.seed = 99, .counter = 0};
    size_t idx[64];
    double g;

    /* analytic gradients, copied since the FD forwards reuse the arena */
    gradients(f, 1, 1);
    size_t TD = (size_t)f->B * f->S * f->D, QD = (size_t)f->Q * f->D;
    float *a_src = malloc(TD * sizeof(float)), *a_qpos = malloc(QD * sizeof(float));
    float *a_par = malloc(f->ps.n_train * sizeof(float));
    memcpy(a_src, f->dsrc, TD * sizeof(float));
    memcpy(a_qpos, f->dqpos, QD * sizeof(float));
    memcpy(a_par, f->ps.train_grad, f->ps.n_train * sizeof(float));

    /* src: every entry of image 0 token 0 and all tokens of image 1, sampled */
    int n = 0;
    for (size_t i = 0; i < TD && n < 40; i += 2) idx[n++] = i;
    double e = fd_compare(f, f->src, a_src, idx, n, &g);
    snprintf(name, sizeof name, "%s: d src (%d entries)", label, n);
    CHECK(name, e < FD_TOL, "normalised error %.3g (max |grad| %.3g)", e, g);

    for (size_t i = 0; i < QD; i++) idx[i] = i;
    e = fd_compare(f, f->qpos, a_qpos, idx, (int)QD, &g);
    snprintf(name, sizeof name, "%s: d query_pos (all %zu)", label, QD);
    CHECK(name, e < FD_TOL, "normalised error %.3g (max |grad| %.3g)", e, g);

    double worst = 0;
    const char *worst_name = "";
    int bad = 0;
    for (int i = 0; i < f->ps.n; i++) {
        Param *p = &f->ps.p[i];
        n = sample_indices(&rng, p->numel, idx, SAMPLES_PER_TENSOR);
        e = fd_compare(f, p->data, a_par + p->offset, idx, n, &g);
        if (e >= FD_TOL) {
            printf("  %s: %s normalised error %.3g (max |grad| %.3g)\n", label, p->name, e, g);
            bad++;
        }
        if (e > worst) worst = e, worst_name = p->name;
    }
    snprintf(name, sizeof name, "%s: d every parameter tensor (%d tensors)", label, f->ps.n);
    CHECK(name, bad == 0, "%d tensors off; worst %s %.3g", bad, worst_name, worst);
    printf("  %s: worst parameter error %.3g (%s)\n", label, worst, worst_name);
    free(a_src), free(a_qpos), free(a_par);
}

static void test_finite_differences(void) {
    Fixture f;
    fixture_init(&f, 0, 0.1f, 0);
    fd_check_all(&f, "post-norm");
    fixture_free(&f);
    fixture_init(&f, 1, 0.1f, 0);
    fd_check_all(&f, "pre-norm");
    fixture_free(&f);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static void test_dropout(void) {
    Fixture f;
    fixture_init(&f, 0, 0.1f, 1);
    size_t HS = (size_t)f.L * f.B * f.Q * f.D;
    float *first = malloc(HS * sizeof(float));
    forward(&f);
    memcpy(first, f.hs, HS * sizeof(float));
    forward(&f);
    CHECK("dropout: same seed gives identical hs", memcmp(first, f.hs, HS * sizeof(float)) == 0,
          "max diff %.3g", max_abs_diff(first, f.hs, HS));
    f.seed = 778;
    forward(&f);
    double d_seed = max_abs_diff(first, f.hs, HS);
    CHECK("dropout: another seed gives different hs", d_seed > 1e-3, "max diff %.3g", d_seed);
    f.training = 0;
    forward(&f);
    double d_eval = max_abs_diff(first, f.hs, HS);
    CHECK("dropout: eval (training=0) differs from training", d_eval > 1e-3, "max diff %.3g",
          d_eval);
    f.seed = 1;
    forward(&f);
    memcpy(first, f.hs, HS * sizeof(float));
    f.seed = 2;
    forward(&f);
    CHECK("dropout: eval ignores the seed", memcmp(first, f.hs, HS * sizeof(float)) == 0,
          "max diff %.3g", max_abs_diff(first, f.hs, HS));
    free(first);
    fixture_free(&f);

    fixture_init(&f, 0, 0.1f, 1);
    fd_check_all(&f, "post-norm dropout");
    fixture_free(&f);
    fixture_init(&f, 1, 0.1f, 1);
    fd_check_all(&f, "pre-norm dropout");
    fixture_free(&f);
}

/* Rows of image b in every decoder layer of hs [L, B*Q, D]. */
static double image_hs_diff(const Fixture *f, const float *a, const float *b, int img) {
    double m = 0;
    size_t QD = (size_t)f->Q * f->D;
    for (int l = 0; l < f->L; l++) {
        size_t off = ((size_t)l * f->B + img) * QD;
        m = fmax(m, max_abs_diff(a + off, b + off, QD));
    }
    return m;
}

static void test_mask(int pre_norm, int training) {
    char name[160];
    const char *label = pre_norm ? "pre-norm" : "post-norm";
    Fixture f;
    fixture_init(&f, pre_norm, 0.1f, training);
    size_t HS = (size_t)f.L * f.B * f.Q * f.D;
    float *before = malloc(HS * sizeof(float));
    forward(&f);
    memcpy(before, f.hs, HS * sizeof(float));
    for (int s = 3; s < f.S; s++)
        for (int d = 0; d < f.D; d++)
            f.src[((size_t)1 * f.S + s) * f.D + d] += 5.0f * (d % 3 - 1) + 3.0f;
    forward(&f);
    double d1 = image_hs_diff(&f, before, f.hs, 1), d0 = image_hs_diff(&f, before, f.hs, 0);
    snprintf(name, sizeof name, "mask (%s%s): padded src leaves image 1's hs unchanged", label,
             training ? ", dropout" : "");
    CHECK(name, d1 <= 1e-6 && d0 == 0.0, "max diff image 1 %.3g, image 0 %.3g", d1, d0);

    gradients(&f, 1, 0);
    double g_pad = 0, g_valid = 0;
    for (int s = 0; s < f.S; s++)
        for (int d = 0; d < f.D; d++) {
            double g = fabs(f.dsrc[((size_t)1 * f.S + s) * f.D + d]);
            if (s >= 3)
                g_pad = fmax(g_pad, g);
            else
                g_valid = fmax(g_valid, g);
        }
    snprintf(name, sizeof name, "mask (%s%s): zero gradient at padded src", label,
             training ? ", dropout" : "");
    CHECK(name, g_pad == 0.0 && g_valid > 1e-4, "max |dsrc| padded %.3g, valid %.3g", g_pad,
          g_valid);
    free(before);
    fixture_free(&f);
}

static void test_accumulation(void) {
    Fixture f;
    fixture_init(&f, 0, 0.1f, 1);
    size_t TD = (size_t)f.B * f.S * f.D, QD = (size_t)f.Q * f.D, NP = f.ps.n_train;
    gradients(&f, 1, 1);
    float *g1 = malloc((NP + TD + QD) * sizeof(float));
    memcpy(g1, f.ps.train_grad, NP * sizeof(float));
    memcpy(g1 + NP, f.dsrc, TD * sizeof(float));
    memcpy(g1 + NP + TD, f.dqpos, QD * sizeof(float));
    /* a second backward of the same forward adds the same amounts again */
    transformer_backward(f.tf, f.be, f.acts, f.r, f.dsrc, f.dqpos);
    double worst = 0;
    for (size_t i = 0; i < NP; i++) worst = fmax(worst, fabs(f.ps.train_grad[i] - 2.0 * g1[i]));
    for (size_t i = 0; i < TD; i++) worst = fmax(worst, fabs(f.dsrc[i] - 2.0 * g1[NP + i]));
    for (size_t i = 0; i < QD; i++) worst = fmax(worst, fabs(f.dqpos[i] - 2.0 * g1[NP + TD + i]));
    CHECK("backward accumulates into parameter, src and query_pos gradients", worst < 1e-5,
          "max |second - 2*first| %.3g", worst);

    gradients(&f, 0, 0);
    double d = max_abs_diff(f.ps.train_grad, g1, NP);
    CHECK("NULL dsrc and dquery_pos leave parameter gradients unchanged", d < 1e-6, "max diff %.3g",
          d);
    free(g1);
    fixture_free(&f);
}

static size_t transformer_floats(ParamSet *ps) {
    size_t n = 0;
    for (int i = 0; i < ps->n; i++)
        if (strncmp(ps->p[i].name, "transformer.", 12) == 0) n += ps->p[i].numel;
    return n;
}

static int has_shape(ParamSet *ps, const char *name, int d0, int d1) {
    Param *p = params_find(ps, name);
    if (!p) return 0;
    return d1 ? (p->ndim == 2 && p->shape[0] == d0 && p->shape[1] == d1)
              : (p->ndim == 1 && p->shape[0] == d0);
}

static void test_names_and_counts(void) {
    DetrConfig c;
    detr_config_preset("r50", &c);
    ParamSet ps;
    params_init(&ps, backend_cpu());
    Transformer *t = transformer_create(&c, &ps);
    size_t n = transformer_floats(&ps);
    CHECK("R50 post-norm transformer has 17,363,456 floats", n == 17363456, "got %zu", n);
    int ok = has_shape(&ps, "transformer.encoder.layers.5.self_attn.in_proj_weight", 768, 256) &&
             has_shape(&ps, "transformer.decoder.layers.0.multihead_attn.out_proj.bias", 256, 0) &&
             has_shape(&ps, "transformer.decoder.layers.5.linear2.weight", 256, 2048) &&
             has_shape(&ps, "transformer.decoder.layers.3.norm3.weight", 256, 0) &&
             has_shape(&ps, "transformer.decoder.norm.bias", 256, 0) &&
             !params_find(&ps, "transformer.encoder.norm.weight");
    CHECK("R50 post-norm names and shapes follow the reference state dict", ok,
          "a name or shape differs");
    transformer_destroy(t);
    params_free(&ps);

    c.pre_norm = 1;
    params_init(&ps, backend_cpu());
    t = transformer_create(&c, &ps);
    n = transformer_floats(&ps);
    CHECK("R50 pre-norm adds transformer.encoder.norm (512 floats)",
          n == 17363456 + 512 && has_shape(&ps, "transformer.encoder.norm.weight", 256, 0),
          "got %zu", n);
    transformer_destroy(t);
    params_free(&ps);

    c.nheads = 7;
    params_init(&ps, backend_cpu());
    t = transformer_create(&c, &ps);
    CHECK("hidden not divisible by nheads is refused", t == NULL, "transformer_create accepted it");
    transformer_destroy(t);
    params_free(&ps);
}

/* max |x| and the standard deviation of x [n] */
static void stats(const float *x, size_t n, double *max_abs, double *sd) {
    double s = 0, ss = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        s += x[i], ss += (double)x[i] * x[i];
        m = fmax(m, fabs(x[i]));
    }
    *max_abs = m;
    *sd = sqrt(ss / n - (s / n) * (s / n));
}

/* U(-b, b): max close to b, sd = b / sqrt(3) */
static int uniform_like(ParamSet *ps, const char *name, double b) {
    Param *p = params_find(ps, name);
    if (!p) return 0;
    double m, sd;
    stats(p->data, p->numel, &m, &sd);
    double sd_tol = p->numel > 10000 ? 0.02 : 0.15;
    int ok = m <= b && m > 0.97 * b && fabs(sd / (b / sqrt(3.0)) - 1.0) < sd_tol;
    if (!ok) printf("  %s: max %.5g sd %.5g, expected bound %.5g\n", name, m, sd, b);
    return ok;
}

static int constant(ParamSet *ps, const char *name, float v) {
    Param *p = params_find(ps, name);
    if (!p) return 0;
    for (size_t i = 0; i < p->numel; i++)
        if (p->data[i] != v) return 0;
    return 1;
}

static void test_init(void) {
    DetrConfig c;
    detr_config_preset("r50", &c);
    c.enc_layers = 1, c.dec_layers = 1;
    ParamSet ps;
    params_init(&ps, backend_cpu());
    Transformer *t = transformer_create(&c, &ps);
    params_allocate(&ps);
    Rng rng = {.seed = 5, .counter = 0};
    transformer_init(t, backend_cpu(), &rng);
    const char *e = "transformer.encoder.layers.0", *d = "transformer.decoder.layers.0";
    char n1[160], n2[160], n3[160], n4[160];
    snprintf(n1, sizeof n1, "%s.self_attn.in_proj_weight", e);
    snprintf(n2, sizeof n2, "%s.multihead_attn.out_proj.weight", d);
    snprintf(n3, sizeof n3, "%s.linear1.weight", e);
    snprintf(n4, sizeof n4, "%s.linear2.weight", d);
    int xavier = uniform_like(&ps, n1, sqrt(6.0 / 1024)) &&
                 uniform_like(&ps, n2, sqrt(6.0 / 512)) &&
                 uniform_like(&ps, n3, sqrt(6.0 / 2304)) && uniform_like(&ps, n4, sqrt(6.0 / 2304));
    CHECK("init: xavier_uniform on in_proj (one [768,256] matrix), out_proj, linear1/2", xavier,
          "bounds or spread differ");
    snprintf(n1, sizeof n1, "%s.linear1.bias", d);
    snprintf(n2, sizeof n2, "%s.linear2.bias", e);
    CHECK("init: linear biases U(+-1/sqrt(fan_in))",
          uniform_like(&ps, n1, 1.0 / 16.0) && uniform_like(&ps, n2, 1.0 / sqrt(2048.0)),
          "bounds differ");
    snprintf(n1, sizeof n1, "%s.self_attn.in_proj_bias", d);
    snprintf(n2, sizeof n2, "%s.multihead_attn.out_proj.bias", d);
    snprintf(n3, sizeof n3, "%s.norm3.weight", d);
    snprintf(n4, sizeof n4, "%s.norm1.bias", e);
    CHECK("init: attention biases 0, LayerNorm weight 1 and bias 0",
          constant(&ps, n1, 0) && constant(&ps, n2, 0) && constant(&ps, n3, 1) &&
              constant(&ps, n4, 0) && constant(&ps, "transformer.decoder.norm.weight", 1) &&
              constant(&ps, "transformer.decoder.norm.bias", 0),
          "a constant differs");
    transformer_destroy(t);
    params_free(&ps);
}

int main(void) {
    test_names_and_counts();
    test_init();
    test_finite_differences();
    test_dropout();
    test_mask(0, 0);
    test_mask(1, 0);
    test_mask(0, 1);
    test_accumulation();
    return test_finish();
}
