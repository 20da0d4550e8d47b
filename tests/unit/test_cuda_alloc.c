/* test_cuda_alloc.c - the caching device allocator (trainer/cuda/cuda_alloc_core.c) on the CPU,
 * over a fake device: malloc-backed "segments" with a byte limit, which records every raw
 * allocation so the tests can check what the allocator asked for and that it gave it all back.
 * Covers rounding, pools, splitting, reuse, merging, best fit, statistics arithmetic, the
 * retry after releasing the cache, device OOM and its explanation, the --mem-limit budget
 * (refusal, and its cap on reserved bytes), threads, a randomised consistency check, and leaks. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "mem.h"
#include "cuda/cuda_alloc_core.h"

#define MiB ((size_t)1 << 20)
#define MAX_SEGS 4096

/* ---- the fake device ---------------------------------------------------------------------- */

typedef struct {
    size_t limit, used;
    int nsegs;
    void *seg_ptr[MAX_SEGS];
    size_t seg_size[MAX_SEGS];
    int raw_allocs, raw_frees, refused;
    pthread_mutex_t lock;
} FakeDevice;

static void *fake_alloc(void *ctx, size_t bytes) {
    FakeDevice *d = (FakeDevice *)ctx;
    pthread_mutex_lock(&d->lock);
    void *p = NULL;
    if (d->used + bytes <= d->limit && d->nsegs < MAX_SEGS && (p = malloc(bytes))) {
        d->seg_ptr[d->nsegs] = p;
        d->seg_size[d->nsegs++] = bytes;
        d->used += bytes;
        d->raw_allocs++;
    } else {
        d->refused++;
    }
    pthread_mutex_unlock(&d->lock);
    return p;
}

static void fake_free(void *ctx, void *p) {
    FakeDevice *d = (FakeDevice *)ctx;
    pthread_mutex_lock(&d->lock);
    for (int i = 0; i < d->nsegs; i++)
        if (d->seg_ptr[i] == p) {
            d->used -= d->seg_size[i];
            d->seg_ptr[i] = d->seg_ptr[d->nsegs - 1];
            d->seg_size[i] = d->seg_size[d->nsegs - 1];
            d->nsegs--;
            d->raw_frees++;
            free(p);
            pthread_mutex_unlock(&d->lock);
            return;
        }
    pthread_mutex_unlock(&d->lock);
    fprintf(stderr, "fake device: free of %p, which it never allocated\n", p);
    abort();
}

static DevCache *fake_cache(FakeDevice *d, size_t limit) {
    memset(d, 0, sizeof(*d));
    pthread_mutex_init(&d->lock, NULL);
    d->limit = limit;
    DevCacheRaw raw = {fake_alloc, fake_free, d};
    return devcache_create(&raw);
}

/* The segment holding [p, p+n), or -1. */
static int fake_segment_of(FakeDevice *d, const void *p, size_t n) {
    for (int i = 0; i < d->nsegs; i++) {
        uintptr_t b = (uintptr_t)d->seg_ptr[i], x = (uintptr_t)p;
        if (x >= b && x + n <= b + d->seg_size[i]) return i;
    }
    return -1;
}

static void *must_alloc(DevCache *a, MemCategory c, size_t n) {
    void *p = NULL;
    DevCacheOom oom;
    if (devcache_alloc(a, c, n, &p, &oom) != DEVCACHE_OK) {
        fprintf(stderr, "test: allocation of %zu bytes for %s refused (status %d)\n", n,
                mem_category_name(c), (int)oom.status);
        return NULL;
    }
    return p;
}

