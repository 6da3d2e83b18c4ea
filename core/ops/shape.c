/* shape.c: views (view, reshape, permute, transpose, narrow, slice, select,
 * expand, squeeze, unsqueeze, flatten, chunk, split) that share storage, and
 * the copying shape ops cat, stack, index_select. */
#include <stdlib.h>
#include <string.h>
#include "../ad.h"

static ad_status make_view(ad_tensor **out, const ad_tensor *x, int64_t offset, int ndim,
                           const int64_t *shape, const int64_t *strides) {
  return ad_tensor_from_storage(out, x->storage, offset, ndim, shape, strides, x->dtype);
}

static ad_status check_dim(const char *op, int dim, int ndim) {
  if (dim < 0 || dim >= ndim)
    return AD_FAIL(AD_EINVAL, "%s: dimension %d out of range for a %d-D tensor", op, dim + 1, ndim);
  return AD_OK;
}

/* ---- reshape family: backward reshapes the gradient to the input's shape ---- */
static ad_status reshape_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  return ad_reshape(&gin[0], gout[0], node->edges[0].ndim, node->edges[0].shape);
}
static const ad_opdef VIEW = {"view", reshape_backward};
static const ad_opdef SQUEEZE = {"squeeze", reshape_backward};
static const ad_opdef UNSQUEEZE = {"unsqueeze", reshape_backward};

static ad_status infer_shape(const char *op, const ad_tensor *x, int ndim, const int64_t *shape, int64_t *out) {
  if (ndim > AD_MAX_DIMS) return AD_FAIL(AD_ESHAPE, "%s: at most %d dimensions", op, AD_MAX_DIMS);
  int64_t n = ad_numel(x), known = 1;
  int infer = -1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == -1) {
      if (infer >= 0) return AD_FAIL(AD_ESHAPE, "%s: only one dimension can be -1", op);
      infer = i;
    } else if (shape[i] < 0) {
      return AD_FAIL(AD_ESHAPE, "%s: invalid size %lld", op, (long long)shape[i]);
    } else known *= shape[i];
    out[i] = shape[i];
  }
  char a[128], b[128];
  if (infer >= 0) {
    if (known == 0 || n % known != 0)
      return AD_FAIL(AD_ESHAPE, "%s: shape %s is invalid for input of shape %s", op,
                     ad_shape_str(ndim, shape, a, sizeof a), ad_shape_str(x->ndim, x->shape, b, sizeof b));
    out[infer] = n / known;
  } else if (known != n) {
    return AD_FAIL(AD_ESHAPE, "%s: shape %s is invalid for input of shape %s (%lld elements)", op,
                   ad_shape_str(ndim, shape, a, sizeof a), ad_shape_str(x->ndim, x->shape, b, sizeof b), (long long)n);
  }
  return AD_OK;
}

