/* cuda_ctx.c: devices, streams and library handles of the CUDA backend, error
 * mapping, host<->device copies, and the start-up registration.
 *
 * At load time a constructor counts the devices; with at least one it
 * registers the CUDA backend for AD_DEV_CUDA. Without a driver or GPU it
 * registers nothing, so asking for a CUDA tensor keeps failing with the
 * core's "no CUDA device: ..." error and no CUDA call is made again. Each
 * device's context (one non-blocking stream, cuBLAS/cuBLASLt/cuDNN handles,
 * pinned staging buffers) is created on first use. All work of a device goes
 * to its one stream, so the caching allocator may hand a freed block to the
 * next op at once: stream order keeps the two apart. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_profiler_api.h>
#include "cuda_internal.h"

static ad_cuda_dev devices[AD_CUDA_MAX_DEVICES];
static int device_count = -1;            /* set once by the constructor */
static char unavailable[256];
static bool sync_mode;
static _Atomic bool allow_tf32;
static _Thread_local int current_device = -1;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- errors ------------------------------------------------------------------ */

ad_status ad_cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess && sync_mode) {
    e = cudaDeviceSynchronize();
    if (e != cudaSuccess)
      return AD_FAIL(AD_ECUDA, "cuda: %s: asynchronous error found by AD_CUDA_SYNC: %s (%s)", what,
                     cudaGetErrorString(e), cudaGetErrorName(e));
  }
  if (e == cudaSuccess) return AD_OK;
  (void)cudaGetLastError();   /* clear a non-sticky error so the next call starts clean */
  if (e == cudaErrorMemoryAllocation && ad_cuda_take_scratch_failure())
    return ad_fail_context(AD_ENOMEM, "cuda: %s", what);   /* the allocator's message, with the op */
  if (e == cudaErrorMemoryAllocation)
    return AD_FAIL(AD_ENOMEM, "cuda: %s: out of memory (%s)", what, cudaGetErrorString(e));
  return AD_FAIL(AD_ECUDA, "cuda: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

ad_status ad_cublas_check(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return ad_cuda_check(cudaSuccess, what);
  return AD_FAIL(s == CUBLAS_STATUS_ALLOC_FAILED ? AD_ENOMEM : AD_ECUDA, "cublas: %s: %s (%s)", what,
                 cublasGetStatusString(s), cublasGetStatusName(s));
}

#ifdef AD_HAVE_CUDNN
ad_status ad_cudnn_check(cudnnStatus_t s, const char *what) {
  if (s == CUDNN_STATUS_SUCCESS) return ad_cuda_check(cudaSuccess, what);
  return AD_FAIL(s == CUDNN_STATUS_ALLOC_FAILED ? AD_ENOMEM : AD_ECUDA, "cudnn: %s: %s", what,
                 cudnnGetErrorString(s));
}
#endif

bool ad_cuda_sync_mode(void) { return sync_mode; }
bool ad_cuda_tf32(void) { return atomic_load(&allow_tf32); }
void ad_cuda_set_allow_tf32(bool on) { atomic_store(&allow_tf32, on); }
bool ad_cuda_get_allow_tf32(void) { return atomic_load(&allow_tf32); }

/* ---- start-up ------------------------------------------------------------------ */

static void count_devices(void) {
  pthread_mutex_lock(&init_lock);
  if (device_count >= 0) { pthread_mutex_unlock(&init_lock); return; }
  const char *off = getenv("ADVDIFF_NO_CUDA");
  int n = 0;
  if (off && *off && strcmp(off, "0") != 0) {
    snprintf(unavailable, sizeof unavailable, "disabled by ADVDIFF_NO_CUDA");
  } else {
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      snprintf(unavailable, sizeof unavailable, "%s", cudaGetErrorString(e));
      (void)cudaGetLastError();
      n = 0;
    } else if (n == 0) {
      snprintf(unavailable, sizeof unavailable, "no GPU found");
    }
  }
  if (n > AD_CUDA_MAX_DEVICES) n = AD_CUDA_MAX_DEVICES;
  const char *s = getenv("AD_CUDA_SYNC");
  sync_mode = s && *s && strcmp(s, "0") != 0;
  for (int i = 0; i < AD_CUDA_MAX_DEVICES; i++) {
    devices[i].index = i;
    pthread_mutex_init(&devices[i].lock, NULL);
  }
  device_count = n;
  pthread_mutex_unlock(&init_lock);
}

__attribute__((constructor)) static void ad_cuda_startup(void) {
  count_devices();
  if (device_count > 0) ad_backend_register(AD_DEV_CUDA, &ad_cuda_backend);
}

