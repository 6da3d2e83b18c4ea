/* tensor.c: storages, tensors, shape helpers and memory accounting.
 * Nothing here computes on data except the slow element accessors used for
 * printing and tests; kernels live in the backends. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd.h"
#include "backend.h"
#include "mathinl.h"

/* ---- memory accounting ---- */
static _Atomic int64_t mem_now[2], mem_peak[2];

void ad_memory_account(ad_device_type d, int64_t delta) {
  int64_t now = atomic_fetch_add(&mem_now[d], delta) + delta;
  int64_t peak = atomic_load(&mem_peak[d]);
  while (now > peak && !atomic_compare_exchange_weak(&mem_peak[d], &peak, now)) {}
}
int64_t ad_memory_allocated(ad_device_type d) { return atomic_load(&mem_now[d]); }
int64_t ad_memory_peak(ad_device_type d) { return atomic_load(&mem_peak[d]); }
void ad_memory_reset_peak(ad_device_type d) { atomic_store(&mem_peak[d], atomic_load(&mem_now[d])); }

/* ---- storage ---- */
ad_status ad_storage_new(ad_storage **out, size_t nbytes, ad_device dev) {
  const ad_backend *bk = ad_backend_for(dev);
  if (!bk) return AD_EDEVICE;
  ad_storage *s = calloc(1, sizeof *s);
  if (!s) return AD_FAIL(AD_ENOMEM, "out of memory allocating a storage header");
  ad_status st = bk->alloc(&s->data, nbytes, dev.index);
  if (st != AD_OK) { free(s); return st; }
  atomic_init(&s->refcount, 1);
  s->nbytes = nbytes;
  s->device = dev;
  ad_memory_account(dev.type, (int64_t)nbytes);
  *out = s;
  return AD_OK;
}

ad_storage *ad_storage_wrap(void *data, size_t nbytes, ad_device dev,
                            void (*release)(void *, void *, size_t), void *ctx) {
  ad_storage *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  atomic_init(&s->refcount, 1);
  s->data = data;
  s->nbytes = nbytes;
  s->device = dev;
  s->release = release;
  s->release_ctx = ctx;
  return s;
}

void ad_free_release(void *ctx, void *data, size_t nbytes) { free(data); }

void ad_storage_retain(ad_storage *s) { if (s) atomic_fetch_add(&s->refcount, 1); }

void ad_storage_release(ad_storage *s) {
  if (!s || atomic_fetch_sub(&s->refcount, 1) != 1) return;
  if (s->release) {
    s->release(s->release_ctx, s->data, s->nbytes);
  } else {
    const ad_backend *bk = ad_backend_for(s->device);
    if (bk) bk->free(s->data, s->nbytes, s->device.index);
    ad_memory_account(s->device.type, -(int64_t)s->nbytes);
  }
  free(s);
}

/* ---- tensor lifetime ---- */
void ad_tensor_retain(ad_tensor *t) { if (t) atomic_fetch_add(&t->refcount, 1); }

void ad_tensor_release(ad_tensor *t) {
  if (!t || atomic_fetch_sub(&t->refcount, 1) != 1) return;
  ad_tensor_release(t->grad);
  ad_node_release(t->grad_fn);
  ad_storage_release(t->storage);
  free(t);
}

static ad_tensor *tensor_alloc(void) {
  ad_tensor *t = calloc(1, sizeof *t);
  if (t) atomic_init(&t->refcount, 1);
  return t;
}

void ad_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) { strides[i] = s; s *= shape[i] > 0 ? shape[i] : 1; }
}

