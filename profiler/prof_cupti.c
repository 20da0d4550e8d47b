/* prof_cupti.c - see prof_cupti.h: the CUPTI Activity API glue. CUDA builds only.
 *
 * Threads: the phase hooks run on the training thread (push/pop of the external correlation id,
 * per thread in CUPTI). CUPTI calls buffer_completed on its own worker thread or on the thread
 * that flushes; g.mu serialises the conversion (collector, demangling cache). The dropped-record
 * query runs outside g.mu (Kineto saw a lock-order deadlock when calling it under its lock).
 *
 * NOT YET RUN ON A GPU: compiled against the CUDA 13 headers; the conversion path after
 * cuptiActivityGetNextRecord is tested on the CPU through prof_gpu_records (test_prof_gpu). */
#ifdef DETR_CUDA
#include "prof_cupti.h"
#include "prof_nvml.h"
#include <cuda_runtime_api.h>
#include <cupti.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "prof_gpu_records.h"

/* libstdc++'s demangler (linked in CUDA builds), C-callable. */
extern char *__cxa_demangle(const char *mangled, char *out, size_t *len, int *status);

#define BUFFER_BYTES ((size_t)4 << 20)            /* Kineto's kBufSize */
#define MAX_BUFFERS (1 + (128 << 20) / (4 << 20)) /* Kineto's default cap: 128 MiB + 1 */
#define BUFFER_ALIGN 8                             /* CUPTI requires 8-byte aligned buffers */
#define BUFFER_REJECT_MIN_API 27                   /* rejecting a buffer is safe from CUPTI API 27 */
#define DEMANGLE_CACHE 1024

typedef struct {
    const char *mangled; /* CUPTI's pointer: shared by every record of one kernel */
    char *demangled;     /* malloc'd by __cxa_demangle, or NULL when not mangled */
} DemangleEntry;

static struct {
    pthread_mutex_t mu;
    int running;
    int trace;
    int has_schedule;
    ProfSchedule sched;
    _Atomic int64_t first_step;       /* the schedule counts from the run's first step; -1 = not yet */
    int runtime_on;                   /* RUNTIME/SYNCHRONIZATION enabled (trace schedule) */
    Prof *prof;
    ProfGpuCollector *collector;
    CUpti_SubscriberHandle subscriber;
    uint32_t api_version;
    _Atomic int outstanding;          /* buffers handed to CUPTI and not returned */
    _Atomic int64_t over_cap_records; /* records in buffers discarded over the cap */
    int64_t pid;
    int64_t device_used_peak;
    ProfNvml *nvml;                   /* GPU utilisation per step; NULL: NVML unavailable */
    DemangleEntry demangle[DEMANGLE_CACHE];
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

static const char *result_string(CUptiResult r) {
    const char *s = NULL;
    if (cuptiGetResultString(r, &s) != CUPTI_SUCCESS || !s) s = "unknown CUPTI error";
    return s;
}

/* ---- phase hooks: the step and phase as CUSTOM0 external correlation id ---- */

static void hook_push(int64_t step, int phase) {
    cuptiActivityPushExternalCorrelationId(CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0,
                                           prof_gpu_external_id(step, phase));
}

static void hook_pop(void) {
    uint64_t last;
    cuptiActivityPopExternalCorrelationId(CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0, &last);
}

static const ProfPhaseHooks phase_hooks = {hook_push, hook_pop};

/* ---- schedule ---- */

static int keep_step(void *ctx, int64_t step) {
    (void)ctx;
    if (!g.has_schedule) return 1;
    int64_t first = atomic_load(&g.first_step);
    if (first < 0 || step < first) return 0;
    ProfScheduleAction a = prof_schedule_action(&g.sched, step - first);
    return a == PROF_SCHED_RECORD || a == PROF_SCHED_RECORD_AND_SAVE;
}

/* ---- buffers ---- */

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *max_records = 0; /* fill the buffer */
    if (atomic_load(&g.outstanding) >= MAX_BUFFERS && g.api_version >= BUFFER_REJECT_MIN_API) {
        *buffer = NULL; /* over the cap: CUPTI drops records and counts them */
        *size = 0;
        return;
    }
    void *p = NULL;
    if (posix_memalign(&p, BUFFER_ALIGN, BUFFER_BYTES) != 0) p = NULL;
    *buffer = p;
    *size = p ? BUFFER_BYTES : 0;
    if (p) atomic_fetch_add(&g.outstanding, 1);
}

