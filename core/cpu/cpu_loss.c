/* cpu_loss.c: CPU loss kernels: the pointwise losses (mse, l1, BCE with
 * logits) and the class losses (cross_entropy, nll_loss), forward and
 * backward, on contiguous f32/f64 buffers with double accumulation.
 *
 * BCE with logits uses the stable form
 *   l = w [ (1 - t) x + (1 + (pw - 1) t) softplus(-x) ],
 *   softplus(-x) = max(-x, 0) + log1p(exp(-|x|)),
 * which is finite for any |x| and reduces to PyTorch's
 * max(x, 0) - x t + log1p(exp(-|x|)) when pw = 1.
 *
 * cross_entropy follows PyTorch's definition with class weights and label
 * smoothing eps over C classes:
 *   l = (1 - eps) (-w_t logp_t) + eps/C (-sum_c w_c logp_c),
 * ignored targets contribute 0, and the mean divides by the sum of w_t over
 * the non-ignored targets (their count without weights). */
#include <math.h>
#include <string.h>
#include "../backend.h"
#include "../backend_nn.h"
#include "../mathinl.h"
#include "cpu_iter.h"

#define LOSS_INLINE static inline __attribute__((always_inline))

LOSS_INLINE double ldv(const void *p, int64_t i, int f64) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
LOSS_INLINE void stv(void *p, int64_t i, double v, int f64) {
  if (f64) ((double *)p)[i] = v;
  else ((float *)p)[i] = (float)v;
}
LOSS_INLINE int64_t ldidx(const void *p, int64_t i, bool i64) {
  return i64 ? ((const int64_t *)p)[i] : (int64_t)((const int32_t *)p)[i];
}
/* softplus(-x), stable */
static inline double softplus_neg(double x) { return (x < 0 ? -x : 0.0) + log1p(exp(-fabs(x))); }

/* ======================================================================= pointwise */

LOSS_INLINE double pw_loss(ad_pointwise_loss kind, double x, double t, double w, double pw) {
  switch (kind) {
  case AD_LOSS_MSE: return (x - t) * (x - t);
  case AD_LOSS_L1: return fabs(x - t);
  default: return w * ((1.0 - t) * x + (1.0 + (pw - 1.0) * t) * softplus_neg(x));
  }
}

LOSS_INLINE void pw_fwd(ad_tensor *out, const ad_tensor *input, const ad_tensor *target, const ad_tensor *weight,
                        const ad_tensor *pos_weight, ad_pointwise_loss kind, ad_reduction r, int f64) {
  const int64_t n = ad_numel(input);
  const void *px = ad_data(input), *pt = ad_data(target);
  const void *pw = weight ? ad_data(weight) : NULL, *pp = pos_weight ? ad_data(pos_weight) : NULL;
  void *po = ad_data(out);
  if (r == AD_REDUCE_NONE) {
    #pragma omp parallel for schedule(static) if (n > AD_OMP_MIN)
    for (int64_t i = 0; i < n; i++)
      stv(po, i, pw_loss(kind, ldv(px, i, f64), ldv(pt, i, f64), pw ? ldv(pw, i, f64) : 1.0,
                         pp ? ldv(pp, i, f64) : 1.0), f64);
    return;
  }
  double acc = 0;
  #pragma omp parallel for schedule(static) reduction(+:acc) if (n > AD_OMP_MIN)
  for (int64_t i = 0; i < n; i++)
    acc += pw_loss(kind, ldv(px, i, f64), ldv(pt, i, f64), pw ? ldv(pw, i, f64) : 1.0, pp ? ldv(pp, i, f64) : 1.0);
  stv(po, 0, r == AD_REDUCE_MEAN ? acc / (double)n : acc, f64);
}

ad_status ad_cpu_pointwise_loss_fwd(ad_tensor *out, const ad_tensor *input, const ad_tensor *target,
                                    const ad_tensor *weight, const ad_tensor *pos_weight, ad_pointwise_loss kind,
                                    ad_reduction r) {
  if (input->dtype == AD_F64) pw_fwd(out, input, target, weight, pos_weight, kind, r, 1);
  else pw_fwd(out, input, target, weight, pos_weight, kind, r, 0);
  return AD_OK;
}

