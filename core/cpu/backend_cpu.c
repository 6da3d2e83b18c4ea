/* backend_cpu.c: the CPU backend table, and the registry that maps a device to
 * its backend. The CUDA glue registers itself here when built in. */
#include <stdlib.h>
#include "../backend.h"

extern const struct ad_elementwise_kernels ad_cpu_elementwise_kernels;
extern const struct ad_reduce_kernels ad_cpu_reduce_kernels;
extern const struct ad_blas_kernels ad_cpu_blas_kernels;
extern const struct ad_conv_kernels ad_cpu_conv_kernels;
extern const struct ad_nn_kernels ad_cpu_nn_kernels;

ad_status ad_cpu_copy(ad_tensor *dst, const ad_tensor *src);
ad_status ad_cpu_fill(ad_tensor *dst, double value);
ad_status ad_cpu_random_fill(ad_tensor *dst, int kind, double a, double b, uint64_t seed, uint64_t offset);
ad_status ad_cpu_iota(ad_tensor *dst, double start, double step);
ad_status ad_cpu_index_select(ad_tensor *dst, const ad_tensor *src, int dim, const ad_tensor *index);
ad_status ad_cpu_index_add(ad_tensor *dst, int dim, const ad_tensor *index, const ad_tensor *src);
ad_status ad_cpu_to_host(void *host, const void *dev_ptr, size_t nbytes, int device_index);
ad_status ad_cpu_from_host(void *dev_ptr, const void *host, size_t nbytes, int device_index);

/* 64-byte alignment: AVX-512 loads and oneDNN prefer it */
static ad_status cpu_alloc(void **ptr, size_t nbytes, int device_index) {
  size_t n = (nbytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, n ? n : 64);
  if (!p) return AD_FAIL(AD_ENOMEM, "out of memory: could not allocate %zu bytes on the CPU", nbytes);
  *ptr = p;
  return AD_OK;
}
static void cpu_free(void *ptr, size_t nbytes, int device_index) { free(ptr); }

const ad_backend ad_cpu_backend = {
  .name = "cpu",
  .type = AD_DEV_CPU,
  .alloc = cpu_alloc,
  .free = cpu_free,
  .copy = ad_cpu_copy,
  .fill = ad_cpu_fill,
  .to_host = ad_cpu_to_host,
  .from_host = ad_cpu_from_host,
  .random_fill = ad_cpu_random_fill,
  .iota = ad_cpu_iota,
  .index_select = ad_cpu_index_select,
  .index_add = ad_cpu_index_add,
  .elementwise = &ad_cpu_elementwise_kernels,
  .reduce = &ad_cpu_reduce_kernels,
  .blas = &ad_cpu_blas_kernels,
  .conv = &ad_cpu_conv_kernels,
  .nn = &ad_cpu_nn_kernels,
};

static const ad_backend *registry[2] = {&ad_cpu_backend, NULL};

void ad_backend_register(ad_device_type type, const ad_backend *b) { registry[type] = b; }

const ad_backend *ad_backend_for(ad_device dev) {
  if ((unsigned)dev.type > AD_DEV_CUDA) { AD_FAIL(AD_EDEVICE, "unknown device type %d", (int)dev.type); return NULL; }
  const ad_backend *b = registry[dev.type];
  if (!b) {
    AD_FAIL(AD_EDEVICE, "no CUDA device: this build of advdiff has no CUDA backend, or no GPU/driver is present");
    return NULL;
  }
  return b;
}