int ad_cuda_device_count(void) {
  if (device_count < 0) count_devices();
  return device_count;
}
bool ad_cuda_available(void) { return ad_cuda_device_count() > 0; }
const char *ad_cuda_unavailable_reason(void) {
  ad_cuda_device_count();
  return unavailable;
}

static ad_status check_index(int index) {
  int n = ad_cuda_device_count();
  if (n == 0) return AD_FAIL(AD_EDEVICE, "no CUDA device: %s", unavailable);
  if (index < 0 || index >= n)
    return AD_FAIL(AD_EDEVICE, "no CUDA device: cuda:%d does not exist (%d device%s)", index, n, n == 1 ? "" : "s");
  return AD_OK;
}

static ad_status make_current(int index) {
  if (current_device == index) return AD_OK;
  AD_TRY(ad_cuda_check(cudaSetDevice(index), "cudaSetDevice"));
  current_device = index;
  return AD_OK;
}

static ad_status dev_init(ad_cuda_dev *d) {
  struct cudaDeviceProp p;
  AD_TRY(ad_cuda_check(cudaGetDeviceProperties(&p, d->index), "cudaGetDeviceProperties"));
  AD_TRY(ad_cuda_check(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  d->num_sms = p.multiProcessorCount;
  d->cc_major = p.major;
  d->cc_minor = p.minor;
  d->total_mem = p.totalGlobalMem;
  snprintf(d->name, sizeof d->name, "%s", p.name);
  d->ready = true;
  return AD_OK;
}

ad_status ad_cuda_dev_get(ad_cuda_dev **out, int index) {
  AD_TRY(check_index(index));
  AD_TRY(make_current(index));
  ad_cuda_dev *d = &devices[index];
  if (!d->ready) {
    pthread_mutex_lock(&d->lock);
    ad_status st = d->ready ? AD_OK : dev_init(d);
    pthread_mutex_unlock(&d->lock);
    if (st != AD_OK) return st;
  }
  *out = d;
  return AD_OK;
}

ad_status ad_cuda_kctx(adk_ctx *k, ad_cuda_dev **dev, int index) {
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_dev_get(&d, index));
  k->stream = d->stream;
  k->device = index;
  k->num_sms = d->num_sms;
  k->scratch_alloc = ad_cuda_scratch_alloc;
  k->scratch_free = ad_cuda_scratch_free;
  if (dev) *dev = d;
  return AD_OK;
}

/* cuBLAS: its own 32 MiB workspace from the caching allocator (Hopper's
 * kernels want more than the default), so graph capture and the allocator's
 * statistics see it. */
ad_status ad_cuda_blas_handle(cublasHandle_t *h, ad_cuda_dev *d) {
  if (!d->blas) {
    pthread_mutex_lock(&d->lock);
    ad_status st = AD_OK;
    if (!d->blas) {
      cublasHandle_t b = NULL;
      st = ad_cublas_check(cublasCreate(&b), "cublasCreate");
      if (st == AD_OK) st = ad_cublas_check(cublasSetStream(b, d->stream), "cublasSetStream");
      if (st == AD_OK) {
        size_t ws = (size_t)32 << 20;
        if (ad_cuda_malloc(&d->blas_ws, ws, d->index) == AD_OK)
          st = ad_cublas_check(cublasSetWorkspace(b, d->blas_ws, ws), "cublasSetWorkspace");
      }
      if (st == AD_OK) d->blas = b;
      else if (b) cublasDestroy(b);
    }
    pthread_mutex_unlock(&d->lock);
    if (st != AD_OK) return st;
  }
  *h = d->blas;
  return AD_OK;
}

ad_status ad_cuda_lt_handle(cublasLtHandle_t *h, void **ws, size_t *ws_size, ad_cuda_dev *d) {
  if (!d->lt) {
    pthread_mutex_lock(&d->lock);
    ad_status st = AD_OK;
    if (!d->lt) {
      cublasLtHandle_t l = NULL;
      st = ad_cublas_check(cublasLtCreate(&l), "cublasLtCreate");
      if (st == AD_OK) {
        d->lt_ws_size = (size_t)32 << 20;
        if (ad_cuda_malloc(&d->lt_ws, d->lt_ws_size, d->index) != AD_OK) d->lt_ws_size = 0;
        d->lt = l;
      }
    }
    pthread_mutex_unlock(&d->lock);
    if (st != AD_OK) return st;
  }
  *h = d->lt;
  *ws = d->lt_ws;
  *ws_size = d->lt_ws_size;
  return AD_OK;
}

#ifdef AD_HAVE_CUDNN
ad_status ad_cudnn_handle(cudnnHandle_t *h, ad_cuda_dev *d) {
  if (!d->dnn) {
    pthread_mutex_lock(&d->lock);
    ad_status st = AD_OK;
    if (!d->dnn) {
      cudnnHandle_t n = NULL;
      st = ad_cudnn_check(cudnnCreate(&n), "cudnnCreate");
      if (st == AD_OK) st = ad_cudnn_check(cudnnSetStream(n, d->stream), "cudnnSetStream");
      if (st == AD_OK) d->dnn = n;
      else if (n) cudnnDestroy(n);
    }
    pthread_mutex_unlock(&d->lock);
    if (st != AD_OK) return st;
  }
  *h = d->dnn;
  return AD_OK;
}
#endif

ad_status ad_cuda_synchronize(int device) {
  if (device >= 0) {
    ad_cuda_dev *d;
    AD_TRY(ad_cuda_dev_get(&d, device));
    return ad_cuda_check(cudaStreamSynchronize(d->stream), "synchronize");
  }
  int n = ad_cuda_device_count();
  for (int i = 0; i < n; i++)
    if (devices[i].ready) {
      AD_TRY(make_current(i));
      AD_TRY(ad_cuda_check(cudaStreamSynchronize(devices[i].stream), "synchronize"));
    }
  return AD_OK;
}

/* Brackets a region for an external profiler (Nsight's --capture-range=cudaProfilerApi,
 * tests/gpu/kprof.cpp): everything queued is waited for first, so the region
 * holds only the work launched inside it. */
ad_status ad_cuda_profiler(bool start) {
  AD_TRY(ad_cuda_synchronize(-1));
  return ad_cuda_check(start ? cudaProfilerStart() : cudaProfilerStop(), start ? "cudaProfilerStart" : "cudaProfilerStop");
}

ad_status ad_cuda_device_name(int device, char *buf, size_t n) {
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_dev_get(&d, device));
  snprintf(buf, n, "%s (sm_%d%d, %d SMs, %.1f GiB)", d->name, d->cc_major, d->cc_minor, d->num_sms,
           (double)d->total_mem / (1024.0 * 1024.0 * 1024.0));
  return AD_OK;
}

