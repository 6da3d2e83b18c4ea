/* cuda_nn.c: the CUDA instance of the nn kernel table (backend_nn.h):
 * normalisation, softmax, embedding, dropout and losses. Each entry checks
 * what the launcher relies on (f32/f64 data, contiguous tensors as the front
 * ends promise) and hands raw pointers to kernels/cuda/{norm,softmax,nn,loss}.cu;
 * attention lives in cuda_attention.c. */
#include "cuda_internal.h"
#include "../backend_nn.h"

static ad_status need_float(const ad_tensor *t, const char *op) {
  if (t->dtype != AD_F32 && t->dtype != AD_F64)
    return AD_FAIL(AD_EDTYPE, "%s: the CUDA kernel computes in f32 or f64, got %s", op, ad_dtype_name(t->dtype));
  return AD_OK;
}

static ad_status kctx_of(adk_ctx *k, const ad_tensor *t) { return ad_cuda_kctx(k, NULL, ad_cuda_dev_of(t)); }

#define PTR(t) ((void *)ad_cuda_ptr(t))

/* ======================================================================= normalisation */

ad_status ad_cuda_group_norm_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                                 const ad_tensor *w, const ad_tensor *b, int64_t N, int64_t C, int64_t S, int64_t G,
                                 double eps) {
  AD_TRY(need_float(x, "group_norm"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_group_norm_fwd(&k, ad_data(y), ad_data(mean), ad_data(rstd), ad_data(x), PTR(w),
                                                PTR(b), x->dtype, N, C, S, G, eps),
                       "group_norm");
}

ad_status ad_cuda_group_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                 const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                 const ad_tensor *w, int64_t N, int64_t C, int64_t S, int64_t G) {
  AD_TRY(need_float(x, "group_norm backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_group_norm_bwd(&k, PTR(dx), PTR(dw), PTR(db), ad_data(dy), ad_data(x),
                                                ad_data(mean), ad_data(rstd), PTR(w), x->dtype, N, C, S, G),
                       "group_norm backward");
}

ad_status ad_cuda_batch_norm_fwd(ad_tensor *y, ad_tensor *save_mean, ad_tensor *save_rstd, const ad_tensor *x,
                                 const ad_tensor *w, const ad_tensor *b, ad_tensor *running_mean,
                                 ad_tensor *running_var, int64_t N, int64_t C, int64_t S, bool training,
                                 double momentum, double eps) {
  AD_TRY(need_float(x, "batch_norm"));
  if (!training && (!running_mean || !running_var))
    return AD_FAIL(AD_EINVAL, "batch_norm: running_mean and running_var are required in evaluation mode");
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_batch_norm_fwd(&k, ad_data(y), ad_data(save_mean), ad_data(save_rstd), ad_data(x),
                                                PTR(w), PTR(b), PTR(running_mean), PTR(running_var), x->dtype, N, C,
                                                S, training, momentum, eps),
                       "batch_norm");
}

ad_status ad_cuda_batch_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                 const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                 const ad_tensor *w, int64_t N, int64_t C, int64_t S, bool training) {
  AD_TRY(need_float(x, "batch_norm backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_batch_norm_bwd(&k, PTR(dx), PTR(dw), PTR(db), ad_data(dy), ad_data(x),
                                                ad_data(mean), ad_data(rstd), PTR(w), x->dtype, N, C, S, training),
                       "batch_norm backward");
}

ad_status ad_cuda_layer_norm_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                                 const ad_tensor *w, const ad_tensor *b, int64_t M, int64_t D, double eps) {
  AD_TRY(need_float(x, "layer_norm"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_layer_norm_fwd(&k, ad_data(y), ad_data(mean), ad_data(rstd), ad_data(x), PTR(w),
                                                PTR(b), x->dtype, M, D, eps),
                       "layer_norm");
}

ad_status ad_cuda_layer_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                 const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                 const ad_tensor *w, int64_t M, int64_t D) {
  AD_TRY(need_float(x, "layer_norm backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_layer_norm_bwd(&k, PTR(dx), PTR(dw), PTR(db), ad_data(dy), ad_data(x),
                                                ad_data(mean), ad_data(rstd), PTR(w), x->dtype, M, D),
                       "layer_norm backward");
}

/* ======================================================================= softmax */

