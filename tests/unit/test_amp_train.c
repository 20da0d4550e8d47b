/* test_amp_train.c - mixed-precision training (--amp) on the CPU backend, whose bf16/fp16 are
 * emulated with the numerics the CUDA backend has (tests/unit/test_amp_ops.c checks the ops
 * against PyTorch):
 *   1. the loss scaler against the rule and defaults of PyTorch's GradScaler (init 65536, x0.5
 *      and skip on inf/NaN, x2 after 2000 finite steps in a row; torch.cuda.amp.GradScaler docs);
 *   2. detr-train --amp fp16 with a loss scale far too high: the first steps overflow and are
 *      skipped, each halving the scale, until training proceeds; every step's scale follows the
 *      rule from the previous one (checked in SQL on the profile); skipped steps have no gradient
 *      norm and leave the weights bitwise unchanged (an all-skipped run ends at its --save-init
 *      weights); detr-prof summary counts them;
 *   3. fp16 --resume: the loss, gradient-norm and loss-scale sequences are bitwise those of the
 *      uninterrupted run (the scale and its growth tracker live in the checkpoint);
 *   4. fp16 with --recompute backbone trains bitwise as without it;
 *   5. --amp bf16: the first step's loss differs from float32's (the rounding happened) by less
 *      than 1%; the run record names the precision. */
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "loss_scaler.h"
#include "safetensors.h"
#include "test_db.h"
#include "test_util.h"
#include "train_test_util.h"

static char g_root[256], g_build[512], g_common[2048];

static sqlite3 *open_db(const char *dir) {
    char path[600];
    snprintf(path, sizeof(path), "%s/%s/profile.sqlite", g_root, dir);
    return db_open_ro(path);
}

static int train(const char *extra, char **log) {
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "%s/detr-train %s %s", g_build, g_common, extra);
    return run_merged(g_root, cmd, log);
}

static void test_scaler_rule(void) {
    LossScaler s;
    loss_scaler_init(&s, 1, 0);
    CHECK("scaler: GradScaler's defaults", s.scale == 65536.0 && s.growth_interval == 2000 &&
          s.growth_factor == 2.0 && s.backoff_factor == 0.5, "scale %g interval %d", s.scale, s.growth_interval);
    for (int i = 0; i < 3; i++) loss_scaler_update(&s, 1);
    CHECK("scaler: each overflow halves the scale and counts a skipped step",
          s.scale == 8192.0 && s.skipped == 3 && s.growth_tracker == 0, "scale %g skipped %lld", s.scale,
          (long long)s.skipped);
    for (int i = 0; i < 1999; i++) loss_scaler_update(&s, 0);
    CHECK("scaler: 1999 finite steps do not grow it", s.scale == 8192.0 && s.growth_tracker == 1999, "scale %g",
          s.scale);
    loss_scaler_update(&s, 0);
    CHECK("scaler: the 2000th finite step in a row doubles it", s.scale == 16384.0 && s.growth_tracker == 0,
          "scale %g tracker %d", s.scale, s.growth_tracker);
    for (int i = 0; i < 1500; i++) loss_scaler_update(&s, 0);
    loss_scaler_update(&s, 1);
    for (int i = 0; i < 1999; i++) loss_scaler_update(&s, 0);
    CHECK("scaler: an overflow restarts the count of finite steps", s.scale == 8192.0 && s.growth_tracker == 1999,
          "scale %g tracker %d", s.scale, s.growth_tracker);
    LossScaler off;
    loss_scaler_init(&off, 0, 1024);
    loss_scaler_update(&off, 1);
    CHECK("scaler: disabled, the scale is 1 and nothing changes",
          loss_scaler_scale(&off) == 1.0 && off.skipped == 0, "scale %g", loss_scaler_scale(&off));
}

