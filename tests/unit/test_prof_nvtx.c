/* test_prof_nvtx.c - the profiler's ranges reach an NVTX tool (profiler/nvtx_ranges.h) in the
 * CUDA build: a fake tool, linked in through NVTX3's static-injection hook
 * (InitializeInjectionNvtx2_fnptr), records what Nsight Systems would receive: one domain
 * "detr", phase names as registered strings with their colours, free text as ASCII messages,
 * balanced push/pop, also without a profiler (prof == NULL). Without DETR_CUDA the NVTX calls are
 * compiled out and the test skips. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "check.h"
#include "prof.h"

#ifdef DETR_CUDA
/* the tool side: NVTX types only; this file defines InitializeInjectionNvtx2_fnptr, which
 * overrides the weak null one of the NVTX implementation in profiler/prof.c */
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>

#define MAX_EVENTS 256
#define MAX_STRINGS 64

/* What the fake tool saw. */
static struct {
    int domains_created;
    char domain_name[32];
    int strings;
    char string_names[MAX_STRINGS][32];
    int pushes, pops, depth, max_depth, wrong_domain;
    struct {
        char name[32];
        int registered;
        uint32_t color;
    } pushed[MAX_EVENTS];
} g_tool;

static int g_domain_token; /* its address is the domain handle */

static nvtxDomainHandle_t NVTX_API fake_domain_create(const char *name) {
    g_tool.domains_created++;
    snprintf(g_tool.domain_name, sizeof(g_tool.domain_name), "%s", name);
    return (nvtxDomainHandle_t)&g_domain_token;
}

static nvtxStringHandle_t NVTX_API fake_register_string(nvtxDomainHandle_t d, const char *s) {
    if (d != (nvtxDomainHandle_t)&g_domain_token) g_tool.wrong_domain++;
    if (g_tool.strings == MAX_STRINGS) return NULL;
    snprintf(g_tool.string_names[g_tool.strings], 32, "%s", s);
    g_tool.strings++;
    return (nvtxStringHandle_t)(uintptr_t)g_tool.strings; /* 1-based index */
}

static int NVTX_API fake_push(nvtxDomainHandle_t d, const nvtxEventAttributes_t *a) {
    if (d != (nvtxDomainHandle_t)&g_domain_token) g_tool.wrong_domain++;
    if (g_tool.pushes < MAX_EVENTS) {
        int i = g_tool.pushes;
        g_tool.pushed[i].registered = a->messageType == NVTX_MESSAGE_TYPE_REGISTERED;
        g_tool.pushed[i].color = a->colorType == NVTX_COLOR_ARGB ? a->color : 0;
        const char *name = "?";
        if (a->messageType == NVTX_MESSAGE_TYPE_ASCII) name = a->message.ascii;
        uintptr_t id = (uintptr_t)a->message.registered;
        if (a->messageType == NVTX_MESSAGE_TYPE_REGISTERED && id >= 1 && id <= (uintptr_t)g_tool.strings)
            name = g_tool.string_names[id - 1];
        snprintf(g_tool.pushed[i].name, sizeof(g_tool.pushed[i].name), "%s", name);
    }
    g_tool.pushes++;
    if (++g_tool.depth > g_tool.max_depth) g_tool.max_depth = g_tool.depth;
    return g_tool.depth - 1;
}

static int NVTX_API fake_pop(nvtxDomainHandle_t d) {
    if (d != (nvtxDomainHandle_t)&g_domain_token) g_tool.wrong_domain++;
    g_tool.pops++;
    return --g_tool.depth;
}

static int NVTX_API fake_initialize(NvtxGetExportTableFunc_t get_export_table) {
    const NvtxExportTableCallbacks *cb = get_export_table(NVTX_ETID_CALLBACKS);
    NvtxFunctionTable table = NULL;
    unsigned int size = 0;
    if (!cb || !cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &table, &size) ||
        size < NVTX_CBID_CORE2_DomainCreateA)
        return 0;
    *table[NVTX_CBID_CORE2_DomainCreateA] = (NvtxFunctionPointer)fake_domain_create;
    *table[NVTX_CBID_CORE2_DomainRegisterStringA] = (NvtxFunctionPointer)fake_register_string;
    *table[NVTX_CBID_CORE2_DomainRangePushEx] = (NvtxFunctionPointer)fake_push;
    *table[NVTX_CBID_CORE2_DomainRangePop] = (NvtxFunctionPointer)fake_pop;
    return 1;
}

