/* pickle.c: a restricted pickle interpreter (protocols 0-5, the opcodes that
 * state dicts use) and a protocol-2 pickler for torch.save-compatible files.
 *
 * The interpreter builds ad_values, never Python objects: the only callables
 * are an allow-list of globals (OrderedDict, torch's tensor/parameter rebuild
 * functions, storage classes, dtypes, torch.Size, set), each implemented here
 * as a pure constructor. Any other global is refused by name when the GLOBAL
 * or STACK_GLOBAL opcode names it, before it is used; INST/OBJ, extension
 * codes and out-of-band buffers are refused outright. The stack and memo grow
 * at most one slot per input byte, so memory stays proportional to the
 * input; every length is checked against the bytes that remain. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats.h"

/* ---- the allow-list ---- */
enum { G_ODICT, G_REBUILD_V2, G_REBUILD_PARAM, G_REBUILD_PARAM_STATE, G_STORAGE, G_DTYPE, G_SIZE, G_SET, G_FROZENSET };
typedef struct {
  const char *module, *name;
  int kind;
  int dtype;        /* storages/dtypes: ad_dtype, or -1 when advdiff has none */
  int esize;        /* storages: element size in bytes */
  const char *label;/* dtypes: advdiff's name; unsupported storages: torch's dtype */
} global_def;

static const global_def GLOBALS[] = {
  {"collections", "OrderedDict", G_ODICT, 0, 0, NULL},
  {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_V2, 0, 0, NULL},
  {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAM, 0, 0, NULL},
  {"torch._utils", "_rebuild_parameter_with_state", G_REBUILD_PARAM_STATE, 0, 0, NULL},
  {"torch", "FloatStorage", G_STORAGE, AD_F32, 4, NULL},
  {"torch", "DoubleStorage", G_STORAGE, AD_F64, 8, NULL},
  {"torch", "HalfStorage", G_STORAGE, AD_F16, 2, NULL},
  {"torch", "BFloat16Storage", G_STORAGE, AD_BF16, 2, NULL},
  {"torch", "LongStorage", G_STORAGE, AD_I64, 8, NULL},
  {"torch", "IntStorage", G_STORAGE, AD_I32, 4, NULL},
  {"torch", "ByteStorage", G_STORAGE, AD_U8, 1, NULL},
  {"torch", "BoolStorage", G_STORAGE, AD_BOOL, 1, NULL},
  {"torch", "CharStorage", G_STORAGE, -1, 1, "int8"},
  {"torch", "ShortStorage", G_STORAGE, -1, 2, "int16"},
  {"torch", "ComplexFloatStorage", G_STORAGE, -1, 8, "complex64"},
  {"torch", "ComplexDoubleStorage", G_STORAGE, -1, 16, "complex128"},
  {"torch", "float32", G_DTYPE, AD_F32, 0, "f32"},
  {"torch", "float", G_DTYPE, AD_F32, 0, "f32"},
  {"torch", "float64", G_DTYPE, AD_F64, 0, "f64"},
  {"torch", "double", G_DTYPE, AD_F64, 0, "f64"},
  {"torch", "float16", G_DTYPE, AD_F16, 0, "f16"},
  {"torch", "half", G_DTYPE, AD_F16, 0, "f16"},
  {"torch", "bfloat16", G_DTYPE, AD_BF16, 0, "bf16"},
  {"torch", "int64", G_DTYPE, AD_I64, 0, "i64"},
  {"torch", "long", G_DTYPE, AD_I64, 0, "i64"},
  {"torch", "int32", G_DTYPE, AD_I32, 0, "i32"},
  {"torch", "int", G_DTYPE, AD_I32, 0, "i32"},
  {"torch", "uint8", G_DTYPE, AD_U8, 0, "u8"},
  {"torch", "bool", G_DTYPE, AD_BOOL, 0, "bool"},
  {"torch", "Size", G_SIZE, 0, 0, NULL},
  {"builtins", "set", G_SET, 0, 0, NULL},
  {"__builtin__", "set", G_SET, 0, 0, NULL},
  {"builtins", "frozenset", G_FROZENSET, 0, 0, NULL},
  {"__builtin__", "frozenset", G_FROZENSET, 0, 0, NULL},
};
#define N_GLOBALS (sizeof GLOBALS / sizeof GLOBALS[0])

struct fmt_unpickler {
  ad_doc *doc;
  const uint8_t *start, *p, *end;
  size_t op_off;
  const fmt_unpickle_opts *o;
  ad_value **stack;
  size_t sp, scap;
  size_t *marks;
  size_t nm, mcap;
  ad_value **memo;
  size_t memo_cap, memo_count, memo_max;
};

ad_doc *fmt_unpickler_doc(fmt_unpickler *u) { return u->doc; }

ad_status fmt_unpickle_fail(fmt_unpickler *u, ad_status code, const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return fmt_fail(u->o->name, code, "%s offset %llu: %s", u->o->what ? u->o->what : "pickle",
                  (unsigned long long)(u->o->base_offset + u->op_off), msg);
}

/* a printable, bounded copy of file text for messages */
static const char *shown(char *buf, size_t cap, const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 4 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    buf[k++] = (c >= 32 && c < 127) ? (char)c : '?';
  }
  if (n > 0 && k + 4 >= cap) { buf[k++] = '.'; buf[k++] = '.'; buf[k++] = '.'; }
  buf[k] = 0;
  return buf;
}

static int find_global(const char *mod, size_t ml, const char *name, size_t nl) {
  for (size_t i = 0; i < N_GLOBALS; i++)
    if (strlen(GLOBALS[i].module) == ml && strlen(GLOBALS[i].name) == nl &&
        memcmp(GLOBALS[i].module, mod, ml) == 0 && memcmp(GLOBALS[i].name, name, nl) == 0)
      return (int)i;
  return -1;
}

static ad_status refuse_global(fmt_unpickler *u, const char *mod, size_t ml, const char *name, size_t nl) {
  char a[128], b[128];
  return fmt_unpickle_fail(u, AD_EFORMAT,
                           "forbidden global '%s.%s' refused (only the globals of a plain state dict are allowed)",
                           shown(a, sizeof a, mod, ml), shown(b, sizeof b, name, nl));
}