static const char *demangled_name(const char *mangled) {
    if (!mangled) return NULL;
    DemangleEntry *e = &g.demangle[((uintptr_t)mangled >> 4) % DEMANGLE_CACHE];
    if (e->mangled == mangled) return e->demangled;
    free(e->demangled);
    int status = -1;
    e->demangled = mangled[0] == '_' && mangled[1] == 'Z' ? __cxa_demangle(mangled, NULL, NULL, &status) : NULL;
    if (status != 0) {
        free(e->demangled);
        e->demangled = NULL;
    }
    e->mangled = mangled;
    return e->demangled;
}

/* CUPTI's record -> ProfGpuActivity. Returns 0, or -1 for kinds we do not keep. */
static int convert(const CUpti_Activity *rec, ProfGpuActivity *a) {
    memset(a, 0, sizeof(*a));
    switch (rec->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
        a->kind = PROF_GPU_KERNEL;
        a->start = (int64_t)k->start, a->end = (int64_t)k->end;
        a->device_id = k->deviceId, a->context_id = k->contextId, a->stream_id = k->streamId;
        a->correlation_id = k->correlationId;
        a->u.kernel.grid_x = k->gridX, a->u.kernel.grid_y = k->gridY, a->u.kernel.grid_z = k->gridZ;
        a->u.kernel.block_x = k->blockX, a->u.kernel.block_y = k->blockY, a->u.kernel.block_z = k->blockZ;
        a->u.kernel.registers_per_thread = k->registersPerThread;
        a->u.kernel.static_shared_memory = k->staticSharedMemory;
        a->u.kernel.dynamic_shared_memory = k->dynamicSharedMemory;
        a->u.kernel.local_memory_per_thread = (int32_t)k->localMemoryPerThread;
        a->u.kernel.local_memory_total = (int64_t)k->localMemoryTotal_v2;
        a->u.kernel.grid_id = k->gridId;
        a->u.kernel.launch_type = k->launchType;
        a->u.kernel.cache_config = k->cacheConfig.config.executed;
        a->u.kernel.shared_memory_executed = (int32_t)k->sharedMemoryExecuted;
        a->u.kernel.shared_memory_limit_config = (int32_t)k->shmemLimitConfig;
        a->u.kernel.graph_node_id = (int64_t)k->graphNodeId;
        a->u.kernel.name = k->name;
        a->u.kernel.demangled = demangled_name(k->name);
        return 0;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)rec;
        a->kind = PROF_GPU_MEMCPY;
        a->start = (int64_t)m->start, a->end = (int64_t)m->end;
        a->device_id = m->deviceId, a->context_id = m->contextId, a->stream_id = m->streamId;
        a->correlation_id = m->correlationId;
        a->u.copy.bytes = (int64_t)m->bytes;
        a->u.copy.copy_kind = m->copyKind; /* CUPTI's memcpy kinds = ENUM_CUDA_MEMCPY_OPER ids */
        a->u.copy.src_kind = prof_gpu_mem_kind_from_cupti(m->srcKind);
        a->u.copy.dst_kind = prof_gpu_mem_kind_from_cupti(m->dstKind);
        a->u.copy.graph_node_id = (int64_t)m->graphNodeId;
        return 0;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
        const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)rec;
        a->kind = PROF_GPU_MEMSET;
        a->start = (int64_t)m->start, a->end = (int64_t)m->end;
        a->device_id = m->deviceId, a->context_id = m->contextId, a->stream_id = m->streamId;
        a->correlation_id = m->correlationId;
        a->u.set.bytes = (int64_t)m->bytes;
        a->u.set.value = m->value;
        a->u.set.mem_kind = prof_gpu_mem_kind_from_cupti(m->memoryKind);
        a->u.set.graph_node_id = (int64_t)m->graphNodeId;
        return 0;
    }
    case CUPTI_ACTIVITY_KIND_RUNTIME: {
        const CUpti_ActivityAPI *r = (const CUpti_ActivityAPI *)rec;
        const char *name = NULL;
        if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, r->cbid, &name) != CUPTI_SUCCESS) name = NULL;
        a->kind = PROF_GPU_RUNTIME;
        a->start = (int64_t)r->start, a->end = (int64_t)r->end;
        a->correlation_id = r->correlationId;
        /* threadId is the kernel's thread id (cuptiSetThreadIdType SYSTEM): nsys's globalTid */
        a->u.runtime.global_tid = ((int64_t)r->processId << 24) | (r->threadId & 0xFFFFFF);
        a->u.runtime.return_value = (int32_t)r->returnValue;
        a->u.runtime.name = name;
        return 0;
    }
    case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION: {
        const CUpti_ActivitySynchronization2 *s = (const CUpti_ActivitySynchronization2 *)rec;
        a->kind = PROF_GPU_SYNC;
        a->start = (int64_t)s->start, a->end = (int64_t)s->end;
        a->device_id = 0; /* the record has no device; the trainer drives GPU 0 */
        a->context_id = s->contextId, a->stream_id = s->streamId;
        a->correlation_id = s->correlationId;
        a->u.sync.sync_type = (int32_t)s->type;
        a->u.sync.event_id = s->type == CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_EVENT_SYNCHRONIZE ||
                                     s->type == CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_WAIT_EVENT
                                 ? (int64_t)s->cudaEventId : -1;
        return 0;
    }
    case CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION: {
        const CUpti_ActivityExternalCorrelation *x = (const CUpti_ActivityExternalCorrelation *)rec;
        a->kind = PROF_GPU_EXTERNAL;
        a->correlation_id = x->correlationId;
        a->u.external.external_kind = (int32_t)x->externalKind;
        a->u.external.external_id = x->externalId;
        return 0;
    }
    default: return -1;
    }
}

