/* idx.c: IDX files (LeCun's MNIST format, also Fashion-MNIST's), read
 * through zlib so the .gz files Debian's dataset-fashion-mnist installs load
 * as they are (gzread passes uncompressed files through).
 *
 * Format: bytes 0-1 zero, byte 2 the element type, byte 3 the number of
 * dimensions, then one big-endian u32 per dimension, then the elements in
 * row-major order, big-endian. The header is checked against the data that
 * actually follows: a truncated file is an error naming how much is missing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "loader.h"

#define IDX_MAX_BYTES ((uint64_t)1 << 36)   /* 64 GB: more is a corrupt header */

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

static ad_status read_exact(gzFile f, void *buf, size_t n, const char *path, const char *what) {
  uint8_t *b = buf;
  size_t got = 0;
  while (got < n) {
    size_t want = n - got > (1u << 30) ? (1u << 30) : n - got;
    int r = gzread(f, b + got, (unsigned)want);
    if (r < 0) {
      int e;
      const char *msg = gzerror(f, &e);
      return AD_FAIL(AD_EFORMAT, "read_idx '%s': %s: %s", path, what, msg ? msg : "read error");
    }
    if (r == 0)
      return AD_FAIL(AD_EFORMAT, "read_idx '%s': truncated %s: %zu of %zu bytes present", path, what, got, n);
    got += (size_t)r;
  }
  return AD_OK;
}

ad_status ad_read_idx(ad_tensor **out, const char *path) {
  gzFile f = gzopen(path, "rb");
  if (!f) return AD_FAIL(AD_EIO, "read_idx: cannot open '%s'", path);
  ad_status st;
  ad_tensor *t = NULL;
  uint8_t *raw = NULL;
  uint8_t hdr[4];
  AD_TRY_GOTO(st, read_exact(f, hdr, 4, path, "header"), done);
  if (hdr[0] != 0 || hdr[1] != 0) {
    st = AD_FAIL(AD_EFORMAT, "read_idx '%s': not an IDX file (magic %02x %02x %02x %02x)", path, hdr[0], hdr[1], hdr[2], hdr[3]);
    goto done;
  }
  int type = hdr[2], ndim = hdr[3];
  size_t esize;
  ad_dtype dt;
  switch (type) {
  case 0x08: esize = 1; dt = AD_U8; break;
  case 0x09: esize = 1; dt = AD_I32; break;
  case 0x0B: esize = 2; dt = AD_I32; break;
  case 0x0C: esize = 4; dt = AD_I32; break;
  case 0x0D: esize = 4; dt = AD_F32; break;
  case 0x0E: esize = 8; dt = AD_F64; break;
  default:
    st = AD_FAIL(AD_EFORMAT, "read_idx '%s': unknown element type 0x%02x", path, type);
    goto done;
  }
  if (ndim < 1 || ndim > AD_MAX_DIMS) {
    st = AD_FAIL(AD_EFORMAT, "read_idx '%s': %d dimensions (expected 1..%d)", path, ndim, AD_MAX_DIMS);
    goto done;
  }
  uint8_t dims[4 * AD_MAX_DIMS];
  AD_TRY_GOTO(st, read_exact(f, dims, 4 * (size_t)ndim, path, "dimensions"), done);
  int64_t shape[AD_MAX_DIMS];
  uint64_t numel = 1;
  for (int d = 0; d < ndim; d++) {
    shape[d] = be32(dims + 4 * d);
    if (shape[d] != 0 && numel > IDX_MAX_BYTES / (uint64_t)shape[d]) {
      st = AD_FAIL(AD_EFORMAT, "read_idx '%s': the dimensions describe more than %llu elements", path,
                   (unsigned long long)IDX_MAX_BYTES);
      goto done;
    }
    numel *= (uint64_t)shape[d];
  }
  if (numel * esize > IDX_MAX_BYTES) {
    st = AD_FAIL(AD_EFORMAT, "read_idx '%s': the dimensions describe %llu bytes", path, (unsigned long long)(numel * esize));
    goto done;
  }
  AD_TRY_GOTO(st, ad_empty(&t, ndim, shape, dt, AD_CPU), done);
  if (dt == AD_U8) {
    AD_TRY_GOTO(st, read_exact(f, ad_data(t), numel, path, "data"), done);
  } else {
    raw = malloc(numel * esize + 1);
    if (!raw) { st = AD_FAIL(AD_ENOMEM, "read_idx '%s': out of memory", path); goto done; }
    AD_TRY_GOTO(st, read_exact(f, raw, numel * esize, path, "data"), done);
    for (uint64_t i = 0; i < numel; i++) {
      const uint8_t *p = raw + i * esize;
      switch (type) {
      case 0x09: ((int32_t *)ad_data(t))[i] = (int8_t)p[0]; break;
      case 0x0B: ((int32_t *)ad_data(t))[i] = (int16_t)(p[0] << 8 | p[1]); break;
      case 0x0C: ((int32_t *)ad_data(t))[i] = (int32_t)be32(p); break;
      case 0x0D: { uint32_t u = be32(p); float v; memcpy(&v, &u, 4); ((float *)ad_data(t))[i] = v; break; }
      default: {
        uint64_t u = (uint64_t)be32(p) << 32 | be32(p + 4);
        double v;
        memcpy(&v, &u, 8);
        ((double *)ad_data(t))[i] = v;
      }
      }
    }
  }
  *out = t;
  t = NULL;
  st = AD_OK;
done:
  free(raw);
  ad_tensor_release(t);
  gzclose(f);
  return st;
}
