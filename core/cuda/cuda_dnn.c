/* cuda_dnn.c: conv2d forward, backward-data and backward-filter through
 * cuDNN (its v7-style convolution API, still in cuDNN 9).
 *
 * For each (shape, dtype, TF32 setting) the descriptors are made once and
 * kept; the algorithm of each direction is searched the first time that
 * direction runs (cudnnFind*AlgorithmEx times the candidates on the real
 * buffers, like torch.backends.cudnn.benchmark) and cached, with its
 * workspace size and math type. Workspaces come from the caching allocator.
 * f16/bf16 take cuDNN's heuristics instead by default (see benchmark_mode).
 * f32 runs without TF32 (CUDNN_FMA_MATH) unless
 * ad.cuda.allow_tf32(true); f16/bf16 run on tensor cores with f32
 * accumulation. The bias is added, and its gradient summed, by the small
 * kernels of kernels/cuda/conv.cu. */
#ifdef AD_HAVE_CUDNN
#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "cuda_internal.h"
#include "../backend_conv.h"

#define FIND_WORKSPACE ((size_t)1 << 30)   /* most the search may use; less if memory is short */

typedef struct {
  int dev, dtype, tf32;
  int64_t N, C, H, W, O, kh, kw;
  int stride[2], padding[2], dilation[2], groups;
} conv_key;

typedef struct {
  bool found;
  int algo;
  size_t ws;
  cudnnMathType_t math;
} conv_algo;

typedef struct conv_entry {
  conv_key key;
  int64_t Ho, Wo;
  cudnnTensorDescriptor_t x, y;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t conv[3];   /* one per direction: each sets its own math type */
  conv_algo algo[3];                      /* 0 forward, 1 backward data, 2 backward filter */
  pthread_mutex_t lock;
  struct conv_entry *next;
} conv_entry;

#define CONV_BUCKETS 128
static conv_entry *cache[CONV_BUCKETS];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t key_hash(const conv_key *k) {
  const unsigned char *p = (const unsigned char *)k;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < sizeof *k; i++) { h ^= p[i]; h *= 1099511628211ull; }
  return (size_t)(h % CONV_BUCKETS);
}

static ad_status dnn_types(ad_dtype dt, cudnnDataType_t *data, cudnnDataType_t *compute) {
  switch (dt) {
  case AD_F32: *data = CUDNN_DATA_FLOAT; *compute = CUDNN_DATA_FLOAT; return AD_OK;
  case AD_F64: *data = CUDNN_DATA_DOUBLE; *compute = CUDNN_DATA_DOUBLE; return AD_OK;
  case AD_F16: *data = CUDNN_DATA_HALF; *compute = CUDNN_DATA_FLOAT; return AD_OK;
  case AD_BF16: *data = CUDNN_DATA_BFLOAT16; *compute = CUDNN_DATA_FLOAT; return AD_OK;
  default: return AD_FAIL(AD_EDTYPE, "conv2d: the CUDA kernel takes f32, f64, f16 or bf16, got %s", ad_dtype_name(dt));
  }
}

static cudnnMathType_t default_math(int dtype, int tf32) {
  if (dtype == AD_F16 || dtype == AD_BF16) return CUDNN_TENSOR_OP_MATH;
  if (dtype == AD_F32) return tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
  return CUDNN_DEFAULT_MATH;
}

/* f32 without TF32 must not take a tensor-op algorithm the search reports */
static bool math_allowed(int dtype, int tf32, cudnnMathType_t m) {
  if (dtype == AD_F32 && !tf32) return m == CUDNN_FMA_MATH || m == CUDNN_DEFAULT_MATH;
  return true;
}

/* The math type an accepted algorithm runs with. Strict f32 is always
 * CUDNN_FMA_MATH: CUDNN_DEFAULT_MATH permits TF32 tensor cores on A100 and later
 * (the first H200 run measured f32 convolutions 3-4x faster than PyTorch's strict
 * f32, which only TF32 explains). */
static cudnnMathType_t run_math(int dtype, int tf32, cudnnMathType_t found) {
  if (dtype == AD_F32 && !tf32) return CUDNN_FMA_MATH;
  return found;
}

static void entry_free(conv_entry *e) {
  if (e->x) cudnnDestroyTensorDescriptor(e->x);
  if (e->y) cudnnDestroyTensorDescriptor(e->y);
  if (e->w) cudnnDestroyFilterDescriptor(e->w);
  for (int i = 0; i < 3; i++)
    if (e->conv[i]) cudnnDestroyConvolutionDescriptor(e->conv[i]);
  free(e);
}

