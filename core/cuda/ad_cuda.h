/* ad_cuda.h: what the rest of advdiff may ask of the CUDA backend: whether a
 * GPU is there, synchronisation, the caching allocator's statistics, and the
 * TF32 switch. Plain C without CUDA headers, so the bindings and tests can
 * include it; compiled only when AD_HAVE_CUDA is defined (callers guard).
 *
 * The backend registers itself for AD_DEV_CUDA at start-up when at least one
 * device is present; otherwise ad_backend_for(cuda) keeps failing with
 * "no CUDA device: ...", and nothing here touches a GPU. */
#ifndef AD_CUDA_H
#define AD_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "../status.h"

/* Number of usable devices (0 without a driver or GPU; never fails). */
int ad_cuda_device_count(void);
bool ad_cuda_available(void);
/* Why no device is usable ("" when one is). */
const char *ad_cuda_unavailable_reason(void);
/* "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" */
ad_status ad_cuda_device_name(int device, char *buf, size_t n);

/* Waits for all queued work on device (device < 0: every initialised device). */
ad_status ad_cuda_synchronize(int device);
/* start: synchronizes, then cudaProfilerStart; else synchronizes, then cudaProfilerStop */
ad_status ad_cuda_profiler(bool start);

typedef struct {
  int64_t allocated;        /* bytes in blocks handed out (rounded sizes) */
  int64_t reserved;         /* bytes obtained with cudaMalloc and cached */
  int64_t peak_allocated;
  int64_t peak_reserved;
  int64_t requested;        /* bytes asked for by live allocations (unrounded) */
  int64_t num_cuda_malloc;  /* cudaMalloc calls so far */
  int64_t num_cuda_free;    /* cudaFree calls so far */
  int64_t num_alloc;        /* allocations served */
  int64_t num_cache_hits;   /* allocations served from the cache */
  int64_t num_oom_retries;  /* cudaMalloc failures followed by empty-cache-and-retry */
  int64_t num_segments;     /* cudaMalloc'd segments currently held */
} ad_cuda_memory_stats;

ad_status ad_cuda_memory_stats_get(ad_cuda_memory_stats *out, int device);
void ad_cuda_reset_peak_memory(int device);
/* Returns every cached segment with no live block to the driver (all devices). */
ad_status ad_cuda_empty_cache(void);

/* TF32 tensor-core math for f32 matmul/conv (off by default: results then
 * match f32 to ~1e-6; with it on, to ~1e-3). */
void ad_cuda_set_allow_tf32(bool on);
bool ad_cuda_get_allow_tf32(void);

#endif