/* ---- stack ---- */
static ad_status push(fmt_unpickler *u, ad_value *v) {
  if (!v) return AD_ENOMEM;
  if (u->sp == u->scap) {
    size_t nc = u->scap ? u->scap * 2 : 64;
    ad_value **s = realloc(u->stack, nc * sizeof *s);
    if (!s) return fmt_unpickle_fail(u, AD_ENOMEM, "out of memory growing the stack");
    u->stack = s;
    u->scap = nc;
  }
  u->stack[u->sp++] = v;
  return AD_OK;
}

static size_t floor_sp(const fmt_unpickler *u) { return u->nm ? u->marks[u->nm - 1] : 0; }

static ad_status pop(fmt_unpickler *u, ad_value **v) {
  if (u->sp <= floor_sp(u)) return fmt_unpickle_fail(u, AD_EFORMAT, "stack underflow");
  *v = u->stack[--u->sp];
  return AD_OK;
}

static ad_status top(fmt_unpickler *u, ad_value **v) {
  if (u->sp <= floor_sp(u)) return fmt_unpickle_fail(u, AD_EFORMAT, "stack underflow");
  *v = u->stack[u->sp - 1];
  return AD_OK;
}

/* items since the last MARK: [*items, *items + *n); pops the mark */
static ad_status pop_mark(fmt_unpickler *u, ad_value ***items, size_t *n) {
  if (!u->nm) return fmt_unpickle_fail(u, AD_EFORMAT, "no MARK on the stack");
  size_t m = u->marks[--u->nm];
  *items = u->stack ? u->stack + m : NULL;
  *n = u->sp - m;
  u->sp = m;
  return AD_OK;
}

static ad_status seq_from(fmt_unpickler *u, ad_value **out, ad_value_kind k, ad_value **items, size_t n) {
  ad_value *v = fmt_value_new(u->doc, k);
  if (!v) return AD_ENOMEM;
  for (size_t i = 0; i < n; i++) AD_TRY(ad_value_append(v, items[i]));
  *out = v;
  return AD_OK;
}

/* ---- input ---- */
static ad_status need(fmt_unpickler *u, size_t n, const uint8_t **p) {
  if ((size_t)(u->end - u->p) < n)
    return fmt_unpickle_fail(u, AD_EFORMAT, "truncated: needs %zu more bytes, %zu left", n, (size_t)(u->end - u->p));
  *p = u->p;
  u->p += n;
  return AD_OK;
}

static ad_status read_line(fmt_unpickler *u, const char **s, size_t *n) {
  size_t left = (size_t)(u->end - u->p);
  const uint8_t *nl = memchr(u->p, '\n', left < 65536 ? left : 65536);
  if (!nl) return fmt_unpickle_fail(u, AD_EFORMAT, "text argument without a newline (truncated?)");
  *s = (const char *)u->p;
  *n = (size_t)(nl - u->p);
  u->p = nl + 1;
  return AD_OK;
}

static ad_status parse_decimal(fmt_unpickler *u, const char *s, size_t n, int64_t *out) {
  char buf[32];
  while (n && (s[n - 1] == 'L' || s[n - 1] == '\r' || s[n - 1] == ' ')) n--;
  if (n == 0 || n >= sizeof buf) return fmt_unpickle_fail(u, AD_EFORMAT, "bad integer text");
  memcpy(buf, s, n);
  buf[n] = 0;
  size_t i = (buf[0] == '-' || buf[0] == '+') ? 1 : 0;
  if (i == n) return fmt_unpickle_fail(u, AD_EFORMAT, "bad integer text");
  uint64_t v = 0;
  for (; i < n; i++) {
    if (buf[i] < '0' || buf[i] > '9') return fmt_unpickle_fail(u, AD_EFORMAT, "bad integer text");
    if (v > (UINT64_MAX - 9) / 10) return fmt_unpickle_fail(u, AD_EFORMAT, "integer wider than 64 bits");
    v = v * 10 + (uint64_t)(buf[i] - '0');
  }
  if (buf[0] == '-') {
    if (v > (uint64_t)INT64_MAX + 1) return fmt_unpickle_fail(u, AD_EFORMAT, "integer wider than 64 bits");
    *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
  } else {
    if (v > (uint64_t)INT64_MAX) return fmt_unpickle_fail(u, AD_EFORMAT, "integer wider than 64 bits");
    *out = (int64_t)v;
  }
  return AD_OK;
}

static ad_status push_long_bytes(fmt_unpickler *u, const uint8_t *b, size_t n) {
  if (n > 8) {
    /* wider encodings of values that fit are allowed: the extra bytes must be sign fill */
    uint8_t fill = (b[n - 1] & 0x80) ? 0xFF : 0x00;
    for (size_t i = 8; i < n; i++)
      if (b[i] != fill) return fmt_unpickle_fail(u, AD_EFORMAT, "integer wider than 64 bits (%zu bytes)", n);
    if (((b[7] & 0x80) ? 0xFF : 0x00) != fill) return fmt_unpickle_fail(u, AD_EFORMAT, "integer wider than 64 bits");
    n = 8;
  }
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) v |= (uint64_t)b[i] << (8 * i);
  if (n > 0 && n < 8 && (b[n - 1] & 0x80)) v |= ~(uint64_t)0 << (8 * n);
  return push(u, ad_value_int(u->doc, (int64_t)v));
}

/* ---- memo ---- */
static ad_status memo_put(fmt_unpickler *u, uint64_t idx) {
  ad_value *v = NULL;
  AD_TRY(top(u, &v));
  if (idx >= u->memo_max)
    return fmt_unpickle_fail(u, AD_EFORMAT, "memo index %llu out of range (the pickle is %zu bytes)",
                             (unsigned long long)idx, (size_t)(u->end - u->start));
  if (idx >= u->memo_cap) {
    size_t nc = u->memo_cap ? u->memo_cap : 64;
    while (nc <= idx) nc *= 2;
    ad_value **m = realloc(u->memo, nc * sizeof *m);
    if (!m) return fmt_unpickle_fail(u, AD_ENOMEM, "out of memory growing the memo");
    memset(m + u->memo_cap, 0, (nc - u->memo_cap) * sizeof *m);
    u->memo = m;
    u->memo_cap = nc;
  }
  if (!u->memo[idx]) u->memo_count++;
  u->memo[idx] = v;
  return AD_OK;
}

