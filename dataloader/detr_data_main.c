/* detr-data: the dataset tool.
 *   detr-data synth OUT [options]      write a synthetic COCO-format dataset (train + val)
 *   detr-data check DATASET [options]  list every problem of a dataset (exit 0 clean, 1 not)
 *   detr-data bench DATASET [options]  run the loader alone, as training would, and measure it
 *   detr-data default                  print the embedded default dataset's folder (made on
 *                                      first use)
 *   detr-data eval GT.json DT.json     COCO bounding-box evaluation of a result file (COCOeval)
 * DATASET is a folder with annotations/instances_{train,val}*.json and {train,val}* folders (or
 * "default" for the embedded default); --ann FILE --images DIR name the files explicitly.
 * Exit codes: 0 success, 1 failure (or problems found by check), 2 usage error. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include "check.h"
#include "cli.h"
#include "coco_eval.h"
#include "dataset.h"
#include "loader.h"
#include "synth.h"
#include "transforms.h"

#define PATHLEN 4096

static const char *USAGE_MAIN =
    "usage: detr-data <command> [options]   (detr-data <command> --help for its options)\n"
    "\n"
    "Commands:\n"
    "  synth OUT       write a synthetic COCO-format dataset: shapes with exact boxes on\n"
    "                  textured, noisy backgrounds (photo-like JPEGs), train and val splits\n"
    "  check DATASET   validate a dataset and list every problem with counts\n"
    "                  (exit 0 when clean, 1 when problems were found)\n"
    "  bench DATASET   run the loader alone, as training would: images/s, per-stage times,\n"
    "                  peak RSS (tells whether the loader or the model limits training)\n"
    "  default         print the embedded default dataset's folder (generated on first use)\n"
    "  eval GT DT      COCO bounding-box evaluation of a result file against a GT instances\n"
    "                  file: the 12 COCOeval statistics (pycocotools' numbers)\n"
    "\n"
    "DATASET: a folder holding annotations/instances_{train,val}*.json and {train,val}* folders,\n"
    "or the word 'default' for the embedded default dataset.";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Takes the one positional argument (OUT or DATASET) out of argv[2..], wherever it stands:
 * the first word that is neither an option nor the value of an option that takes one.
 * Builds opt_argv = {prog, everything else} for cli_parse (which then rejects extra words). */
static const char *take_positional(int argc, char **argv, const CliOption *opts, int nopts,
                                   int *opt_argc, char ***opt_argv) {
    const char *pos = NULL;
    *opt_argv = calloc((size_t)argc + 1, sizeof(char *));
    (*opt_argv)[0] = argv[0];
    *opt_argc = 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--", 2)) {
            (*opt_argv)[(*opt_argc)++] = argv[i];
            const char *name = a + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            for (int k = 0; k < nopts; k++)
                if (strlen(opts[k].name) == len && !strncmp(opts[k].name, name, len) &&
                    opts[k].kind != OPT_FLAG && !eq && i + 1 < argc)
                    (*opt_argv)[(*opt_argc)++] = argv[++i]; /* its value */
        } else if (!pos && a[0] != '-') {
            pos = a;
        } else {
            (*opt_argv)[(*opt_argc)++] = argv[i];
        }
    }
    return pos;
}