/* ---- host <-> device copies ------------------------------------------------------
 * Small copies go straight through cudaMemcpyAsync. Large ones run through two
 * pinned buffers: while the DMA engine moves one chunk, the CPU copies the
 * other between the pinned buffer and the caller's pageable memory. */

#define STAGE_MIN ((size_t)1 << 20)      /* below this, a direct copy */
#define STAGE_CHUNK ((size_t)16 << 20)   /* each of the two pinned buffers */

static ad_status stage_init(ad_cuda_dev *d) {
  if (d->stage_size) return AD_OK;
  for (int k = 0; k < 2; k++) {
    AD_TRY(ad_cuda_check(cudaHostAlloc(&d->stage[k], STAGE_CHUNK, cudaHostAllocDefault), "cudaHostAlloc (staging)"));
    AD_TRY(ad_cuda_check(cudaEventCreateWithFlags(&d->stage_ev[k], cudaEventDisableTiming), "cudaEventCreate"));
  }
  d->stage_size = STAGE_CHUNK;
  return AD_OK;
}

ad_status ad_cuda_to_host(void *host, const void *dev_ptr, size_t nbytes, int device_index) {
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_dev_get(&d, device_index));
  if (nbytes == 0) return AD_OK;
  if (nbytes < STAGE_MIN) {
    AD_TRY(ad_cuda_check(cudaMemcpyAsync(host, dev_ptr, nbytes, cudaMemcpyDeviceToHost, d->stream), "copy to host"));
    return ad_cuda_check(cudaStreamSynchronize(d->stream), "copy to host");
  }
  pthread_mutex_lock(&d->lock);
  ad_status st = stage_init(d);
  size_t nchunks = (nbytes + STAGE_CHUNK - 1) / STAGE_CHUNK;
  /* chunk i goes device -> stage[i % 2]; chunk i - 1 is copied out meanwhile */
  for (size_t i = 0; st == AD_OK && i <= nchunks; i++) {
    if (i < nchunks) {
      size_t off = i * STAGE_CHUNK, len = nbytes - off < STAGE_CHUNK ? nbytes - off : STAGE_CHUNK;
      int k = (int)(i % 2);
      st = ad_cuda_check(cudaMemcpyAsync(d->stage[k], (const char *)dev_ptr + off, len, cudaMemcpyDeviceToHost,
                                         d->stream), "copy to host");
      if (st == AD_OK) st = ad_cuda_check(cudaEventRecord(d->stage_ev[k], d->stream), "copy to host");
    }
    if (st == AD_OK && i > 0) {
      size_t j = i - 1, off = j * STAGE_CHUNK, len = nbytes - off < STAGE_CHUNK ? nbytes - off : STAGE_CHUNK;
      int k = (int)(j % 2);
      st = ad_cuda_check(cudaEventSynchronize(d->stage_ev[k]), "copy to host");
      if (st == AD_OK) memcpy((char *)host + off, d->stage[k], len);
    }
  }
  pthread_mutex_unlock(&d->lock);
  return st;
}

