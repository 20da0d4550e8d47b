/* test_coco_eval.c - COCO bounding-box evaluation (trainer/coco_eval.h) against pycocotools.
 *  - the IoU and recall thresholds equal numpy.linspace's (thresholds.json), bit for bit;
 *  - every reference case in <shared>/testdata/cocoeval/case_*.json: the 12 stats and the
 *    per-category AP to 1e-6 absolute (-1 exactly); the largest difference is printed;
 *  - the result file written by coco_eval_write_results reads back to the very same numbers,
 *    and the file is replaced atomically (no temporary left, an unwritable folder is an error);
 *  - a matching rule that no reference case reaches (a hand computation);
 *  - detections added from memory (the trainer's path) give what the same detections give from
 *    JSON; unknown categories are dropped and counted;
 *  - bad inputs: malformed JSON, missing fields (the message names the file and the field),
 *    duplicate annotation ids, image ids not in the GT (all named), non-finite scores, empty
 *    detections (every defined stat is 0);
 *  - `detr-data eval GT DT [--json]` ($DETR_BUILD/detr-data): the JSON output matches a case,
 *    the text output has the 12 summary lines, bad input exits 1 and usage errors exit 2.
 * The shared folder is $DETR_SHARED, else ../shared (tests run from the repository root). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <jansson.h>
#include "check.h"
#include "test_util.h"
#include "coco_eval.h"

static char g_tmp[256];

static const char *cocoeval_dir(void) {
    static char dir[1024];
    const char *shared = getenv("DETR_SHARED") ? getenv("DETR_SHARED") : "../shared";
    snprintf(dir, sizeof(dir), "%s/testdata/cocoeval", shared);
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? dir : NULL;
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* Largest |a - b| where both are defined; a -1 on one side only counts as a mismatch (inf). */
static double stat_diff(double a, double b) {
    if (a == -1 || b == -1) return a == b ? 0 : INFINITY;
    return fabs(a - b);
}

/* ---- thresholds ---- */

static void test_thresholds(const char *dir) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/thresholds.json", dir);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    double iou[COCO_EVAL_NUM_IOU], rec[COCO_EVAL_NUM_RECALL];
    coco_eval_thresholds(iou, rec);
    int ok = j && json_array_size(json_object_get(j, "iouThrs")) == COCO_EVAL_NUM_IOU &&
             json_array_size(json_object_get(j, "recThrs")) == COCO_EVAL_NUM_RECALL;
    int bad = -1;
    for (int i = 0; ok && i < COCO_EVAL_NUM_IOU; i++)
        if (json_number_value(json_array_get(json_object_get(j, "iouThrs"), (size_t)i)) != iou[i]) ok = 0, bad = i;
    for (int i = 0; ok && i < COCO_EVAL_NUM_RECALL; i++)
        if (json_number_value(json_array_get(json_object_get(j, "recThrs"), (size_t)i)) != rec[i]) ok = 0, bad = 100 + i;
    CHECK("thresholds: iouThrs and recThrs are numpy.linspace's doubles exactly", ok,
          "%s: mismatch at %d (iou[8] = %.17g)", path, bad, iou[8]);
    json_decref(j);
}

/* ---- the reference cases ---- */

typedef struct {
    double max_stat_diff, max_cat_diff;
    int n_cases, n_failed;
} CaseTotals;

/* Compares a result with the case's stats and per_category_ap; returns the largest difference. */
static double compare_with_case(const CocoEvalResult *r, const json_t *c, char *why, size_t len) {
    const json_t *stats = json_object_get(c, "stats"), *pc = json_object_get(c, "per_category_ap");
    double worst = 0;
    why[0] = 0;
    if (json_array_size(stats) != COCO_EVAL_NUM_STATS || (size_t)r->n_categories != json_array_size(pc)) {
        snprintf(why, len, "%zu stats / %zu categories in the case, %d categories here",
                 json_array_size(stats), json_array_size(pc), r->n_categories);
        return INFINITY;
    }
    for (int i = 0; i < COCO_EVAL_NUM_STATS; i++) {
        double want = json_number_value(json_array_get(stats, (size_t)i)), d = stat_diff(r->stats[i], want);
        if (d > worst) {
            worst = d;
            snprintf(why, len, "%s = %.17g, pycocotools %.17g", coco_eval_stat_names[i], r->stats[i], want);
        }
    }
    for (int k = 0; k < r->n_categories; k++) {
        const json_t *e = json_array_get(pc, (size_t)k);
        double want = json_number_value(json_object_get(e, "ap"));
        int64_t id = json_integer_value(json_object_get(e, "category_id"));
        double d = id == r->category_ids[k] ? stat_diff(r->category_ap[k], want) : INFINITY;
        if (d > worst) {
            worst = d;
            snprintf(why, len, "category %lld (here %lld): AP %.17g, pycocotools %.17g", (long long)id,
                     (long long)r->category_ids[k], r->category_ap[k], want);
        }
    }
    return worst;
}