/* every step's loss_scale follows from the previous step's (no 2000-step growth in these runs) */
static const char *rule_violations_sql =
    "SELECT count(*) FROM DETR_STEPS s JOIN DETR_STEPS p ON p.step = s.step - 1 AND p.run_id = s.run_id "
    "WHERE s.loss_scale IS NOT CASE WHEN p.skipped THEN p.loss_scale / 2 ELSE p.loss_scale END";

static void test_fp16_overflow(void) {
    char *log, extra[1024];
    /* 2^30: far above what the gradients allow in fp16, so the first steps must overflow */
    snprintf(extra, sizeof(extra), "--amp fp16 --loss-scale 1073741824 --steps 40 --epochs 10 --profile "
             "--out %s/fp16", g_root);
    int rc = train(extra, &log);
    CHECK("fp16: a run with loss scale 2^30 succeeds and reports its skipped steps",
          rc == 0 && strstr(log, "fp16 loss scaling:"), "exit %d: %.800s", rc, log);
    free(log);
    sqlite3 *db = open_db("fp16");
    if (!db) {
        CHECK("fp16: database", 0, "missing");
        return;
    }
    int64_t skipped = q_int(db, "SELECT count(*) FROM DETR_STEPS WHERE skipped = 1");
    int64_t first_ok = q_int(db, "SELECT min(step) FROM DETR_STEPS WHERE skipped = 0");
    printf("     %lld of 40 steps skipped; first update at step %lld, scale %g\n", (long long)skipped,
           (long long)first_ok, q_real(db, "SELECT loss_scale FROM DETR_STEPS WHERE skipped = 0 ORDER BY step LIMIT 1"));
    CHECK("fp16: the first step (scale 2^30) overflows and is skipped",
          q_int(db, "SELECT skipped FROM DETR_STEPS WHERE step = 1") == 1 &&
          q_real(db, "SELECT loss_scale FROM DETR_STEPS WHERE step = 1") == 1073741824.0, "see DETR_STEPS");
    CHECK("fp16: training proceeds once the scale fits (updates after the skipped steps)",
          skipped >= 1 && first_ok > 1 && q_int(db, "SELECT count(*) FROM DETR_STEPS WHERE step > 30 AND skipped = 0") >= 5,
          "%lld skipped, first update at %lld", (long long)skipped, (long long)first_ok);
    CHECK("fp16: every step's scale follows GradScaler's rule from the previous step",
          q_int(db, rule_violations_sql) == 0 && q_int(db, "SELECT count(*) FROM DETR_STEPS WHERE loss_scale IS NULL") == 0,
          "%lld violations", (long long)q_int(db, rule_violations_sql));
    CHECK("fp16: skipped steps have no gradient norm, the others a finite one",
          q_int(db, "SELECT count(*) FROM DETR_STEPS WHERE (skipped = 1) != (grad_norm IS NULL)") == 0, "see DETR_STEPS");
    sqlite3_close(db);
    char jsonl[600];
    snprintf(jsonl, sizeof(jsonl), "%s/fp16/train.jsonl", g_root);
    char *text = read_text(jsonl);
    int null_norms = 0, skipped_lines = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        int skip = strstr(line, "\"update_skipped\":1") != NULL, null_norm = strstr(line, "\"grad_norm\":null") != NULL;
        skipped_lines += skip;
        null_norms += null_norm && skip;
    }
    free(text);
    CHECK("fp16: train.jsonl marks the skipped steps, with a null gradient norm (valid JSON)",
          skipped_lines == skipped && null_norms == skipped, "%d skipped lines, %d with null norms, %lld in the db",
          skipped_lines, null_norms, (long long)skipped);
    char cmd[1024], *out, *serr, want[160];
    snprintf(cmd, sizeof(cmd), "%s/detr-prof summary %s/fp16/profile.sqlite", g_build, g_root);
    rc = run_capture(g_root, cmd, &out, &serr);
    snprintf(want, sizeof(want), "fp16 loss scaling: %lld of 40 steps skipped their update", (long long)skipped);
    CHECK("fp16: detr-prof summary reports the skipped updates", rc == 0 && strstr(out, want), "want '%s': %.600s%s",
          want, out, serr);
    free(out);
    free(serr);

    /* an all-skipped run leaves the weights exactly as initialised */
    snprintf(extra, sizeof(extra), "--amp fp16 --loss-scale 1e30 --steps 3 --save-init %s/init.safetensors "
             "--out %s/fp16skip", g_root, g_root);
    rc = train(extra, &log);
    CHECK("fp16: a run whose 3 steps all overflow", rc == 0 && strstr(log, "3 of 3 steps skipped"),
          "exit %d: %.600s", rc, log);
    free(log);
    char a[600], b[600], err[512];
    snprintf(a, sizeof(a), "%s/init.safetensors", g_root);
    snprintf(b, sizeof(b), "%s/fp16skip/model.safetensors", g_root);
    StFile fa, fb;
    int oka = st_open(a, &fa, err, sizeof(err)) == 0, okb = oka && st_open(b, &fb, err, sizeof(err)) == 0;
    int same = oka && okb && fa.n > 0 && fa.n == fb.n, compared = 0;
    for (int i = 0; same && i < fa.n; i++) {
        const StTensor *ta = &fa.tensors[i], *tb = st_find(&fb, ta->name);
        same = tb && ta->end - ta->begin == tb->end - tb->begin &&
               memcmp(st_data(&fa, ta), st_data(&fb, tb), ta->end - ta->begin) == 0;
        compared++;
    }
    CHECK("fp16: skipped steps leave every weight bitwise unchanged", same && compared > 10,
          "%d tensors compared (%s)", compared, oka && okb ? "a tensor differs" : err);
    if (oka) st_close(&fa);
    if (okb) st_close(&fb);
}

