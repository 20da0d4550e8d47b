/* cuda_alloc_core.h - the caching device allocator's logic ("DevCache"), over an abstract raw
 * allocate/free pair: cudaMalloc/cudaFree in backend_cuda.cu, a malloc-backed fake device with a
 * byte limit in tests/unit/test_cuda_alloc.c. Plain C (also valid C++), never touches the memory
 * it manages (addresses are only numbers to it), so it is tested on the CPU.
 *
 * Design (after PyTorch's CUDACachingAllocator, simplified to one stream):
 *  - Requests are rounded up to 512 bytes. Rounded sizes up to 1 MiB come from the small pool,
 *    larger ones from the large pool; each memory category (mem.h) has its own two pools, so
 *    reserved bytes are known per category.
 *  - A pool without a fitting free block asks the raw allocator for a segment: 2 MiB for the
 *    small pool; for the large pool 20 MiB when the request is under 10 MiB, else the request
 *    rounded up to 2 MiB. The block is carved from the segment's start (split) when the rest is
 *    worth keeping (small pool: >= 512 bytes; large pool: > 1 MiB).
 *  - Freed blocks are cached: merged with free neighbours of the same segment and kept for the
 *    next request of their pool (best fit: the smallest free block that fits, lowest address on
 *    ties). Whole free segments go back to the raw allocator only in devcache_empty_cache() or
 *    when the raw allocator fails: then every cached segment is released and the raw allocation
 *    is tried once more (counted in num_alloc_retries); a second failure is an OOM (num_ooms).
 *  - Reuse is safe because every user issues its work on one stream, in order: a block freed
 *    while a kernel still reads it can only be written by work queued after that kernel.
 *  - Budget (--mem-limit, mem.h): every allocation charges its rounded size to its category with
 *    mem_charge() and releases it when freed, so mem.h's per-category bytes are exactly the
 *    allocator's "allocated". A request that would take mem.h's total over the limit is refused
 *    before anything is charged (DEVCACHE_OOM_BUDGET). The limit also caps reserved bytes: a
 *    segment that would take them over it counts as a raw allocation failure, so --mem-limit
 *    behaves like a card of that size (device OOM, after the retry).
 *  - Thread-safe (one mutex). */
#ifndef DETR_CUDA_ALLOC_CORE_H
#define DETR_CUDA_ALLOC_CORE_H
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../mem.h"

#define DEVCACHE_ROUND 512                     /* every block size is a multiple of this */
#define DEVCACHE_SMALL_MAX ((size_t)1 << 20)    /* rounded sizes up to this: the small pool */
#define DEVCACHE_SMALL_SEGMENT ((size_t)2 << 20) /* segment size of the small pool */
#define DEVCACHE_LARGE_SEGMENT ((size_t)20 << 20) /* segment for large requests under ... */
#define DEVCACHE_LARGE_SEGMENT_BELOW ((size_t)10 << 20) /* ... this many bytes */
#define DEVCACHE_LARGE_ROUND ((size_t)2 << 20)  /* larger requests: own segment, rounded to this */

/* The raw allocator: raw_alloc returns NULL when the device has no room (no other failure may
 * return: the backend's version exits on any other CUDA error). */
typedef struct {
    void *(*raw_alloc)(void *ctx, size_t bytes);
    void (*raw_free)(void *ctx, void *p);
    void *ctx;
} DevCacheRaw;

typedef struct {
    size_t current, peak;
} DevCacheStat;

/* One category's (or the total's) statistics, as torch.cuda.memory_stats() names them. */
typedef struct {
    DevCacheStat allocated; /* bytes of blocks handed out (rounded sizes) */
    DevCacheStat reserved;  /* bytes of segments held from the raw allocator */
    DevCacheStat requested; /* bytes callers asked for (before rounding) */
    DevCacheStat blocks;    /* blocks handed out */
    DevCacheStat segments;  /* segments held */
    size_t num_alloc_retries; /* raw allocation failed, cache released, tried again */
    size_t num_ooms;          /* requests refused: device out of memory or over the budget */
    size_t num_raw_allocs, num_raw_frees;
} DevCacheCategoryStats;

