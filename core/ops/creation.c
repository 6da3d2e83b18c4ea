/* creation.c: arange, linspace, eye and the Philox-based random creation ops.
 * A generator is (seed, offset); each draw of n numbers consumes
 * ceil(n / 2) Philox blocks, so CPU and CUDA kernels that compute element i
 * from (seed, offset, i) produce the same numbers. */
#include <math.h>
#include <stdlib.h>
#include "../ad.h"
#include "../mathinl.h"

static ad_generator default_gen = {0x2545F4914F6CDD1DULL, 0};
ad_generator *ad_default_generator(void) { return &default_gen; }
void ad_manual_seed(uint64_t seed) { default_gen.seed = seed; default_gen.offset = 0; }

ad_status ad_arange(ad_tensor **out, double start, double end, double step, ad_dtype dt, ad_device dev) {
  if (step == 0 || !isfinite(step) || !isfinite(start) || !isfinite(end))
    return AD_FAIL(AD_EINVAL, "arange: start, end and step must be finite and step non-zero");
  if ((end - start) / step < 0)
    return AD_FAIL(AD_EINVAL, "arange: the range [%g, %g) is empty or goes the wrong way for step %g", start, end, step);
  double nd = ceil((end - start) / step);
  if (nd > 1e12) return AD_FAIL(AD_EINVAL, "arange: too many elements (%g)", nd);
  int64_t n = (int64_t)nd;
  ad_tensor *y;
  AD_TRY(ad_empty(&y, 1, &n, dt, dev));
  ad_status st = ad_backend_of(y)->iota(y, start, step);
  if (st != AD_OK) { ad_tensor_release(y); return st; }
  *out = y;
  return AD_OK;
}

ad_status ad_linspace(ad_tensor **out, double start, double end, int64_t steps, ad_dtype dt, ad_device dev) {
  if (steps < 0) return AD_FAIL(AD_EINVAL, "linspace: steps must be non-negative, got %lld", (long long)steps);
  ad_tensor *y;
  AD_TRY(ad_empty(&y, 1, &steps, dt, dev));
  double step = steps > 1 ? (end - start) / (double)(steps - 1) : 0.0;
  ad_status st = ad_backend_of(y)->iota(y, start, step);
  /* the last element is exactly end, as in PyTorch */
  if (st == AD_OK && steps > 1) st = ad_set_flat(y, steps - 1, end);
  if (st != AD_OK) { ad_tensor_release(y); return st; }
  *out = y;
  return AD_OK;
}

ad_status ad_eye(ad_tensor **out, int64_t n, int64_t m, ad_dtype dt, ad_device dev) {
  if (n < 0 || m < 0) return AD_FAIL(AD_EINVAL, "eye: sizes must be non-negative");
  ad_tensor *y, *d = NULL;
  AD_TRY(ad_zeros(&y, 2, (int64_t[]){n, m}, dt, dev));
  int64_t k = n < m ? n : m;
  /* the diagonal is a strided view with stride m+1 */
  ad_status st = ad_tensor_from_storage(&d, y->storage, 0, 1, &k, (int64_t[]){m + 1}, dt);
  if (st == AD_OK) st = ad_fill_(d, 1.0);
  ad_tensor_release(d);
  if (st != AD_OK) { ad_tensor_release(y); return st; }
  *out = y;
  return AD_OK;
}

static ad_status random_new(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev,
                            ad_generator *g, int kind, double a, double b, const char *name) {
  if (!g) g = &default_gen;
  ad_tensor *y;
  AD_TRY(ad_empty(&y, ndim, shape, dt, dev));
  const ad_backend *bk = ad_backend_of(y);
  ad_status st = bk->random_fill ? bk->random_fill(y, kind, a, b, g->seed, g->offset)
                                 : AD_FAIL(AD_ENOTIMPL, "%s: no %s kernel", name, bk->name);
  if (st != AD_OK) { ad_tensor_release(y); return st; }
  g->offset += (uint64_t)(ad_numel(y) + 1) / 2;
  *out = y;
  return AD_OK;
}

