/* safetensors.c - safetensors reader (validating) and atomic writer. See safetensors.h. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

#define META_KEY "__metadata__"

static const struct {
    const char *name;
    size_t size;
} DTYPES[ST_NDTYPE] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2},  [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *st_dtype_name(StDtype dt) { return (unsigned)dt < ST_NDTYPE ? DTYPES[dt].name : "?"; }
size_t st_dtype_size(StDtype dt) { return (unsigned)dt < ST_NDTYPE ? DTYPES[dt].size : 0; }

int st_dtype_from_name(const char *name, StDtype *out) {
    for (int i = 0; i < ST_NDTYPE; i++)
        if (name && strcmp(name, DTYPES[i].name) == 0) {
            *out = (StDtype)i;
            return 0;
        }
    return -1;
}

/* numel * itemsize with overflow detection; returns 0 on success. */
static int tensor_bytes(int ndim, const int64_t *shape, StDtype dt, size_t *out) {
    size_t n = st_dtype_size(dt);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (__builtin_mul_overflow(n, (size_t)shape[i], &n)) return -1;
    }
    *out = n;
    return 0;
}

size_t st_numel(const StTensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

/* ------------------------------------------------------------------------------------------------
 * Reader
 * ---------------------------------------------------------------------------------------------- */

static void free_parsed(StFile *f) {
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    f->tensors = NULL;
    f->meta_keys = f->meta_vals = NULL;
    f->n = f->n_meta = 0;
}

void st_close(StFile *f) {
    if (!f) return;
    free_parsed(f);
    if (f->map_or_buf) {
        if (f->mapped)
            munmap(f->map_or_buf, f->file_len);
        else
            free(f->map_or_buf);
    }
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* Maps the whole file (or reads it when mmap is not possible). */
static int load_file(const char *path, StFile *f, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open (%s): check the path", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: not a regular file: pass the path of a .safetensors file", path);
        close(fd);
        return -1;
    }
    f->file_len = (size_t)st.st_size;
    if (f->file_len < 8) {
        set_err(err, errlen,
                "%s: file is %zu bytes, shorter than the 8-byte header length: the file is truncated "
                "or not safetensors (re-export or re-download it)",
                path, f->file_len);
        close(fd);
        return -1;
    }
    void *m = mmap(NULL, f->file_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m != MAP_FAILED) {
        f->map_or_buf = m;
        f->mapped = 1;
        close(fd);
        return 0;
    }
    uint8_t *buf = malloc(f->file_len);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory reading %zu bytes", path, f->file_len);
        close(fd);
        return -1;
    }
    size_t got = 0;
    while (got < f->file_len) {
        ssize_t r = read(fd, buf + got, f->file_len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            set_err(err, errlen, "%s: read failed after %zu of %zu bytes (%s)", path, got, f->file_len,
                    r < 0 ? strerror(errno) : "unexpected end of file");
            free(buf);
            close(fd);
            return -1;
        }
        got += (size_t)r;
    }
    close(fd);
    f->map_or_buf = buf;
    f->mapped = 0;
    return 0;
}

/* Reads a JSON integer into v; 0 on success, -1 if j is not an integer. */
static int json_get_int(const json_t *j, int64_t *v) {
    if (!json_is_integer(j)) return -1;
    *v = (int64_t)json_integer_value(j);
    return 0;
}

static int parse_metadata(const char *path, json_t *meta, StFile *f, char *err, size_t errlen) {
    if (!json_is_object(meta)) {
        set_err(err, errlen, "%s: header field \"%s\" must be an object of strings", path, META_KEY);
        return -1;
    }
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof(char *));
    f->meta_vals = calloc(n ? n : 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val)) {
            set_err(err, errlen, "%s: metadata \"%s\" is not a string (safetensors metadata values must be strings)",
                    path, key);
            return -1;
        }
        f->meta_keys[f->n_meta] = strdup(key);
        f->meta_vals[f->n_meta] = strdup(json_string_value(val));
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_vals[f->n_meta - 1]) {
            set_err(err, errlen, "%s: out of memory", path);
            return -1;
        }
    }
    return 0;
}

