/* test_golden.c - the whole model against the PyTorch reference (tests/ref/detr_ref.py, run in
 * float64 by tests/ref/make_fixtures.py): for each fixture config, the detr-infer outputs, every
 * loss term, every gradient, and the parameters after 1 and 5 AdamW steps, per tensor, with
 * the normalised error max|a-b| / (max|b| + 1e-6).
 *
 * Tolerances: forward outputs, losses and parameters 1e-4. Gradients 1e-3: they pass through
 * up to ~60 float32 convolutions and LayerNorms whose backward sums thousands of products, and
 * the reference is float64, so float32 accumulation error alone reaches a few 1e-5..1e-4 of the
 * largest gradient in the deepest tensors (the measured worst cases are printed by the test).
 *
 * A gradient that is exactly zero in exact arithmetic cannot be compared relative to itself:
 * in decoder layer 0 the target is all zeros, so every self-attention value is the same bias
 * vector and the attention weights cannot change the output; the q/k rows of that in_proj get
 * a float64 reference gradient of ~1e-16 while any float32 implementation (PyTorch's too) leaves
 * rounding noise of ~1e-7 there. Such a tensor (reference max below 1e-9 of the largest gradient
 * of the model) is compared relative to the largest gradient of the model instead. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "safetensors.h"

#define TOL_OUT 1e-4
#define TOL_GRAD 1e-3
#define TOL_PARAM 1e-4

static const char *g_fix, *g_build;

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Compares every tensor of `expected` whose name starts with prefix against `got`. */
static void compare_files(const char *cfg, const char *what, const char *expected, const char *got,
                          const char *prefix, double tol, int zero_rule) {
    StFile fe, fg;
    char err[1024], name[256];
    if (st_open(expected, &fe, err, sizeof(err)) != 0) {
        snprintf(name, sizeof(name), "%s %s: open expected", cfg, what);
        CHECK(name, 0, "%s", err);
        return;
    }
    if (st_open(got, &fg, err, sizeof(err)) != 0) {
        snprintf(name, sizeof(name), "%s %s: open output", cfg, what);
        CHECK(name, 0, "%s", err);
        st_close(&fe);
        return;
    }
    int compared = 0;
    double worst = 0, global_max = 0;
    for (int i = 0; zero_rule && i < fe.n; i++) { /* largest reference value over the prefix */
        const StTensor *te = &fe.tensors[i];
        if (strncmp(te->name, prefix, strlen(prefix)) != 0) continue;
        size_t n = st_numel(te);
        float *b = malloc((n ? n : 1) * sizeof(float));
        st_read_f32(&fe, te, b, err, sizeof(err));
        for (size_t k = 0; k < n; k++) global_max = fmax(global_max, fabs(b[k]));
        free(b);
    }
    const char *worst_name = "";
    for (int i = 0; i < fe.n; i++) {
        const StTensor *te = &fe.tensors[i];
        if (strncmp(te->name, prefix, strlen(prefix)) != 0) continue;
        snprintf(name, sizeof(name), "%s %s %s", cfg, what, te->name);
        const StTensor *tg = st_find(&fg, te->name);
        if (!tg) {
            CHECK(name, 0, "missing from %s", got);
            continue;
        }
        size_t n = st_numel(te);
        if (st_numel(tg) != n) { /* a scalar may be stored as [] or [1] */
            CHECK(name, 0, "shape differs (%zu vs %zu elements)", st_numel(tg), n);
            continue;
        }
        float *a = malloc((n ? n : 1) * sizeof(float)), *b = malloc((n ? n : 1) * sizeof(float));
        st_read_f32(&fg, tg, a, err, sizeof(err));
        st_read_f32(&fe, te, b, err, sizeof(err));
        double e = rel_err(a, b, n), bmax = 0;
        for (size_t k = 0; k < n; k++) bmax = fmax(bmax, fabs(b[k]));
        if (zero_rule && bmax < 1e-9 * global_max) {
            double md = 0;
            for (size_t k = 0; k < n; k++) md = fmax(md, fabs((double)a[k] - b[k]));
            e = md / global_max;
            printf("     %s: reference is zero (max %.2g); error relative to the largest gradient %.3g\n",
                   te->name, bmax, e);
        }
        if (e > worst) worst = e, worst_name = te->name;
        CHECK(name, e <= tol, "normalised error %.3g > %.1g", e, tol);
        compared++;
        free(a);
        free(b);
    }
    printf("     %s %s: %d tensors, worst normalised error %.3g (%s)\n", cfg, what, compared, worst,
           worst_name);
    snprintf(name, sizeof(name), "%s %s: tensors compared", cfg, what);
    CHECK(name, compared > 0, "no tensor with prefix '%s' in %s", prefix, expected);
    st_close(&fe);
    st_close(&fg);
}

