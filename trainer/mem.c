/* mem.c - see mem.h. Thread-safe: the loader's threads may charge input buffers. */
#include "mem.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static MemStats g_stats;
static int g_exit_on_oom = 1;

static const char *const g_names[MEM_NCAT] = {
    "parameters", "gradients", "optimizer", "activations", "workspace", "inputs"};

const char *mem_category_name(MemCategory c) {
    return (c >= 0 && c < MEM_NCAT) ? g_names[c] : "?";
}

void mem_set_limit(size_t bytes) {
    pthread_mutex_lock(&g_lock);
    g_stats.limit = bytes;
    pthread_mutex_unlock(&g_lock);
}

void mem_set_exit_on_oom(int on) { g_exit_on_oom = on; }

static void print_report_locked(FILE *f, const MemStats *s) {
    for (int c = 0; c < MEM_NCAT; c++)
        fprintf(f, "  %-12s %12zu bytes (peak %zu)\n", g_names[c], s->current[c], s->peak[c]);
    fprintf(f, "  %-12s %12zu bytes (peak %zu)\n", "total", s->total_current, s->total_peak);
}

void mem_print_report(void *file) {
    pthread_mutex_lock(&g_lock);
    MemStats s = g_stats;
    pthread_mutex_unlock(&g_lock);
    print_report_locked((FILE *)file, &s);
}

int mem_charge(MemCategory c, size_t bytes) {
    pthread_mutex_lock(&g_lock);
    MemStats *s = &g_stats;
    if (s->limit && s->total_current + bytes > s->limit) {
        s->failed_request = bytes;
        MemStats copy = *s;
        pthread_mutex_unlock(&g_lock);
        fprintf(stderr,
                "error: out of memory budget: requested %zu bytes for %s, budget (--mem-limit) is %zu "
                "bytes, %zu in use:\n",
                bytes, g_names[c], copy.limit, copy.total_current);
        print_report_locked(stderr, &copy);
        fprintf(stderr, "HINT: lower --batch or the image size, or raise --mem-limit.\n");
        if (g_exit_on_oom) exit(EXIT_OOM);
        return -1;
    }
    s->current[c] += bytes;
    if (s->current[c] > s->peak[c]) s->peak[c] = s->current[c];
    s->total_current += bytes;
    if (s->total_current > s->total_peak) s->total_peak = s->total_current;
    pthread_mutex_unlock(&g_lock);
    return 0;
}

void mem_release(MemCategory c, size_t bytes) {
    pthread_mutex_lock(&g_lock);
    g_stats.current[c] -= bytes;
    g_stats.total_current -= bytes;
    pthread_mutex_unlock(&g_lock);
}

MemStats mem_stats(void) {
    pthread_mutex_lock(&g_lock);
    MemStats s = g_stats;
    pthread_mutex_unlock(&g_lock);
    return s;
}

void mem_reset_peaks(void) {
    pthread_mutex_lock(&g_lock);
    for (int c = 0; c < MEM_NCAT; c++) g_stats.peak[c] = g_stats.current[c];
    g_stats.total_peak = g_stats.total_current;
    pthread_mutex_unlock(&g_lock);
}

int mem_parse_size(const char *s, size_t *out) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': mul = 1024.0; break;
        case 'm': case 'M': mul = 1024.0 * 1024; break;
        case 'g': case 'G': mul = 1024.0 * 1024 * 1024; break;
        case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; break;
        default: return -1;
        }
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'b' || *end == 'B') end++;
        if (*end) return -1;
    }
    *out = (size_t)(v * mul);
    return 0;
}

/* Header in front of each host block: the category and size, so host_free can release them. */
typedef struct { size_t bytes; int cat; int pad[13]; } HostHeader; /* 64 bytes keeps alignment */

void *host_alloc(MemCategory c, size_t bytes) {
    if (mem_charge(c, bytes) != 0) return NULL;
    void *raw = NULL;
    if (posix_memalign(&raw, 64, sizeof(HostHeader) + (bytes ? bytes : 1)) != 0) {
        mem_release(c, bytes);
        fprintf(stderr, "error: host malloc of %zu bytes for %s failed\n", bytes, g_names[c]);
        mem_print_report(stderr);
        if (g_exit_on_oom) exit(EXIT_OOM);
        return NULL;
    }
    HostHeader *h = raw;
    h->bytes = bytes;
    h->cat = c;
    return h + 1;
}

void host_free(void *p) {
    if (!p) return;
    HostHeader *h = (HostHeader *)p - 1;
    mem_release((MemCategory)h->cat, h->bytes);
    free(h);
}
