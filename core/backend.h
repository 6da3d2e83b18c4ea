/* backend.h: the table of kernels one device provides. The core reaches a
 * device only through this table. Kernels are grouped by op family; each
 * family's struct is declared in core/backend_<family>.h, beside the front ends
 * in core/ops/<family>.c, and implemented by core/cpu/cpu_<family>.c (and the
 * CUDA backend's launchers). A NULL member means "no kernel on this device":
 * front ends then fail with AD_ENOTIMPL naming the op and the device — never
 * a silent fallback.
 *
 * Kernels receive tensors whose shapes and dtypes the front end has already
 * checked, and write into outputs the front end allocated. */
#ifndef AD_BACKEND_H
#define AD_BACKEND_H

#include "tensor.h"
#include "ops.h"

struct ad_elementwise_kernels;  /* backend_elementwise.h */
struct ad_reduce_kernels;       /* backend_reduce.h */
struct ad_blas_kernels;         /* backend_blas.h */
struct ad_conv_kernels;         /* backend_conv.h: conv, pooling, resampling, pad */
struct ad_nn_kernels;           /* backend_nn.h: norms, softmax, attention, embedding, dropout, losses */
struct ad_optim_kernels;        /* backend_optim.h: fused optimizer steps, EMA, grad norms */

typedef struct ad_backend {
  const char *name;                       /* "cpu" | "cuda" */
  ad_device_type type;
  ad_status (*alloc)(void **ptr, size_t nbytes, int device_index);
  void (*free)(void *ptr, size_t nbytes, int device_index);
  /* dst <- src, same shape, same device, any strides, any dtypes (converting) */
  ad_status (*copy)(ad_tensor *dst, const ad_tensor *src);
  ad_status (*fill)(ad_tensor *dst, double value);               /* any strides */
  /* copies between this device and the host: contiguous bytes */
  ad_status (*to_host)(void *host, const void *dev_ptr, size_t nbytes, int device_index);
  ad_status (*from_host)(void *dev_ptr, const void *host, size_t nbytes, int device_index);
  /* random fills of a contiguous tensor from Philox (seed, offset): kind 0 uniform
   * [a,b), 1 normal(a, b), 2 integers [a, b) */
  ad_status (*random_fill)(ad_tensor *dst, int kind, double a, double b, uint64_t seed, uint64_t offset);
  /* arange-like fill of a contiguous tensor: dst[i] = start + i*step */
  ad_status (*iota)(ad_tensor *dst, double start, double step);
  /* gather/scatter along dim for index_select (index i64 contiguous) */
  ad_status (*index_select)(ad_tensor *dst, const ad_tensor *src, int dim, const ad_tensor *index);
  ad_status (*index_add)(ad_tensor *dst, int dim, const ad_tensor *index, const ad_tensor *src);

  const struct ad_elementwise_kernels *elementwise;
  const struct ad_reduce_kernels *reduce;
  const struct ad_blas_kernels *blas;
  const struct ad_conv_kernels *conv;
  const struct ad_nn_kernels *nn;
  const struct ad_optim_kernels *optim;
} ad_backend;

/* The backend of a device; NULL (with the error set) when that device is not
 * available in this build or on this machine. */
const ad_backend *ad_backend_for(ad_device dev);
static inline const ad_backend *ad_backend_of(const ad_tensor *t) { return ad_backend_for(t->storage->device); }
/* Lets the CUDA glue register itself at start-up. */
void ad_backend_register(ad_device_type type, const ad_backend *b);

/* Fails with AD_ENOTIMPL "<op>: no <device> kernel" when fn is NULL. */
#define AD_NEED_KERNEL(fn, opname, bk) \
  do { if (!(fn)) return AD_FAIL(AD_ENOTIMPL, "%s: no %s kernel", (opname), (bk)->name); } while (0)

#endif
