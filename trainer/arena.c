/* arena.c - see arena.h */
#include "arena.h"
#include <stdlib.h>

typedef struct Chunk {
    uint8_t *base;
    size_t size, used;
} Chunk;

struct Arena {
    const Backend *be;
    MemCategory cat;
    Chunk *chunks;
    int nchunks, cap;
    size_t high_water; /* bytes used in the largest step so far */
};

#define ARENA_ALIGN 64
#define ARENA_MIN_CHUNK ((size_t)1 << 20)

Arena *arena_create(const Backend *be, MemCategory cat) {
    Arena *a = calloc(1, sizeof(Arena));
    if (!a) abort();
    a->be = be;
    a->cat = cat;
    return a;
}

static void free_chunks(Arena *a) {
    for (int i = 0; i < a->nchunks; i++) a->be->free_bytes(a->chunks[i].base);
    a->nchunks = 0;
}

void arena_destroy(Arena *a) {
    if (!a) return;
    free_chunks(a);
    free(a->chunks);
    free(a);
}

static void add_chunk(Arena *a, size_t size) {
    if (a->nchunks == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 4;
        a->chunks = realloc(a->chunks, (size_t)a->cap * sizeof(Chunk));
        if (!a->chunks) abort();
    }
    Chunk *c = &a->chunks[a->nchunks++];
    c->base = a->be->alloc_bytes(a->cat, size);
    c->size = size;
    c->used = 0;
}

void *arena_alloc_bytes(Arena *a, size_t bytes) {
    bytes = (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (bytes == 0) bytes = ARENA_ALIGN;
    Chunk *c = a->nchunks ? &a->chunks[a->nchunks - 1] : NULL;
    if (!c || c->used + bytes > c->size) {
        size_t size = bytes > ARENA_MIN_CHUNK ? bytes : ARENA_MIN_CHUNK;
        if (!c && a->high_water > size) size = a->high_water;
        add_chunk(a, size);
        c = &a->chunks[a->nchunks - 1];
    }
    void *p = c->base + c->used;
    c->used += bytes;
    return p;
}

float *arena_alloc(Arena *a, size_t nfloats) { return arena_alloc_bytes(a, nfloats * sizeof(float)); }

float *arena_zeros(Arena *a, size_t nfloats) {
    float *p = arena_alloc(a, nfloats);
    a->be->fill(p, 0.0f, nfloats);
    return p;
}

size_t arena_used_bytes(const Arena *a) {
    size_t u = 0;
    for (int i = 0; i < a->nchunks; i++) u += a->chunks[i].used;
    return u;
}

int arena_chunk_count(const Arena *a) { return a->nchunks; }

size_t arena_reserved_bytes(const Arena *a) {
    size_t r = 0;
    for (int i = 0; i < a->nchunks; i++) r += a->chunks[i].size;
    return r;
}

void arena_reset(Arena *a) {
    size_t used = arena_used_bytes(a);
    if (used > a->high_water) a->high_water = used;
    if (a->nchunks > 1) {
        free_chunks(a); /* next step allocates one chunk of high_water bytes */
    } else if (a->nchunks == 1) {
        a->chunks[0].used = 0;
        if (a->chunks[0].size < a->high_water) free_chunks(a);
    }
}
