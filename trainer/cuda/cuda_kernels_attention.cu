/* cuda_kernels_attention.cu - the multi-head attention core on the device (see AttnShape in
 * backend.h), with the CPU backend's semantics (backend_cpu_attn.c).
 *
 * Head h uses columns [h*dh, (h+1)*dh) of q, k, v, out (dh = D / H). The matrix products are
 * cuda_gemm calls (row-major, strided batched): one call per head h, batched over the B images,
 * so the batch index moves by whole row blocks (q: Sq*ldq, k: Sk*ldk, v: Sk*ldv, out: Sq*D,
 * probs: H*Sq*Sk) and the matrices a call writes never share memory. For head h:
 *   Q_bh = q + b*Sq*ldq + h*dh   [Sq, dh] ld ldq      P_bh = probs + (b*H + h)*Sq*Sk  [Sq, Sk]
 *   K_bh = k + b*Sk*ldk + h*dh   [Sk, dh] ld ldk      O_bh = out + b*Sq*D + h*dh      [Sq, dh] ld D
 *   V_bh = v + b*Sk*ldv + h*dh   [Sk, dh] ld ldv
 * Forward:
 *   P_bh = scale * Q_bh K_bh^T            gemm(N, T), H calls, straight into probs
 *   P = softmax(P + key padding mask)     one warp-per-row kernel over all B*H*Sq rows
 *   O_bh = Drop(P_bh) V_bh                gemm(N, N), H calls; with dropout, Drop(P_bh) of the
 *                                         B images of head h goes to the workspace [B, Sq, Sk]
 * Backward, per head h (workspace W [B, Sq, Sk], reused in stream order):
 *   W = Drop(P_bh);   dV_bh += W^T dO_bh                              gemm(T, N)
 *   W = dO_bh V_bh^T  (dPdrop)                                        gemm(N, T)
 *   W = P * (Drop'(W) - rowsum(Drop'(W) * P))  (dS, in place)          warp-per-row kernel
 *   dQ_bh += scale * W K_bh;   dK_bh += scale * W^T Q_bh               gemm(N, N), gemm(T, N)
 * Dropout keeps probs element e (flat index into [B, H, Sq, Sk]) when rng_uniform(seed, e) >= p,
 * as on the CPU, so both backends drop the same probabilities. A query row whose keys are all
 * padding gets probabilities all 0 (so its output row is 0), as on the CPU. */
#include <math.h>
#include "cuda_kernels_internal.h"

static void attn_check_shape(const char *op, const AttnShape *s) {
    if (s->B < 1 || s->Sq < 1 || s->Sk < 1 || s->D < 1 || s->H < 1)
        cuda_kernels_shape_error(op, "AttnShape has a non-positive size");
    if (s->D % s->H != 0)
        cuda_kernels_shape_error(op, "D is not a multiple of the number of heads H");
    if (s->ldq < s->D || s->ldk < s->D || s->ldv < s->D)
        cuda_kernels_shape_error(op, "a leading dimension (ldq/ldk/ldv) is smaller than D");
    if (!(s->dropout >= 0.0f && s->dropout < 1.0f))
        cuda_kernels_shape_error(op, "dropout probability outside [0, 1)");
}

void cuda_attention_forward(const AttnShape *s, const float *q, const float *k, const float *v,
                            const uint8_t *key_padding_mask, float *probs, float *out) {
    attn_check_shape("attention_forward", s);
    const int B = s->B, H = s->H, Sq = s->Sq, Sk = s->Sk, D = s->D, dh = D / H;
    const float scale = 1.0f / sqrtf((float)dh);
    const size_t block = (size_t)Sq * Sk; /* one [Sq, Sk] score matrix */
    const long probs_b_stride = (long)H * (long)block;

    for (int h = 0; h < H; h++) /* P_bh [Sq, Sk] = scale * Q_bh [Sq, dh] K_bh^T [dh, Sk] */
        cuda_gemm(0, 1, Sq, Sk, dh, scale, q + (size_t)h * dh, s->ldq, (long)Sq * s->ldq,
                  k + (size_t)h * dh, s->ldk, (long)Sk * s->ldk, 0.0f, probs + (size_t)h * block,
                  Sk, probs_b_stride, B);

    /* rows of probs [B*H*Sq, Sk]; row r belongs to image r / (H*Sq), mask [B, Sk] */
    cuda_softmax_rows(probs, probs, (size_t)B * H * Sq, Sk, key_padding_mask, (size_t)H * Sq);

    float *dropped = s->dropout > 0.0f ? cuda_kernels_workspace((size_t)B * block) : NULL;
    for (int h = 0; h < H; h++) {
        const float *P = probs + (size_t)h * block; /* P_0h; image b at + b*probs_b_stride */
        long p_stride = probs_b_stride;
        if (dropped) { /* dropped [B, Sq, Sk] = Drop(P_bh), flat RNG index (b*H + h)*block + e */
            cuda_dropout_planes(P, probs_b_stride, dropped, (long)block, block, B,
                                (uint64_t)h * block, s->dropout, s->seed);
            P = dropped;
            p_stride = (long)block;
        }
        /* O_bh [Sq, dh] (ld D) = P [Sq, Sk] x V_bh [Sk, dh] */
        cuda_gemm(0, 0, Sq, dh, Sk, 1.0f, P, Sk, p_stride, v + (size_t)h * dh, s->ldv,
                  (long)Sk * s->ldv, 0.0f, out + (size_t)h * dh, D, (long)Sq * D, B);
    }
}

