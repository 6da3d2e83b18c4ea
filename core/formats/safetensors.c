/* safetensors.c: the safetensors format, advdiff's own checkpoint format.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"key": "value", ...}}, then the data area; offsets are
 * relative to the data area. Reading checks N against the file size, each
 * tensor's dtype and shape against its byte length, offsets against the data
 * area and against each other (no overlaps). Tensors are mapped from the file
 * when aligned. Writing sorts tensors by alignment then name, pads the header
 * to 8 bytes and lays the data out contiguously. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats.h"

#define ST_MAX_HEADER (100u << 20)   /* the reference implementation's limit */

static const struct { const char *name; ad_dtype dt; } ST_DTYPES[] = {
  {"F32", AD_F32}, {"F64", AD_F64}, {"F16", AD_F16}, {"BF16", AD_BF16},
  {"I64", AD_I64}, {"I32", AD_I32}, {"U8", AD_U8}, {"BOOL", AD_BOOL},
};

static const char *st_dtype_name(ad_dtype dt) {
  for (size_t i = 0; i < sizeof ST_DTYPES / sizeof ST_DTYPES[0]; i++)
    if (ST_DTYPES[i].dt == dt) return ST_DTYPES[i].name;
  return NULL;
}

typedef struct {
  const char *name;
  ad_value *key;
  ad_dtype dt;
  int ndim;
  int64_t shape[AD_MAX_DIMS];
  uint64_t begin, end;
} st_entry;

static int cmp_begin(const void *a, const void *b) {
  const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}
static int cmp_name(const void *a, const void *b) {
  return strcmp((*(st_entry *const *)a)->name, (*(st_entry *const *)b)->name);
}

