/* prof_gpu_records.h - GPU activity records on the CPU side, independent of CUPTI: the kernels,
 * copies, memsets, runtime API calls, synchronizations and external correlations that
 * prof_cupti.c converts CUPTI's records into, and their way into the profile database.
 *
 * Flow: a ProfGpuCollector receives activity records (one CUPTI buffer at a time: first the
 * buffer's external-correlation records, then the rest, as CUPTI may put a kernel's correlation in
 * the same buffer after it). It attributes each kernel, copy and memset to the step and phase that
 * were on the CUSTOM0 external-correlation stack when the launching API call was made (see
 * prof_gpu_external_id), adds it to per-(step, phase) aggregates, and keeps the raw record when
 * rows are wanted (--profile=trace, in a traced step). prof_gpu_collector_submit hands what it
 * gathered to the profiler's queue as one record; the writer thread writes the nsys-compatible
 * tables (CUPTI_ACTIVITY_KIND_*), DETR_GPU_CORRELATION and DETR_GPU_STEPS (docs/gpu-profiling.md).
 *
 * Nothing here calls CUDA, so the whole path is tested on the CPU with synthetic records
 * (tests/unit/test_prof_gpu.c). */
#ifndef DETR_PROF_GPU_RECORDS_H
#define DETR_PROF_GPU_RECORDS_H
#include <stdint.h>
#include "prof.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    PROF_GPU_KERNEL = 1,   /* CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL */
    PROF_GPU_MEMCPY,       /* CUPTI_ACTIVITY_KIND_MEMCPY */
    PROF_GPU_MEMSET,       /* CUPTI_ACTIVITY_KIND_MEMSET */
    PROF_GPU_RUNTIME,      /* CUPTI_ACTIVITY_KIND_RUNTIME: a CUDA runtime API call */
    PROF_GPU_SYNC,         /* CUPTI_ACTIVITY_KIND_SYNCHRONIZATION */
    PROF_GPU_EXTERNAL      /* CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION */
} ProfGpuKind;

/* nsys's ENUM_CUDA_MEM_KIND ids (profiling.md §1.4); CUPTI numbers them differently, see
 * prof_gpu_mem_kind_from_cupti. */
enum { PROF_GPU_MEM_UNKNOWN = 7 };

/* One activity record. Times are ns on CUPTI's clock (CLOCK_REALTIME by default on Linux, the
 * clock of prof_now_ns). Strings are copied by the collector. */
typedef struct {
    ProfGpuKind kind;
    int64_t start, end;
    uint32_t device_id, context_id, stream_id;
    uint32_t correlation_id; /* shared by an API call and the GPU work it launched */
    union {
        struct {
            int32_t grid_x, grid_y, grid_z, block_x, block_y, block_z;
            int32_t registers_per_thread, static_shared_memory, dynamic_shared_memory;
            int32_t local_memory_per_thread, launch_type, cache_config;
            int32_t shared_memory_executed, shared_memory_limit_config;
            int64_t local_memory_total, grid_id;
            int64_t graph_node_id;  /* 0: not launched from a graph (stored as NULL) */
            const char *name;       /* as CUPTI gives it: mangled for C++ kernels */
            const char *demangled;  /* NULL: name is already readable */
        } kernel;
        struct {
            int64_t bytes;
            int32_t copy_kind;      /* ENUM_CUDA_MEMCPY_OPER id (= CUPTI's memcpy kind) */
            int32_t src_kind, dst_kind; /* ENUM_CUDA_MEM_KIND ids */
            int64_t graph_node_id;
        } copy;
        struct {
            int64_t bytes;
            uint32_t value;
            int32_t mem_kind;       /* ENUM_CUDA_MEM_KIND id */
            int64_t graph_node_id;
        } set;
        struct {
            int64_t global_tid;     /* (pid << 24) | tid of the calling thread */
            int32_t return_value;
            const char *name;       /* e.g. "cudaLaunchKernel_v7000" (CUPTI's callback name) */
        } runtime;
        struct {
            int32_t sync_type;      /* ENUM_CUPTI_SYNC_TYPE id (= CUPTI's type) */
            int64_t event_id;       /* -1: none */
        } sync;
        struct {
            int32_t external_kind;  /* CUPTI_EXTERNAL_CORRELATION_KIND_* (CUSTOM0 = 3) */
            uint64_t external_id;
        } external;
    } u;
} ProfGpuActivity;

#define PROF_GPU_EXTERNAL_KIND_CUSTOM0 3 /* CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0 */

/* The external correlation id pushed for a phase range: step and phase in one 64-bit id.
 * step -1 = outside any step. decode returns 0, or -1 for an id that no phase gives. */
uint64_t prof_gpu_external_id(int64_t step, int phase);
int prof_gpu_external_decode(uint64_t id, int64_t *step, int *phase);

/* CUPTI's CUpti_ActivityMemoryKind (0 unknown, 1 pageable, 2 pinned, ...) -> ENUM_CUDA_MEM_KIND
 * (0 pageable, 1 pinned, ..., 7 unknown). */
int prof_gpu_mem_kind_from_cupti(int cupti_kind);

/* The base name of a demangled kernel name: no return type, namespace, template arguments or
 * parameters ("void ns::gemm<float, 4>(float*, int)" -> "gemm"). Writes at most n bytes. */
void prof_gpu_short_name(const char *demangled, char *out, size_t n);

/* ---- the collector ---- */

typedef struct ProfGpuCollector ProfGpuCollector;

/* keep_step(ctx, step): whether the raw rows of a step are written (the --trace-steps
 * schedule); NULL keeps every step. keep_rows 0 (--profile=basic): aggregates only. */
typedef int (*ProfGpuKeepStep)(void *ctx, int64_t step);
ProfGpuCollector *prof_gpu_collector_new(Prof *prof, int keep_rows, ProfGpuKeepStep keep_step,
                                         void *keep_ctx);
/* Adds one record (copied). Returns 0, or -1 when out of memory (the record is counted lost). */
int prof_gpu_collector_add(ProfGpuCollector *c, const ProfGpuActivity *a);
/* Queues what was added since the last submit as one profiler record. Returns the number of
 * activity records handed over (0 when there was nothing), or -1 when the queue refused them
 * (counted in DETR_RUNS.dropped_gpu_records). */
int64_t prof_gpu_collector_submit(ProfGpuCollector *c);
/* Records lost before they reached the collector (CUPTI's dropped records, buffers discarded
 * over the buffer cap): DETR_RUNS.cupti_dropped_records. */
void prof_gpu_lost(Prof *prof, int64_t n);
/* Frees the collector; records added and not submitted are discarded. */
void prof_gpu_collector_free(ProfGpuCollector *c);

/* Kernels and copies added whose launch had no CUSTOM0 correlation (launched outside every
 * phase range): the collector's running count, for diagnostics and tests. */
int64_t prof_gpu_collector_unattributed(const ProfGpuCollector *c);

#ifdef __cplusplus
}
#endif
#endif
