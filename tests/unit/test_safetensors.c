/* test_safetensors.c - safetensors round trip, dtype conversion, writer mistakes, and a corpus of corrupt
 * files (truncations, flipped header bytes, one file per validation rule) that must all be refused with a
 * message and without a crash. Interop with tests/ref/st_io.py (the fixtures' writer) when python3 + numpy exist. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "safetensors.h"

static char g_dir[64];
static char g_path[128]; /* scratch file reused by the corrupt-file cases */

static void path_in_dir(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_dir, name); }

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = n ? fwrite(p, 1, n, fp) : 0;
    return (fclose(fp) == 0 && w == n) ? 0 : -1;
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)len + 1);
    *n = fread(p, 1, (size_t)len, fp);
    fclose(fp);
    return p;
}

/* Writes u64 header length (declared, or strlen(header) when declared < 0), header, data_len zero bytes. */
static void make_raw(const char *path, const char *header, long long declared, size_t data_len) {
    size_t hl = strlen(header);
    uint64_t n = declared < 0 ? (uint64_t)hl : (uint64_t)declared;
    size_t total = 8 + hl + data_len;
    uint8_t *buf = calloc(1, total);
    memcpy(buf, &n, 8);
    memcpy(buf + 8, header, hl);
    write_bytes(path, buf, total);
    free(buf);
}

/* Opens path expecting failure; the message must be non-empty, name the file and contain `want` (if set). */
static void expect_fail(const char *name, const char *path, const char *want) {
    StFile f;
    char err[512] = "";
    int rc = st_open(path, &f, err, sizeof err);
    int ok = rc == -1 && err[0] && strstr(err, path) && (!want || strstr(err, want));
    CHECK(name, ok, "rc=%d err='%s' (wanted '%s')", rc, err, want ? want : "");
    if (rc == 0) st_close(&f);
}

static void expect_header_fail(const char *name, const char *header, size_t data_len, const char *want) {
    make_raw(g_path, header, -1, data_len);
    expect_fail(name, g_path, want);
}

static int count_tmp_files(void) {
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    if (d) closedir(d);
    return n;
}

/* ----------------------------------------------------------------------------------------------- */

static const float A[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7e5f}; /* [2, 3] */
static const uint8_t U8[5] = {0, 1, 127, 200, 255};                /* [5] */
static const uint16_t F16[7] = {0x3c00, 0xc000, 0x3800, 0x0001, 0x7c00, 0x7bff, 0x8000}; /* [7] */
static const float F16_EXPECT[7] = {1.0f, -2.0f, 0.5f, 5.9604645e-8f, INFINITY, 65504.0f, -0.0f};
static const uint16_t BF16[3] = {0x3f80, 0xc040, 0x0000};           /* [3] = 1, -3, 0 */
static const double F64[2] = {0.25, -1e10};                        /* [2] */
static const int64_t I64[3] = {-5, 0, 1234567};                    /* [3] */
static const int8_t I8[2] = {-3, 100};                             /* [2] */
static const int32_t I32[2] = {-70000, 9};                         /* [2] */
static const int16_t I16[2] = {-300, 12};                          /* [2] */
static const uint8_t BOOLS[3] = {1, 0, 1};                         /* [3] */

static int write_round_trip_file(const char *path, char *err, size_t errlen) {
    StWriter *w = st_writer_new();
    int64_t s23[2] = {2, 3}, s5[1] = {5}, s7[1] = {7}, s3[1] = {3}, s2[1] = {2}, s04[2] = {0, 4};
    /* names chosen so that name order and size order differ (alignment ordering is exercised) */
    st_writer_add(w, "a_u8", ST_U8, 1, s5, U8);
    st_writer_add_f32(w, "b.weight", 2, s23, A);
    st_writer_add(w, "c_f16", ST_F16, 1, s7, F16);
    st_writer_add(w, "d_bf16", ST_BF16, 1, s3, BF16);
    st_writer_add(w, "e_f64", ST_F64, 1, s2, F64);
    st_writer_add_copy(w, "f_i64", ST_I64, 1, s3, I64);
    st_writer_add(w, "g_i8", ST_I8, 1, s2, I8);
    st_writer_add(w, "h_i32", ST_I32, 1, s2, I32);
    st_writer_add(w, "i_i16", ST_I16, 1, s2, I16);
    st_writer_add(w, "j_bool", ST_BOOL, 1, s3, BOOLS);
    st_writer_add_f32(w, "k_empty", 2, s04, NULL);
    st_writer_add_scalar(w, "step", 42.0f);
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "epoch", "1");
    st_writer_meta(w, "epoch", "3"); /* replaces */
    st_writer_meta(w, "note", "unicode \xc3\xa9 \"quoted\"");
    int rc = st_writer_save(w, path, err, errlen);
    st_writer_free(w);
    return rc;
}

