/* cpu_optim.c: CPU kernels of the optimizer family (backend_optim.h).
 *
 * All tensors of a call are cut into chunks of CHUNK elements and the chunks
 * run as one OpenMP loop, so a model of hundreds of small tensors costs one
 * parallel region, and a few huge ones still spread over every core. Every
 * update is elementwise, so the result does not depend on the chunking or the
 * thread count; sq_norm sums each chunk in double and adds the chunk sums in
 * a fixed order, so it is deterministic too.
 *
 * f32 parameters are updated in float arithmetic with float state (what
 * PyTorch's Adam does), f64 in double; f16/bf16 parameters are widened to
 * float, updated against f32 state and rounded back. */
#include <math.h>
#include <stdlib.h>
#include "../backend.h"
#include "../backend_optim.h"
#include "../mathinl.h"

#define CHUNK 65536

typedef struct { int t; int64_t lo, hi; } chunk;

/* chunks of xs[0..n); *out malloc'd (NULL when there is no element) */
static ad_status make_chunks(chunk **out, int64_t *count, ad_tensor *const *xs, int n) {
  int64_t c = 0;
  for (int i = 0; i < n; i++) c += (ad_numel(xs[i]) + CHUNK - 1) / CHUNK;
  *out = NULL;
  *count = c;
  if (c == 0) return AD_OK;
  chunk *ch = malloc((size_t)c * sizeof *ch);
  if (!ch) return AD_FAIL(AD_ENOMEM, "optimizer: out of memory for %lld work chunks", (long long)c);
  int64_t k = 0;
  for (int i = 0; i < n; i++) {
    int64_t m = ad_numel(xs[i]);
    for (int64_t lo = 0; lo < m; lo += CHUNK) ch[k++] = (chunk){i, lo, lo + CHUNK < m ? lo + CHUNK : m};
  }
  *out = ch;
  return AD_OK;
}

/* a parameter element as float / back (f32, f16, bf16) */
static inline float ld_half(const ad_tensor *t, const void *base, int64_t j) {
  if (t->dtype == AD_F32) return ((const float *)base)[j];
  if (t->dtype == AD_F16) return ad_f16_to_f32(((const uint16_t *)base)[j]);
  return ad_bf16_to_f32(((const uint16_t *)base)[j]);
}
static inline void st_half(const ad_tensor *t, void *base, int64_t j, float v) {
  if (t->dtype == AD_F32) ((float *)base)[j] = v;
  else if (t->dtype == AD_F16) ((uint16_t *)base)[j] = ad_f32_to_f16(v);
  else ((uint16_t *)base)[j] = ad_f32_to_bf16(v);
}

/* ---- Adam / AdamW --------------------------------------------------------- */

static void adam_chunk_f64(double *p, const double *g, double *m, double *v, int64_t lo, int64_t hi,
                           const ad_adam_attrs *a, double step_size, double bc2_sqrt) {
  const double b1 = a->beta1, b2 = a->beta2, wd = a->weight_decay, eps = a->eps, inv_scale = 1.0 / a->grad_scale;
  const double decay_mul = 1.0 - a->lr * wd;
  for (int64_t j = lo; j < hi; j++) {
    double gj = g[j] * inv_scale;
    if (a->maximize) gj = -gj;
    double pj = p[j];
    if (wd != 0) {
      if (a->decoupled) pj *= decay_mul;
      else gj += wd * pj;
    }
    double mj = m[j] + (1.0 - b1) * (gj - m[j]);
    double vj = v[j] * b2 + (1.0 - b2) * gj * gj;
    m[j] = mj;
    v[j] = vj;
    p[j] = pj - step_size * mj / (sqrt(vj) / bc2_sqrt + eps);
  }
}

