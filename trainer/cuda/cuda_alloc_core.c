/* cuda_alloc_core.c - the caching device allocator (see cuda_alloc_core.h for the design).
 * Written in the common subset of C11 and C++17: backend_cuda.cu compiles it with nvcc, the CPU
 * test with gcc. Addresses are kept as uintptr_t and never dereferenced. */
#include "cuda_alloc_core.h"
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A piece of a segment: handed out (live) or cached (free). The blocks of one segment form an
 * address-ordered list (seg_prev/seg_next); its first block ("head") lives as long as the segment,
 * since merging always keeps the left block. */
typedef struct Block {
    uintptr_t addr;
    size_t size;      /* bytes of the segment this block covers */
    size_t rounded;   /* live: bytes charged (request rounded to DEVCACHE_ROUND) */
    size_t requested; /* live: bytes the caller asked for */
    int cat;          /* MemCategory of the pool that owns the segment */
    int large;        /* 0: small pool, 1: large pool */
    int live;
    size_t seg_size;  /* head only: the segment's size */
    struct Block *seg_prev, *seg_next;   /* neighbours in the segment */
    struct Block *free_prev, *free_next; /* pool's free list, ascending (size, addr) */
    struct Block *hash_next;             /* live-block table chain */
    struct Block *heads_prev, *heads_next; /* head only: the list of all segments */
} Block;

struct DevCache {
    pthread_mutex_t lock;
    DevCacheRaw raw;
    Block *free_lists[MEM_NCAT][2]; /* per category, small (0) and large (1) pool */
    Block *heads;                   /* every segment's head block */
    Block **table;                  /* live blocks by address; table_cap is a power of two */
    size_t table_cap, table_count;
    DevCacheStats st;
};

/* ---- statistics -------------------------------------------------------------------------- */

static void stat_add(DevCacheStat *s, size_t n) {
    s->current += n;
    if (s->current > s->peak) s->peak = s->current;
}

static void stat_sub(DevCacheStat *s, size_t n) { s->current -= n; }

/* Applies f(stat, n) to one field of category c and of the total. */
#define STAT_BOTH(a, c, field, fn, n)           \
    do {                                        \
        fn(&(a)->st.cat[(c)].field, (n));       \
        fn(&(a)->st.total.field, (n));          \
    } while (0)

/* ---- live-block table (chained hash on the address) -------------------------------------- */

static size_t slot_of(const DevCache *a, uintptr_t addr) {
    uint64_t h = (uint64_t)(addr / DEVCACHE_ROUND) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (a->table_cap - 1);
}

/* Returns 0, or -1 when the table cannot grow (host out of memory). */
static int table_grow_if_needed(DevCache *a) {
    if (a->table_count + 1 <= a->table_cap / 4 * 3) return 0;
    size_t old_cap = a->table_cap, cap = old_cap ? old_cap * 2 : 256;
    Block **old = a->table, **fresh = (Block **)calloc(cap, sizeof(Block *));
    if (!fresh) return -1;
    a->table = fresh;
    a->table_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        for (Block *b = old[i], *next; b; b = next) {
            next = b->hash_next;
            size_t s = slot_of(a, b->addr);
            b->hash_next = a->table[s];
            a->table[s] = b;
        }
    free(old);
    return 0;
}

static void table_insert(DevCache *a, Block *b) { /* after table_grow_if_needed */
    size_t s = slot_of(a, b->addr);
    b->hash_next = a->table[s];
    a->table[s] = b;
    a->table_count++;
}

static Block *table_find(const DevCache *a, uintptr_t addr) {
    if (!a->table_cap) return NULL;
    for (Block *b = a->table[slot_of(a, addr)]; b; b = b->hash_next)
        if (b->addr == addr) return b;
    return NULL;
}

static Block *table_remove(DevCache *a, uintptr_t addr) {
    if (!a->table_cap) return NULL;
    for (Block **pp = &a->table[slot_of(a, addr)]; *pp; pp = &(*pp)->hash_next)
        if ((*pp)->addr == addr) {
            Block *b = *pp;
            *pp = b->hash_next;
            b->hash_next = NULL;
            a->table_count--;
            return b;
        }
    return NULL;
}

/* ---- free lists --------------------------------------------------------------------------- */

static int block_before(const Block *x, const Block *y) {
    return x->size < y->size || (x->size == y->size && x->addr < y->addr);
}

