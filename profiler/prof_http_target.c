/* prof_http_target.c - request-target validation and query decoding for prof_http.c.
 * The server only maps paths to embedded assets and fixed routes, never to files, but it still
 * refuses every path that could mean "go up" to any later consumer: ".." or "." segments, their
 * percent-encoded forms, encoded slashes and backslashes, NUL and control bytes. */
#include <string.h>
#include "prof_http.h"

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes one %XX at s (s[0] == '%'); returns the byte or -1. */
static int decode_escape(const char *s, const char *end) {
    if (end - s < 3) return -1;
    int hi = hex_value(s[1]), lo = hex_value(s[2]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* 1 if the segment [seg, seg+len) is "." or "..". */
static int is_dot_segment(const char *seg, size_t len) {
    return (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.');
}

int http_target_parse(const char *target, size_t target_len, char *path, size_t pathcap,
                      const char **query, size_t *query_len) {
    const char *end = target + target_len;
    if (target_len == 0 || target[0] != '/') return 400; /* origin form only */
    const char *qmark = memchr(target, '?', target_len);
    const char *path_end = qmark ? qmark : end;
    if (memchr(target, '#', target_len)) return 400; /* fragments are never sent by clients */
    size_t n = 0;
    for (const char *s = target; s < path_end; s++) {
        int c = (unsigned char)*s;
        if (c == '%') {
            c = decode_escape(s, path_end);
            if (c < 0) return 400;
            if (c == '/' || c == '\\') return 400; /* an encoded separator hides a segment */
            s += 2;
        }
        if (c < 0x20 || c == 0x7f || c == '\\') return 400;
        if (n + 1 >= pathcap) return 414;
        path[n++] = (char)c;
    }
    path[n] = 0;
    /* Dot segments, checked after decoding so that %2e%2e counts too. */
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && path[j] != '/') j++;
        if (is_dot_segment(path + i + 1, j - i - 1)) return 400;
        i = j;
    }
    *query = qmark ? qmark + 1 : end;
    *query_len = qmark ? (size_t)(end - qmark - 1) : 0;
    return 0;
}

/* Decodes [s, e) into out (cap bytes with the NUL). Returns 0, or -1. */
static int decode_component(const char *s, const char *e, char *out, size_t cap) {
    size_t n = 0;
    for (; s < e; s++) {
        int c = (unsigned char)*s;
        if (c == '+') c = ' ';
        else if (c == '%') {
            c = decode_escape(s, e);
            if (c <= 0) return -1; /* bad escape, or an encoded NUL */
            s += 2;
        }
        if (n + 1 >= cap) return -1;
        out[n++] = (char)c;
    }
    out[n] = 0;
    return 0;
}

int http_query_next(const char **q, const char *end, char *key, size_t keycap, char *val, size_t valcap) {
    const char *s = *q;
    while (s < end && *s == '&') s++; /* empty pairs ("a=1&&b=2") are skipped */
    if (s >= end) {
        *q = end;
        return 0;
    }
    const char *amp = memchr(s, '&', (size_t)(end - s));
    const char *pair_end = amp ? amp : end;
    const char *eq = memchr(s, '=', (size_t)(pair_end - s));
    const char *key_end = eq ? eq : pair_end;
    *q = pair_end;
    if (decode_component(s, key_end, key, keycap) != 0) return -1;
    if (decode_component(eq ? eq + 1 : pair_end, pair_end, val, valcap) != 0) return -1;
    return 1;
}
