/* backend_cpu.c: the CPU backend table, and the registry that maps a device to
 * its backend. The CUDA glue registers itself here when built in. */
#include <pthread.h>
#include <stdlib.h>
#include "../backend.h"

extern const struct ad_elementwise_kernels ad_cpu_elementwise_kernels;
extern const struct ad_reduce_kernels ad_cpu_reduce_kernels;
extern const struct ad_blas_kernels ad_cpu_blas_kernels;
extern const struct ad_conv_kernels ad_cpu_conv_kernels;
extern const struct ad_nn_kernels ad_cpu_nn_kernels;
extern const struct ad_optim_kernels ad_cpu_optim_kernels;

ad_status ad_cpu_copy(ad_tensor *dst, const ad_tensor *src);
ad_status ad_cpu_fill(ad_tensor *dst, double value);
ad_status ad_cpu_random_fill(ad_tensor *dst, int kind, double a, double b, uint64_t seed, uint64_t offset);
ad_status ad_cpu_iota(ad_tensor *dst, double start, double step);
ad_status ad_cpu_index_select(ad_tensor *dst, const ad_tensor *src, int dim, const ad_tensor *index);
ad_status ad_cpu_index_add(ad_tensor *dst, int dim, const ad_tensor *index, const ad_tensor *src);
ad_status ad_cpu_to_host(void *host, const void *dev_ptr, size_t nbytes, int device_index);
ad_status ad_cpu_from_host(void *dev_ptr, const void *host, size_t nbytes, int device_index);

/* A training step frees and reallocates the same large activations every
 * iteration. glibc serves such blocks with fresh mmaps whose pages are
 * faulted in and zeroed each time (an add on 16M floats: 134 ms instead of
 * 23 ms with reuse), and its mmap threshold cannot be raised past 32 MiB. So
 * large blocks go through a small cache of freed blocks keyed by exact size:
 * after the first step, a step's allocations are served from it. Bounded by
 * AD_CPU_CACHE_MB (default 2048); ad_cpu_empty_cache() returns it. */
#define LARGE_BLOCK (1 << 20)
#define CACHE_SLOTS 256
static struct { void *ptr; size_t size; } cache[CACHE_SLOTS];
static int n_cached;
static size_t cached_bytes, cache_limit = (size_t)-1;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t cache_limit_bytes(void) {
  if (cache_limit == (size_t)-1) {
    const char *e = getenv("AD_CPU_CACHE_MB");
    long mb = e ? strtol(e, NULL, 10) : 2048;
#ifdef __SANITIZE_ADDRESS__
    mb = 0;   /* reused blocks would hide use-after-free from AddressSanitizer */
#endif
    cache_limit = mb > 0 ? (size_t)mb << 20 : 0;
  }
  return cache_limit;
}

void ad_cpu_empty_cache(void) {
  pthread_mutex_lock(&cache_lock);
  for (int i = 0; i < n_cached; i++) free(cache[i].ptr);
  n_cached = 0;
  cached_bytes = 0;
  pthread_mutex_unlock(&cache_lock);
}

/* 64-byte alignment: AVX-512 loads and oneDNN prefer it */
static ad_status cpu_alloc(void **ptr, size_t nbytes, int device_index) {
  size_t n = (nbytes + 63) & ~(size_t)63;
  if (n == 0) n = 64;
  if (n >= LARGE_BLOCK) {
    pthread_mutex_lock(&cache_lock);
    for (int i = n_cached - 1; i >= 0; i--)
      if (cache[i].size == n) {
        *ptr = cache[i].ptr;
        cached_bytes -= n;
        cache[i] = cache[--n_cached];
        pthread_mutex_unlock(&cache_lock);
        return AD_OK;
      }
    pthread_mutex_unlock(&cache_lock);
  }
  void *p = aligned_alloc(64, n);
  if (!p && n_cached) { ad_cpu_empty_cache(); p = aligned_alloc(64, n); }
  if (!p) return AD_FAIL(AD_ENOMEM, "out of memory: could not allocate %zu bytes on the CPU", nbytes);
  *ptr = p;
  return AD_OK;
}

static void cpu_free(void *ptr, size_t nbytes, int device_index) {
  size_t n = (nbytes + 63) & ~(size_t)63;
  if (n >= LARGE_BLOCK && n <= cache_limit_bytes()) {
    pthread_mutex_lock(&cache_lock);
    while (n_cached > 0 && (n_cached == CACHE_SLOTS || cached_bytes + n > cache_limit)) {
      cached_bytes -= cache[0].size;              /* evict the oldest */
      free(cache[0].ptr);
      cache[0] = cache[--n_cached];
    }
    cache[n_cached].ptr = ptr;
    cache[n_cached].size = n;
    n_cached++;
    cached_bytes += n;
    pthread_mutex_unlock(&cache_lock);
    return;
  }
  free(ptr);
}

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
  .optim = &ad_cpu_optim_kernels,
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