/* PyTorch's computeStride: can x's memory be viewed with the new shape? */
static bool view_strides(const ad_tensor *x, int ndim, const int64_t *shape, int64_t *strides) {
  int64_t numel = ad_numel(x);
  if (numel == 0 || x->ndim == 0) { ad_contiguous_strides(ndim, shape, strides); return true; }
  int view_d = ndim - 1;
  int64_t chunk_base_stride = x->strides[x->ndim - 1];
  int64_t tensor_numel = 1, view_numel = 1;
  for (int td = x->ndim - 1; td >= 0; td--) {
    tensor_numel *= x->shape[td];
    if (td == 0 || (x->shape[td - 1] != 1 && x->strides[td - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        strides[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return false;
      if (td > 0) { chunk_base_stride = x->strides[td - 1]; tensor_numel = 1; view_numel = 1; }
    }
  }
  return view_d == -1;
}

static ad_status view_impl(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape,
                           const ad_opdef *op, const char *name) {
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  AD_TRY(infer_shape(name, x, ndim, shape, sh));
  if (!view_strides(x, ndim, sh, st)) {
    char a[128];
    return AD_FAIL(AD_ESHAPE, "%s: the input's strides do not allow viewing it as %s; use reshape (which copies)",
                   name, ad_shape_str(ndim, sh, a, sizeof a));
  }
  ad_tensor *y = NULL;
  AD_TRY(make_view(&y, x, x->offset, ndim, sh, st));
  ad_status s = ad_record(op, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, NULL, 0);
  if (s != AD_OK) { ad_tensor_release(y); return s; }
  *out = y;
  return AD_OK;
}

ad_status ad_view(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape) {
  return view_impl(out, x, ndim, shape, &VIEW, "view");
}

ad_status ad_reshape(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape) {
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  AD_TRY(infer_shape("reshape", x, ndim, shape, sh));
  if (view_strides(x, ndim, sh, st)) return view_impl(out, x, ndim, sh, &VIEW, "reshape");
  ad_tensor *c = NULL;
  AD_TRY(ad_contiguous(&c, x));
  ad_status s = view_impl(out, c, ndim, sh, &VIEW, "reshape");
  ad_tensor_release(c);
  return s;
}

ad_status ad_squeeze(ad_tensor **out, const ad_tensor *x, int dim) {
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  int n = 0;
  if (dim >= 0) AD_TRY(check_dim("squeeze", dim, x->ndim));
  for (int d = 0; d < x->ndim; d++) {
    bool drop = x->shape[d] == 1 && (dim < 0 || d == dim);
    if (!drop) { sh[n] = x->shape[d]; st[n] = x->strides[d]; n++; }
  }
  ad_tensor *y = NULL;
  AD_TRY(make_view(&y, x, x->offset, n, sh, st));
  ad_status s = ad_record(&SQUEEZE, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, NULL, 0);
  if (s != AD_OK) { ad_tensor_release(y); return s; }
  *out = y;
  return AD_OK;
}

ad_status ad_unsqueeze(ad_tensor **out, const ad_tensor *x, int dim) {
  if (dim < 0 || dim > x->ndim)
    return AD_FAIL(AD_EINVAL, "unsqueeze: dimension %d out of range for a %d-D tensor (1..%d)", dim + 1, x->ndim, x->ndim + 1);
  if (x->ndim >= AD_MAX_DIMS) return AD_FAIL(AD_ESHAPE, "unsqueeze: at most %d dimensions", AD_MAX_DIMS);
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  for (int d = 0, k = 0; d <= x->ndim; d++) {
    if (d == dim) {
      sh[d] = 1;
      st[d] = dim < x->ndim ? x->strides[dim] * x->shape[dim] : 1;
    } else { sh[d] = x->shape[k]; st[d] = x->strides[k]; k++; }
  }
  ad_tensor *y = NULL;
  AD_TRY(make_view(&y, x, x->offset, x->ndim + 1, sh, st));
  ad_status s = ad_record(&UNSQUEEZE, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, NULL, 0);
  if (s != AD_OK) { ad_tensor_release(y); return s; }
  *out = y;
  return AD_OK;
}

ad_status ad_flatten(ad_tensor **out, const ad_tensor *x, int start, int end) {
  if (x->ndim == 0) return ad_reshape(out, x, 1, (int64_t[]){1});
  AD_TRY(check_dim("flatten", start, x->ndim));
  AD_TRY(check_dim("flatten", end, x->ndim));
  if (start > end) return AD_FAIL(AD_EINVAL, "flatten: start_dim %d is after end_dim %d", start + 1, end + 1);
  int64_t sh[AD_MAX_DIMS];
  int n = 0;
  for (int d = 0; d < start; d++) sh[n++] = x->shape[d];
  int64_t m = 1;
  for (int d = start; d <= end; d++) m *= x->shape[d];
  sh[n++] = m;
  for (int d = end + 1; d < x->ndim; d++) sh[n++] = x->shape[d];
  return ad_reshape(out, x, n, sh);
}

/* ---- permute / transpose ---- */
typedef struct { int perm[AD_MAX_DIMS]; int ndim; } perm_attrs;
static ad_status permute_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const perm_attrs *a = node->attrs;
  int inv[AD_MAX_DIMS];
  for (int i = 0; i < a->ndim; i++) inv[a->perm[i]] = i;
  return ad_permute(&gin[0], gout[0], inv);
}
static const ad_opdef PERMUTE = {"permute", permute_backward};

ad_status ad_permute(ad_tensor **out, const ad_tensor *x, const int *perm) {
  bool seen[AD_MAX_DIMS] = {0};
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  perm_attrs a = {.ndim = x->ndim};
  for (int i = 0; i < x->ndim; i++) {
    int p = perm[i];
    if (p < 0 || p >= x->ndim || seen[p])
      return AD_FAIL(AD_EINVAL, "permute: dims must be a permutation of 1..%d", x->ndim);
    seen[p] = true;
    sh[i] = x->shape[p];
    st[i] = x->strides[p];
    a.perm[i] = p;
  }
  ad_tensor *y = NULL;
  AD_TRY(make_view(&y, x, x->offset, x->ndim, sh, st));
  ad_status s = ad_record(&PERMUTE, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, &a, sizeof a);
  if (s != AD_OK) { ad_tensor_release(y); return s; }
  *out = y;
  return AD_OK;
}

ad_status ad_transpose(ad_tensor **out, const ad_tensor *x, int d0, int d1) {
  if (x->ndim == 0) { ad_tensor_retain((ad_tensor *)x); *out = (ad_tensor *)x; return AD_OK; }
  AD_TRY(check_dim("transpose", d0, x->ndim));
  AD_TRY(check_dim("transpose", d1, x->ndim));
  int perm[AD_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) perm[i] = i;
  perm[d0] = d1;
  perm[d1] = d0;
  return ad_permute(out, x, perm);
}

/* ---- slicing: backward scatters the gradient into zeros ---- */
typedef struct { int dim; int64_t start, stop, step; bool drop; } slice_attrs;
static ad_status slice_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const slice_attrs *a = node->attrs;
  const ad_edge *e = &node->edges[0];
  ad_tensor *z = NULL, *v = NULL;
  ad_status st;
  AD_TRY(ad_zeros(&z, e->ndim, e->shape, gout[0]->dtype, gout[0]->storage->device));
  AD_TRY_GOTO(st, ad_slice(&v, z, a->dim, a->start, a->stop, a->step), fail);
  if (a->drop) {
    ad_tensor *u = NULL;
    AD_TRY_GOTO(st, ad_unsqueeze(&u, gout[0], a->dim), fail);
    st = ad_copy_(v, u);
    ad_tensor_release(u);
  } else st = ad_copy_(v, gout[0]);
  if (st != AD_OK) goto fail;
  ad_tensor_release(v);
  gin[0] = z;
  return AD_OK;
fail:
  ad_tensor_release(v);
  ad_tensor_release(z);
  return st;
}
static const ad_opdef SLICE = {"slice", slice_backward};
static const ad_opdef SELECT = {"select", slice_backward};

ad_status ad_slice(ad_tensor **out, const ad_tensor *x, int dim, int64_t start, int64_t stop, int64_t step) {
  AD_TRY(check_dim("slice", dim, x->ndim));
  int64_t n = x->shape[dim];
  if (step <= 0) return AD_FAIL(AD_EINVAL, "slice: step must be positive, got %lld", (long long)step);
  if (start < 0 || start > n || stop < start || stop > n)
    return AD_FAIL(AD_EINVAL, "slice: range [%lld, %lld) out of bounds for dimension %d of size %lld",
                   (long long)start + 1, (long long)stop + 1, dim + 1, (long long)n);
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  memcpy(sh, x->shape, sizeof sh);
  memcpy(st, x->strides, sizeof st);
  sh[dim] = (stop - start + step - 1) / step;
  st[dim] = x->strides[dim] * step;
  ad_tensor *y = NULL;
  AD_TRY(make_view(&y, x, x->offset + start * x->strides[dim], x->ndim, sh, st));
  slice_attrs a = {dim, start, stop, step, false};
  ad_status s = ad_record(&SLICE, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, &a, sizeof a);
  if (s != AD_OK) { ad_tensor_release(y); return s; }
  *out = y;
  return AD_OK;
}

ad_status ad_narrow(ad_tensor **out, const ad_tensor *x, int dim, int64_t start, int64_t length) {
  AD_TRY(check_dim("narrow", dim, x->ndim));
  if (start < 0 || length < 0 || start + length > x->shape[dim])
    return AD_FAIL(AD_EINVAL, "narrow: start %lld with length %lld exceeds dimension %d of size %lld",
                   (long long)start + 1, (long long)length, dim + 1, (long long)x->shape[dim]);
  return ad_slice(out, x, dim, start, start + length, 1);
}

ad_status ad_select(ad_tensor **out, const ad_tensor *x, int dim, int64_t index) {
  AD_TRY(check_dim("select", dim, x->ndim));
  if (index < 0 || index >= x->shape[dim])
    return AD_FAIL(AD_EINVAL, "select: index %lld out of range for dimension %d of size %lld",
                   (long long)index + 1, dim + 1, (long long)x->shape[dim]);
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  int n = 0;
  for (int d = 0; d < x->ndim; d++)
    if (d != dim) { sh[n] = x->shape[d]; st[n] = x->strides[d]; n++; }
  ad_tensor *y = NULL;
  AD_TRY(make_view(&y, x, x->offset + index * x->strides[dim], n, sh, st));
  slice_attrs a = {dim, index, index + 1, 1, true};
  ad_status s = ad_record(&SELECT, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, &a, sizeof a);
  if (s != AD_OK) { ad_tensor_release(y); return s; }
  *out = y;
  return AD_OK;
}

/* ---- expand: the engine sums the gradient back to the input's shape ---- */
static ad_status expand_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  ad_tensor_retain(gout[0]);
  gin[0] = gout[0];
  return AD_OK;
}
static const ad_opdef EXPAND = {"expand", expand_backward};