static int parse_shape(const char *path, const char *name, json_t *js, StTensor *t, char *err, size_t errlen) {
    if (!json_is_array(js)) {
        set_err(err, errlen, "%s: tensor '%s': \"shape\" is missing or not a list of integers", path, name);
        return -1;
    }
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS) {
        set_err(err, errlen, "%s: tensor '%s': shape has %zu dims, at most %d supported", path, name, nd, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        int64_t d;
        if (json_get_int(json_array_get(js, i), &d) != 0 || d < 0) {
            set_err(err, errlen, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path, name, i);
            return -1;
        }
        t->shape[i] = d;
    }
    return 0;
}

static int parse_offsets(const char *path, const char *name, json_t *jo, size_t data_len, StTensor *t,
                         char *err, size_t errlen) {
    int64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || json_get_int(json_array_get(jo, 0), &b) != 0 ||
        json_get_int(json_array_get(jo, 1), &e) != 0) {
        set_err(err, errlen, "%s: tensor '%s': \"data_offsets\" must be a list of two integers [begin, end]",
                path, name);
        return -1;
    }
    if (b < 0 || e < b) {
        set_err(err, errlen, "%s: tensor '%s': data_offsets [%lld, %lld] are invalid (need 0 <= begin <= end)",
                path, name, (long long)b, (long long)e);
        return -1;
    }
    if ((uint64_t)e > data_len) {
        set_err(err, errlen,
                "%s: tensor '%s': data_offsets end %lld is past the data buffer (%zu bytes): the file is "
                "truncated or corrupt",
                path, name, (long long)e, data_len);
        return -1;
    }
    t->begin = (size_t)b;
    t->end = (size_t)e;
    size_t want;
    if (tensor_bytes(t->ndim, t->shape, t->dtype, &want) != 0) {
        set_err(err, errlen, "%s: tensor '%s': shape is too large (its byte size overflows)", path, name);
        return -1;
    }
    if (want != t->end - t->begin) {
        set_err(err, errlen,
                "%s: tensor '%s': data_offsets cover %zu bytes but its shape and %s need %zu bytes: the header is "
                "corrupt",
                path, name, t->end - t->begin, st_dtype_name(t->dtype), want);
        return -1;
    }
    return 0;
}