typedef struct {
    DevCacheCategoryStats cat[MEM_NCAT];
    DevCacheCategoryStats total;
} DevCacheStats;

typedef enum {
    DEVCACHE_OK = 0,
    DEVCACHE_OOM_BUDGET, /* the --mem-limit budget (mem.h) refused the rounded size */
    DEVCACHE_OOM_DEVICE, /* the raw allocator failed, also after releasing the cache */
    DEVCACHE_OOM_HOST,   /* no host memory for the allocator's own bookkeeping */
} DevCacheStatus;

/* What a refused request asked for, and the budget at that moment, for the OOM explanation. */
typedef struct {
    DevCacheStatus status;
    MemCategory cat;
    size_t requested, rounded;
    size_t segment;      /* raw allocation that failed (DEVCACHE_OOM_DEVICE), else 0 */
    size_t limit;        /* mem.h budget in force (0 = none) */
    size_t budget_used;  /* mem.h total in use when refused */
    int reserve_capped;  /* the device failure was the budget's cap on reserved bytes */
} DevCacheOom;

typedef struct DevCache DevCache;

/* A new allocator over `raw` (copied). NULL when the host has no memory for it. */
DevCache *devcache_create(const DevCacheRaw *raw);
/* Releases every segment. Blocks still handed out are released too (their memory is gone) and
 * their bytes released from mem.h; returns how many there were (a leak in the caller). */
size_t devcache_destroy(DevCache *a);

/* Allocates `bytes` (> 0) for `cat`. Returns DEVCACHE_OK with *out set, or a refusal with *out
 * NULL, nothing charged, and `oom` (if not NULL) filled. Never prints, never exits. */
DevCacheStatus devcache_alloc(DevCache *a, MemCategory cat, size_t bytes, void **out,
                              DevCacheOom *oom);
/* Returns p (from devcache_alloc) to the cache and releases its bytes from mem.h. Returns 0, or
 * -1 when p is not a live block of this allocator (not allocated here, or freed twice). */
int devcache_free(DevCache *a, void *p);
/* Size of the live block at p as handed out (rounded) and its category; 0 if p is not live. */
size_t devcache_block_size(DevCache *a, const void *p, MemCategory *cat);

/* Releases every whole free segment to the raw allocator (torch.cuda.empty_cache()). Returns the
 * bytes released. */
size_t devcache_empty_cache(DevCache *a);

DevCacheStats devcache_stats(DevCache *a);
/* Peaks := current values (torch.cuda.reset_peak_memory_stats()). */
void devcache_reset_peaks(DevCache *a);
/* Blocks handed out and not yet freed. */
size_t devcache_live_blocks(DevCache *a);

/* Prints the PyTorch-style explanation of a refusal to f:
 *   error: out of GPU memory: tried to allocate 20.00 MiB (20971520 bytes, 20971520 requested)
 *   for activations. GPU 0 (NAME) has a total capacity of 79.19 GiB of which 12.00 MiB is free.
 *   This process has 78.00 GiB reserved by the caching allocator: 77.50 GiB allocated and
 *   512.00 MiB reserved but unallocated (cached free blocks; the cache was released and the
 *   allocation retried once). ...
 * then one line per category (allocated, reserved, requested, peaks, retries, OOMs), the budget
 * and a HINT. device_total/device_free: the card's (cudaMemGetInfo), 0/0 when unknown;
 * device_name may be NULL. */
void devcache_print_oom(DevCache *a, FILE *f, const DevCacheOom *oom, int device,
                        const char *device_name, size_t device_total, size_t device_free);
/* One line per category plus the total: allocated, reserved, requested (current and peak),
 * retries and OOMs. */
void devcache_print_stats(DevCache *a, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
