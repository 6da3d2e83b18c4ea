/* copy.c: contiguous, clone, dtype and device conversion, in-place copy and
 * fill. Conversions are differentiable: the gradient flows back converted to
 * the source dtype / device. */
#include <stdlib.h>
#include "../ad.h"

static ad_status copy_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  ad_tensor_retain(gout[0]);
  gin[0] = gout[0];   /* the engine converts dtype/device to the input's */
  return AD_OK;
}
static const ad_opdef CONTIGUOUS = {"contiguous", copy_backward};
static const ad_opdef CLONE = {"clone", copy_backward};
static const ad_opdef TO_DTYPE = {"to", copy_backward};

static ad_status copy_into_new(ad_tensor **out, const ad_tensor *x, ad_dtype dt, const ad_opdef *op) {
  ad_tensor *y = NULL;
  AD_TRY(ad_empty(&y, x->ndim, x->shape, dt, x->storage->device));
  ad_status st = ad_backend_of(x)->copy(y, x);
  if (st == AD_OK) st = ad_record(op, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, NULL, 0);
  if (st != AD_OK) { ad_tensor_release(y); return st; }
  *out = y;
  return AD_OK;
}

ad_status ad_contiguous(ad_tensor **out, const ad_tensor *x) {
  if (ad_is_contiguous(x)) { ad_tensor_retain((ad_tensor *)x); *out = (ad_tensor *)x; return AD_OK; }
  return copy_into_new(out, x, x->dtype, &CONTIGUOUS);
}

ad_status ad_clone(ad_tensor **out, const ad_tensor *x) { return copy_into_new(out, x, x->dtype, &CLONE); }

ad_status ad_to_dtype(ad_tensor **out, const ad_tensor *x, ad_dtype dt) {
  if ((unsigned)dt >= AD_NDTYPES) return AD_FAIL(AD_EDTYPE, "to: invalid dtype");
  if (x->dtype == dt) { ad_tensor_retain((ad_tensor *)x); *out = (ad_tensor *)x; return AD_OK; }
  return copy_into_new(out, x, dt, &TO_DTYPE);
}

/* ---- device transfer ---- */
static ad_status to_device_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  ad_device *src = node->attrs;
  return ad_to_device(&gin[0], gout[0], *src);
}
static const ad_opdef TO_DEVICE = {"to_device", to_device_backward};

ad_status ad_to_device(ad_tensor **out, const ad_tensor *x, ad_device dev) {
  ad_device src = x->storage->device;
  if (ad_device_eq(src, dev)) { ad_tensor_retain((ad_tensor *)x); *out = (ad_tensor *)x; return AD_OK; }
  const ad_backend *bsrc = ad_backend_for(src), *bdst = ad_backend_for(dev);
  if (!bsrc || !bdst) return AD_EDEVICE;
  ad_tensor *c = NULL, *y = NULL;
  ad_status st;
  bool prev = ad_set_grad_enabled(false);
  st = ad_contiguous(&c, x);
  ad_set_grad_enabled(prev);
  if (st != AD_OK) return st;
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, x->shape, x->dtype, dev), fail);
  size_t nbytes = (size_t)ad_numel(x) * ad_dtype_size(x->dtype);
  if (nbytes) {
    if (src.type == AD_DEV_CPU) st = bdst->from_host(ad_data(y), ad_data(c), nbytes, dev.index);
    else if (dev.type == AD_DEV_CPU) st = bsrc->to_host(ad_data(y), ad_data(c), nbytes, src.index);
    else {
      /* device to device through the host: rare (multi-GPU), kept simple */
      void *tmp = malloc(nbytes);
      if (!tmp) { st = AD_FAIL(AD_ENOMEM, "to: out of memory staging %zu bytes", nbytes); goto fail; }
      st = bsrc->to_host(tmp, ad_data(c), nbytes, src.index);
      if (st == AD_OK) st = bdst->from_host(ad_data(y), tmp, nbytes, dev.index);
      free(tmp);
    }
    if (st != AD_OK) goto fail;
  }
  AD_TRY_GOTO(st, ad_record(&TO_DEVICE, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, &src, sizeof src), fail);
  ad_tensor_release(c);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(c);
  ad_tensor_release(y);
  return st;
}

ad_status ad_copy_(ad_tensor *dst, const ad_tensor *src) {
  if (!ad_device_eq(dst->storage->device, src->storage->device)) {
    ad_tensor *moved = NULL;
    bool prev = ad_set_grad_enabled(false);
    ad_status st = ad_to_device(&moved, src, dst->storage->device);
    ad_set_grad_enabled(prev);
    if (st != AD_OK) return st;
    st = ad_copy_(dst, moved);
    ad_tensor_release(moved);
    return st;
  }
  ad_tensor *e = NULL;
  if (!ad_shape_eq(dst->ndim, dst->shape, src->ndim, src->shape)) {
    bool prev = ad_set_grad_enabled(false);
    ad_status st = ad_expand(&e, src, dst->ndim, dst->shape);
    ad_set_grad_enabled(prev);
    if (st != AD_OK) return ad_fail_context(st, "copy_");
    src = e;
  }
  ad_status st = ad_backend_of(dst)->copy(dst, src);
  ad_tensor_release(e);
  return st;
}

ad_status ad_fill_(ad_tensor *dst, double value) { return ad_backend_of(dst)->fill(dst, value); }