static int parse_tensor(const char *path, const char *name, json_t *entry, size_t data_len, StTensor *t,
                        char *err, size_t errlen) {
    if (!json_is_object(entry)) {
        set_err(err, errlen, "%s: tensor '%s': entry is not an object {dtype, shape, data_offsets}", path, name);
        return -1;
    }
    json_t *jd = json_object_get(entry, "dtype");
    if (!json_is_string(jd)) {
        set_err(err, errlen, "%s: tensor '%s': \"dtype\" is missing or not a string", path, name);
        return -1;
    }
    if (st_dtype_from_name(json_string_value(jd), &t->dtype) != 0) {
        set_err(err, errlen,
                "%s: tensor '%s': unsupported dtype \"%s\" (supported: F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL); "
                "convert the tensor before saving",
                path, name, json_string_value(jd));
        return -1;
    }
    if (parse_shape(path, name, json_object_get(entry, "shape"), t, err, errlen) != 0) return -1;
    return parse_offsets(path, name, json_object_get(entry, "data_offsets"), data_len, t, err, errlen);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

/* qsort_r comparator over indices into the tensor array ctx, by (begin, end). */
static int cmp_tensor_offset(const void *a, const void *b, void *ctx) {
    const StTensor *ts = ctx;
    const StTensor *x = &ts[*(const int *)a], *y = &ts[*(const int *)b];
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* The tensors must tile the data buffer: no overlap, no gap, nothing after the last one. */
static int check_layout(const char *path, const StFile *f, char *err, size_t errlen) {
    int *order = malloc(sizeof(int) * (size_t)(f->n ? f->n : 1));
    if (!order) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    for (int i = 0; i < f->n; i++) order[i] = i;
    qsort_r(order, (size_t)f->n, sizeof(int), cmp_tensor_offset, f->tensors);
    size_t expect = 0;
    const StTensor *prev = NULL;
    int rc = 0;
    for (int k = 0; k < f->n && rc == 0; k++) {
        const StTensor *t = &f->tensors[order[k]];
        if (t->begin < expect) {
            set_err(err, errlen, "%s: tensors '%s' and '%s' overlap in the data buffer (bytes %zu..%zu)", path,
                    prev->name, t->name, t->begin, expect);
            rc = -1;
        } else if (t->begin > expect) {
            set_err(err, errlen, "%s: %zu unused bytes before tensor '%s' in the data buffer: the header is corrupt",
                    path, t->begin - expect, t->name);
            rc = -1;
        }
        expect = t->end;
        prev = t;
    }
    if (rc == 0 && expect != f->data_len) {
        set_err(err, errlen,
                "%s: the tensors cover %zu bytes but the data buffer has %zu: the file has trailing bytes or a "
                "corrupt header",
                path, expect, f->data_len);
        rc = -1;
    }
    free(order);
    return rc;
}

static int parse_header(const char *path, json_t *root, StFile *f, char *err, size_t errlen) {
    size_t n_entries = json_object_size(root);
    f->tensors = calloc(n_entries ? n_entries : 1, sizeof(StTensor));
    if (!f->tensors) {
        set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, META_KEY) == 0) {
            if (parse_metadata(path, val, f, err, errlen) != 0) return -1;
            continue;
        }
        StTensor *t = &f->tensors[f->n];
        if (parse_tensor(path, key, val, f->data_len, t, err, errlen) != 0) return -1;
        t->name = strdup(key);
        if (!t->name) {
            set_err(err, errlen, "%s: out of memory", path);
            return -1;
        }
        f->n++;
    }
    qsort(f->tensors, (size_t)f->n, sizeof(StTensor), cmp_tensor_name);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            set_err(err, errlen, "%s: tensor name '%s' appears twice in the header", path, f->tensors[i].name);
            return -1;
        }
    return check_layout(path, f, err, errlen);
}

int st_open(const char *path, StFile *f, char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (!f) return -1;
    memset(f, 0, sizeof *f);
    if (!path) {
        set_err(err, errlen, "st_open: no path given");
        return -1;
    }
    if (load_file(path, f, err, errlen) != 0) {
        memset(f, 0, sizeof *f);
        return -1;
    }
    const uint8_t *bytes = f->map_or_buf;
    uint64_t hlen;
    memcpy(&hlen, bytes, 8);
    if (hlen > ST_MAX_HEADER_BYTES) {
        set_err(err, errlen,
                "%s: header length %llu is absurd (limit %llu bytes): not a safetensors file, or a corrupt one",
                path, (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
        st_close(f);
        return -1;
    }
    if (hlen > f->file_len - 8) {
        set_err(err, errlen, "%s: header length %llu exceeds the file (%zu bytes): the file is truncated", path,
                (unsigned long long)hlen, f->file_len);
        st_close(f);
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            set_err(err, errlen, "%s: header lists a name twice (%s)", path, jerr.text);
        else
            set_err(err, errlen, "%s: header is not valid JSON (byte %d: %s): the file is corrupt", path,
                    jerr.position, jerr.text);
        st_close(f);
        return -1;
    }
    if (!json_is_object(root)) {
        set_err(err, errlen, "%s: header is JSON but not an object {name: {dtype, shape, data_offsets}}", path);
        json_decref(root);
        st_close(f);
        return -1;
    }
    f->data = bytes + 8 + hlen;
    f->data_len = f->file_len - 8 - (size_t)hlen;
    int rc = parse_header(path, root, f, err, errlen);
    json_decref(root);
    if (rc == 0) {
        f->path = strdup(path);
        if (!f->path) {
            set_err(err, errlen, "%s: out of memory", path);
            rc = -1;
        }
    }
    if (rc != 0) st_close(f);
    return rc;
}

const StTensor *st_find(const StFile *f, const char *name) {
    if (!f || !name || f->n == 0) return NULL;
    StTensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n, sizeof(StTensor), cmp_tensor_name);
}

const char *st_meta(const StFile *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

const void *st_data(const StFile *f, const StTensor *t) { return f->data + t->begin; }

/* IEEE half -> float, subnormals, infinities and NaN included. */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0) {
        float v = ldexpf((float)mant, -24); /* zero or subnormal */
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* Element i of a little-endian buffer (possibly unaligned) as float. */
static float element_f32(const uint8_t *p, StDtype dt, size_t i) {
    switch (dt) {
    case ST_F32: { float v; memcpy(&v, p + 4 * i, 4); return v; }
    case ST_F16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return half_to_float(v); }
    case ST_BF16: {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        uint32_t bits = (uint32_t)v << 16;
        float out;
        memcpy(&out, &bits, 4);
        return out;
    }
    case ST_F64: { double v; memcpy(&v, p + 8 * i, 8); return (float)v; }
    case ST_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); return (float)v; }
    case ST_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); return (float)v; }
    case ST_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); return (float)v; }
    case ST_I8: return (float)(int8_t)p[i];
    case ST_U8: return (float)p[i];
    case ST_BOOL: return p[i] ? 1.0f : 0.0f;
    default: return 0.0f;
    }
}