static void check_tensor_f32(const StFile *f, const char *name, const float *expect, size_t n) {
    char label[96], err[256] = "";
    snprintf(label, sizeof label, "round trip: values of %s", name);
    const StTensor *t = st_find(f, name);
    if (!t || st_numel(t) != n) {
        CHECK(label, 0, "missing or numel %zu != %zu", t ? st_numel(t) : 0, n);
        return;
    }
    float got[16];
    int rc = st_read_f32(f, t, got, err, sizeof err);
    int ok = rc == 0;
    for (size_t i = 0; ok && i < n; i++) ok = memcmp(&got[i], &expect[i], 4) == 0 || got[i] == expect[i];
    CHECK(label, ok, "rc=%d err=%s first=%g", rc, err, n ? got[0] : 0.0);
}

static void test_round_trip(void) {
    char path[128], err[512] = "";
    path_in_dir(path, sizeof path, "rt.safetensors");
    int rc = write_round_trip_file(path, err, sizeof err);
    CHECK("round trip: save", rc == 0, "%s", err);
    CHECK("round trip: no temporary file left", count_tmp_files() == 0, "%d left", count_tmp_files());
    StFile f;
    rc = st_open(path, &f, err, sizeof err);
    CHECK("round trip: open", rc == 0, "%s", err);
    if (rc != 0) return;
    CHECK("round trip: tensor count", f.n == 12, "n=%d", f.n);
    CHECK("round trip: metadata", f.n_meta == 3 && st_meta(&f, "format") && !strcmp(st_meta(&f, "format"), "pt") &&
                                      !strcmp(st_meta(&f, "epoch"), "3") &&
                                      !strcmp(st_meta(&f, "note"), "unicode \xc3\xa9 \"quoted\"") &&
                                      st_meta(&f, "missing") == NULL,
          "n_meta=%d", f.n_meta);
    const StTensor *b = st_find(&f, "b.weight");
    CHECK("round trip: f32 dtype and shape", b && b->dtype == ST_F32 && b->ndim == 2 && b->shape[0] == 2 &&
                                                 b->shape[1] == 3 && st_numel(b) == 6,
          "bad descriptor");
    check_tensor_f32(&f, "b.weight", A, 6);
    const StTensor *s = st_find(&f, "step");
    float v = -1;
    CHECK("round trip: scalar", s && s->ndim == 0 && st_numel(s) == 1 && st_read_f32(&f, s, &v, err, sizeof err) == 0 &&
                                    v == 42.0f,
          "v=%g", v);
    const StTensor *u = st_find(&f, "a_u8");
    CHECK("round trip: u8 raw bytes", u && u->dtype == ST_U8 && u->end - u->begin == 5 &&
                                          memcmp(st_data(&f, u), U8, 5) == 0,
          "mismatch");
    float u8f[5] = {0, 1, 127, 200, 255};
    check_tensor_f32(&f, "a_u8", u8f, 5);
    check_tensor_f32(&f, "c_f16", F16_EXPECT, 7);
    float bf[3] = {1, -3, 0}, f64[2] = {0.25f, -1e10f}, i64[3] = {-5, 0, 1234567}, i8[2] = {-3, 100};
    float i32[2] = {-70000, 9}, i16[2] = {-300, 12}, bo[3] = {1, 0, 1};
    check_tensor_f32(&f, "d_bf16", bf, 3);
    check_tensor_f32(&f, "e_f64", f64, 2);
    check_tensor_f32(&f, "f_i64", i64, 3);
    check_tensor_f32(&f, "g_i8", i8, 2);
    check_tensor_f32(&f, "h_i32", i32, 2);
    check_tensor_f32(&f, "i_i16", i16, 2);
    check_tensor_f32(&f, "j_bool", bo, 3);
    const StTensor *e = st_find(&f, "k_empty");
    CHECK("round trip: zero-size tensor", e && e->ndim == 2 && e->shape[0] == 0 && st_numel(e) == 0 &&
                                              e->begin == e->end && st_read_f32(&f, e, &v, err, sizeof err) == 0,
          "bad");
    CHECK("round trip: missing name", st_find(&f, "nope") == NULL && st_find(&f, "") == NULL, "found");
    uint64_t hlen;
    memcpy(&hlen, f.map_or_buf, 8);
    int aligned = hlen % 8 == 0;
    for (int i = 0; i < f.n; i++) aligned &= f.tensors[i].begin % st_dtype_size(f.tensors[i].dtype) == 0;
    CHECK("round trip: header padded to 8, every tensor aligned to its element size", aligned, "hlen=%llu",
          (unsigned long long)hlen);
    st_close(&f);

    /* overwrite in place (rename over an existing file) */
    rc = write_round_trip_file(path, err, sizeof err);
    CHECK("round trip: overwrite existing file", rc == 0 && st_open(path, &f, err, sizeof err) == 0, "%s", err);
    if (rc == 0) st_close(&f);

    /* empty file: only metadata */
    StWriter *w = st_writer_new();
    st_writer_meta(w, "k", "v");
    rc = st_writer_save(w, path, err, sizeof err);
    st_writer_free(w);
    rc = rc == 0 ? st_open(path, &f, err, sizeof err) : rc;
    CHECK("round trip: file with no tensors", rc == 0 && f.n == 0 && f.data_len == 0 && !strcmp(st_meta(&f, "k"), "v"),
          "%s", err);
    if (rc == 0) st_close(&f);
}

