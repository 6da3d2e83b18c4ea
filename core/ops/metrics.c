/* metrics.c: front ends of the evaluation-metric family (metrics.h): k-NN
 * radii, manifold membership counts, cdist, mean/covariance and eigh. They
 * check shapes and dtypes, make the inputs contiguous f32/f64 (features) or
 * f64 (matrices), allocate the outputs and call the device's kernels. Nothing
 * here is differentiable, so nothing is recorded.
 *
 * The kernel table is found per device by metrics_kernels(): backend.h has no
 * metrics member, so the CPU table and, in a CUDA build, the CUDA table
 * (core/cuda/cuda_metrics.c) are named directly. The CUDA table has no eigh:
 * FID's D x D eigenproblem stays on the CPU. */
#include <string.h>

#include "ad.h"
#include "backend_metrics.h"
#include "metrics.h"

extern const struct ad_metrics_kernels ad_cpu_metrics_kernels;
#ifdef AD_HAVE_CUDA
extern const struct ad_metrics_kernels ad_cuda_metrics_kernels;
#endif

static ad_status no_kernel(const ad_tensor *x, const char *op) {
  char buf[32];
  return AD_FAIL(AD_ENOTIMPL, "%s: no %s kernel (move the tensors to the CPU first)", op,
                 ad_device_str(ad_tensor_device(x), buf, sizeof buf));
}

static ad_status metrics_kernels(const struct ad_metrics_kernels **out, const ad_tensor *x, const char *op) {
  *out = NULL;
  switch (x->storage->device.type) {
  case AD_DEV_CPU: *out = &ad_cpu_metrics_kernels; return AD_OK;
#ifdef AD_HAVE_CUDA
  case AD_DEV_CUDA: *out = &ad_cuda_metrics_kernels; return AD_OK;
#endif
  default: return no_kernel(x, op);
  }
}

/* A 2-D float feature matrix, contiguous, as f32 or f64 (want: the dtype to
 * use, or AD_NDTYPES for "f64 stays f64, everything else becomes f32"). */
static ad_status features_in(ad_tensor **out, const ad_tensor *x, const char *op, const char *arg, ad_dtype want) {
  char buf[96];
  if (!x) return AD_FAIL(AD_EINVAL, "%s: %s is missing", op, arg);
  if (x->ndim != 2)
    return AD_FAIL(AD_ESHAPE, "%s: %s must be 2-D (N, D), got %d-D %s", op, arg, x->ndim,
                   ad_shape_str(x->ndim, x->shape, buf, sizeof buf));
  if (!ad_dtype_is_float(x->dtype) && x->dtype != AD_U8 && x->dtype != AD_I32 && x->dtype != AD_I64)
    return AD_FAIL(AD_EDTYPE, "%s: %s must be a float tensor, got %s", op, arg, ad_dtype_name(x->dtype));
  ad_dtype dt = want != AD_NDTYPES ? want : (x->dtype == AD_F64 ? AD_F64 : AD_F32);
  ad_status st;
  ad_tensor *c = NULL, *t = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&t, x, dt), fail);
  AD_TRY_GOTO(st, ad_contiguous(&c, t), fail);
  ad_tensor_release(t);
  *out = c;
  return AD_OK;
fail:
  ad_tensor_release(t);
  return st;
}

/* A 1-D vector of n elements as contiguous dt */
static ad_status vector_in(ad_tensor **out, const ad_tensor *x, int64_t n, ad_dtype dt, const char *op,
                           const char *arg) {
  char buf[96];
  if (x->ndim != 1 || x->shape[0] != n)
    return AD_FAIL(AD_ESHAPE, "%s: %s must have shape [%lld], got %s", op, arg, (long long)n,
                   ad_shape_str(x->ndim, x->shape, buf, sizeof buf));
  ad_status st;
  ad_tensor *t = NULL, *c = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&t, x, dt), fail);
  AD_TRY_GOTO(st, ad_contiguous(&c, t), fail);
  ad_tensor_release(t);
  *out = c;
  return AD_OK;
fail:
  ad_tensor_release(t);
  return st;
}

static ad_status same_device(const ad_tensor *a, const ad_tensor *b, const char *op) {
  if (!ad_device_eq(ad_tensor_device(a), ad_tensor_device(b))) {
    char b1[32], b2[32];
    return AD_FAIL(AD_EDEVICE, "%s: inputs on different devices (%s and %s)", op,
                   ad_device_str(ad_tensor_device(a), b1, sizeof b1), ad_device_str(ad_tensor_device(b), b2, sizeof b2));
  }
  return AD_OK;
}