static ad_status check_shape(int ndim, const int64_t *shape, int64_t *numel) {
  if (ndim < 0 || ndim > AD_MAX_DIMS)
    return AD_FAIL(AD_ESHAPE, "tensors have at most %d dimensions, got %d", AD_MAX_DIMS, ndim);
  /* the product of the non-zero sizes is bounded too: strides are computed
   * from it even when another size is 0 */
  int64_t n = 1, nz = 1;
  bool empty = false;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return AD_FAIL(AD_ESHAPE, "negative size %lld in dimension %d", (long long)shape[i], i + 1);
    if (shape[i] == 0) { empty = true; continue; }
    if (nz > INT64_MAX / 16 / shape[i])
      return AD_FAIL(AD_ESHAPE, "shape is too large (more than 2^59 elements)");
    nz *= shape[i];
  }
  n = empty ? 0 : nz;
  *numel = n;
  return AD_OK;
}

ad_status ad_tensor_from_storage(ad_tensor **out, ad_storage *s, int64_t offset, int ndim,
                                 const int64_t *shape, const int64_t *strides, ad_dtype dt) {
  int64_t n;
  AD_TRY(check_shape(ndim, shape, &n));
  ad_tensor *t = tensor_alloc();
  if (!t) return AD_FAIL(AD_ENOMEM, "out of memory allocating a tensor header");
  ad_storage_retain(s);
  t->storage = s;
  t->offset = offset;
  t->ndim = ndim;
  t->dtype = dt;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  if (strides) for (int i = 0; i < ndim; i++) t->strides[i] = strides[i];
  else ad_contiguous_strides(ndim, shape, t->strides);
  *out = t;
  return AD_OK;
}

ad_status ad_empty(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev) {
  int64_t n;
  if ((unsigned)dt >= AD_NDTYPES) return AD_FAIL(AD_EDTYPE, "invalid dtype %d", (int)dt);
  AD_TRY(check_shape(ndim, shape, &n));
  ad_storage *s;
  AD_TRY(ad_storage_new(&s, (size_t)n * ad_dtype_size(dt), dev));
  ad_status st = ad_tensor_from_storage(out, s, 0, ndim, shape, NULL, dt);
  ad_storage_release(s);
  return st;
}

ad_status ad_full(ad_tensor **out, int ndim, const int64_t *shape, double value, ad_dtype dt, ad_device dev) {
  ad_tensor *t;
  AD_TRY(ad_empty(&t, ndim, shape, dt, dev));
  ad_status st = ad_backend_of(t)->fill(t, value);
  if (st != AD_OK) { ad_tensor_release(t); return st; }
  *out = t;
  return AD_OK;
}
ad_status ad_zeros(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev) {
  return ad_full(out, ndim, shape, 0.0, dt, dev);
}
ad_status ad_empty_like(ad_tensor **out, const ad_tensor *t) {
  return ad_empty(out, t->ndim, t->shape, t->dtype, t->storage->device);
}
ad_status ad_zeros_like(ad_tensor **out, const ad_tensor *t) {
  return ad_zeros(out, t->ndim, t->shape, t->dtype, t->storage->device);
}
ad_status ad_scalar_tensor(ad_tensor **out, double value, ad_dtype dt, ad_device dev) {
  return ad_full(out, 0, NULL, value, dt, dev);
}

/* ---- metadata ---- */
int64_t ad_numel(const ad_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

bool ad_is_contiguous(const ad_tensor *t) {
  if (ad_numel(t) == 0) return true;   /* no element is out of place */
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->strides[i] != s) return false;
    s *= t->shape[i];
  }
  return true;
}

ad_device ad_tensor_device(const ad_tensor *t) { return t->storage->device; }

const char *ad_shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "[");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

bool ad_shape_eq(int na, const int64_t *a, int nb, const int64_t *b) {
  if (na != nb) return false;
  for (int i = 0; i < na; i++) if (a[i] != b[i]) return false;
  return true;
}

