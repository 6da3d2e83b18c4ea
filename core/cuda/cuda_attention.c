/* cuda_attention.c: fused scaled-dot-product attention on the GPU, the
 * counterpart of core/cpu/cpu_attention.c with the same algorithm: per chunk
 * of (batch x head) slices, S = scale Q K^T (one strided-batch cuBLAS call),
 * the masked softmax in place with the row log-sum-exp saved
 * (kernels/cuda/attention.cu), O = P V. Nothing of size B x Lq x Lk outlives
 * the op: backward recomputes P from the saved log-sum-exp chunk by chunk,
 *   dV = P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(P dP)),
 *   dQ = scale dS K,  dK = scale dS^T Q.
 * Chunks are sized so the score buffers stay under ATTN_SCRATCH bytes; the
 * buffers come from the caching allocator. */
#include <math.h>
#include <string.h>
#include "cuda_internal.h"
#include "../backend_nn.h"

#define ATTN_SCRATCH ((int64_t)512 << 20)

typedef struct {
  ad_dtype dt;
  size_t es;
  int64_t B, Lq, Lk, D, Dv;
  adk_attn_mask mask;
} attn_shape;

static ad_status shape_of(attn_shape *s, const ad_tensor *q, const ad_tensor *k, const ad_tensor *v,
                          const ad_tensor *mask) {
  if (q->dtype != AD_F32 && q->dtype != AD_F64)
    return AD_FAIL(AD_EDTYPE, "scaled_dot_product_attention: the CUDA kernel computes in f32 or f64, got %s",
                   ad_dtype_name(q->dtype));
  const int nd = q->ndim;
  memset(s, 0, sizeof *s);
  s->dt = q->dtype;
  s->es = ad_dtype_size(q->dtype);
  s->Lq = q->shape[nd - 2];
  s->D = q->shape[nd - 1];
  s->Lk = k->shape[nd - 2];
  s->Dv = v->shape[nd - 1];
  s->B = 1;
  for (int d = 0; d < nd - 2; d++) s->B *= q->shape[d];
  if (mask) {
    s->mask.data = ad_data(mask);
    s->mask.dtype = mask->dtype;
    s->mask.nbatch = nd - 2;
    for (int d = 0; d < nd - 2; d++) s->mask.bshape[d] = q->shape[d];
    for (int d = 0; d < nd; d++) s->mask.mstrides[d] = mask->strides[d];
  }
  return AD_OK;
}

/* slices per chunk so that `bufs` score buffers of Lq x Lk fit the budget */
static int64_t chunk_slices(const attn_shape *s, int bufs) {
  int64_t per = s->Lq * s->Lk * (int64_t)s->es * bufs;
  int64_t nb = per > 0 ? ATTN_SCRATCH / per : s->B;
  if (nb < 1) nb = 1;
  return nb < s->B ? nb : s->B;
}

ad_status ad_cuda_attention_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *q, const ad_tensor *k,
                                const ad_tensor *v, const ad_tensor *mask, double scale, bool is_causal) {
  attn_shape s;
  AD_TRY(shape_of(&s, q, k, v, mask));
  adk_ctx kc;
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_kctx(&kc, &d, ad_cuda_dev_of(q)));
  if (s.Lk == 0) {  /* no keys: zeros, lse -inf, as on the CPU */
    AD_TRY(ad_cuda_check(ad_launch_fill_value(&kc, ad_data(out), s.dt, s.B * s.Lq * s.Dv, 0.0), "attention"));
    if (lse) AD_TRY(ad_cuda_check(ad_launch_fill_value(&kc, ad_data(lse), s.dt, s.B * s.Lq, -INFINITY), "attention"));
    return AD_OK;
  }
  const int64_t nb_max = chunk_slices(&s, 1);
  void *S = NULL;
  AD_TRY(ad_cuda_malloc(&S, (size_t)(nb_max * s.Lq * s.Lk) * s.es, kc.device));
  const char *qp = ad_data(q), *kp = ad_data(k), *vp = ad_data(v);
  char *op = ad_data(out);
  ad_status st = AD_OK;
  for (int64_t b0 = 0; b0 < s.B && st == AD_OK; b0 += nb_max) {
    const int64_t nb = s.B - b0 < nb_max ? s.B - b0 : nb_max;
    st = ad_cuda_gemm_rm(d, s.dt, false, true, s.Lq, s.Lk, s.D, scale, qp + b0 * s.Lq * s.D * s.es, s.D, s.Lq * s.D,
                         kp + b0 * s.Lk * s.D * s.es, s.D, s.Lk * s.D, 0.0, S, s.Lk, s.Lq * s.Lk, nb);
    if (st == AD_OK)
      st = ad_cuda_check(ad_launch_attention_softmax(&kc, S, lse ? ad_data(lse) : NULL, s.dt, b0, nb, s.Lq, s.Lk,
                                                     &s.mask, is_causal),
                         "attention softmax");
    if (st == AD_OK)
      st = ad_cuda_gemm_rm(d, s.dt, false, false, s.Lq, s.Dv, s.Lk, 1.0, S, s.Lk, s.Lq * s.Lk,
                           vp + b0 * s.Lk * s.Dv * s.es, s.Dv, s.Lk * s.Dv, 0.0, op + b0 * s.Lq * s.Dv * s.es, s.Dv,
                           s.Lq * s.Dv, nb);
  }
  ad_cuda_free(S, 0, kc.device);
  return st;
}

