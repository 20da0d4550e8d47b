/* test_check.c - `detr-data check` (dataloader/check.h): a dataset with one or more problems of
 * every kind must be reported with exact counts, one line per problem; a clean dataset (made by
 * hand and by the synthetic generator) passes; malformed JSON is one problem with line and
 * column. Everything is written into a temporary folder. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>
#include "check.h"
#include "../../dataloader/check.h"
#include "../../dataloader/synth.h"
#include "dataset.h"

static char g_tmp[PATH_MAX];

static void pathf(char *out, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pathf(char *out, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, len, fmt, ap);
    va_end(ap);
}

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static void remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[PATH_MAX];
            pathf(p, sizeof p, "%s/%s", path, e->d_name);
            remove_tree(p);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* A w x h JPEG of a gradient; returns its bytes (tjFree) and size. */
static unsigned char *make_jpeg(int w, int h, unsigned long *size) {
    unsigned char *rgb = malloc((size_t)w * h * 3), *jpg = NULL;
    for (int i = 0; i < w * h * 3; i++) rgb[i] = (unsigned char)(i * 7 + i / 97);
    tjhandle tj = tjInitCompress();
    *size = 0;
    if (tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, &jpg, size, TJSAMP_420, 90, 0)) jpg = NULL;
    tjDestroy(tj);
    free(rgb);
    return jpg;
}

static int write_jpeg(const char *dir, const char *name, int w, int h) {
    char p[PATH_MAX];
    unsigned long n;
    unsigned char *j = make_jpeg(w, h, &n);
    pathf(p, sizeof p, "%s/%s", dir, name);
    int rc = j ? write_file(p, j, n) : -1;
    tjFree(j);
    return rc;
}

/* Runs the check with the output captured; returns its return value. */
static int run_check(const char *ann, const char *images, const CheckOptions *o, CheckReport *rep,
                     char **text) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    int rc = dataset_check(ann, images, o, rep, f);
    fclose(f);
    *text = buf;
    return rc;
}

/* Lines of text starting with "<kind>: ". */
static int count_lines(const char *text, const char *kind) {
    int n = 0;
    size_t k = strlen(kind);
    for (const char *p = text; p && *p;) {
        if (!strncmp(p, kind, k) && p[k] == ':' && p[k + 1] == ' ') n++;
        p = strchr(p, '\n');
        if (p) p++;
    }
    return n;
}

