/* test_synth.c - the synthetic COCO dataset generator (dataloader/synth.c):
 *  - configuration checks name the bad field;
 *  - rendering is a pure function of (seed, split, index); different seeds differ;
 *  - boxes are exact: each is the tight box of its object's drawn pixels, area = pixel count,
 *    objects never overlap, and every object stands out from the background around it;
 *  - a written dataset has the COCO layout and fields, JPEGs that decode to the rendered pixels
 *    (within JPEG error) and boxes equal to the rendered ones;
 *  - the bytes do not depend on the number of threads;
 *  - writing is atomic (non-empty output refused, no temporary folder left behind);
 *  - the embedded default is generated once into the cache (also under a race of two processes)
 *    and reused; its generation time is printed;
 *  - photo-like JPEG sizes: mean >= 60 KB at 640x480, quality 90 (the mean is printed). */
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <turbojpeg.h>
#include "check.h"
#include "../../dataloader/synth.h"

static char g_tmp[256];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int rm_entry(const char *p, const struct stat *s, int f, struct FTW *w) {
    (void)s, (void)f, (void)w;
    return remove(p);
}

static void rm_tree(const char *p) { nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static unsigned char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)(n > 0 ? n : 1));
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

static int files_equal(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    unsigned char *x = read_all(a, &na), *y = read_all(b, &nb);
    int eq = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return eq;
}

/* Entries of dir whose name starts with prefix. */
static int count_entries(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, prefix, strlen(prefix)) && strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static SynthDatasetConfig small_config(void) {
    SynthDatasetConfig c;
    synth_config_default(&c);
    c.train_images = 12, c.val_images = 4, c.width = 96, c.height = 72, c.classes = 8;
    c.max_objects = 5, c.seed = 7, c.threads = 2;
    return c;
}

static void test_config(void) {
    char err[512];
    SynthDatasetConfig c;
    synth_config_default(&c);
    CHECK("config: default is valid", synth_config_validate(&c, err, sizeof(err)) == 0, "%s", err);
    synth_config_embedded(&c);
    CHECK("config: embedded default is valid", synth_config_validate(&c, err, sizeof(err)) == 0, "%s", err);
    struct { const char *field; SynthDatasetConfig c; } bad[6];
    for (int i = 0; i < 6; i++) synth_config_default(&bad[i].c);
    bad[0].field = "size", bad[0].c.width = 8;
    bad[1].field = "classes", bad[1].c.classes = 0;
    bad[2].field = "objects", bad[2].c.max_objects = SYNTH_MAX_OBJECTS + 1;
    bad[3].field = "quality", bad[3].c.quality = 101;
    bad[4].field = "images", bad[4].c.train_images = 0, bad[4].c.val_images = 0;
    bad[5].field = "jitter", bad[5].c.size_jitter = 0.9;
    for (int i = 0; i < 6; i++) {
        err[0] = 0;
        int rc = synth_config_validate(&bad[i].c, err, sizeof(err));
        char name[64];
        snprintf(name, sizeof(name), "config: bad %s refused and named", bad[i].field);
        CHECK(name, rc != 0 && strstr(err, bad[i].field) != NULL, "rc %d, message '%s'", rc, err);
    }
    char nm[64];
    synth_category_name(2, 3, nm, sizeof(nm));
    CHECK("category names: id 2 of 3 is ellipse", !strcmp(nm, "ellipse"), "got %s", nm);
    synth_category_name(8, 12, nm, sizeof(nm));
    CHECK("category names: id 8 of 12 is ellipse-band1", !strcmp(nm, "ellipse-band1"), "got %s", nm);
}

static void test_render_deterministic(void) {
    SynthDatasetConfig c = small_config();
    size_t n = (size_t)c.width * c.height * 3;
    uint8_t *a = malloc(n), *b = malloc(n);
    SynthObject oa[SYNTH_MAX_OBJECTS], ob[SYNTH_MAX_OBJECTS];
    int wa, ha, wb, hb;
    int na = synth_render_image(&c, 0, 3, &wa, &ha, a, NULL, oa);
    int nb = synth_render_image(&c, 0, 3, &wb, &hb, b, NULL, ob);
    int same_objects = na == nb;
    for (int k = 0; k < na && same_objects; k++)
        same_objects = oa[k].category == ob[k].category && oa[k].area == ob[k].area &&
                       !memcmp(oa[k].bbox, ob[k].bbox, sizeof(oa[k].bbox));
    CHECK("render: same (seed, split, index) gives the same pixels and objects",
          same_objects && wa == wb && ha == hb && !memcmp(a, b, n), "objects %d vs %d", na, nb);
    synth_render_image(&c, 1, 3, &wb, &hb, b, NULL, ob);
    CHECK("render: val image 3 differs from train image 3", memcmp(a, b, n) != 0, "identical");
    c.seed = 8;
    synth_render_image(&c, 0, 3, &wb, &hb, b, NULL, ob);
    CHECK("render: another seed gives another image", memcmp(a, b, n) != 0, "identical");
    free(a);
    free(b);
}