static int parse_size(const char *s, int *w, int *h) {
    char x;
    return sscanf(s, "%d%c%d", w, &x, h) == 3 && (x == 'x' || x == 'X') ? 0 : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* synth */

static const char *USAGE_SYNTH =
    "usage: detr-data synth OUT [--images N] [--val N] [--size WxH] [--classes C] [--seed S]\n"
    "                          [--quality Q] [--max-objects K] [--min-objects K] [--jitter F]\n"
    "                          [--object-size MIN,MAX] [--class-hues]\n"
    "                          [--threads T]\n"
    "Writes a synthetic COCO-format dataset to the folder OUT (which must not exist or be empty;\n"
    "it appears only once complete): OUT/annotations/instances_{train,val}.json, OUT/train/,\n"
    "OUT/val/. Shapes (rectangle, ellipse, triangle, diamond, cross, ring; several colours per\n"
    "class) with exact boxes on textured, noisy backgrounds; category ids 1..C. Deterministic:\n"
    "the same options give the same bytes whatever the number of threads.";

static int cmd_synth(int argc, char **argv) {
    SynthDatasetConfig c;
    synth_config_default(&c);
    const char *size = NULL;
    int val = -1, seed_set = 0;
    uint64_t seed = 0;
    float jitter = 0;
    const char *object_size = NULL;
    CliOption opts[] = {
        {"images", OPT_INT, &c.train_images, "N", "train images (default 100)", NULL},
        {"val", OPT_INT, &val, "N", "val images (default: a quarter of --images, at least 1)", NULL},
        {"size", OPT_STR, &size, "WxH", "image size (default 640x480)", NULL},
        {"classes", OPT_INT, &c.classes, "C", "categories, ids 1..C (default 3)", NULL},
        {"seed", OPT_U64, &seed, "S", "random seed (default 0)", &seed_set},
        {"quality", OPT_INT, &c.quality, "Q", "JPEG quality 1..100 (default 90)", NULL},
        {"max-objects", OPT_INT, &c.max_objects, "K", "objects per image at most (default 4)", NULL},
        {"min-objects", OPT_INT, &c.min_objects, "K", "objects per image at least (default 1)", NULL},
        {"jitter", OPT_FLOAT, &jitter, "F", "each side drawn from [side*(1-F), side], F in 0..0.5 (default 0)", NULL},
        {"object-size", OPT_STR, &object_size, "MIN,MAX", "object side range as fractions of the short side "
         "(default 0.12,0.45)", NULL},
        {"class-hues", OPT_FLAG, &c.class_hues, NULL, "give every class its own hue band (colour identifies it)", NULL},
        {"threads", OPT_INT, &c.threads, "T", "generator threads (default: one per CPU)", NULL},
    };
    int oargc;
    char **oargv;
    const char *out = take_positional(argc, argv, opts, (int)(sizeof(opts) / sizeof(opts[0])), &oargc, &oargv);
    int rc = cli_parse(oargc, oargv, opts, (int)(sizeof(opts) / sizeof(opts[0])), USAGE_SYNTH);
    free(oargv);
    if (rc) return rc > 0 ? 0 : 2;
    if (!out) {
        fprintf(stderr, "error: synth needs the output folder: detr-data synth OUT [options]\n");
        return 2;
    }
    if (size && parse_size(size, &c.width, &c.height) != 0) {
        fprintf(stderr, "error: --size '%s': expected WxH, e.g. 640x480\n", size);
        return 2;
    }
    if (object_size && sscanf(object_size, "%lf,%lf", &c.min_object, &c.max_object) != 2) {
        fprintf(stderr, "error: --object-size '%s': expected MIN,MAX fractions, e.g. 0.25,0.6\n", object_size);
        return 2;
    }
    c.seed = seed;
    c.size_jitter = jitter;
    c.val_images = val >= 0 ? val : (c.train_images + 3) / 4;
    if (c.max_objects < c.min_objects && c.max_objects >= 1) c.min_objects = c.max_objects;
    char err[1024];
    if (synth_config_validate(&c, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 2;
    }
    SynthStats st;
    if (synth_dataset_write(out, &c, &st, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    printf("wrote %d train + %d val images (%lld objects, %d classes, %dx%d, quality %d, seed %llu) "
           "to %s\n", c.train_images, c.val_images, (long long)st.objects, c.classes, c.width,
           c.height, c.quality, (unsigned long long)c.seed, out);
    printf("%.2f s (%.0f images/s), mean JPEG %.1f KB (%.0f bytes)\n", st.seconds,
           (double)st.images / (st.seconds > 0 ? st.seconds : 1e-9),
           (double)st.jpeg_bytes / (double)st.images / 1000.0,
           (double)st.jpeg_bytes / (double)st.images);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Dataset resolution shared by check and bench */

/* The dataset folder named on the command line ("default" = the embedded default, generated on
 * first use). Returns 0 or -1 with err. */
static int dataset_dir(const char *arg, char *dir, size_t len, char *err, size_t errlen) {
    if (strcmp(arg, "default") != 0) {
        snprintf(dir, len, "%s", arg);
        return 0;
    }
    return synth_dataset_default(dir, len, err, errlen);
}

/* Annotation file and image folder of split: explicit --ann/--images, or found in DATASET. */
static int resolve_split(const char *dataset, const char *ann_opt, const char *images_opt,
                         const char *split, char *ann, char *images, char *err, size_t errlen) {
    if (ann_opt || images_opt) {
        if (!ann_opt || !images_opt) {
            snprintf(err, errlen, "--ann and --images go together (or give a DATASET folder)");
            return -1;
        }
        snprintf(ann, PATHLEN, "%s", ann_opt);
        snprintf(images, PATHLEN, "%s", images_opt);
        return 0;
    }
    char dir[PATHLEN];
    if (dataset_dir(dataset, dir, sizeof(dir), err, errlen) != 0) return -1;
    return dataset_find(dir, split, ann, PATHLEN, images, PATHLEN, err, errlen);
}

/* ------------------------------------------------------------------------------------------ */
/* check */

static const char *USAGE_CHECK =
    "usage: detr-data check DATASET [--split train|val|all] [--ann FILE --images DIR]\n"
    "                               [--max-pixels N] [--cache DIR]\n"
    "Validates a COCO-format dataset and lists every problem with counts: malformed JSON (line\n"
    "and column), missing or unreadable images, undecodable or oversized images, image sizes\n"
    "differing from the JSON, bad or out-of-range boxes, unknown category ids, duplicate ids.\n"
    "Exit code: 0 when clean, 1 when problems were found, 2 on a usage error.";

static int cmd_check(int argc, char **argv) {
    const char *split = "all", *ann = NULL, *images = NULL, *cache = NULL;
    CheckOptions co;
    check_options_default(&co);
    uint64_t max_pixels = (uint64_t)co.max_pixels;
    int headers_only = 0;
    float tolerance = (float)co.box_tolerance;
    CliOption opts[] = {
        {"split", OPT_STR, &split, "train|val|all", "which split(s) of DATASET to check (default all)", NULL},
        {"ann", OPT_STR, &ann, "FILE", "instances JSON (with --images, instead of DATASET)", NULL},
        {"images", OPT_STR, &images, "DIR", "image folder (with --ann)", NULL},
        {"max-pixels", OPT_U64, &max_pixels, "N", "images above N pixels are problems (default 100000000)", NULL},
        {"headers-only", OPT_FLAG, &headers_only, NULL, "read image headers only (faster; misses corrupt data)", NULL},
        {"box-tolerance", OPT_FLOAT, &tolerance, "PX", "pixels a box may overhang its image (default 1)", NULL},
        {"threads", OPT_INT, &co.threads, "N", "images checked in parallel (default: all cores)", NULL},
        {"cache", OPT_STR, &cache, "DIR", "accepted for symmetry with bench; check always reads the JSON", NULL},
    };
    int oargc;
    char **oargv;
    const char *dataset = take_positional(argc, argv, opts, (int)(sizeof(opts) / sizeof(opts[0])), &oargc, &oargv);
    int rc = cli_parse(oargc, oargv, opts, (int)(sizeof(opts) / sizeof(opts[0])), USAGE_CHECK);
    free(oargv);
    if (rc) return rc > 0 ? 0 : 2;
    if (!dataset && !(ann && images)) {
        fprintf(stderr, "error: check needs a DATASET folder (or --ann FILE --images DIR)\n");
        return 2;
    }
    if (strcmp(split, "train") && strcmp(split, "val") && strcmp(split, "all")) {
        fprintf(stderr, "error: --split '%s': use train, val or all\n", split);
        return 2;
    }
    if (co.threads < 0 || !(tolerance >= 0)) {
        fprintf(stderr, "error: --threads must be >= 0 and --box-tolerance >= 0\n");
        return 2;
    }
    co.max_pixels = (int64_t)max_pixels;
    co.decode = !headers_only;
    co.box_tolerance = tolerance;
    co.cache_dir = cache;
    static const char *const splits[2] = {"train", "val"};
    int problems = 0, checked = 0;
    for (int s = 0; s < 2; s++) {
        if (ann && s > 0) break; /* explicit files: one check */
        if (!ann && strcmp(split, "all") && strcmp(split, splits[s])) continue;
        char ann_path[PATHLEN], img_dir[PATHLEN], err[2048];
        if (resolve_split(dataset, ann, images, splits[s], ann_path, img_dir, err, sizeof(err)) != 0) {
            if (!strcmp(split, "all") && !ann) { /* a dataset may lack one split */
                printf("%s: no %s split (%s)\n", dataset, splits[s], err);
                continue;
            }
            fprintf(stderr, "error: %s\n", err);
            return 1;
        }
        printf("== %s (images in %s)\n", ann_path, img_dir);
        fflush(stdout);
        CheckReport rep;
        memset(&rep, 0, sizeof(rep));
        int r = dataset_check(ann_path, img_dir, &co, &rep, stdout);
        if (r < 0) fprintf(stderr, "error: the check of %s could not run (out of memory)\n", ann_path);
        if (r != 0) problems = 1;
        check_report_free(&rep);
        checked++;
    }
    if (!checked) {
        fprintf(stderr, "error: %s has neither a train nor a val split\n", dataset);
        return 1;
    }
    return problems ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* bench */

static const char *USAGE_BENCH =
    "usage: detr-data bench DATASET [--workers N] [--batch B] [--batches K] [--epochs E]\n"
    "                               [--transform train|val] [--json] [options]\n"
    "Runs the loader alone as training would (shuffled epochs, the reference augmentations,\n"
    "collated and normalised batches handed to a consumer that releases them at once) and\n"
    "prints images/s, mean per-stage times, the padded fraction, skipped samples, the RSS after\n"
    "each epoch and the peak RSS. Compare images/s with training's to see whether the loader or\n"
    "the model limits training. --json prints one JSON object instead.";

typedef struct {
    const char *split, *ann, *images, *cache, *transform, *scales, *resize_choices, *crop;
    int workers, batch, batches, epochs, prefetch, max_size, val_size, json, strict, u8,
        group_by_aspect, max_boxes;
    uint64_t seed, max_pixels;
    double timeout_s;
} BenchOptions;

/* Totals over the measured batches. */
typedef struct {
    int64_t batches, images, bytes_read, skipped, dropped_boxes;
    double read_s, decode_s, augment_s, collate_s, wait_s, padded_fraction_sum;
} BenchTotals;

static int64_t g_rss_seen; /* largest current_rss_bytes() so far */

static int64_t current_rss_bytes(void) {
    long pages_total = 0, pages_resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    int ok = fscanf(f, "%ld %ld", &pages_total, &pages_resident) == 2;
    fclose(f);
    int64_t rss = ok ? (int64_t)pages_resident * sysconf(_SC_PAGESIZE) : -1;
    if (rss > g_rss_seen) g_rss_seen = rss;
    return rss;
}

/* getrusage's ru_maxrss (KiB on Linux); the kernel updates it lazily, so it can trail an RSS
 * just read from /proc: report the larger of the two. */
static int64_t peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int64_t peak = (int64_t)ru.ru_maxrss * 1024;
    return peak > g_rss_seen ? peak : g_rss_seen;
}

/* Builds the transform config from the options; prints the error and returns -1 when bad. */
static int bench_transform(const BenchOptions *o, TransformConfig *tc) {
    char err[512];
    if (transform_config_from_options(tc, !strcmp(o->transform, "train"), o->scales, o->max_size,
                                      o->val_size, o->resize_choices, o->crop, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    return 0;
}

static void totals_add(BenchTotals *t, const LoaderBatch *b) {
    t->batches++;
    t->images += b->B;
    t->read_s += b->stats.read_s;
    t->decode_s += b->stats.decode_s;
    t->augment_s += b->stats.augment_s;
    t->collate_s += b->stats.collate_s;
    t->wait_s += b->stats.wait_s;
    t->bytes_read += b->stats.bytes_read;
    t->padded_fraction_sum += b->stats.padded_fraction;
    t->skipped += b->stats.skipped;
    t->dropped_boxes += b->stats.dropped_boxes;
}

static double per(double total, int64_t n) { return n > 0 ? total / (double)n : 0; }

typedef struct {
    BenchTotals all;           /* every batch */
    int64_t steady_images;     /* images after the first batch */
    double first_batch_t, end_t, start_t;
    double epoch_s[64];
    int64_t epoch_images[64], rss_after_epoch[64], peak_after_epoch[64];
    int epochs_done;
    int64_t batches_per_epoch, dataset_images;
} BenchResult;

static void print_bench_text(const BenchOptions *o, const char *ann, const BenchResult *r) {
    const BenchTotals *t = &r->all;
    double total_s = r->end_t - r->start_t, steady_s = r->end_t - r->first_batch_t;
    double steady_ips = (double)r->steady_images / (steady_s > 0 ? steady_s : 1e-9);
    printf("per image: read %.3f ms, decode %.3f ms, augment %.3f ms (summed over %d workers); "
           "per batch: collate %.3f ms, consumer wait %.3f ms\n",
           1e3 * per(t->read_s, t->images), 1e3 * per(t->decode_s, t->images),
           1e3 * per(t->augment_s, t->images), o->workers, 1e3 * per(t->collate_s, t->batches),
           1e3 * per(t->wait_s, t->batches));
    printf("read %.1f MB (%.1f MB/s); padded fraction %.1f%%; skipped samples %lld; dropped boxes "
           "%lld\n", (double)t->bytes_read / 1e6, (double)t->bytes_read / 1e6 / (total_s > 0 ? total_s : 1e-9),
           100.0 * per(t->padded_fraction_sum, t->batches), (long long)t->skipped,
           (long long)t->dropped_boxes);
    printf("RSS after each epoch (MB):");
    for (int e = 0; e < r->epochs_done; e++) printf(" %.1f", (double)r->rss_after_epoch[e] / 1e6);
    printf("\npeak RSS: %.1f MB\n", (double)peak_rss_bytes() / 1e6);
    printf("images/s: %.1f (after the first batch; %.1f including start-up) over %lld images in "
           "%lld batches [%s]\n", steady_ips, (double)t->images / (total_s > 0 ? total_s : 1e-9),
           (long long)t->images, (long long)t->batches, ann);
}

static void print_bench_json(const BenchOptions *o, const char *ann, const char *images,
                             const BenchResult *r) {
    const BenchTotals *t = &r->all;
    double total_s = r->end_t - r->start_t, steady_s = r->end_t - r->first_batch_t;
    json_t *j = json_object();
    json_object_set_new(j, "annotations", json_string(ann));
    json_object_set_new(j, "images_dir", json_string(images));
    json_object_set_new(j, "dataset_images", json_integer(r->dataset_images));
    json_object_set_new(j, "transform", json_string(o->transform));
    json_object_set_new(j, "workers", json_integer(o->workers));
    json_object_set_new(j, "batch", json_integer(o->batch));
    json_object_set_new(j, "prefetch", json_integer(o->prefetch));
    json_object_set_new(j, "epochs", json_integer(r->epochs_done));
    json_object_set_new(j, "batches_per_epoch", json_integer(r->batches_per_epoch));
    json_object_set_new(j, "batches", json_integer(t->batches));
    json_object_set_new(j, "images", json_integer(t->images));
    json_object_set_new(j, "seconds", json_real(total_s));
    json_object_set_new(j, "images_per_s", json_real(steady_s > 0 ? (double)r->steady_images / steady_s : 0));
    json_object_set_new(j, "images_per_s_with_startup", json_real(total_s > 0 ? (double)t->images / total_s : 0));
    json_t *stage = json_object();
    json_object_set_new(stage, "read", json_real(1e3 * per(t->read_s, t->images)));
    json_object_set_new(stage, "decode", json_real(1e3 * per(t->decode_s, t->images)));
    json_object_set_new(stage, "augment", json_real(1e3 * per(t->augment_s, t->images)));
    json_object_set_new(stage, "collate_per_batch", json_real(1e3 * per(t->collate_s, t->batches)));
    json_object_set_new(stage, "wait_per_batch", json_real(1e3 * per(t->wait_s, t->batches)));
    json_object_set_new(j, "stage_mean_ms", stage);
    json_object_set_new(j, "read_ms", json_real(1e3 * per(t->read_s, t->images)));
    json_object_set_new(j, "decode_ms", json_real(1e3 * per(t->decode_s, t->images)));
    json_object_set_new(j, "augment_ms", json_real(1e3 * per(t->augment_s, t->images)));
    json_object_set_new(j, "collate_ms", json_real(1e3 * per(t->collate_s, t->batches)));
    json_object_set_new(j, "wait_ms", json_real(1e3 * per(t->wait_s, t->batches)));
    json_object_set_new(j, "bytes_read", json_integer(t->bytes_read));
    json_object_set_new(j, "padded_fraction", json_real(per(t->padded_fraction_sum, t->batches)));
    json_object_set_new(j, "skipped", json_integer(t->skipped));
    json_object_set_new(j, "dropped_boxes", json_integer(t->dropped_boxes));
    json_object_set_new(j, "peak_rss_bytes", json_integer(peak_rss_bytes()));
    json_t *rss = json_array(), *peaks = json_array(), *eps = json_array();
    for (int e = 0; e < r->epochs_done; e++) {
        json_array_append_new(rss, json_integer(r->rss_after_epoch[e]));
        json_array_append_new(peaks, json_integer(r->peak_after_epoch[e]));
        json_array_append_new(eps, json_real(r->epoch_s[e] > 0 ? (double)r->epoch_images[e] / r->epoch_s[e] : 0));
    }
    json_object_set_new(j, "rss_after_epoch_bytes", rss);
    json_object_set_new(j, "peak_rss_after_epoch_bytes", peaks);
    json_object_set_new(j, "epoch_images_per_s", eps);
    char *s = json_dumps(j, JSON_COMPACT);
    printf("%s\n", s ? s : "{}");
    free(s);
    json_decref(j);
}

/* Runs the epochs; returns 0, or 1 with the message printed (fatal loader error). */
static int bench_run(const BenchOptions *o, Loader *l, BenchResult *r) {
    char err[2048];
    r->start_t = now_s();
    r->first_batch_t = -1;
    for (int e = 0; e < o->epochs; e++) {
        double t0 = now_s();
        if (loader_start_epoch(l, e, 0) != 0) {
            fprintf(stderr, "error: cannot start epoch %d\n", e);
            return 1;
        }
        int64_t images = 0;
        for (int64_t k = 0; o->batches <= 0 || k < o->batches; k++) {
            LoaderBatch *b = NULL;
            int got = loader_next(l, &b, o->timeout_s, err, sizeof(err));
            if (got < 0) {
                fprintf(stderr, "error: epoch %d, batch %lld: %s\n", e, (long long)k, err);
                return 1;
            }
            if (got == 0) break;
            if (r->first_batch_t < 0) r->first_batch_t = now_s();
            else r->steady_images += b->B;
            images += b->B;
            totals_add(&r->all, b);
            loader_release(l, b);
        }
        r->end_t = now_s();
        r->epoch_s[e] = r->end_t - t0;
        r->epoch_images[e] = images;
        r->rss_after_epoch[e] = current_rss_bytes();
        r->peak_after_epoch[e] = peak_rss_bytes();
        r->epochs_done = e + 1;
        if (!o->json)
            printf("epoch %d: %lld images in %.2f s (%.1f images/s), RSS %.1f MB, peak %.1f MB\n", e,
                   (long long)images, r->epoch_s[e], (double)images / (r->epoch_s[e] > 0 ? r->epoch_s[e] : 1e-9),
                   (double)r->rss_after_epoch[e] / 1e6, (double)r->peak_after_epoch[e] / 1e6);
        fflush(stdout);
    }
    if (r->first_batch_t < 0) r->first_batch_t = r->start_t;
    return 0;
}

static int cmd_bench(int argc, char **argv) {
    BenchOptions o;
    memset(&o, 0, sizeof(o));
    LoaderConfig defaults;
    loader_config_default(&defaults);
    o.transform = "train";
    o.workers = defaults.workers, o.batch = 8, o.epochs = 1, o.prefetch = defaults.prefetch;
    o.seed = 42, o.max_pixels = (uint64_t)defaults.max_pixels, o.max_boxes = defaults.max_boxes;
    float timeout = 120;
    CliOption opts[] = {
        {"workers", OPT_INT, &o.workers, "N", "loader worker threads (default 2)", NULL},
        {"batch", OPT_INT, &o.batch, "B", "images per batch (default 8)", NULL},
        {"batches", OPT_INT, &o.batches, "K", "batches per epoch to run (default: the whole epoch)", NULL},
        {"epochs", OPT_INT, &o.epochs, "E", "epochs (default 1; use 5 to see the RSS stay flat)", NULL},
        {"transform", OPT_STR, &o.transform, "train|val", "the reference train or val transform (default train)", NULL},
        {"split", OPT_STR, &o.split, "train|val", "split of DATASET (default: the transform's)", NULL},
        {"json", OPT_FLAG, &o.json, NULL, "print one JSON object (images_per_s, stage_mean_ms, peak_rss_bytes, ...)", NULL},
        {"scales", OPT_STR, &o.scales, "LIST", "resize scales, e.g. 96,112,128 (default 480..800 step 32)", NULL},
        {"max-size", OPT_INT, &o.max_size, "N", "longest side after resizing (default 1333)", NULL},
        {"resize-choices", OPT_STR, &o.resize_choices, "A,B,C", "pre-crop resize sizes (default 400,500,600)", NULL},
        {"crop", OPT_STR, &o.crop, "MIN,MAX", "random crop side range (default 384,600)", NULL},
        {"val-size", OPT_INT, &o.val_size, "N", "val transform's short side (default 800)", NULL},
        {"prefetch", OPT_INT, &o.prefetch, "K", "batch slots in the ring (default 2)", NULL},
        {"seed", OPT_U64, &o.seed, "S", "random seed (default 42)", NULL},
        {"group-by-aspect", OPT_FLAG, &o.group_by_aspect, NULL, "batch images of similar aspect ratio", NULL},
        {"uint8", OPT_FLAG, &o.u8, NULL, "hand out uint8 pixels (GPU preprocessing) instead of normalised floats", NULL},
        {"max-pixels", OPT_U64, &o.max_pixels, "N", "refuse images above N pixels (default 100000000)", NULL},
        {"max-boxes", OPT_INT, &o.max_boxes, "N", "boxes per image kept (default 256)", NULL},
        {"strict", OPT_FLAG, &o.strict, NULL, "the first bad sample is fatal (exit 1)", NULL},
        {"timeout", OPT_FLOAT, &timeout, "SEC", "longest wait for one batch before giving up (default 120)", NULL},
        {"ann", OPT_STR, &o.ann, "FILE", "instances JSON (with --images, instead of DATASET)", NULL},
        {"images", OPT_STR, &o.images, "DIR", "image folder (with --ann)", NULL},
        {"cache", OPT_STR, &o.cache, "DIR", "index cache folder (default $XDG_CACHE_HOME/detr)", NULL},
    };
    int oargc;
    char **oargv;
    const char *dataset = take_positional(argc, argv, opts, (int)(sizeof(opts) / sizeof(opts[0])), &oargc, &oargv);
    int rc = cli_parse(oargc, oargv, opts, (int)(sizeof(opts) / sizeof(opts[0])), USAGE_BENCH);
    free(oargv);
    if (rc) return rc > 0 ? 0 : 2;
    o.timeout_s = timeout;
    if (!dataset && !(o.ann && o.images)) {
        fprintf(stderr, "error: bench needs a DATASET folder (or --ann FILE --images DIR)\n");
        return 2;
    }
    if (strcmp(o.transform, "train") && strcmp(o.transform, "val")) {
        fprintf(stderr, "error: --transform '%s': use train or val\n", o.transform);
        return 2;
    }
    if (!o.split) o.split = o.transform;
    const char *bad = o.workers < 1 || o.workers > 128 ? "--workers (1..128)"
                    : o.batch < 1 || o.batch > 4096 ? "--batch (1..4096)"
                    : o.epochs < 1 || o.epochs > 64 ? "--epochs (1..64)"
                    : o.prefetch < 1 || o.prefetch > 64 ? "--prefetch (1..64)"
                    : o.batches < 0 ? "--batches (0 = whole epoch)"
                    : o.max_boxes < 1 ? "--max-boxes (>= 1)"
                    : !(o.timeout_s > 0) ? "--timeout (> 0)" : NULL;
    if (bad) {
        fprintf(stderr, "error: %s is out of range\n", bad);
        return 2;
    }
    LoaderConfig lc = defaults;
    if (bench_transform(&o, &lc.tf) != 0) return 2;
    char ann[PATHLEN], images[PATHLEN], err[2048];
    if (resolve_split(dataset, o.ann, o.images, o.split, ann, images, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    Dataset ds;
    if (dataset_open(ann, images, o.cache, &ds, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    lc.batch = o.batch, lc.workers = o.workers, lc.prefetch = o.prefetch, lc.seed = o.seed;
    lc.shuffle = !strcmp(o.transform, "train");
    lc.drop_last = lc.shuffle; /* as the reference's training BatchSampler(drop_last=True) */
    lc.uint8_output = o.u8, lc.group_by_aspect = o.group_by_aspect, lc.strict = o.strict;
    lc.max_pixels = (int64_t)o.max_pixels, lc.max_boxes = o.max_boxes;
    Loader *l = loader_create(&ds, &lc, err, sizeof(err));
    if (!l) {
        fprintf(stderr, "error: %s\n", err);
        dataset_close(&ds);
        return 1;
    }
    BenchResult r;
    memset(&r, 0, sizeof(r));
    r.batches_per_epoch = loader_batches_per_epoch(l);
    r.dataset_images = ds.n_images;
    if (!o.json)
        printf("detr-data bench: %s (%lld images, %lld batches/epoch), transform %s, batch %d, "
               "workers %d, prefetch %d\n", ann, (long long)ds.n_images,
               (long long)r.batches_per_epoch, o.transform, o.batch, o.workers, o.prefetch);
    rc = bench_run(&o, l, &r);
    loader_destroy(l);
    if (rc == 0) {
        if (o.json) print_bench_json(&o, ann, images, &r);
        else print_bench_text(&o, ann, &r);
    }
    dataset_close(&ds);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

static int cmd_default(int argc, char **argv) {
    if (argc > 2 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
        printf("usage: detr-data default\nPrints the embedded default dataset's folder, generating it "
               "on first use into $XDG_CACHE_HOME/detr (or ~/.cache/detr).\n");
        return 0;
    }
    if (argc > 2) {
        fprintf(stderr, "error: default takes no arguments (see --help)\n");
        return 2;
    }
    char dir[PATHLEN], err[1024];
    int generated = 0;
    if (synth_dataset_default_in(NULL, dir, sizeof(dir), &generated, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    if (generated) fprintf(stderr, "generated the default dataset in %s\n", dir);
    printf("%s\n", dir);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* eval */

static const char *USAGE_EVAL =
    "usage: detr-data eval GT.json DETECTIONS.json [--json]\n"
    "COCO bounding-box evaluation, the numbers of pycocotools' COCOeval(iouType='bbox'):\n"
    "GT.json is a COCO instances file (images, categories, annotations with bbox, area,\n"
    "iscrowd); DETECTIONS.json a COCO result file, a list of {\"image_id\", \"category_id\",\n"
    "\"bbox\": [x, y, w, h], \"score\"} (as detr-train writes). Prints the 12 summary lines\n"
    "(AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl; -1 = undefined).\n"
    "Detections of categories not in GT.json are skipped (counted on stderr); detections of\n"
    "images not in GT.json are an error. Exit 0, 1 on bad input, 2 on a usage error.";

static void print_eval_json(const CocoEvalResult *r) {
    json_t *j = json_object(), *stats = json_array(), *pc = json_array();
    for (int i = 0; i < COCO_EVAL_NUM_STATS; i++) json_array_append_new(stats, json_real(r->stats[i]));
    for (int k = 0; k < r->n_categories; k++) {
        json_t *c = json_object();
        json_object_set_new(c, "category_id", json_integer(r->category_ids[k]));
        json_object_set_new(c, "ap", json_real(r->category_ap[k]));
        json_array_append_new(pc, c);
    }
    json_object_set_new(j, "stats", stats);
    json_object_set_new(j, "per_category_ap", pc);
    json_object_set_new(j, "detections", json_integer(r->n_detections));
    json_object_set_new(j, "detections_unknown_category", json_integer(r->n_dropped));
    char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17));
    printf("%s\n", s ? s : "{}");
    free(s);
    json_decref(j);
}

static int cmd_eval(int argc, char **argv) {
    int as_json = 0;
    CliOption opts[] = {
        {"json", OPT_FLAG, &as_json, NULL, "print one JSON object: stats (12 numbers, COCOeval order) "
         "and per_category_ap (list of {category_id, ap})", NULL},
    };
    const char *files[2] = {NULL, NULL};
    int nfiles = 0;
    char **oargv = calloc((size_t)argc + 1, sizeof(char *));
    int oargc = 1;
    oargv[0] = argv[0];
    for (int i = 2; i < argc; i++) {
        if (argv[i][0] != '-' && nfiles < 2) files[nfiles++] = argv[i];
        else oargv[oargc++] = argv[i]; /* options, and extra words cli_parse then rejects */
    }
    int rc = cli_parse(oargc, oargv, opts, 1, USAGE_EVAL);
    free(oargv);
    if (rc) return rc > 0 ? 0 : 2;
    if (nfiles < 2) {
        fprintf(stderr, "error: eval needs GT.json and DETECTIONS.json\n%s\n", USAGE_EVAL);
        return 2;
    }
    char err[2048];
    CocoEval *e = coco_eval_load_gt(files[0], err, sizeof(err));
    if (!e || coco_eval_load_detections(e, files[1], err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        coco_eval_free(e);
        return 1;
    }
    CocoEvalResult r;
    if (coco_eval_run(e, &r, err, sizeof(err)) != 0) {
        fprintf(stderr, "error: %s\n", err);
        coco_eval_free(e);
        return 1;
    }
    if (r.n_dropped > 0)
        fprintf(stderr, "note: %lld of %lld detections have a category_id that is not in %s's "
                "categories; they are not evaluated (as pycocotools)\n", (long long)r.n_dropped,
                (long long)coco_eval_num_detections(e), files[0]);
    if (as_json) print_eval_json(&r);
    else coco_eval_print_summary(stdout, r.stats);
    coco_eval_result_free(&r);
    coco_eval_free(e);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "%s\n", USAGE_MAIN);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        printf("%s\n", USAGE_MAIN);
        return 0;
    }
    if (!strcmp(cmd, "synth")) return cmd_synth(argc, argv);
    if (!strcmp(cmd, "check")) return cmd_check(argc, argv);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc, argv);
    if (!strcmp(cmd, "default")) return cmd_default(argc, argv);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc, argv);
    fprintf(stderr, "error: unknown command '%s'\n\n%s\n", cmd, USAGE_MAIN);
    return 2;
}