static void test_fp16_resume(void) {
    char *log, extra[1024];
    const char *amp = "--amp fp16 --loss-scale 1073741824 --epochs 10 --profile";
    snprintf(extra, sizeof(extra), "%s --steps 24 --out %s/r_full", amp, g_root);
    int rc = train(extra, &log);
    CHECK("fp16 resume: the uninterrupted run", rc == 0, "exit %d: %.600s", rc, log);
    free(log);
    snprintf(extra, sizeof(extra), "%s --steps 12 --checkpoint-every 12 --out %s/r_part", amp, g_root);
    rc = train(extra, &log);
    free(log);
    snprintf(extra, sizeof(extra), "%s --steps 24 --resume --out %s/r_part", amp, g_root);
    int rc2 = train(extra, &log);
    CHECK("fp16 resume: 12 steps, then --resume to 24", rc == 0 && rc2 == 0 && strstr(log, "resumed from"),
          "exit %d/%d: %.600s", rc, rc2, log);
    free(log);
    sqlite3 *db = open_db("r_part");
    if (!db) {
        CHECK("fp16 resume: database", 0, "missing");
        return;
    }
    char sql[1024];
    snprintf(sql, sizeof(sql), "ATTACH DATABASE '%s/r_full/profile.sqlite' AS a", g_root);
    sqlite3_exec(db, sql, NULL, NULL, NULL);
    int64_t same = q_int(db, "SELECT count(*) FROM main.DETR_STEPS b JOIN a.DETR_STEPS x USING (step) "
                             "WHERE b.loss = x.loss AND b.loss_scale = x.loss_scale AND b.skipped = x.skipped "
                             "AND b.grad_norm IS x.grad_norm");
    int64_t changes = q_int(db, "SELECT count(DISTINCT loss_scale) FROM a.DETR_STEPS WHERE step > 12");
    CHECK("fp16 resume: losses, gradient norms and loss scales of all 24 steps bitwise equal",
          same == 24 && q_int(db, "SELECT count(*) FROM main.DETR_STEPS") == 24, "%lld of 24 equal", (long long)same);
    CHECK("fp16 resume: the scale after the resume point is the checkpoint's, not the initial one",
          q_real(db, "SELECT loss_scale FROM main.DETR_STEPS WHERE step = 13") < 1073741824.0 && changes >= 1,
          "step 13 scale %g", q_real(db, "SELECT loss_scale FROM main.DETR_STEPS WHERE step = 13"));
    sqlite3_close(db);
}