ad_status ad_expand(ad_tensor **out, const ad_tensor *x, int ndim, const int64_t *shape) {
  char a[128], b[128];
  if (ndim < x->ndim || ndim > AD_MAX_DIMS)
    return AD_FAIL(AD_ESHAPE, "expand: cannot expand shape %s to %s",
                   ad_shape_str(x->ndim, x->shape, a, sizeof a), ad_shape_str(ndim, shape, b, sizeof b));
  int64_t sh[AD_MAX_DIMS], st[AD_MAX_DIMS];
  int lead = ndim - x->ndim;
  for (int d = 0; d < ndim; d++) {
    int xd = d - lead;
    int64_t want = shape[d];
    if (xd < 0) {
      if (want < 0) return AD_FAIL(AD_ESHAPE, "expand: -1 is not allowed for a new leading dimension");
      sh[d] = want; st[d] = 0;
    } else if (want == -1 || want == x->shape[xd]) {
      sh[d] = x->shape[xd]; st[d] = x->strides[xd];
    } else if (x->shape[xd] == 1 && want >= 0) {
      sh[d] = want; st[d] = 0;
    } else {
      return AD_FAIL(AD_ESHAPE, "expand: cannot expand shape %s to %s (dimension %d: %lld vs %lld)",
                     ad_shape_str(x->ndim, x->shape, a, sizeof a), ad_shape_str(ndim, shape, b, sizeof b),
                     d + 1, (long long)x->shape[xd], (long long)want);
    }
  }
  ad_tensor *y = NULL;
  AD_TRY(make_view(&y, x, x->offset, ndim, sh, st));
  ad_status s = ad_record(&EXPAND, &y, 1, (ad_tensor *const *)&x, 1, NULL, 0, NULL, 0);
  if (s != AD_OK) { ad_tensor_release(y); return s; }
  *out = y;
  return AD_OK;
}