int st_read_f32(const StFile *f, const StTensor *t, float *dst, char *err, size_t errlen) {
    size_t want;
    if ((unsigned)t->dtype >= ST_NDTYPE || t->ndim < 0 || t->ndim > ST_MAX_DIMS ||
        tensor_bytes(t->ndim, t->shape, t->dtype, &want) != 0 || t->begin > t->end || t->end > f->data_len ||
        t->end - t->begin != want) {
        set_err(err, errlen, "%s: tensor '%s': descriptor does not match the data buffer", f->path ? f->path : "?",
                t->name ? t->name : "?");
        return -1;
    }
    size_t n = st_numel(t);
    const uint8_t *p = f->data + t->begin;
    if (t->dtype == ST_F32) {
        if (n) memcpy(dst, p, n * 4);
        return 0;
    }
    for (size_t i = 0; i < n; i++) dst[i] = element_f32(p, t->dtype, i);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * Writer
 * ---------------------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* borrowed, or == owned */
    void *owned;
    size_t nbytes;
} WEntry;

struct StWriter {
    WEntry *e;
    int n, cap;
    char **mkeys, **mvals;
    int n_meta, cap_meta;
    char error[512]; /* first mistake made in an add call; reported by st_writer_save */
};

StWriter *st_writer_new(void) { return calloc(1, sizeof(StWriter)); }

/* Records the first mistake; returns NULL so that writer_push can `return writer_fail(...)`. */
static void *writer_fail(StWriter *w, const char *fmt, ...) {
    if (w->error[0]) return NULL; /* keep the first */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof w->error, fmt, ap);
    va_end(ap);
    return NULL;
}

static int grow(void **arr, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *p = realloc(*arr, (size_t)nc * elem);
    if (!p) return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

/* Validates and appends an entry; returns it, or NULL after recording the mistake. */
static WEntry *writer_push(StWriter *w, const char *name, StDtype dt, int ndim, const int64_t *shape,
                           const void *data) {
    if (!name || !name[0]) return writer_fail(w, "a tensor has an empty name");
    if (strcmp(name, META_KEY) == 0) return writer_fail(w, "'%s' cannot be a tensor name", META_KEY);
    if ((unsigned)dt >= ST_NDTYPE) return writer_fail(w, "tensor '%s': invalid dtype %d", name, (int)dt);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape))
        return writer_fail(w, "tensor '%s': %d dims (0..%d supported)", name, ndim, ST_MAX_DIMS);
    size_t nbytes;
    if (tensor_bytes(ndim, shape, dt, &nbytes) != 0)
        return writer_fail(w, "tensor '%s': negative dim or size overflow in its shape", name);
    if (nbytes > 0 && !data) return writer_fail(w, "tensor '%s': data is NULL", name);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->e[i].name, name) == 0) return writer_fail(w, "tensor '%s' added twice", name);
    if (grow((void **)&w->e, &w->cap, w->n + 1, sizeof(WEntry)) != 0)
        return writer_fail(w, "out of memory adding tensor '%s'", name);
    WEntry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return writer_fail(w, "out of memory adding tensor '%s'", name);
    e->dtype = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
    e->nbytes = nbytes;
    w->n++;
    return e;
}

