/* tensor.h: dtypes, devices, refcounted storages and the tensor view over them.
 *
 * A tensor is (storage, offset, shape, strides, dtype) plus autograd fields.
 * Strides and offsets count elements, not bytes. Views share the storage and
 * hold a reference to it; every tensor is refcounted so that the autograd tape
 * and Lua boxes can both keep one alive. Refcounts are atomic: data-loader
 * threads hand tensors to the main thread. */
#ifndef AD_TENSOR_H
#define AD_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "status.h"

#define AD_MAX_DIMS 8

typedef enum {
  AD_F32 = 0, AD_F64, AD_F16, AD_BF16, AD_I64, AD_I32, AD_U8, AD_BOOL, AD_NDTYPES
} ad_dtype;

typedef enum { AD_DEV_CPU = 0, AD_DEV_CUDA = 1 } ad_device_type;
typedef struct { ad_device_type type; int index; } ad_device;
#define AD_CPU ((ad_device){AD_DEV_CPU, 0})

size_t ad_dtype_size(ad_dtype dt);
const char *ad_dtype_name(ad_dtype dt);               /* "f32", "f64", ... */
ad_status ad_dtype_parse(ad_dtype *dt, const char *name); /* accepts "f32", "float32", "float", ... */
bool ad_dtype_is_float(ad_dtype dt);                  /* f32 f64 f16 bf16 */
/* The dtype two operands promote to (PyTorch's rules, simplified: float beats
 * int, wider beats narrower, f16+bf16 -> f32). */
ad_dtype ad_dtype_promote(ad_dtype a, ad_dtype b);
bool ad_device_eq(ad_device a, ad_device b);
const char *ad_device_str(ad_device d, char *buf, size_t n); /* "cpu", "cuda:0" */

typedef struct ad_storage {
  _Atomic long refcount;
  void *data;
  size_t nbytes;
  ad_device device;
  /* Releases data; NULL means the backend allocated it. Lets file readers hand
   * out mmap'd storages without a copy. */
  void (*release)(void *ctx, void *data, size_t nbytes);
  void *release_ctx;
} ad_storage;

struct ad_node;

typedef struct ad_tensor {
  _Atomic long refcount;
  ad_storage *storage;
  int64_t offset;                 /* elements */
  int ndim;
  int64_t shape[AD_MAX_DIMS];
  int64_t strides[AD_MAX_DIMS];   /* elements */
  ad_dtype dtype;
  /* autograd (see autograd.h) */
  bool requires_grad;             /* leaf flag set by the user, or "has grad_fn" */
  struct ad_tensor *grad;         /* accumulated gradient of a leaf, owned */
  struct ad_node *grad_fn;        /* node that produced this tensor, owned ref */
  int output_nr;                  /* which output of grad_fn */
} ad_tensor;

/* ---- storage ---- */
ad_status ad_storage_new(ad_storage **s, size_t nbytes, ad_device dev);
ad_storage *ad_storage_wrap(void *data, size_t nbytes, ad_device dev,
                            void (*release)(void *, void *, size_t), void *ctx); /* NULL on OOM */
void ad_storage_retain(ad_storage *s);
void ad_storage_release(ad_storage *s);
/* a release callback that free()s: for storages wrapping malloc'd host memory */
void ad_free_release(void *ctx, void *data, size_t nbytes);

/* ---- lifetime ---- */
void ad_tensor_retain(ad_tensor *t);
void ad_tensor_release(ad_tensor *t);   /* NULL is a no-op */

/* ---- creation (contiguous, uninitialised unless stated) ---- */
ad_status ad_empty(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev);
ad_status ad_zeros(ad_tensor **out, int ndim, const int64_t *shape, ad_dtype dt, ad_device dev);
ad_status ad_full(ad_tensor **out, int ndim, const int64_t *shape, double value, ad_dtype dt, ad_device dev);
ad_status ad_empty_like(ad_tensor **out, const ad_tensor *t);
ad_status ad_zeros_like(ad_tensor **out, const ad_tensor *t);
ad_status ad_scalar_tensor(ad_tensor **out, double value, ad_dtype dt, ad_device dev); /* 0-d */
/* A tensor of the given shape over an existing storage (retains it). */
ad_status ad_tensor_from_storage(ad_tensor **out, ad_storage *s, int64_t offset, int ndim,
                                 const int64_t *shape, const int64_t *strides, ad_dtype dt);

/* ---- metadata ---- */
int64_t ad_numel(const ad_tensor *t);
bool ad_is_contiguous(const ad_tensor *t);
ad_device ad_tensor_device(const ad_tensor *t);
static inline void *ad_data(const ad_tensor *t) {  /* pointer to element 0 */
  return (char *)t->storage->data + t->offset * (int64_t)ad_dtype_size(t->dtype);
}
/* "[2, 3, 4]" */
const char *ad_shape_str(int ndim, const int64_t *shape, char *buf, size_t n);
bool ad_shape_eq(int na, const int64_t *a, int nb, const int64_t *b);
/* NumPy broadcasting of two shapes; fails with AD_ESHAPE naming op. */
ad_status ad_broadcast_shapes(int *nout, int64_t *out, int na, const int64_t *a, int nb,
                              const int64_t *b, const char *op);
void ad_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);

/* ---- element access (slow; for tests, printing, small tables) ---- */
double ad_get_flat(const ad_tensor *t, int64_t i);     /* i-th element in row-major order */
ad_status ad_set_flat(ad_tensor *t, int64_t i, double v);
/* element k of a host buffer of dtype dt, as double (and back); used by generic kernel paths */
double ad_load_elem(const void *base, ad_dtype dt, int64_t k);
void ad_store_elem(void *base, ad_dtype dt, int64_t k, double v);

/* ---- memory accounting (bytes held by live storages, per device type) ---- */
int64_t ad_memory_allocated(ad_device_type d);
int64_t ad_memory_peak(ad_device_type d);
void ad_memory_reset_peak(ad_device_type d);
void ad_memory_account(ad_device_type d, int64_t delta); /* backends call this */
/* returns the CPU backend's cache of freed large blocks to the system */
void ad_cpu_empty_cache(void);

#endif