/* ---- chunk / split: each piece is a recorded narrow ---- */
static void release_all(ad_tensor **outs, int n) {
  for (int i = 0; i < n; i++) { ad_tensor_release(outs[i]); outs[i] = NULL; }
}

ad_status ad_split_sizes(ad_tensor **outs, const ad_tensor *x, int n, const int64_t *sizes, int dim) {
  AD_TRY(check_dim("split", dim, x->ndim));
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    if (sizes[i] < 0) return AD_FAIL(AD_EINVAL, "split: negative size %lld", (long long)sizes[i]);
    total += sizes[i];
  }
  if (total != x->shape[dim])
    return AD_FAIL(AD_ESHAPE, "split: sizes add up to %lld but dimension %d has size %lld",
                   (long long)total, dim + 1, (long long)x->shape[dim]);
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    ad_status st = ad_narrow(&outs[i], x, dim, start, sizes[i]);
    if (st != AD_OK) { release_all(outs, i); return st; }
    start += sizes[i];
  }
  return AD_OK;
}

ad_status ad_split(ad_tensor **outs, int *n_out, const ad_tensor *x, int64_t split_size, int dim) {
  AD_TRY(check_dim("split", dim, x->ndim));
  if (split_size <= 0) return AD_FAIL(AD_EINVAL, "split: split_size must be positive, got %lld", (long long)split_size);
  int64_t len = x->shape[dim];
  int n = len == 0 ? 1 : (int)((len + split_size - 1) / split_size);
  int64_t *sizes = malloc((size_t)n * sizeof *sizes);
  if (!sizes) return AD_FAIL(AD_ENOMEM, "split: out of memory");
  for (int i = 0; i < n; i++) sizes[i] = (i + 1) * split_size <= len ? split_size : len - i * split_size;
  ad_status st = ad_split_sizes(outs, x, n, sizes, dim);
  free(sizes);
  if (st == AD_OK) *n_out = n;
  return st;
}