NvtxInitializeInjectionNvtxFunc_t InitializeInjectionNvtx2_fnptr = fake_initialize;

static int pushed_is(int i, const char *name, int registered) {
    return i < g_tool.pushes && strcmp(g_tool.pushed[i].name, name) == 0 &&
           g_tool.pushed[i].registered == registered;
}

int main(void) {
    char path[256], err[1024];
    snprintf(path, sizeof(path), "%s/detr-test-prof-nvtx-%d.sqlite",
             getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    ProfRunInfo in = {0};
    in.command_line = "test_prof_nvtx";
    Prof *p = prof_open(path, &in, PROF_BASIC, err, sizeof(err));
    CHECK("open", p != NULL, "%s", err);
    CHECK("the tool was initialised and the domain \"detr\" created once at prof_open",
          g_tool.domains_created == 1 && strcmp(g_tool.domain_name, "detr") == 0, "%d '%s'",
          g_tool.domains_created, g_tool.domain_name);

    prof_step_begin(p, 0, 0);                  /* 0: step */
    prof_range_push(p, PROF_PHASE_DATA_WAIT);  /* 1 */
    prof_range_pop(p);
    prof_range_push(p, PROF_PHASE_BACKBONE);   /* 2 */
    prof_range_push_text(p, "layer1");         /* 3: free text, ASCII (not recorded at basic) */
    prof_range_pop(p);
    prof_range_pop(p);
    ProfStepRecord r;
    prof_step_record_init(&r);
    prof_step_end(p, &r);
    prof_step_begin(NULL, 1, 0);               /* 4: no profiler: NVTX only */
    prof_range_push(NULL, PROF_PHASE_BACKWARD); /* 5 */
    prof_range_pop(NULL);
    prof_step_end(NULL, &r);
    prof_range_push(p, PROF_PHASE_DATA_WAIT);  /* 6: the registered string is reused */
    prof_range_pop(p);

    CHECK("pushes and pops balanced", g_tool.pushes == 7 && g_tool.pops == 7 && g_tool.depth == 0,
          "%d pushes, %d pops", g_tool.pushes, g_tool.pops);
    CHECK("nesting seen by the tool", g_tool.max_depth == 3, "%d", g_tool.max_depth);
    CHECK("phase names as registered strings",
          pushed_is(0, "step", 1) && pushed_is(1, "data_wait", 1) && pushed_is(2, "backbone", 1) &&
              pushed_is(4, "step", 1) && pushed_is(5, "backward", 1) && pushed_is(6, "data_wait", 1),
          "");
    CHECK("free text as an ASCII message", pushed_is(3, "layer1", 0), "");
    int step_strings = 0;
    for (int i = 0; i < g_tool.strings; i++) step_strings += strcmp(g_tool.string_names[i], "step") == 0;
    CHECK("each phase name registered once", step_strings == 1 && g_tool.strings == 4,
          "%d strings", g_tool.strings);
    CHECK("ARGB colours, one per phase",
          g_tool.pushed[1].color == 0xFFE53935u && g_tool.pushed[2].color == 0xFF1E88E5u &&
              g_tool.pushed[1].color == g_tool.pushed[6].color, "%08x", g_tool.pushed[1].color);
    CHECK("every call in the detr domain", g_tool.wrong_domain == 0, "%d", g_tool.wrong_domain);
    CHECK("close", prof_close(p, 0, err, sizeof(err)) == 0, "%s", err);
    char aux[300];
    unlink(path);
    snprintf(aux, sizeof(aux), "%s-wal", path);
    unlink(aux);
    snprintf(aux, sizeof(aux), "%s-shm", path);
    unlink(aux);
    return test_finish();
}

#else

int main(void) {
    test_skip("NVTX ranges reach a tool", "built without DETR_CUDA: NVTX is compiled out "
              "(make CUDA=1 runs this test)");
    return test_finish();
}

#endif