static void expect_writer_error(const char *name, StWriter *w, const char *want) {
    char path[128], err[512] = "";
    path_in_dir(path, sizeof path, "bad_writer.safetensors");
    int rc = st_writer_save(w, path, err, sizeof err);
    CHECK(name, rc == -1 && strstr(err, want) && access(path, F_OK) != 0, "rc=%d err='%s'", rc, err);
    st_writer_free(w);
}

static void test_writer_errors(void) {
    float x[4] = {0};
    int64_t s4[1] = {4}, neg[1] = {-1}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    StWriter *w = st_writer_new();
    st_writer_add_f32(w, "x", 1, s4, x);
    st_writer_add_f32(w, "x", 1, s4, x);
    expect_writer_error("writer: duplicate name refused", w, "added twice");
    w = st_writer_new();
    st_writer_add_f32(w, "", 1, s4, x);
    expect_writer_error("writer: empty name refused", w, "empty name");
    w = st_writer_new();
    st_writer_add_f32(w, "__metadata__", 1, s4, x);
    expect_writer_error("writer: __metadata__ as a name refused", w, "cannot be a tensor name");
    w = st_writer_new();
    st_writer_add_f32(w, "x", 9, s9, x);
    expect_writer_error("writer: 9 dims refused", w, "dims");
    w = st_writer_new();
    st_writer_add_f32(w, "x", 1, neg, x);
    expect_writer_error("writer: negative dim refused", w, "negative dim");
    w = st_writer_new();
    st_writer_add_f32(w, "x", 1, s4, NULL);
    expect_writer_error("writer: NULL data refused", w, "NULL");
    w = st_writer_new();
    st_writer_add_f32(w, "bad\xff", 1, s4, x);
    expect_writer_error("writer: non-UTF-8 name refused", w, "UTF-8");

    char err[512] = "";
    w = st_writer_new();
    st_writer_add_f32(w, "x", 1, s4, x);
    int rc = st_writer_save(w, "/nonexistent-dir-detr/x.safetensors", err, sizeof err);
    st_writer_free(w);
    CHECK("writer: missing folder gives an error", rc == -1 && strstr(err, "nonexistent-dir-detr"), "rc=%d %s", rc, err);
}

/* Every strict prefix of a valid file must be refused. */
static void test_truncations(const uint8_t *good, size_t n) {
    int refused = 0, total = 0;
    char err[512];
    for (size_t len = 0; len < n; len++) {
        write_bytes(g_path, good, len);
        StFile f;
        err[0] = 0;
        int rc = st_open(g_path, &f, err, sizeof err);
        total++;
        if (rc == -1 && err[0]) refused++;
        if (rc == 0) st_close(&f);
    }
    CHECK("corrupt: every truncation refused with a message", refused == total, "%d of %d refused", refused, total);
}