void st_writer_add(StWriter *w, const char *name, StDtype dt, int ndim, const int64_t *shape, const void *data) {
    if (w) writer_push(w, name, dt, ndim, shape, data);
}

void st_writer_add_copy(StWriter *w, const char *name, StDtype dt, int ndim, const int64_t *shape,
                        const void *data) {
    if (!w) return;
    WEntry *e = writer_push(w, name, dt, ndim, shape, data);
    if (!e || e->nbytes == 0) return;
    e->owned = malloc(e->nbytes);
    if (!e->owned) {
        writer_fail(w, "out of memory copying tensor '%s' (%zu bytes)", name, e->nbytes);
        e->data = NULL;
        return;
    }
    memcpy(e->owned, data, e->nbytes);
    e->data = e->owned;
}

void st_writer_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape, const float *data) {
    st_writer_add(w, name, ST_F32, ndim, shape, data);
}

void st_writer_add_scalar(StWriter *w, const char *name, float v) {
    st_writer_add_copy(w, name, ST_F32, 0, NULL, &v);
}

void st_writer_meta(StWriter *w, const char *key, const char *value) {
    if (!w) return;
    if (!key || !value) {
        writer_fail(w, "metadata key or value is NULL");
        return;
    }
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->mkeys[i], key) == 0) { /* a later value replaces an earlier one */
            char *v = strdup(value);
            if (!v) {
                writer_fail(w, "out of memory in metadata '%s'", key);
                return;
            }
            free(w->mvals[i]);
            w->mvals[i] = v;
            return;
        }
    int cap = w->cap_meta;
    if (grow((void **)&w->mkeys, &cap, w->n_meta + 1, sizeof(char *)) != 0 ||
        grow((void **)&w->mvals, &w->cap_meta, w->n_meta + 1, sizeof(char *)) != 0) {
        writer_fail(w, "out of memory in metadata '%s'", key);
        return;
    }
    w->mkeys[w->n_meta] = strdup(key);
    w->mvals[w->n_meta] = strdup(value);
    w->n_meta++;
    if (!w->mkeys[w->n_meta - 1] || !w->mvals[w->n_meta - 1]) writer_fail(w, "out of memory in metadata '%s'", key);
}

void st_writer_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].owned);
    }
    free(w->e);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->mkeys[i]);
        free(w->mvals[i]);
    }
    free(w->mkeys);
    free(w->mvals);
    free(w);
}