/* Evaluates the detections written to a result file by e, read back into a fresh evaluator. */
static int roundtrip_same(CocoEval *e, const json_t *gt, const CocoEvalResult *r, char *why, size_t len) {
    char path[400], err[400];
    snprintf(path, sizeof(path), "%s/roundtrip.json", g_tmp);
    if (coco_eval_write_results(e, path, err, sizeof(err)) != 0) {
        snprintf(why, len, "write: %s", err);
        return 0;
    }
    CocoEval *e2 = coco_eval_gt_from_json(gt, "gt", err, sizeof(err));
    CocoEvalResult r2;
    int ok = e2 && coco_eval_load_detections(e2, path, err, sizeof(err)) == 0 &&
             coco_eval_run(e2, &r2, err, sizeof(err)) == 0;
    if (!ok) {
        snprintf(why, len, "%s", err);
        coco_eval_free(e2);
        return 0;
    }
    ok = memcmp(r->stats, r2.stats, sizeof(r->stats)) == 0 && r2.n_categories == r->n_categories &&
         (r->n_categories == 0 || memcmp(r->category_ap, r2.category_ap, (size_t)r->n_categories * sizeof(double)) == 0);
    if (!ok) snprintf(why, len, "AP %.17g after the round trip, %.17g before", r2.stats[0], r->stats[0]);
    coco_eval_result_free(&r2);
    coco_eval_free(e2);
    return ok;
}

