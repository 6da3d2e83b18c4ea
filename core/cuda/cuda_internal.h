/* cuda_internal.h: shared by the C glue of the CUDA backend (the .c files here):
 * the per-device context (stream, library handles, staging buffers), error
 * mapping, the caching allocator's entry points and the tensor-to-launcher
 * helpers. Nothing outside core/cuda includes this. */
#ifndef AD_CUDA_INTERNAL_H
#define AD_CUDA_INTERNAL_H

#include <pthread.h>
#include <cuda_runtime_api.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#ifdef AD_HAVE_CUDNN
#include <cudnn.h>
#endif
#include "../backend.h"
#include "ad_cuda.h"
#include "kernels.h"

#define AD_CUDA_MAX_DEVICES 16

/* Small host -> device copies (timesteps, labels, schedule values: a sampling
 * step makes several) go through this many pinned slots of this size, so they
 * are queued without waiting for the GPU (cuda_ctx.c). */
#define AD_CUDA_SMALL_SLOTS 64
#define AD_CUDA_SMALL_SLOT ((size_t)64 << 10)

typedef struct ad_cuda_dev {
  int index;
  bool ready;
  pthread_mutex_t lock;          /* guards lazy init and the staging buffers */
  cudaStream_t stream;
  int num_sms;
  int cc_major, cc_minor;
  char name[256];
  size_t total_mem;
  cublasHandle_t blas;           /* created on first use */
  void *blas_ws;                 /* cuBLAS workspace (from the caching allocator) */
  cublasLtHandle_t lt;
  void *lt_ws;
  size_t lt_ws_size;
#ifdef AD_HAVE_CUDNN
  cudnnHandle_t dnn;
#endif
  void *stage[2];                /* pinned host staging buffers */
  cudaEvent_t stage_ev[2];
  size_t stage_size;
  char *small;                   /* pinned slots for small host -> device copies */
  cudaEvent_t small_ev[AD_CUDA_SMALL_SLOTS];
  unsigned small_next;
  int small_state;               /* 0 not tried, 1 ready, -1 unavailable */
} ad_cuda_dev;

/* ---- context (cuda_ctx.c) ---- */
/* The device's context, initialised on first use; makes it current on this thread. */
ad_status ad_cuda_dev_get(ad_cuda_dev **out, int index);
/* Maps a CUDA runtime status to AD_ECUDA "cuda: <what>: <error string>". After a
 * successful launch, with AD_CUDA_SYNC=1 in the environment, synchronises and
 * reports an asynchronous fault against `what`. */
ad_status ad_cuda_check(cudaError_t e, const char *what);
ad_status ad_cublas_check(cublasStatus_t s, const char *what);
bool ad_cuda_sync_mode(void);
bool ad_cuda_tf32(void);
/* Launcher context for device index (its stream, SM count, scratch allocator). */
ad_status ad_cuda_kctx(adk_ctx *k, ad_cuda_dev **dev, int index);
ad_status ad_cuda_blas_handle(cublasHandle_t *h, ad_cuda_dev *d);
ad_status ad_cuda_lt_handle(cublasLtHandle_t *h, void **ws, size_t *ws_size, ad_cuda_dev *d);
#ifdef AD_HAVE_CUDNN
ad_status ad_cudnn_handle(cudnnHandle_t *h, ad_cuda_dev *d);
ad_status ad_cudnn_check(cudnnStatus_t s, const char *what);
#endif
ad_status ad_cuda_to_host(void *host, const void *dev_ptr, size_t nbytes, int device_index);
ad_status ad_cuda_from_host(void *dev_ptr, const void *host, size_t nbytes, int device_index);

/* ---- caching allocator (cuda_alloc.c) ---- */
ad_status ad_cuda_malloc(void **ptr, size_t nbytes, int device);
void ad_cuda_free(void *ptr, size_t nbytes, int device);
/* scratch for launchers: NULL on failure (the error is recorded) */
void *ad_cuda_scratch_alloc(size_t nbytes, int device);
void ad_cuda_scratch_free(void *ptr, int device);
/* did the last failing launcher fail for scratch memory? (clears the flag) */
bool ad_cuda_take_scratch_failure(void);
/* releases cached, unused segments of one device (caller holds no allocator lock) */
void ad_cuda_alloc_release_cached(int device);

/* ---- GEMM (cuda_blas.c) ---- */
/* Row-major C_i = alpha op(A_i) op(B_i) + beta C_i on d's stream (backend_blas.h's
 * conventions: lda/ldb/ldc row strides, sa/sb/sc batch strides in elements). */
ad_status ad_cuda_gemm_rm(ad_cuda_dev *d, ad_dtype dtype, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                          double alpha, const void *A, int64_t lda, int64_t sa, const void *B, int64_t ldb,
                          int64_t sb, double beta, void *C, int64_t ldc, int64_t sc, int64_t batch);
/* the same with C of another dtype: f16/bf16 operands may give f32 (the
 * attention's scores, kept in f32 for the softmax) */
ad_status ad_cuda_gemm_rm_ex(ad_cuda_dev *d, ad_dtype dtype, ad_dtype cdtype, bool ta, bool tb, int64_t m,
                             int64_t n, int64_t k, double alpha, const void *A, int64_t lda, int64_t sa, const void *B,
                             int64_t ldb, int64_t sb, double beta, void *C, int64_t ldc, int64_t sc, int64_t batch);
bool ad_cuda_blas_use_lt(void);
void ad_cuda_blas_set_lt(bool on);

/* ---- tensors to launcher arguments (backend_cuda.c) ---- */
static inline int ad_cuda_dev_of(const ad_tensor *t) { return t->storage->device.index; }
/* adds t (may be NULL) as the next operand of a walk over shape-of-`like` */
void ad_cuda_iter_init(adk_iter *it, const ad_tensor *like);
void ad_cuda_iter_add(adk_iter *it, const ad_tensor *t);
static inline const void *ad_cuda_ptr(const ad_tensor *t) { return t ? ad_data(t) : NULL; }

/* ---- family tables ---- */
extern const struct ad_elementwise_kernels ad_cuda_elementwise_kernels;
extern const struct ad_reduce_kernels ad_cuda_reduce_kernels;
extern const struct ad_blas_kernels ad_cuda_blas_kernels;
extern const struct ad_conv_kernels ad_cuda_conv_kernels;
extern const struct ad_nn_kernels ad_cuda_nn_kernels;
extern const struct ad_optim_kernels ad_cuda_optim_kernels;
extern const ad_backend ad_cuda_backend;

#endif