static char *oom_text(DevCache *a, const DevCacheOom *oom, size_t total, size_t free_b) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    devcache_print_oom(a, f, oom, 0, "Fake GPU", total, free_b);
    fclose(f);
    return buf;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_rounding_and_stats(void) {
    FakeDevice d;
    DevCache *a = fake_cache(&d, 1024 * MiB);
    MemStats m0 = mem_stats();
    void *p = must_alloc(a, MEM_PARAMS, 1000);
    DevCacheStats s = devcache_stats(a);
    MemStats m1 = mem_stats();
    CHECK("stats: allocated is the rounded size", s.cat[MEM_PARAMS].allocated.current == 1024 &&
          s.total.allocated.current == 1024, "params %zu total %zu", s.cat[MEM_PARAMS].allocated.current,
          s.total.allocated.current);
    CHECK("stats: requested is the caller's size", s.cat[MEM_PARAMS].requested.current == 1000,
          "got %zu", s.cat[MEM_PARAMS].requested.current);
    CHECK("stats: a small request reserves one 2 MiB segment",
          s.cat[MEM_PARAMS].reserved.current == 2 * MiB && s.total.segments.current == 1 &&
          d.raw_allocs == 1 && d.seg_size[0] == 2 * MiB,
          "reserved %zu, segments %zu, raw allocs %d", s.cat[MEM_PARAMS].reserved.current,
          s.total.segments.current, d.raw_allocs);
    CHECK("stats: mem.h is charged the rounded size",
          m1.current[MEM_PARAMS] - m0.current[MEM_PARAMS] == 1024, "charged %zu",
          m1.current[MEM_PARAMS] - m0.current[MEM_PARAMS]);
    MemCategory cat = MEM_NCAT;
    CHECK("block size lookup", devcache_block_size(a, p, &cat) == 1024 && cat == MEM_PARAMS &&
          devcache_block_size(a, (char *)p + 512, NULL) == 0, "size %zu cat %d",
          devcache_block_size(a, p, NULL), (int)cat);
    CHECK("live blocks", devcache_live_blocks(a) == 1, "got %zu", devcache_live_blocks(a));
    devcache_free(a, p);
    s = devcache_stats(a);
    MemStats m2 = mem_stats();
    CHECK("stats: free releases allocated and requested, keeps reserved (cached)",
          s.total.allocated.current == 0 && s.total.requested.current == 0 &&
          s.total.reserved.current == 2 * MiB && s.total.allocated.peak == 1024 &&
          s.total.requested.peak == 1000 && s.total.blocks.current == 0 && s.total.blocks.peak == 1,
          "allocated %zu requested %zu reserved %zu", s.total.allocated.current,
          s.total.requested.current, s.total.reserved.current);
    CHECK("stats: mem.h released at free", m2.current[MEM_PARAMS] == m0.current[MEM_PARAMS],
          "left %zu", m2.current[MEM_PARAMS] - m0.current[MEM_PARAMS]);
    p = must_alloc(a, MEM_PARAMS, 0);
    size_t zero_size = devcache_block_size(a, p, NULL);
    CHECK("a zero-byte request takes one 512-byte unit", p && zero_size == 512, "size %zu", zero_size);
    devcache_free(a, p);
    devcache_reset_peaks(a);
    s = devcache_stats(a);
    CHECK("reset peaks", s.total.allocated.peak == 0 && s.total.reserved.peak == 2 * MiB,
          "allocated peak %zu reserved peak %zu", s.total.allocated.peak, s.total.reserved.peak);
    CHECK("empty cache returns the segment", devcache_empty_cache(a) == 2 * MiB && d.used == 0 &&
          devcache_stats(a).total.reserved.current == 0, "device still holds %zu", d.used);
    CHECK("destroy: no leaks", devcache_destroy(a) == 0, "leaked blocks");
}

static void test_reuse_split_merge(void) {
    FakeDevice d;
    DevCache *a = fake_cache(&d, 1024 * MiB);
    void *p = must_alloc(a, MEM_ACTS, 1000);
    uintptr_t base = (uintptr_t)p;
    devcache_free(a, p);
    void *q = must_alloc(a, MEM_ACTS, 700); /* 1024 bytes */
    CHECK("reuse: a freed block is handed out again, no new segment", q == p && d.raw_allocs == 1,
          "got %p (first %p), raw allocs %d", q, p, d.raw_allocs);
    void *r = must_alloc(a, MEM_ACTS, 3000);
    CHECK("split: the next block follows in the same segment", (uintptr_t)r == base + 1024 &&
          d.raw_allocs == 1, "offset %lld", (long long)((uintptr_t)r - base));
    void *s3 = must_alloc(a, MEM_ACTS, 512);
    CHECK("split: third block", (uintptr_t)s3 == base + 1024 + 3072, "offset %lld",
          (long long)((uintptr_t)s3 - base));
    /* free the middle one: a 3072-byte hole; a 2048 request takes it (best fit before the big
     * rest of the segment) */
    devcache_free(a, r);
    void *h = must_alloc(a, MEM_ACTS, 2000);
    CHECK("best fit: the hole, not the rest of the segment", h == r, "got offset %lld",
          (long long)((uintptr_t)h - base));
    void *h2 = must_alloc(a, MEM_ACTS, 1024);
    CHECK("split of a cached block: the hole's remainder", (uintptr_t)h2 == base + 1024 + 2048,
          "got offset %lld", (long long)((uintptr_t)h2 - base));
    devcache_free(a, q);
    devcache_free(a, h);
    devcache_free(a, h2);
    devcache_free(a, s3);
    /* everything merged back: the whole segment is one free block again */
    void *big = must_alloc(a, MEM_ACTS, DEVCACHE_SMALL_MAX);
    CHECK("merge: freed neighbours coalesce into the whole segment", (uintptr_t)big == base &&
          d.raw_allocs == 1, "offset %lld, raw allocs %d", (long long)((uintptr_t)big - base),
          d.raw_allocs);
    devcache_free(a, big);
    CHECK("merge: one whole free segment to release", devcache_empty_cache(a) == 2 * MiB,
          "not whole");
    CHECK("free of an unknown pointer is refused", devcache_free(a, (void *)(uintptr_t)4096) == -1,
          "accepted");
    void *x = must_alloc(a, MEM_ACTS, 64);
    devcache_free(a, x);
    CHECK("double free is refused", devcache_free(a, x) == -1, "accepted");
    CHECK("destroy: no leaks", devcache_destroy(a) == 0 && d.used == 0, "device holds %zu", d.used);
}