/* For head h, rows r < B*Sq of g = dS [B, Sq, Sk] (holding dPdrop on entry), in place: undo the
 * dropout (probs element flat index = the P row's offset in probs), then the softmax backward
 * against the saved P row: g = P * (g - sum(g * P)). One warp per row. */
__global__ static void attn_scores_grad_kernel(float *g, const float *probs, int B, int H, int h,
                                               int Sq, int Sk, float p, float keep_scale,
                                               uint64_t seed) {
    const int lane = threadIdx.x & 31;
    const size_t rows = (size_t)B * Sq, nwarps = global_thread_count() >> 5;
    for (size_t r = global_thread_index() >> 5; r < rows; r += nwarps) {
        const size_t b = r / Sq, i = r - b * Sq;
        const size_t prow = ((b * H + h) * Sq + i) * Sk; /* flat index of P's row start */
        const float *pr = probs + prow;
        float *gr = g + r * Sk;
        float dot = 0.0f;
        for (int j = lane; j < Sk; j += 32) {
            float gj = gr[j];
            if (p > 0.0f) {
                const float kept = __fmul_rn(gj, keep_scale);
                gj = cuda_rng_uniform(seed, prow + (uint64_t)j) >= p ? kept : 0.0f;
                gr[j] = gj;
            }
            dot += gj * pr[j];
        }
        dot = warp_sum(dot);
        for (int j = lane; j < Sk; j += 32) gr[j] = __fmul_rn(pr[j], __fsub_rn(gr[j], dot));
    }
}

void cuda_attention_backward(const AttnShape *s, const float *dout, const float *q, const float *k,
                             const float *v, const float *probs, float *dq, float *dk, float *dv) {
    attn_check_shape("attention_backward", s);
    if (!dq && !dk && !dv) return;
    const int B = s->B, H = s->H, Sq = s->Sq, Sk = s->Sk, D = s->D, dh = D / H;
    const float scale = 1.0f / sqrtf((float)dh);
    const float p = s->dropout, keep_scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    const size_t block = (size_t)Sq * Sk;
    const long probs_b_stride = (long)H * (long)block;
    const long q_b = (long)Sq * s->ldq, k_b = (long)Sk * s->ldk, v_b = (long)Sk * s->ldv;
    const long o_b = (long)Sq * D;
    const int need_w = dq || dk || p > 0.0f; /* dv alone without dropout reads probs directly */
    float *W = need_w ? cuda_kernels_workspace((size_t)B * block) : NULL; /* [B, Sq, Sk] */

    for (int h = 0; h < H; h++) {
        const float *P = probs + (size_t)h * block;    /* P_0h, image stride probs_b_stride */
        const float *dO = dout + (size_t)h * dh;       /* dO_0h [Sq, dh] ld D, stride o_b */
        const size_t col = (size_t)h * dh;             /* head's first column in q/k/v */
        if (dv) {
            const float *Pd = P;
            long pd_stride = probs_b_stride;
            if (p > 0.0f) {
                cuda_dropout_planes(P, probs_b_stride, W, (long)block, block, B,
                                    (uint64_t)h * block, p, s->seed);
                Pd = W;
                pd_stride = (long)block;
            }
            /* dV_bh [Sk, dh] (ld ldv) += Pd^T [Sk, Sq] x dO_bh [Sq, dh] */
            cuda_gemm(1, 0, Sk, dh, Sq, 1.0f, Pd, Sk, pd_stride, dO, D, o_b, 1.0f, dv + col,
                      s->ldv, v_b, B);
        }
        if (!dq && !dk) continue;
        /* W [Sq, Sk] = dO_bh [Sq, dh] x V_bh^T [dh, Sk]  (dPdrop; after the dV GEMM read W) */
        cuda_gemm(0, 1, Sq, Sk, dh, 1.0f, dO, D, o_b, v + col, s->ldv, v_b, 0.0f, W, Sk,
                  (long)block, B);
        attn_scores_grad_kernel<<<grid_for_rows((size_t)B * Sq), KERNEL_THREADS, 0,
                                  cuda_stream()>>>(W, probs, B, H, h, Sq, Sk, p, keep_scale,
                                                   s->seed);
        KERNEL_LAUNCH_CHECK();
        if (dq) /* dQ_bh [Sq, dh] (ld ldq) += scale * dS [Sq, Sk] x K_bh [Sk, dh] */
            cuda_gemm(0, 0, Sq, dh, Sk, scale, W, Sk, (long)block, k + col, s->ldk, k_b, 1.0f,
                      dq + col, s->ldq, q_b, B);
        if (dk) /* dK_bh [Sk, dh] (ld ldk) += scale * dS^T [Sk, Sq] x Q_bh [Sq, dh] */
            cuda_gemm(1, 0, Sk, dh, Sq, scale, W, Sk, (long)block, q + col, s->ldq, q_b, 1.0f,
                      dk + col, s->ldk, k_b, B);
    }
}