static void free_insert(DevCache *a, Block *b) {
    Block **head = &a->free_lists[b->cat][b->large];
    Block *prev = NULL, *cur = *head;
    while (cur && block_before(cur, b)) {
        prev = cur;
        cur = cur->free_next;
    }
    b->free_prev = prev;
    b->free_next = cur;
    if (cur) cur->free_prev = b;
    if (prev) prev->free_next = b;
    else *head = b;
}

static void free_remove(DevCache *a, Block *b) {
    if (b->free_prev) b->free_prev->free_next = b->free_next;
    else a->free_lists[b->cat][b->large] = b->free_next;
    if (b->free_next) b->free_next->free_prev = b->free_prev;
    b->free_prev = b->free_next = NULL;
}

/* The smallest cached block of the pool that holds `bytes` (lowest address on ties), or NULL. */
static Block *best_fit(DevCache *a, int cat, int large, size_t bytes) {
    for (Block *b = a->free_lists[cat][large]; b; b = b->free_next)
        if (b->size >= bytes) return b;
    return NULL;
}

/* ---- segments ----------------------------------------------------------------------------- */

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* The segment size the pool asks the raw allocator for, for a block of `rounded` bytes. */
static size_t segment_size_for(size_t rounded, int large) {
    if (!large) return DEVCACHE_SMALL_SEGMENT;
    if (rounded < DEVCACHE_LARGE_SEGMENT_BELOW) return DEVCACHE_LARGE_SEGMENT;
    return round_up(rounded, DEVCACHE_LARGE_ROUND);
}

/* Raw allocation under the budget's cap on reserved bytes; NULL on failure, *capped set when
 * the cap (not the device) refused it. */
static void *raw_alloc_capped(DevCache *a, size_t bytes, int *capped) {
    size_t limit = mem_stats().limit;
    *capped = 0;
    if (limit && (bytes > limit || a->st.total.reserved.current > limit - bytes)) {
        *capped = 1;
        return NULL;
    }
    return a->raw.raw_alloc(a->raw.ctx, bytes);
}

static void release_segment(DevCache *a, Block *head) {
    if (head->heads_prev) head->heads_prev->heads_next = head->heads_next;
    else a->heads = head->heads_next;
    if (head->heads_next) head->heads_next->heads_prev = head->heads_prev;
    a->raw.raw_free(a->raw.ctx, (void *)head->addr);
    STAT_BOTH(a, head->cat, reserved, stat_sub, head->seg_size);
    STAT_BOTH(a, head->cat, segments, stat_sub, 1);
    a->st.cat[head->cat].num_raw_frees++;
    a->st.total.num_raw_frees++;
    free(head);
}

static size_t empty_cache_locked(DevCache *a) {
    size_t released = 0;
    for (Block *h = a->heads, *next; h; h = next) {
        next = h->heads_next;
        if (!h->live && !h->seg_next) { /* one free block covers the whole segment */
            free_remove(a, h);
            released += h->seg_size;
            release_segment(a, h);
        }
    }
    return released;
}

/* A new segment for a block of `rounded` bytes, as one free block (not in any free list).
 * On failure returns NULL with oom's status, segment and reserve_capped filled. */
static Block *new_segment(DevCache *a, int cat, int large, size_t rounded, DevCacheOom *oom) {
    Block *head = (Block *)calloc(1, sizeof(Block));
    if (!head) {
        oom->status = DEVCACHE_OOM_HOST;
        return NULL;
    }
    size_t seg = segment_size_for(rounded, large);
    int capped = 0;
    void *p = raw_alloc_capped(a, seg, &capped);
    if (!p) { /* release every cached segment and try once more (counted as a retry) */
        empty_cache_locked(a);
        a->st.cat[cat].num_alloc_retries++;
        a->st.total.num_alloc_retries++;
        p = raw_alloc_capped(a, seg, &capped);
    }
    if (!p && seg > rounded) { /* the pool's usual segment is too big: one of the block's size */
        seg = rounded;
        p = raw_alloc_capped(a, seg, &capped);
    }
    if (!p) {
        free(head);
        oom->status = DEVCACHE_OOM_DEVICE;
        oom->segment = seg; /* the last (smallest) size tried */
        oom->reserve_capped = capped;
        return NULL;
    }
    head->addr = (uintptr_t)p;
    head->size = head->seg_size = seg;
    head->cat = cat;
    head->large = large;
    head->heads_next = a->heads;
    if (a->heads) a->heads->heads_prev = head;
    a->heads = head;
    STAT_BOTH(a, cat, reserved, stat_add, seg);
    STAT_BOTH(a, cat, segments, stat_add, 1);
    a->st.cat[cat].num_raw_allocs++;
    a->st.total.num_raw_allocs++;
    return head;
}