ad_status ad_chunk(ad_tensor **outs, int *n_out, const ad_tensor *x, int chunks, int dim) {
  AD_TRY(check_dim("chunk", dim, x->ndim));
  if (chunks <= 0) return AD_FAIL(AD_EINVAL, "chunk: number of chunks must be positive, got %d", chunks);
  int64_t len = x->shape[dim];
  int64_t size = (len + chunks - 1) / chunks;
  if (size == 0) size = 1;
  return ad_split(outs, n_out, x, size, dim);
}

/* ---- cat / stack ---- */
typedef struct { int dim; int n; int64_t sizes[]; } cat_attrs;
static ad_status cat_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const cat_attrs *a = node->attrs;
  int64_t start = 0;
  for (int i = 0; i < a->n; i++) {
    if (node->needs_grad[i]) {
      ad_status st = ad_narrow(&gin[i], gout[0], a->dim, start, a->sizes[i]);
      if (st != AD_OK) return st;
    }
    start += a->sizes[i];
  }
  return AD_OK;
}
static const ad_opdef CAT = {"cat", cat_backward};

ad_status ad_cat(ad_tensor **out, ad_tensor *const *xs, int n, int dim) {
  if (n <= 0) return AD_FAIL(AD_EINVAL, "cat: expected a non-empty list of tensors");
  const ad_tensor *ref = xs[0];
  AD_TRY(check_dim("cat", dim, ref->ndim));
  ad_dtype dt = ref->dtype;
  int64_t total = 0;
  char a[128], b[128];
  for (int i = 0; i < n; i++) {
    const ad_tensor *x = xs[i];
    if (x->ndim != ref->ndim)
      return AD_FAIL(AD_ESHAPE, "cat: tensor %d has %d dimensions but tensor 1 has %d", i + 1, x->ndim, ref->ndim);
    if (!ad_device_eq(x->storage->device, ref->storage->device))
      return AD_FAIL(AD_EDEVICE, "cat: tensor %d is on another device than tensor 1", i + 1);
    for (int d = 0; d < x->ndim; d++)
      if (d != dim && x->shape[d] != ref->shape[d])
        return AD_FAIL(AD_ESHAPE, "cat: tensor %d has shape %s, which does not match %s outside dimension %d", i + 1,
                       ad_shape_str(x->ndim, x->shape, a, sizeof a), ad_shape_str(ref->ndim, ref->shape, b, sizeof b), dim + 1);
    dt = ad_dtype_promote(dt, x->dtype);
    total += x->shape[dim];
  }
  int64_t sh[AD_MAX_DIMS];
  memcpy(sh, ref->shape, sizeof sh);
  sh[dim] = total;
  ad_tensor *y = NULL, *v = NULL;
  ad_status st;
  AD_TRY(ad_empty(&y, ref->ndim, sh, dt, ref->storage->device));
  cat_attrs *at = malloc(sizeof *at + (size_t)n * sizeof(int64_t));
  if (!at) { ad_tensor_release(y); return AD_FAIL(AD_ENOMEM, "cat: out of memory"); }
  at->dim = dim;
  at->n = n;
  int64_t start = 0;
  bool prev = ad_set_grad_enabled(false);
  for (int i = 0; i < n; i++) {
    at->sizes[i] = xs[i]->shape[dim];
    st = ad_narrow(&v, y, dim, start, at->sizes[i]);
    if (st == AD_OK) st = ad_copy_(v, xs[i]);
    ad_tensor_release(v);
    v = NULL;
    if (st != AD_OK) { ad_set_grad_enabled(prev); goto fail; }
    start += at->sizes[i];
  }
  ad_set_grad_enabled(prev);
  st = ad_record_owned(&CAT, &y, 1, xs, n, NULL, 0, at, free);
  at = NULL;
  if (st != AD_OK) goto fail;
  *out = y;
  return AD_OK;
fail:
  free(at);
  ad_tensor_release(y);
  return st;
}