static void run_case(const char *path, const char *name, CaseTotals *tot) {
    char err[1024], why[1200], label[256];
    json_error_t je;
    json_t *c = json_load_file(path, 0, &je);
    snprintf(label, sizeof(label), "case %s: stats and per-category AP match pycocotools to 1e-6", name);
    if (!c) {
        CHECK(label, 0, "%s: %s", path, je.text);
        return;
    }
    const json_t *gt = json_object_get(c, "gt");
    CocoEval *e = coco_eval_gt_from_json(gt, path, err, sizeof(err));
    CocoEvalResult r;
    int ok = e && coco_eval_add_detections_json(e, json_object_get(c, "dt"), "dt", err, sizeof(err)) == 0 &&
             coco_eval_run(e, &r, err, sizeof(err)) == 0;
    if (!ok) {
        CHECK(label, 0, "%s", err);
    } else {
        double d = compare_with_case(&r, c, why, sizeof(why));
        tot->n_cases++;
        if (d > 1e-6) tot->n_failed++;
        if (d > tot->max_stat_diff) tot->max_stat_diff = d;
        CHECK(label, d <= 1e-6, "max |diff| %.3g: %s", d, why);
        if (!strcmp(name, "case_16_random_large.json") || !strcmp(name, "case_09_score_ties.json") ||
            !strcmp(name, "case_10_iou_boundaries.json")) {
            snprintf(label, sizeof(label), "case %s: the written result file evaluates identically", name);
            CHECK(label, roundtrip_same(e, gt, &r, why, sizeof(why)), "%s", why);
        }
        coco_eval_result_free(&r);
    }
    coco_eval_free(e);
    json_decref(c);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void test_cases(const char *dir) {
    DIR *d = opendir(dir);
    char *names[256];
    int n = 0;
    struct dirent *ent;
    while (d && (ent = readdir(d)) && n < 256)
        if (!strncmp(ent->d_name, "case_", 5) && strstr(ent->d_name, ".json")) names[n++] = strdup(ent->d_name);
    if (d) closedir(d);
    qsort(names, (size_t)n, sizeof(char *), cmp_str);
    CHECK("cases: the reference cases are there", n >= 16, "%d case files in %s", n, dir);
    CaseTotals tot = {0, 0, 0, 0};
    for (int i = 0; i < n; i++) {
        char path[1400];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        run_case(path, names[i], &tot);
        free(names[i]);
    }
    printf("     %d cases, %d over 1e-6; largest difference to pycocotools %.3g\n", tot.n_cases,
           tot.n_failed, tot.max_stat_diff);
}

/* ---- hand-made cases ---- */

static const char *SMALL_GT =
    "{\"images\": [{\"id\": 7, \"width\": 100, \"height\": 80}, {\"id\": 3, \"width\": 50, \"height\": 40}],"
    " \"categories\": [{\"id\": 5, \"name\": \"a\"}, {\"id\": 2, \"name\": \"b\"}],"
    " \"annotations\": ["
    "  {\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"bbox\": [10, 10, 20, 20], \"area\": 400, \"iscrowd\": 0},"
    "  {\"id\": 2, \"image_id\": 7, \"category_id\": 2, \"bbox\": [50, 20, 40, 40], \"area\": 1600, \"iscrowd\": 0},"
    "  {\"id\": 3, \"image_id\": 3, \"category_id\": 5, \"bbox\": [0, 0, 16, 8], \"area\": 128, \"iscrowd\": 0}]}";

static CocoEval *small_gt(void) {
    char err[512];
    json_t *j = json_loads(SMALL_GT, 0, NULL);
    CocoEval *e = coco_eval_gt_from_json(j, "small", err, sizeof(err));
    json_decref(j);
    if (!e) printf("small_gt: %s\n", err);
    return e;
}

static void test_memory_path(void) {
    CocoEval *a = small_gt(), *b = small_gt();
    if (!a || !b) {
        CHECK("memory: the small GT loads", 0, "see above");
        coco_eval_free(a), coco_eval_free(b);
        return;
    }
    int w = 0, h = 0;
    CHECK("memory: image sizes and counts from the GT",
          coco_eval_image_size(a, 7, &w, &h) == 0 && w == 100 && h == 80 && coco_eval_image_size(a, 4, &w, &h) == -1 &&
          coco_eval_num_images(a) == 2 && coco_eval_num_categories(a) == 2 && coco_eval_num_gt(a) == 3,
          "w %d h %d", w, h);
    /* image 7: a hit on category 5, a near miss on 2, a detection of unknown category 9 */
    int cats7[3] = {5, 2, 9};
    float boxes7[12] = {11, 10, 20, 20, 50, 22, 40, 30, 0, 0, 5, 5};
    float scores7[3] = {0.75f, 0.5f, 0.25f};
    int cats3[1] = {5};
    float boxes3[4] = {0, 1, 16, 8}, scores3[1] = {0.875f};
    int rc = coco_eval_add_detections(a, 7, 3, cats7, boxes7, scores7) | coco_eval_add_detections(a, 3, 1, cats3, boxes3, scores3);
    const char *dt =
        "[{\"image_id\": 7, \"category_id\": 5, \"bbox\": [11, 10, 20, 20], \"score\": 0.75},"
        " {\"image_id\": 7, \"category_id\": 2, \"bbox\": [50, 22, 40, 30], \"score\": 0.5},"
        " {\"image_id\": 7, \"category_id\": 9, \"bbox\": [0, 0, 5, 5], \"score\": 0.25},"
        " {\"image_id\": 3, \"category_id\": 5, \"bbox\": [0, 1, 16, 8], \"score\": 0.875}]";
    json_t *dj = json_loads(dt, 0, NULL);
    char err[512];
    rc |= coco_eval_add_detections_json(b, dj, "dt", err, sizeof(err));
    json_decref(dj);
    CocoEvalResult ra, rb;
    rc |= coco_eval_run(a, &ra, err, sizeof(err)) | coco_eval_run(b, &rb, err, sizeof(err));
    CHECK("memory: coco_eval_add_detections == the same detections from JSON",
          rc == 0 && !memcmp(ra.stats, rb.stats, sizeof(ra.stats)) && ra.n_dropped == 1 && ra.n_detections == 3,
          "rc %d, AP %g vs %g, dropped %lld", rc, ra.stats[0], rb.stats[0], (long long)ra.n_dropped);
    /* hand values: cat 5 has IoU 380/420 = 0.905 (img 7) and 112/144 = 0.778 (img 3): AP50 = 1;
     * cat 2: IoU 1200/1600 = 0.75 -> matched up to threshold 0.75; per-category AP(2) = 6/10 */
    CHECK("memory: hand-computed AP50 = 1 and AP(category 2) = 0.6",
          rc == 0 && ra.stats[1] == 1.0 && ra.n_categories == 2 && ra.category_ids[0] == 2 &&
          fabs(ra.category_ap[0] - 0.6) < 1e-12,
          "AP50 %.17g, AP(2) %.17g", ra.stats[1], ra.category_ap[0]);
    coco_eval_result_free(&ra);
    coco_eval_result_free(&rb);

    float nan_score[1] = {NAN};
    int bad_img = coco_eval_add_detections(a, 99, 1, cats3, boxes3, scores3);
    CHECK("memory: an image id not in the GT is refused, the message names it",
          bad_img == -1 && strstr(coco_eval_last_error(a), "99"), "rc %d: %s", bad_img, coco_eval_last_error(a));
    int64_t before = coco_eval_num_detections(a);
    int bad_nan = coco_eval_add_detections(a, 3, 1, cats3, boxes3, nan_score);
    CHECK("memory: a NaN score is refused and nothing is added",
          bad_nan == -1 && coco_eval_num_detections(a) == before && strstr(coco_eval_last_error(a), "finite"),
          "rc %d: %s", bad_nan, coco_eval_last_error(a));
    coco_eval_clear_detections(a);
    rc = coco_eval_run(a, &ra, err, sizeof(err));
    int zeros = rc == 0;
    for (int i = 0; i < COCO_EVAL_NUM_STATS && zeros; i++) zeros = ra.stats[i] == 0 || ra.stats[i] == -1;
    CHECK("memory: after clear_detections, no detections -> every defined stat is 0 (APl -1)",
          zeros && ra.stats[0] == 0 && ra.stats[5] == -1, "AP %g APl %g", ra.stats[0], ra.stats[5]);
    coco_eval_result_free(&ra);
    coco_eval_free(a);
    coco_eval_free(b);
}

/* A rule the reference cases do not reach: a detection that matched an ignored GT keeps looking
 * at the later ignored GTs and moves to a better one, which leaves the first free for the next
 * detection. Medium range: B and C are just above 96^2 (ignored), A is a medium GT.
 *   det1 (0.9): IoU 0.852 with B, 0.961 with C -> C;  det2 (0.8): 0.920 with B, 0.745 with C -> B
 *   det3 (0.7): exactly A. Every threshold up to 0.9 gives precision 1; at 0.95 det2 misses B
 *   (0.92) and is an FP before det3: precision 0.5. APm = (9 + 0.5) / 10 = 0.95. (Stopping at
 *   the first ignored GT would make det1 take B and det2 an FP from 0.75 on: APm 0.8.) */
static void test_ignored_gt_rematch(void) {
    const char *gt =
        "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 1}], \"annotations\": ["
        " {\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [300, 300, 50, 50], \"area\": 2500, \"iscrowd\": 0},"
        " {\"id\": 2, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 100, 93], \"area\": 9300, \"iscrowd\": 0},"
        " {\"id\": 3, \"image_id\": 1, \"category_id\": 1, \"bbox\": [10, 0, 100, 93], \"area\": 9300, \"iscrowd\": 0}]}";
    const char *dt =
        "[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [8, 0, 100, 93], \"score\": 0.9},"
        " {\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 92, 93], \"score\": 0.8},"
        " {\"image_id\": 1, \"category_id\": 1, \"bbox\": [300, 300, 50, 50], \"score\": 0.7}]";
    char err[512];
    json_t *g = json_loads(gt, 0, NULL), *d = json_loads(dt, 0, NULL);
    CocoEval *e = coco_eval_gt_from_json(g, "gt", err, sizeof(err));
    CocoEvalResult r;
    int rc = e ? coco_eval_add_detections_json(e, d, "dt", err, sizeof(err)) : -1;
    if (rc == 0) rc = coco_eval_run(e, &r, err, sizeof(err));
    CHECK("rule: a match to an ignored GT moves on to a better ignored GT (hand APm = 0.95)",
          rc == 0 && fabs(r.stats[4] - 0.95) < 1e-12, "rc %d (%s), APm %.17g", rc, rc ? err : "", rc ? 0 : r.stats[4]);
    if (rc == 0) coco_eval_result_free(&r);
    coco_eval_free(e);
    json_decref(g);
    json_decref(d);
}

/* ---- bad input ---- */

/* Loads gt_text as GT (and dt_text as detections when given); returns the error message. */
static int try_load(const char *gt_text, const char *dt_text, char *err, size_t len) {
    char gp[400], dp[400];
    snprintf(gp, sizeof(gp), "%s/gt.json", g_tmp);
    snprintf(dp, sizeof(dp), "%s/dt.json", g_tmp);
    write_text(gp, gt_text);
    err[0] = 0;
    CocoEval *e = coco_eval_load_gt(gp, err, len);
    if (!e) return -1;
    int rc = 0;
    if (dt_text) {
        write_text(dp, dt_text);
        rc = coco_eval_load_detections(e, dp, err, len);
        if (rc == 0) {
            CocoEvalResult r;
            rc = coco_eval_run(e, &r, err, len);
            coco_eval_result_free(&r);
        }
    }
    coco_eval_free(e);
    return rc;
}

static void test_bad_input(void) {
    char err[1024];
    struct {
        const char *what, *gt, *dt, *want1, *want2;
    } cases[] = {
        {"malformed GT JSON", "{\"images\": [", NULL, "gt.json", "line"},
        {"GT without images", "{\"categories\": [], \"annotations\": []}", NULL, "gt.json", "images"},
        {"annotation without bbox", "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 1}], \"annotations\": "
         "[{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"area\": 4}]}", NULL, "annotations[0]", "bbox"},
        {"bbox with 3 numbers", "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 1}], \"annotations\": "
         "[{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [1, 2, 3]}]}", NULL, "annotations[0]", "bbox"},
        {"duplicate annotation ids", "{\"images\": [{\"id\": 1}], \"categories\": [{\"id\": 1}], \"annotations\": "
         "[{\"id\": 4, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 2, 2]},"
         " {\"id\": 4, \"image_id\": 1, \"category_id\": 1, \"bbox\": [5, 5, 2, 2]}]}", NULL, "same id 4", "unique"},
        {"malformed detections JSON", SMALL_GT, "[{\"image_id\": 7,", "dt.json", "line"},
        {"detections not a list", SMALL_GT, "{\"image_id\": 7}", "dt.json", "list"},
        {"detection without score", SMALL_GT, "[{\"image_id\": 7, \"category_id\": 5, \"bbox\": [0, 0, 1, 1]}]",
         "[0]", "score"},
        {"detection with a string image_id", SMALL_GT,
         "[{\"image_id\": 7, \"category_id\": 5, \"bbox\": [0, 0, 1, 1], \"score\": 1},"
         " {\"image_id\": \"7\", \"category_id\": 5, \"bbox\": [0, 0, 1, 1], \"score\": 1}]", "[1]", "image_id"},
        {"detections on unknown images", SMALL_GT,
         "[{\"image_id\": 12, \"category_id\": 5, \"bbox\": [0, 0, 1, 1], \"score\": 1},"
         " {\"image_id\": 7, \"category_id\": 5, \"bbox\": [0, 0, 1, 1], \"score\": 1},"
         " {\"image_id\": 11, \"category_id\": 5, \"bbox\": [0, 0, 1, 1], \"score\": 1},"
         " {\"image_id\": 12, \"category_id\": 2, \"bbox\": [0, 0, 1, 1], \"score\": 1}]", "11, 12", "3 detection"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = try_load(cases[i].gt, cases[i].dt, err, sizeof(err));
        char name[160];
        snprintf(name, sizeof(name), "bad input: %s -> error naming '%s' and '%s'", cases[i].what,
                 cases[i].want1, cases[i].want2);
        CHECK(name, rc == -1 && strstr(err, cases[i].want1) && strstr(err, cases[i].want2), "rc %d: %s", rc, err);
    }
    int rc = try_load(SMALL_GT, "[]", err, sizeof(err));
    CHECK("bad input: an empty detection list is fine (unlike pycocotools' loadRes)", rc == 0, "%s", err);
    rc = try_load("{\"images\": [], \"categories\": [], \"annotations\": []}", "[]", err, sizeof(err));
    CHECK("bad input: an empty GT evaluates (every stat -1)", rc == 0, "%s", err);
    char missing[400];
    snprintf(missing, sizeof(missing), "%s/no/such/gt.json", g_tmp);
    CocoEval *e = coco_eval_load_gt(missing, err, sizeof(err));
    CHECK("bad input: a missing GT file is named", !e && strstr(err, "no/such/gt.json"), "%s", err);
    coco_eval_free(e);
}

static void test_write_atomic(void) {
    CocoEval *e = small_gt();
    if (!e) return;
    int cats[1] = {5};
    float box[4] = {0.1f, 1e-7f, 16.25f, 8}, score[1] = {0.3f};
    coco_eval_add_detections(e, 3, 1, cats, box, score);
    char path[400], err[512];
    snprintf(path, sizeof(path), "%s/results.json", g_tmp);
    write_text(path, "old");
    int rc = coco_eval_write_results(e, path, err, sizeof(err));
    char *text = read_text(path);
    json_t *j = json_loads(text, 0, NULL);
    const json_t *d0 = json_array_get(j, 0);
    int exact = d0 && json_real_value(json_array_get(json_object_get(d0, "bbox"), 0)) == (double)0.1f &&
                json_real_value(json_array_get(json_object_get(d0, "bbox"), 1)) == (double)1e-7f &&
                json_real_value(json_object_get(d0, "score")) == (double)0.3f &&
                json_integer_value(json_object_get(d0, "image_id")) == 3;
    CHECK("write: the result file replaces the old one and reads back as the same doubles",
          rc == 0 && json_array_size(j) == 1 && exact, "rc %d: %s / %s", rc, err, text);
    json_decref(j);
    free(text);
    DIR *d = opendir(g_tmp);
    int leftovers = 0;
    struct dirent *ent;
    while (d && (ent = readdir(d)))
        if (strstr(ent->d_name, ".tmp.")) leftovers++;
    if (d) closedir(d);
    CHECK("write: no temporary file is left behind", leftovers == 0, "%d left", leftovers);
    snprintf(path, sizeof(path), "%s/missing_dir/results.json", g_tmp);
    rc = coco_eval_write_results(e, path, err, sizeof(err));
    CHECK("write: an unwritable destination is an error naming it", rc == -1 && strstr(err, "missing_dir"), "%s", err);
    coco_eval_free(e);
}

/* ---- detr-data eval ---- */

static int run_cli(const char *bin, const char *args, char **out, char **err) {
    char cmd[3000];
    snprintf(cmd, sizeof(cmd), "%s %s", bin, args);
    return run_capture(g_tmp, cmd, out, err);
}

static void test_cli(const char *dir) {
    const char *build = getenv("DETR_BUILD") ? getenv("DETR_BUILD") : "build";
    char bin[600];
    snprintf(bin, sizeof(bin), "%s/detr-data", build);
    if (access(bin, X_OK) != 0) {
        test_skip("cli: detr-data eval", "detr-data is not built (set DETR_BUILD to the build folder)");
        return;
    }
    char path[1200], gp[400], dp[400], args[1200];
    snprintf(path, sizeof(path), "%s/case_06_crowd.json", dir);
    snprintf(gp, sizeof(gp), "%s/cli_gt.json", g_tmp);
    snprintf(dp, sizeof(dp), "%s/cli_dt.json", g_tmp);
    json_t *c = json_load_file(path, 0, NULL);
    if (!c) {
        CHECK("cli: case_06 loads", 0, "%s", path);
        return;
    }
    json_dump_file(json_object_get(c, "gt"), gp, 0);
    json_dump_file(json_object_get(c, "dt"), dp, 0);
    char *out, *err, why[512] = "";
    snprintf(args, sizeof(args), "eval %s %s --json", gp, dp);
    int rc = run_cli(bin, args, &out, &err);
    json_t *j = json_loads(out, 0, NULL);
    CocoEvalResult r = {{0}, 0, NULL, NULL, 0, 0};
    const json_t *stats = json_object_get(j, "stats"), *pc = json_object_get(j, "per_category_ap");
    double d = INFINITY;
    if (json_array_size(stats) == COCO_EVAL_NUM_STATS && json_is_array(pc)) {
        for (int i = 0; i < COCO_EVAL_NUM_STATS; i++) r.stats[i] = json_number_value(json_array_get(stats, (size_t)i));
        r.n_categories = (int)json_array_size(pc);
        r.category_ids = calloc((size_t)r.n_categories + 1, sizeof(int64_t));
        r.category_ap = calloc((size_t)r.n_categories + 1, sizeof(double));
        for (int k = 0; k < r.n_categories; k++) {
            const json_t *e = json_array_get(pc, (size_t)k);
            r.category_ids[k] = json_integer_value(json_object_get(e, "category_id"));
            r.category_ap[k] = json_number_value(json_object_get(e, "ap"));
        }
        d = compare_with_case(&r, c, why, sizeof(why));
    }
    CHECK("cli: detr-data eval --json prints stats and per_category_ap matching the case",
          rc == 0 && d <= 1e-6, "rc %d, diff %g: %s / %s%s", rc, d, why, out, err);
    coco_eval_result_free(&r);
    json_decref(j);
    free(out), free(err);

    snprintf(args, sizeof(args), "eval %s %s", gp, dp);
    rc = run_cli(bin, args, &out, &err);
    int lines = 0;
    for (const char *p = out; (p = strstr(p, "] = ")); p++) lines++;
    CHECK("cli: text mode prints the 12 COCOeval summary lines",
          rc == 0 && lines == 12 && strstr(out, " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ") &&
          strstr(out, " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = "),
          "rc %d, %d lines: %s%s", rc, lines, out, err);
    free(out), free(err);

    write_text(dp, "[{\"image_id\": 123456, \"category_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": 1}]");
    snprintf(args, sizeof(args), "eval %s %s --json", gp, dp);
    rc = run_cli(bin, args, &out, &err);
    CHECK("cli: detections on an unknown image -> exit 1 naming it", rc == 1 && strstr(err, "123456"),
          "rc %d: %s", rc, err);
    free(out), free(err);
    rc = run_cli(bin, "eval --help", &out, &err);
    CHECK("cli: eval --help prints its usage", rc == 0 && strstr(out, "usage: detr-data eval"), "rc %d: %s%s", rc, out, err);
    free(out), free(err);
    snprintf(args, sizeof(args), "eval %s", gp);
    rc = run_cli(bin, args, &out, &err);
    CHECK("cli: eval with one file is a usage error (exit 2)", rc == 2 && strlen(err) > 0, "rc %d: %s", rc, err);
    free(out), free(err);
    snprintf(args, sizeof(args), "eval %s %s --frobnicate", gp, dp);
    rc = run_cli(bin, args, &out, &err);
    CHECK("cli: an unknown option is a usage error (exit 2)", rc == 2 && strlen(err) > 0, "rc %d: %s", rc, err);
    free(out), free(err);
    json_decref(c);
}

int main(void) {
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/detr_coco_eval_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_memory_path();
    test_ignored_gt_rematch();
    test_bad_input();
    test_write_atomic();
    const char *dir = cocoeval_dir();
    if (!dir) {
        test_skip("cocoeval reference cases", "no testdata/cocoeval under $DETR_SHARED or ../shared "
                  "(set DETR_SHARED to the shared folder)");
    } else {
        test_thresholds(dir);
        test_cases(dir);
        test_cli(dir);
    }
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_tmp);
    if (system(cmd) != 0) printf("note: could not remove %s\n", g_tmp);
    return test_finish();
}