/* Cuts b (free, in no list) to `bytes` when the rest is worth caching; the rest joins the free
 * list. Returns -1 when the host has no memory for the new block (b is then left whole). */
static int split_block(DevCache *a, Block *b, size_t bytes) {
    size_t rest = b->size - bytes;
    int worth = b->large ? rest > DEVCACHE_SMALL_MAX : rest >= DEVCACHE_ROUND;
    if (!worth) return 0;
    Block *r = (Block *)calloc(1, sizeof(Block));
    if (!r) return -1;
    r->addr = b->addr + bytes;
    r->size = rest;
    r->cat = b->cat;
    r->large = b->large;
    r->seg_prev = b;
    r->seg_next = b->seg_next;
    if (b->seg_next) b->seg_next->seg_prev = r;
    b->seg_next = r;
    b->size = bytes;
    free_insert(a, r);
    return 0;
}

/* Merges free block b (in no list) with its free neighbours and caches the result. */
static void cache_block(DevCache *a, Block *b) {
    Block *n = b->seg_next;
    if (n && !n->live) {
        free_remove(a, n);
        b->size += n->size;
        b->seg_next = n->seg_next;
        if (n->seg_next) n->seg_next->seg_prev = b;
        free(n);
    }
    Block *p = b->seg_prev;
    if (p && !p->live) {
        free_remove(a, p);
        p->size += b->size;
        p->seg_next = b->seg_next;
        if (b->seg_next) b->seg_next->seg_prev = p;
        free(b);
        b = p;
    }
    free_insert(a, b);
}

/* ---- API ---------------------------------------------------------------------------------- */

DevCache *devcache_create(const DevCacheRaw *raw) {
    DevCache *a = (DevCache *)calloc(1, sizeof(DevCache));
    if (!a) return NULL;
    if (pthread_mutex_init(&a->lock, NULL) != 0) {
        free(a);
        return NULL;
    }
    a->raw = *raw;
    return a;
}

size_t devcache_destroy(DevCache *a) {
    if (!a) return 0;
    size_t leaked = 0;
    pthread_mutex_lock(&a->lock);
    while (a->heads) {
        Block *head = a->heads;
        for (Block *b = head->seg_next, *next; b; b = next) { /* all but the head */
            next = b->seg_next;
            if (b->live) {
                leaked++;
                table_remove(a, b->addr);
                mem_release((MemCategory)b->cat, b->rounded);
            }
            free(b);
        }
        if (head->live) {
            leaked++;
            table_remove(a, head->addr);
            mem_release((MemCategory)head->cat, head->rounded);
        }
        head->seg_next = NULL;
        release_segment(a, head);
    }
    free(a->table);
    pthread_mutex_unlock(&a->lock);
    pthread_mutex_destroy(&a->lock);
    free(a);
    return leaked;
}