static ad_status entry_make(conv_entry **out, const conv_key *k) {
  cudnnDataType_t data = CUDNN_DATA_FLOAT, compute = CUDNN_DATA_FLOAT;
  AD_TRY(dnn_types((ad_dtype)k->dtype, &data, &compute));
  conv_entry *e = calloc(1, sizeof *e);
  if (!e) return AD_FAIL(AD_ENOMEM, "conv2d: out of host memory for the cuDNN cache");
  e->key = *k;
  pthread_mutex_init(&e->lock, NULL);
  ad_status st;
  AD_TRY_GOTO(st, ad_cudnn_check(cudnnCreateTensorDescriptor(&e->x), "cudnnCreateTensorDescriptor"), fail);
  AD_TRY_GOTO(st, ad_cudnn_check(cudnnCreateTensorDescriptor(&e->y), "cudnnCreateTensorDescriptor"), fail);
  AD_TRY_GOTO(st, ad_cudnn_check(cudnnCreateFilterDescriptor(&e->w), "cudnnCreateFilterDescriptor"), fail);
  AD_TRY_GOTO(st, ad_cudnn_check(cudnnSetTensor4dDescriptor(e->x, CUDNN_TENSOR_NCHW, data, (int)k->N, (int)k->C,
                                                            (int)k->H, (int)k->W),
                                 "conv2d input descriptor"),
              fail);
  AD_TRY_GOTO(st, ad_cudnn_check(cudnnSetFilter4dDescriptor(e->w, data, CUDNN_TENSOR_NCHW, (int)k->O,
                                                            (int)(k->C / k->groups), (int)k->kh, (int)k->kw),
                                 "conv2d weight descriptor"),
              fail);
  for (int i = 0; i < 3; i++) {
    AD_TRY_GOTO(st, ad_cudnn_check(cudnnCreateConvolutionDescriptor(&e->conv[i]), "cudnnCreateConvolutionDescriptor"),
                fail);
    AD_TRY_GOTO(st, ad_cudnn_check(cudnnSetConvolution2dDescriptor(e->conv[i], k->padding[0], k->padding[1],
                                                                   k->stride[0], k->stride[1], k->dilation[0],
                                                                   k->dilation[1], CUDNN_CROSS_CORRELATION, compute),
                                   "conv2d descriptor"),
                fail);
    AD_TRY_GOTO(st, ad_cudnn_check(cudnnSetConvolutionGroupCount(e->conv[i], k->groups), "conv2d groups"), fail);
    AD_TRY_GOTO(st, ad_cudnn_check(cudnnSetConvolutionMathType(e->conv[i], default_math(k->dtype, k->tf32)),
                                   "conv2d math type"),
                fail);
  }
  int n, c, h, w;
  AD_TRY_GOTO(st, ad_cudnn_check(cudnnGetConvolution2dForwardOutputDim(e->conv[0], e->x, e->w, &n, &c, &h, &w),
                                 "conv2d output size"),
              fail);
  e->Ho = h;
  e->Wo = w;
  AD_TRY_GOTO(st, ad_cudnn_check(cudnnSetTensor4dDescriptor(e->y, CUDNN_TENSOR_NCHW, data, n, c, h, w),
                                 "conv2d output descriptor"),
              fail);
  *out = e;
  return AD_OK;
fail:
  entry_free(e);
  return st;
}

static ad_status entry_get(conv_entry **out, const ad_tensor *x, const ad_tensor *w, const ad_conv2d_args *a) {
  conv_key k;
  memset(&k, 0, sizeof k);
  k.dev = ad_cuda_dev_of(x);
  k.dtype = x->dtype;
  k.tf32 = x->dtype == AD_F32 && ad_cuda_tf32();
  k.N = x->shape[0]; k.C = x->shape[1]; k.H = x->shape[2]; k.W = x->shape[3];
  k.O = w->shape[0]; k.kh = w->shape[2]; k.kw = w->shape[3];
  memcpy(k.stride, a->stride, sizeof k.stride);
  memcpy(k.padding, a->padding, sizeof k.padding);
  memcpy(k.dilation, a->dilation, sizeof k.dilation);
  k.groups = a->groups;
  if (k.N > INT32_MAX || k.C > INT32_MAX || k.H > INT32_MAX || k.W > INT32_MAX || k.O > INT32_MAX)
    return AD_FAIL(AD_ESHAPE, "conv2d: sizes too large for cuDNN");
  size_t h = key_hash(&k);
  pthread_mutex_lock(&cache_lock);
  for (conv_entry *e = cache[h]; e; e = e->next)
    if (memcmp(&e->key, &k, sizeof k) == 0) { pthread_mutex_unlock(&cache_lock); *out = e; return AD_OK; }
  pthread_mutex_unlock(&cache_lock);
  conv_entry *e = NULL;
  AD_TRY(entry_make(&e, &k));
  pthread_mutex_lock(&cache_lock);
  e->next = cache[h];
  cache[h] = e;
  pthread_mutex_unlock(&cache_lock);
  *out = e;
  return AD_OK;
}

