/* minitest.h: a dependency-free test harness for the C tests. A failed check
 * prints file:line and the expression, and the test binary exits 1. */
#ifndef MINITEST_H
#define MINITEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int mt_failed, mt_checks;
#define MT_SKIP 77
#define MT_COUNTOF(a) (sizeof(a) / sizeof((a)[0]))
#define MT_CHECK(cond) do { mt_checks++; if (!(cond)) { mt_failed++; \
  fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define MT_OK(expr) do { mt_checks++; ad_status s_ = (expr); if (s_ != AD_OK) { mt_failed++; \
  fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, ad_last_error()); } } while (0)
#define MT_FAILS(expr, code) do { mt_checks++; ad_status s_ = (expr); if (s_ != (code)) { mt_failed++; \
  fprintf(stderr, "%s:%d: %s returned %d, expected %d\n", __FILE__, __LINE__, #expr, (int)s_, (int)(code)); } } while (0)
#define MT_NEAR(a, b, tol) do { mt_checks++; double a_ = (a), b_ = (b); if (!(fabs(a_ - b_) <= (tol))) { mt_failed++; \
  fprintf(stderr, "%s:%d: %s = %.10g, expected %.10g (tol %g)\n", __FILE__, __LINE__, #a, a_, b_, (double)(tol)); } } while (0)
static inline int mt_report(const char *name) {
  printf("%s: %d checks, %d failed\n", name, mt_checks, mt_failed);
  return mt_failed ? 1 : 0;
}
#endif