LOSS_INLINE void pw_bwd(ad_tensor *dinput, ad_tensor *dtarget, ad_tensor *dweight, ad_tensor *dpos_weight,
                        const ad_tensor *dy, const ad_tensor *input, const ad_tensor *target, const ad_tensor *weight,
                        const ad_tensor *pos_weight, ad_pointwise_loss kind, ad_reduction r, int f64) {
  const int64_t n = ad_numel(input);
  const void *px = ad_data(input), *pt = ad_data(target), *pg = ad_data(dy);
  const void *pw = weight ? ad_data(weight) : NULL, *pp = pos_weight ? ad_data(pos_weight) : NULL;
  void *pdi = dinput ? ad_data(dinput) : NULL, *pdt = dtarget ? ad_data(dtarget) : NULL;
  void *pdw = dweight ? ad_data(dweight) : NULL, *pdp = dpos_weight ? ad_data(dpos_weight) : NULL;
  const double g0 = r == AD_REDUCE_NONE ? 0.0 : ldv(pg, 0, f64) / (r == AD_REDUCE_MEAN ? (double)n : 1.0);
  #pragma omp parallel for schedule(static) if (n > AD_OMP_MIN)
  for (int64_t i = 0; i < n; i++) {
    double g = r == AD_REDUCE_NONE ? ldv(pg, i, f64) : g0;
    double x = ldv(px, i, f64), t = ldv(pt, i, f64);
    double di, dt;
    if (kind == AD_LOSS_MSE) {
      di = 2.0 * (x - t) * g;
      dt = -di;
    } else if (kind == AD_LOSS_L1) {
      di = (x > t ? 1.0 : x < t ? -1.0 : 0.0) * g;
      dt = -di;
    } else {
      double w = pw ? ldv(pw, i, f64) : 1.0, p = pp ? ldv(pp, i, f64) : 1.0;
      double lw = 1.0 + (p - 1.0) * t, sp = softplus_neg(x);
      di = g * w * ((1.0 - t) - lw * ad_sigmoid(-x));
      dt = g * w * (-x + (p - 1.0) * sp);
      if (pdw) stv(pdw, i, g * ((1.0 - t) * x + lw * sp), f64);
      if (pdp) stv(pdp, i, g * w * t * sp, f64);
    }
    if (pdi) stv(pdi, i, di, f64);
    if (pdt) stv(pdt, i, dt, f64);
  }
}

ad_status ad_cpu_pointwise_loss_bwd(ad_tensor *dinput, ad_tensor *dtarget, ad_tensor *dweight,
                                    ad_tensor *dpos_weight, const ad_tensor *dy, const ad_tensor *input,
                                    const ad_tensor *target, const ad_tensor *weight, const ad_tensor *pos_weight,
                                    ad_pointwise_loss kind, ad_reduction r) {
  if (input->dtype == AD_F64)
    pw_bwd(dinput, dtarget, dweight, dpos_weight, dy, input, target, weight, pos_weight, kind, r, 1);
  else
    pw_bwd(dinput, dtarget, dweight, dpos_weight, dy, input, target, weight, pos_weight, kind, r, 0);
  return AD_OK;
}

/* ======================================================================= class losses */

/* Checks every target; fills *denom with the mean's denominator. */
static ad_status check_targets(double *denom, const char *op, const ad_tensor *target, const ad_tensor *weight,
                               int64_t C, int64_t ignore_index) {
  const int64_t n = ad_numel(target);
  const void *pt = ad_data(target);
  const bool i64 = target->dtype == AD_I64;
  const void *pw = weight ? ad_data(weight) : NULL;
  const int f64 = weight && weight->dtype == AD_F64;
  double d = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t t = ldidx(pt, i, i64);
    if (t == ignore_index) continue;
    if (t < 0 || t >= C)
      return AD_FAIL(AD_EINVAL, "%s: target %lld out of range for %lld classes", op, (long long)t, (long long)C);
    d += pw ? ldv(pw, t, f64) : 1.0;
  }
  *denom = d;
  return AD_OK;
}

