/* backend_nn.h: the neural-network kernel family of a backend: group/batch/
 * layer normalisation, softmax, attention, embedding, dropout and losses.
 *
 * The front ends in core/ops/{norm,softmax,attention,embedding,loss}.c check
 * shapes and dtypes, make inputs contiguous, convert f16/bf16 to f32 (these
 * kernels compute in f32 or f64; f32 data is accumulated in f64) and allocate
 * every output; kernels only fill them. Saved normalisation statistics (mean,
 * rstd) are f64 whatever the data's dtype. Dimensions are passed explicitly in
 * the canonical layout each op uses, so a kernel never re-derives them from
 * a view. Tensors marked "or NULL" are optional; an output that is NULL is
 * not wanted (e.g. a gradient nobody asked for). */
#ifndef AD_BACKEND_NN_H
#define AD_BACKEND_NN_H

#include <stdbool.h>
#include "backend.h"
#include "ops.h"
#include "tensor.h"

/* pointwise losses sharing one kernel pair */
typedef enum { AD_LOSS_MSE = 0, AD_LOSS_L1, AD_LOSS_BCE_LOGITS } ad_pointwise_loss;

struct ad_nn_kernels {
  /* ---- normalisation ----
   * group_norm: x, y (N, C, S) contiguous; mean, rstd (N, G) f64; w, b (C) or NULL.
   * bwd: dx (N, C, S); dw, db (C) or NULL; one pass per (n, group). */
  ad_status (*group_norm_fwd)(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                              const ad_tensor *w, const ad_tensor *b, int64_t N, int64_t C, int64_t S,
                              int64_t G, double eps);
  ad_status (*group_norm_bwd)(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                              const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                              const ad_tensor *w, int64_t N, int64_t C, int64_t S, int64_t G);
  /* batch_norm: x, y (N, C, S); save_mean, save_rstd (C) f64 receive the statistics used
   * (batch stats when training, running stats otherwise); running_mean/var (C)
   * contiguous in the compute dtype or NULL, updated in place when training
   * (running_var with the unbiased variance). */
  ad_status (*batch_norm_fwd)(ad_tensor *y, ad_tensor *save_mean, ad_tensor *save_rstd, const ad_tensor *x,
                              const ad_tensor *w, const ad_tensor *b, ad_tensor *running_mean,
                              ad_tensor *running_var, int64_t N, int64_t C, int64_t S, bool training,
                              double momentum, double eps);
  ad_status (*batch_norm_bwd)(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                              const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                              const ad_tensor *w, int64_t N, int64_t C, int64_t S, bool training);
  /* layer_norm: x, y (M, D) rows; mean, rstd (M) f64; w, b (D) or NULL */
  ad_status (*layer_norm_fwd)(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                              const ad_tensor *w, const ad_tensor *b, int64_t M, int64_t D, double eps);
  ad_status (*layer_norm_bwd)(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                              const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                              const ad_tensor *w, int64_t M, int64_t D);

  /* ---- softmax: x, y (outer, L, inner) contiguous, normalised along L ---- */
  ad_status (*softmax_fwd)(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t L, int64_t inner,
                           bool log);
  /* y is the forward output (softmax or log_softmax) */
  ad_status (*softmax_bwd)(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *y, int64_t outer,
                           int64_t L, int64_t inner, bool log);

  /* ---- attention ----
   * q (B..., Lq, D), k (B..., Lk, D), v (B..., Lk, Dv), out (B..., Lq, Dv): contiguous,
   * same batch dims. mask: NULL, or a view (any strides, stride 0 for broadcast) of
   * shape (B..., Lq, Lk), dtype bool (true = attend) or the compute dtype (added to
   * the scores). lse (B..., Lq): the row log-sum-exp of the masked, scaled scores,
   * which lets backward recompute the probabilities instead of storing them.
   * Rows with every key masked give zeros (and zero gradients). */
  ad_status (*attention_fwd)(ad_tensor *out, ad_tensor *lse, const ad_tensor *q, const ad_tensor *k,
                             const ad_tensor *v, const ad_tensor *mask, double scale, bool is_causal);
  /* dq, dk, dv like q, k, v, or NULL; dmask (B..., Lq, Lk) contiguous or NULL: the
   * gradient of an additive mask (= gradient of the scores) */
  ad_status (*attention_bwd)(ad_tensor *dq, ad_tensor *dk, ad_tensor *dv, ad_tensor *dmask,
                             const ad_tensor *dout, const ad_tensor *q, const ad_tensor *k,
                             const ad_tensor *v, const ad_tensor *mask, const ad_tensor *lse,
                             double scale, bool is_causal);
  /* true: attention_fwd/bwd also take f16/bf16 q, k, v, with lse and a float
   * mask in f32 (the scores are computed in f32); false: the front end runs
   * half attention in f32 */
  bool attention_half;