ad_status ad_cuda_softmax_fwd(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t L, int64_t inner, bool log) {
  AD_TRY(need_float(x, log ? "log_softmax" : "softmax"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_softmax_fwd(&k, ad_data(y), ad_data(x), x->dtype, outer, L, inner, log),
                       log ? "log_softmax" : "softmax");
}

ad_status ad_cuda_softmax_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *y, int64_t outer, int64_t L,
                              int64_t inner, bool log) {
  AD_TRY(need_float(y, log ? "log_softmax backward" : "softmax backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, y));
  return ad_cuda_check(ad_launch_softmax_bwd(&k, ad_data(dx), ad_data(dy), ad_data(y), y->dtype, outer, L, inner, log),
                       log ? "log_softmax backward" : "softmax backward");
}

/* ======================================================================= embedding, dropout */

static ad_status check_rows(const adk_ctx *k, const ad_tensor *indices, int64_t V, const char *op) {
  int found = 0;
  int64_t bad = 0;
  AD_TRY(ad_cuda_check(ad_launch_check_indices(k, ad_data(indices), indices->dtype == AD_I64, ad_numel(indices), V,
                                               &found, &bad),
                       op));
  if (found) return AD_FAIL(AD_EINVAL, "%s: index %lld out of range for %lld rows", op, (long long)bad, (long long)V);
  return AD_OK;
}

ad_status ad_cuda_embedding_fwd(ad_tensor *out, const ad_tensor *weight, const ad_tensor *indices) {
  adk_ctx k;
  AD_TRY(kctx_of(&k, weight));
  AD_TRY(check_rows(&k, indices, weight->shape[0], "embedding"));
  size_t row = (size_t)weight->shape[1] * ad_dtype_size(weight->dtype);
  return ad_cuda_check(ad_launch_embedding_fwd(&k, ad_data(out), ad_data(weight), row, ad_data(indices),
                                               indices->dtype == AD_I64, ad_numel(indices)),
                       "embedding");
}

ad_status ad_cuda_embedding_bwd(ad_tensor *dweight, const ad_tensor *dout, const ad_tensor *indices) {
  AD_TRY(need_float(dweight, "embedding backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, dweight));
  AD_TRY(check_rows(&k, indices, dweight->shape[0], "embedding"));
  return ad_cuda_check(ad_launch_embedding_bwd(&k, ad_data(dweight), ad_data(dout), dweight->dtype, ad_data(indices),
                                               indices->dtype == AD_I64, ad_numel(indices), dweight->shape[1]),
                       "embedding backward");
}

ad_status ad_cuda_dropout_fwd(ad_tensor *y, ad_tensor *mask, const ad_tensor *x, double p, uint64_t seed,
                              uint64_t offset) {
  adk_ctx k;
  AD_TRY(kctx_of(&k, x));
  return ad_cuda_check(ad_launch_dropout_fwd(&k, ad_data(y), ad_data(mask), ad_data(x), x->dtype, ad_numel(x), p,
                                             seed, offset),
                       "dropout");
}

/* ======================================================================= losses */

ad_status ad_cuda_pointwise_loss_fwd(ad_tensor *out, const ad_tensor *input, const ad_tensor *target,
                                     const ad_tensor *weight, const ad_tensor *pos_weight, ad_pointwise_loss kind,
                                     ad_reduction r) {
  AD_TRY(need_float(input, "loss"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, input));
  return ad_cuda_check(ad_launch_pointwise_loss_fwd(&k, ad_data(out), ad_data(input), ad_data(target), PTR(weight),
                                                    PTR(pos_weight), input->dtype, ad_numel(input), (int)kind, (int)r),
                       "loss");
}

ad_status ad_cuda_pointwise_loss_bwd(ad_tensor *dinput, ad_tensor *dtarget, ad_tensor *dweight,
                                     ad_tensor *dpos_weight, const ad_tensor *dy, const ad_tensor *input,
                                     const ad_tensor *target, const ad_tensor *weight, const ad_tensor *pos_weight,
                                     ad_pointwise_loss kind, ad_reduction r) {
  AD_TRY(need_float(input, "loss backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, input));
  return ad_cuda_check(ad_launch_pointwise_loss_bwd(&k, PTR(dinput), PTR(dtarget), PTR(dweight), PTR(dpos_weight),
                                                    ad_data(dy), ad_data(input), ad_data(target), PTR(weight),
                                                    PTR(pos_weight), input->dtype, ad_numel(input), (int)kind, (int)r),
                       "loss backward");
}

/* every target valid (or ignored); the mean's denominator */
static ad_status check_targets(double *denom, const adk_ctx *k, const char *op, const ad_tensor *target,
                               const ad_tensor *weight, int64_t C, int64_t ignore_index) {
  int found = 0;
  int64_t bad = 0;
  AD_TRY(ad_cuda_check(ad_launch_check_targets(k, ad_data(target), target->dtype == AD_I64, ad_numel(target),
                                               ad_cuda_ptr(weight), weight ? (int)weight->dtype : AD_F32, C,
                                               ignore_index, &found, &bad, denom),
                       op));
  if (found) return AD_FAIL(AD_EINVAL, "%s: target %lld out of range for %lld classes", op, (long long)bad, (long long)C);
  return AD_OK;
}

static int64_t spatial(const ad_tensor *target, int64_t N) { return ad_numel(target) / (N ? N : 1); }

ad_status ad_cuda_cross_entropy_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *logits, const ad_tensor *target,
                                    const ad_tensor *weight, int64_t ignore_index, double label_smoothing,
                                    ad_reduction r) {
  AD_TRY(need_float(logits, "cross_entropy"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, logits));
  const int64_t N = logits->shape[0], C = logits->shape[1];
  double denom;
  AD_TRY(check_targets(&denom, &k, "cross_entropy", target, weight, C, ignore_index));
  return ad_cuda_check(ad_launch_cross_entropy_fwd(&k, ad_data(out), ad_data(lse), ad_data(logits), ad_data(target),
                                                   target->dtype == AD_I64, PTR(weight), logits->dtype, N, C,
                                                   spatial(target, N), ignore_index, label_smoothing, (int)r, denom),
                       "cross_entropy");
}

ad_status ad_cuda_cross_entropy_bwd(ad_tensor *dlogits, const ad_tensor *dy, const ad_tensor *logits,
                                    const ad_tensor *lse, const ad_tensor *target, const ad_tensor *weight,
                                    int64_t ignore_index, double label_smoothing, ad_reduction r) {
  AD_TRY(need_float(logits, "cross_entropy backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, logits));
  const int64_t N = logits->shape[0], C = logits->shape[1];
  double denom;
  AD_TRY(check_targets(&denom, &k, "cross_entropy", target, weight, C, ignore_index));
  return ad_cuda_check(ad_launch_cross_entropy_bwd(&k, ad_data(dlogits), ad_data(dy), ad_data(logits), ad_data(lse),
                                                   ad_data(target), target->dtype == AD_I64, PTR(weight),
                                                   logits->dtype, N, C, spatial(target, N), ignore_index,
                                                   label_smoothing, (int)r, denom),
                       "cross_entropy backward");
}

ad_status ad_cuda_nll_loss_fwd(ad_tensor *out, const ad_tensor *logp, const ad_tensor *target,
                               const ad_tensor *weight, int64_t ignore_index, ad_reduction r) {
  AD_TRY(need_float(logp, "nll_loss"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, logp));
  const int64_t N = logp->shape[0], C = logp->shape[1];
  double denom;
  AD_TRY(check_targets(&denom, &k, "nll_loss", target, weight, C, ignore_index));
  return ad_cuda_check(ad_launch_nll_loss_fwd(&k, ad_data(out), ad_data(logp), ad_data(target), target->dtype == AD_I64,
                                              PTR(weight), logp->dtype, N, C, spatial(target, N), ignore_index,
                                              (int)r, denom),
                       "nll_loss");
}

ad_status ad_cuda_nll_loss_bwd(ad_tensor *dlogp, const ad_tensor *dy, const ad_tensor *target,
                               const ad_tensor *weight, int64_t ignore_index, ad_reduction r) {
  AD_TRY(need_float(dlogp, "nll_loss backward"));
  adk_ctx k;
  AD_TRY(kctx_of(&k, dlogp));
  const int64_t N = dlogp->shape[0], C = dlogp->shape[1];
  double denom;
  AD_TRY(check_targets(&denom, &k, "nll_loss", target, weight, C, ignore_index));
  return ad_cuda_check(ad_launch_nll_loss_bwd(&k, ad_data(dlogp), ad_data(dy), ad_data(target), target->dtype == AD_I64,
                                              PTR(weight), dlogp->dtype, N, C, spatial(target, N), ignore_index,
                                              (int)r, denom),
                       "nll_loss backward");
}

/* ======================================================================= the table */

ad_status ad_cuda_attention_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *q, const ad_tensor *k,
                                const ad_tensor *v, const ad_tensor *mask, double scale, bool is_causal);
ad_status ad_cuda_attention_bwd(ad_tensor *dq, ad_tensor *dk, ad_tensor *dv, ad_tensor *dmask,
                                const ad_tensor *dout, const ad_tensor *q, const ad_tensor *k,
                                const ad_tensor *v, const ad_tensor *mask, const ad_tensor *lse,
                                double scale, bool is_causal);

const struct ad_nn_kernels ad_cuda_nn_kernels = {
  .group_norm_fwd = ad_cuda_group_norm_fwd,
  .group_norm_bwd = ad_cuda_group_norm_bwd,
  .batch_norm_fwd = ad_cuda_batch_norm_fwd,
  .batch_norm_bwd = ad_cuda_batch_norm_bwd,
  .layer_norm_fwd = ad_cuda_layer_norm_fwd,
  .layer_norm_bwd = ad_cuda_layer_norm_bwd,
  .softmax_fwd = ad_cuda_softmax_fwd,
  .softmax_bwd = ad_cuda_softmax_bwd,
  .attention_fwd = ad_cuda_attention_fwd,
  .attention_bwd = ad_cuda_attention_bwd,
  .attention_half = true,
  .embedding_fwd = ad_cuda_embedding_fwd,
  .embedding_bwd = ad_cuda_embedding_bwd,
  .dropout_fwd = ad_cuda_dropout_fwd,
  .pointwise_loss_fwd = ad_cuda_pointwise_loss_fwd,
  .pointwise_loss_bwd = ad_cuda_pointwise_loss_bwd,
  .cross_entropy_fwd = ad_cuda_cross_entropy_fwd,
  .cross_entropy_bwd = ad_cuda_cross_entropy_bwd,
  .nll_loss_fwd = ad_cuda_nll_loss_fwd,
  .nll_loss_bwd = ad_cuda_nll_loss_bwd,
};
