/* status.h: how the core reports failure.
 * Core functions return an ad_status and leave a message in a thread-local
 * buffer; they never longjmp, exit or abort, so bindings can release what they
 * hold before raising a Lua error. */
#ifndef AD_STATUS_H
#define AD_STATUS_H

typedef enum {
  AD_OK = 0,
  AD_EINVAL,    /* bad argument value */
  AD_ESHAPE,    /* shapes do not fit */
  AD_EDTYPE,    /* dtype not supported or mismatched */
  AD_EDEVICE,   /* device mismatch or device unavailable */
  AD_ENOMEM,    /* allocation failed */
  AD_ENOTIMPL,  /* op or kernel missing for this device/dtype */
  AD_ECUDA,     /* CUDA runtime / cuBLAS / cuDNN error */
  AD_EIO,       /* file could not be read or written */
  AD_EFORMAT,   /* file contents malformed */
  AD_ECALLBACK  /* a user callback (Lua autograd function) failed */
} ad_status;

#if defined(__GNUC__)
#define AD_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define AD_PRINTF(a, b)
#endif

/* Records "msg" as the last error and returns code. */
ad_status ad_fail_at(const char *file, int line, ad_status code, const char *fmt, ...) AD_PRINTF(4, 5);
/* The last recorded message of this thread; valid until the next failure. */
const char *ad_last_error(void);
/* Prefix the current message with "ctx: " (used when an inner failure needs
 * the outer operation's name). Returns code. */
ad_status ad_fail_context(ad_status code, const char *fmt, ...) AD_PRINTF(2, 3);
const char *ad_status_name(ad_status s);

#define AD_FAIL(code, ...) ad_fail_at(__FILE__, __LINE__, (code), __VA_ARGS__)
#define AD_TRY(expr) do { ad_status s_ = (expr); if (s_ != AD_OK) return s_; } while (0)
#define AD_TRY_GOTO(st, expr, label) do { if (((st) = (expr)) != AD_OK) goto label; } while (0)

#endif
