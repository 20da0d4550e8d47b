/* sgemm_peak.h - the machine's measured single-precision GEMM rate, the CPU's "peak" for MFU. */
#ifndef DETR_SGEMM_PEAK_H
#define DETR_SGEMM_PEAK_H

/* Best of 3 timed n x n x n sgemm calls (after one warm-up), in FLOP/s. */
double sgemm_peak_flops(int n);

#endif
