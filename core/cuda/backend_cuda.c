/* backend_cuda.c: the CUDA backend table (the counterpart of
 * core/cpu/backend_cpu.c) and its basic kernels: allocation through the
 * caching allocator, strided copy and fill, Philox random fills, iota and
 * index_select / index_add. Each kernel entry turns tensors into launcher
 * arguments (kernels/cuda/kernels.h) and the launcher's status into an
 * ad_status naming the op. */
#include <string.h>
#include "cuda_internal.h"
#include "../backend_elementwise.h"

/* the launchers' dtype codes are ad_dtype's values */
_Static_assert((int)ADK_F32 == (int)AD_F32 && (int)ADK_F64 == (int)AD_F64 && (int)ADK_F16 == (int)AD_F16 &&
               (int)ADK_BF16 == (int)AD_BF16 && (int)ADK_I64 == (int)AD_I64 && (int)ADK_I32 == (int)AD_I32 &&
               (int)ADK_U8 == (int)AD_U8 && (int)ADK_BOOL == (int)AD_BOOL && (int)ADK_NDTYPES == (int)AD_NDTYPES,
               "kernels.h dtype codes must equal ad_dtype");
_Static_assert(ADK_MAX_DIMS == AD_MAX_DIMS, "kernels.h ADK_MAX_DIMS must equal AD_MAX_DIMS");

/* ---- launcher arguments from tensors ---- */

void ad_cuda_iter_init(adk_iter *it, const ad_tensor *like) {
  memset(it, 0, sizeof *it);
  it->ndim = like->ndim;
  memcpy(it->shape, like->shape, sizeof(int64_t) * (size_t)like->ndim);
}

void ad_cuda_iter_add(adk_iter *it, const ad_tensor *t) {
  int k = it->nops++;
  if (!t) { it->data[k] = NULL; it->dtype[k] = AD_F32; return; }
  it->data[k] = ad_data(t);
  it->dtype[k] = t->dtype;
  memcpy(it->strides[k], t->strides, sizeof(int64_t) * (size_t)t->ndim);
}

/* ---- allocation ---- */

static ad_status cuda_alloc(void **ptr, size_t nbytes, int device_index) {
  return ad_cuda_malloc(ptr, nbytes, device_index);
}
static void cuda_free(void *ptr, size_t nbytes, int device_index) { ad_cuda_free(ptr, nbytes, device_index); }

/* ---- copy and fill ---- */

ad_status ad_cuda_copy(ad_tensor *dst, const ad_tensor *src) {
  if (ad_numel(dst) == 0) return AD_OK;
  if (!ad_device_eq(dst->storage->device, src->storage->device))
    return AD_FAIL(AD_EDEVICE, "copy: the CUDA kernel needs both tensors on one device");
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(dst)));
  adk_iter it;
  ad_cuda_iter_init(&it, dst);
  ad_cuda_iter_add(&it, dst);
  ad_cuda_iter_add(&it, src);
  return ad_cuda_check(ad_launch_copy(&k, &it), "copy");
}

ad_status ad_cuda_fill(ad_tensor *dst, double value) {
  if (ad_numel(dst) == 0) return AD_OK;
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(dst)));
  adk_iter it;
  ad_cuda_iter_init(&it, dst);
  ad_cuda_iter_add(&it, dst);
  return ad_cuda_check(ad_launch_fill(&k, &it, value), "fill");
}

ad_status ad_cuda_random_fill(ad_tensor *dst, int kind, double a, double b, uint64_t seed, uint64_t offset) {
  if (!ad_is_contiguous(dst)) return AD_FAIL(AD_EINVAL, "random fill: the CUDA kernel needs a contiguous tensor");
  if (kind == 2 && (int64_t)b <= (int64_t)a)
    return AD_FAIL(AD_EINVAL, "randint: empty range [%lld, %lld)", (long long)a, (long long)b);
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(dst)));
  return ad_cuda_check(ad_launch_random_fill(&k, ad_data(dst), dst->dtype, ad_numel(dst), kind, a, b, seed, offset),
                       "random fill");
}

ad_status ad_cuda_iota(ad_tensor *dst, double start, double step) {
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(dst)));
  return ad_cuda_check(ad_launch_iota(&k, ad_data(dst), dst->dtype, ad_numel(dst), start, step), "arange");
}

static void outer_inner(const ad_tensor *t, int dim, int64_t *outer, int64_t *inner) {
  *outer = 1;
  *inner = 1;
  for (int d = 0; d < dim; d++) *outer *= t->shape[d];
  for (int d = dim + 1; d < t->ndim; d++) *inner *= t->shape[d];
}

ad_status ad_cuda_index_select(ad_tensor *dst, const ad_tensor *src, int dim, const ad_tensor *index) {
  int64_t outer, inner;
  outer_inner(src, dim, &outer, &inner);
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(dst)));
  return ad_cuda_check(ad_launch_index_select(&k, ad_data(dst), ad_data(src), ad_dtype_size(src->dtype), outer,
                                              src->shape[dim], inner, ad_data(index), ad_numel(index)),
                       "index_select");
}

ad_status ad_cuda_index_add(ad_tensor *dst, int dim, const ad_tensor *index, const ad_tensor *src) {
  int64_t outer, inner;
  outer_inner(dst, dim, &outer, &inner);
  adk_ctx k;
  AD_TRY(ad_cuda_kctx(&k, NULL, ad_cuda_dev_of(dst)));
  return ad_cuda_check(ad_launch_index_add(&k, ad_data(dst), ad_data(src), dst->dtype, outer, dst->shape[dim], inner,
                                           ad_data(index), ad_numel(index)),
                       "index_add");
}

const ad_backend ad_cuda_backend = {
  .name = "cuda",
  .type = AD_DEV_CUDA,
  .alloc = cuda_alloc,
  .free = cuda_free,
  .copy = ad_cuda_copy,
  .fill = ad_cuda_fill,
  .to_host = ad_cuda_to_host,
  .from_host = ad_cuda_from_host,
  .random_fill = ad_cuda_random_fill,
  .iota = ad_cuda_iota,
  .index_select = ad_cuda_index_select,
  .index_add = ad_cuda_index_add,
  .elementwise = &ad_cuda_elementwise_kernels,
  .reduce = &ad_cuda_reduce_kernels,
  .blas = &ad_cuda_blas_kernels,
  .conv = &ad_cuda_conv_kernels,
  .nn = &ad_cuda_nn_kernels,
  .optim = &ad_cuda_optim_kernels,
};
