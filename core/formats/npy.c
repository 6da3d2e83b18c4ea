/* npy.c: NumPy .npy arrays and .npz archives (np.save, np.savez,
 * np.savez_compressed).
 *
 * The .npy header is a Python dict literal; it is parsed here by a small
 * tokenizer that accepts exactly the three keys NumPy writes (descr,
 * fortran_order, shape) and never evaluates anything. Object arrays (which
 * NumPy stores as pickles) are refused. C-order data is mapped from the file
 * when aligned; Fortran-order and big-endian data are copied into C order.
 * .npz members are stored (mapped or copied) or deflated (inflated into a
 * fresh storage). */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd.h"
#include "formats.h"
#include "ops.h"

#define NPY_MAX_HEADER 65536u

typedef struct {
  ad_dtype dt;
  bool big_endian, fortran;
  int ndim;
  int64_t shape[AD_MAX_DIMS];
  uint64_t data_off, nbytes;
} npy_hdr;

typedef struct {
  const char *p, *end;
  const char *name, *where;
  uint64_t base;
  const char *start;
} hp;

static ad_status hfail(hp *h, const char *msg) {
  return fmt_fail(h->name, AD_EFORMAT, "%s%s%snpy header offset %llu: %s", h->where ? "member '" : "", h->where ? h->where : "",
                  h->where ? "': " : "", (unsigned long long)(h->base + (uint64_t)(h->p - h->start)), msg);
}