static void adam_chunk_f32(const ad_tensor *pt, void *p, const void *g, float *m, float *v, int64_t lo, int64_t hi,
                           const ad_adam_attrs *a, double step_size, double bc2_sqrt) {
  const float b1c = (float)(1.0 - a->beta1), b2 = (float)a->beta2, b2c = (float)(1.0 - a->beta2);
  const float wd = (float)a->weight_decay, eps = (float)a->eps, inv_scale = (float)(1.0 / a->grad_scale);
  const float decay_mul = (float)(1.0 - a->lr * a->weight_decay), ss = (float)step_size, bc2 = (float)bc2_sqrt;
  const bool unscale = a->grad_scale != 1.0;
  if (pt->dtype == AD_F32) {
    float *pf = p;
    const float *gf = g;
    for (int64_t j = lo; j < hi; j++) {
      float gj = unscale ? gf[j] * inv_scale : gf[j];
      if (a->maximize) gj = -gj;
      float pj = pf[j];
      if (wd != 0) {
        if (a->decoupled) pj *= decay_mul;
        else gj += wd * pj;
      }
      float mj = m[j] + b1c * (gj - m[j]);
      float vj = v[j] * b2 + b2c * gj * gj;
      m[j] = mj;
      v[j] = vj;
      pf[j] = pj - ss * (mj / (sqrtf(vj) / bc2 + eps));
    }
    return;
  }
  for (int64_t j = lo; j < hi; j++) {
    float gj = ld_half(pt, g, j);
    if (unscale) gj *= inv_scale;
    if (a->maximize) gj = -gj;
    float pj = ld_half(pt, p, j);
    if (wd != 0) {
      if (a->decoupled) pj *= decay_mul;
      else gj += wd * pj;
    }
    float mj = m[j] + b1c * (gj - m[j]);
    float vj = v[j] * b2 + b2c * gj * gj;
    m[j] = mj;
    v[j] = vj;
    st_half(pt, p, j, pj - ss * (mj / (sqrtf(vj) / bc2 + eps)));
  }
}

static ad_status cpu_adam_step(ad_tensor *const *params, const ad_tensor *const *grads, ad_tensor *const *exp_avg,
                               ad_tensor *const *exp_avg_sq, int n, const ad_adam_attrs *a) {
  chunk *ch;
  int64_t nc;
  AD_TRY(make_chunks(&ch, &nc, params, n));
  const double bc1 = 1.0 - pow(a->beta1, (double)a->step);
  const double bc2 = 1.0 - pow(a->beta2, (double)a->step);
  const double step_size = a->lr / bc1, bc2_sqrt = sqrt(bc2);
  #pragma omp parallel for schedule(dynamic, 1) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    const int i = ch[c].t;
    const ad_tensor *p = params[i];
    if (p->dtype == AD_F64)
      adam_chunk_f64(ad_data(p), ad_data(grads[i]), ad_data(exp_avg[i]), ad_data(exp_avg_sq[i]), ch[c].lo, ch[c].hi,
                     a, step_size, bc2_sqrt);
    else
      adam_chunk_f32(p, ad_data(p), ad_data(grads[i]), ad_data(exp_avg[i]), ad_data(exp_avg_sq[i]), ch[c].lo,
                     ch[c].hi, a, step_size, bc2_sqrt);
  }
  free(ch);
  return AD_OK;
}

/* ---- SGD ------------------------------------------------------------------- */

static ad_status cpu_sgd_step(ad_tensor *const *params, const ad_tensor *const *grads, ad_tensor *const *bufs, int n,
                              const ad_sgd_attrs *a) {
  chunk *ch;
  int64_t nc;
  AD_TRY(make_chunks(&ch, &nc, params, n));
  const double mom = a->momentum, damp = 1.0 - a->dampening, wd = a->weight_decay, lr = a->lr;
  const double inv_scale = 1.0 / a->grad_scale;
  #pragma omp parallel for schedule(dynamic, 1) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    const int i = ch[c].t;
    const ad_tensor *p = params[i];
    void *pd = ad_data(p);
    const void *gd = ad_data(grads[i]);
    void *bd = bufs ? ad_data(bufs[i]) : NULL;
    for (int64_t j = ch[c].lo; j < ch[c].hi; j++) {
      /* f64 in double; the rest in float, as PyTorch's opmath */
      if (p->dtype == AD_F64) {
        double *pp = pd, *b = bd;
        double g = ((const double *)gd)[j] * inv_scale;
        if (a->maximize) g = -g;
        if (wd != 0) g += wd * pp[j];
        if (mom != 0) {
          b[j] = a->first ? g : mom * b[j] + damp * g;
          g = a->nesterov ? g + mom * b[j] : b[j];
        }
        pp[j] -= lr * g;
      } else {
        float *b = bd;
        float g = ld_half(p, gd, j) * (float)inv_scale;
        if (a->maximize) g = -g;
        float pj = ld_half(p, pd, j);
        if (wd != 0) g += (float)wd * pj;
        if (mom != 0) {
          b[j] = a->first ? g : (float)mom * b[j] + (float)damp * g;
          g = a->nesterov ? g + (float)mom * b[j] : b[j];
        }
        st_half(p, pd, j, pj - (float)lr * g);
      }
    }
  }
  free(ch);
  return AD_OK;
}