/* Search (time the candidates) or take cuDNN's heuristic? ADVDIFF_CUDNN_BENCHMARK=1
 * searches for every dtype, =0 never; by default f32/f64 search and f16/bf16 take
 * the heuristic, as PyTorch does by default. On an H200 the search's one timing
 * per candidate picked pre-Hopper kernels (dgrad_engine, implicit_convolve_sgemm)
 * for some bf16 shapes of ADM-64, and its bf16 training step ran 4% slower than
 * with the heuristic's picks (tests/gpu/RESULTS.md, run 2); for strict f32 the
 * search finds algorithms several times faster than the heuristic's. */
static bool benchmark_mode(int dtype) {
  const char *s = getenv("ADVDIFF_CUDNN_BENCHMARK");
  if (s && strcmp(s, "0") == 0) return false;
  if (s && *s && strcmp(s, "0") != 0) return true;
  return dtype == AD_F32 || dtype == AD_F64;
}

static bool log_mode(void) {
  const char *s = getenv("ADVDIFF_CUDNN_LOG");
  return s && strcmp(s, "0") != 0 && *s;
}

/* the largest workspace the search can have, from FIND_WORKSPACE down */
static void *find_workspace(size_t *size, int dev) {
  for (size_t n = FIND_WORKSPACE; n >= ((size_t)16 << 20); n /= 2) {
    void *p = NULL;
    if (ad_cuda_malloc(&p, n, dev) == AD_OK) { *size = n; return p; }
  }
  *size = 0;
  return NULL;
}

/* Takes one search result (the three directions' perf structs share these
 * fields) when it ran, its math is allowed and its workspace fits. */
static void accept(conv_algo *ca, int dt, int tf32, size_t max_ws, cudnnStatus_t status, int algo, size_t memory,
                   cudnnMathType_t math) {
  if (status != CUDNN_STATUS_SUCCESS || !math_allowed(dt, tf32, math) || memory > max_ws) return;
  ca->found = true;
  ca->algo = algo;
  ca->ws = memory;
  ca->math = run_math(dt, tf32, math);
}

/* Chooses the algorithm of direction dir (0 fwd, 1 bwd data, 2 bwd filter) on
 * the given buffers. Called with the entry's lock held. */