static void hws(hp *h) { while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r')) h->p++; }

static bool hlit(hp *h, const char *s) {
  size_t n = strlen(s);
  if ((size_t)(h->end - h->p) < n || memcmp(h->p, s, n) != 0) return false;
  h->p += n;
  return true;
}

static ad_status hstring(hp *h, char *out, size_t cap) {
  hws(h);
  if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return hfail(h, "expected a string");
  char q = *h->p++;
  size_t n = 0;
  while (h->p < h->end && *h->p != q) {
    if (*h->p == '\\' || n + 1 >= cap) return hfail(h, "unsupported or overlong string");
    out[n++] = *h->p++;
  }
  if (h->p >= h->end) return hfail(h, "unterminated string");
  h->p++;
  out[n] = 0;
  return AD_OK;
}

static ad_status parse_descr(hp *h, const char *d, npy_hdr *r) {
  char bo = d[0];
  if (bo != '<' && bo != '>' && bo != '|' && bo != '=') bo = '=';
  else d++;
  static const struct { const char *code; ad_dtype dt; } M[] = {
    {"f4", AD_F32}, {"f8", AD_F64}, {"f2", AD_F16}, {"i8", AD_I64}, {"i4", AD_I32}, {"u1", AD_U8}, {"b1", AD_BOOL},
  };
  for (size_t i = 0; i < sizeof M / sizeof M[0]; i++) {
    if (strcmp(d, M[i].code) == 0) {
      r->dt = M[i].dt;
      r->big_endian = bo == '>' && ad_dtype_size(M[i].dt) > 1;
      return AD_OK;
    }
  }
  char msg[96];
  if (d[0] == 'O') return hfail(h, "object arrays (stored as pickles) are refused");
  snprintf(msg, sizeof msg, "dtype '%.16s' is not supported (f2 f4 f8 i4 i8 u1 b1 are)", d);
  return hfail(h, msg);
}

static ad_status parse_header(const char *s, size_t n, npy_hdr *r, const char *name, const char *where, uint64_t base) {
  hp h = {s, s + n, name, where, base, s};
  bool have_d = false, have_f = false, have_s = false;
  hws(&h);
  if (!hlit(&h, "{")) return hfail(&h, "the header is not a dict");
  for (;;) {
    hws(&h);
    if (hlit(&h, "}")) break;
    char key[32];
    AD_TRY(hstring(&h, key, sizeof key));
    hws(&h);
    if (!hlit(&h, ":")) return hfail(&h, "expected ':'");
    hws(&h);
    if (strcmp(key, "descr") == 0) {
      char d[32];
      if (h.p < h.end && *h.p == '[') return hfail(&h, "structured dtypes are not supported");
      AD_TRY(hstring(&h, d, sizeof d));
      AD_TRY(parse_descr(&h, d, r));
      have_d = true;
    } else if (strcmp(key, "fortran_order") == 0) {
      if (hlit(&h, "True")) r->fortran = true;
      else if (hlit(&h, "False")) r->fortran = false;
      else return hfail(&h, "fortran_order must be True or False");
      have_f = true;
    } else if (strcmp(key, "shape") == 0) {
      if (!hlit(&h, "(")) return hfail(&h, "shape must be a tuple");
      r->ndim = 0;
      for (;;) {
        hws(&h);
        if (hlit(&h, ")")) break;
        if (r->ndim == AD_MAX_DIMS) return hfail(&h, "too many dimensions");
        if (h.p >= h.end || *h.p < '0' || *h.p > '9') return hfail(&h, "bad shape: dimensions must be non-negative integers");
        uint64_t v = 0;
        while (h.p < h.end && *h.p >= '0' && *h.p <= '9') {
          if (v > ((uint64_t)1 << 60)) return hfail(&h, "bad shape: dimension too large");
          v = v * 10 + (uint64_t)(*h.p++ - '0');
        }
        if (h.p < h.end && *h.p == 'L') h.p++;
        r->shape[r->ndim++] = (int64_t)v;
        hws(&h);
        if (hlit(&h, ",")) continue;
        if (hlit(&h, ")")) break;
        return hfail(&h, "bad shape tuple");
      }
      have_s = true;
    } else {
      char msg[80];
      snprintf(msg, sizeof msg, "unexpected key '%s'", key);
      return hfail(&h, msg);
    }
    hws(&h);
    if (hlit(&h, ",")) continue;
    if (hlit(&h, "}")) break;
    return hfail(&h, "expected ',' or '}'");
  }
  if (!have_d || !have_f || !have_s) return hfail(&h, "header lacks descr, fortran_order or shape");
  return AD_OK;
}

static ad_status read_npy_header(npy_hdr *r, const uint8_t *d, uint64_t len, const char *name, const char *where, uint64_t base) {
  memset(r, 0, sizeof *r);
  char pre[160];
  snprintf(pre, sizeof pre, "%s%s%s", where ? "member '" : "", where ? where : "", where ? "': " : "");
  if (len < 10 || memcmp(d, "\x93NUMPY", 6) != 0)
    return fmt_fail(name, AD_EFORMAT, "%snot an .npy array (bad magic)", pre);
  uint8_t major = d[6];
  uint64_t hlen, hoff;
  if (major == 1) { hlen = fmt_le16(d + 8); hoff = 10; }
  else if (major == 2 || major == 3) {
    if (len < 12) return fmt_fail(name, AD_EFORMAT, "%struncated .npy header", pre);
    hlen = fmt_le32(d + 8);
    hoff = 12;
  } else {
    return fmt_fail(name, AD_EFORMAT, "%s.npy format version %u is not supported", pre, major);
  }
  if (hlen > NPY_MAX_HEADER) return fmt_fail(name, AD_EFORMAT, "%s.npy header of %llu bytes is too large", pre, (unsigned long long)hlen);
  if (hlen > len - hoff)
    return fmt_fail(name, AD_EFORMAT, "%s.npy header of %llu bytes runs past the end (%llu bytes)", pre, (unsigned long long)hlen,
                    (unsigned long long)len);
  AD_TRY(parse_header((const char *)d + hoff, (size_t)hlen, r, name, where, base + hoff));
  r->data_off = hoff + hlen;
  uint64_t numel;
  char sb[128];
  if (!fmt_shape_bytes(r->ndim, r->shape, ad_dtype_size(r->dt), &numel, &r->nbytes))
    return fmt_fail(name, AD_EFORMAT, "%sshape %s is too large", pre, ad_shape_str(r->ndim, r->shape, sb, sizeof sb));
  if (r->nbytes > len - r->data_off)
    return fmt_fail(name, AD_EFORMAT, "%sshape %s of %s needs %llu data bytes at offset %llu, only %llu are there", pre,
                    ad_shape_str(r->ndim, r->shape, sb, sizeof sb), ad_dtype_name(r->dt), (unsigned long long)r->nbytes,
                    (unsigned long long)(base + r->data_off), (unsigned long long)(len - r->data_off));
  return AD_OK;
}

static void byteswap(uint8_t *p, uint64_t nbytes, size_t es) {
  for (uint64_t i = 0; i + es <= nbytes; i += es)
    for (size_t a = 0, b = es - 1; a < b; a++, b--) { uint8_t t = p[i + a]; p[i + a] = p[i + b]; p[i + b] = t; }
}

ad_status fmt_npy_parse(ad_tensor **out, const fmt_src *src, uint64_t off, uint64_t len, ad_storage *backing, const char *where) {
  npy_hdr r;
  AD_TRY(read_npy_header(&r, src->data + off, len, src->name, where, off));
  size_t es = ad_dtype_size(r.dt);
  uint64_t at = off + r.data_off;
  ad_storage *s = NULL;
  int64_t elem_off = 0;
  if (backing && !r.big_endian) {
    /* inflated in memory: view the data where it is, or move it to the
     * start when it is not element-aligned */
    if (at % es == 0) elem_off = (int64_t)(at / es);
    else memmove(backing->data, (uint8_t *)backing->data + at, (size_t)r.nbytes);
    ad_storage_retain(backing);
    s = backing;
  } else if (r.big_endian) {
    ad_status st = ad_storage_new(&s, (size_t)r.nbytes, AD_CPU);
    if (st != AD_OK) return fmt_fail(src->name, st, "cannot allocate %llu bytes", (unsigned long long)r.nbytes);
    memcpy(s->data, src->data + at, (size_t)r.nbytes);
    byteswap(s->data, r.nbytes, es);
  } else {
    AD_TRY(fmt_storage_from_src(&s, src, (size_t)at, (size_t)r.nbytes, es));
  }
  int64_t strides[AD_MAX_DIMS];
  if (r.fortran) {
    int64_t st_ = 1;
    for (int i = 0; i < r.ndim; i++) { strides[i] = st_; st_ *= r.shape[i] > 0 ? r.shape[i] : 1; }
  }
  ad_tensor *t;
  ad_status st = ad_tensor_from_storage(&t, s, elem_off, r.ndim, r.shape, r.fortran ? strides : NULL, r.dt);
  ad_storage_release(s);
  if (st != AD_OK) return st;
  if (r.fortran && !ad_is_contiguous(t)) {
    ad_tensor *c;
    bool prev = ad_set_grad_enabled(false);
    st = ad_contiguous(&c, t);
    ad_set_grad_enabled(prev);
    ad_tensor_release(t);
    if (st != AD_OK) return st;
    t = c;
  }
  *out = t;
  return AD_OK;
}

ad_status fmt_npy_load(ad_doc *doc, const fmt_src *src) {
  ad_tensor *t;
  AD_TRY(fmt_npy_parse(&t, src, 0, src->len, NULL, NULL));
  ad_value *v = ad_value_tensor(doc, t);
  ad_tensor_release(t);
  if (!v) return AD_ENOMEM;
  ad_doc_set_root(doc, v);
  fmt_doc_set_format(doc, AD_FMT_NPY);
  return AD_OK;
}

ad_status fmt_npz_load(ad_doc *doc, const fmt_src *src) {
  fmt_zip z;
  AD_TRY(fmt_zip_open(&z, src));
  ad_status st = AD_OK;
  ad_value *root = ad_value_dict(doc);
  if (!root) { st = AD_ENOMEM; goto done; }
  for (size_t i = 0; i < z.n; i++) {
    const fmt_zip_entry *e = &z.e[i];
    size_t nl = strlen(e->name);
    if (nl > 0 && e->name[nl - 1] == '/') continue;   /* directory entries */
    if (nl < 5 || strcmp(e->name + nl - 4, ".npy") != 0) {
      st = fmt_fail(src->name, AD_EFORMAT, "member '%s' is not an .npy array", e->name);
      goto done;
    }
    ad_tensor *t;
    if (e->method == 0) {
      if (src->verify_crc) {
        uint8_t *tmp;
        AD_TRY_GOTO(st, fmt_zip_read(&tmp, src, e), done);   /* checks the CRC */
        free(tmp);
      }
      AD_TRY_GOTO(st, fmt_npy_parse(&t, src, e->data_off, e->usize, NULL, e->name), done);
    } else {
      ad_storage *s;
      AD_TRY_GOTO(st, fmt_zip_storage(&s, src, e, e->usize, 1), done);
      fmt_src mem = {s->data, (size_t)e->usize, NULL, src->name, false};
      st = fmt_npy_parse(&t, &mem, 0, e->usize, s, e->name);
      ad_storage_release(s);
      if (st != AD_OK) goto done;
    }
    ad_value *k = ad_value_str(doc, e->name, nl - 4), *v = ad_value_tensor(doc, t);
    ad_tensor_release(t);
    if (!k || !v) { st = AD_ENOMEM; goto done; }
    AD_TRY_GOTO(st, ad_value_dict_set(root, k, v), done);
  }
  ad_doc_set_root(doc, root);
  fmt_doc_set_format(doc, AD_FMT_NPZ);
done:
  fmt_zip_close(&z);
  return st;
}

/* ---- writing ---- */
static const char *npy_descr(ad_dtype dt) {
  switch (dt) {
  case AD_F32: return "<f4";
  case AD_F64: return "<f8";
  case AD_F16: return "<f2";
  case AD_I64: return "<i8";
  case AD_I32: return "<i4";
  case AD_U8: return "|u1";
  case AD_BOOL: return "|b1";
  default: return NULL;
  }
}

ad_status fmt_npy_header(fmt_buf *b, const ad_tensor *t, const char *name) {
  const char *d = npy_descr(t->dtype);
  if (!d) return AD_FAIL(AD_EDTYPE, "save '%s': NumPy has no %s dtype (convert to f32 first)", name, ad_dtype_name(t->dtype));
  fmt_buf dict = {0};
  fmt_buf_printf(&dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", d);
  for (int i = 0; i < t->ndim; i++) fmt_buf_printf(&dict, "%lld,%s", (long long)t->shape[i], i + 1 < t->ndim ? " " : "");
  if (t->ndim > 1) dict.n--;   /* "(2, 3)" not "(2, 3,)"; one dimension keeps "(5,)" */
  fmt_buf_printf(&dict, "), }");
  /* pad with spaces and end with a newline so the data starts 64-aligned */
  size_t pre = 10, total = pre + dict.n + 1;
  bool v2 = false;
  size_t pad = (64 - total % 64) % 64;
  if (dict.n + pad + 1 > 0xFFFF) { v2 = true; pre = 12; total = pre + dict.n + 1; pad = (64 - total % 64) % 64; }
  fmt_buf_put(b, "\x93NUMPY", 6);
  fmt_buf_byte(b, v2 ? 2 : 1);
  fmt_buf_byte(b, 0);
  size_t hl = dict.n + pad + 1;
  if (v2) fmt_buf_le32(b, (uint32_t)hl);
  else fmt_buf_le16(b, (uint16_t)hl);
  fmt_buf_put(b, dict.p, dict.n);
  for (size_t i = 0; i < pad; i++) fmt_buf_byte(b, ' ');
  fmt_buf_byte(b, '\n');
  bool oom = dict.oom || b->oom;
  fmt_buf_free(&dict);
  return oom ? AD_FAIL(AD_ENOMEM, "save '%s': out of memory", name) : AD_OK;
}

ad_status fmt_npy_save(const char *path, const ad_value *root) {
  if (root->kind != AD_V_TENSOR) return AD_FAIL(AD_EINVAL, "save '%s': .npy holds one tensor, got a %s", path, ad_value_kind_name(root->kind));
  fmt_buf h = {0};
  ad_tensor *keep = NULL;
  fmt_out *out = NULL;
  const void *bytes;
  ad_status st;
  AD_TRY_GOTO(st, fmt_npy_header(&h, root->u.tensor, path), done);
  AD_TRY_GOTO(st, fmt_host_bytes(&bytes, &keep, root->u.tensor), done);
  AD_TRY_GOTO(st, fmt_out_open(&out, path), done);
  AD_TRY_GOTO(st, fmt_out_write(out, h.p, h.n), done);
  AD_TRY_GOTO(st, fmt_out_write(out, bytes, (size_t)ad_numel(keep) * ad_dtype_size(keep->dtype)), done);
  st = fmt_out_commit(out);
  out = NULL;
done:
  fmt_out_abort(out);
  ad_tensor_release(keep);
  fmt_buf_free(&h);
  return st;
}

ad_status fmt_npz_save(const char *path, const ad_value *root, bool compress) {
  if (root->kind != AD_V_DICT) return AD_FAIL(AD_EINVAL, "save '%s': .npz holds a table of name -> tensor", path);
  fmt_zipw *w = NULL;
  ad_status st;
  AD_TRY_GOTO(st, fmt_zipw_open(&w, path), done);
  for (size_t i = 0; i < root->u.dict.n; i++) {
    const ad_value *k = root->u.dict.keys[i], *v = root->u.dict.vals[i];
    if (k->kind != AD_V_STR) { st = AD_FAIL(AD_EINVAL, "save '%s': .npz keys must be strings", path); goto done; }
    if (v->kind != AD_V_TENSOR) {
      st = AD_FAIL(AD_EINVAL, "save '%s': key '%s' holds a %s; .npz holds only tensors", path, k->u.str.ptr, ad_value_kind_name(v->kind));
      goto done;
    }
    fmt_buf h = {0};
    ad_tensor *keep = NULL;
    const void *bytes = NULL;
    char *name = malloc(k->u.str.len + 5);
    st = name ? fmt_npy_header(&h, v->u.tensor, path) : AD_FAIL(AD_ENOMEM, "save: out of memory");
    if (st == AD_OK) st = fmt_host_bytes(&bytes, &keep, v->u.tensor);
    if (st == AD_OK) {
      memcpy(name, k->u.str.ptr, k->u.str.len);
      memcpy(name + k->u.str.len, ".npy", 5);
      st = fmt_zipw_add(w, name, h.p, h.n, bytes, (size_t)ad_numel(keep) * ad_dtype_size(keep->dtype), compress ? 8 : 0, 64);
    }
    free(name);
    fmt_buf_free(&h);
    ad_tensor_release(keep);
    if (st != AD_OK) goto done;
  }
  st = fmt_zipw_finish(w);
  w = NULL;
done:
  fmt_zipw_abort(w);
  return st;
}