DevCacheStatus devcache_alloc(DevCache *a, MemCategory cat, size_t bytes, void **out,
                              DevCacheOom *oom) {
    DevCacheOom scratch;
    if (!oom) oom = &scratch;
    memset(oom, 0, sizeof(*oom));
    *out = NULL;
    int c = (int)cat;
    size_t rounded = bytes > SIZE_MAX - DEVCACHE_ROUND ? SIZE_MAX : round_up(bytes ? bytes : 1, DEVCACHE_ROUND);
    int large = rounded > DEVCACHE_SMALL_MAX;
    oom->cat = cat;
    oom->requested = bytes;
    oom->rounded = rounded;

    pthread_mutex_lock(&a->lock);
    MemStats ms = mem_stats();
    oom->limit = ms.limit;
    oom->budget_used = ms.total_current;
    Block *b = NULL;
    if (rounded == SIZE_MAX) {
        oom->status = DEVCACHE_OOM_DEVICE; /* no device has SIZE_MAX bytes */
        oom->segment = rounded;
    } else if (ms.limit && (rounded > ms.limit || ms.total_current > ms.limit - rounded)) {
        oom->status = DEVCACHE_OOM_BUDGET;
    } else if (table_grow_if_needed(a) != 0) {
        oom->status = DEVCACHE_OOM_HOST;
    } else {
        b = best_fit(a, c, large, rounded);
        if (b) free_remove(a, b);
        else b = new_segment(a, c, large, rounded, oom);
    }
    if (b && split_block(a, b, rounded) != 0) {
        cache_block(a, b);
        b = NULL;
        oom->status = DEVCACHE_OOM_HOST;
    }
    /* mem.h is the budget's authority: another thread may have charged since the check above
     * (with exit_on_oom on, mem_charge reports and exits here) */
    if (b && mem_charge(cat, rounded) != 0) {
        cache_block(a, b);
        b = NULL;
        oom->status = DEVCACHE_OOM_BUDGET;
        oom->budget_used = mem_stats().total_current;
    }
    if (!b) {
        a->st.cat[c].num_ooms++;
        a->st.total.num_ooms++;
        pthread_mutex_unlock(&a->lock);
        return oom->status;
    }
    b->live = 1;
    b->rounded = rounded;
    b->requested = bytes;
    table_insert(a, b);
    STAT_BOTH(a, c, allocated, stat_add, rounded);
    STAT_BOTH(a, c, requested, stat_add, bytes);
    STAT_BOTH(a, c, blocks, stat_add, 1);
    pthread_mutex_unlock(&a->lock);
    *out = (void *)b->addr;
    oom->status = DEVCACHE_OK;
    return DEVCACHE_OK;
}

int devcache_free(DevCache *a, void *p) {
    pthread_mutex_lock(&a->lock);
    Block *b = table_remove(a, (uintptr_t)p);
    if (!b) {
        pthread_mutex_unlock(&a->lock);
        return -1;
    }
    mem_release((MemCategory)b->cat, b->rounded);
    STAT_BOTH(a, b->cat, allocated, stat_sub, b->rounded);
    STAT_BOTH(a, b->cat, requested, stat_sub, b->requested);
    STAT_BOTH(a, b->cat, blocks, stat_sub, 1);
    b->live = 0;
    b->rounded = b->requested = 0;
    cache_block(a, b);
    pthread_mutex_unlock(&a->lock);
    return 0;
}

size_t devcache_block_size(DevCache *a, const void *p, MemCategory *cat) {
    pthread_mutex_lock(&a->lock);
    Block *b = table_find(a, (uintptr_t)p);
    size_t n = b ? b->rounded : 0;
    if (b && cat) *cat = (MemCategory)b->cat;
    pthread_mutex_unlock(&a->lock);
    return n;
}

size_t devcache_empty_cache(DevCache *a) {
    pthread_mutex_lock(&a->lock);
    size_t n = empty_cache_locked(a);
    pthread_mutex_unlock(&a->lock);
    return n;
}

DevCacheStats devcache_stats(DevCache *a) {
    pthread_mutex_lock(&a->lock);
    DevCacheStats s = a->st;
    pthread_mutex_unlock(&a->lock);
    return s;
}

static void reset_peaks(DevCacheCategoryStats *s) {
    s->allocated.peak = s->allocated.current;
    s->reserved.peak = s->reserved.current;
    s->requested.peak = s->requested.current;
    s->blocks.peak = s->blocks.current;
    s->segments.peak = s->segments.current;
}

void devcache_reset_peaks(DevCache *a) {
    pthread_mutex_lock(&a->lock);
    for (int c = 0; c < MEM_NCAT; c++) reset_peaks(&a->st.cat[c]);
    reset_peaks(&a->st.total);
    pthread_mutex_unlock(&a->lock);
}

size_t devcache_live_blocks(DevCache *a) {
    pthread_mutex_lock(&a->lock);
    size_t n = a->table_count;
    pthread_mutex_unlock(&a->lock);
    return n;
}

/* ---- reports ------------------------------------------------------------------------------ */

/* "20.00 MiB" style, as PyTorch prints sizes. */
static const char *human(char *buf, size_t len, size_t bytes) {
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%zu bytes", bytes);
    else snprintf(buf, len, "%.2f %s", v, units[u]);
    return buf;
}