static ad_status memo_get(fmt_unpickler *u, uint64_t idx) {
  if (idx >= u->memo_cap || !u->memo[idx])
    return fmt_unpickle_fail(u, AD_EFORMAT, "memo entry %llu was never stored", (unsigned long long)idx);
  return push(u, u->memo[idx]);
}

/* ---- the allowed callables ---- */
static ad_status need_int(fmt_unpickler *u, const ad_value *v, const char *what, int64_t *out) {
  if (v->kind == AD_V_INT) { *out = v->u.i; return AD_OK; }
  if (v->kind == AD_V_BOOL) { *out = v->u.b; return AD_OK; }
  return fmt_unpickle_fail(u, AD_EFORMAT, "%s must be an int, got %s", what, ad_value_kind_name(v->kind));
}

static ad_status int_tuple(fmt_unpickler *u, const ad_value *v, const char *what, int *n, int64_t *out) {
  if (v->kind != AD_V_TUPLE && v->kind != AD_V_LIST)
    return fmt_unpickle_fail(u, AD_EFORMAT, "%s must be a tuple, got %s", what, ad_value_kind_name(v->kind));
  if (v->u.seq.n > AD_MAX_DIMS)
    return fmt_unpickle_fail(u, AD_EFORMAT, "%s has %zu dimensions (at most %d supported)", what, v->u.seq.n, AD_MAX_DIMS);
  for (size_t i = 0; i < v->u.seq.n; i++) {
    AD_TRY(need_int(u, v->u.seq.items[i], what, &out[i]));
    if (out[i] < 0) return fmt_unpickle_fail(u, AD_EFORMAT, "%s has a negative entry %lld", what, (long long)out[i]);
  }
  *n = (int)v->u.seq.n;
  return AD_OK;
}

static ad_status rebuild_tensor(fmt_unpickler *u, ad_value **out, ad_value **a, size_t n) {
  if (n != 6 && n != 7)
    return fmt_unpickle_fail(u, AD_EFORMAT, "_rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", n);
  if (a[0]->kind != AD_V_STORAGE)
    return fmt_unpickle_fail(u, AD_EFORMAT, "_rebuild_tensor_v2: argument 1 must be a storage, got %s", ad_value_kind_name(a[0]->kind));
  fmt_storage_info *si = a[0]->priv;
  ad_value *v = fmt_value_new(u->doc, AD_V_TSPEC);
  if (!v) return AD_ENOMEM;
  fmt_tensor_spec *ts = fmt_doc_alloc_priv(u->doc, v, sizeof *ts);
  if (!ts) return AD_ENOMEM;
  ts->storage = a[0];
  int nd_st;
  AD_TRY(need_int(u, a[1], "storage offset", &ts->offset));
  if (ts->offset < 0) return fmt_unpickle_fail(u, AD_EFORMAT, "negative storage offset %lld", (long long)ts->offset);
  AD_TRY(int_tuple(u, a[2], "tensor size", &ts->ndim, ts->shape));
  AD_TRY(int_tuple(u, a[3], "tensor stride", &nd_st, ts->strides));
  if (nd_st != ts->ndim)
    return fmt_unpickle_fail(u, AD_EFORMAT, "tensor has %d sizes but %d strides", ts->ndim, nd_st);
  if (a[4]->kind != AD_V_BOOL && a[4]->kind != AD_V_INT)
    return fmt_unpickle_fail(u, AD_EFORMAT, "requires_grad must be a bool, got %s", ad_value_kind_name(a[4]->kind));
  ts->requires_grad = a[4]->kind == AD_V_BOOL ? a[4]->u.b : a[4]->u.i != 0;
  if (!si->dtype_ok)
    return fmt_unpickle_fail(u, AD_EDTYPE, "storage '%s' has type %s, which advdiff does not support", si->key ? si->key : "?",
                             si->type_name);
  /* the highest element the view touches must lie inside the storage */
  uint64_t numel = 1, last = (uint64_t)ts->offset, t;
  for (int i = 0; i < ts->ndim; i++) {
    if (!fmt_mul_ok(numel, (uint64_t)ts->shape[i], &numel) || numel > ((uint64_t)1 << 59))
      return fmt_unpickle_fail(u, AD_EFORMAT, "tensor shape is too large");
  }
  if (numel > 0) {
    for (int i = 0; i < ts->ndim; i++) {
      if (!fmt_mul_ok((uint64_t)(ts->shape[i] - 1), (uint64_t)ts->strides[i], &t) || !fmt_add_ok(last, t, &last))
        return fmt_unpickle_fail(u, AD_EFORMAT, "tensor extent overflows");
    }
    if (last >= si->numel) {
      char sb[128];
      return fmt_unpickle_fail(u, AD_EFORMAT,
                               "tensor of shape %s (offset %lld) needs %llu elements of storage '%s', which holds %llu",
                               ad_shape_str(ts->ndim, ts->shape, sb, sizeof sb), (long long)ts->offset,
                               (unsigned long long)last + 1, si->key ? si->key : "?", (unsigned long long)si->numel);
    }
  }
  *out = v;
  return AD_OK;
}

static ad_status rebuild_parameter(fmt_unpickler *u, ad_value **out, ad_value **a, size_t n) {
  if (n < 3 || n > 4) return fmt_unpickle_fail(u, AD_EFORMAT, "_rebuild_parameter takes 3 or 4 arguments, got %zu", n);
  if (a[0]->kind != AD_V_TSPEC)
    return fmt_unpickle_fail(u, AD_EFORMAT, "_rebuild_parameter: data must be a tensor, got %s", ad_value_kind_name(a[0]->kind));
  if (a[1]->kind != AD_V_BOOL && a[1]->kind != AD_V_INT)
    return fmt_unpickle_fail(u, AD_EFORMAT, "_rebuild_parameter: requires_grad must be a bool");
  ad_value *v = fmt_value_new(u->doc, AD_V_TSPEC);
  if (!v) return AD_ENOMEM;
  fmt_tensor_spec *ts = fmt_doc_alloc_priv(u->doc, v, sizeof *ts);
  if (!ts) return AD_ENOMEM;
  *ts = *(fmt_tensor_spec *)a[0]->priv;
  ts->requires_grad = a[1]->kind == AD_V_BOOL ? a[1]->u.b : a[1]->u.i != 0;
  *out = v;
  return AD_OK;
}