ad_status ad_knn_radii(ad_tensor **radii, const ad_tensor *x_in, int64_t k, const ad_tensor *ids_in,
                       int64_t block_rows) {
  const char *op = "knn_radii";
  const struct ad_metrics_kernels *mk;
  if (!x_in) return AD_FAIL(AD_EINVAL, "%s: x is missing", op);
  AD_TRY(metrics_kernels(&mk, x_in, op));
  if (k < 1) return AD_FAIL(AD_EINVAL, "%s: k must be >= 1, got %lld", op, (long long)k);
  if (block_rows < 0) return AD_FAIL(AD_EINVAL, "%s: block_rows must be >= 0, got %lld", op, (long long)block_rows);
  ad_status st;
  ad_tensor *x = NULL, *ids = NULL, *out = NULL;
  AD_TRY_GOTO(st, features_in(&x, x_in, op, "x", AD_NDTYPES), done);
  int64_t n = x->shape[0];
  if (n <= k) {
    st = AD_FAIL(AD_EINVAL, "%s: need more than k = %lld points for a k-NN radius that excludes the point itself, got %lld",
                 op, (long long)k, (long long)n);
    goto done;
  }
  if (ids_in) {
    AD_TRY_GOTO(st, same_device(x_in, ids_in, op), done);
    AD_TRY_GOTO(st, vector_in(&ids, ids_in, n, AD_I64, op, "ids"), done);
  }
  AD_TRY_GOTO(st, ad_empty(&out, 1, &n, AD_F64, ad_tensor_device(x)), done);
  if (!mk->knn_radii) { st = no_kernel(x, op); goto done; }
  AD_TRY_GOTO(st, mk->knn_radii(out, x, ids, k, block_rows), done);
  *radii = out;
  out = NULL;
done:
  ad_tensor_release(out);
  ad_tensor_release(ids);
  ad_tensor_release(x);
  return st;
}

ad_status ad_manifold_counts(ad_tensor **fake_in_real, ad_tensor **real_in_real, ad_tensor **real_in_fake,
                             const ad_tensor *real_in, const ad_tensor *fake_in, const ad_tensor *rr_in,
                             const ad_tensor *rf_in, int64_t block_rows) {
  const char *op = "manifold_counts";
  const struct ad_metrics_kernels *mk;
  if (!real_in || !fake_in || !rr_in) return AD_FAIL(AD_EINVAL, "%s: real, fake and real_radii are required", op);
  if (rf_in && !real_in_fake) return AD_FAIL(AD_EINVAL, "%s: fake_radii given but no real_in_fake output", op);
  AD_TRY(metrics_kernels(&mk, real_in, op));
  AD_TRY(same_device(real_in, fake_in, op));
  AD_TRY(same_device(real_in, rr_in, op));
  if (rf_in) AD_TRY(same_device(real_in, rf_in, op));
  if (block_rows < 0) return AD_FAIL(AD_EINVAL, "%s: block_rows must be >= 0, got %lld", op, (long long)block_rows);
  ad_status st;
  ad_tensor *real = NULL, *fake = NULL, *rr = NULL, *rf = NULL, *o1 = NULL, *o2 = NULL, *o3 = NULL;
  /* one dtype for both sets: f64 if either is */
  ad_dtype dt = (real_in->dtype == AD_F64 || fake_in->dtype == AD_F64) ? AD_F64 : AD_F32;
  AD_TRY_GOTO(st, features_in(&real, real_in, op, "real", dt), done);
  AD_TRY_GOTO(st, features_in(&fake, fake_in, op, "fake", dt), done);
  if (real->shape[1] != fake->shape[1]) {
    st = AD_FAIL(AD_ESHAPE, "%s: real and fake features differ in dimension (%lld vs %lld)", op,
                 (long long)real->shape[1], (long long)fake->shape[1]);
    goto done;
  }
  int64_t n = real->shape[0], m = fake->shape[0];
  AD_TRY_GOTO(st, vector_in(&rr, rr_in, n, AD_F64, op, "real_radii"), done);
  if (rf_in) AD_TRY_GOTO(st, vector_in(&rf, rf_in, m, AD_F64, op, "fake_radii"), done);
  ad_device dev = ad_tensor_device(real);
  AD_TRY_GOTO(st, ad_empty(&o1, 1, &m, AD_I64, dev), done);
  AD_TRY_GOTO(st, ad_empty(&o2, 1, &n, AD_I64, dev), done);
  if (rf) AD_TRY_GOTO(st, ad_empty(&o3, 1, &n, AD_I64, dev), done);
  if (!mk->manifold_counts) { st = no_kernel(real, op); goto done; }
  AD_TRY_GOTO(st, mk->manifold_counts(o1, o2, o3, real, fake, rr, rf, block_rows), done);
  *fake_in_real = o1;
  *real_in_real = o2;
  if (real_in_fake) *real_in_fake = o3;
  o1 = o2 = o3 = NULL;
done:
  ad_tensor_release(o1);
  ad_tensor_release(o2);
  ad_tensor_release(o3);
  ad_tensor_release(rr);
  ad_tensor_release(rf);
  ad_tensor_release(real);
  ad_tensor_release(fake);
  return st;
}