static void test_large_pool(void) {
    FakeDevice d;
    DevCache *a = fake_cache(&d, 1024 * MiB);
    void *p = must_alloc(a, MEM_WORKSPACE, 5 * MiB);
    DevCacheStats s = devcache_stats(a);
    CHECK("large: a request under 10 MiB reserves a 20 MiB segment",
          s.cat[MEM_WORKSPACE].reserved.current == 20 * MiB && d.nsegs == 1, "reserved %zu",
          s.cat[MEM_WORKSPACE].reserved.current);
    void *q = must_alloc(a, MEM_WORKSPACE, 11 * MiB + 5);
    s = devcache_stats(a);
    CHECK("large: 11 MiB fits the rest of that segment (split, no new segment)",
          (uintptr_t)q == (uintptr_t)p + 5 * MiB && d.nsegs == 1, "segments %d", d.nsegs);
    void *r = must_alloc(a, MEM_WORKSPACE, 25 * MiB + 1);
    s = devcache_stats(a);
    CHECK("large: a request of 10 MiB or more gets its own segment rounded to 2 MiB",
          d.nsegs == 2 && s.cat[MEM_WORKSPACE].reserved.current == 20 * MiB + 26 * MiB,
          "reserved %zu", s.cat[MEM_WORKSPACE].reserved.current);
    devcache_free(a, r);
    /* 25.5 MiB in the cached 26 MiB segment: the rest (0.5 MiB) is not worth a block */
    void *r2 = must_alloc(a, MEM_WORKSPACE, 25 * MiB + MiB / 2);
    s = devcache_stats(a);
    CHECK("large: a rest of 1 MiB or less is not split off (reserved but unallocated)",
          r2 == r && s.total.allocated.current == 5 * MiB + 11 * MiB + 512 + 25 * MiB + MiB / 2 &&
          s.total.reserved.current - s.total.allocated.current == 20 * MiB - 16 * MiB - 512 + MiB / 2,
          "allocated %zu reserved %zu", s.total.allocated.current, s.total.reserved.current);
    devcache_free(a, r2);
    void *small = must_alloc(a, MEM_WORKSPACE, 64 * 1024);
    CHECK("pools: small requests never take large-pool blocks", d.nsegs == 3, "segments %d", d.nsegs);
    /* categories keep their own pools */
    devcache_free(a, small);
    void *other = must_alloc(a, MEM_GRADS, 64 * 1024);
    s = devcache_stats(a);
    CHECK("pools: a category does not take another's cached blocks",
          d.nsegs == 4 && s.cat[MEM_GRADS].reserved.current == 2 * MiB, "segments %d", d.nsegs);
    devcache_free(a, other);
    devcache_free(a, p);
    devcache_free(a, q);
    CHECK("destroy: no leaks", devcache_destroy(a) == 0 && d.used == 0 && d.raw_allocs == d.raw_frees,
          "device holds %zu", d.used);
}