  /* ---- embedding: weight (V, D) contiguous any dtype, indices (n) contiguous i64/i32,
   * out (n, D). Fails with AD_EINVAL naming the first out-of-range index. ---- */
  ad_status (*embedding_fwd)(ad_tensor *out, const ad_tensor *weight, const ad_tensor *indices);
  /* dweight (V, D) f32/f64, zero-filled by the caller; accumulates repeated indices */
  ad_status (*embedding_bwd)(ad_tensor *dweight, const ad_tensor *dout, const ad_tensor *indices);

  /* ---- dropout: y, mask, x contiguous, same shape and float dtype. Element i is kept
   * when Philox uniform (seed, offset, i) < 1 - p (the stream random_fill kind 0
   * draws); mask[i] = kept ? 1/(1-p) : 0 and y = x * mask. ---- */
  ad_status (*dropout_fwd)(ad_tensor *y, ad_tensor *mask, const ad_tensor *x, double p, uint64_t seed,
                           uint64_t offset);

  /* ---- losses ----
   * pointwise: input, target, and weight/pos_weight (or NULL) contiguous, one shape, one
   * dtype; out has that shape (AD_REDUCE_NONE) or is 0-d. */
  ad_status (*pointwise_loss_fwd)(ad_tensor *out, const ad_tensor *input, const ad_tensor *target,
                                  const ad_tensor *weight, const ad_tensor *pos_weight, ad_pointwise_loss kind,
                                  ad_reduction r);
  /* dy: the output's gradient (input's shape or 0-d); any of the four grads may be NULL */
  ad_status (*pointwise_loss_bwd)(ad_tensor *dinput, ad_tensor *dtarget, ad_tensor *dweight,
                                  ad_tensor *dpos_weight, const ad_tensor *dy, const ad_tensor *input,
                                  const ad_tensor *target, const ad_tensor *weight,
                                  const ad_tensor *pos_weight, ad_pointwise_loss kind, ad_reduction r);
  /* cross_entropy: logits (N, C, S) contiguous; target (N, S) contiguous i64/i32 class
   * indices; weight (C) or NULL; lse (N, S) receives the log-sum-exp over classes; out
   * (N, S) or 0-d. A target that is neither ignore_index nor in [0, C) fails with
   * AD_EINVAL. */
  ad_status (*cross_entropy_fwd)(ad_tensor *out, ad_tensor *lse, const ad_tensor *logits,
                                 const ad_tensor *target, const ad_tensor *weight, int64_t ignore_index,
                                 double label_smoothing, ad_reduction r);
  ad_status (*cross_entropy_bwd)(ad_tensor *dlogits, const ad_tensor *dy, const ad_tensor *logits,
                                 const ad_tensor *lse, const ad_tensor *target, const ad_tensor *weight,
                                 int64_t ignore_index, double label_smoothing, ad_reduction r);
  /* nll_loss: logp (N, C, S), the rest as cross_entropy */
  ad_status (*nll_loss_fwd)(ad_tensor *out, const ad_tensor *logp, const ad_tensor *target,
                            const ad_tensor *weight, int64_t ignore_index, ad_reduction r);
  ad_status (*nll_loss_bwd)(ad_tensor *dlogp, const ad_tensor *dy, const ad_tensor *target,
                            const ad_tensor *weight, int64_t ignore_index, ad_reduction r);
};

/* ---- helpers shared by the nn front ends (core/ops/{norm,softmax,attention,embedding,loss}.c) ---- */

static inline bool ad_nn_is_half(ad_dtype dt) { return dt == AD_F16 || dt == AD_BF16; }

/* the nn table of x's device (and the backend, for AD_NEED_KERNEL messages) */
static inline ad_status ad_nn_table(const struct ad_nn_kernels **nn, const ad_backend **bk_out, const ad_tensor *x) {
  const ad_backend *bk = ad_backend_of(x);
  if (!bk) return AD_EDEVICE;  /* ad_backend_for already recorded why */
  if (!bk->nn) return AD_FAIL(AD_ENOTIMPL, "nn kernels: none for the %s backend", bk->name);
  *nn = bk->nn;
  *bk_out = bk;
  return AD_OK;
}

static inline ad_status ad_nn_check_float(const char *op, const char *arg, const ad_tensor *t) {
  if (!ad_dtype_is_float(t->dtype))
    return AD_FAIL(AD_EDTYPE, "%s: %s must be a floating-point tensor, got %s", op, arg, ad_dtype_name(t->dtype));
  return AD_OK;
}

/* t (may be NULL) must live on x's device */
static inline ad_status ad_nn_check_device(const char *op, const char *arg, const ad_tensor *x, const ad_tensor *t) {
  if (t && !ad_device_eq(x->storage->device, t->storage->device)) {
    char a[32], b[32];
    return AD_FAIL(AD_EDEVICE, "%s: %s is on %s but the input is on %s", op, arg,
                   ad_device_str(t->storage->device, a, sizeof a), ad_device_str(x->storage->device, b, sizeof b));
  }
  return AD_OK;
}

/* new reference to t converted to dt and made contiguous, both recorded (NULL stays NULL) */
static inline ad_status ad_nn_prep(ad_tensor **out, const ad_tensor *t, ad_dtype dt) {
  if (!t) { *out = NULL; return AD_OK; }
  ad_tensor *c = NULL;
  AD_TRY(ad_to_dtype(&c, t, dt));
  ad_status st = ad_contiguous(out, c);
  ad_tensor_release(c);
  return st;
}