ad_status ad_cuda_attention_bwd(ad_tensor *dq, ad_tensor *dk, ad_tensor *dv, ad_tensor *dmask,
                                const ad_tensor *dout, const ad_tensor *q, const ad_tensor *k,
                                const ad_tensor *v, const ad_tensor *mask, const ad_tensor *lse,
                                double scale, bool is_causal) {
  attn_shape s;
  AD_TRY(shape_of(&s, q, k, v, mask));
  adk_ctx kc;
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_kctx(&kc, &d, ad_cuda_dev_of(q)));
  if (s.Lk == 0) {
    if (dq) AD_TRY(ad_cuda_check(ad_launch_fill_value(&kc, ad_data(dq), s.dt, s.B * s.Lq * s.D, 0.0), "attention"));
    return AD_OK;
  }
  const int64_t nb_max = chunk_slices(&s, 2);
  const size_t buf = (size_t)(nb_max * s.Lq * s.Lk) * s.es;
  void *P = NULL;
  AD_TRY(ad_cuda_malloc(&P, 2 * buf, kc.device));
  char *dP = (char *)P + buf;
  const char *qp = ad_data(q), *kp = ad_data(k), *vp = ad_data(v), *gp = ad_data(dout);
  ad_status st = AD_OK;
  for (int64_t b0 = 0; b0 < s.B && st == AD_OK; b0 += nb_max) {
    const int64_t nb = s.B - b0 < nb_max ? s.B - b0 : nb_max;
    const char *qb = qp + b0 * s.Lq * s.D * s.es, *kb = kp + b0 * s.Lk * s.D * s.es;
    const char *vb = vp + b0 * s.Lk * s.Dv * s.es, *gb = gp + b0 * s.Lq * s.Dv * s.es;
    st = ad_cuda_gemm_rm(d, s.dt, false, true, s.Lq, s.Lk, s.D, scale, qb, s.D, s.Lq * s.D, kb, s.D, s.Lk * s.D, 0.0,
                         P, s.Lk, s.Lq * s.Lk, nb);
    if (st == AD_OK)
      st = ad_cuda_check(ad_launch_attention_probs(&kc, P, ad_data(lse), s.dt, b0, nb, s.Lq, s.Lk, &s.mask,
                                                   is_causal),
                         "attention backward");
    if (st == AD_OK && dv)
      st = ad_cuda_gemm_rm(d, s.dt, true, false, s.Lk, s.Dv, s.Lq, 1.0, P, s.Lk, s.Lq * s.Lk, gb, s.Dv, s.Lq * s.Dv,
                           0.0, (char *)ad_data(dv) + b0 * s.Lk * s.Dv * s.es, s.Dv, s.Lk * s.Dv, nb);
    if (st != AD_OK || (!dq && !dk && !dmask)) continue;
    st = ad_cuda_gemm_rm(d, s.dt, false, true, s.Lq, s.Lk, s.Dv, 1.0, gb, s.Dv, s.Lq * s.Dv, vb, s.Dv, s.Lk * s.Dv,
                         0.0, dP, s.Lk, s.Lq * s.Lk, nb);
    if (st == AD_OK)
      st = ad_cuda_check(ad_launch_attention_dscores(&kc, P, dP, s.dt, nb * s.Lq, s.Lk), "attention backward");
    if (st == AD_OK && dmask)
      st = ad_cuda_check(cudaMemcpyAsync((char *)ad_data(dmask) + b0 * s.Lq * s.Lk * s.es, dP,
                                         (size_t)(nb * s.Lq * s.Lk) * s.es, cudaMemcpyDeviceToDevice, kc.stream),
                         "attention backward");
    if (st == AD_OK && dq)
      st = ad_cuda_gemm_rm(d, s.dt, false, false, s.Lq, s.D, s.Lk, scale, dP, s.Lk, s.Lq * s.Lk, kb, s.D,
                           s.Lk * s.D, 0.0, (char *)ad_data(dq) + b0 * s.Lq * s.D * s.es, s.D, s.Lq * s.D, nb);
    if (st == AD_OK && dk)
      st = ad_cuda_gemm_rm(d, s.dt, true, false, s.Lk, s.D, s.Lq, scale, dP, s.Lk, s.Lq * s.Lk, qb, s.D, s.Lq * s.D,
                           0.0, (char *)ad_data(dk) + b0 * s.Lk * s.D * s.es, s.D, s.Lk * s.D, nb);
  }
  ad_cuda_free(P, 0, kc.device);
  return st;
}
