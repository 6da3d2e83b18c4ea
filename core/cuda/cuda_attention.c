/* cuda_attention.c: fused scaled-dot-product attention on the GPU, the
 * counterpart of core/cpu/cpu_attention.c with the same algorithm: per chunk
 * of (batch x head) slices, S = scale Q K^T (one strided-batch cuBLAS call),
 * the masked softmax in place with the row log-sum-exp saved
 * (kernels/cuda/attention.cu), O = P V. Nothing of size B x Lq x Lk outlives
 * the op: backward recomputes P from the saved log-sum-exp chunk by chunk,
 *   dV = P^T dO,  dP = dO V^T,  dS = P (dP - rowsum(P dP)),
 *   dQ = scale dS K,  dK = scale dS^T Q.
 * Chunks are sized so the score buffers stay under ATTN_SCRATCH bytes; the
 * buffers come from the caching allocator.
 *
 * f16/bf16 q, k, v run the products on tensor cores as PyTorch's autocast
 * does (guided-diffusion's einsum attention in bf16): S and dP come out of
 * cuBLAS in f32, the softmax, the log-sum-exp and dS are computed in f32, and
 * P and dS are rounded to the half type only as operands of the next product.
 * Before, half attention was upcast and ran its products in strict f32, at a
 * sixteenth of the tensor-core rate. */
#include <math.h>
#include <string.h>
#include "cuda_internal.h"
#include "../backend_nn.h"

#define ATTN_SCRATCH ((int64_t)512 << 20)

typedef struct {
  ad_dtype dt;       /* q, k, v, out */
  ad_dtype sdt;      /* scores, lse and a float mask: f32 for half q, k, v */
  int hdt;           /* ADK_F16/ADK_BF16: the half copies of P and dS; -1: none */
  size_t es, ses;
  int64_t B, Lq, Lk, D, Dv;
  adk_attn_mask mask;
} attn_shape;