ad_status ad_broadcast_shapes(int *nout, int64_t *out, int na, const int64_t *a, int nb,
                              const int64_t *b, const char *op) {
  int n = na > nb ? na : nb;
  int64_t res[AD_MAX_DIMS];
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da == db || db == 1) res[i] = da;
    else if (da == 1) res[i] = db;
    else {
      char sa[128], sb[128];
      return AD_FAIL(AD_ESHAPE, "%s: shapes %s and %s cannot be broadcast", op,
                     ad_shape_str(na, a, sa, sizeof sa), ad_shape_str(nb, b, sb, sizeof sb));
    }
  }
  for (int i = 0; i < n; i++) out[i] = res[i];
  *nout = n;
  return AD_OK;
}

/* ---- slow element access ---- */
static int64_t flat_offset(const ad_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t sz = t->shape[d];
    off += (i % sz) * t->strides[d];
    i /= sz;
  }
  return off;
}

double ad_load_elem(const void *base, ad_dtype dt, int64_t k) {
  switch (dt) {
  case AD_F32: return ((const float *)base)[k];
  case AD_F64: return ((const double *)base)[k];
  case AD_F16: return ad_f16_to_f32(((const uint16_t *)base)[k]);
  case AD_BF16: return ad_bf16_to_f32(((const uint16_t *)base)[k]);
  case AD_I64: return (double)((const int64_t *)base)[k];
  case AD_I32: return ((const int32_t *)base)[k];
  case AD_U8: return ((const uint8_t *)base)[k];
  case AD_BOOL: return ((const uint8_t *)base)[k] != 0;
  default: return 0;
  }
}

void ad_store_elem(void *base, ad_dtype dt, int64_t k, double v) {
  switch (dt) {
  case AD_F32: ((float *)base)[k] = (float)v; break;
  case AD_F64: ((double *)base)[k] = v; break;
  case AD_F16: ((uint16_t *)base)[k] = ad_f32_to_f16((float)v); break;
  case AD_BF16: ((uint16_t *)base)[k] = ad_f32_to_bf16((float)v); break;
  /* float -> int truncates toward zero like PyTorch; NaN/out of range saturate instead of UB */
  case AD_I64: ((int64_t *)base)[k] = v != v ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX
                                  : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v; break;
  case AD_I32: ((int32_t *)base)[k] = v != v ? 0 : v >= 2147483647.0 ? INT32_MAX
                                  : v <= -2147483648.0 ? INT32_MIN : (int32_t)v; break;
  case AD_U8: { double w = v != v ? 0 : v < 0 ? fmod(256.0 + fmod(trunc(v), 256.0), 256.0) : fmod(trunc(v), 256.0);
                ((uint8_t *)base)[k] = (uint8_t)w; break; }
  case AD_BOOL: ((uint8_t *)base)[k] = v != 0; break;
  default: break;
  }
}

double ad_get_flat(const ad_tensor *t, int64_t i) {
  if (t->storage->device.type != AD_DEV_CPU) {
    const ad_backend *bk = ad_backend_of(t);
    size_t es = ad_dtype_size(t->dtype);
    unsigned char buf[8];
    if (!bk || bk->to_host(buf, (char *)ad_data(t) + flat_offset(t, i) * (int64_t)es, es, t->storage->device.index) != AD_OK)
      return NAN;
    return ad_load_elem(buf, t->dtype, 0);
  }
  return ad_load_elem(ad_data(t), t->dtype, flat_offset(t, i));
}

ad_status ad_set_flat(ad_tensor *t, int64_t i, double v) {
  if (i < 0 || i >= ad_numel(t)) return AD_FAIL(AD_EINVAL, "flat index %lld out of range", (long long)i);
  if (t->storage->device.type != AD_DEV_CPU) {
    const ad_backend *bk = ad_backend_of(t);
    size_t es = ad_dtype_size(t->dtype);
    unsigned char buf[8];
    ad_store_elem(buf, t->dtype, 0, v);
    if (!bk) return AD_EDEVICE;
    return bk->from_host((char *)ad_data(t) + flat_offset(t, i) * (int64_t)es, buf, es, t->storage->device.index);
  }
  ad_store_elem(ad_data(t), t->dtype, flat_offset(t, i), v);
  return AD_OK;
}