LOSS_INLINE void ce_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *logits, const ad_tensor *target,
                        const ad_tensor *weight, int64_t ignore_index, double eps, ad_reduction r, double denom,
                        int f64) {
  const int64_t N = logits->shape[0], C = logits->shape[1], S = ad_numel(target) / (N ? N : 1);
  const void *px = ad_data(logits), *pt = ad_data(target), *pw = weight ? ad_data(weight) : NULL;
  const bool i64 = target->dtype == AD_I64;
  void *po = ad_data(out), *pl = ad_data(lse);
  double acc = 0;
  #pragma omp parallel for schedule(static) reduction(+:acc) if (N * S * C > AD_OMP_MIN)
  for (int64_t ns = 0; ns < N * S; ns++) {
    int64_t n = ns / S, s = ns % S;
    const int64_t base = n * C * S + s;  /* class c at base + c*S */
    double mx = -INFINITY;
    for (int64_t c = 0; c < C; c++) { double v = ldv(px, base + c * S, f64); mx = v > mx ? v : mx; }
    double se = 0;
    for (int64_t c = 0; c < C; c++) se += exp(ldv(px, base + c * S, f64) - mx);
    double l = mx + log(se);
    stv(pl, ns, l, f64);
    int64_t t = ldidx(pt, ns, i64);
    double loss = 0;
    if (t != ignore_index) {
      double wt = pw ? ldv(pw, t, f64) : 1.0;
      loss = (1.0 - eps) * -wt * (ldv(px, base + t * S, f64) - l);
      if (eps > 0) {
        double sm = 0;
        for (int64_t c = 0; c < C; c++) sm += (pw ? ldv(pw, c, f64) : 1.0) * (ldv(px, base + c * S, f64) - l);
        loss += eps / (double)C * -sm;
      }
    }
    if (r == AD_REDUCE_NONE) stv(po, ns, loss, f64);
    else acc += loss;
  }
  if (r != AD_REDUCE_NONE) stv(po, 0, r == AD_REDUCE_MEAN ? acc / denom : acc, f64);
}

ad_status ad_cpu_cross_entropy_fwd(ad_tensor *out, ad_tensor *lse, const ad_tensor *logits, const ad_tensor *target,
                                   const ad_tensor *weight, int64_t ignore_index, double label_smoothing,
                                   ad_reduction r) {
  double denom;
  AD_TRY(check_targets(&denom, "cross_entropy", target, weight, logits->shape[1], ignore_index));
  if (logits->dtype == AD_F64) ce_fwd(out, lse, logits, target, weight, ignore_index, label_smoothing, r, denom, 1);
  else ce_fwd(out, lse, logits, target, weight, ignore_index, label_smoothing, r, denom, 0);
  return AD_OK;
}

/* dlogit_c = g [ (1-eps) w_t (p_c - [c == t]) + eps/C (W p_c - w_c) ],  W = sum_c w_c */
LOSS_INLINE void ce_bwd(ad_tensor *dlogits, const ad_tensor *dy, const ad_tensor *logits, const ad_tensor *lse,
                        const ad_tensor *target, const ad_tensor *weight, int64_t ignore_index, double eps,
                        ad_reduction r, double denom, int f64) {
  const int64_t N = logits->shape[0], C = logits->shape[1], S = ad_numel(target) / (N ? N : 1);
  const void *px = ad_data(logits), *pt = ad_data(target), *pw = weight ? ad_data(weight) : NULL;
  const void *pl = ad_data(lse), *pg = ad_data(dy);
  const bool i64 = target->dtype == AD_I64;
  void *pd = ad_data(dlogits);
  double W = 0;
  for (int64_t c = 0; c < C; c++) W += pw ? ldv(pw, c, f64) : 1.0;
  const double g0 = r == AD_REDUCE_NONE ? 0.0 : ldv(pg, 0, f64) / (r == AD_REDUCE_MEAN ? denom : 1.0);
  #pragma omp parallel for schedule(static) if (N * S * C > AD_OMP_MIN)
  for (int64_t ns = 0; ns < N * S; ns++) {
    int64_t n = ns / S, s = ns % S;
    const int64_t base = n * C * S + s;
    int64_t t = ldidx(pt, ns, i64);
    if (t == ignore_index) {
      for (int64_t c = 0; c < C; c++) stv(pd, base + c * S, 0.0, f64);
      continue;
    }
    double g = r == AD_REDUCE_NONE ? ldv(pg, ns, f64) : g0;
    double l = ldv(pl, ns, f64), wt = pw ? ldv(pw, t, f64) : 1.0;
    for (int64_t c = 0; c < C; c++) {
      double p = exp(ldv(px, base + c * S, f64) - l);
      double v = (1.0 - eps) * wt * (p - (c == t ? 1.0 : 0.0));
      if (eps > 0) v += eps / (double)C * (W * p - (pw ? ldv(pw, c, f64) : 1.0));
      stv(pd, base + c * S, g * v, f64);
    }
  }
}