static ad_status choose(conv_entry *e, int dir, cudnnHandle_t h, const void *x, const void *w, const void *y,
                        void *xout, void *wout, void *yout) {
  conv_algo *ca = &e->algo[dir];
  const int dt = e->key.dtype, tf32 = e->key.tf32;
  const bool bench = benchmark_mode(dt);
  int n = 0;
  ad_status st = AD_OK;
  size_t wss = 0;
  void *ws = bench ? find_workspace(&wss, e->key.dev) : NULL;
  if (dir == 0) {
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    st = bench ? ad_cudnn_check(cudnnFindConvolutionForwardAlgorithmEx(h, e->x, x, e->w, w, e->conv[0], e->y, yout,
                                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf, ws,
                                                                       wss),
                                "cudnnFindConvolutionForwardAlgorithmEx")
               : ad_cudnn_check(cudnnGetConvolutionForwardAlgorithm_v7(h, e->x, e->w, e->conv[0], e->y,
                                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf),
                                "cudnnGetConvolutionForwardAlgorithm_v7");
    for (int i = 0; st == AD_OK && i < n && !ca->found; i++)
      accept(ca, dt, tf32, bench ? wss : SIZE_MAX, perf[i].status, (int)perf[i].algo, perf[i].memory, perf[i].mathType);
  } else if (dir == 1) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    st = bench ? ad_cudnn_check(cudnnFindConvolutionBackwardDataAlgorithmEx(h, e->w, w, e->y, y, e->conv[1], e->x,
                                                                            xout, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                                            &n, perf, ws, wss),
                                "cudnnFindConvolutionBackwardDataAlgorithmEx")
               : ad_cudnn_check(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, e->w, e->y, e->conv[1], e->x,
                                                                            CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n,
                                                                            perf),
                                "cudnnGetConvolutionBackwardDataAlgorithm_v7");
    for (int i = 0; st == AD_OK && i < n && !ca->found; i++)
      accept(ca, dt, tf32, bench ? wss : SIZE_MAX, perf[i].status, (int)perf[i].algo, perf[i].memory, perf[i].mathType);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    st = bench ? ad_cudnn_check(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, e->x, x, e->y, y, e->conv[2], e->w,
                                                                              wout,
                                                                              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                                              &n, perf, ws, wss),
                                "cudnnFindConvolutionBackwardFilterAlgorithmEx")
               : ad_cudnn_check(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, e->x, e->y, e->conv[2], e->w,
                                                                              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                                              &n, perf),
                                "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
    for (int i = 0; st == AD_OK && i < n && !ca->found; i++)
      accept(ca, dt, tf32, bench ? wss : SIZE_MAX, perf[i].status, (int)perf[i].algo, perf[i].memory, perf[i].mathType);
  }
  if (ws) ad_cuda_free(ws, wss, e->key.dev);
  if (st != AD_OK) return st;
  if (ca->found && log_mode()) {
    /* ADVDIFF_CUDNN_LOG=1: one line per (shape, direction), to compare with PyTorch's choices */
    const conv_key *k = &e->key;
    fprintf(stderr, "cudnn conv %s %s N%lld C%lld %lldx%lld -> O%lld k%lldx%lld s%d p%d: algo %d, math %d, "
            "workspace %zu B (%s)\n", dir == 0 ? "fwd" : dir == 1 ? "bwd-data" : "bwd-filter",
            ad_dtype_name((ad_dtype)dt), (long long)k->N, (long long)k->C, (long long)k->H, (long long)k->W,
            (long long)k->O, (long long)k->kh, (long long)k->kw, k->stride[0], k->padding[0], ca->algo,
            (int)ca->math, ca->ws, bench ? "measured" : "heuristic");
  }
  if (!ca->found)
    return AD_FAIL(AD_ENOTIMPL, "conv2d: cuDNN has no %s algorithm for this shape and dtype (%s)",
                   dir == 0 ? "forward" : dir == 1 ? "backward-data" : "backward-filter", ad_dtype_name((ad_dtype)dt));
  return ad_cudnn_check(cudnnSetConvolutionMathType(e->conv[dir], ca->math), "conv2d math type");
}

/* everything one call needs: entry (with the direction's algorithm), handle, workspace */
typedef struct {
  conv_entry *e;
  cudnnHandle_t h;
  adk_ctx k;
  void *ws;
  size_t wss;
} conv_call;

/* y: the output-shaped tensor of the call (y, or dy), checked against cuDNN's
 * output size before any buffer is touched */
static ad_status call_begin(conv_call *cc, int dir, const ad_tensor *x, const ad_tensor *w, const ad_tensor *y,
                            const ad_conv2d_args *a, const void *px, const void *pw, const void *py, void *xout,
                            void *wout, void *yout) {
  ad_cuda_dev *d;
  memset(cc, 0, sizeof *cc);
  AD_TRY(ad_cuda_kctx(&cc->k, &d, ad_cuda_dev_of(x)));
  AD_TRY(ad_cudnn_handle(&cc->h, d));
  AD_TRY(entry_get(&cc->e, x, w, a));
  if (y->shape[0] != x->shape[0] || y->shape[1] != w->shape[0] || cc->e->Ho != y->shape[2] || cc->e->Wo != y->shape[3])
    return AD_FAIL(AD_ESHAPE, "conv2d: cuDNN computes a %lldx%lld output, the op has %lldx%lld",
                   (long long)cc->e->Ho, (long long)cc->e->Wo, (long long)y->shape[2], (long long)y->shape[3]);
  pthread_mutex_lock(&cc->e->lock);
  ad_status st = cc->e->algo[dir].found ? AD_OK : choose(cc->e, dir, cc->h, px, pw, py, xout, wout, yout);
  pthread_mutex_unlock(&cc->e->lock);
  if (st != AD_OK) return st;
  cc->wss = cc->e->algo[dir].ws;
  if (cc->wss) AD_TRY(ad_cuda_malloc(&cc->ws, cc->wss, cc->k.device));
  return AD_OK;
}
static void call_end(conv_call *cc) {
  if (cc->ws) ad_cuda_free(cc->ws, cc->wss, cc->k.device);
}