/* Recomputation replays the same rounded products: fp16 with and without --recompute backbone
 * train bitwise alike (losses, gradient norms, scales). */
static void test_fp16_recompute(void) {
    char *log, extra[1024];
    int rc[2];
    for (int k = 0; k < 2; k++) {
        snprintf(extra, sizeof(extra), "--amp fp16 --loss-scale 256 --steps 6 --recompute %s --profile --out %s/rc%d",
                 k ? "backbone" : "none", g_root, k);
        rc[k] = train(extra, &log);
        free(log);
    }
    sqlite3 *db = open_db("rc1");
    int64_t same = -1;
    if (db) {
        char sql[700];
        snprintf(sql, sizeof(sql), "ATTACH DATABASE '%s/rc0/profile.sqlite' AS a", g_root);
        sqlite3_exec(db, sql, NULL, NULL, NULL);
        same = q_int(db, "SELECT count(*) FROM main.DETR_STEPS b JOIN a.DETR_STEPS x USING (step) WHERE "
                         "b.loss = x.loss AND b.grad_norm IS x.grad_norm AND b.loss_scale = x.loss_scale");
        sqlite3_close(db);
    }
    CHECK("fp16 + --recompute backbone: the 6 steps bitwise those without recomputation",
          rc[0] == 0 && rc[1] == 0 && same == 6, "exit %d/%d, %lld of 6 equal", rc[0], rc[1], (long long)same);
}

static void test_bf16(void) {
    char *log, extra[1024];
    snprintf(extra, sizeof(extra), "--amp bf16 --steps 2 --profile --out %s/bf16", g_root);
    int rc = train(extra, &log);
    CHECK("bf16: a run succeeds and says the CPU emulates it", rc == 0 && strstr(log, "emulated"),
          "exit %d: %.600s", rc, log);
    free(log);
    snprintf(extra, sizeof(extra), "--steps 2 --profile --out %s/fp32", g_root);
    rc = train(extra, &log);
    free(log);
    sqlite3 *b = open_db("bf16"), *f = open_db("fp32");
    double lb = b ? q_real(b, "SELECT loss FROM DETR_STEPS WHERE step = 1") : NAN;
    double lf = f ? q_real(f, "SELECT loss FROM DETR_STEPS WHERE step = 1") : NAN;
    double rel = fabs(lb - lf) / fabs(lf);
    CHECK("bf16: the first loss differs from float32's, by less than 1%", rc == 0 && lb != lf && rel < 0.01,
          "bf16 %.9g, float32 %.9g (relative %.3g)", lb, lf, rel);
    CHECK("bf16: the run record names the precision, and no step carries a loss scale",
          b && q_int(b, "SELECT count(*) FROM DETR_RUNS WHERE command_line LIKE '%--amp bf16%'") == 1 &&
          q_int(b, "SELECT count(*) FROM DETR_STEPS WHERE loss_scale IS NOT NULL OR skipped != 0") == 0,
          "see DETR_RUNS / DETR_STEPS");
    if (b) sqlite3_close(b);
    if (f) sqlite3_close(f);
}

int main(void) {
    const char *bd = getenv("DETR_BUILD");
    snprintf(g_build, sizeof(g_build), "%s", bd ? bd : "build");
    snprintf(g_root, sizeof(g_root), "/tmp/detr-amp-XXXXXX");
    if (!mkdtemp(g_root)) {
        perror("mkdtemp");
        return 1;
    }
    test_scaler_rule();
    char cmd[600];
    train_test_setup(g_build, g_root, "--workers 1 --eval-every 0", g_common, sizeof(g_common));
    test_fp16_overflow();
    test_fp16_resume();
    test_fp16_recompute();
    test_bf16();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_root);
    if (g_test_fail == 0 && system(cmd) != 0) printf("could not remove %s\n", g_root);
    return test_finish();
}
