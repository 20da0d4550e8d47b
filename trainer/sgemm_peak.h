/* sgemm_peak.h - the machine's measured single-precision GEMM rate, the CPU's "peak" for MFU. */
#ifndef DETR_SGEMM_PEAK_H
#define DETR_SGEMM_PEAK_H

/* Best of 3 timed n x n x n sgemm calls (after one warm-up), in FLOP/s. */
double sgemm_peak_flops(int n);

/* The best rate this machine has shown: measures now (sgemm_peak_flops) and keeps the highest
 * measurement so far in $XDG_CACHE_HOME/detr/sgemm-peak-t<threads>-n<n> (or ~/.cache/detr/...),
 * keyed by the CPU model, because a measurement taken while other processes use the cores reads
 * low and would inflate MFU. threads: the OpenMP/BLAS threads in use. A cache that cannot be read
 * or written is ignored (the measurement alone is returned). */
double sgemm_peak_flops_best(int n, int threads);

#endif