/* alpha / beta: float for float/half data, double for double */
typedef union { float f; double d; } dnn_scalar;
static const void *scal(dnn_scalar *s, int dtype, double v) {
  if (dtype == AD_F64) { s->d = v; return &s->d; }
  s->f = (float)v;
  return &s->f;
}

ad_status ad_cuda_conv2d_fwd(ad_tensor *y, const ad_tensor *x, const ad_tensor *w, const ad_tensor *b,
                             const ad_conv2d_args *a) {
  conv_call cc;
  ad_status st = call_begin(&cc, 0, x, w, y, a, ad_data(x), ad_data(w), NULL, NULL, NULL, ad_data(y));
  if (st == AD_OK) {
    dnn_scalar one, zero;
    const conv_algo *ca = &cc.e->algo[0];
    st = ad_cudnn_check(cudnnConvolutionForward(cc.h, scal(&one, x->dtype, 1.0), cc.e->x, ad_data(x), cc.e->w,
                                                ad_data(w), cc.e->conv[0], (cudnnConvolutionFwdAlgo_t)ca->algo, cc.ws,
                                                cc.wss, scal(&zero, x->dtype, 0.0), cc.e->y, ad_data(y)),
                        "cudnnConvolutionForward");
  }
  if (st == AD_OK && b)
    st = ad_cuda_check(ad_launch_conv_bias_add(&cc.k, ad_data(y), ad_data(b), y->dtype, y->shape[0], y->shape[1],
                                               y->shape[2] * y->shape[3]),
                       "conv2d bias");
  call_end(&cc);
  return st;
}

ad_status ad_cuda_conv2d_bwd_data(ad_tensor *dx, const ad_tensor *dy, const ad_tensor *w, const ad_conv2d_args *a) {
  conv_call cc;
  ad_status st = call_begin(&cc, 1, dx, w, dy, a, NULL, ad_data(w), ad_data(dy), ad_data(dx), NULL, NULL);
  if (st == AD_OK) {
    dnn_scalar one, zero;
    const conv_algo *ca = &cc.e->algo[1];
    st = ad_cudnn_check(cudnnConvolutionBackwardData(cc.h, scal(&one, dx->dtype, 1.0), cc.e->w, ad_data(w), cc.e->y,
                                                     ad_data(dy), cc.e->conv[1],
                                                     (cudnnConvolutionBwdDataAlgo_t)ca->algo, cc.ws, cc.wss,
                                                     scal(&zero, dx->dtype, 0.0), cc.e->x, ad_data(dx)),
                        "cudnnConvolutionBackwardData");
  }
  call_end(&cc);
  return st;
}

ad_status ad_cuda_conv2d_bwd_weight(ad_tensor *dw, ad_tensor *db, const ad_tensor *x, const ad_tensor *dy,
                                    const ad_conv2d_args *a) {
  conv_call cc;
  ad_status st = call_begin(&cc, 2, x, dw, dy, a, ad_data(x), NULL, ad_data(dy), NULL, ad_data(dw), NULL);
  if (st == AD_OK) {
    dnn_scalar one, zero;
    const conv_algo *ca = &cc.e->algo[2];
    st = ad_cudnn_check(cudnnConvolutionBackwardFilter(cc.h, scal(&one, x->dtype, 1.0), cc.e->x, ad_data(x), cc.e->y,
                                                       ad_data(dy), cc.e->conv[2],
                                                       (cudnnConvolutionBwdFilterAlgo_t)ca->algo, cc.ws, cc.wss,
                                                       scal(&zero, x->dtype, 0.0), cc.e->w, ad_data(dw)),
                        "cudnnConvolutionBackwardFilter");
  }
  if (st == AD_OK && db)
    st = ad_cuda_check(ad_launch_conv_bias_grad(&cc.k, ad_data(db), ad_data(dy), dy->dtype, dy->shape[0],
                                                dy->shape[1], dy->shape[2] * dy->shape[3]),
                       "conv2d bias backward");
  call_end(&cc);
  return st;
}

#endif
