/* test_adamw.c - gradient clipping, AdamW and the StepLR schedule (trainer/optim.h) against
 * PyTorch: torch.nn.utils.clip_grad_norm_ + torch.optim.AdamW, and
 * torch.optim.lr_scheduler.StepLR.
 *
 * Fixture: $DETR_FIXTURES/adamw/ written by tests/ref/make_fixtures.py (config.json lists the
 * tensors, their group and shape, and the optimizer settings; adamw.safetensors holds the
 * starting values param0.<name>, the raw gradients of every step grads.<name> [steps, ...], the
 * expected values after each step param.<name>.step<k> and the global norms before clipping).
 * lr 1e-2 / 1e-3 and weight decay 0.1 make every term visible: the decay moves a parameter by
 * lr * wd = 1e-3 of itself per step (1e-8 in the model fixtures, below float32 resolution), and
 * the steps mix clipped and unclipped gradients, gradients below eps and all-zero elements.
 *
 * The tensors go through the trainer's own path: params_declare / params_allocate (the two groups,
 * each tensor padded to 16 floats), grad_global_norm, adamw_step on the CPU backend.
 *
 * Tolerance: max|a-b| / (max|b| + 1e-6) <= 1e-5 per tensor and step (float32 AdamW lands ~1e-7
 * from the float64 reference), and 1e-5 relative on the norms. So that these checks can fail,
 * the same run is repeated with one ingredient wrong (no weight decay, no clipping, the two
 * learning rates swapped, Adam's eps 100x larger) and each must miss the reference by more than
 * 100x the tolerance. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "backend.h"
#include "check.h"
#include "optim.h"
#include "params.h"
#include "safetensors.h"

#define TOL 1e-5
#define MAX_TENSORS 16

typedef struct {
    char name[PARAM_NAME_LEN];
    ParamGroup group;
    int ndim, shape[PARAM_MAX_DIMS];
    size_t numel;
    float *p0;        /* [numel] starting values */
    float *grads;     /* [steps, numel] raw gradients */
    float *expected;  /* [steps, numel] values after each step */
} FixTensor;

typedef struct {
    OptimConfig oc;
    int steps, n;
    FixTensor t[MAX_TENSORS];
    float *norms;     /* [steps] global norm before clipping */
} AdamwFixture;

/* ------------------------------------------------------------------------------------------ */
/* StepLR */

static int close_rel(double a, double b, double tol) {
    return fabs(a - b) <= tol * fabs(b);
}

static void test_lr_schedule_rules(void) {
    CHECK("lr_at_epoch: epoch 0 is the base lr", lr_at_epoch(1e-4f, 0, 200) == 1e-4f, "%g",
          lr_at_epoch(1e-4f, 0, 200));
    CHECK("lr_at_epoch: unchanged before the first drop", lr_at_epoch(1e-4f, 199, 200) == 1e-4f, "%g",
          lr_at_epoch(1e-4f, 199, 200));
    CHECK("lr_at_epoch: x0.1 at epoch lr_drop", close_rel(lr_at_epoch(1e-4f, 200, 200), 1e-5, 1e-6), "%g",
          lr_at_epoch(1e-4f, 200, 200));
    CHECK("lr_at_epoch: x0.01 at 2 lr_drop", close_rel(lr_at_epoch(1e-4f, 401, 200), 1e-6, 1e-6), "%g",
          lr_at_epoch(1e-4f, 401, 200));
    CHECK("lr_at_epoch: lr_drop 0 never drops", lr_at_epoch(1e-4f, 1000, 0) == 1e-4f, "%g",
          lr_at_epoch(1e-4f, 1000, 0));
}