/* Flipped bytes in the length prefix and header: never a crash; whatever is accepted must be consistent. */
static void test_flips(const uint8_t *good, size_t n) {
    uint64_t hlen;
    memcpy(&hlen, good, 8);
    uint8_t *buf = malloc(n);
    static const uint8_t xors[] = {0x01, 0x02, 0x08, 0x20, 0x40, 0x80, 0xff};
    int tried = 0, refused = 0, consistent = 1, silent = 0;
    char err[512];
    for (size_t pos = 0; pos < 8 + hlen && pos < n; pos++) {
        for (size_t k = 0; k < sizeof xors; k++) {
            memcpy(buf, good, n);
            buf[pos] ^= xors[k];
            write_bytes(g_path, buf, n);
            StFile f;
            err[0] = 0;
            int rc = st_open(g_path, &f, err, sizeof err);
            tried++;
            if (rc == -1) {
                refused++;
                if (!err[0]) silent++;
                continue;
            }
            /* accepted (e.g. a letter of a name changed): the layout must still be sound */
            size_t covered = 0;
            for (int i = 0; i < f.n; i++) {
                const StTensor *t = &f.tensors[i];
                consistent &= t->begin <= t->end && t->end <= f.data_len &&
                              t->end - t->begin == st_numel(t) * st_dtype_size(t->dtype);
                covered += t->end - t->begin;
            }
            consistent &= covered == f.data_len;
            st_close(&f);
        }
    }
    free(buf);
    CHECK("corrupt: flipped header bytes never crash, refusals carry a message", silent == 0 && consistent,
          "silent=%d consistent=%d", silent, consistent);
    CHECK("corrupt: most header flips are refused", refused * 2 > tried, "%d of %d refused", refused, tried);
}

/* Seeded random mutations anywhere in the file (1..4 bytes each, or a random length prefix). */
static void test_random_mutations(const uint8_t *good, size_t n) {
    uint64_t state = 0x9e3779b97f4a7c15ull;
    uint8_t *buf = malloc(n);
    int silent = 0, accepted = 0;
    char err[512];
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(buf, good, n);
        int flips = 1 + (int)(iter % 4);
        for (int k = 0; k < flips; k++) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(state >> 33) % n;
            buf[pos] = (uint8_t)(state >> 17);
        }
        if (iter % 10 == 0) { /* a random, usually absurd, header length */
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            memcpy(buf, &state, 8);
        }
        write_bytes(g_path, buf, n);
        StFile f;
        err[0] = 0;
        if (st_open(g_path, &f, err, sizeof err) == 0) {
            float tmp[64];
            for (int i = 0; i < f.n; i++) /* read every accepted tensor: must stay in bounds */
                if (st_numel(&f.tensors[i]) <= 64) st_read_f32(&f, &f.tensors[i], tmp, err, sizeof err);
            accepted++;
            st_close(&f);
        } else if (!err[0]) {
            silent++;
        }
    }
    free(buf);
    CHECK("corrupt: 2000 random mutations never crash, refusals carry a message", silent == 0,
          "%d silent refusals (%d accepted)", silent, accepted);
}