/* For every object of many rendered images: bbox == tight bounds of its pixels in the object map,
 * area == pixel count, category in range; objects do not overlap (each pixel has one owner by
 * construction of the map, so overlap shows up as a box whose pixels are not all found); the
 * object's mean colour differs from the mean of a 2-pixel ring of background around its box. */
static void test_exact_boxes(void) {
    SynthDatasetConfig c = small_config();
    c.width = 160, c.height = 120, c.size_jitter = 0.3, c.max_objects = 6, c.classes = 14;
    size_t px = (size_t)c.width * c.height;
    uint8_t *rgb = malloc(px * 3), *map = malloc(px);
    int objects = 0, exact = 0, visible = 0, in_range = 0, overlap_free = 1, sizes_ok = 1;
    int seen_cat[15] = {0};
    for (int img = 0; img < 60; img++) {
        SynthObject o[SYNTH_MAX_OBJECTS];
        int w, h;
        int n = synth_render_image(&c, img % 2, img, &w, &h, rgb, map, o);
        if (w > c.width || h > c.height || w < c.width * 0.7 - 1 || h < c.height * 0.7 - 1) sizes_ok = 0;
        for (int k = 0; k < n; k++) {
            objects++;
            int minx = w, miny = h, maxx = -1, maxy = -1;
            int64_t count = 0;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    if (map[y * w + x] == k + 1) {
                        count++;
                        if (x < minx) minx = x;
                        if (x > maxx) maxx = x;
                        if (y < miny) miny = y;
                        if (y > maxy) maxy = y;
                    }
            if (count == o[k].area && o[k].bbox[0] == minx && o[k].bbox[1] == miny &&
                o[k].bbox[2] == maxx - minx + 1 && o[k].bbox[3] == maxy - miny + 1)
                exact++;
            if (o[k].category >= 1 && o[k].category <= c.classes) in_range++, seen_cat[o[k].category] = 1;
            /* overlap: another object's pixel inside this box would mean a shared region */
            for (int y = miny; y <= maxy && overlap_free; y++)
                for (int x = minx; x <= maxx; x++)
                    if (map[y * w + x] && map[y * w + x] != k + 1) overlap_free = 0;
            double in[3] = {0, 0, 0}, out[3] = {0, 0, 0};
            int nin = 0, nout = 0;
            for (int y = miny - 2; y <= maxy + 2; y++)
                for (int x = minx - 2; x <= maxx + 2; x++) {
                    if (x < 0 || y < 0 || x >= w || y >= h) continue;
                    const uint8_t *p = rgb + ((size_t)y * w + x) * 3;
                    int ring = x < minx || x > maxx || y < miny || y > maxy;
                    if (map[y * w + x] == k + 1) {
                        for (int ch = 0; ch < 3; ch++) in[ch] += p[ch];
                        nin++;
                    } else if (ring && !map[y * w + x]) {
                        for (int ch = 0; ch < 3; ch++) out[ch] += p[ch];
                        nout++;
                    }
                }
            double d = 0;
            for (int ch = 0; ch < 3; ch++) {
                double diff = in[ch] / (nin ? nin : 1) - out[ch] / (nout ? nout : 1);
                d += diff * diff;
            }
            if (sqrt(d) > 30) visible++;
        }
    }
    int cats = 0;
    for (int k = 1; k <= 14; k++) cats += seen_cat[k];
    CHECK("boxes: every box is the tight box of its drawn pixels, area = pixel count",
          objects > 100 && exact == objects, "%d of %d exact", exact, objects);
    CHECK("boxes: categories within 1..classes, all 14 classes drawn", in_range == objects && cats == 14,
          "%d of %d in range, %d classes seen", in_range, objects, cats);
    CHECK("boxes: objects never overlap", overlap_free, "an object's box holds another's pixels");
    CHECK("boxes: objects stand out from the background around them (mean colour distance > 30)",
          visible >= objects * 95 / 100, "%d of %d visible", visible, objects);
    CHECK("render: jittered sizes stay within [0.7, 1] of the configured size", sizes_ok, "size out of range");
    printf("     %d objects in 60 images, %d exact, %d clearly visible\n", objects, exact, visible);
    free(rgb);
    free(map);
}

