/* image.c: images in and out through stb_image / stb_image_write, and
 * torchvision's make_grid.
 *
 * Only the PNG, JPEG and BMP decoders are compiled in (less attack surface
 * than all of stb_image's formats), images are limited to 16384 pixels a
 * side, and the file is read through the same size-checked mapping as the
 * other formats. Tensors are (C, H, W): u8 as stored, or f32 in [0, 1]. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd.h"
#include "formats.h"
#include "ops.h"

#define STBI_MAX_DIMENSIONS (1 << 14)
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#endif
#if defined(__clang__)
/* stb computes NULL + 0 and memcpy(NULL, p, 0) for empty PNG IDAT chunks:
 * undefined in C, harmless in practice; these two UBSan checks stay on for
 * our own code */
#pragma clang attribute push(__attribute__((no_sanitize("pointer-overflow", "nonnull-attribute"))), apply_to = function)
#endif
#include "stb_image.h"
#include "stb_image_write.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
/* stb declares static functions it only defines for formats left out above,
 * and its inlined decoder state trips false maybe-uninitialized warnings */
#pragma GCC diagnostic ignored "-Wunused-function"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

/* stb_image 2.27 (Debian's libstb) builds JPEG Huffman tables without
 * checking that a DHT table's 16 code counts sum to at most 256, and writes
 * past its 257-entry size[] and 256-entry values[] arrays when they do
 * (fixed upstream in 2.28). Every byte pair FF C4 is a place stb could take
 * for a DHT marker, so each is walked the way stb walks a DHT segment, and
 * the file is refused if any table there would overflow. A valid JPEG never
 * has FF C4 inside entropy-coded data (FF is always stuffed with 00). */
static bool jpeg_dht_safe(const uint8_t *d, size_t n) {
  /* stb tries PNG, then BMP, then JPEG (whose SOI may follow fill bytes) */
  if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return true;
  if (n >= 18 && d[0] == 'B' && d[1] == 'M') {   /* stbi__bmp_test: the info header size */
    uint32_t sz = fmt_le32(d + 14);
    if (sz == 12 || sz == 40 || sz == 56 || sz == 108 || sz == 124) return true;
  }
  for (size_t p = 0; p + 1 < n; p++) {
    if (d[p] != 0xFF || d[p + 1] != 0xC4) continue;
    size_t q = p + 2;
    /* stb reads past the end as zeros */
#define AT(i) ((i) < n ? d[(i)] : 0)
    long L = (long)(AT(q) << 8 | AT(q + 1)) - 2;
    q += 2;
    while (L > 0 && q < n) {
      long cnt = 0;
      for (int i = 1; i <= 16; i++) cnt += AT(q + (size_t)i);
      if (cnt > 256) return false;
      L -= 17 + cnt;
      q += 17 + (size_t)cnt;
    }
#undef AT
  }
  return true;
}

ad_status ad_image_load_memory(ad_tensor **out, const void *data, size_t len, int channels, ad_dtype dt, const char *name) {
  const char *nm = name ? name : "<memory>";
  if (channels < 0 || channels > 4) return AD_FAIL(AD_EINVAL, "image.load: channels must be 0 (as stored) or 1..4, got %d", channels);
  if (dt != AD_U8 && dt != AD_F32 && dt != AD_F64)
    return AD_FAIL(AD_EDTYPE, "image.load: dtype must be u8, f32 or f64, got %s", ad_dtype_name(dt));
  if (len > (size_t)INT32_MAX) return fmt_fail(nm, AD_EFORMAT, "image file larger than 2 GB");
  if (!jpeg_dht_safe(data, len)) return fmt_fail(nm, AD_EFORMAT, "cannot decode image: corrupt JPEG (Huffman table with more than 256 codes)");
  int w, h, c;
  /* stb allocates the whole image from the header's dimensions before it
   * reads any pixel data: refuse headers that promise more pixels than the
   * file could hold at the best compression its formats allow (deflate's
   * 1032:1, times 8 for 1-bit samples and 4 for channel expansion) */
  if (stbi_info_from_memory(data, (int)len, &w, &h, &c)) {
    double want = (double)w * (double)h * 4.0, can = (double)len * 1032.0 * 8.0 * 4.0 + (1 << 20);
    if (want > can)
      return fmt_fail(nm, AD_EFORMAT, "cannot decode image: %d x %d pixels from a %zu-byte file (corrupt header?)", w, h, len);
  }
  stbi_uc *px = stbi_load_from_memory(data, (int)len, &w, &h, &c, channels);
  if (!px) return fmt_fail(nm, AD_EFORMAT, "cannot decode image: %s", stbi_failure_reason());
  int C = channels ? channels : c;
  int64_t shape[3] = {C, h, w};
  ad_tensor *t = NULL;
  ad_status st = ad_empty(&t, 3, shape, dt, AD_CPU);
  if (st != AD_OK) { stbi_image_free(px); return st; }
  size_t hw = (size_t)w * (size_t)h;
  if (dt == AD_U8) {
    uint8_t *o = ad_data(t);
    for (int k = 0; k < C; k++)
      for (size_t i = 0; i < hw; i++) o[k * hw + i] = px[i * C + k];
  } else if (dt == AD_F32) {
    float *o = ad_data(t);
    for (int k = 0; k < C; k++)
      for (size_t i = 0; i < hw; i++) o[k * hw + i] = px[i * C + k] / 255.0f;
  } else {
    double *o = ad_data(t);
    for (int k = 0; k < C; k++)
      for (size_t i = 0; i < hw; i++) o[k * hw + i] = px[i * C + k] / 255.0;
  }
  stbi_image_free(px);
  *out = t;
  return AD_OK;
}

