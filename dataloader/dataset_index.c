/* dataset_index.c - the binary dataset index: one block of bytes, identical in memory and in
 * the cache file, so a cached open is an mmap plus validation.
 *
 * Layout (native endianness and struct layout, both recorded in the header and checked):
 *   IndexHeader                       magic, version, layout sizes, source key, counts, offsets
 *   DsImage   images[n_images]        8-byte aligned, in the JSON's order
 *   DsAnn     anns[n_anns]            8-byte aligned, grouped by image (JSON order within one)
 *   int32_t   category_ids[n_cats]
 *   char      names[names_len]        file names, NUL-separated
 *   char      abs_path[path_len]      the annotation file's absolute path, NUL-terminated
 * The checksum covers every byte but its own field. Padding bytes are zero, so the same input
 * always gives the same bytes. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "dataset_internal.h"

#define INDEX_MAGIC "DETRDSIX"
/* Bump when the layout or the meaning of a field changes: old caches are then rebuilt. */
#define INDEX_VERSION 1u
#define INDEX_ENDIAN 0x01020304u
#define KEY_SPAN (1u << 20) /* bytes hashed at each end of the annotation file */

typedef struct {
    char magic[8];
    uint32_t version, header_size;
    uint32_t image_size, ann_size;   /* sizeof(DsImage), sizeof(DsAnn) when written */
    uint32_t endian, reserved;
    uint64_t src_size;               /* the key: annotation file size, */
    int64_t src_mtime_ns;            /* mtime, */
    uint64_t src_hash;               /* and content hash (see ds_source_key) */
    int64_t n_images, n_anns, n_categories, num_classes;
    int64_t n_orphan_anns, n_unknown_category_anns;
    uint64_t images_off, anns_off, cats_off, names_off, names_len, path_off, path_len;
    uint64_t total_len;
    uint64_t checksum;               /* last field: ds_hash64 of everything else */
} IndexHeader;

_Static_assert(offsetof(IndexHeader, checksum) + sizeof(uint64_t) == sizeof(IndexHeader),
               "the checksum must be the header's last field");
_Static_assert(sizeof(IndexHeader) % 8 == 0, "sections after the header are 8-byte aligned");

/* ---------------------------------------------------------------- hashing */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint64_t fmix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Four independent lanes over 32-byte blocks (so the multiplies overlap: ~10 GB/s), each step
 * a bijection of the lane, so any change of one byte changes the result. */
uint64_t ds_hash64(const void *data, size_t len, uint64_t seed) {
    const uint64_t k1 = 0x9E3779B185EBCA87ull, k2 = 0xC2B2AE3D27D4EB4Full;
    const uint8_t *p = data;
    uint64_t l[4] = {seed + k1, seed ^ k2, seed - k1, seed + (k1 ^ k2)};
    size_t i = 0;
    for (; i + 32 <= len; i += 32)
        for (int j = 0; j < 4; j++) l[j] = rotl64(l[j] ^ (load64(p + i + 8 * j) * k1), 31) * k2;
    uint8_t tail[32] = {0};
    memcpy(tail, p + i, len - i);
    for (int j = 0; j < 4; j++) l[j] = rotl64(l[j] ^ (load64(tail + 8 * j) * k1), 31) * k2;
    uint64_t h = fmix64(l[3] ^ (uint64_t)len);
    h = fmix64(l[2] + h);
    h = fmix64(l[1] + h);
    return fmix64(l[0] + h);
}

/* Hash of every byte of an index but its checksum field (the header's last field). */
static uint64_t index_checksum(const uint8_t *blob, uint64_t len) {
    const size_t at = offsetof(IndexHeader, checksum), after = at + sizeof(uint64_t);
    uint64_t h = ds_hash64(blob, at, 0x646574722d696478ull);
    return ds_hash64(blob + after, (size_t)(len - after), h);
}

static int read_at(int fd, void *buf, size_t n, uint64_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        got += (size_t)k;
    }
    return 0;
}