static ad_status call_global(fmt_unpickler *u, ad_value **out, const ad_value *fn, ad_value **a, size_t n) {
  const global_def *g = &GLOBALS[fn->u.global];
  switch (g->kind) {
  case G_ODICT: {
    ad_value *d = ad_value_dict(u->doc);
    if (!d) return AD_ENOMEM;
    if (n == 1 && (a[0]->kind == AD_V_LIST || a[0]->kind == AD_V_TUPLE)) {
      for (size_t i = 0; i < a[0]->u.seq.n; i++) {
        ad_value *pr = a[0]->u.seq.items[i];
        if ((pr->kind != AD_V_TUPLE && pr->kind != AD_V_LIST) || pr->u.seq.n != 2)
          return fmt_unpickle_fail(u, AD_EFORMAT, "OrderedDict: item %zu is not a (key, value) pair", i);
        AD_TRY(ad_value_dict_set(d, pr->u.seq.items[0], pr->u.seq.items[1]));
      }
    } else if (n != 0) {
      return fmt_unpickle_fail(u, AD_EFORMAT, "OrderedDict takes no arguments or a list of pairs");
    }
    *out = d;
    return AD_OK;
  }
  case G_REBUILD_V2: return rebuild_tensor(u, out, a, n);
  case G_REBUILD_PARAM:
  case G_REBUILD_PARAM_STATE: return rebuild_parameter(u, out, a, n);
  case G_SIZE:
    if (n != 1 || (a[0]->kind != AD_V_TUPLE && a[0]->kind != AD_V_LIST))
      return fmt_unpickle_fail(u, AD_EFORMAT, "torch.Size takes one tuple");
    return seq_from(u, out, AD_V_TUPLE, a[0]->u.seq.items, a[0]->u.seq.n);
  case G_SET:
  case G_FROZENSET:
    if (n == 0) return seq_from(u, out, AD_V_LIST, NULL, 0);
    if (n != 1 || (a[0]->kind != AD_V_TUPLE && a[0]->kind != AD_V_LIST))
      return fmt_unpickle_fail(u, AD_EFORMAT, "set takes one list");
    return seq_from(u, out, AD_V_LIST, a[0]->u.seq.items, a[0]->u.seq.n);
  default:
    return fmt_unpickle_fail(u, AD_EFORMAT, "%s.%s is not callable", g->module, g->name);
  }
}