ad_status ad_image_load(ad_tensor **out, const char *path, int channels, ad_dtype dt) {
  fmt_mapping *m;
  AD_TRY(fmt_map_file(&m, path, false, false));
  ad_status st = ad_image_load_memory(out, m->base ? m->base : "", m->len, channels, dt, path);
  fmt_mapping_release(m);
  return st;
}

static void write_cb(void *ctx, void *data, int size) {
  fmt_out *o = ((void **)ctx)[0];
  ad_status *st = ((void **)ctx)[1];
  if (*st == AD_OK && size > 0) *st = fmt_out_write(o, data, (size_t)size);
}

ad_status ad_image_save_png(const char *path, const ad_tensor *img, double lo, double hi) {
  if (img->ndim != 2 && img->ndim != 3) {
    char sb[128];
    return AD_FAIL(AD_ESHAPE, "image.save: expected (C, H, W) or (H, W), got %s", ad_shape_str(img->ndim, img->shape, sb, sizeof sb));
  }
  int64_t C = img->ndim == 3 ? img->shape[0] : 1, H = img->shape[img->ndim - 2], W = img->shape[img->ndim - 1];
  if (C < 1 || C > 4) return AD_FAIL(AD_ESHAPE, "image.save: %lld channels (1 to 4 can be written)", (long long)C);
  if (H < 1 || W < 1 || H > (1 << 15) || W > (1 << 15))
    return AD_FAIL(AD_ESHAPE, "image.save: %lld x %lld pixels cannot be written", (long long)H, (long long)W);
  if (!(hi > lo)) return AD_FAIL(AD_EINVAL, "image.save: range must have hi > lo, got [%g, %g]", lo, hi);
  ad_tensor *src = NULL, *f = NULL;
  ad_status st;
  bool prev = ad_set_grad_enabled(false);
  bool is_u8 = img->dtype == AD_U8;
  st = ad_to_dtype(&f, img, is_u8 ? AD_U8 : AD_F64);
  ad_set_grad_enabled(prev);
  if (st != AD_OK) return st;
  const void *bytes;
  st = fmt_host_bytes(&bytes, &src, f);
  ad_tensor_release(f);
  if (st != AD_OK) return st;
  size_t hw = (size_t)H * (size_t)W;
  uint8_t *px = malloc(hw * (size_t)C);
  if (!px) { ad_tensor_release(src); return AD_FAIL(AD_ENOMEM, "image.save: out of memory"); }
  for (int64_t k = 0; k < C; k++) {
    for (size_t i = 0; i < hw; i++) {
      uint8_t v;
      if (is_u8) v = ((const uint8_t *)bytes)[k * hw + i];
      else {
        /* torchvision: (x * 255 + 0.5).clamp(0, 255).to(uint8) on x mapped to [0, 1] */
        double x = (((const double *)bytes)[k * hw + i] - lo) / (hi - lo) * 255.0 + 0.5;
        v = x != x ? 0 : x <= 0 ? 0 : x >= 255 ? 255 : (uint8_t)x;
      }
      px[i * (size_t)C + (size_t)k] = v;
    }
  }
  ad_tensor_release(src);
  fmt_out *o;
  st = fmt_out_open(&o, path);
  if (st != AD_OK) { free(px); return st; }
  ad_status wst = AD_OK;
  void *ctx[2] = {o, &wst};
  int ok = stbi_write_png_to_func(write_cb, ctx, (int)W, (int)H, (int)C, px, (int)(W * C));
  free(px);
  if (!ok || wst != AD_OK) {
    fmt_out_abort(o);
    return wst != AD_OK ? wst : AD_FAIL(AD_EIO, "image.save '%s': PNG encoding failed", path);
  }
  return fmt_out_commit(o);
}