int ds_source_key(const char *path, SourceKey *key, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        snprintf(err, errlen, "%s: cannot open the annotation file: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file (expected a COCO instances .json)", path);
        close(fd);
        return -1;
    }
    key->size = (uint64_t)st.st_size;
    key->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    uint8_t *buf = malloc(KEY_SPAN);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        close(fd);
        return -1;
    }
    uint64_t head = key->size < KEY_SPAN ? key->size : KEY_SPAN;
    uint64_t tail = key->size - head < KEY_SPAN ? key->size - head : KEY_SPAN;
    uint64_t h = key->size;
    int rc = read_at(fd, buf, (size_t)head, 0);
    if (!rc) h = ds_hash64(buf, (size_t)head, h);
    if (!rc && tail) rc = read_at(fd, buf, (size_t)tail, key->size - tail);
    if (!rc && tail) h = ds_hash64(buf, (size_t)tail, h);
    key->content_hash = h;
    if (rc) snprintf(err, errlen, "%s: read error: %s", path, errno ? strerror(errno) : "file shrank");
    free(buf);
    close(fd);
    return rc;
}

/* ---------------------------------------------------------------- building */

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

/* Open-addressing map from image id to its position in "images". */
typedef struct {
    int64_t *keys;
    int32_t *vals; /* position + 1; 0 = empty */
    uint64_t mask;
} IdMap;

static inline uint64_t id_hash(int64_t id) { return fmix64((uint64_t)id * 0x9E3779B97F4A7C15ull); }

static int idmap_init(IdMap *m, int64_t n) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) cap *= 2;
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = calloc(cap, sizeof *m->vals);
    m->mask = cap - 1;
    return m->keys && m->vals ? 0 : -1;
}

static void idmap_free(IdMap *m) {
    free(m->keys);
    free(m->vals);
}

/* Inserts id -> pos; returns -1 (inserted) or the position already holding id. */
static int32_t idmap_insert(IdMap *m, int64_t id, int32_t pos) {
    for (uint64_t h = id_hash(id) & m->mask;; h = (h + 1) & m->mask) {
        if (!m->vals[h]) {
            m->keys[h] = id;
            m->vals[h] = pos + 1;
            return -1;
        }
        if (m->keys[h] == id) return m->vals[h] - 1;
    }
}

static int32_t idmap_find(const IdMap *m, int64_t id) {
    for (uint64_t h = id_hash(id) & m->mask;; h = (h + 1) & m->mask) {
        if (!m->vals[h]) return -1;
        if (m->keys[h] == id) return m->vals[h] - 1;
    }
}

static int bsearch_i32(const int32_t *sorted, int64_t n, int32_t v) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && sorted[lo] == v;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Annotations whose category is not in "categories" (none when the file has no categories:
 * then the annotations define the classes). */
static int64_t count_unknown_categories(const CocoJson *cj, int64_t *first_bad) {
    *first_bad = -1;
    if (!cj->n_categories) return 0;
    int32_t *sorted = malloc((size_t)cj->n_categories * sizeof *sorted);
    if (!sorted) return 0;
    memcpy(sorted, cj->category_ids, (size_t)cj->n_categories * sizeof *sorted);
    qsort(sorted, (size_t)cj->n_categories, sizeof *sorted, cmp_i32);
    int64_t n = 0;
    for (int64_t a = 0; a < cj->n_anns; a++)
        if (!bsearch_i32(sorted, cj->n_categories, cj->anns[a].category)) {
            if (*first_bad < 0) *first_bad = a;
            n++;
        }
    free(sorted);
    return n;
}