static void test_validation_rules(void) {
    char err[512];
    /* sizes and lengths */
    write_bytes(g_path, "", 0);
    expect_fail("corrupt: empty file", g_path, "shorter than");
    write_bytes(g_path, "\x02\0\0\0", 4);
    expect_fail("corrupt: 4-byte file", g_path, "shorter than");
    make_raw(g_path, "{}", 1000, 0);
    expect_fail("corrupt: header length past the end", g_path, "exceeds the file");
    make_raw(g_path, "{}", 200000000, 0);
    expect_fail("corrupt: absurd header length", g_path, "absurd");
    make_raw(g_path, "{}", (long long)0x7fffffffffffffffLL, 0);
    expect_fail("corrupt: header length near 2^63", g_path, "absurd");
    make_raw(g_path, "", 0, 0);
    expect_fail("corrupt: zero-length header", g_path, "not valid JSON");
    expect_fail("corrupt: missing file", "/nonexistent-detr/x.safetensors", "cannot open");
    expect_fail("corrupt: a folder", g_dir, "not a regular file");

    /* JSON shape */
    expect_header_fail("corrupt: header not JSON", "{\"a\": {\"dtype\": \"F32\",", 0, "not valid JSON");
    expect_header_fail("corrupt: header is a list", "[1, 2]", 0, "not an object");
    expect_header_fail("corrupt: trailing garbage after JSON", "{} x", 0, "not valid JSON");
    expect_header_fail("corrupt: invalid UTF-8", "{\"\xff\xfe\": 1}", 0, "not valid JSON");
    expect_header_fail("corrupt: entry not an object", "{\"a\": 5}", 0, "not an object");
    expect_header_fail("corrupt: missing dtype", "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "dtype");
    expect_header_fail("corrupt: dtype not a string",
                       "{\"a\": {\"dtype\": 3, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "dtype");
    expect_header_fail("corrupt: unknown dtype",
                       "{\"a\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1,
                       "unsupported dtype \"F8_E4M3\"");
    expect_header_fail("corrupt: missing shape", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "shape");
    expect_header_fail("corrupt: shape not a list",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": 4, \"data_offsets\": [0, 4]}}", 4, "shape");
    expect_header_fail("corrupt: negative dim",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, "shape[0]");
    expect_header_fail("corrupt: fractional dim",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 1.5], \"data_offsets\": [0, 12]}}", 12, "shape[1]");
    expect_header_fail("corrupt: string dim",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", 8, "shape[0]");
    expect_header_fail("corrupt: 9 dims",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
                       "9 dims");
    expect_header_fail("corrupt: shape overflows",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], "
                       "\"data_offsets\": [0, 4]}}",
                       4, "too large");
    expect_header_fail("corrupt: integer too big for JSON",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [99999999999999999999999], \"data_offsets\": [0, 4]}}",
                       4, "not valid JSON");
    expect_header_fail("corrupt: missing data_offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4,
                       "data_offsets");
    expect_header_fail("corrupt: data_offsets with 3 numbers",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8, "data_offsets");
    expect_header_fail("corrupt: data_offsets not integers",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0.0, 4]}}", 4, "data_offsets");
    expect_header_fail("corrupt: negative offset",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4, "invalid");
    expect_header_fail("corrupt: end before begin",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4, "invalid");
    expect_header_fail("corrupt: end past the data buffer",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4, "past the data");
    expect_header_fail("corrupt: offsets size != numel * itemsize",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8, "need 12 bytes");
    expect_header_fail("corrupt: overlapping tensors",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                       " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                       12, "overlap");
    expect_header_fail("corrupt: two tensors on the same bytes",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                       " \"b\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}}",
                       8, "overlap");
    expect_header_fail("corrupt: gap between tensors",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                       " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
                       12, "unused bytes");
    expect_header_fail("corrupt: trailing bytes after the last tensor",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8, "trailing");
    expect_header_fail("corrupt: duplicate names",
                       "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                       " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
                       8, "twice");
    expect_header_fail("corrupt: metadata not an object", "{\"__metadata__\": [\"x\"]}", 0, "__metadata__");
    expect_header_fail("corrupt: metadata value not a string", "{\"__metadata__\": {\"epoch\": 3}}", 0,
                       "not a string");

    /* legal edge cases */
    StFile f;
    make_raw(g_path, "{}", -1, 0);
    int rc = st_open(g_path, &f, err, sizeof err);
    CHECK("legal: empty header {}", rc == 0 && f.n == 0, "%s", err);
    if (rc == 0) st_close(&f);
    make_raw(g_path,
             "{\"z\": {\"dtype\": \"F32\", \"shape\": [0, 3], \"data_offsets\": [4, 4]}, "
             "\"s\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 4]}, \"__metadata__\": {}}   ",
             -1, 4);
    rc = st_open(g_path, &f, err, sizeof err);
    CHECK("legal: zero-size tensor, scalar, empty metadata, unpadded header", rc == 0 && f.n == 2 && f.n_meta == 0,
          "%s", err);
    if (rc == 0) st_close(&f);
}