/* Reads the COCO JSON of a split and checks fields against freshly rendered images; decodes
 * every JPEG and compares with the render. */
static void check_split(const char *dir, const SynthDatasetConfig *c, int split) {
    const char *name = split ? "val" : "train";
    char path[512], label[128];
    snprintf(path, sizeof(path), "%s/annotations/instances_%s.json", dir, name);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    snprintf(label, sizeof(label), "dataset %s: JSON parses", name);
    CHECK(label, root != NULL, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    if (!root) return;
    json_t *images = json_object_get(root, "images"), *anns = json_object_get(root, "annotations");
    json_t *cats = json_object_get(root, "categories");
    int want = split ? c->val_images : c->train_images;
    snprintf(label, sizeof(label), "dataset %s: %d images, %d categories", name, want, c->classes);
    CHECK(label, json_array_size(images) == (size_t)want && json_array_size(cats) == (size_t)c->classes,
          "%zu images, %zu categories", json_array_size(images), json_array_size(cats));
    size_t npx = (size_t)c->width * c->height;
    uint8_t *rgb = malloc(npx * 3), *dec = malloc(npx * 3);
    tjhandle tj = tjInitDecompress();
    int fields_ok = 1, boxes_ok = 1, files_ok = 1, ann_index = 0;
    double max_mean_err = 0;
    for (int i = 0; i < want; i++) {
        json_t *im = json_array_get(images, (size_t)i);
        int64_t id = json_integer_value(json_object_get(im, "id"));
        const char *fname = json_string_value(json_object_get(im, "file_name"));
        int w = (int)json_integer_value(json_object_get(im, "width"));
        int h = (int)json_integer_value(json_object_get(im, "height"));
        int64_t want_id = split ? c->train_images + i + 1 : i + 1;
        if (id != want_id || !fname || w <= 0 || h <= 0) {
            fields_ok = 0;
            continue;
        }
        SynthObject o[SYNTH_MAX_OBJECTS];
        int rw, rh;
        int n = synth_render_image(c, split, i, &rw, &rh, rgb, NULL, o);
        if (rw != w || rh != h) fields_ok = 0;
        for (int k = 0; k < n; k++, ann_index++) {
            json_t *a = json_array_get(anns, (size_t)ann_index), *bb = json_object_get(a, "bbox");
            if (!a || json_integer_value(json_object_get(a, "image_id")) != id ||
                json_integer_value(json_object_get(a, "category_id")) != o[k].category ||
                json_integer_value(json_object_get(a, "iscrowd")) != 0 ||
                !json_is_integer(json_object_get(a, "id")) ||
                json_number_value(json_object_get(a, "area")) != (double)o[k].area) {
                boxes_ok = 0;
                continue;
            }
            for (int j = 0; j < 4; j++)
                if (json_number_value(json_array_get(bb, (size_t)j)) != o[k].bbox[j]) boxes_ok = 0;
        }
        snprintf(path, sizeof(path), "%s/%s/%s", dir, name, fname);
        size_t len;
        unsigned char *jpg = read_all(path, &len);
        int jw = 0, jh = 0, sub, cs;
        if (!jpg || tjDecompressHeader3(tj, jpg, (unsigned long)len, &jw, &jh, &sub, &cs) != 0 ||
            jw != w || jh != h ||
            tjDecompress2(tj, jpg, (unsigned long)len, dec, w, 0, h, TJPF_RGB, 0) != 0) {
            files_ok = 0;
        } else {
            /* JPEG at q90 with 4:2:0 chroma keeps the picture but not the per-pixel noise:
             * compare 8x8 block means */
            double e = 0;
            int blocks = 0;
            for (int by = 0; by + 8 <= h; by += 8)
                for (int bx = 0; bx + 8 <= w; bx += 8, blocks++)
                    for (int ch = 0; ch < 3; ch++) {
                        double sd = 0, sr = 0;
                        for (int y = by; y < by + 8; y++)
                            for (int x = bx; x < bx + 8; x++) {
                                sd += dec[((size_t)y * w + x) * 3 + ch];
                                sr += rgb[((size_t)y * w + x) * 3 + ch];
                            }
                        e += fabs(sd - sr) / 64.0 / 3.0;
                    }
            e /= blocks ? blocks : 1;
            if (e > max_mean_err) max_mean_err = e;
        }
        free(jpg);
    }
    snprintf(label, sizeof(label), "dataset %s: image ids, names and sizes match the renders", name);
    CHECK(label, fields_ok, "mismatch");
    snprintf(label, sizeof(label), "dataset %s: annotations (image_id, category, bbox, area, iscrowd 0) "
             "match the renders", name);
    CHECK(label, boxes_ok && (size_t)ann_index == json_array_size(anns), "%d rendered objects, %zu annotations",
          ann_index, json_array_size(anns));
    snprintf(label, sizeof(label), "dataset %s: JPEGs decode to the rendered pixels (8x8 block means: mean abs error %.2f < 2)",
             name, max_mean_err);
    CHECK(label, files_ok && max_mean_err < 2, "files ok %d, worst mean error %.2f", files_ok, max_mean_err);
    tjDestroy(tj);
    free(rgb);
    free(dec);
    json_decref(root);
}

static void test_write_dataset(void) {
    SynthDatasetConfig c = small_config();
    c.size_jitter = 0.2;
    char dir[300], err[512];
    snprintf(dir, sizeof(dir), "%s/ds", g_tmp);
    SynthStats st;
    int rc = synth_dataset_write(dir, &c, &st, err, sizeof(err));
    CHECK("write: small dataset written", rc == 0, "%s", err);
    if (rc) return;
    CHECK("write: stats count the images and bytes", st.images == 16 && st.jpeg_bytes > 0 && st.objects > 0,
          "images %lld bytes %lld", (long long)st.images, (long long)st.jpeg_bytes);
    char sub[400];
    snprintf(sub, sizeof(sub), "%s/train", dir);
    int ntrain = count_entries(sub, "0");
    snprintf(sub, sizeof(sub), "%s/val", dir);
    int nval = count_entries(sub, "0");
    CHECK("write: train/ and val/ hold the images", ntrain == 12 && nval == 4, "%d train, %d val", ntrain, nval);
    check_split(dir, &c, 0);
    check_split(dir, &c, 1);
    CHECK("write: no temporary folder left next to the dataset", count_entries(g_tmp, ".ds.tmp") == 0,
          "leftover");

    /* the same dataset with 1 and 3 threads: byte-identical */
    char dir1[300], dir3[300];
    snprintf(dir1, sizeof(dir1), "%s/t1", g_tmp);
    snprintf(dir3, sizeof(dir3), "%s/t3", g_tmp);
    c.threads = 1;
    int rc1 = synth_dataset_write(dir1, &c, NULL, err, sizeof(err));
    c.threads = 3;
    int rc3 = synth_dataset_write(dir3, &c, NULL, err, sizeof(err));
    int same = rc1 == 0 && rc3 == 0;
    const char *rel[] = {"annotations/instances_train.json", "annotations/instances_val.json",
                         "train/000000000001.jpg", "train/000000000012.jpg", "val/000000000013.jpg",
                         "val/000000000016.jpg"};
    for (int i = 0; i < 6 && same; i++) {
        char a[512], b[512];
        snprintf(a, sizeof(a), "%s/%s", dir1, rel[i]);
        snprintf(b, sizeof(b), "%s/%s", dir3, rel[i]);
        same = files_equal(a, b);
    }
    CHECK("write: bytes do not depend on the number of threads (1 vs 3)", same, "rc %d/%d or files differ", rc1, rc3);

    /* non-empty output refused, left untouched; an empty folder is fine */
    err[0] = 0;
    rc = synth_dataset_write(dir, &c, NULL, err, sizeof(err));
    CHECK("write: refuses a non-empty output folder with a message", rc != 0 && strstr(err, "not") != NULL,
          "rc %d, '%s'", rc, err);
    snprintf(sub, sizeof(sub), "%s/annotations/instances_train.json", dir);
    struct stat s;
    CHECK("write: the refused folder is left as it was", stat(sub, &s) == 0, "annotations gone");
    char empty[300];
    snprintf(empty, sizeof(empty), "%s/empty", g_tmp);
    mkdir(empty, 0755);
    c.train_images = 2, c.val_images = 1;
    rc = synth_dataset_write(empty, &c, NULL, err, sizeof(err));
    CHECK("write: an existing empty folder is filled", rc == 0, "%s", err);
    c.classes = 0;
    snprintf(sub, sizeof(sub), "%s/never", g_tmp);
    rc = synth_dataset_write(sub, &c, NULL, err, sizeof(err));
    CHECK("write: a bad config writes nothing", rc != 0 && stat(sub, &s) != 0 &&
          count_entries(g_tmp, ".never") == 0, "rc %d", rc);
}

static void test_default(void) {
    char root[300], dir[512], dir2[512], err[512];
    snprintf(root, sizeof(root), "%s/cache", g_tmp);
    int generated = -1;
    double t0 = now_s();
    int rc = synth_dataset_default_in(root, dir, sizeof(dir), &generated, err, sizeof(err));
    double gen_s = now_s() - t0;
    CHECK("default: generated on first use", rc == 0 && generated == 1, "rc %d generated %d: %s", rc, generated, err);
    printf("     embedded default (2048 + 128 images of 64x64) generated in %.2f s\n", gen_s);
    t0 = now_s();
    rc = synth_dataset_default_in(root, dir2, sizeof(dir2), &generated, err, sizeof(err));
    double reuse_s = now_s() - t0;
    CHECK("default: reused on the second call (same folder, not regenerated)",
          rc == 0 && generated == 0 && !strcmp(dir, dir2), "rc %d generated %d", rc, generated);
    printf("     reusing it took %.2f ms\n", reuse_s * 1e3);
    char sub[600];
    snprintf(sub, sizeof(sub), "%s/train", dir);
    int ntrain = count_entries(sub, "0");
    snprintf(sub, sizeof(sub), "%s/val", dir);
    int nval = count_entries(sub, "0");
    CHECK("default: 2048 train + 128 val images under <cache>/synth-default-v2",
          ntrain == 2048 && nval == 128 && strstr(dir, "/cache/synth-default-v2") != NULL, "%d/%d in %s",
          ntrain, nval, dir);

    /* XDG_CACHE_HOME is honoured by the plain entry point */
    char xdg[300];
    snprintf(xdg, sizeof(xdg), "%s/xdg", g_tmp);
    mkdir(xdg, 0755);
    setenv("XDG_CACHE_HOME", xdg, 1);
    rc = synth_dataset_default(dir, sizeof(dir), err, sizeof(err));
    snprintf(sub, sizeof(sub), "%s/detr/synth-default-v2", xdg);
    CHECK("default: lives in $XDG_CACHE_HOME/detr/synth-default-v2", rc == 0 && !strcmp(dir, sub), "%s (%s)", dir, err);

    /* a race of two processes on an empty cache: both succeed, one complete dataset, no leftovers */
    char race[300];
    snprintf(race, sizeof(race), "%s/race", g_tmp);
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            char d[512], e[512];
            _exit(synth_dataset_default_in(race, d, sizeof(d), NULL, e, sizeof(e)) == 0 ? 0 : 1);
        }
    }
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        int status = 0;
        waitpid(pids[i], &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = 0;
    }
    snprintf(sub, sizeof(sub), "%s/synth-default-v2/train", race);
    int n = count_entries(sub, "0");
    CHECK("default: two racing processes both succeed, one complete dataset, no temporary folders",
          ok && n == 2048 && count_entries(race, ".") == 0, "ok %d, %d images, %d hidden entries", ok, n,
          count_entries(race, "."));

    /* a damaged default (annotation file deleted) is regenerated, never trusted */
    snprintf(sub, sizeof(sub), "%s/synth-default-v2/annotations/instances_val.json", root);
    remove(sub);
    rc = synth_dataset_default_in(root, dir, sizeof(dir), &generated, err, sizeof(err));
    struct stat s;
    CHECK("default: a damaged default is regenerated", rc == 0 && generated == 1 && stat(sub, &s) == 0,
          "rc %d generated %d", rc, generated);
}