int ds_index_build(const CocoJson *cj, const char *ann_path, const char *abs_path,
                   const SourceKey *key, Dataset *ds, char *err, size_t errlen) {
    if (cj->n_images > INT32_MAX - 1 || cj->n_anns > (int64_t)UINT32_MAX) {
        snprintf(err, errlen, "%s: too many images (%" PRId64 ") or annotations (%" PRId64 ") for the index",
                 ann_path, cj->n_images, cj->n_anns);
        return -1;
    }
    IdMap map;
    uint32_t *fill = calloc((size_t)cj->n_images + 1, sizeof *fill);
    int32_t *ann_img = malloc(((size_t)cj->n_anns + 1) * sizeof *ann_img); /* image position of each annotation */
    if (idmap_init(&map, cj->n_images) || !fill || !ann_img) {
        snprintf(err, errlen, "%s: out of memory building the index", ann_path);
        idmap_free(&map), free(fill), free(ann_img);
        return -1;
    }
    int rc = -1;
    uint8_t *blob = NULL;
    uint64_t names_len = 0;
    for (int64_t i = 0; i < cj->n_images; i++) {
        int32_t prev = idmap_insert(&map, cj->images[i].id, (int32_t)i);
        if (prev >= 0) {
            snprintf(err, errlen, "%s: duplicate image id %" PRId64 ": images[%d] and images[%" PRId64
                     "] (\"%s\" and \"%s\"); image ids must be unique (run `detr-data check` to list all problems)",
                     ann_path, cj->images[i].id, prev, i, cj->names + cj->images[prev].name_off,
                     cj->names + cj->images[i].name_off);
            goto done;
        }
        names_len += strlen(cj->names + cj->images[i].name_off) + 1;
    }
    if (names_len > UINT32_MAX) {
        snprintf(err, errlen, "%s: file names too long for the index (%" PRIu64 " bytes)", ann_path, names_len);
        goto done;
    }
    int64_t n_kept = 0, orphans = 0, first_orphan = -1;
    for (int64_t a = 0; a < cj->n_anns; a++) {
        ann_img[a] = idmap_find(&map, cj->anns[a].image_id);
        if (ann_img[a] < 0) {
            if (first_orphan < 0) first_orphan = a;
            orphans++;
            continue;
        }
        fill[ann_img[a]]++;
        n_kept++;
    }
    int64_t first_unknown_cat;
    int64_t unknown_cats = count_unknown_categories(cj, &first_unknown_cat);
    int32_t max_cat = -1;
    for (int64_t k = 0; k < cj->n_categories; k++)
        if (cj->category_ids[k] > max_cat) max_cat = cj->category_ids[k];
    for (int64_t a = 0; a < cj->n_anns; a++)
        if (ann_img[a] >= 0 && cj->anns[a].category > max_cat) max_cat = cj->anns[a].category;

    size_t path_len = strlen(abs_path) + 1;
    IndexHeader h = {0};
    memcpy(h.magic, INDEX_MAGIC, 8);
    h.version = INDEX_VERSION;
    h.header_size = sizeof(IndexHeader);
    h.image_size = sizeof(DsImage);
    h.ann_size = sizeof(DsAnn);
    h.endian = INDEX_ENDIAN;
    h.src_size = key->size;
    h.src_mtime_ns = key->mtime_ns;
    h.src_hash = key->content_hash;
    h.n_images = cj->n_images;
    h.n_anns = n_kept;
    h.n_categories = cj->n_categories;
    h.num_classes = (int64_t)max_cat + 1;
    h.n_orphan_anns = orphans;
    h.n_unknown_category_anns = unknown_cats;
    h.images_off = align8(sizeof(IndexHeader));
    h.anns_off = align8(h.images_off + (uint64_t)h.n_images * sizeof(DsImage));
    h.cats_off = align8(h.anns_off + (uint64_t)h.n_anns * sizeof(DsAnn));
    h.names_off = align8(h.cats_off + (uint64_t)h.n_categories * sizeof(int32_t));
    h.names_len = names_len;
    h.path_off = h.names_off + names_len;
    h.path_len = path_len;
    h.total_len = align8(h.path_off + path_len);
    blob = calloc(1, (size_t)h.total_len); /* zeroed: padding bytes are deterministic */
    if (!blob) {
        snprintf(err, errlen, "%s: out of memory for the index (%" PRIu64 " bytes)", ann_path, h.total_len);
        goto done;
    }
    DsImage *imgs = (DsImage *)(blob + h.images_off);
    DsAnn *anns = (DsAnn *)(blob + h.anns_off);
    char *names = (char *)(blob + h.names_off);
    uint64_t name_pos = 0;
    uint32_t first = 0;
    for (int64_t i = 0; i < cj->n_images; i++) {
        const CocoImage *src = &cj->images[i];
        const char *nm = cj->names + src->name_off;
        size_t nl = strlen(nm) + 1;
        imgs[i].id = src->id;
        imgs[i].file_off = (uint32_t)name_pos;
        imgs[i].width = src->width;
        imgs[i].height = src->height;
        imgs[i].first_ann = first;
        imgs[i].n_ann = fill[i];
        memcpy(names + name_pos, nm, nl);
        name_pos += nl;
        first += fill[i];
        fill[i] = imgs[i].first_ann; /* now the next free slot of image i */
    }
    for (int64_t a = 0; a < cj->n_anns; a++) {
        if (ann_img[a] < 0) continue;
        const CocoAnn *src = &cj->anns[a];
        DsAnn *dst = &anns[fill[ann_img[a]]++];
        memcpy(dst->bbox, src->bbox, sizeof dst->bbox);
        dst->category = src->category;
        dst->iscrowd = src->iscrowd;
        dst->id = src->id;
    }
    if (h.n_categories)
        memcpy(blob + h.cats_off, cj->category_ids, (size_t)h.n_categories * sizeof(int32_t));
    memcpy(blob + h.path_off, abs_path, path_len);
    memcpy(blob, &h, sizeof h);
    ((IndexHeader *)blob)->checksum = index_checksum(blob, h.total_len);
    char reason[256];
    if (ds_index_attach(blob, (size_t)h.total_len, ds, reason, sizeof reason)) {
        snprintf(err, errlen, "%s: internal error: the index just built is invalid (%s)", ann_path, reason);
        goto done;
    }
    ds->from_cache = 0;
    blob = NULL; /* owned by ds now */
    if (orphans)
        fprintf(stderr, "warning: %s: %" PRId64 " annotation(s) refer to image ids not in \"images\" "
                "(first: annotations[%" PRId64 "] with image_id %" PRId64 "); skipped\n",
                ann_path, orphans, first_orphan, cj->anns[first_orphan].image_id);
    if (unknown_cats)
        fprintf(stderr, "warning: %s: %" PRId64 " annotation(s) use category ids not in \"categories\" "
                "(first: annotations[%" PRId64 "] with category_id %d); kept with their ids\n",
                ann_path, unknown_cats, first_unknown_cat, cj->anns[first_unknown_cat].category);
    rc = 0;
done:
    free(blob);
    idmap_free(&map);
    free(fill);
    free(ann_img);
    return rc;
}

