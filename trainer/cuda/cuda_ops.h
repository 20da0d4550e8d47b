/* cuda_ops.h - the compute ops of the CUDA backend: one function per slot of the Backend table
 * (backend.h), same signature and semantics (forward ops overwrite, backward ops accumulate,
 * CNHW images, row-major tokens, uint8 masks with 1 = padding), on device pointers, issued on
 * cuda_stream() in order (asynchronous unless noted). backend_cuda() (backend_cuda_table.cu)
 * assembles them with the memory functions of backend_cuda.h.
 *
 * Files: cuda_conv.cu and cuda_dense.cu (cuDNN convolutions, cuBLAS GEMMs, transpose);
 * cuda_kernels_*.cu (own kernels: elementwise, FrozenBN affine, dropout with the CPU's counter
 * RNG so masks are identical, max-pool, layer norm, softmax, attention, reductions, AdamW).
 * CUDA build only (-DDETR_CUDA). */
#ifndef DETR_CUDA_OPS_H
#define DETR_CUDA_OPS_H
#include <stddef.h>
#include <stdint.h>
#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- cuda_conv.cu (cuDNN; algorithm chosen once per shape and cached; workspace charged to
 * MEM_WORKSPACE) ---- */
void cuda_conv2d_forward(const ConvShape *s, const float *x, const float *w, const float *bias, float *y);
void cuda_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx);
void cuda_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x, float *dw,
                                 float *dbias);

/* ---- cuda_dense.cu (cuBLAS) ----
 * cuda_gemm is always float32, whatever the precision: the attention kernels call it, and
 * attention is not a matrix-product op of set_precision (backend.h). The table's gemm slot is
 * cuda_amp_gemm (below). */
void cuda_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
               long strideA, const float *B, int ldb, long strideB, float beta, float *C, int ldc,
               long strideC, int batch);
void cuda_linear_forward(const float *x, const float *w, const float *b, float *y, int T, int In, int O);
void cuda_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                          float *db, int T, int In, int O);
void cuda_transpose(const float *x, float *y, int batch, int R, int C);

/* ---- mixed precision (backend.h, Precision; docs/cuda-ops.md "Mixed precision") ----
 * cuda_amp.cu: the process-wide precision of the matrix products (default PRECISION_FP32). */
void cuda_set_precision(Precision p);
/* The matrix-product slots of the table: at PRECISION_FP32 each calls the float32 op above
 * unchanged; at bf16 / fp16 the operands are rounded into low-precision scratch, the product
 * runs on tensor cores with float32 accumulation (cuBLAS GemmEx / cuDNN PSEUDO_* configs), and
 * the result is rounded to the low type before it is written or added. cuda_dense.cu: */
void cuda_amp_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                   int lda, long strideA, const float *B, int ldb, long strideB, float beta,
                   float *C, int ldc, long strideC, int batch);
void cuda_amp_linear_forward(const float *x, const float *w, const float *b, float *y, int T,
                             int In, int O);
void cuda_amp_linear_backward(const float *dy, const float *x, const float *w, float *dx,
                              float *dw, float *db, int T, int In, int O);
/* cuda_conv.cu: */
void cuda_amp_conv2d_forward(const ConvShape *s, const float *x, const float *w, const float *bias,
                             float *y);
void cuda_amp_conv2d_backward_data(const ConvShape *s, const float *dy, const float *w, float *dx);
void cuda_amp_conv2d_backward_weight(const ConvShape *s, const float *dy, const float *x, float *dw,
                                     float *dbias);

/* ---- cuda_kernels_*.cu (own kernels) ---- */
void cuda_channel_affine(const float *x, const float *scale, const float *shift, float *y, int C,
                         size_t N, int relu);
void cuda_channel_affine_backward(const float *dy, const float *y, const float *scale, float *dx,
                                  int C, size_t N, int relu);
void cuda_relu_forward(const float *x, float *y, size_t n);
void cuda_relu_backward(const float *dy, const float *y, float *dx, size_t n);
void cuda_add(const float *a, const float *b, float *y, size_t n);
void cuda_add_relu(const float *a, const float *b, float *y, size_t n);
void cuda_axpy(float alpha, const float *x, float *y, size_t n);
void cuda_scale(float *x, float alpha, size_t n);
void cuda_sigmoid_forward(const float *x, float *y, size_t n);
void cuda_sigmoid_backward(const float *dy, const float *y, float *dx, size_t n);
void cuda_dropout_forward(const float *x, float *y, size_t n, float p, uint64_t seed);
void cuda_dropout_backward(const float *dy, float *dx, size_t n, float p, uint64_t seed);
void cuda_maxpool_forward(const PoolShape *s, const float *x, float *y, int32_t *argmax);
void cuda_maxpool_backward(const PoolShape *s, const float *dy, const int32_t *argmax, float *dx);
void cuda_layernorm_forward(const float *x, const float *gamma, const float *beta, float *y,
                            float *mean, float *rstd, int T, int D, float eps);
void cuda_layernorm_backward(const float *dy, const float *x, const float *mean, const float *rstd,
                             const float *gamma, float *dx, float *dgamma, float *dbeta, int T, int D);
void cuda_softmax_forward(const float *x, float *y, int R, int N);
void cuda_softmax_backward(const float *dy, const float *y, float *dx, int R, int N);
void cuda_attention_forward(const AttnShape *s, const float *q, const float *k, const float *v,
                            const uint8_t *key_padding_mask, float *probs, float *out);
void cuda_attention_backward(const AttnShape *s, const float *dout, const float *q, const float *k,
                             const float *v, const float *probs, float *dq, float *dk, float *dv);
/* Reductions return to the host: they synchronise the stream. */
double cuda_sum(const float *x, size_t n);
double cuda_sum_squares(const float *x, size_t n);
void cuda_adamw(float *p, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                float beta2, float eps, float wd, int step, float gscale);

#ifdef __cplusplus
}
#endif
#endif