/* ---- the interpreter ---- */
static ad_status run(fmt_unpickler *u, ad_value **result) {
  const uint8_t *b = NULL;
  for (;;) {
    u->op_off = (size_t)(u->p - u->start);
    if (u->p >= u->end) return fmt_unpickle_fail(u, AD_EFORMAT, "truncated: the pickle ends without STOP");
    if (u->sp > u->memo_max) return fmt_unpickle_fail(u, AD_EFORMAT, "stack too deep");
    uint8_t op = *u->p++;
    ad_value *v = NULL, *w = NULL, *x = NULL, **items = NULL;
    size_t n = 0;
    int64_t iv = 0;
    switch (op) {
    case 0x80: /* PROTO */
      AD_TRY(need(u, 1, &b));
      if (b[0] > 5) return fmt_unpickle_fail(u, AD_EFORMAT, "pickle protocol %u is not supported", b[0]);
      break;
    case 0x95: /* FRAME */
      AD_TRY(need(u, 8, &b));
      break;
    case '.': /* STOP */
      AD_TRY(pop(u, result));
      return AD_OK;
    case '(': /* MARK */
      if (u->nm == u->mcap) {
        size_t nc = u->mcap ? u->mcap * 2 : 32;
        size_t *m = realloc(u->marks, nc * sizeof *m);
        if (!m) return fmt_unpickle_fail(u, AD_ENOMEM, "out of memory");
        u->marks = m;
        u->mcap = nc;
      }
      u->marks[u->nm++] = u->sp;
      break;
    case '0': /* POP */
      if (u->sp > floor_sp(u)) u->sp--;
      else if (u->nm) u->nm--;
      else return fmt_unpickle_fail(u, AD_EFORMAT, "stack underflow");
      break;
    case '1': /* POP_MARK */
      AD_TRY(pop_mark(u, &items, &n));
      break;
    case '2': /* DUP */
      AD_TRY(top(u, &v));
      AD_TRY(push(u, v));
      break;
    case 'N': AD_TRY(push(u, ad_value_none(u->doc))); break;
    case 0x88: AD_TRY(push(u, ad_value_bool(u->doc, true))); break;
    case 0x89: AD_TRY(push(u, ad_value_bool(u->doc, false))); break;
    case 'J': /* BININT */
      AD_TRY(need(u, 4, &b));
      AD_TRY(push(u, ad_value_int(u->doc, (int32_t)fmt_le32(b))));
      break;
    case 'K': AD_TRY(need(u, 1, &b)); AD_TRY(push(u, ad_value_int(u->doc, b[0]))); break;
    case 'M': AD_TRY(need(u, 2, &b)); AD_TRY(push(u, ad_value_int(u->doc, fmt_le16(b)))); break;
    case 0x8a: /* LONG1 */
      AD_TRY(need(u, 1, &b));
      n = b[0];
      AD_TRY(need(u, n, &b));
      AD_TRY(push_long_bytes(u, b, n));
      break;
    case 0x8b: /* LONG4 */
      AD_TRY(need(u, 4, &b));
      iv = (int32_t)fmt_le32(b);
      if (iv < 0) return fmt_unpickle_fail(u, AD_EFORMAT, "negative LONG4 length");
      AD_TRY(need(u, (size_t)iv, &b));
      AD_TRY(push_long_bytes(u, b, (size_t)iv));
      break;
    case 'I': case 'L': { /* INT, LONG (text) */
      const char *s = NULL;
      AD_TRY(read_line(u, &s, &n));
      if (op == 'I' && n == 2 && s[0] == '0' && (s[1] == '0' || s[1] == '1')) {
        AD_TRY(push(u, ad_value_bool(u->doc, s[1] == '1')));
        break;
      }
      AD_TRY(parse_decimal(u, s, n, &iv));
      AD_TRY(push(u, ad_value_int(u->doc, iv)));
      break;
    }
    case 'G': { /* BINFLOAT: big-endian IEEE double */
      AD_TRY(need(u, 8, &b));
      uint64_t bits = 0;
      for (int i = 0; i < 8; i++) bits = bits << 8 | b[i];
      double d;
      memcpy(&d, &bits, sizeof d);
      AD_TRY(push(u, ad_value_float(u->doc, d)));
      break;
    }
    case 'F': { /* FLOAT (text) */
      const char *s = NULL;
      char buf[64];
      AD_TRY(read_line(u, &s, &n));
      if (n == 0 || n >= sizeof buf) return fmt_unpickle_fail(u, AD_EFORMAT, "bad float text");
      memcpy(buf, s, n);
      buf[n] = 0;
      char *endp;
      double d = strtod(buf, &endp);
      if (*endp && *endp != '\r') return fmt_unpickle_fail(u, AD_EFORMAT, "bad float text");
      AD_TRY(push(u, ad_value_float(u->doc, d)));
      break;
    }
    case 'X': case 'T': case 'B': { /* BINUNICODE, BINSTRING, BINBYTES: 4-byte length */
      AD_TRY(need(u, 4, &b));
      uint32_t len = fmt_le32(b);
      if (op == 'T' && (int32_t)len < 0) return fmt_unpickle_fail(u, AD_EFORMAT, "negative string length");
      AD_TRY(need(u, len, &b));
      AD_TRY(push(u, op == 'B' ? ad_value_bytes(u->doc, b, len) : ad_value_str(u->doc, (const char *)b, len)));
      break;
    }
    case 0x8c: case 'U': case 'C': { /* SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES */
      AD_TRY(need(u, 1, &b));
      size_t len = b[0];
      AD_TRY(need(u, len, &b));
      AD_TRY(push(u, op == 'C' ? ad_value_bytes(u->doc, b, len) : ad_value_str(u->doc, (const char *)b, len)));
      break;
    }
    case 0x8d: case 0x8e: case 0x96: { /* BINUNICODE8, BINBYTES8, BYTEARRAY8 */
      AD_TRY(need(u, 8, &b));
      uint64_t len = fmt_le64(b);
      if (len > (uint64_t)(u->end - u->p))
        return fmt_unpickle_fail(u, AD_EFORMAT, "string of %llu bytes runs past the end", (unsigned long long)len);
      AD_TRY(need(u, (size_t)len, &b));
      AD_TRY(push(u, op == 0x8d ? ad_value_str(u->doc, (const char *)b, (size_t)len) : ad_value_bytes(u->doc, b, (size_t)len)));
      break;
    }
    case 'V': case 'S': { /* UNICODE (raw-unicode-escape), STRING (repr): plain text only */
      const char *s = NULL;
      AD_TRY(read_line(u, &s, &n));
      if (op == 'S') {
        if (n < 2 || (s[0] != '\'' && s[0] != '"') || s[n - 1] != s[0])
          return fmt_unpickle_fail(u, AD_EFORMAT, "bad STRING argument");
        s++;
        n -= 2;
      }
      if (memchr(s, '\\', n)) return fmt_unpickle_fail(u, AD_EFORMAT, "escaped text strings are not supported");
      AD_TRY(push(u, ad_value_str(u->doc, s, n)));
      break;
    }
    case ')': AD_TRY(push(u, ad_value_tuple(u->doc))); break;
    case ']': AD_TRY(push(u, ad_value_list(u->doc))); break;
    case '}': AD_TRY(push(u, ad_value_dict(u->doc))); break;
    case 0x8f: AD_TRY(push(u, ad_value_list(u->doc))); break;   /* EMPTY_SET: sets become lists */
    case 't': case 'l': case 0x91: /* TUPLE, LIST, FROZENSET */
      AD_TRY(pop_mark(u, &items, &n));
      AD_TRY(seq_from(u, &v, op == 't' ? AD_V_TUPLE : AD_V_LIST, items, n));
      AD_TRY(push(u, v));
      break;
    case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
      size_t k = (size_t)(op - 0x84);
      if (u->sp - floor_sp(u) < k) return fmt_unpickle_fail(u, AD_EFORMAT, "stack underflow");
      AD_TRY(seq_from(u, &v, AD_V_TUPLE, u->stack + u->sp - k, k));
      u->sp -= k;
      AD_TRY(push(u, v));
      break;
    }
    case 'd': /* DICT */
      AD_TRY(pop_mark(u, &items, &n));
      if (n % 2) return fmt_unpickle_fail(u, AD_EFORMAT, "DICT with an odd number of items");
      v = ad_value_dict(u->doc);
      if (!v) return AD_ENOMEM;
      for (size_t i = 0; i < n; i += 2) AD_TRY(ad_value_dict_set(v, items[i], items[i + 1]));
      AD_TRY(push(u, v));
      break;
    case 'a': /* APPEND */
      AD_TRY(pop(u, &w));
      AD_TRY(top(u, &v));
      if (v->kind != AD_V_LIST) return fmt_unpickle_fail(u, AD_EFORMAT, "APPEND to a %s", ad_value_kind_name(v->kind));
      AD_TRY(ad_value_append(v, w));
      break;
    case 'e': case 0x90: /* APPENDS, ADDITEMS */
      AD_TRY(pop_mark(u, &items, &n));
      AD_TRY(top(u, &v));
      if (v->kind != AD_V_LIST) return fmt_unpickle_fail(u, AD_EFORMAT, "APPENDS to a %s", ad_value_kind_name(v->kind));
      for (size_t i = 0; i < n; i++) AD_TRY(ad_value_append(v, items[i]));
      break;
    case 's': /* SETITEM */
      AD_TRY(pop(u, &x));
      AD_TRY(pop(u, &w));
      AD_TRY(top(u, &v));
      if (v->kind != AD_V_DICT) return fmt_unpickle_fail(u, AD_EFORMAT, "SETITEM on a %s", ad_value_kind_name(v->kind));
      AD_TRY(ad_value_dict_set(v, w, x));
      break;
    case 'u': /* SETITEMS */
      AD_TRY(pop_mark(u, &items, &n));
      if (n % 2) return fmt_unpickle_fail(u, AD_EFORMAT, "SETITEMS with an odd number of items");
      AD_TRY(top(u, &v));
      if (v->kind != AD_V_DICT) return fmt_unpickle_fail(u, AD_EFORMAT, "SETITEMS on a %s", ad_value_kind_name(v->kind));
      for (size_t i = 0; i < n; i += 2) AD_TRY(ad_value_dict_set(v, items[i], items[i + 1]));
      break;
    case 'p': case 'g': { /* PUT, GET (text index) */
      const char *s = NULL;
      AD_TRY(read_line(u, &s, &n));
      AD_TRY(parse_decimal(u, s, n, &iv));
      if (iv < 0) return fmt_unpickle_fail(u, AD_EFORMAT, "negative memo index");
      AD_TRY(op == 'p' ? memo_put(u, (uint64_t)iv) : memo_get(u, (uint64_t)iv));
      break;
    }
    case 'q': AD_TRY(need(u, 1, &b)); AD_TRY(memo_put(u, b[0])); break;
    case 'r': AD_TRY(need(u, 4, &b)); AD_TRY(memo_put(u, fmt_le32(b))); break;
    case 'h': AD_TRY(need(u, 1, &b)); AD_TRY(memo_get(u, b[0])); break;
    case 'j': AD_TRY(need(u, 4, &b)); AD_TRY(memo_get(u, fmt_le32(b))); break;
    case 0x94: AD_TRY(memo_put(u, u->memo_count)); break;   /* MEMOIZE */
    case 'c': case 'i': { /* GLOBAL, INST: "module\nname\n" */
      const char *mod = NULL, *name = NULL;
      size_t ml = 0, nl = 0;
      AD_TRY(read_line(u, &mod, &ml));
      AD_TRY(read_line(u, &name, &nl));
      int gi = find_global(mod, ml, name, nl);
      if (gi < 0) return refuse_global(u, mod, ml, name, nl);
      if (op == 'i') return fmt_unpickle_fail(u, AD_EFORMAT, "INST opcode refused");
      v = fmt_value_new(u->doc, AD_V_GLOBAL);
      if (!v) return AD_ENOMEM;
      v->u.global = gi;
      AD_TRY(push(u, v));
      break;
    }
    case 0x93: /* STACK_GLOBAL */
      AD_TRY(pop(u, &w));
      AD_TRY(pop(u, &v));
      if (v->kind != AD_V_STR || w->kind != AD_V_STR)
        return fmt_unpickle_fail(u, AD_EFORMAT, "STACK_GLOBAL needs two strings");
      {
        int gi = find_global(v->u.str.ptr, v->u.str.len, w->u.str.ptr, w->u.str.len);
        if (gi < 0) return refuse_global(u, v->u.str.ptr, v->u.str.len, w->u.str.ptr, w->u.str.len);
        x = fmt_value_new(u->doc, AD_V_GLOBAL);
        if (!x) return AD_ENOMEM;
        x->u.global = gi;
        AD_TRY(push(u, x));
      }
      break;
    case 'R': /* REDUCE */
      AD_TRY(pop(u, &w));
      AD_TRY(pop(u, &v));
      if (v->kind != AD_V_GLOBAL) return fmt_unpickle_fail(u, AD_EFORMAT, "REDUCE of a %s (not callable)", ad_value_kind_name(v->kind));
      if (w->kind != AD_V_TUPLE) return fmt_unpickle_fail(u, AD_EFORMAT, "REDUCE arguments must be a tuple");
      AD_TRY(call_global(u, &x, v, w->u.seq.items, w->u.seq.n));
      AD_TRY(push(u, x));
      break;
    case 0x81: case 0x92: /* NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args) */
      if (op == 0x92) AD_TRY(pop(u, &x));   /* kwargs */
      AD_TRY(pop(u, &w));
      AD_TRY(pop(u, &v));
      if (v->kind != AD_V_GLOBAL) return fmt_unpickle_fail(u, AD_EFORMAT, "NEWOBJ of a %s", ad_value_kind_name(v->kind));
      if (GLOBALS[v->u.global].kind == G_ODICT) AD_TRY(push(u, ad_value_dict(u->doc)));
      else if (GLOBALS[v->u.global].kind == G_SET || GLOBALS[v->u.global].kind == G_FROZENSET) AD_TRY(push(u, ad_value_list(u->doc)));
      else return fmt_unpickle_fail(u, AD_EFORMAT, "NEWOBJ of %s.%s is not supported", GLOBALS[v->u.global].module,
                                    GLOBALS[v->u.global].name);
      break;
    case 'b': /* BUILD: object state (OrderedDict _metadata, tensor attributes) is dropped */
      AD_TRY(pop(u, &w));
      AD_TRY(top(u, &v));
      if (v->kind != AD_V_DICT && v->kind != AD_V_TSPEC && v->kind != AD_V_LIST)
        return fmt_unpickle_fail(u, AD_EFORMAT, "BUILD on a %s is not supported", ad_value_kind_name(v->kind));
      break;
    case 'Q': case 'P': /* BINPERSID, PERSID */
      if (op == 'Q') {
        AD_TRY(pop(u, &v));
      } else {
        const char *s = NULL;
        AD_TRY(read_line(u, &s, &n));
        v = ad_value_str(u->doc, s, n);
        if (!v) return AD_ENOMEM;
      }
      if (!u->o->persistent_load) return fmt_unpickle_fail(u, AD_EFORMAT, "persistent id in a plain pickle");
      AD_TRY(u->o->persistent_load(u->o->ctx, u, v, &w));
      AD_TRY(push(u, w));
      break;
    case 'o':
      return fmt_unpickle_fail(u, AD_EFORMAT, "OBJ opcode refused (builds an arbitrary object)");
    case 0x82: case 0x83: case 0x84:
      return fmt_unpickle_fail(u, AD_EFORMAT, "extension-registry opcode EXT%d refused", op == 0x82 ? 1 : op == 0x83 ? 2 : 4);
    case 0x97: case 0x98:
      return fmt_unpickle_fail(u, AD_EFORMAT, "out-of-band buffer opcode refused");
    default:
      return fmt_unpickle_fail(u, AD_EFORMAT, "unknown opcode 0x%02x", op);
    }
  }
}