/* The small-copy slots, made on first use; -1 when they cannot be (then small
 * copies wait for the stream, as before). Called with d->lock held. */
static bool small_ready(ad_cuda_dev *d) {
  if (d->small_state) return d->small_state > 0;
  d->small_state = -1;
  int made = 0;
  for (; made < AD_CUDA_SMALL_SLOTS; made++)
    if (cudaEventCreateWithFlags(&d->small_ev[made], cudaEventDisableTiming) != cudaSuccess) break;
  if (made == AD_CUDA_SMALL_SLOTS &&
      cudaHostAlloc((void **)&d->small, AD_CUDA_SMALL_SLOTS * AD_CUDA_SMALL_SLOT, cudaHostAllocDefault) == cudaSuccess) {
    d->small_state = 1;
    return true;
  }
  while (made > 0) cudaEventDestroy(d->small_ev[--made]);
  (void)cudaGetLastError();
  return false;
}

ad_status ad_cuda_from_host(void *dev_ptr, const void *host, size_t nbytes, int device_index) {
  ad_cuda_dev *d;
  AD_TRY(ad_cuda_dev_get(&d, device_index));
  if (nbytes == 0) return AD_OK;
  if (nbytes <= AD_CUDA_SMALL_SLOT) {
    /* Copied into a pinned slot, then queued: no wait for the work already on
     * the stream (a cudaStreamSynchronize per copy here halved the images/s of
     * ADM sampling on an H200, where each step makes a few such tensors). A slot
     * is refilled only once the copy out of it, 64 copies ago, has run. */
    pthread_mutex_lock(&d->lock);
    if (small_ready(d)) {
      const unsigned k = d->small_next++ % AD_CUDA_SMALL_SLOTS;
      char *slot = d->small + (size_t)k * AD_CUDA_SMALL_SLOT;
      ad_status st = ad_cuda_check(cudaEventSynchronize(d->small_ev[k]), "copy to device");
      if (st == AD_OK) {
        memcpy(slot, host, nbytes);
        st = ad_cuda_check(cudaMemcpyAsync(dev_ptr, slot, nbytes, cudaMemcpyHostToDevice, d->stream), "copy to device");
      }
      if (st == AD_OK) st = ad_cuda_check(cudaEventRecord(d->small_ev[k], d->stream), "copy to device");
      pthread_mutex_unlock(&d->lock);
      return st;
    }
    pthread_mutex_unlock(&d->lock);
  }
  if (nbytes < STAGE_MIN) {
    /* pageable source: the driver has taken its copy when this returns */
    AD_TRY(ad_cuda_check(cudaMemcpyAsync(dev_ptr, host, nbytes, cudaMemcpyHostToDevice, d->stream), "copy to device"));
    return ad_cuda_check(cudaStreamSynchronize(d->stream), "copy to device");
  }
  pthread_mutex_lock(&d->lock);
  ad_status st = stage_init(d);
  for (size_t off = 0, i = 0; st == AD_OK && off < nbytes; off += STAGE_CHUNK, i++) {
    size_t len = nbytes - off < STAGE_CHUNK ? nbytes - off : STAGE_CHUNK;
    int k = (int)(i % 2);
    /* the previous DMA out of this buffer must be done before it is refilled */
    st = ad_cuda_check(cudaEventSynchronize(d->stage_ev[k]), "copy to device");
    if (st != AD_OK) break;
    memcpy(d->stage[k], (const char *)host + off, len);
    st = ad_cuda_check(cudaMemcpyAsync((char *)dev_ptr + off, d->stage[k], len, cudaMemcpyHostToDevice, d->stream),
                       "copy to device");
    if (st == AD_OK) st = ad_cuda_check(cudaEventRecord(d->stage_ev[k], d->stream), "copy to device");
  }
  pthread_mutex_unlock(&d->lock);
  return st;
}