/* Feeds the buffer's records of one pass to the collector: pass 0 the external correlations
 * (so that a kernel later in the same buffer finds its phase), pass 1 the rest. Returns the
 * number of records seen. */
static int64_t feed(uint8_t *buffer, size_t valid, int pass) {
    CUpti_Activity *rec = NULL;
    int64_t n = 0;
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        n++;
        int is_ext = rec->kind == CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION;
        if (is_ext != (pass == 0)) continue;
        ProfGpuActivity a;
        if (convert(rec, &a) == 0) prof_gpu_collector_add(g.collector, &a);
    }
    return n; /* the loop ends with CUPTI_ERROR_MAX_LIMIT_REACHED at the buffer's end */
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream_id, uint8_t *buffer, size_t size,
                                      size_t valid) {
    (void)size;
    /* on a CUPTI without buffer rejection, buffers past the cap were handed out anyway (refusing
     * can crash it): their records are discarded and counted, as Kineto does */
    int over_cap = atomic_load(&g.outstanding) > MAX_BUFFERS;
    pthread_mutex_lock(&g.mu);
    if (g.collector && valid > 0 && !over_cap) {
        feed(buffer, valid, 0);
        feed(buffer, valid, 1);
        prof_gpu_collector_submit(g.collector);
    } else if (valid > 0) {
        /* over the cap, or collection stopped: the records are lost, count them */
        CUpti_Activity *rec = NULL;
        int64_t n = 0;
        while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) n++;
        atomic_fetch_add(&g.over_cap_records, n);
    }
    pthread_mutex_unlock(&g.mu);
    free(buffer);
    atomic_fetch_sub(&g.outstanding, 1);
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream_id, &dropped) == CUPTI_SUCCESS && dropped > 0)
        prof_gpu_lost(g.prof, (int64_t)dropped);
}

