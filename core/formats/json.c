/* json.c: a strict, bounded JSON reader (RFC 8259) into ad_values, and string
 * escaping for writers. Used for safetensors headers, which come from files:
 * nesting is capped, numbers are range-checked, and every read is bounded by
 * the header length. */
#define _POSIX_C_SOURCE 200809L
#define AD_FORMATS_INTERNAL
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "formats.h"

#define JSON_MAX_DEPTH 32

typedef struct {
  const char *s, *p, *end;
  ad_doc *doc;
  const char *name;
  uint64_t base;
} jp;

static ad_status jfail(jp *j, const char *msg) {
  return fmt_fail(j->name, AD_EFORMAT, "header JSON offset %llu: %s", (unsigned long long)(j->base + (uint64_t)(j->p - j->s)), msg);
}

static void ws(jp *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static ad_status read_hex4(jp *j, uint32_t *out) {
  if (j->end - j->p < 4) return jfail(j, "truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval(j->p[i]);
    if (h < 0) return jfail(j, "bad \\u escape");
    v = v << 4 | (uint32_t)h;
  }
  j->p += 4;
  *out = v;
  return AD_OK;
}

static void put_utf8(fmt_buf *b, uint32_t cp) {
  if (cp < 0x80) fmt_buf_byte(b, (uint8_t)cp);
  else if (cp < 0x800) { fmt_buf_byte(b, (uint8_t)(0xC0 | cp >> 6)); fmt_buf_byte(b, (uint8_t)(0x80 | (cp & 0x3F))); }
  else if (cp < 0x10000) {
    fmt_buf_byte(b, (uint8_t)(0xE0 | cp >> 12));
    fmt_buf_byte(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3F)));
    fmt_buf_byte(b, (uint8_t)(0x80 | (cp & 0x3F)));
  } else {
    fmt_buf_byte(b, (uint8_t)(0xF0 | cp >> 18));
    fmt_buf_byte(b, (uint8_t)(0x80 | ((cp >> 12) & 0x3F)));
    fmt_buf_byte(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3F)));
    fmt_buf_byte(b, (uint8_t)(0x80 | (cp & 0x3F)));
  }
}

static ad_status parse_string(jp *j, ad_value **out) {
  j->p++;   /* opening quote */
  fmt_buf b = {0};
  ad_status st = AD_OK;
  for (;;) {
    if (j->p >= j->end) { st = jfail(j, "unterminated string"); goto done; }
    unsigned char c = (unsigned char)*j->p;
    if (c == '"') { j->p++; break; }
    if (c < 0x20) { st = jfail(j, "control character in a string"); goto done; }
    if (c != '\\') {
      const char *q = j->p;
      while (q < j->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
      fmt_buf_put(&b, j->p, (size_t)(q - j->p));
      j->p = q;
      continue;
    }
    j->p++;
    if (j->p >= j->end) { st = jfail(j, "unterminated escape"); goto done; }
    char e = *j->p++;
    switch (e) {
    case '"': fmt_buf_byte(&b, '"'); break;
    case '\\': fmt_buf_byte(&b, '\\'); break;
    case '/': fmt_buf_byte(&b, '/'); break;
    case 'b': fmt_buf_byte(&b, '\b'); break;
    case 'f': fmt_buf_byte(&b, '\f'); break;
    case 'n': fmt_buf_byte(&b, '\n'); break;
    case 'r': fmt_buf_byte(&b, '\r'); break;
    case 't': fmt_buf_byte(&b, '\t'); break;
    case 'u': {
      uint32_t cp, lo;
      AD_TRY_GOTO(st, read_hex4(j, &cp), done);
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') { st = jfail(j, "unpaired surrogate"); goto done; }
        j->p += 2;
        AD_TRY_GOTO(st, read_hex4(j, &lo), done);
        if (lo < 0xDC00 || lo > 0xDFFF) { st = jfail(j, "unpaired surrogate"); goto done; }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        st = jfail(j, "unpaired surrogate");
        goto done;
      }
      put_utf8(&b, cp);
      break;
    }
    default: st = jfail(j, "bad escape"); goto done;
    }
  }
  if (b.oom) { st = fmt_fail(j->name, AD_ENOMEM, "out of memory"); goto done; }
  *out = ad_value_str(j->doc, b.p ? (const char *)b.p : "", b.n);
  if (!*out) st = AD_ENOMEM;
done:
  fmt_buf_free(&b);
  return st;
}