/* ---------------------------------------------------------------- validation */

static int bad(char *reason, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *reason, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, len, fmt, ap);
    va_end(ap);
    return -1;
}

/* [off, off + count * size) lies inside [header_size, len) and off is aligned. */
static int section_ok(uint64_t off, int64_t count, uint64_t size, uint64_t align, uint64_t len) {
    if (count < 0 || off < sizeof(IndexHeader) || off > len || off % align) return 0;
    return (uint64_t)count <= (len - off) / size;
}

static int header_ok(const void *blob, size_t len, char *reason, size_t rlen) {
    if (len < sizeof(IndexHeader)) return bad(reason, rlen, "shorter than its header (%zu bytes)", len);
    const IndexHeader *h = blob;
    if (memcmp(h->magic, INDEX_MAGIC, 8)) return bad(reason, rlen, "bad magic");
    if (h->version != INDEX_VERSION)
        return bad(reason, rlen, "version %u, this build reads version %u", h->version, INDEX_VERSION);
    if (h->header_size != sizeof(IndexHeader) || h->image_size != sizeof(DsImage) ||
        h->ann_size != sizeof(DsAnn) || h->endian != INDEX_ENDIAN)
        return bad(reason, rlen, "written by a build with another struct layout or endianness");
    if (h->total_len != len)
        return bad(reason, rlen, "length %zu, header says %" PRIu64 " (truncated?)", len, h->total_len);
    return 0;
}