/* ---- start / step / stop ---- */

static CUptiResult set_kind(CUpti_ActivityKind kind, int on) {
    return on ? cuptiActivityEnable(kind) : cuptiActivityDisable(kind);
}

static void CUPTIAPI no_callback(void *userdata, CUpti_CallbackDomain domain, CUpti_CallbackId cbid,
                                 const void *data) {
    (void)userdata, (void)domain, (void)cbid, (void)data;
}

int prof_cupti_start(Prof *prof, int trace, const ProfSchedule *sched, char *msg, size_t msglen) {
    msg[0] = 0;
    if (g.running || !prof) return -1;
    char other[CUPTI_OLD_SUBSCRIBER_NAME_MIN_LEN + 64] = "";
    CUpti_SubscriberParams params;
    memset(&params, 0, sizeof(params));
    params.structSize = CUpti_SubscriberParams_STRUCT_SIZE;
    params.subscriberName = "detr-train profiler";
    params.oldSubscriberName = other;
    params.oldSubscriberSize = sizeof(other);
    CUptiResult r = cuptiSubscribe_v2(&g.subscriber, no_callback, NULL, &params);
    if (r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED || r == CUPTI_ERROR_MAX_LIMIT_REACHED) {
        snprintf(msg, msglen, "profile: another CUPTI client is attached (%s): GPU activity is left to it, "
                 "recording NVTX ranges only", other[0] ? other : "Nsight Systems, Nsight Compute or "
                 "compute-sanitizer");
        return 1;
    }
    if (r != CUPTI_SUCCESS) {
        snprintf(msg, msglen, "profile: CUPTI cannot start (cuptiSubscribe_v2: %s); GPU activity not recorded",
                 result_string(r));
        return -1;
    }
    if (cuptiGetVersion(&g.api_version) != CUPTI_SUCCESS) g.api_version = 0;
    /* runtime records carry the kernel's thread id, as prof_global_tid and nsys */
    cuptiSetThreadIdType(CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM);
    r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    if (r != CUPTI_SUCCESS) {
        snprintf(msg, msglen, "profile: CUPTI cannot start (cuptiActivityRegisterCallbacks: %s)", result_string(r));
        cuptiUnsubscribe(g.subscriber);
        return -1;
    }
    g.prof = prof;
    g.trace = trace;
    g.has_schedule = trace && sched;
    if (sched) g.sched = *sched;
    atomic_store(&g.first_step, -1);
    g.pid = getpid();
    g.device_used_peak = 0;
    pthread_mutex_lock(&g.mu);
    g.collector = prof_gpu_collector_new(prof, trace, keep_step, NULL);
    pthread_mutex_unlock(&g.mu);
    if (!g.collector) {
        snprintf(msg, msglen, "profile: out of memory for the GPU activity collector");
        cuptiUnsubscribe(g.subscriber);
        return -1;
    }
    /* never CUPTI_ACTIVITY_KIND_KERNEL: it serialises the kernels */
    const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                        CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION,
                                        CUPTI_ACTIVITY_KIND_RUNTIME};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if ((r = cuptiActivityEnable(kinds[i])) != CUPTI_SUCCESS) {
            snprintf(msg, msglen, "profile: CUPTI cannot enable activity kind %d: %s", (int)kinds[i],
                     result_string(r));
            for (size_t j = 0; j < i; j++) cuptiActivityDisable(kinds[j]);
            prof_cupti_stop();
            return -1;
        }
    /* cudaGetDevice is called all the time and says nothing (Kineto turns it off too) */
    cuptiActivityEnableRuntimeApi(CUPTI_RUNTIME_TRACE_CBID_cudaGetDevice_v3020, 0);
    g.runtime_on = 1;
    if (trace && set_kind(CUPTI_ACTIVITY_KIND_SYNCHRONIZATION, 1) != CUPTI_SUCCESS)
        fprintf(stderr, "warning: profile: CUPTI synchronization records unavailable\n");
    int dev;
    char bus[32], why[256];
    if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetPCIBusId(bus, (int)sizeof(bus), dev) == cudaSuccess &&
        !(g.nvml = prof_nvml_open(bus, why, sizeof(why))))
        fprintf(stderr, "profile: GPU utilisation not recorded: %s\n", why);
    g.running = 1;
    prof_set_phase_hooks(&phase_hooks);
    return 0;
}