static void test_retry_and_device_oom(void) {
    FakeDevice d;
    DevCache *a = fake_cache(&d, 24 * MiB);
    void *p = must_alloc(a, MEM_PARAMS, 5 * MiB); /* 20 MiB segment */
    devcache_free(a, p);                          /* cached, still reserved */
    void *q = must_alloc(a, MEM_ACTS, 5 * MiB);   /* needs a second 20 MiB: 40 > 24 */
    DevCacheStats s = devcache_stats(a);
    CHECK("retry: the cache is released and the allocation retried",
          q != NULL && s.cat[MEM_ACTS].num_alloc_retries == 1 && s.total.num_alloc_retries == 1 &&
          s.cat[MEM_PARAMS].reserved.current == 0 && s.cat[MEM_ACTS].reserved.current == 20 * MiB &&
          s.total.num_ooms == 0,
          "q %p retries %zu, params reserved %zu", q, s.total.num_alloc_retries,
          s.cat[MEM_PARAMS].reserved.current);

    MemStats m0 = mem_stats();
    void *w = NULL;
    DevCacheOom oom;
    DevCacheStatus st = devcache_alloc(a, MEM_WORKSPACE, 6 * MiB - 100, &w, &oom);
    s = devcache_stats(a);
    MemStats m1 = mem_stats();
    CHECK("device OOM: refused after one retry, nothing charged",
          st == DEVCACHE_OOM_DEVICE && w == NULL && s.cat[MEM_WORKSPACE].num_ooms == 1 &&
          s.total.num_ooms == 1 && s.total.num_alloc_retries == 2 &&
          m1.total_current == m0.total_current && s.cat[MEM_WORKSPACE].reserved.current == 0,
          "status %d, ooms %zu, retries %zu", (int)st, s.total.num_ooms, s.total.num_alloc_retries);
    CHECK("device OOM: the smallest segment tried is reported", oom.segment == 6 * MiB &&
          oom.rounded == 6 * MiB && oom.requested == 6 * MiB - 100 && !oom.reserve_capped,
          "segment %zu rounded %zu", oom.segment, oom.rounded);
    char *text = oom_text(a, &oom, d.limit, d.limit - d.used);
    fprintf(stderr, "--- example OOM explanation (expected) ---\n%s---\n", text);
    CHECK("OOM message: what was asked", strstr(text, "error: out of GPU memory: tried to allocate "
          "6.00 MiB (6291456 bytes, 6291356 requested) for workspace.") != NULL, "%s", text);
    CHECK("OOM message: the card's total and free", strstr(text, "GPU 0 (Fake GPU) has a total "
          "capacity of 24.00 MiB of which 4.00 MiB is free.") != NULL, "%s", text);
    CHECK("OOM message: reserved, allocated, reserved but unallocated",
          strstr(text, "This process has 20.00 MiB reserved by the caching allocator: 5.00 MiB "
                 "allocated and 15.00 MiB reserved but unallocated.") != NULL, "%s", text);
    CHECK("OOM message: the retry", strstr(text, "released and the allocation retried once") != NULL,
          "%s", text);
    CHECK("OOM message: per category", strstr(text, "activations") && strstr(text, "5.00 MiB (5.00 MiB)")
          && strstr(text, "workspace") && strstr(text, "HINT: lower --batch"), "%s", text);
    free(text);

    /* a card with 6 MiB more: the usual 20 MiB segment does not fit, a 6 MiB one does */
    d.limit = 30 * MiB;
    st = devcache_alloc(a, MEM_WORKSPACE, 6 * MiB - 100, &w, &oom);
    s = devcache_stats(a);
    CHECK("device almost full: a segment of the block's own size", st == DEVCACHE_OK &&
          s.cat[MEM_WORKSPACE].reserved.current == 6 * MiB, "status %d reserved %zu", (int)st,
          s.cat[MEM_WORKSPACE].reserved.current);
    devcache_free(a, w);
    devcache_free(a, q);
    CHECK("destroy: no leaks", devcache_destroy(a) == 0 && d.used == 0, "device holds %zu", d.used);
}

