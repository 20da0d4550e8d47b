/* prof_cupti.h - GPU activity tracing with CUPTI's Activity API for `detr-train --device cuda
 * --profile` (docs/gpu-profiling.md). CUDA builds only: the functions exist when DETR_CUDA is
 * defined (prof_cupti.c compiles to nothing otherwise), so callers guard them with #ifdef.
 *
 * What it does: enables CONCURRENT_KERNEL (never KIND_KERNEL, which serialises kernels),
 * MEMCPY, MEMSET, RUNTIME, EXTERNAL_CORRELATION and, at the trace level, SYNCHRONIZATION; pushes
 * the trainer's current step and phase as a CUSTOM0 external correlation id around every phase
 * range (prof_set_phase_hooks), hands 4 MiB buffers to CUPTI (at most 33 at once, Kineto's
 * 1 + 128 MiB / 4 MiB), converts completed buffers into prof_gpu_records and queues them to the
 * profile. Dropped records (CUPTI's count, buffers over the cap) land in
 * DETR_RUNS.cupti_dropped_records. Under Nsight Systems, Nsight Compute, compute-sanitizer or any
 * other CUPTI client, cuptiSubscribe refuses a second subscriber: collection is skipped with a
 * one-line notice naming the other one, and the NVTX ranges stay for that tool.
 *
 * Not yet run on a GPU (written and compiled against the CUDA 13 headers only). */
#ifndef DETR_PROF_CUPTI_H
#define DETR_PROF_CUPTI_H
#include <stddef.h>
#include <stdint.h>
#include "prof.h"
#include "prof_schedule.h"

#ifdef DETR_CUDA
/* Starts collection into prof. trace != 0: raw rows of the steps `sched` records (NULL: every
 * step); 0: per-step aggregates only (DETR_GPU_STEPS). Call after the CUDA device is initialised,
 * before the first step. Returns 0 (collecting), 1 (another CUPTI client is attached: the notice
 * is in msg, nothing collected), -1 (a CUPTI error, in msg; nothing collected). */
int prof_cupti_start(Prof *prof, int trace, const ProfSchedule *sched, char *msg, size_t msglen);
/* At the start of each training step (the profile's step number): at the trace level, switches
 * the runtime/synchronization tracing on for warm-up and recorded steps of the schedule. */
void prof_cupti_step_begin(int64_t step);
/* At the end of each step, before its record is queued: adds the device's memory in use
 * (cudaMemGetInfo: "gpu_device_used") to r and, when the step ends a traced window, synchronises
 * the device and force-flushes CUPTI's buffers. */
void prof_cupti_step_end(int64_t step, ProfStepRecord *r);
/* Synchronises, force-flushes, disables the activity kinds, removes the phase hooks and hands
 * the last records to the profile (call before prof_close). Prints the dropped records if any.
 * Does nothing when collection is not running. */
void prof_cupti_stop(void);
#endif

#endif