ad_status ad_cpu_cross_entropy_bwd(ad_tensor *dlogits, const ad_tensor *dy, const ad_tensor *logits,
                                   const ad_tensor *lse, const ad_tensor *target, const ad_tensor *weight,
                                   int64_t ignore_index, double label_smoothing, ad_reduction r) {
  double denom;
  AD_TRY(check_targets(&denom, "cross_entropy", target, weight, logits->shape[1], ignore_index));
  if (logits->dtype == AD_F64)
    ce_bwd(dlogits, dy, logits, lse, target, weight, ignore_index, label_smoothing, r, denom, 1);
  else
    ce_bwd(dlogits, dy, logits, lse, target, weight, ignore_index, label_smoothing, r, denom, 0);
  return AD_OK;
}

LOSS_INLINE void nll_fwd(ad_tensor *out, const ad_tensor *logp, const ad_tensor *target, const ad_tensor *weight,
                         int64_t ignore_index, ad_reduction r, double denom, int f64) {
  const int64_t N = logp->shape[0], C = logp->shape[1], S = ad_numel(target) / (N ? N : 1);
  const void *px = ad_data(logp), *pt = ad_data(target), *pw = weight ? ad_data(weight) : NULL;
  const bool i64 = target->dtype == AD_I64;
  void *po = ad_data(out);
  double acc = 0;
  #pragma omp parallel for schedule(static) reduction(+:acc) if (N * S > AD_OMP_MIN)
  for (int64_t ns = 0; ns < N * S; ns++) {
    int64_t n = ns / S, s = ns % S;
    int64_t t = ldidx(pt, ns, i64);
    double loss = 0;
    if (t != ignore_index) loss = -(pw ? ldv(pw, t, f64) : 1.0) * ldv(px, n * C * S + t * S + s, f64);
    if (r == AD_REDUCE_NONE) stv(po, ns, loss, f64);
    else acc += loss;
  }
  if (r != AD_REDUCE_NONE) stv(po, 0, r == AD_REDUCE_MEAN ? acc / denom : acc, f64);
}

ad_status ad_cpu_nll_loss_fwd(ad_tensor *out, const ad_tensor *logp, const ad_tensor *target,
                              const ad_tensor *weight, int64_t ignore_index, ad_reduction r) {
  double denom;
  AD_TRY(check_targets(&denom, "nll_loss", target, weight, logp->shape[1], ignore_index));
  if (logp->dtype == AD_F64) nll_fwd(out, logp, target, weight, ignore_index, r, denom, 1);
  else nll_fwd(out, logp, target, weight, ignore_index, r, denom, 0);
  return AD_OK;
}

/* dlogp is written in full: zeros except -w_t g at each target class */
LOSS_INLINE void nll_bwd(ad_tensor *dlogp, const ad_tensor *dy, const ad_tensor *target, const ad_tensor *weight,
                         int64_t ignore_index, ad_reduction r, double denom, int f64) {
  const int64_t N = dlogp->shape[0], C = dlogp->shape[1], S = ad_numel(target) / (N ? N : 1);
  const void *pt = ad_data(target), *pw = weight ? ad_data(weight) : NULL, *pg = ad_data(dy);
  const bool i64 = target->dtype == AD_I64;
  void *pd = ad_data(dlogp);
  memset(pd, 0, (size_t)ad_numel(dlogp) * (f64 ? 8 : 4));
  const double g0 = r == AD_REDUCE_NONE ? 0.0 : ldv(pg, 0, f64) / (r == AD_REDUCE_MEAN ? denom : 1.0);
  #pragma omp parallel for schedule(static) if (N * S > AD_OMP_MIN)
  for (int64_t ns = 0; ns < N * S; ns++) {
    int64_t n = ns / S, s = ns % S;
    int64_t t = ldidx(pt, ns, i64);
    if (t == ignore_index) continue;
    double g = r == AD_REDUCE_NONE ? ldv(pg, ns, f64) : g0;
    stv(pd, n * C * S + t * S + s, -(pw ? ldv(pw, t, f64) : 1.0) * g, f64);
  }
}

ad_status ad_cpu_nll_loss_bwd(ad_tensor *dlogp, const ad_tensor *dy, const ad_tensor *target,
                              const ad_tensor *weight, int64_t ignore_index, ad_reduction r) {
  double denom;
  AD_TRY(check_targets(&denom, "nll_loss", target, weight, dlogp->shape[1], ignore_index));
  if (dlogp->dtype == AD_F64) nll_bwd(dlogp, dy, target, weight, ignore_index, r, denom, 1);
  else nll_bwd(dlogp, dy, target, weight, ignore_index, r, denom, 0);
  return AD_OK;
}