/* Reads the optimizer settings the fixture was made with, as detr-train options. */
static void optim_args(const char *dir, char *out, size_t len) {
    char path[600];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    out[0] = 0;
    if (!root) return;
    static const char *keys[][2] = {{"lr", "--lr"}, {"lr_backbone", "--lr-backbone"},
                                    {"weight_decay", "--weight-decay"}, {"clip", "--clip"}};
    size_t used = 0;
    for (int i = 0; i < 4; i++) {
        json_t *v = json_object_get(root, keys[i][0]);
        if (v && json_is_number(v))
            used += snprintf(out + used, len - used, " %s %.9g", keys[i][1], json_number_value(v));
    }
    json_decref(root);
}

static int run(const char *cmd) {
    int rc = system(cmd);
    return rc;
}

static void check_config(const char *cfg) {
    char dir[512], cmd[8192], out[600], name[256], opt[512];
    snprintf(dir, sizeof(dir), "%s/%s", g_fix, cfg);
    snprintf(name, sizeof(name), "golden %s", cfg);
    if (!exists(dir)) {
        test_skip(name, "fixture folder missing (tests/ref/make_fixtures.py needs /usr/bin/python3 with torch)");
        return;
    }
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char work[512];
    snprintf(work, sizeof(work), "%s/detr-golden-%d-%s", tmp, (int)getpid(), cfg);
    mkdir(work, 0755);
    optim_args(dir, opt, sizeof(opt));

    snprintf(out, sizeof(out), "%s/infer.safetensors", work);
    snprintf(cmd, sizeof(cmd), "%s/detr-infer --threads 2 --weights %s/weights.safetensors "
             "--inputs %s/inputs.safetensors --out %s", g_build, dir, dir, out);
    snprintf(name, sizeof(name), "%s detr-infer runs", cfg);
    CHECK(name, run(cmd) == 0, "command failed: %s", cmd);
    if (exists(out)) {
        char exp[600];
        snprintf(exp, sizeof(exp), "%s/expected_infer.safetensors", dir);
        compare_files(cfg, "forward", exp, out, "pred_", TOL_OUT, 0);
        compare_files(cfg, "forward", exp, out, "aux_pred_", TOL_OUT, 0);
    }

    snprintf(out, sizeof(out), "%s/grads.safetensors", work);
    snprintf(cmd, sizeof(cmd), "%s/detr-train --threads 2 --weights %s/weights.safetensors "
             "--inputs %s/inputs.safetensors --targets %s/targets.json --dropout 0 --dump-grads %s%s",
             g_build, dir, dir, dir, out, opt);
    snprintf(name, sizeof(name), "%s detr-train --dump-grads runs", cfg);
    CHECK(name, run(cmd) == 0, "command failed: %s", cmd);
    if (exists(out)) {
        char exp[600];
        snprintf(exp, sizeof(exp), "%s/expected_grads.safetensors", dir);
        compare_files(cfg, "losses", exp, out, "loss", TOL_OUT, 0);
        compare_files(cfg, "logged errors", exp, out, "class_error", TOL_OUT, 0);
        compare_files(cfg, "logged errors", exp, out, "cardinality_error", TOL_OUT, 0);
        compare_files(cfg, "gradients", exp, out, "grad.", TOL_GRAD, 1);
    }
    for (int steps = 1; steps <= 5; steps += 4) {
        snprintf(out, sizeof(out), "%s/steps%d.safetensors", work, steps);
        snprintf(cmd, sizeof(cmd), "%s/detr-train --threads 2 --weights %s/weights.safetensors "
                 "--inputs %s/inputs.safetensors --targets %s/targets.json --dropout 0 --steps %d "
                 "--dump-grads %s%s", g_build, dir, dir, dir, steps, out, opt);
        snprintf(name, sizeof(name), "%s detr-train --steps %d runs", cfg, steps);
        CHECK(name, run(cmd) == 0, "command failed: %s", cmd);
        if (exists(out)) {
            char exp[600], what[32];
            snprintf(exp, sizeof(exp), "%s/expected_step%d.safetensors", dir, steps);
            snprintf(what, sizeof(what), "after %d step%s", steps, steps > 1 ? "s" : "");
            compare_files(cfg, what, exp, out, "param.", TOL_PARAM, 0);
        }
    }
    snprintf(cmd, sizeof(cmd), "rm -rf %s", work);
    run(cmd);
}

int main(void) {
    g_fix = getenv("DETR_FIXTURES");
    g_build = getenv("DETR_BUILD");
    if (!g_build) g_build = "build";
    if (!g_fix) {
        test_skip("golden", "DETR_FIXTURES is not set (run through tests/run_tests.sh)");
        return test_finish();
    }
    const char *configs[] = {"tiny", "r50mini", "prenorm"};
    for (int i = 0; i < 3; i++) check_config(configs[i]);
    return test_finish();
}