/* lr of every epoch against torch's StepLR (config.json "steplr"). */
static void test_lr_schedule_fixture(json_t *root) {
    json_t *s = json_object_get(root, "steplr");
    json_t *lrs = json_object_get(s, "lr_per_epoch");
    json_t *lr = json_object_get(s, "lr"), *step = json_object_get(s, "step_size"), *gamma = json_object_get(s, "gamma");
    if (!json_is_array(lrs) || !json_is_number(lr) || !json_is_integer(step) || !json_is_number(gamma)) {
        CHECK("StepLR fixture", 0, "config.json lacks steplr {lr, step_size, gamma, lr_per_epoch}; "
              "regenerate with tests/ref/make_fixtures.py");
        return;
    }
    CHECK("StepLR fixture: gamma is 0.1 (the only one lr_at_epoch implements)",
          json_number_value(gamma) == 0.1, "gamma %g", json_number_value(gamma));
    double worst = 0;
    size_t n = json_array_size(lrs);
    for (size_t e = 0; e < n; e++) {
        double want = json_number_value(json_array_get(lrs, e));
        double got = lr_at_epoch((float)json_number_value(lr), (int)e, (int)json_integer_value(step));
        worst = fmax(worst, fabs(got - want) / want);
    }
    printf("     StepLR: %zu epochs, worst relative difference %.3g\n", n, worst);
    CHECK("lr_at_epoch matches torch StepLR for every epoch", n > 0 && worst <= 1e-6,
          "worst relative difference %.3g over %zu epochs", worst, n);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading the fixture */

static float *read_named(const StFile *f, const char *name, size_t numel, char *err, size_t errlen) {
    const StTensor *t = st_find(f, name);
    if (!t) {
        snprintf(err, errlen, "%s: tensor '%s' is missing; regenerate with tests/ref/make_fixtures.py", f->path,
                 name);
        return NULL;
    }
    if (st_numel(t) != numel) {
        snprintf(err, errlen, "%s: tensor '%s' has %zu elements, config.json implies %zu", f->path, name,
                 st_numel(t), numel);
        return NULL;
    }
    float *x = malloc(numel * sizeof(float));
    if (x && st_read_f32(f, t, x, err, errlen) == 0) return x;
    free(x);
    return NULL;
}

static int read_optim(json_t *root, AdamwFixture *fx, char *err, size_t errlen) {
    static const char *keys[] = {"lr", "lr_backbone", "weight_decay", "eps", "clip_max_norm"};
    double v[5];
    for (int i = 0; i < 5; i++) {
        json_t *x = json_object_get(root, keys[i]);
        if (!json_is_number(x)) {
            snprintf(err, errlen, "config.json: '%s' missing or not a number", keys[i]);
            return -1;
        }
        v[i] = json_number_value(x);
    }
    json_t *betas = json_object_get(root, "betas"), *steps = json_object_get(root, "steps");
    if (!json_is_array(betas) || json_array_size(betas) != 2 || !json_is_integer(steps) ||
        json_integer_value(steps) < 1) {
        snprintf(err, errlen, "config.json: 'betas' [2] or 'steps' (>= 1) missing");
        return -1;
    }
    optim_config_default(&fx->oc);
    fx->oc.lr = (float)v[0];
    fx->oc.lr_backbone = (float)v[1];
    fx->oc.weight_decay = (float)v[2];
    fx->oc.eps = (float)v[3];
    fx->oc.clip = (float)v[4];
    fx->oc.beta1 = (float)json_number_value(json_array_get(betas, 0));
    fx->oc.beta2 = (float)json_number_value(json_array_get(betas, 1));
    fx->steps = (int)json_integer_value(steps);
    return 0;
}

static int read_tensor_spec(json_t *spec, FixTensor *t, char *err, size_t errlen) {
    json_t *name = json_object_get(spec, "name"), *group = json_object_get(spec, "group");
    json_t *shape = json_object_get(spec, "shape");
    if (!json_is_string(name) || !json_is_string(group) || !json_is_array(shape) || json_array_size(shape) < 1 ||
        json_array_size(shape) > PARAM_MAX_DIMS) {
        snprintf(err, errlen, "config.json: a 'tensors' entry lacks name, group or shape (1-%d dims)",
                 PARAM_MAX_DIMS);
        return -1;
    }
    snprintf(t->name, sizeof(t->name), "%s", json_string_value(name));
    if (strcmp(json_string_value(group), "main") != 0 && strcmp(json_string_value(group), "backbone") != 0) {
        snprintf(err, errlen, "config.json: tensor '%s' has group '%s' (expected main or backbone)", t->name,
                 json_string_value(group));
        return -1;
    }
    t->group = strcmp(json_string_value(group), "main") == 0 ? GROUP_MAIN : GROUP_BACKBONE;
    t->ndim = (int)json_array_size(shape);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        json_t *dim = json_array_get(shape, d);
        if (!json_is_integer(dim) || json_integer_value(dim) < 1) {
            snprintf(err, errlen, "config.json: tensor '%s' has a bad shape", t->name);
            return -1;
        }
        t->shape[d] = (int)json_integer_value(dim);
        t->numel *= (size_t)t->shape[d];
    }
    return 0;
}