static void test_every_problem(void) {
    char dir[PATH_MAX], imgs[PATH_MAX], ann[PATH_MAX], p[PATH_MAX];
    pathf(dir, sizeof dir, "%s/bad", g_tmp);
    pathf(imgs, sizeof imgs, "%s/images", dir);
    mkdir(dir, 0755);
    mkdir(imgs, 0755);
    /* image files */
    write_jpeg(imgs, "ok.jpg", 32, 24);
    write_jpeg(imgs, "ok2.jpg", 32, 24);
    write_jpeg(imgs, "wrong_size.jpg", 32, 24);     /* JSON says 40x24 */
    write_jpeg(imgs, "big.jpg", 64, 64);            /* above max_pixels = 2000 */
    pathf(p, sizeof p, "%s/empty.jpg", imgs);
    write_file(p, "", 0);
    pathf(p, sizeof p, "%s/folder.jpg", imgs);
    mkdir(p, 0755);
    pathf(p, sizeof p, "%s/garbage.jpg", imgs);
    write_file(p, "this is not an image at all, just text", 38);
    unsigned long n;
    unsigned char *j = make_jpeg(48, 32, &n);
    pathf(p, sizeof p, "%s/truncated.jpg", imgs);
    write_file(p, j, n * 2 / 3);                     /* header intact, data cut */
    tjFree(j);
    write_jpeg(imgs, "zero_w.jpg", 8, 8);            /* JSON width 0 */

    const char *json =
        "{\"images\": [\n"
        " {\"id\": 1, \"file_name\": \"ok.jpg\", \"width\": 32, \"height\": 24},\n"
        " {\"id\": 2, \"file_name\": \"wrong_size.jpg\", \"width\": 40, \"height\": 24},\n"
        " {\"id\": 3, \"file_name\": \"missing.jpg\", \"width\": 32, \"height\": 24},\n"
        " {\"id\": 4, \"file_name\": \"empty.jpg\", \"width\": 32, \"height\": 24},\n"
        " {\"id\": 5, \"file_name\": \"folder.jpg\", \"width\": 32, \"height\": 24},\n"
        " {\"id\": 6, \"file_name\": \"garbage.jpg\", \"width\": 32, \"height\": 24},\n"
        " {\"id\": 7, \"file_name\": \"truncated.jpg\", \"width\": 48, \"height\": 32},\n"
        " {\"id\": 8, \"file_name\": \"big.jpg\", \"width\": 64, \"height\": 64},\n"
        " {\"id\": 9, \"file_name\": \"zero_w.jpg\", \"width\": 0, \"height\": 8},\n"
        " {\"id\": 1, \"file_name\": \"ok2.jpg\", \"width\": 32, \"height\": 24},\n"
        " {\"id\": 1, \"file_name\": \"ok2.jpg\", \"width\": 32, \"height\": 24}\n"
        "],\n"
        "\"annotations\": [\n"
        " {\"id\": 1, \"image_id\": 1, \"bbox\": [1, 1, 10, 10], \"category_id\": 1},\n"
        " {\"id\": 2, \"image_id\": 1, \"bbox\": [0, 0, 32.5, 24.9], \"category_id\": 1},\n"  /* within 1 px: fine */
        " {\"id\": 3, \"image_id\": 1, \"bbox\": [1, 1, 1e999, 10], \"category_id\": 1},\n"  /* bad: inf */
        " {\"id\": 4, \"image_id\": 1, \"bbox\": [1, 1, 0, 10], \"category_id\": 1},\n"      /* bad: zero w */
        " {\"id\": 5, \"image_id\": 1, \"bbox\": [1, 1, 5, -2], \"category_id\": 1},\n"      /* bad: neg h */
        " {\"id\": 6, \"image_id\": 1, \"bbox\": [20, 1, 14, 10], \"category_id\": 1},\n"    /* x1 = 34 > 33 */
        " {\"id\": 7, \"image_id\": 1, \"bbox\": [-3, 1, 5, 5], \"category_id\": 1},\n"      /* x < -1 */
        " {\"id\": 8, \"image_id\": 77, \"bbox\": [1, 1, 5, 5], \"category_id\": 1},\n"     /* unknown image */
        " {\"id\": 9, \"image_id\": 1, \"bbox\": [1, 1, 5, 5], \"category_id\": 42},\n"     /* unknown category */
        " {\"id\": 9, \"image_id\": 1, \"bbox\": [1, 1, 5, 5], \"category_id\": -1},\n"     /* dup id + unknown cat */
        " {\"image_id\": 1, \"bbox\": [1, 1, 5, 5], \"category_id\": 2},\n"                 /* no id: fine */
        " {\"image_id\": 1, \"bbox\": [1, 1, 5, 5], \"category_id\": 2}\n"
        "],\n"
        "\"categories\": [{\"id\": 1, \"name\": \"a\"}, {\"id\": 2, \"name\": \"b\"}, {\"id\": 2, \"name\": \"c\"}]}\n";
    pathf(ann, sizeof ann, "%s/instances.json", dir);
    write_file(ann, json, strlen(json));

    CheckOptions o;
    check_options_default(&o);
    o.max_pixels = 2000;
    CheckReport rep;
    char *text = NULL;
    int rc = run_check(ann, imgs, &o, &rep, &text);
    const int64_t want[CHECK_NKINDS] = {
        [CHECK_JSON] = 0,
        [CHECK_DUP_IMAGE_ID] = 2,        /* id 1 three times */
        [CHECK_DUP_ANN_ID] = 1,
        [CHECK_DUP_CATEGORY_ID] = 1,
        [CHECK_BAD_IMAGE_SIZE] = 1,
        [CHECK_MISSING_IMAGE] = 1,
        [CHECK_UNREADABLE_IMAGE] = 2,    /* empty, folder */
        [CHECK_UNDECODABLE_IMAGE] = 2,   /* garbage, truncated */
        [CHECK_TOO_LARGE_IMAGE] = 1,
        [CHECK_SIZE_MISMATCH] = 1,
        [CHECK_UNKNOWN_IMAGE_ID] = 1,
        [CHECK_UNKNOWN_CATEGORY] = 2,
        [CHECK_BAD_BOX] = 3,
        [CHECK_BOX_OUT_OF_RANGE] = 2,
    };
    int64_t total = 0;
    for (int k = 0; k < CHECK_NKINDS; k++) {
        char name[96];
        snprintf(name, sizeof name, "check: %s counted", check_kind_name((CheckKind)k));
        CHECK(name, rep.counts[k] == want[k], "%lld, want %lld", (long long)rep.counts[k], (long long)want[k]);
        snprintf(name, sizeof name, "check: %s listed line by line", check_kind_name((CheckKind)k));
        CHECK(name, count_lines(text, check_kind_name((CheckKind)k)) == want[k], "%d lines, want %lld",
              count_lines(text, check_kind_name((CheckKind)k)), (long long)want[k]);
        total += want[k];
    }
    CHECK("check: total and return value", rc == 1 && rep.total_problems == total && rep.n_images == 11 &&
          rep.n_anns == 12 && rep.n_categories == 3, "rc %d total %lld", rc, (long long)rep.total_problems);
    CHECK("check: lines name the culprits",
          strstr(text, "id 1 at images[0] and images[9]") && strstr(text, "id 1 at images[0] and images[10]") &&
          strstr(text, "the file is 32x24, the JSON says 40x24") && strstr(text, "missing.jpg: no such file") &&
          strstr(text, "empty file") && strstr(text, "is a folder") && strstr(text, "annotations[7] (id 8): image_id 77") &&
          strstr(text, "category_id 42") && strstr(text, "4096 pixels, above the limit of 2000"),
          "output:\n%s", text);
    CHECK("check: summary with counts", strstr(text, "summary: ") && strstr(text, "20 problem(s) found"),
          "output:\n%s", text);
    free(text);
    check_report_free(&rep);

    /* header-only mode does not see the truncated data; with decode it is caught */
    o.decode = 0;
    rc = run_check(ann, imgs, &o, &rep, &text);
    CHECK("check: header-only mode misses the truncated JPEG", rep.counts[CHECK_UNDECODABLE_IMAGE] == 1 &&
          !strstr(text, "truncated.jpg"), "%lld undecodable", (long long)rep.counts[CHECK_UNDECODABLE_IMAGE]);
    free(text);

    /* no output stream: counts only */
    rc = dataset_check(ann, imgs, &o, &rep, NULL);
    CHECK("check: NULL output still counts", rc == 1 && rep.total_problems == total - 1, "rc %d total %lld",
          rc, (long long)rep.total_problems);
}