/* qsort_r comparator over indices into the entry array ctx: element size descending, then name. */
static int cmp_entry_layout(const void *a, const void *b, void *ctx) {
    const WEntry *es = ctx;
    const WEntry *x = &es[*(const int *)a], *y = &es[*(const int *)b];
    size_t sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Order of the tensors in the file: element size descending, then name. */
static int *writer_order(const StWriter *w) {
    int *order = malloc(sizeof(int) * (size_t)(w->n ? w->n : 1));
    if (!order) return NULL;
    for (int i = 0; i < w->n; i++) order[i] = i;
    qsort_r(order, (size_t)w->n, sizeof(int), cmp_entry_layout, w->e);
    return order;
}

/* The JSON header (without padding) for the given order; NULL on failure (message in msg). */
static char *writer_header(const StWriter *w, const int *order, char *msg, size_t msglen) {
    json_t *root = json_object();
    int ok = root != NULL;
    if (ok && w->n_meta > 0) {
        json_t *meta = json_object();
        ok = meta && json_object_set_new(root, META_KEY, meta) == 0;
        for (int i = 0; ok && i < w->n_meta; i++)
            if (json_object_set_new(meta, w->mkeys[i], json_string(w->mvals[i])) != 0) {
                snprintf(msg, msglen, "metadata '%s' is not valid UTF-8", w->mkeys[i]);
                ok = 0;
            }
    }
    size_t offset = 0;
    for (int k = 0; ok && k < w->n; k++) {
        const WEntry *e = &w->e[order[k]];
        json_t *shape = json_array(), *offs = json_array(), *ent = json_object();
        int good = shape && offs && ent;
        for (int d = 0; good && d < e->ndim; d++) good = json_array_append_new(shape, json_integer(e->shape[d])) == 0;
        good = good && json_array_append_new(offs, json_integer((json_int_t)offset)) == 0 &&
               json_array_append_new(offs, json_integer((json_int_t)(offset + e->nbytes))) == 0 &&
               json_object_set_new(ent, "dtype", json_string(st_dtype_name(e->dtype))) == 0 &&
               json_object_set(ent, "shape", shape) == 0 && json_object_set(ent, "data_offsets", offs) == 0;
        json_decref(shape);
        json_decref(offs);
        if (good && json_object_set_new(root, e->name, ent) != 0) {
            snprintf(msg, msglen, "tensor name '%s' is not valid UTF-8", e->name);
            ok = 0;
        } else if (!good) {
            json_decref(ent);
            snprintf(msg, msglen, "out of memory building the header");
            ok = 0;
        }
        offset += e->nbytes;
    }
    char *s = ok ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (ok && !s) snprintf(msg, msglen, "out of memory building the header");
    json_decref(root);
    return s;
}

static int write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Writes length prefix, padded header and tensor bytes in order to fd. */
static int write_contents(int fd, const StWriter *w, const int *order, const char *header) {
    size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8;
    uint64_t n = padded;
    static const char spaces[8] = "        ";
    if (write_all(fd, &n, 8) != 0 || write_all(fd, header, hlen) != 0 || write_all(fd, spaces, padded - hlen) != 0)
        return -1;
    for (int k = 0; k < w->n; k++) {
        const WEntry *e = &w->e[order[k]];
        if (e->nbytes && write_all(fd, e->data, e->nbytes) != 0) return -1;
    }
    return 0;
}

/* fsync of the folder holding path, so the rename itself is durable. Best effort. */
static void sync_parent_dir(const char *path) {
    char *dir = strdup(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash == dir)
        d = "/";
    else if (slash) {
        *slash = 0;
        d = dir;
    }
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

int st_writer_save(StWriter *w, const char *path, char *err, size_t errlen) {
    if (!w || !path) {
        set_err(err, errlen, "st_writer_save: no writer or no path");
        return -1;
    }
    if (w->error[0]) {
        set_err(err, errlen, "%s: not written: %s", path, w->error);
        return -1;
    }
    char msg[256] = "out of memory";
    int *order = writer_order(w);
    char *header = order ? writer_header(w, order, msg, sizeof msg) : NULL;
    if (!header) {
        set_err(err, errlen, "%s: not written: %s", path, msg);
        free(order);
        return -1;
    }
    size_t tlen = strlen(path) + 16;
    char *tmp = malloc(tlen);
    int fd = -1, rc = -1;
    if (!tmp) {
        set_err(err, errlen, "%s: not written: out of memory", path);
        goto done;
    }
    snprintf(tmp, tlen, "%s.tmp.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot create a temporary file next to it (%s): check that the folder exists "
                "and is writable", path, strerror(errno));
        goto done;
    }
    if (fchmod(fd, 0644) != 0 || write_contents(fd, w, order, header) != 0 || fsync(fd) != 0) {
        set_err(err, errlen, "%s: writing %s failed (%s): check free disk space", path, tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        set_err(err, errlen, "%s: cannot move %s into place (%s)", path, tmp, strerror(errno));
        unlink(tmp);
        goto done;
    }
    sync_parent_dir(path);
    rc = 0;
done:
    free(tmp);
    free(header);
    free(order);
    return rc;
}