static ad_status parse_number(jp *j, ad_value **out) {
  const char *q = j->p;
  bool is_float = false;
  if (q < j->end && *q == '-') q++;
  if (q >= j->end || *q < '0' || *q > '9') return jfail(j, "bad number");
  if (*q == '0' && q + 1 < j->end && q[1] >= '0' && q[1] <= '9') return jfail(j, "leading zero in a number");
  while (q < j->end && *q >= '0' && *q <= '9') q++;
  if (q < j->end && *q == '.') {
    is_float = true;
    q++;
    if (q >= j->end || *q < '0' || *q > '9') return jfail(j, "bad number");
    while (q < j->end && *q >= '0' && *q <= '9') q++;
  }
  if (q < j->end && (*q == 'e' || *q == 'E')) {
    is_float = true;
    q++;
    if (q < j->end && (*q == '+' || *q == '-')) q++;
    if (q >= j->end || *q < '0' || *q > '9') return jfail(j, "bad number");
    while (q < j->end && *q >= '0' && *q <= '9') q++;
  }
  size_t n = (size_t)(q - j->p);
  char buf[64];
  if (n >= sizeof buf) return jfail(j, "number too long");
  memcpy(buf, j->p, n);
  buf[n] = 0;
  if (!is_float) {
    bool neg = buf[0] == '-';
    uint64_t v = 0;
    for (size_t i = neg; i < n; i++) {
      if (v > (UINT64_MAX - 9) / 10) return jfail(j, "integer out of range");
      v = v * 10 + (uint64_t)(buf[i] - '0');
    }
    if ((!neg && v > (uint64_t)INT64_MAX) || (neg && v > (uint64_t)INT64_MAX + 1)) return jfail(j, "integer out of range");
    *out = ad_value_int(j->doc, neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v);
  } else {
    *out = ad_value_float(j->doc, strtod(buf, NULL));
  }
  j->p = q;
  return *out ? AD_OK : AD_ENOMEM;
}

static ad_status parse_value(jp *j, ad_value **out, int depth) {
  ws(j);
  if (j->p >= j->end) return jfail(j, "unexpected end");
  if (depth > JSON_MAX_DEPTH) return jfail(j, "nested too deeply");
  char c = *j->p;
  if (c == '{' || c == '[') {
    bool obj = c == '{';
    ad_value *v = obj ? ad_value_dict(j->doc) : ad_value_list(j->doc);
    if (!v) return AD_ENOMEM;
    j->p++;
    ws(j);
    if (j->p < j->end && *j->p == (obj ? '}' : ']')) { j->p++; *out = v; return AD_OK; }
    for (;;) {
      ad_value *k = NULL, *x;
      if (obj) {
        ws(j);
        if (j->p >= j->end || *j->p != '"') return jfail(j, "expected a string key");
        AD_TRY(parse_string(j, &k));
        ws(j);
        if (j->p >= j->end || *j->p != ':') return jfail(j, "expected ':'");
        j->p++;
      }
      AD_TRY(parse_value(j, &x, depth + 1));
      AD_TRY(obj ? ad_value_dict_set(v, k, x) : ad_value_append(v, x));
      ws(j);
      if (j->p >= j->end) return jfail(j, "unexpected end");
      if (*j->p == ',') { j->p++; continue; }
      if (*j->p == (obj ? '}' : ']')) { j->p++; break; }
      return jfail(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    *out = v;
    return AD_OK;
  }
  if (c == '"') return parse_string(j, out);
  if (c == '-' || (c >= '0' && c <= '9')) return parse_number(j, out);
  size_t left = (size_t)(j->end - j->p);
  if (left >= 4 && memcmp(j->p, "true", 4) == 0) { j->p += 4; *out = ad_value_bool(j->doc, true); }
  else if (left >= 5 && memcmp(j->p, "false", 5) == 0) { j->p += 5; *out = ad_value_bool(j->doc, false); }
  else if (left >= 4 && memcmp(j->p, "null", 4) == 0) { j->p += 4; *out = ad_value_none(j->doc); }
  else return jfail(j, "unexpected character");
  return *out ? AD_OK : AD_ENOMEM;
}

ad_status fmt_json_parse(ad_value **out, ad_doc *doc, const char *s, size_t len, const char *name, uint64_t base_offset) {
  jp j = {s, s, s + len, doc, name, base_offset};
  ad_value *v;
  AD_TRY(parse_value(&j, &v, 0));
  ws(&j);
  if (j.p != j.end) return jfail(&j, "trailing characters after the JSON value");
  *out = v;
  return AD_OK;
}

void fmt_json_string(fmt_buf *b, const char *s, size_t len) {
  fmt_buf_byte(b, '"');
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') { fmt_buf_byte(b, '\\'); fmt_buf_byte(b, c); }
    else if (c < 0x20) fmt_buf_printf(b, "\\u%04x", c);
    else fmt_buf_byte(b, c);
  }
  fmt_buf_byte(b, '"');
}