static void test_budget(void) {
    mem_set_exit_on_oom(0);
    FakeDevice d;
    DevCache *a = fake_cache(&d, 1024 * MiB); /* a big card: only the budget limits */
    size_t base = mem_stats().total_current;
    mem_set_limit(base + 8 * MiB);
    void *p = NULL;
    DevCacheOom oom;
    DevCacheStatus st = devcache_alloc(a, MEM_ACTS, 10 * MiB, &p, &oom);
    DevCacheStats s = devcache_stats(a);
    CHECK("budget: over --mem-limit is refused before the device is asked",
          st == DEVCACHE_OOM_BUDGET && p == NULL && d.raw_allocs == 0 && d.refused == 0 &&
          s.cat[MEM_ACTS].num_ooms == 1 && mem_stats().total_current == base,
          "status %d raw allocs %d", (int)st, d.raw_allocs);
    char *text = oom_text(a, &oom, 0, 0);
    CHECK("budget: message names the budget", strstr(text, "error: out of the memory budget "
          "(--mem-limit): tried to allocate 10.00 MiB") && strstr(text, "The budget (--mem-limit) is "
          "8.00 MiB") && strstr(text, "raise --mem-limit") && !strstr(text, "total capacity"),
          "%s", text);
    free(text);

    void *small = must_alloc(a, MEM_PARAMS, 1000); /* a 2 MiB segment for 1 KiB */
    void *x = NULL;
    st = devcache_alloc(a, MEM_ACTS, 5 * MiB, &x, &oom);
    s = devcache_stats(a);
    CHECK("budget caps reserved: 5 MiB gets an exact segment, not 20 MiB",
          st == DEVCACHE_OK && s.cat[MEM_ACTS].reserved.current == 5 * MiB &&
          s.cat[MEM_ACTS].num_alloc_retries == 1, "status %d reserved %zu", (int)st,
          s.cat[MEM_ACTS].reserved.current);
    void *y = NULL;
    st = devcache_alloc(a, MEM_WORKSPACE, 3 * MiB / 2, &y, &oom);
    s = devcache_stats(a);
    /* allocated 5 MiB + 1 KiB + 1.5 MiB fits the 8 MiB budget, but reserved 2 + 5 + 1.5 does not */
    CHECK("budget caps reserved: over it is a device OOM (like a card of that size)",
          st == DEVCACHE_OOM_DEVICE && oom.reserve_capped && y == NULL &&
          s.total.reserved.current == 7 * MiB && d.refused == 0, "status %d capped %d", (int)st,
          oom.reserve_capped);
    text = oom_text(a, &oom, 0, 0);
    CHECK("budget caps reserved: message", strstr(text, "would take the reserved bytes over the "
          "budget (--mem-limit) of 8.00 MiB") && strstr(text, "2.00 MiB reserved but unallocated"),
          "%s", text);
    free(text);
    devcache_free(a, small);
    devcache_free(a, x);
    mem_set_limit(0);
    CHECK("destroy: no leaks", devcache_destroy(a) == 0 && d.used == 0 &&
          mem_stats().total_current == base, "device holds %zu", d.used);
    mem_set_exit_on_oom(1);
}

/* Random allocations and frees against a model of what must hold at every point. */
typedef struct {
    void *p;
    size_t n;
    MemCategory c;
} Live;

static unsigned long long g_rng = 88172645463325252ull;
static size_t rnd(size_t n) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (size_t)(g_rng % n);
}

static int cmp_live(const void *x, const void *y) {
    uintptr_t a = (uintptr_t)((const Live *)x)->p, b = (uintptr_t)((const Live *)y)->p;
    return a < b ? -1 : a > b;
}