ad_status fmt_safetensors_load(ad_doc *doc, const fmt_src *src) {
  const char *nm = src->name;
  if (src->len < 8) return fmt_fail(nm, AD_EFORMAT, "truncated safetensors file (%zu bytes, no header length)", src->len);
  uint64_t hlen = fmt_le64(src->data);
  if (hlen > src->len - 8)
    return fmt_fail(nm, AD_EFORMAT, "offset 0: header length %llu exceeds the file (%zu bytes)", (unsigned long long)hlen, src->len);
  if (hlen > ST_MAX_HEADER) return fmt_fail(nm, AD_EFORMAT, "offset 0: header length %llu exceeds the 100 MB limit", (unsigned long long)hlen);
  if (hlen < 2 || src->data[8] != '{') return fmt_fail(nm, AD_EFORMAT, "offset 8: the header is not a JSON object");
  ad_value *h;
  AD_TRY(fmt_json_parse(&h, doc, (const char *)src->data + 8, (size_t)hlen, nm, 8));
  if (h->kind != AD_V_DICT) return fmt_fail(nm, AD_EFORMAT, "offset 8: the header is not a JSON object");
  uint64_t data_off = 8 + hlen, data_len = src->len - data_off;
  size_t n = h->u.dict.n;
  st_entry *ents = calloc(n ? n : 1, sizeof *ents);
  st_entry **order = calloc(n ? n : 1, sizeof *order);
  ad_status st = AD_OK;
  ad_value *root = ad_value_dict(doc), *meta = NULL;
  size_t ne = 0;
  if (!ents || !order || !root) { st = fmt_fail(nm, AD_ENOMEM, "out of memory"); goto done; }
  for (size_t i = 0; i < n; i++) {
    ad_value *k = h->u.dict.keys[i], *v = h->u.dict.vals[i];
    const char *key = k->u.str.ptr;
    if (strcmp(key, "__metadata__") == 0) {
      if (meta) { st = fmt_fail(nm, AD_EFORMAT, "__metadata__ appears twice"); goto done; }
      if (v->kind != AD_V_DICT) { st = fmt_fail(nm, AD_EFORMAT, "__metadata__ must be an object of strings"); goto done; }
      for (size_t m = 0; m < v->u.dict.n; m++) {
        if (v->u.dict.vals[m]->kind != AD_V_STR) {
          st = fmt_fail(nm, AD_EFORMAT, "__metadata__ key '%s': value must be a string", v->u.dict.keys[m]->u.str.ptr);
          goto done;
        }
      }
      meta = v;
      continue;
    }
    if (v->kind != AD_V_DICT) { st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': header entry is not an object", key); goto done; }
    ad_value *dt = ad_value_dict_get(v, "dtype"), *sh = ad_value_dict_get(v, "shape"), *of = ad_value_dict_get(v, "data_offsets");
    if (!dt || dt->kind != AD_V_STR) { st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': missing or bad \"dtype\"", key); goto done; }
    if (!sh || sh->kind != AD_V_LIST) { st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': missing or bad \"shape\"", key); goto done; }
    if (!of || of->kind != AD_V_LIST || of->u.seq.n != 2 || of->u.seq.items[0]->kind != AD_V_INT ||
        of->u.seq.items[1]->kind != AD_V_INT) {
      st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': \"data_offsets\" must be two integers", key);
      goto done;
    }
    st_entry *e = &ents[ne];
    e->name = key;
    e->key = k;
    bool found = false;
    for (size_t d = 0; d < sizeof ST_DTYPES / sizeof ST_DTYPES[0]; d++)
      if (strcmp(dt->u.str.ptr, ST_DTYPES[d].name) == 0) { e->dt = ST_DTYPES[d].dt; found = true; }
    if (!found) { st = fmt_fail(nm, AD_EDTYPE, "tensor '%s': dtype \"%.16s\" is not supported", key, dt->u.str.ptr); goto done; }
    if (sh->u.seq.n > AD_MAX_DIMS) { st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': %zu dimensions (at most %d)", key, sh->u.seq.n, AD_MAX_DIMS); goto done; }
    e->ndim = (int)sh->u.seq.n;
    for (int d = 0; d < e->ndim; d++) {
      ad_value *x = sh->u.seq.items[d];
      if (x->kind != AD_V_INT || x->u.i < 0) { st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': shape entry %d is not a non-negative integer", key, d); goto done; }
      e->shape[d] = x->u.i;
    }
    int64_t b = of->u.seq.items[0]->u.i, en = of->u.seq.items[1]->u.i;
    if (b < 0 || en < b || (uint64_t)en > data_len) {
      st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': data_offsets [%lld, %lld] outside the %llu-byte data area", key,
                    (long long)b, (long long)en, (unsigned long long)data_len);
      goto done;
    }
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    uint64_t numel, nbytes;
    char sb[128];
    if (!fmt_shape_bytes(e->ndim, e->shape, ad_dtype_size(e->dt), &numel, &nbytes)) {
      st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': shape %s is too large", key, ad_shape_str(e->ndim, e->shape, sb, sizeof sb));
      goto done;
    }
    if (nbytes != e->end - e->begin) {
      st = fmt_fail(nm, AD_EFORMAT, "tensor '%s': %s %s needs %llu bytes, data_offsets [%llu, %llu] hold %llu", key,
                    dt->u.str.ptr, ad_shape_str(e->ndim, e->shape, sb, sizeof sb), (unsigned long long)nbytes,
                    (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
      goto done;
    }
    order[ne] = e;
    ne++;
  }
  /* duplicate names, then overlaps */
  qsort(order, ne, sizeof *order, cmp_name);
  for (size_t i = 1; i < ne; i++)
    if (strcmp(order[i - 1]->name, order[i]->name) == 0) { st = fmt_fail(nm, AD_EFORMAT, "tensor '%s' appears twice", order[i]->name); goto done; }
  qsort(order, ne, sizeof *order, cmp_begin);
  for (size_t i = 1; i < ne; i++) {
    const st_entry *a = order[i - 1], *b = order[i];
    if (b->begin < a->end && b->begin != b->end && a->begin != a->end) {
      st = fmt_fail(nm, AD_EFORMAT, "tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", a->name,
                    (unsigned long long)a->begin, (unsigned long long)a->end, b->name, (unsigned long long)b->begin,
                    (unsigned long long)b->end);
      goto done;
    }
  }
  for (size_t i = 0; i < ne; i++) {
    st_entry *e = &ents[i];
    ad_storage *s;
    AD_TRY_GOTO(st, fmt_storage_from_src(&s, src, (size_t)(data_off + e->begin), (size_t)(e->end - e->begin), ad_dtype_size(e->dt)), done);
    ad_tensor *t;
    st = ad_tensor_from_storage(&t, s, 0, e->ndim, e->shape, NULL, e->dt);
    ad_storage_release(s);
    if (st != AD_OK) goto done;
    ad_value *tv = ad_value_tensor(doc, t);
    ad_tensor_release(t);
    if (!tv) { st = AD_ENOMEM; goto done; }
    AD_TRY_GOTO(st, ad_value_dict_set(root, e->key, tv), done);
  }
  ad_doc_set_root(doc, root);
  ad_doc_set_metadata(doc, meta);
  fmt_doc_set_format(doc, AD_FMT_SAFETENSORS);
done:
  free(ents);
  free(order);
  return st;
}

/* ---- writing ---- */
typedef struct {
  const ad_value *key;
  ad_tensor *t;      /* host, contiguous */
  uint64_t begin, end;
} st_out;

static int cmp_out(const void *a, const void *b) {
  const st_out *x = a, *y = b;
  size_t ex = ad_dtype_size(x->t->dtype), ey = ad_dtype_size(y->t->dtype);
  if (ex != ey) return ex > ey ? -1 : 1;
  return strcmp(x->key->u.str.ptr, y->key->u.str.ptr);
}

static int cmp_out_name(const void *a, const void *b) {
  return strcmp(((const st_out *)a)->key->u.str.ptr, ((const st_out *)b)->key->u.str.ptr);
}

ad_status fmt_safetensors_save(const char *path, const ad_value *root, const ad_value *metadata) {
  if (root->kind != AD_V_DICT) return AD_FAIL(AD_EINVAL, "save '%s': safetensors holds a flat table of name -> tensor", path);
  size_t n = root->u.dict.n;
  st_out *o = calloc(n ? n : 1, sizeof *o);
  if (!o) return AD_FAIL(AD_ENOMEM, "save '%s': out of memory", path);
  fmt_buf h = {0};
  fmt_out *out = NULL;
  ad_status st = AD_OK;
  size_t k = 0;
  for (size_t i = 0; i < n; i++, k++) {
    const ad_value *key = root->u.dict.keys[i], *v = root->u.dict.vals[i];
    if (key->kind != AD_V_STR) { st = AD_FAIL(AD_EINVAL, "save '%s': safetensors keys must be strings", path); goto done; }
    if (v->kind != AD_V_TENSOR) {
      st = AD_FAIL(AD_EINVAL, "save '%s': key '%s' holds a %s; safetensors holds only tensors (flatten nested tables)", path,
                   key->u.str.ptr, ad_value_kind_name(v->kind));
      goto done;
    }
    if (strcmp(key->u.str.ptr, "__metadata__") == 0 || !fmt_utf8_valid((const unsigned char *)key->u.str.ptr, key->u.str.len)) {
      st = AD_FAIL(AD_EINVAL, "save '%s': key '%s' is reserved or not UTF-8", path, key->u.str.ptr);
      goto done;
    }
    if (!st_dtype_name(v->u.tensor->dtype)) {
      st = AD_FAIL(AD_EDTYPE, "save '%s': key '%s': dtype %s", path, key->u.str.ptr, ad_dtype_name(v->u.tensor->dtype));
      goto done;
    }
    o[k].key = key;
    const void *bytes;
    AD_TRY_GOTO(st, fmt_host_bytes(&bytes, &o[k].t, v->u.tensor), done);
  }
  qsort(o, n, sizeof *o, cmp_out_name);
  for (size_t i = 1; i < n; i++)
    if (strcmp(o[i - 1].key->u.str.ptr, o[i].key->u.str.ptr) == 0) {
      st = AD_FAIL(AD_EINVAL, "save '%s': key '%s' appears twice", path, o[i].key->u.str.ptr);
      goto done;
    }
  qsort(o, n, sizeof *o, cmp_out);
  fmt_buf_byte(&h, '{');
  bool first = true;
  if (metadata && metadata->kind == AD_V_DICT && metadata->u.dict.n > 0) {
    fmt_buf_printf(&h, "\"__metadata__\":{");
    for (size_t i = 0; i < metadata->u.dict.n; i++) {
      const ad_value *mk = metadata->u.dict.keys[i], *mv = metadata->u.dict.vals[i];
      if (mk->kind != AD_V_STR || mv->kind != AD_V_STR) {
        st = AD_FAIL(AD_EINVAL, "save '%s': metadata must map strings to strings", path);
        goto done;
      }
      if (i) fmt_buf_byte(&h, ',');
      fmt_json_string(&h, mk->u.str.ptr, mk->u.str.len);
      fmt_buf_byte(&h, ':');
      fmt_json_string(&h, mv->u.str.ptr, mv->u.str.len);
    }
    fmt_buf_byte(&h, '}');
    first = false;
  } else if (metadata && metadata->kind != AD_V_DICT) {
    st = AD_FAIL(AD_EINVAL, "save '%s': metadata must be a table of strings", path);
    goto done;
  }
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    ad_tensor *t = o[i].t;
    uint64_t nb = (uint64_t)ad_numel(t) * ad_dtype_size(t->dtype);
    o[i].begin = off;
    o[i].end = off + nb;
    off += nb;
    if (!first) fmt_buf_byte(&h, ',');
    first = false;
    fmt_json_string(&h, o[i].key->u.str.ptr, o[i].key->u.str.len);
    fmt_buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim; d++) fmt_buf_printf(&h, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    fmt_buf_printf(&h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)o[i].begin, (unsigned long long)o[i].end);
  }
  fmt_buf_byte(&h, '}');
  while ((h.n + 8) % 8) fmt_buf_byte(&h, ' ');
  if (h.oom) { st = AD_FAIL(AD_ENOMEM, "save '%s': out of memory", path); goto done; }
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
  AD_TRY_GOTO(st, fmt_out_open(&out, path), done);
  AD_TRY_GOTO(st, fmt_out_write(out, len8, 8), done);
  AD_TRY_GOTO(st, fmt_out_write(out, h.p, h.n), done);
  for (size_t i = 0; i < n; i++) AD_TRY_GOTO(st, fmt_out_write(out, ad_data(o[i].t), (size_t)(o[i].end - o[i].begin)), done);
  st = fmt_out_commit(out);
  out = NULL;
done:
  fmt_out_abort(out);
  for (size_t i = 0; i < n; i++) ad_tensor_release(o[i].t);
  free(o);
  fmt_buf_free(&h);
  return st;
}