static int read_tensors(const StFile *f, AdamwFixture *fx, char *err, size_t errlen) {
    char key[PARAM_NAME_LEN + 32];
    size_t s = (size_t)fx->steps;
    for (int i = 0; i < fx->n; i++) {
        FixTensor *t = &fx->t[i];
        snprintf(key, sizeof(key), "param0.%s", t->name);
        if (!(t->p0 = read_named(f, key, t->numel, err, errlen))) return -1;
        snprintf(key, sizeof(key), "grads.%s", t->name);
        if (!(t->grads = read_named(f, key, s * t->numel, err, errlen))) return -1;
        t->expected = malloc(s * t->numel * sizeof(float));
        for (int k = 0; k < fx->steps; k++) {
            snprintf(key, sizeof(key), "param.%s.step%d", t->name, k + 1);
            float *x = read_named(f, key, t->numel, err, errlen);
            if (!x) return -1;
            memcpy(t->expected + (size_t)k * t->numel, x, t->numel * sizeof(float));
            free(x);
        }
    }
    fx->norms = read_named(f, "grad_norm_per_step", s, err, errlen);
    return fx->norms ? 0 : -1;
}

/* Reads DIR/adamw; returns 0, or -1 with err naming the file and field. */
static int load_fixture(const char *dir, AdamwFixture *fx, json_t **root_out, char *err, size_t errlen) {
    char path[1100];
    memset(fx, 0, sizeof(*fx));
    snprintf(path, sizeof(path), "%s/config.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        snprintf(err, errlen, "%s: %s (line %d)", path, je.text, je.line);
        return -1;
    }
    *root_out = root;
    if (read_optim(root, fx, err, errlen) != 0) return -1;
    json_t *specs = json_object_get(root, "tensors");
    if (!json_is_array(specs) || json_array_size(specs) < 1 || json_array_size(specs) > MAX_TENSORS) {
        snprintf(err, errlen, "%s: 'tensors' must list 1-%d tensors", path, MAX_TENSORS);
        return -1;
    }
    fx->n = (int)json_array_size(specs);
    for (int i = 0; i < fx->n; i++)
        if (read_tensor_spec(json_array_get(specs, i), &fx->t[i], err, errlen) != 0) return -1;
    snprintf(path, sizeof(path), "%s/adamw.safetensors", dir);
    StFile f;
    if (st_open(path, &f, err, errlen) != 0) return -1;
    int rc = read_tensors(&f, fx, err, errlen);
    st_close(&f);
    return rc;
}

static void free_fixture(AdamwFixture *fx) {
    for (int i = 0; i < fx->n; i++) {
        free(fx->t[i].p0);
        free(fx->t[i].grads);
        free(fx->t[i].expected);
    }
    free(fx->norms);
}

/* ------------------------------------------------------------------------------------------ */
/* Replaying the steps through the trainer's optimizer */

typedef struct {
    double param_err[16];  /* [steps] worst normalised error over the tensors after each step */
    double norm_err[16];   /* [steps] relative error of grad_global_norm */
} ReplayResult;

/* Runs all steps with settings oc on a fresh ParamSet; report = 1 adds a CHECK per tensor/step. */
static ReplayResult replay(const AdamwFixture *fx, const OptimConfig *oc, int report) {
    ReplayResult r;
    memset(&r, 0, sizeof(r));
    ParamSet ps;
    params_init(&ps, backend_cpu());
    float *data[MAX_TENSORS], *grad[MAX_TENSORS];
    for (int i = 0; i < fx->n; i++)
        params_declare(&ps, fx->t[i].group, &data[i], &grad[i], fx->t[i].ndim, fx->t[i].shape, "%s", fx->t[i].name);
    params_allocate(&ps);
    for (int i = 0; i < fx->n; i++) memcpy(data[i], fx->t[i].p0, fx->t[i].numel * sizeof(float));
    AdamW opt;
    adamw_create(&opt, &ps, oc);
    char name[256];
    for (int k = 0; k < fx->steps && k < 16; k++) {
        params_zero_grad(&ps);
        for (int i = 0; i < fx->n; i++)
            memcpy(grad[i], fx->t[i].grads + (size_t)k * fx->t[i].numel, fx->t[i].numel * sizeof(float));
        double norm = grad_global_norm(&ps);
        r.norm_err[k] = fabs(norm - fx->norms[k]) / fx->norms[k];
        adamw_step(&opt, &ps, oc->lr, oc->lr_backbone, norm);
        for (int i = 0; i < fx->n; i++) {
            double e = rel_err(data[i], fx->t[i].expected + (size_t)k * fx->t[i].numel, fx->t[i].numel);
            if (e > r.param_err[k] || e != e) r.param_err[k] = e;
            if (report) {
                snprintf(name, sizeof(name), "AdamW step %d %s (%s group)", k + 1, fx->t[i].name,
                         fx->t[i].group == GROUP_MAIN ? "main" : "backbone");
                CHECK(name, e <= TOL, "normalised error %.3g > %.0e", e, TOL);
            }
        }
        if (report) {
            snprintf(name, sizeof(name), "grad_global_norm step %d (%s)", k + 1,
                     fx->norms[k] > oc->clip ? "clipped" : "not clipped");
            CHECK(name, r.norm_err[k] <= TOL, "%.9g vs %.9g (relative error %.3g)", norm, fx->norms[k],
                  r.norm_err[k]);
        }
    }
    adamw_destroy(&opt, &ps);
    params_free(&ps);
    return r;
}