static void test_random(void) {
    FakeDevice d;
    DevCache *a = fake_cache(&d, 160 * MiB);
    enum { N = 400, STEPS = 6000 };
    Live live[N];
    int n = 0, bad = 0, refused = 0;
    MemStats m0 = mem_stats();
    for (int step = 0; step < STEPS && !bad; step++) {
        if (n < N && (n == 0 || rnd(100) < 55)) {
            size_t sz = rnd(4) ? 1 + rnd(300000) : 1 + rnd(24 * MiB);
            MemCategory c = (MemCategory)rnd(MEM_NCAT);
            void *p = NULL;
            if (devcache_alloc(a, c, sz, &p, NULL) == DEVCACHE_OK) live[n++] = (Live){p, sz, c};
            else refused++;
        } else {
            int i = (int)rnd((size_t)n);
            devcache_free(a, live[i].p);
            live[i] = live[--n];
        }
        if (step % 97 != 0) continue;
        /* invariants: blocks inside device segments, 512-aligned offsets, no overlap, stats and
         * mem.h equal to the sums of the live blocks */
        qsort(live, (size_t)n, sizeof(Live), cmp_live);
        size_t alloc_c[MEM_NCAT] = {0}, req = 0;
        for (int i = 0; i < n; i++) {
            size_t r = (live[i].n + 511) / 512 * 512;
            int seg = fake_segment_of(&d, live[i].p, r);
            if (seg < 0 || ((uintptr_t)live[i].p - (uintptr_t)d.seg_ptr[seg]) % 512) bad = 1;
            if (i + 1 < n && (uintptr_t)live[i].p + r > (uintptr_t)live[i + 1].p) bad = 2;
            alloc_c[live[i].c] += r;
            req += live[i].n;
        }
        DevCacheStats s = devcache_stats(a);
        MemStats m = mem_stats();
        for (int c = 0; c < MEM_NCAT; c++)
            if (s.cat[c].allocated.current != alloc_c[c] ||
                m.current[c] - m0.current[c] != alloc_c[c])
                bad = 3;
        if (s.total.requested.current != req || s.total.blocks.current != (size_t)n ||
            s.total.reserved.current != d.used || s.total.segments.current != (size_t)d.nsegs ||
            s.total.reserved.current < s.total.allocated.current)
            bad = 4;
    }
    CHECK("random: blocks inside segments, aligned, disjoint; stats match", bad == 0,
          "invariant %d broken", bad);
    CHECK("random: the limit was reached sometimes (OOM path exercised)", refused > 0 &&
          devcache_stats(a).total.num_alloc_retries > 0, "refused %d", refused);
    for (int i = 0; i < n; i++) devcache_free(a, live[i].p);
    DevCacheStats s = devcache_stats(a);
    CHECK("random: everything freed", s.total.allocated.current == 0 &&
          s.total.requested.current == 0 && devcache_live_blocks(a) == 0, "allocated %zu",
          s.total.allocated.current);
    devcache_empty_cache(a);
    CHECK("random: every segment whole again and released", d.used == 0 && d.nsegs == 0 &&
          devcache_stats(a).total.reserved.current == 0, "device holds %zu in %d segments", d.used,
          d.nsegs);
    devcache_destroy(a);
}

typedef struct {
    DevCache *a;
    int id, failures;
} Worker;

static void *worker(void *arg) {
    Worker *w = (Worker *)arg;
    void *mine[64] = {0};
    unsigned s = 12345u * (unsigned)(w->id + 1);
    for (int i = 0; i < 4000; i++) {
        s = s * 1103515245u + 12345u;
        int k = (int)((s >> 8) % 64);
        if (mine[k]) {
            if (devcache_free(w->a, mine[k]) != 0) w->failures++;
            mine[k] = NULL;
        } else if (devcache_alloc(w->a, (MemCategory)(w->id % MEM_NCAT), 1 + (s >> 12) % 400000,
                                  &mine[k], NULL) != DEVCACHE_OK) {
            w->failures++;
        }
    }
    for (int k = 0; k < 64; k++)
        if (mine[k] && devcache_free(w->a, mine[k]) != 0) w->failures++;
    return NULL;
}

static void test_threads(void) {
    FakeDevice d;
    DevCache *a = fake_cache(&d, 4096 * MiB);
    MemStats m0 = mem_stats();
    Worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (Worker){a, i, 0};
        pthread_create(&t[i], NULL, worker, &w[i]);
    }
    int failures = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        failures += w[i].failures;
    }
    DevCacheStats s = devcache_stats(a);
    CHECK("threads: no failure, everything returned, mem.h balanced",
          failures == 0 && s.total.allocated.current == 0 && s.total.blocks.current == 0 &&
          mem_stats().total_current == m0.total_current && s.total.reserved.current == d.used,
          "failures %d allocated %zu", failures, s.total.allocated.current);
    devcache_destroy(a);
    CHECK("threads: device empty after destroy", d.used == 0, "holds %zu", d.used);
}

static void test_destroy_with_leaks(void) {
    FakeDevice d;
    DevCache *a = fake_cache(&d, 1024 * MiB);
    MemStats m0 = mem_stats();
    must_alloc(a, MEM_GRADS, 100);
    must_alloc(a, MEM_GRADS, 30 * MiB);
    void *p = must_alloc(a, MEM_OPTIM, 100);
    devcache_free(a, p);
    size_t leaked = devcache_destroy(a);
    CHECK("destroy: reports blocks never freed, releases their charges and every segment",
          leaked == 2 && d.used == 0 && mem_stats().total_current == m0.total_current,
          "leaked %zu device holds %zu", leaked, d.used);
}

int main(void) {
    test_rounding_and_stats();
    test_reuse_split_merge();
    test_large_pool();
    test_retry_and_device_oom();
    test_budget();
    test_random();
    test_threads();
    test_destroy_with_leaks();
    return test_finish();
}
