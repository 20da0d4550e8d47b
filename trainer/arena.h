/* arena.h - bump allocator over backend memory for per-step buffers (activations, their
 * gradients, temporaries). arena_reset() releases everything at once; if a step needed more
 * than one chunk, the next step gets a single chunk of the combined size, so after the first
 * step of a given shape there is exactly one backend allocation. The arena may be reset more
 * often than once per step (the backbone's recomputation scratch is reset per block): it then
 * settles to one chunk of the largest need between two resets, not of their sum. */
#ifndef DETR_ARENA_H
#define DETR_ARENA_H
#include <stddef.h>
#include <stdint.h>
#include "backend.h"

typedef struct Arena Arena;

Arena *arena_create(const Backend *be, MemCategory cat);
void arena_destroy(Arena *a);
/* n floats, 64-byte aligned, contents undefined */
float *arena_alloc(Arena *a, size_t nfloats);
/* n floats set to zero */
float *arena_zeros(Arena *a, size_t nfloats);
/* raw bytes (e.g. uint8 masks, int32 indices), 64-byte aligned */
void *arena_alloc_bytes(Arena *a, size_t bytes);
void arena_reset(Arena *a);
size_t arena_used_bytes(const Arena *a);
/* Backend allocations the arena holds now (1 in the steady state, 0 before first use), and their
 * total size in bytes. */
int arena_chunk_count(const Arena *a);
size_t arena_reserved_bytes(const Arena *a);

#endif