static void test_clean(void) {
    char dir[PATH_MAX], ann[PATH_MAX];
    pathf(dir, sizeof dir, "%s/clean", g_tmp);
    mkdir(dir, 0755);
    write_jpeg(dir, "a.jpg", 40, 30);
    write_jpeg(dir, "b.jpg", 30, 40);
    const char *json =
        "{\"images\": [{\"id\": 1, \"file_name\": \"a.jpg\", \"width\": 40, \"height\": 30},"
        " {\"id\": 2, \"file_name\": \"b.jpg\", \"width\": 30, \"height\": 40}],"
        " \"annotations\": [{\"id\": 1, \"image_id\": 1, \"bbox\": [0, 0, 40, 30], \"category_id\": 1, \"iscrowd\": 0},"
        " {\"id\": 2, \"image_id\": 2, \"bbox\": [5.5, 6.5, 10, 20], \"category_id\": 2}],"
        " \"categories\": [{\"id\": 1}, {\"id\": 2}]}";
    pathf(ann, sizeof ann, "%s/instances.json", dir);
    write_file(ann, json, strlen(json));
    CheckReport rep;
    char *text;
    int rc = run_check(ann, dir, NULL, &rep, &text);
    CHECK("check: clean dataset returns 0", rc == 0 && rep.total_problems == 0 && strstr(text, "clean"),
          "rc %d:\n%s", rc, text);
    free(text);

    /* malformed JSON: one problem, with line and column */
    const char *bad = "{\"images\": [\n {\"id\": 1,\n  \"file_name\" \"a.jpg\"}]}";
    write_file(ann, bad, strlen(bad));
    rc = run_check(ann, dir, NULL, &rep, &text);
    char want[PATH_MAX + 16];
    pathf(want, sizeof want, "%s:3:15: ", ann);
    CHECK("check: malformed JSON is one problem with line and column", rc == 1 && rep.counts[CHECK_JSON] == 1 &&
          rep.total_problems == 1 && strstr(text, want), "rc %d:\n%s", rc, text);
    free(text);

    rc = run_check("/nonexistent/x.json", dir, NULL, &rep, &text);
    CHECK("check: missing annotation file is a problem", rc == 1 && rep.counts[CHECK_JSON] == 1 &&
          strstr(text, "/nonexistent/x.json"), "rc %d:\n%s", rc, text);
    free(text);
}

/* The synthetic generator's output (what `make run` trains on) must be clean. */
static void test_synthetic(void) {
    char out[PATH_MAX], ann[PATH_MAX], imgs[PATH_MAX], err[1024];
    pathf(out, sizeof out, "%s/synth", g_tmp);
    SynthDatasetConfig c;
    synth_config_default(&c);
    c.train_images = 6;
    c.val_images = 2;
    c.width = 64;
    c.height = 48;
    c.threads = 2;
    if (synth_config_validate(&c, err, sizeof err) || synth_dataset_write(out, &c, NULL, err, sizeof err) ||
        dataset_find(out, "train", ann, sizeof ann, imgs, sizeof imgs, err, sizeof err)) {
        CHECK("check: synthetic dataset written and found", 0, "%s", err);
        return;
    }
    CheckReport rep;
    char *text;
    int rc = run_check(ann, imgs, NULL, &rep, &text);
    CHECK("check: synthetic dataset is clean", rc == 0 && rep.n_images == 6 && rep.n_anns > 0, "rc %d:\n%s", rc, text);
    free(text);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    pathf(g_tmp, sizeof g_tmp, "%s/detr-test-check-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_tmp)) {
        CHECK("temp folder", 0, "mkdtemp: %s", strerror(errno));
        return test_finish();
    }
    test_every_problem();
    test_clean();
    test_synthetic();
    remove_tree(g_tmp);
    return test_finish();
}
