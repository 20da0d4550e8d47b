/* nvtx_ranges.h - header-only NVTX push/pop ranges in the domain "detr".
 *
 * With DETR_CUDA defined (the CUDA build adds -I$(CUDA_HOME)/include) this uses the header-only
 * NVTX3 API from <nvtx3/nvToolsExt.h>: no library to link, and each call is a test of a function
 * pointer that stays NULL unless a tool (Nsight Systems, or CUPTI via NVTX_INJECTION64_PATH) is
 * attached. Without DETR_CUDA every function is empty and compiles out.
 *
 * Phase names are registered once per slot (nvtxDomainRegisterStringA) so that Nsight Systems
 * stores them as StringIds (NVTX_EVENTS.textId) like our own export does; free text goes as an
 * ASCII message (NVTX_EVENTS.text).
 *
 * The state (domain handle, registered strings) lives in function-local statics, one copy per
 * translation unit: include this header from one .c file (profiler/prof.c does; other code calls
 * prof_range_push/prof_range_pop), so the process creates the domain once. */
#ifndef DETR_NVTX_RANGES_H
#define DETR_NVTX_RANGES_H
#include <stdint.h>

#define NVTX_RANGES_DOMAIN "detr"
#define NVTX_RANGES_MAX_REGISTERED 64

#ifdef DETR_CUDA
#include <nvtx3/nvToolsExt.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The "detr" domain, created on first use. Two threads racing here may create it twice; NVTX
 * tolerates that (both handles name the same domain), and prof_open creates it up front. */
static inline nvtxDomainHandle_t nvtx_ranges_domain(void) {
    static _Atomic(nvtxDomainHandle_t) domain;
    nvtxDomainHandle_t d = atomic_load_explicit(&domain, memory_order_acquire);
    if (d) return d;
    d = nvtxDomainCreateA(NVTX_RANGES_DOMAIN);
    nvtxDomainHandle_t expected = NULL;
    if (!atomic_compare_exchange_strong(&domain, &expected, d)) d = expected;
    return d;
}

/* The registered handle of name in slot (0 <= slot < NVTX_RANGES_MAX_REGISTERED). A slot always
 * carries the same name. */
static inline nvtxStringHandle_t nvtx_ranges_string(int slot, const char *name) {
    static _Atomic(nvtxStringHandle_t) handles[NVTX_RANGES_MAX_REGISTERED];
    nvtxStringHandle_t h = atomic_load_explicit(&handles[slot], memory_order_acquire);
    if (!h) {
        h = nvtxDomainRegisterStringA(nvtx_ranges_domain(), name);
        atomic_store_explicit(&handles[slot], h, memory_order_release);
    }
    return h;
}

static inline void nvtx_ranges_init(void) { (void)nvtx_ranges_domain(); }

/* Pushes a range named by a registered string; argb = 0xAARRGGBB. */
static inline void nvtx_ranges_push_registered(int slot, const char *name, uint32_t argb) {
    nvtxEventAttributes_t a = {0};
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    a.colorType = NVTX_COLOR_ARGB;
    a.color = argb;
    if (slot >= 0 && slot < NVTX_RANGES_MAX_REGISTERED) {
        a.messageType = NVTX_MESSAGE_TYPE_REGISTERED;
        a.message.registered = nvtx_ranges_string(slot, name);
    } else {
        a.messageType = NVTX_MESSAGE_TYPE_ASCII;
        a.message.ascii = name;
    }
    nvtxDomainRangePushEx(nvtx_ranges_domain(), &a);
}

static inline void nvtx_ranges_push_text(const char *text, uint32_t argb) {
    nvtx_ranges_push_registered(-1, text, argb);
}

static inline void nvtx_ranges_pop(void) { nvtxDomainRangePop(nvtx_ranges_domain()); }
/* Names the calling OS thread in Nsight's timeline. */
static inline void nvtx_ranges_name_thread(const char *name) {
    nvtxNameOsThreadA((uint32_t)syscall(SYS_gettid), name);
}

#else /* no CUDA build: NVTX compiles out */

static inline void nvtx_ranges_init(void) {}
static inline void nvtx_ranges_push_registered(int slot, const char *name, uint32_t argb) {
    (void)slot;
    (void)name;
    (void)argb;
}
static inline void nvtx_ranges_push_text(const char *text, uint32_t argb) {
    (void)text;
    (void)argb;
}
static inline void nvtx_ranges_pop(void) {}
static inline void nvtx_ranges_name_thread(const char *name) { (void)name; }

#endif
#endif