int ds_index_attach(void *blob, size_t len, Dataset *ds, char *reason, size_t rlen) {
    if (header_ok(blob, len, reason, rlen)) return -1;
    const IndexHeader *h = blob;
    const uint8_t *b = blob;
    if (!section_ok(h->images_off, h->n_images, sizeof(DsImage), 8, len) ||
        !section_ok(h->anns_off, h->n_anns, sizeof(DsAnn), 8, len) ||
        !section_ok(h->cats_off, h->n_categories, sizeof(int32_t), 4, len) ||
        !section_ok(h->names_off, (int64_t)h->names_len, 1, 1, len) ||
        !section_ok(h->path_off, (int64_t)h->path_len, 1, 1, len) ||
        h->names_len > INT64_MAX || h->path_len > INT64_MAX || h->path_len < 1)
        return bad(reason, rlen, "a section lies outside the file");
    if (h->n_images > INT32_MAX - 1 || h->n_anns > (int64_t)UINT32_MAX ||
        h->n_categories > INT32_MAX || h->num_classes < 0 || h->num_classes > INT32_MAX ||
        h->names_len > UINT32_MAX || h->n_orphan_anns < 0 || h->n_unknown_category_anns < 0)
        return bad(reason, rlen, "counts out of range");
    if (index_checksum(b, len) != h->checksum) return bad(reason, rlen, "checksum mismatch (corrupt)");
    const char *names = (const char *)b + h->names_off;
    const char *path = (const char *)b + h->path_off;
    if ((h->names_len && names[h->names_len - 1]) || (!h->names_len && h->n_images) ||
        memchr(path, 0, (size_t)h->path_len) != path + h->path_len - 1)
        return bad(reason, rlen, "strings not NUL-terminated");
    const DsImage *imgs = (const DsImage *)(b + h->images_off);
    const DsAnn *anns = (const DsAnn *)(b + h->anns_off);
    const int32_t *cats = (const int32_t *)(b + h->cats_off);
    uint64_t next = 0;
    for (int64_t i = 0; i < h->n_images; i++) {
        if (imgs[i].file_off >= h->names_len || imgs[i].first_ann != next ||
            imgs[i].n_ann > (uint64_t)h->n_anns - next)
            return bad(reason, rlen, "image %" PRId64 " has out-of-range offsets", i);
        next += imgs[i].n_ann;
    }
    if (next != (uint64_t)h->n_anns) return bad(reason, rlen, "annotation counts do not add up");
    for (int64_t a = 0; a < h->n_anns; a++)
        if (anns[a].category >= h->num_classes)
            return bad(reason, rlen, "annotation %" PRId64 " has category >= num_classes", a);
    for (int64_t k = 0; k < h->n_categories; k++)
        if (cats[k] < 0 || cats[k] >= h->num_classes)
            return bad(reason, rlen, "category %" PRId64 " out of range", k);

    ds->images = (DsImage *)(b + h->images_off);
    ds->n_images = h->n_images;
    ds->anns = (DsAnn *)(b + h->anns_off);
    ds->n_anns = h->n_anns;
    ds->names = (char *)(b + h->names_off);
    ds->category_ids = (int32_t *)(b + h->cats_off);
    ds->n_categories = (int)h->n_categories;
    ds->num_classes = (int)h->num_classes;
    ds->n_orphan_anns = h->n_orphan_anns;
    ds->n_unknown_category_anns = h->n_unknown_category_anns;
    ds->mapping = blob;
    ds->mapping_len = len;
    return 0;
}

int ds_index_load(const char *path, const char *abs_path, const SourceKey *key, Dataset *ds,
                  char *reason, size_t rlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        bad(reason, rlen, "no cache file");
        return 0;
    }
    struct stat st;
    void *map = MAP_FAILED;
    size_t len = 0;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        bad(reason, rlen, "cache file is not a regular file");
    } else if (st.st_size < (off_t)sizeof(IndexHeader)) {
        bad(reason, rlen, "cache file truncated (%lld bytes)", (long long)st.st_size);
    } else {
        len = (size_t)st.st_size;
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
        if (map == MAP_FAILED) bad(reason, rlen, "mmap failed: %s", strerror(errno));
    }
    close(fd);
    if (map == MAP_FAILED) return 0;
    const IndexHeader *h = map;
    int ok = 0;
    if (header_ok(map, len, reason, rlen)) {
        /* reason set */
    } else if (h->src_size != key->size || h->src_mtime_ns != key->mtime_ns ||
               h->src_hash != key->content_hash) {
        bad(reason, rlen, "stale: the annotation file changed (size, mtime or content)");
    } else if (ds_index_attach(map, len, ds, reason, rlen) == 0) {
        if (strcmp((const char *)map + h->path_off, abs_path))
            bad(reason, rlen, "written for another annotation file (%s)", (const char *)map + h->path_off);
        else
            ok = 1;
    }
    if (!ok) {
        munmap(map, len);
        Dataset zero = {0};
        zero.ann_path = ds->ann_path;
        zero.images_dir = ds->images_dir;
        *ds = zero;
        return 0;
    }
    ds->from_cache = 1;
    return 1;
}

/* ---------------------------------------------------------------- writing */

int ds_index_write(const Dataset *ds, const char *path, char *err, size_t errlen) {
    char tmp[4200];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%ld", path, (long)getpid(), (long)ts.tv_nsec) >=
        (int)sizeof tmp) {
        snprintf(err, errlen, "cache path too long: %s", path);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    const uint8_t *p = ds->mapping;
    size_t left = ds->mapping_len;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            snprintf(err, errlen, "cannot write %s: %s", tmp, n < 0 ? strerror(errno) : "disk full?");
            close(fd);
            unlink(tmp);
            return -1;
        }
        p += n;
        left -= (size_t)n;
    }
    /* No fsync: a file torn by a crash fails the checksum and is rebuilt. */
    if (close(fd) || rename(tmp, path)) {
        snprintf(err, errlen, "cannot move %s into place: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}