static ad_status shape_of(attn_shape *s, const ad_tensor *q, const ad_tensor *k, const ad_tensor *v,
                          const ad_tensor *mask) {
  const int nd = q->ndim;
  memset(s, 0, sizeof *s);
  s->dt = q->dtype;
  switch (q->dtype) {
  case AD_F32: case AD_F64: s->sdt = q->dtype; s->hdt = -1; break;
  case AD_F16: s->sdt = AD_F32; s->hdt = ADK_F16; break;
  case AD_BF16: s->sdt = AD_F32; s->hdt = ADK_BF16; break;
  default:
    return AD_FAIL(AD_EDTYPE, "scaled_dot_product_attention: the CUDA kernel takes f32, f64, f16 or bf16, got %s",
                   ad_dtype_name(q->dtype));
  }
  if (mask && mask->dtype != AD_BOOL && mask->dtype != s->sdt)
    return AD_FAIL(AD_EDTYPE, "scaled_dot_product_attention: a float mask must be %s for %s attention, got %s",
                   ad_dtype_name(s->sdt), ad_dtype_name(q->dtype), ad_dtype_name(mask->dtype));
  s->es = ad_dtype_size(q->dtype);
  s->ses = ad_dtype_size(s->sdt);
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

/* slices per chunk so that the score buffers (bytes per score element) fit the budget */
static int64_t chunk_slices(const attn_shape *s, size_t bytes) {
  int64_t per = s->Lq * s->Lk * (int64_t)bytes;
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
    if (lse) AD_TRY(ad_cuda_check(ad_launch_fill_value(&kc, ad_data(lse), s.sdt, s.B * s.Lq, -INFINITY), "attention"));
    return AD_OK;
  }
  const bool half = s.hdt >= 0;
  /* S (scores, then P in place), and for half attention P's half copy */
  const int64_t nb_max = chunk_slices(&s, s.ses + (half ? s.es : 0));
  const size_t sbuf = (size_t)(nb_max * s.Lq * s.Lk) * s.ses;
  void *S = NULL;
  AD_TRY(ad_cuda_malloc(&S, sbuf + (half ? (size_t)(nb_max * s.Lq * s.Lk) * s.es : 0), kc.device));
  void *P = half ? (char *)S + sbuf : S;
  const char *qp = ad_data(q), *kp = ad_data(k), *vp = ad_data(v);
  char *op = ad_data(out);
  ad_status st = AD_OK;
  for (int64_t b0 = 0; b0 < s.B && st == AD_OK; b0 += nb_max) {
    const int64_t nb = s.B - b0 < nb_max ? s.B - b0 : nb_max;
    st = ad_cuda_gemm_rm_ex(d, s.dt, s.sdt, false, true, s.Lq, s.Lk, s.D, scale, qp + b0 * s.Lq * s.D * s.es, s.D,
                            s.Lq * s.D, kp + b0 * s.Lk * s.D * s.es, s.D, s.Lk * s.D, 0.0, S, s.Lk, s.Lq * s.Lk, nb);
    if (st == AD_OK)
      st = ad_cuda_check(ad_launch_attention_softmax(&kc, S, P, s.hdt, lse ? ad_data(lse) : NULL, s.sdt, b0, nb,
                                                     s.Lq, s.Lk, &s.mask, is_causal),
                         "attention softmax");
    if (st == AD_OK)
      st = ad_cuda_gemm_rm(d, s.dt, false, false, s.Lq, s.Dv, s.Lk, 1.0, P, s.Lk, s.Lq * s.Lk,
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
  const bool half = s.hdt >= 0;
  /* S/P (the raw scores for half attention) and dP/dS, and for half attention
   * one half buffer: P's copy for the dV product, then dS's for the dQ and dK
   * products */
  const int64_t nb_max = chunk_slices(&s, 2 * s.ses + (half ? s.es : 0));
  const size_t buf = (size_t)(nb_max * s.Lq * s.Lk) * s.ses;
  void *P = NULL;
  AD_TRY(ad_cuda_malloc(&P, 2 * buf + (half ? (size_t)(nb_max * s.Lq * s.Lk) * s.es : 0), kc.device));
  char *dP = (char *)P + buf;
  void *H = half ? dP + buf : NULL;
  const void *Pm = half ? H : P, *dSm = half ? H : dP;   /* the products' operands */
  const char *qp = ad_data(q), *kp = ad_data(k), *vp = ad_data(v), *gp = ad_data(dout);
  ad_status st = AD_OK;
  for (int64_t b0 = 0; b0 < s.B && st == AD_OK; b0 += nb_max) {
    const int64_t nb = s.B - b0 < nb_max ? s.B - b0 : nb_max;
    const char *qb = qp + b0 * s.Lq * s.D * s.es, *kb = kp + b0 * s.Lk * s.D * s.es;
    const char *vb = vp + b0 * s.Lk * s.Dv * s.es, *gb = gp + b0 * s.Lq * s.Dv * s.es;
    st = ad_cuda_gemm_rm_ex(d, s.dt, s.sdt, false, true, s.Lq, s.Lk, s.D, scale, qb, s.D, s.Lq * s.D, kb, s.D,
                            s.Lk * s.D, 0.0, P, s.Lk, s.Lq * s.Lk, nb);
    /* f32/f64: P replaces S; half: S stays (dS recomputes P from it) and P's half copy feeds dV */
    if (st == AD_OK)
      st = ad_cuda_check(ad_launch_attention_probs(&kc, P, H, s.hdt, !half, ad_data(lse), s.sdt, b0, nb, s.Lq, s.Lk,
                                                   &s.mask, is_causal),
                         "attention backward");
    if (st == AD_OK && dv)
      st = ad_cuda_gemm_rm(d, s.dt, true, false, s.Lk, s.Dv, s.Lq, 1.0, Pm, s.Lk, s.Lq * s.Lk, gb, s.Dv, s.Lq * s.Dv,
                           0.0, (char *)ad_data(dv) + b0 * s.Lk * s.Dv * s.es, s.Dv, s.Lk * s.Dv, nb);
    if (st != AD_OK || (!dq && !dk && !dmask)) continue;
    st = ad_cuda_gemm_rm_ex(d, s.dt, s.sdt, false, true, s.Lq, s.Lk, s.Dv, 1.0, gb, s.Dv, s.Lq * s.Dv, vb, s.Dv,
                            s.Lk * s.Dv, 0.0, dP, s.Lk, s.Lq * s.Lk, nb);
    if (st == AD_OK)
      st = ad_cuda_check(ad_launch_attention_dscores(&kc, P, half ? ad_data(lse) : NULL, b0, s.Lq, &s.mask, is_causal,
                                                     dP, !half || dmask, H, s.hdt, s.sdt, nb, s.Lk),
                         "attention backward");
    if (st == AD_OK && dmask)
      st = ad_cuda_check(cudaMemcpyAsync((char *)ad_data(dmask) + b0 * s.Lq * s.Lk * s.ses, dP,
                                         (size_t)(nb * s.Lq * s.Lk) * s.ses, cudaMemcpyDeviceToDevice, kc.stream),
                         "attention backward");
    if (st == AD_OK && dq)
      st = ad_cuda_gemm_rm(d, s.dt, false, false, s.Lq, s.D, s.Lk, scale, dSm, s.Lk, s.Lq * s.Lk, kb, s.D,
                           s.Lk * s.D, 0.0, (char *)ad_data(dq) + b0 * s.Lq * s.D * s.es, s.D, s.Lq * s.D, nb);
    if (st == AD_OK && dk)
      st = ad_cuda_gemm_rm(d, s.dt, true, false, s.Lk, s.D, s.Lq, scale, dSm, s.Lk, s.Lq * s.Lk, qb, s.D, s.Lq * s.D,
                           0.0, (char *)ad_data(dk) + b0 * s.Lk * s.D * s.es, s.D, s.Lk * s.D, nb);
  }
  ad_cuda_free(P, 0, kc.device);
  return st;
}