/* ---- EMA ------------------------------------------------------------------- */

static ad_status cpu_ema_update(ad_tensor *const *ema, const ad_tensor *const *src, int n, double decay) {
  chunk *ch;
  int64_t nc;
  AD_TRY(make_chunks(&ch, &nc, ema, n));
  const double w = 1.0 - decay;
  #pragma omp parallel for schedule(dynamic, 1) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    const int i = ch[c].t;
    const ad_tensor *e = ema[i], *s = src[i];
    void *ed = ad_data(e);
    const void *sd = ad_data(s);
    if (e->dtype == AD_F32 && s->dtype == AD_F32) {
      float *ef = ed;
      const float *sf = sd;
      const float wf = (float)w;
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) ef[j] += wf * (sf[j] - ef[j]);
    } else if (e->dtype == AD_F64 && s->dtype == AD_F64) {
      double *ef = ed;
      const double *sf = sd;
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) ef[j] += w * (sf[j] - ef[j]);
    } else {
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) {
        double ej = ad_load_elem(ed, e->dtype, j), sj = ad_load_elem(sd, s->dtype, j);
        ad_store_elem(ed, e->dtype, j, ej + w * (sj - ej));
      }
    }
  }
  free(ch);
  return AD_OK;
}

/* ---- norms and scaling ------------------------------------------------------ */

static ad_status cpu_sq_norm(ad_tensor *out, const ad_tensor *const *xs, int n) {
  chunk *ch;
  int64_t nc;
  AD_TRY(make_chunks(&ch, &nc, (ad_tensor *const *)xs, n));
  double *part = nc ? malloc((size_t)nc * sizeof *part) : NULL;
  if (nc && !part) { free(ch); return AD_FAIL(AD_ENOMEM, "sq_norm: out of memory"); }
  #pragma omp parallel for schedule(dynamic, 1) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    const ad_tensor *x = xs[ch[c].t];
    const void *d = ad_data(x);
    double s = 0;
    if (x->dtype == AD_F32) {
      const float *f = d;
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) s += (double)f[j] * (double)f[j];
    } else if (x->dtype == AD_F64) {
      const double *f = d;
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) s += f[j] * f[j];
    } else {
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) { double v = ld_half(x, d, j); s += v * v; }
    }
    part[c] = s;
  }
  double total = 0;
  for (int64_t c = 0; c < nc; c++) total += part[c];
  *(double *)ad_data(out) = total;
  free(part);
  free(ch);
  return AD_OK;
}

static ad_status cpu_scale(ad_tensor *const *xs, int n, double s) {
  chunk *ch;
  int64_t nc;
  AD_TRY(make_chunks(&ch, &nc, xs, n));
  #pragma omp parallel for schedule(dynamic, 1) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    const ad_tensor *x = xs[ch[c].t];
    void *d = ad_data(x);
    if (x->dtype == AD_F64) {
      double *f = d;
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) f[j] *= s;
    } else if (x->dtype == AD_F32) {
      float *f = d;
      const float sf = (float)s;
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) f[j] *= sf;
    } else {
      for (int64_t j = ch[c].lo; j < ch[c].hi; j++) st_half(x, d, j, ld_half(x, d, j) * (float)s);
    }
  }
  free(ch);
  return AD_OK;
}

const struct ad_optim_kernels ad_cpu_optim_kernels = {
  .adam_step = cpu_adam_step,
  .sgd_step = cpu_sgd_step,
  .ema_update = cpu_ema_update,
  .sq_norm = cpu_sq_norm,
  .scale = cpu_scale,
};