static double worst_of(const double *x, int n) {
    double w = 0;
    for (int i = 0; i < n; i++)
        if (x[i] > w || x[i] != x[i]) w = x[i];
    return w;
}

static void test_fixture_steps(const AdamwFixture *fx) {
    int clipped = 0, unclipped = 0;
    for (int k = 0; k < fx->steps; k++) {
        if (fx->norms[k] > fx->oc.clip)
            clipped++;
        else
            unclipped++;
    }
    CHECK("fixture mixes clipped and unclipped steps", clipped > 0 && unclipped > 0,
          "%d clipped, %d unclipped (clip %g)", clipped, unclipped, fx->oc.clip);
    ReplayResult r = replay(fx, &fx->oc, 1);
    printf("     AdamW: %d tensors, %d steps, worst normalised error %.3g, worst norm error %.3g\n", fx->n,
           fx->steps, worst_of(r.param_err, fx->steps), worst_of(r.norm_err, fx->steps));
}

/* Each wrong ingredient must be seen by the comparison (so the checks above can fail). */
static void test_fixture_detects_mistakes(const AdamwFixture *fx) {
    struct {
        const char *what;
        OptimConfig oc;
    } cases[4];
    for (int i = 0; i < 4; i++) cases[i].oc = fx->oc;
    cases[0].what = "without weight decay";
    cases[0].oc.weight_decay = 0;
    cases[1].what = "without clipping";
    cases[1].oc.clip = 0;
    cases[2].what = "with lr and lr_backbone swapped";
    cases[2].oc.lr = fx->oc.lr_backbone;
    cases[2].oc.lr_backbone = fx->oc.lr;
    cases[3].what = "with eps x100";
    cases[3].oc.eps = fx->oc.eps * 100;
    char name[160];
    for (int i = 0; i < 4; i++) {
        ReplayResult r = replay(fx, &cases[i].oc, 0);
        double w = worst_of(r.param_err, fx->steps);
        printf("     AdamW %s: worst normalised error %.3g\n", cases[i].what, w);
        snprintf(name, sizeof(name), "the fixture tells AdamW %s apart", cases[i].what);
        CHECK(name, w > 100 * TOL, "worst normalised error only %.3g (<= %g)", w, 100 * TOL);
    }
}

int main(void) {
    test_lr_schedule_rules();
    const char *fix = getenv("DETR_FIXTURES");
    if (!fix) {
        test_skip("AdamW fixture", "DETR_FIXTURES is not set (run through tests/run_tests.sh)");
        return test_finish();
    }
    char dir[1024], err[2048];
    snprintf(dir, sizeof(dir), "%s/adamw", fix);
    AdamwFixture fx;
    json_t *root = NULL;
    if (load_fixture(dir, &fx, &root, err, sizeof(err)) != 0) {
        struct stat st;
        if (stat(dir, &st) != 0)
            test_skip("AdamW fixture", "DETR_FIXTURES/adamw missing (tests/ref/make_fixtures.py needs "
                      "/usr/bin/python3 with torch)");
        else
            CHECK("AdamW fixture loads", 0, "%s", err);
    } else {
        test_fixture_steps(&fx);
        test_fixture_detects_mistakes(&fx);
        test_lr_schedule_fixture(root);
    }
    free_fixture(&fx);
    json_decref(root);
    return test_finish();
}
