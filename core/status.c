/* status.c: the thread-local error message behind ad_last_error(). The message
 * is what a Lua user sees, so it carries no source location unless
 * AD_DEBUG_ERRORS is set in the environment. */
#include "status.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024];

ad_status ad_fail_at(const char *file, int line, ad_status code, const char *fmt, ...) {
  static int debug = -1;
  if (debug < 0) debug = getenv("AD_DEBUG_ERRORS") != NULL;
  int n = 0;
  if (debug) n = snprintf(last_error, sizeof last_error, "%s:%d: ", file, line);
  if (n < 0 || n >= (int)sizeof last_error) n = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
  va_end(ap);
  return code;
}

ad_status ad_fail_context(ad_status code, const char *fmt, ...) {
  char prefix[256], old[sizeof last_error];
  memcpy(old, last_error, sizeof old);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  snprintf(last_error, sizeof last_error, "%s: %s", prefix, old);
  return code;
}

const char *ad_last_error(void) { return last_error[0] ? last_error : "unknown error"; }

const char *ad_status_name(ad_status s) {
  switch (s) {
  case AD_OK: return "ok";
  case AD_EINVAL: return "invalid argument";
  case AD_ESHAPE: return "shape mismatch";
  case AD_EDTYPE: return "dtype error";
  case AD_EDEVICE: return "device error";
  case AD_ENOMEM: return "out of memory";
  case AD_ENOTIMPL: return "not implemented";
  case AD_ECUDA: return "CUDA error";
  case AD_EIO: return "I/O error";
  case AD_EFORMAT: return "format error";
  case AD_ECALLBACK: return "callback error";
  }
  return "unknown status";
}