ad_status fmt_unpickle(ad_value **out, ad_doc *doc, const uint8_t *data, size_t len, size_t *consumed,
                       const fmt_unpickle_opts *o) {
  fmt_unpickler u;
  memset(&u, 0, sizeof u);
  u.doc = doc;
  u.start = u.p = data;
  u.end = data + len;
  u.o = o;
  u.memo_max = len + 16;   /* every stack or memo slot costs at least one input byte */
  ad_value *res = NULL;
  ad_status st = run(&u, &res);
  if (st == AD_ENOMEM && !strstr(ad_last_error(), "load '"))
    st = fmt_unpickle_fail(&u, AD_ENOMEM, "out of memory");
  free(u.stack);
  free(u.marks);
  free(u.memo);
  if (st != AD_OK) return st;
  if (consumed) *consumed = (size_t)(u.p - u.start);
  *out = res;
  return AD_OK;
}

/* ---- finishing a loaded doc ---- */
static void set_str(ad_value *v, const char *s) {
  size_t n = strlen(s);
  char *p = malloc(n + 1);
  if (p) memcpy(p, s, n + 1);
  v->kind = AD_V_STR;
  v->u.str.ptr = p;
  v->u.str.len = p ? n : 0;
}

ad_status fmt_pickle_finalize(ad_doc *doc, const char *name) {
  for (ad_value *v = fmt_doc_first(doc); v; v = v->next_alloc) {
    if (v->kind != AD_V_TSPEC) continue;
    fmt_tensor_spec *ts = v->priv;
    fmt_storage_info *si = ts->storage->priv;
    if (!si->storage) return fmt_fail(name, AD_EFORMAT, "storage '%s' has no data", si->key ? si->key : "?");
    ad_tensor *t;
    AD_TRY(ad_tensor_from_storage(&t, si->storage, ts->offset + si->elem_offset, ts->ndim, ts->shape, ts->strides,
                                  (ad_dtype)si->dtype));
    t->requires_grad = ts->requires_grad;
    v->kind = AD_V_TENSOR;
    v->u.tensor = t;
  }
  for (ad_value *v = fmt_doc_first(doc); v; v = v->next_alloc) {
    if (v->kind == AD_V_GLOBAL) {
      const global_def *g = &GLOBALS[v->u.global];
      char buf[96];
      if (g->kind == G_DTYPE) snprintf(buf, sizeof buf, "%s", g->label);
      else snprintf(buf, sizeof buf, "%s.%s", g->module, g->name);
      set_str(v, buf);
      if (!v->u.str.ptr) return fmt_fail(name, AD_ENOMEM, "out of memory");
    } else if (v->kind == AD_V_STORAGE) {
      /* a bare storage (not behind a tensor) becomes a 1-D tensor over it */
      fmt_storage_info *si = v->priv;
      if (!si->dtype_ok) return fmt_fail(name, AD_EDTYPE, "storage '%s' has type %s, which advdiff does not support",
                                         si->key ? si->key : "?", si->type_name);
      if (!si->storage) return fmt_fail(name, AD_EFORMAT, "storage '%s' has no data", si->key ? si->key : "?");
      int64_t shape[1] = {(int64_t)si->numel};
      ad_tensor *t;
      AD_TRY(ad_tensor_from_storage(&t, si->storage, si->elem_offset, 1, shape, NULL, si->dtype));
      v->kind = AD_V_TENSOR;
      v->u.tensor = t;
    }
  }
  return AD_OK;
}