/* *out = y32 converted to dt; consumes the reference to y32 */
static inline ad_status ad_nn_back_to(ad_tensor **out, ad_tensor *y32, ad_dtype dt) {
  ad_status st = ad_to_dtype(out, y32, dt);
  ad_tensor_release(y32);
  return st;
}

/* ---- the CPU kernels (core/cpu/cpu_{norm,softmax,attention,loss,nn}.c) ---- */
ad_status ad_cpu_group_norm_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                                const ad_tensor *w, const ad_tensor *b, int64_t N, int64_t C, int64_t S,
                                int64_t G, double eps);
ad_status ad_cpu_group_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                const ad_tensor *w, int64_t N, int64_t C, int64_t S, int64_t G);
ad_status ad_cpu_batch_norm_fwd(ad_tensor *y, ad_tensor *save_mean, ad_tensor *save_rstd, const ad_tensor *x,
                                const ad_tensor *w, const ad_tensor *b, ad_tensor *running_mean,
                                ad_tensor *running_var, int64_t N, int64_t C, int64_t S, bool training,
                                double momentum, double eps);
ad_status ad_cpu_batch_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                const ad_tensor *w, int64_t N, int64_t C, int64_t S, bool training);
ad_status ad_cpu_layer_norm_fwd(ad_tensor *y, ad_tensor *mean, ad_tensor *rstd, const ad_tensor *x,
                                const ad_tensor *w, const ad_tensor *b, int64_t M, int64_t D, double eps);
ad_status ad_cpu_layer_norm_bwd(ad_tensor *dx, ad_tensor *dw, ad_tensor *db, const ad_tensor *dy,
                                const ad_tensor *x, const ad_tensor *mean, const ad_tensor *rstd,
                                const ad_tensor *w, int64_t M, int64_t D);
ad_status ad_cpu_softmax_fwd(ad_tensor *y, const ad_tensor *x, int64_t outer, int64_t L, int64_t inner, bool log);
/* y[i] = exp(x[i] - shift) for i < n (y may alias x); returns the sum in f64.
 * The vectorized f32 exp shared by the softmax and attention kernels. */
double ad_cpu_exp_shift_f32(float *y, const float *x, int64_t n, float shift);
ad_status ad_cpu_softmax_bwd(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *y, int64_t outer, int64_t L,
                             int64_t inner, bool log);
ad_status ad_cpu_attention_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *q, const ad_tensor *k,
                               const ad_tensor *v, const ad_tensor *mask, double scale, bool is_causal);
ad_status ad_cpu_attention_bwd(ad_tensor *dq, ad_tensor *dk, ad_tensor *dv, ad_tensor *dmask,
                               const ad_tensor *dout, const ad_tensor *q, const ad_tensor *k,
                               const ad_tensor *v, const ad_tensor *mask, const ad_tensor *lse,
                               double scale, bool is_causal);
ad_status ad_cpu_embedding_fwd(ad_tensor *out, const ad_tensor *weight, const ad_tensor *indices);
ad_status ad_cpu_embedding_bwd(ad_tensor *dweight, const ad_tensor *dout, const ad_tensor *indices);
ad_status ad_cpu_dropout_fwd(ad_tensor *y, ad_tensor *mask, const ad_tensor *x, double p, uint64_t seed,
                             uint64_t offset);
ad_status ad_cpu_pointwise_loss_fwd(ad_tensor *out, const ad_tensor *input, const ad_tensor *target,
                                    const ad_tensor *weight, const ad_tensor *pos_weight, ad_pointwise_loss kind,
                                    ad_reduction r);
ad_status ad_cpu_pointwise_loss_bwd(ad_tensor *dinput, ad_tensor *dtarget, ad_tensor *dweight,
                                    ad_tensor *dpos_weight, const ad_tensor *dy, const ad_tensor *input,
                                    const ad_tensor *target, const ad_tensor *weight, const ad_tensor *pos_weight,
                                    ad_pointwise_loss kind, ad_reduction r);
ad_status ad_cpu_cross_entropy_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *logits, const ad_tensor *target,
                                   const ad_tensor *weight, int64_t ignore_index, double label_smoothing,
                                   ad_reduction r);
ad_status ad_cpu_cross_entropy_bwd(ad_tensor *dlogits, const ad_tensor *dy, const ad_tensor *logits,
                                   const ad_tensor *lse, const ad_tensor *target, const ad_tensor *weight,
                                   int64_t ignore_index, double label_smoothing, ad_reduction r);
ad_status ad_cpu_nll_loss_fwd(ad_tensor *out, const ad_tensor *logp, const ad_tensor *target,
                              const ad_tensor *weight, int64_t ignore_index, ad_reduction r);
ad_status ad_cpu_nll_loss_bwd(ad_tensor *dlogp, const ad_tensor *dy, const ad_tensor *target,
                              const ad_tensor *weight, int64_t ignore_index, ad_reduction r);

#endif
