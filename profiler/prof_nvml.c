/* prof_nvml.c - see prof_nvml.h. The few NVML entry points used are declared here from the NVML
 * API reference (nvml.h is not part of the CUDA toolkit install): return codes are ints
 * (NVML_SUCCESS = 0), a device is an opaque pointer, nvmlUtilization_t is {unsigned gpu,
 * memory}. */
#include "prof_nvml.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#define NVML_LIBRARY "libnvidia-ml.so.1"

typedef int nvml_return;
typedef void *nvml_device;
typedef struct {
    unsigned int gpu, memory;
} nvml_utilization;

struct ProfNvml {
    void *lib;
    nvml_device dev;
    nvml_return (*shutdown)(void);
    nvml_return (*utilization)(nvml_device, nvml_utilization *);
};

ProfNvml *prof_nvml_open(const char *pci_bus_id, char *why, size_t whylen) {
    void *lib = dlopen(NVML_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(why, whylen, "%s not loadable (%s)", NVML_LIBRARY, dlerror());
        return NULL;
    }
    nvml_return (*init)(void) = (nvml_return(*)(void))dlsym(lib, "nvmlInit_v2");
    nvml_return (*by_bus)(const char *, nvml_device *) =
        (nvml_return(*)(const char *, nvml_device *))dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2");
    ProfNvml *n = calloc(1, sizeof(*n));
    if (!n) {
        dlclose(lib);
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    n->lib = lib;
    n->shutdown = (nvml_return(*)(void))dlsym(lib, "nvmlShutdown");
    n->utilization = (nvml_return(*)(nvml_device, nvml_utilization *))dlsym(lib, "nvmlDeviceGetUtilizationRates");
    nvml_return r;
    if (!init || !by_bus || !n->shutdown || !n->utilization) {
        snprintf(why, whylen, "%s lacks the NVML entry points used", NVML_LIBRARY);
    } else if ((r = init()) != 0) {
        snprintf(why, whylen, "nvmlInit_v2 returned %d", r);
    } else if ((r = by_bus(pci_bus_id, &n->dev)) != 0) {
        snprintf(why, whylen, "no NVML device at PCI bus id %s (error %d)", pci_bus_id, r);
        n->shutdown();
    } else {
        return n;
    }
    dlclose(lib);
    free(n);
    return NULL;
}

int prof_nvml_utilization(ProfNvml *n, double *gpu_pct, double *mem_pct) {
    nvml_utilization u;
    if (!n || n->utilization(n->dev, &u) != 0) return -1;
    *gpu_pct = u.gpu;
    *mem_pct = u.memory;
    return 0;
}

void prof_nvml_close(ProfNvml *n) {
    if (!n) return;
    n->shutdown();
    dlclose(n->lib);
    free(n);
}