static void print_table(FILE *f, const DevCacheStats *s) {
    fprintf(f, "  %-12s %23s %23s %23s %7s %5s\n", "category", "allocated (peak)", "reserved (peak)",
            "requested (peak)", "retries", "OOMs");
    for (int c = 0; c <= MEM_NCAT; c++) {
        const DevCacheCategoryStats *x = c < MEM_NCAT ? &s->cat[c] : &s->total;
        char b[6][32], col[3][64];
        snprintf(col[0], sizeof(col[0]), "%s (%s)", human(b[0], 32, x->allocated.current),
                 human(b[1], 32, x->allocated.peak));
        snprintf(col[1], sizeof(col[1]), "%s (%s)", human(b[2], 32, x->reserved.current),
                 human(b[3], 32, x->reserved.peak));
        snprintf(col[2], sizeof(col[2]), "%s (%s)", human(b[4], 32, x->requested.current),
                 human(b[5], 32, x->requested.peak));
        fprintf(f, "  %-12s %23s %23s %23s %7zu %5zu\n",
                c < MEM_NCAT ? mem_category_name((MemCategory)c) : "total", col[0], col[1], col[2],
                x->num_alloc_retries, x->num_ooms);
    }
}

void devcache_print_stats(DevCache *a, FILE *f) {
    DevCacheStats s = devcache_stats(a);
    print_table(f, &s);
}

void devcache_print_oom(DevCache *a, FILE *f, const DevCacheOom *oom, int device,
                        const char *device_name, size_t device_total, size_t device_free) {
    DevCacheStats s = devcache_stats(a);
    char h1[32], h2[32], h3[32], h4[32];
    const char *cat = mem_category_name(oom->cat);
    fprintf(f, "error: out of %s: tried to allocate %s (%zu bytes, %zu requested) for %s.",
            oom->status == DEVCACHE_OOM_BUDGET ? "the memory budget (--mem-limit)"
            : oom->status == DEVCACHE_OOM_HOST ? "host memory for the GPU allocator's bookkeeping"
                                               : "GPU memory",
            human(h1, 32, oom->rounded), oom->rounded, oom->requested, cat);
    if (device_total)
        fprintf(f, " GPU %d%s%s%s has a total capacity of %s of which %s is free.", device,
                device_name ? " (" : "", device_name ? device_name : "", device_name ? ")" : "",
                human(h2, 32, device_total), human(h3, 32, device_free));
    size_t reserved = s.total.reserved.current, allocated = s.total.allocated.current;
    fprintf(f, " This process has %s reserved by the caching allocator: %s allocated and %s "
            "reserved but unallocated.\n", human(h2, 32, reserved), human(h3, 32, allocated),
            human(h4, 32, reserved - allocated));
    if (oom->status == DEVCACHE_OOM_BUDGET)
        fprintf(f, "The budget (--mem-limit) is %s (%zu bytes) and %s (%zu bytes) of it is in use "
                "(every category, host and GPU), so %s more does not fit.\n",
                human(h1, 32, oom->limit), oom->limit, human(h2, 32, oom->budget_used),
                oom->budget_used, human(h3, 32, oom->rounded));
    else if (oom->status == DEVCACHE_OOM_DEVICE && oom->reserve_capped)
        fprintf(f, "A new segment of %s would take the reserved bytes over the budget (--mem-limit) "
                "of %s, which caps them like a GPU of that size; the cached free blocks were "
                "released and the allocation retried once.\n",
                human(h1, 32, oom->segment), human(h2, 32, oom->limit));
    else if (oom->status == DEVCACHE_OOM_DEVICE)
        fprintf(f, "The GPU refused a new segment of %s; the cached free blocks were released and "
                "the allocation retried once.\n", human(h1, 32, oom->segment));
    fprintf(f, "By category (current and peak since start; retries: cache released and tried "
            "again):\n");
    print_table(f, &s);
    if (oom->status == DEVCACHE_OOM_HOST)
        fprintf(f, "HINT: the host is out of memory; close other programs or lower --batch.\n");
    else
        fprintf(f, "HINT: lower --batch or the image size (detr-prof sweep finds what fits)%s. "
                "If reserved but unallocated is large, the cache is fragmented across categories "
                "and sizes.\n",
                oom->status == DEVCACHE_OOM_BUDGET || oom->reserve_capped
                    ? ", or raise --mem-limit"
                    : ", or free the GPU from other processes (nvidia-smi)");
}