ad_status ad_rand(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev, ad_generator *g) {
  if (!ad_dtype_is_float(dt)) return AD_FAIL(AD_EDTYPE, "rand: dtype must be floating point, got %s", ad_dtype_name(dt));
  return random_new(out, ndim, shape, dt, dev, g, 0, 0.0, 1.0, "rand");
}

ad_status ad_randn(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev, ad_generator *g) {
  if (!ad_dtype_is_float(dt)) return AD_FAIL(AD_EDTYPE, "randn: dtype must be floating point, got %s", ad_dtype_name(dt));
  return random_new(out, ndim, shape, dt, dev, g, 1, 0.0, 1.0, "randn");
}

ad_status ad_randint(ad_tensor **out, int64_t low, int64_t high, int ndim, const int64_t *shape,
                     ad_dtype dt, ad_device dev, ad_generator *g) {
  if (high <= low) return AD_FAIL(AD_EINVAL, "randint: high (%lld) must be greater than low (%lld)", (long long)high, (long long)low);
  return random_new(out, ndim, shape, dt, dev, g, 2, (double)low, (double)high, "randint");
}

ad_status ad_randperm(ad_tensor **out, int64_t n, ad_dtype dt, ad_device dev, ad_generator *g) {
  if (n < 0) return AD_FAIL(AD_EINVAL, "randperm: n must be non-negative, got %lld", (long long)n);
  if (!g) g = &default_gen;
  /* Fisher-Yates on the host with Philox bits, then moved: the permutation is
   * the same on every device for the same generator state. */
  int64_t *p = malloc((size_t)(n ? n : 1) * sizeof *p);
  if (!p) return AD_FAIL(AD_ENOMEM, "randperm: out of memory");
  for (int64_t i = 0; i < n; i++) p[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    uint64_t r = ad_philox_bits(g->seed, g->offset, (uint64_t)(n - 1 - i));
    int64_t j = (int64_t)(r % (uint64_t)(i + 1));
    int64_t t = p[i]; p[i] = p[j]; p[j] = t;
  }
  g->offset += (uint64_t)(n + 1) / 2;
  ad_tensor *h = NULL, *y = NULL;
  ad_storage *s = ad_storage_wrap(p, (size_t)n * sizeof *p, AD_CPU, NULL, NULL);
  ad_status st;
  if (!s) { free(p); return AD_FAIL(AD_ENOMEM, "randperm: out of memory"); }
  s->release = ad_free_release;
  st = ad_tensor_from_storage(&h, s, 0, 1, &n, NULL, AD_I64);
  ad_storage_release(s);
  if (st != AD_OK) return st;
  ad_tensor *c = NULL;
  st = ad_to_dtype(&c, h, dt);
  ad_tensor_release(h);
  if (st != AD_OK) return st;
  st = ad_to_device(&y, c, dev);
  ad_tensor_release(c);
  if (st != AD_OK) return st;
  *out = y;
  return AD_OK;
}

static ad_status random_inplace(ad_tensor *t, int kind, double a, double b, ad_generator *g, const char *name) {
  if (!g) g = &default_gen;
  if (!ad_dtype_is_float(t->dtype)) return AD_FAIL(AD_EDTYPE, "%s: tensor must be floating point, got %s", name, ad_dtype_name(t->dtype));
  const ad_backend *bk = ad_backend_of(t);
  AD_NEED_KERNEL(bk->random_fill, name, bk);
  ad_status st;
  if (ad_is_contiguous(t)) {
    st = bk->random_fill(t, kind, a, b, g->seed, g->offset);
  } else {
    ad_tensor *tmp = NULL;
    AD_TRY(ad_empty_like(&tmp, t));
    st = bk->random_fill(tmp, kind, a, b, g->seed, g->offset);
    if (st == AD_OK) st = bk->copy(t, tmp);
    ad_tensor_release(tmp);
  }
  if (st == AD_OK) g->offset += (uint64_t)(ad_numel(t) + 1) / 2;
  return st;
}

ad_status ad_uniform_(ad_tensor *t, double lo, double hi, ad_generator *g) {
  return random_inplace(t, 0, lo, hi, g, "uniform_");
}
ad_status ad_normal_(ad_tensor *t, double mean, double std, ad_generator *g) {
  return random_inplace(t, 1, mean, std, g, "normal_");
}