ad_status ad_stack(ad_tensor **out, ad_tensor *const *xs, int n, int dim) {
  if (n <= 0) return AD_FAIL(AD_EINVAL, "stack: expected a non-empty list of tensors");
  if (dim < 0 || dim > xs[0]->ndim)
    return AD_FAIL(AD_EINVAL, "stack: dimension %d out of range (1..%d)", dim + 1, xs[0]->ndim + 1);
  for (int i = 1; i < n; i++)
    if (!ad_shape_eq(xs[i]->ndim, xs[i]->shape, xs[0]->ndim, xs[0]->shape)) {
      char a[128], b[128];
      return AD_FAIL(AD_ESHAPE, "stack: tensor %d has shape %s but tensor 1 has %s", i + 1,
                     ad_shape_str(xs[i]->ndim, xs[i]->shape, a, sizeof a), ad_shape_str(xs[0]->ndim, xs[0]->shape, b, sizeof b));
    }
  ad_tensor **us = calloc((size_t)n, sizeof *us);
  if (!us) return AD_FAIL(AD_ENOMEM, "stack: out of memory");
  ad_status st = AD_OK;
  for (int i = 0; i < n && st == AD_OK; i++) st = ad_unsqueeze(&us[i], xs[i], dim);
  if (st == AD_OK) st = ad_cat(out, us, n, dim);
  release_all(us, n);
  free(us);
  return st;
}

/* ---- index_select ---- */
typedef struct { int dim; } dim_attrs;
static ad_status index_select_backward(ad_node *node, ad_tensor *const *gout, ad_tensor **gin) {
  const dim_attrs *a = node->attrs;
  const ad_edge *e = &node->edges[0];
  ad_tensor *z = NULL, *g = NULL;
  ad_status st;
  AD_TRY(ad_zeros(&z, e->ndim, e->shape, gout[0]->dtype, gout[0]->storage->device));
  AD_TRY_GOTO(st, ad_contiguous(&g, gout[0]), fail);
  AD_TRY_GOTO(st, ad_backend_of(z)->index_add(z, a->dim, node->saved[0], g), fail);
  ad_tensor_release(g);
  gin[0] = z;
  return AD_OK;
fail:
  ad_tensor_release(g);
  ad_tensor_release(z);
  return st;
}
static const ad_opdef INDEX_SELECT = {"index_select", index_select_backward};

ad_status ad_index_select(ad_tensor **out, const ad_tensor *x, int dim, const ad_tensor *index) {
  AD_TRY(check_dim("index_select", dim, x->ndim));
  if (index->ndim > 1) return AD_FAIL(AD_ESHAPE, "index_select: index must be 0-D or 1-D, got %d-D", index->ndim);
  if (index->dtype != AD_I64 && index->dtype != AD_I32)
    return AD_FAIL(AD_EDTYPE, "index_select: index must be an integer tensor (i64 or i32), got %s", ad_dtype_name(index->dtype));
  if (!ad_device_eq(index->storage->device, x->storage->device))
    return AD_FAIL(AD_EDEVICE, "index_select: index is on another device than the input");
  const ad_backend *bk = ad_backend_of(x);
  AD_NEED_KERNEL(bk->index_select, "index_select", bk);
  ad_tensor *idx = NULL, *xc = NULL, *y = NULL;
  ad_status st;
  bool prev = ad_set_grad_enabled(false);
  st = ad_to_dtype(&idx, index, AD_I64);
  if (st == AD_OK) { ad_tensor *c = NULL; st = ad_contiguous(&c, idx); ad_tensor_release(idx); idx = c; }
  if (st == AD_OK) st = ad_contiguous(&xc, x);
  ad_set_grad_enabled(prev);
  if (st != AD_OK) goto fail;
  int64_t n = ad_numel(idx);
  for (int64_t j = 0; j < n; j++) {
    int64_t v = (int64_t)ad_get_flat(idx, j);
    if (v < 0 || v >= x->shape[dim]) {
      st = AD_FAIL(AD_EINVAL, "index_select: index %lld out of range for dimension %d of size %lld (indices are 0-based values)",
                   (long long)v, dim + 1, (long long)x->shape[dim]);
      goto fail;
    }
  }
  int64_t sh[AD_MAX_DIMS];
  memcpy(sh, x->shape, sizeof sh);
  sh[dim] = n;
  AD_TRY_GOTO(st, ad_empty(&y, x->ndim, sh, x->dtype, x->storage->device), fail);
  AD_TRY_GOTO(st, bk->index_select(y, xc, dim, idx), fail);
  dim_attrs a = {dim};
  AD_TRY_GOTO(st, ad_record(&INDEX_SELECT, &y, 1, (ad_tensor *const *)&x, 1, &idx, 1, &a, sizeof a), fail);
  ad_tensor_release(idx);
  ad_tensor_release(xc);
  *out = y;
  return AD_OK;
fail:
  ad_tensor_release(idx);
  ad_tensor_release(xc);
  ad_tensor_release(y);
  return st;
}