ad_status ad_image_grid(ad_tensor **out, const ad_tensor *batch, const ad_image_grid_args *a) {
  char sb[128];
  int nd = batch->ndim;
  if (nd < 2 || nd > 4)
    return AD_FAIL(AD_ESHAPE, "image.grid: expected (N, C, H, W), (C, H, W) or (H, W), got %s",
                   ad_shape_str(nd, batch->shape, sb, sizeof sb));
  int64_t N = nd == 4 ? batch->shape[0] : 1, C = nd >= 3 ? batch->shape[nd - 3] : 1;
  int64_t H = batch->shape[nd - 2], W = batch->shape[nd - 1];
  if (N < 1) return AD_FAIL(AD_ESHAPE, "image.grid: empty batch");
  if (a->nrow < 1) return AD_FAIL(AD_EINVAL, "image.grid: nrow must be >= 1, got %d", a->nrow);
  if (a->padding < 0) return AD_FAIL(AD_EINVAL, "image.grid: padding must be >= 0, got %d", a->padding);
  /* one channel becomes three, as in torchvision */
  int64_t Co = C == 1 ? 3 : C;
  ad_tensor *src = NULL, *f = NULL;
  bool prev = ad_set_grad_enabled(false);
  ad_status st = ad_to_dtype(&f, batch, AD_F64);
  ad_set_grad_enabled(prev);
  if (st != AD_OK) return st;
  const void *bytes;
  st = fmt_host_bytes(&bytes, &src, f);
  ad_tensor_release(f);
  if (st != AD_OK) return st;
  const double *x = bytes;
  size_t img = (size_t)C * (size_t)H * (size_t)W;
  double *norm = NULL;
  if (a->normalize) {
    /* clamp to the range, then shift to [0, 1], per image when scale_each */
    norm = malloc(img * (size_t)N * sizeof *norm);
    if (!norm) { ad_tensor_release(src); return AD_FAIL(AD_ENOMEM, "image.grid: out of memory"); }
    memcpy(norm, x, img * (size_t)N * sizeof *norm);
    size_t groups = a->scale_each ? (size_t)N : 1, gsz = a->scale_each ? img : img * (size_t)N;
    for (size_t g = 0; g < groups; g++) {
      double *p = norm + g * gsz, lo = a->lo, hi = a->hi;
      if (!a->has_range) {
        lo = INFINITY; hi = -INFINITY;
        for (size_t i = 0; i < gsz; i++) { if (p[i] < lo) lo = p[i]; if (p[i] > hi) hi = p[i]; }
      }
      double den = hi - lo > 1e-5 ? hi - lo : 1e-5;
      for (size_t i = 0; i < gsz; i++) {
        double v = p[i] < lo ? lo : p[i] > hi ? hi : p[i];
        p[i] = (v - lo) / den;
      }
    }
    x = norm;
  }
  ad_tensor *g = NULL;
  if (N == 1) {
    int64_t shape[3] = {Co, H, W};
    st = ad_empty(&g, 3, shape, AD_F64, AD_CPU);
    if (st == AD_OK) {
      double *o = ad_data(g);
      for (int64_t k = 0; k < Co; k++) memcpy(o + k * H * W, x + (C == 1 ? 0 : k) * H * W, (size_t)(H * W) * sizeof *o);
    }
  } else {
    int64_t xmaps = a->nrow < N ? a->nrow : N, ymaps = (N + xmaps - 1) / xmaps;
    int64_t ph = H + a->padding, pw = W + a->padding;
    int64_t shape[3] = {Co, ph * ymaps + a->padding, pw * xmaps + a->padding};
    st = ad_full(&g, 3, shape, a->pad_value, AD_F64, AD_CPU);
    if (st == AD_OK) {
      double *o = ad_data(g);
      int64_t GH = shape[1], GW = shape[2];
      for (int64_t k = 0; k < N; k++) {
        int64_t gy = k / xmaps, gx = k % xmaps;
        for (int64_t c = 0; c < Co; c++)
          for (int64_t y = 0; y < H; y++)
            memcpy(o + c * GH * GW + (gy * ph + a->padding + y) * GW + gx * pw + a->padding,
                   x + k * (int64_t)img + (C == 1 ? 0 : c) * H * W + y * W, (size_t)W * sizeof *o);
      }
    }
  }
  free(norm);
  ad_tensor_release(src);
  if (st != AD_OK) return st;
  /* back to the input's dtype and device */
  ad_tensor *r1 = NULL, *r2 = NULL;
  prev = ad_set_grad_enabled(false);
  st = ad_to_dtype(&r1, g, batch->dtype);
  if (st == AD_OK) st = ad_to_device(&r2, r1, batch->storage->device);
  ad_set_grad_enabled(prev);
  ad_tensor_release(g);
  ad_tensor_release(r1);
  if (st != AD_OK) return st;
  *out = r2;
  return AD_OK;
}