ad_status ad_cdist(ad_tensor **out, const ad_tensor *a_in, const ad_tensor *b_in) {
  const char *op = "cdist";
  const struct ad_metrics_kernels *mk;
  if (!a_in || !b_in) return AD_FAIL(AD_EINVAL, "%s: two tensors are required", op);
  AD_TRY(metrics_kernels(&mk, a_in, op));
  AD_TRY(same_device(a_in, b_in, op));
  ad_status st;
  ad_tensor *a = NULL, *b = NULL, *o = NULL;
  AD_TRY_GOTO(st, features_in(&a, a_in, op, "x1", AD_F64), done);
  AD_TRY_GOTO(st, features_in(&b, b_in, op, "x2", AD_F64), done);
  if (a->shape[1] != b->shape[1]) {
    st = AD_FAIL(AD_ESHAPE, "%s: x1 and x2 differ in the number of columns (%lld vs %lld)", op,
                 (long long)a->shape[1], (long long)b->shape[1]);
    goto done;
  }
  int64_t shape[2] = {a->shape[0], b->shape[0]};
  AD_TRY_GOTO(st, ad_empty(&o, 2, shape, AD_F64, ad_tensor_device(a)), done);
  if (!mk->cdist) { st = no_kernel(a, op); goto done; }
  AD_TRY_GOTO(st, mk->cdist(o, a, b), done);
  *out = o;
  o = NULL;
done:
  ad_tensor_release(o);
  ad_tensor_release(a);
  ad_tensor_release(b);
  return st;
}

ad_status ad_mean_cov(ad_tensor **mu, ad_tensor **sigma, const ad_tensor *x_in, int ddof) {
  const char *op = "mean_cov";
  const struct ad_metrics_kernels *mk;
  if (!x_in) return AD_FAIL(AD_EINVAL, "%s: x is missing", op);
  AD_TRY(metrics_kernels(&mk, x_in, op));
  if (ddof < 0) return AD_FAIL(AD_EINVAL, "%s: ddof must be >= 0, got %d", op, ddof);
  ad_status st;
  ad_tensor *x = NULL, *m = NULL, *s = NULL;
  AD_TRY_GOTO(st, features_in(&x, x_in, op, "x", AD_NDTYPES), done);
  int64_t n = x->shape[0], d = x->shape[1];
  if (n <= ddof) {
    st = AD_FAIL(AD_EINVAL, "%s: a covariance with ddof = %d needs more than %d rows, got %lld", op, ddof, ddof,
                 (long long)n);
    goto done;
  }
  int64_t ss[2] = {d, d};
  AD_TRY_GOTO(st, ad_empty(&m, 1, &d, AD_F64, ad_tensor_device(x)), done);
  AD_TRY_GOTO(st, ad_empty(&s, 2, ss, AD_F64, ad_tensor_device(x)), done);
  if (!mk->mean_cov) { st = no_kernel(x, op); goto done; }
  AD_TRY_GOTO(st, mk->mean_cov(m, s, x, ddof), done);
  *mu = m;
  *sigma = s;
  m = s = NULL;
done:
  ad_tensor_release(m);
  ad_tensor_release(s);
  ad_tensor_release(x);
  return st;
}

ad_status ad_eigh(ad_tensor **w, ad_tensor **v, const ad_tensor *a_in) {
  const char *op = "eigh";
  const struct ad_metrics_kernels *mk;
  char buf[96];
  if (!a_in) return AD_FAIL(AD_EINVAL, "%s: a is missing", op);
  AD_TRY(metrics_kernels(&mk, a_in, op));
  if (a_in->ndim != 2 || a_in->shape[0] != a_in->shape[1])
    return AD_FAIL(AD_ESHAPE, "%s: a must be a square matrix (n, n), got %s", op,
                   ad_shape_str(a_in->ndim, a_in->shape, buf, sizeof buf));
  if (a_in->shape[0] > 46340)  /* n*n must fit LAPACK's 32-bit sizes */
    return AD_FAIL(AD_EINVAL, "%s: matrix too large for LAPACK (n = %lld)", op, (long long)a_in->shape[0]);
  if (!ad_dtype_is_float(a_in->dtype))
    return AD_FAIL(AD_EDTYPE, "%s: a must be a float matrix, got %s", op, ad_dtype_name(a_in->dtype));
  ad_status st;
  ad_tensor *a = NULL, *t = NULL, *ow = NULL, *ov = NULL;
  AD_TRY_GOTO(st, ad_to_dtype(&t, a_in, AD_F64), done);
  AD_TRY_GOTO(st, ad_contiguous(&a, t), done);
  int64_t n = a->shape[0], vs[2] = {n, n};
  AD_TRY_GOTO(st, ad_empty(&ow, 1, &n, AD_F64, ad_tensor_device(a)), done);
  if (v) AD_TRY_GOTO(st, ad_empty(&ov, 2, vs, AD_F64, ad_tensor_device(a)), done);
  if (!mk->eigh) { st = no_kernel(a, op); goto done; }
  AD_TRY_GOTO(st, mk->eigh(ow, ov, a), done);
  *w = ow;
  if (v) *v = ov;
  ow = ov = NULL;
done:
  ad_tensor_release(ow);
  ad_tensor_release(ov);
  ad_tensor_release(a);
  ad_tensor_release(t);
  return st;
}
