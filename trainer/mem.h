/* mem.h - byte accounting by category, with an optional budget (--mem-limit).
 *
 * Every allocation the trainer makes (on the CPU or, later, on the GPU) is charged to one
 * category. Current and peak bytes are kept per category and in total. When a budget is set,
 * a charge that would exceed it fails: mem_charge() prints what was requested, the budget and
 * the use per category, and exits with EXIT_OOM (the sweep tool classifies that code as OOM).
 */
#ifndef DETR_MEM_H
#define DETR_MEM_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exit code of a process that ran out of its memory budget (or of device memory). */
#define EXIT_OOM 3

typedef enum {
    MEM_PARAMS = 0,  /* weights, trainable and frozen (FrozenBN buffers included) */
    MEM_GRADS,       /* parameter gradients */
    MEM_OPTIM,       /* AdamW first/second moments */
    MEM_ACTS,        /* activations saved for backward, and activation gradients */
    MEM_WORKSPACE,   /* scratch: im2col columns, temporaries */
    MEM_INPUTS,      /* input batches (images, masks, targets) */
    MEM_NCAT
} MemCategory;

typedef struct {
    size_t current[MEM_NCAT];
    size_t peak[MEM_NCAT];
    size_t total_current;
    size_t total_peak;
    size_t limit;          /* 0 = no budget */
    size_t failed_request; /* bytes of the last refused request, 0 if none */
} MemStats;

const char *mem_category_name(MemCategory c);

/* Budget in bytes; 0 disables it. */
void mem_set_limit(size_t bytes);
/* When set (the default), a refused charge prints the report and exits with EXIT_OOM.
 * Tests turn it off to observe the refusal: mem_charge() then returns -1. */
void mem_set_exit_on_oom(int on);

/* Charge / release bytes to a category. Returns 0, or -1 when refused (exit_on_oom off). */
int mem_charge(MemCategory c, size_t bytes);
void mem_release(MemCategory c, size_t bytes);

MemStats mem_stats(void);
void mem_reset_peaks(void);
/* Prints "category: current (peak)" lines for every category to f (a FILE*). */
void mem_print_report(void *file);
/* Parses "123", "512K", "64M", "2G" (powers of 1024) into bytes; returns 0 on success. */
int mem_parse_size(const char *s, size_t *out);

/* Host allocation, 64-byte aligned, charged to a category. Never returns NULL:
 * budget or malloc failure -> report + exit(EXIT_OOM) (or NULL when exit_on_oom is off). */
void *host_alloc(MemCategory c, size_t bytes);
void host_free(void *p);

#ifdef __cplusplus
}
#endif
#endif