static void test_jpeg_size(void) {
    SynthDatasetConfig c;
    synth_config_default(&c); /* 640x480, quality 90 */
    c.train_images = 24, c.val_images = 0, c.seed = 1;
    char dir[300], err[512];
    snprintf(dir, sizeof(dir), "%s/big", g_tmp);
    SynthStats st;
    int rc = synth_dataset_write(dir, &c, &st, err, sizeof(err));
    double mean = rc == 0 ? (double)st.jpeg_bytes / (double)st.images : 0;
    printf("     640x480 q90: mean JPEG %.0f bytes (%.1f KB) over %lld images, %.2f s (%.0f images/s)\n",
           mean, mean / 1000, (long long)st.images, st.seconds, (double)st.images / st.seconds);
    CHECK("photo-like: mean JPEG >= 60 KB at 640x480, quality 90", rc == 0 && mean >= 60000,
          "rc %d (%s), mean %.0f bytes", rc, rc ? err : "", mean);
    CHECK("photo-like: not absurdly large either (mean < 200 KB)", mean < 200000, "mean %.0f bytes", mean);
}

int main(void) {
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_synth_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_config();
    test_render_deterministic();
    test_exact_boxes();
    test_write_dataset();
    test_default();
    test_jpeg_size();
    rm_tree(g_tmp);
    return test_finish();
}