void prof_cupti_step_begin(int64_t step) {
    if (!g.running) return;
    int64_t first = atomic_load(&g.first_step);
    if (first < 0) atomic_store(&g.first_step, first = step);
    if (!g.has_schedule) return;
    /* the runtime API and synchronization records are the CPU-side volume: on for the warm-up and
     * recorded steps only (kernels, copies and correlations stay on for the per-step aggregates) */
    int want = prof_schedule_action(&g.sched, step - first) != PROF_SCHED_NONE;
    if (want != g.runtime_on) {
        set_kind(CUPTI_ACTIVITY_KIND_RUNTIME, want);
        set_kind(CUPTI_ACTIVITY_KIND_SYNCHRONIZATION, want);
        g.runtime_on = want;
    }
}

static void flush_all(void) {
    cudaError_t e = cudaDeviceSynchronize(); /* FlushAll does not wait for the GPU */
    if (e != cudaSuccess)
        fprintf(stderr, "warning: profile: cudaDeviceSynchronize before the CUPTI flush: %s\n", cudaGetErrorString(e));
    CUptiResult r = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    if (r != CUPTI_SUCCESS) fprintf(stderr, "warning: profile: cuptiActivityFlushAll: %s\n", result_string(r));
}

void prof_cupti_step_end(int64_t step, ProfStepRecord *r) {
    if (!g.running) return;
    size_t free_b = 0, total_b = 0;
    if (r && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && total_b >= free_b) {
        int64_t used = (int64_t)(total_b - free_b);
        if (used > g.device_used_peak) g.device_used_peak = used;
        prof_step_add_memory(r, "gpu_device_used", used, g.device_used_peak);
    }
    if (r && g.nvml) prof_nvml_utilization(g.nvml, &r->gpu_util, &r->gpu_mem_util);
    int64_t first = atomic_load(&g.first_step);
    if (g.has_schedule && first >= 0 &&
        prof_schedule_action(&g.sched, step - first) == PROF_SCHED_RECORD_AND_SAVE)
        flush_all(); /* the end of a traced window */
}

void prof_cupti_stop(void) {
    if (!g.running && !g.collector) return;
    prof_set_phase_hooks(NULL);
    flush_all();
    prof_nvml_close(g.nvml);
    g.nvml = NULL;
    const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                        CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION,
                                        CUPTI_ACTIVITY_KIND_RUNTIME, CUPTI_ACTIVITY_KIND_SYNCHRONIZATION};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) cuptiActivityDisable(kinds[i]);
    pthread_mutex_lock(&g.mu);
    prof_gpu_collector_submit(g.collector);
    prof_gpu_collector_free(g.collector);
    g.collector = NULL;
    for (int i = 0; i < DEMANGLE_CACHE; i++) {
        free(g.demangle[i].demangled);
        g.demangle[i] = (DemangleEntry){NULL, NULL};
    }
    pthread_mutex_unlock(&g.mu);
    int64_t lost = atomic_exchange(&g.over_cap_records, 0);
    prof_gpu_lost(g.prof, lost);
    ProfCounters c = prof_counters(g.prof);
    if (c.cupti_dropped > 0 || c.dropped_gpu > 0)
        printf("profile: %lld GPU activity records dropped by CUPTI, %lld by the profile's queue\n",
               (long long)c.cupti_dropped, (long long)c.dropped_gpu);
    cuptiUnsubscribe(g.subscriber);
    g.running = 0;
    g.prof = NULL;
}
#endif
