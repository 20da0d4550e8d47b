/* prof_nvml.h - GPU utilisation from NVML, the driver's management library, for the per-step
 * record (DETR_STEPS.gpu_util / gpu_mem_util). libnvidia-ml.so.1 ships with the NVIDIA driver,
 * not the toolkit, so it is loaded at run time (dlopen): where it is missing (no driver, a
 * container without it, MIG where NVML reports no utilisation) the columns stay NULL and
 * training goes on. */
#ifndef DETR_PROF_NVML_H
#define DETR_PROF_NVML_H
#include <stddef.h>

typedef struct ProfNvml ProfNvml;

/* Opens NVML for the GPU at this PCI bus id ("0000:3B:00.0", as cudaDeviceGetPCIBusId gives it).
 * Returns NULL with the reason in why (library missing, init or lookup failed). */
ProfNvml *prof_nvml_open(const char *pci_bus_id, char *why, size_t whylen);
/* Percent of the last sample period (1/6 s to 1 s, by product) during which a kernel ran, and
 * during which device memory was read or written. Returns 0, or -1 when NVML cannot say. */
int prof_nvml_utilization(ProfNvml *n, double *gpu_pct, double *mem_pct);
void prof_nvml_close(ProfNvml *n);

#endif
