/* backend_cuda_table.cu - backend_cuda(): every slot of the Backend table (backend.h) pointing at
 * the CUDA implementation: memory from backend_cuda.cu, the precision from cuda_amp.cu,
 * convolutions from cuda_conv.cu, dense ops from cuda_dense.cu, the rest from cuda_kernels_*.cu.
 * Slots are assigned one by one (C++17 has no designated initialisers) in a function-local
 * static, initialised once, thread-safely. */
#include "backend_cuda.h"
#include "backend_cuda_table.h"
#include "cuda_ops.h"

static Backend make_cuda_backend(void) {
    Backend b = {};
    b.name = "cuda";
    /* memory */
    b.alloc = cuda_alloc;
    b.free = cuda_free;
    b.alloc_bytes = cuda_alloc_bytes;
    b.free_bytes = cuda_free_bytes;
    b.upload = cuda_upload;
    b.download = cuda_download;
    b.copy = cuda_copy;
    b.fill = cuda_fill;
    b.synchronize = cuda_synchronize;
    /* mixed precision of the matrix products (cuda_amp.cu); the six matrix-product slots go
     * through cuda_amp_*, which call the float32 ops unchanged at PRECISION_FP32 */
    b.set_precision = cuda_set_precision;
    /* convolution (cuDNN) */
    b.conv2d_forward = cuda_amp_conv2d_forward;
    b.conv2d_backward_data = cuda_amp_conv2d_backward_data;
    b.conv2d_backward_weight = cuda_amp_conv2d_backward_weight;
    /* per-channel affine */
    b.channel_affine = cuda_channel_affine;
    b.channel_affine_backward = cuda_channel_affine_backward;
    /* elementwise */
    b.relu_forward = cuda_relu_forward;
    b.relu_backward = cuda_relu_backward;
    b.add = cuda_add;
    b.add_relu = cuda_add_relu;
    b.axpy = cuda_axpy;
    b.scale = cuda_scale;
    b.sigmoid_forward = cuda_sigmoid_forward;
    b.sigmoid_backward = cuda_sigmoid_backward;
    b.dropout_forward = cuda_dropout_forward;
    b.dropout_backward = cuda_dropout_backward;
    /* max-pool */
    b.maxpool_forward = cuda_maxpool_forward;
    b.maxpool_backward = cuda_maxpool_backward;
    /* dense (cuBLAS + own kernels) */
    b.gemm = cuda_amp_gemm; /* cuda_gemm itself stays float32: attention calls it */
    b.linear_forward = cuda_amp_linear_forward;
    b.linear_backward = cuda_amp_linear_backward;
    b.transpose = cuda_transpose;
    /* normalisation, softmax */
    b.layernorm_forward = cuda_layernorm_forward;
    b.layernorm_backward = cuda_layernorm_backward;
    b.softmax_forward = cuda_softmax_forward;
    b.softmax_backward = cuda_softmax_backward;
    /* attention */
    b.attention_forward = cuda_attention_forward;
    b.attention_backward = cuda_attention_backward;
    /* reductions, optimizer */
    b.sum = cuda_sum;
    b.sum_squares = cuda_sum_squares;
    b.adamw = cuda_adamw;
    return b;
}

const Backend *backend_cuda(void) {
    static const Backend table = make_cuda_backend();
    return &table;
}