int fmt_pickle_storage_class(const ad_value *g, ad_dtype *dt, bool *ok, size_t *esize, const char **name) {
  if (g->kind != AD_V_GLOBAL || GLOBALS[g->u.global].kind != G_STORAGE) return 0;
  const global_def *d = &GLOBALS[g->u.global];
  *ok = d->dtype >= 0;
  *dt = d->dtype >= 0 ? (ad_dtype)d->dtype : AD_U8;
  *esize = (size_t)d->esize;
  *name = d->name;
  return 1;
}

/* ---- the pickler ---- */
typedef struct {
  fmt_buf *b;
  fmt_storage_key_fn key_of;
  void *ctx;
  uint32_t next_memo;
} pickler;

static void p_op(pickler *w, uint8_t op) { fmt_buf_byte(w->b, op); }

static void p_int(pickler *w, int64_t v) {
  if (v >= 0 && v < 256) { p_op(w, 'K'); fmt_buf_byte(w->b, (uint8_t)v); }
  else if (v >= 0 && v < 65536) { p_op(w, 'M'); fmt_buf_le16(w->b, (uint16_t)v); }
  else if (v >= INT32_MIN && v <= INT32_MAX) { p_op(w, 'J'); fmt_buf_le32(w->b, (uint32_t)(int32_t)v); }
  else { p_op(w, 0x8a); fmt_buf_byte(w->b, 8); fmt_buf_le64(w->b, (uint64_t)v); }
}

/* BINUNICODE even for short strings: SHORT_BINUNICODE is a protocol-4 opcode
 * that torch.load(weights_only=True) of torch 1.13 does not know */
static void p_str(pickler *w, const char *s, size_t n, bool bytes) {
  if (!bytes && fmt_utf8_valid((const unsigned char *)s, n)) {
    if (n <= 0xFFFFFFFFu) { p_op(w, 'X'); fmt_buf_le32(w->b, (uint32_t)n); }
    else { p_op(w, 0x8d); fmt_buf_le64(w->b, n); }
  } else {
    if (n < 256) { p_op(w, 'C'); fmt_buf_byte(w->b, (uint8_t)n); }
    else if (n <= 0xFFFFFFFFu) { p_op(w, 'B'); fmt_buf_le32(w->b, (uint32_t)n); }
    else { p_op(w, 0x8e); fmt_buf_le64(w->b, n); }
  }
  fmt_buf_put(w->b, s, n);
}

static void p_global(pickler *w, const char *mod, const char *name) {
  p_op(w, 'c');
  fmt_buf_printf(w->b, "%s\n%s\n", mod, name);
}