/* Interop with tests/ref/st_io.py, the Python writer/reader of the reference fixtures. */
static void test_python_interop(void) {
    if (access("/usr/bin/python3", X_OK) != 0 || system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) {
        test_skip("interop: python writer", "/usr/bin/python3 with numpy is not available");
        return;
    }
    if (access("tests/ref/st_io.py", R_OK) != 0) {
        test_skip("interop: python writer", "tests/ref/st_io.py not found (run from the repository root)");
        return;
    }
    char script[128], py_file[128], c_file[128], cmd[512], err[512] = "";
    path_in_dir(script, sizeof script, "interop.py");
    path_in_dir(py_file, sizeof py_file, "py.safetensors");
    path_in_dir(c_file, sizeof c_file, "rt.safetensors");
    /* the project's own Python safetensors module (the fixture writer uses it) */
    static const char *src =
        "import sys\n"
        "sys.path.insert(0, 'tests/ref')\n"
        "import numpy as np\n"
        "from st_io import read_safetensors, write_safetensors\n"
        "write_safetensors(sys.argv[1], {'w': np.arange(12, dtype=np.float32).reshape(3, 4) / 8,\n"
        "                   'h': np.array([1.5, -2], dtype=np.float16), 'idx': np.array([7, -9], dtype=np.int64),\n"
        "                   'm': np.array([[1, 0, 3]], dtype=np.uint8), 's': np.array(2.5, dtype=np.float32)},\n"
        "                  {'epoch': '7'})\n"
        "t, meta = read_safetensors(sys.argv[2], with_metadata=True)\n"
        "ok = np.array_equal(t['b.weight'], np.array([[1.5, -2, 3.25], [0, 1e-3, -7e5]], dtype=np.float32)) and \\\n"
        "     t['step'].shape == () and float(t['step']) == 42 and t['a_u8'].tolist() == [0, 1, 127, 200, 255] and \\\n"
        "     meta['epoch'] == '3' and t['k_empty'].shape == (0, 4) and t['f_i64'].tolist() == [-5, 0, 1234567] and \\\n"
        "     t['d_bf16'].tolist() == [1, -3, 0] and t['j_bool'].tolist() == [True, False, True]\n"
        "sys.exit(0 if ok else 1)\n";
    write_bytes(script, src, strlen(src));
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %s >/dev/null", script, py_file, c_file);
    int prc = system(cmd);
    CHECK("interop: python reads the C-written file", prc == 0, "python exit status %d", prc);
    StFile f;
    int rc = st_open(py_file, &f, err, sizeof err);
    unlink(script); /* an open file stays readable after unlink */
    unlink(py_file);
    CHECK("interop: C opens the python-written file", rc == 0, "%s", err);
    if (rc != 0) return;
    float w[12], h[2], idx[2], m[3], s = 0;
    int ok = f.n == 5 && st_meta(&f, "epoch") && !strcmp(st_meta(&f, "epoch"), "7");
    const StTensor *t;
    ok = ok && (t = st_find(&f, "w")) && t->ndim == 2 && t->shape[0] == 3 && st_read_f32(&f, t, w, err, sizeof err) == 0;
    for (int i = 0; ok && i < 12; i++) ok = w[i] == i / 8.0f;
    ok = ok && (t = st_find(&f, "h")) && t->dtype == ST_F16 && st_read_f32(&f, t, h, err, sizeof err) == 0 &&
         h[0] == 1.5f && h[1] == -2.0f;
    ok = ok && (t = st_find(&f, "idx")) && t->dtype == ST_I64 && st_read_f32(&f, t, idx, err, sizeof err) == 0 &&
         idx[0] == 7 && idx[1] == -9;
    ok = ok && (t = st_find(&f, "m")) && t->ndim == 2 && st_read_f32(&f, t, m, err, sizeof err) == 0 && m[2] == 3;
    /* st_io's np.ascontiguousarray turns a 0-d array into shape [1]; only the value is checked */
    ok = ok && (t = st_find(&f, "s")) && st_numel(t) == 1 && st_read_f32(&f, t, &s, err, sizeof err) == 0 && s == 2.5f;
    CHECK("interop: values of the python-written file", ok, "mismatch (%s)", err);
    st_close(&f);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/test_safetensors.XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("FAIL cannot create a temporary folder\n");
        return 1;
    }
    path_in_dir(g_path, sizeof g_path, "scratch.safetensors");

    test_round_trip();
    test_writer_errors();
    test_validation_rules();

    char rt[128];
    path_in_dir(rt, sizeof rt, "rt.safetensors");
    write_round_trip_file(rt, NULL, 0);
    size_t n = 0;
    uint8_t *good = read_bytes(rt, &n);
    CHECK("corrupt: base file readable", good && n > 8, "n=%zu", n);
    if (good && n > 8) {
        test_truncations(good, n);
        test_flips(good, n);
        test_random_mutations(good, n);
    }
    free(good);

    test_python_interop();

    unlink(g_path);
    unlink(rt);
    rmdir(g_dir);
    return test_finish();
}