static void p_memoize(pickler *w, ad_value *v) {
  uint32_t id = w->next_memo++;
  if (id < 256) { p_op(w, 'q'); fmt_buf_byte(w->b, (uint8_t)id); }
  else { p_op(w, 'r'); fmt_buf_le32(w->b, id); }
  v->mark = id + 1;
}

static const char *storage_class(ad_dtype dt) {
  switch (dt) {
  case AD_F32: return "FloatStorage";
  case AD_F64: return "DoubleStorage";
  case AD_F16: return "HalfStorage";
  case AD_BF16: return "BFloat16Storage";
  case AD_I64: return "LongStorage";
  case AD_I32: return "IntStorage";
  case AD_U8: return "ByteStorage";
  case AD_BOOL: return "BoolStorage";
  default: return NULL;
  }
}

static ad_status p_value(pickler *w, ad_value *v) {
  if (v->mark) {   /* written before: refer to it through the memo */
    uint32_t id = v->mark - 1;
    if (id < 256) { p_op(w, 'h'); fmt_buf_byte(w->b, (uint8_t)id); }
    else { p_op(w, 'j'); fmt_buf_le32(w->b, id); }
    return AD_OK;
  }
  switch (v->kind) {
  case AD_V_NONE: p_op(w, 'N'); break;
  case AD_V_BOOL: p_op(w, v->u.b ? 0x88 : 0x89); break;
  case AD_V_INT: p_int(w, v->u.i); break;
  case AD_V_FLOAT: {
    uint64_t bits;
    memcpy(&bits, &v->u.f, sizeof bits);
    p_op(w, 'G');
    for (int i = 7; i >= 0; i--) fmt_buf_byte(w->b, (uint8_t)(bits >> (8 * i)));
    break;
  }
  case AD_V_STR: case AD_V_BYTES: p_str(w, v->u.str.ptr, v->u.str.len, v->kind == AD_V_BYTES); break;
  case AD_V_LIST:
    p_op(w, ']');
    p_memoize(w, v);
    for (size_t i = 0; i < v->u.seq.n; i += 1000) {
      p_op(w, '(');
      for (size_t j = i; j < v->u.seq.n && j < i + 1000; j++) AD_TRY(p_value(w, v->u.seq.items[j]));
      p_op(w, 'e');
    }
    break;
  case AD_V_TUPLE:
    p_op(w, '(');
    for (size_t i = 0; i < v->u.seq.n; i++) AD_TRY(p_value(w, v->u.seq.items[i]));
    p_op(w, 't');
    p_memoize(w, v);
    break;
  case AD_V_DICT:
    p_global(w, "collections", "OrderedDict");
    p_op(w, ')');
    p_op(w, 'R');
    p_memoize(w, v);
    for (size_t i = 0; i < v->u.dict.n; i += 1000) {
      p_op(w, '(');
      for (size_t j = i; j < v->u.dict.n && j < i + 1000; j++) {
        AD_TRY(p_value(w, v->u.dict.keys[j]));
        AD_TRY(p_value(w, v->u.dict.vals[j]));
      }
      p_op(w, 'u');
    }
    break;
  case AD_V_TENSOR: {
    ad_tensor *t = v->u.tensor;
    const char *cls = storage_class(t->dtype);
    if (!cls) return AD_FAIL(AD_EDTYPE, "save: dtype %s cannot be written to a torch checkpoint", ad_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim; i++)
      if (t->strides[i] < 0) return AD_FAIL(AD_EINVAL, "save: tensor with a negative stride");
    int64_t key;
    AD_TRY(w->key_of(w->ctx, t, &key));
    size_t es = ad_dtype_size(t->dtype);
    p_global(w, "torch._utils", "_rebuild_tensor_v2");
    p_op(w, '(');
    p_op(w, '(');
    p_str(w, "storage", 7, false);
    p_global(w, "torch", cls);
    char kb[32];
    int kn = snprintf(kb, sizeof kb, "%lld", (long long)key);
    p_str(w, kb, (size_t)kn, false);
    p_str(w, "cpu", 3, false);
    p_int(w, (int64_t)(t->storage->nbytes / es));
    p_op(w, 't');
    p_op(w, 'Q');
    p_int(w, t->offset);
    p_op(w, '(');
    for (int i = 0; i < t->ndim; i++) p_int(w, t->shape[i]);
    p_op(w, 't');
    p_op(w, '(');
    for (int i = 0; i < t->ndim; i++) p_int(w, t->strides[i]);
    p_op(w, 't');
    p_op(w, t->requires_grad ? 0x88 : 0x89);
    p_global(w, "collections", "OrderedDict");
    p_op(w, ')');
    p_op(w, 'R');
    p_op(w, 't');
    p_op(w, 'R');
    p_memoize(w, v);
    break;
  }
  default:
    return AD_FAIL(AD_EINVAL, "save: a %s cannot be pickled", ad_value_kind_name(v->kind));
  }
  return w->b->oom ? AD_FAIL(AD_ENOMEM, "save: out of memory pickling") : AD_OK;
}

static void clear_marks(ad_value *v) {
  if (!v->mark) return;
  v->mark = 0;
  if (v->kind == AD_V_LIST || v->kind == AD_V_TUPLE) {
    for (size_t i = 0; i < v->u.seq.n; i++) clear_marks(v->u.seq.items[i]);
  } else if (v->kind == AD_V_DICT) {
    for (size_t i = 0; i < v->u.dict.n; i++) { clear_marks(v->u.dict.keys[i]); clear_marks(v->u.dict.vals[i]); }
  }
}

ad_status fmt_pickle_dump(fmt_buf *buf, const ad_value *root, fmt_storage_key_fn key_of, void *ctx) {
  /* bounded depth and no cycles, so the recursion below is bounded too */
  AD_TRY(ad_value_check_tree(root, 64));
  pickler w = {buf, key_of, ctx, 0};
  p_op(&w, 0x80);
  fmt_buf_byte(buf, 2);
  ad_status st = p_value(&w, (ad_value *)root);
  clear_marks((ad_value *)root);
  if (st != AD_OK) return st;
  p_op(&w, '.');
  return buf->oom ? AD_FAIL(AD_ENOMEM, "save: out of memory pickling") : AD_OK;
}
