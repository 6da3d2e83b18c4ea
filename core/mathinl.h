/* mathinl.h: scalar math shared by the CPU backend and the CUDA kernels, so
 * that both compute the same formula (silu, gelu, sigmoid, softplus, the
 * f16/bf16 conversions, Philox). Header-only; AD_HD marks functions callable
 * from host and device code under nvcc. */
#ifndef AD_MATHINL_H
#define AD_MATHINL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define AD_HD static __host__ __device__ __forceinline__
#else
#define AD_HD static inline
#endif

/* ---- bit casts ---------------------------------------------------------- */
AD_HD uint32_t ad_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
AD_HD float ad_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- bf16: top 16 bits of an f32, rounded to nearest even ----------------- */
AD_HD uint16_t ad_f32_to_bf16(float f) {
  uint32_t u = ad_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN (quiet) */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
AD_HD float ad_bf16_to_f32(uint16_t h) { return ad_bits_f32((uint32_t)h << 16); }

/* ---- f16 (IEEE binary16), round to nearest even, NaN/inf preserved -------- */
AD_HD uint16_t ad_f32_to_f16(float f) {
  uint32_t x = ad_f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu)); /* NaN */
  if (ax >= 0x47800000u) {                    /* >= 65536: overflow or inf */
    /* values that round below 65520 are handled by the normal path */
    return (uint16_t)(sign | 0x7c00u);
  }
  if (ax >= 0x38800000u) {                    /* normal f16 range (>= 2^-14) */
    uint32_t mant = ax & 0x7fffffu;
    uint32_t exp = (ax >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++; /* may carry into exp: correct */
    return (uint16_t)(sign | h);
  }
  if (ax < 0x33000000u) return (uint16_t)sign; /* < 2^-25: rounds to zero */
  /* subnormal f16 */
  uint32_t exp = ax >> 23;
  uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - exp;                 /* 14 - (exp - 127) + 13 - 1 */
  uint32_t h = mant >> shift;
  uint32_t rest = mant & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}
AD_HD float ad_f16_to_f32(uint16_t h) {
  uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) u = sign | 0x7f800000u | (mant << 13);        /* inf / NaN */
  else if (exp != 0) u = sign | ((exp + 112u) << 23) | (mant << 13);
  else if (mant == 0) u = sign;
  else {                                                          /* subnormal */
    exp = 113;
    while (!(mant & 0x400u)) { mant <<= 1; exp--; }
    u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  return ad_bits_f32(u);
}

/* exp for f32 without a libm call, so CPU loops over it vectorise (with
 * -fno-trapping-math, which cpu_elementwise/reduce/softmax set for their files): x = n ln2 + r
 * with |r| <= ln2/2, Cephes expf's polynomial for e^r, and 2^n assembled in
 * the exponent bits in two halves (each a normal float, so results that
 * underflow to subnormals round correctly). Max error 1.4 ulp; overflows to
 * inf above 88.72, underflows to 0; NaN propagates. The integer n is read
 * from the bits of the rounded sum, so a NaN never meets a float-to-int
 * conversion (undefined in C). */
AD_HD float ad_fast_expf(float x) {
  float xs = x > 89.0f ? 89.0f : x;
  xs = xs < -105.0f ? -105.0f : xs; /* e^-105 rounds to 0 */
  const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  const float t = xs * 1.44269504088896341f + magic;
  const float n = t - magic;
  const int32_t ni = (int32_t)(ad_f32_bits(t) - 0x4B400000u), n1 = ni >> 1, n2 = ni - n1;
  float r = xs - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  return e * ad_bits_f32((uint32_t)(n1 + 127) << 23) * ad_bits_f32((uint32_t)(n2 + 127) << 23);
}

/* ---- activations (f64 versions are what gradcheck exercises) ----------- */
AD_HD double ad_sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}
AD_HD float ad_sigmoidf(float x) {
  if (x >= 0) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}
AD_HD double ad_silu(double x) { return x * ad_sigmoid(x); }
AD_HD float ad_siluf(float x) { return x * ad_sigmoidf(x); }
AD_HD double ad_silu_grad(double x) { double s = ad_sigmoid(x); return s * (1.0 + x * (1.0 - s)); }
AD_HD float ad_silu_gradf(float x) { float s = ad_sigmoidf(x); return s * (1.0f + x * (1.0f - s)); }
/* gelu: the exact (erf) form, PyTorch's default */
AD_HD double ad_gelu(double x) { return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440)); }
AD_HD float ad_geluf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }
AD_HD double ad_gelu_grad(double x) {
  return 0.5 * (1.0 + erf(x * 0.70710678118654752440)) + x * 0.39894228040143267794 * exp(-0.5 * x * x);
}
AD_HD float ad_gelu_gradf(float x) {
  return 0.5f * (1.0f + erff(x * 0.70710678118654752440f)) + x * 0.39894228040143267794f * expf(-0.5f * x * x);
}
/* softplus(x) = log(1 + e^x), stable for large |x| (PyTorch: threshold 20) */
AD_HD double ad_softplus(double x) { return x > 20.0 ? x : log1p(exp(x)); }
AD_HD float ad_softplusf(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* ---- Philox4x32-10 (Salmon et al. 2011), counter-based ------------------- */
typedef struct { uint32_t v[4]; } ad_philox_ctr;

AD_HD void ad_philox_mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
  uint64_t p = (uint64_t)a * (uint64_t)b;
  *hi = (uint32_t)(p >> 32);
  *lo = (uint32_t)p;
}

/* One block: key = seed (64 bits), counter = (offset as 64 bits, subsequence
 * 64 bits). Returns 4 uniformly distributed 32-bit words. */
AD_HD ad_philox_ctr ad_philox4x32_10(uint64_t seed, uint64_t counter_lo, uint64_t counter_hi) {
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
  uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
  for (int r = 0; r < 10; r++) {
    uint32_t hi0, lo0, hi1, lo1;
    ad_philox_mulhilo(0xD2511F53u, c0, &hi0, &lo0);
    ad_philox_mulhilo(0xCD9E8D57u, c2, &hi1, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  ad_philox_ctr out = {{c0, c1, c2, c3}};
  return out;
}

/* uniform in (0, 1]: never 0, so log() in Box-Muller is finite */
AD_HD double ad_u32_to_unit_open0(uint32_t a, uint32_t b) {
  uint64_t x = ((uint64_t)a << 21) ^ (uint64_t)(b >> 11);   /* 53 bits */
  x &= ((uint64_t)1 << 53) - 1;
  return ((double)x + 1.0) * (1.0 / 9007199254740992.0);
}
/* uniform in [0, 1) */
AD_HD double ad_u32_to_unit(uint32_t a, uint32_t b) {
  uint64_t x = (((uint64_t)a << 32) | b) >> 11;
  return (double)x * (1.0 / 9007199254740992.0);
}

/* Element i of a stream (seed, offset): uniform [0,1). Each Philox block gives
 * two doubles; element i uses block (offset + i/2). */
AD_HD double ad_philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  ad_philox_ctr r = ad_philox4x32_10(seed, offset + (i >> 1), 0);
  return (i & 1) ? ad_u32_to_unit(r.v[2], r.v[3]) : ad_u32_to_unit(r.v[0], r.v[1]);
}
/* Element i of a normal stream: Box-Muller on one block gives two normals. */
AD_HD double ad_philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  ad_philox_ctr r = ad_philox4x32_10(seed, offset + (i >> 1), 1);
  double u1 = ad_u32_to_unit_open0(r.v[0], r.v[1]);
  double u2 = ad_u32_to_unit(r.v[2], r.v[3]);
  double rad = sqrt(-2.0 * log(u1));
  double th = 6.283185307179586476925 * u2;
  return (i & 1) ? rad * sin(th) : rad * cos(th);
}
/* Elements 2j and 2j+1 of the uniform / normal streams from one Philox block
 * (what the per-element functions above compute, at half the cost). */
AD_HD void ad_philox_uniform_pair(uint64_t seed, uint64_t offset, uint64_t j, double *a, double *b) {
  ad_philox_ctr r = ad_philox4x32_10(seed, offset + j, 0);
  *a = ad_u32_to_unit(r.v[0], r.v[1]);
  *b = ad_u32_to_unit(r.v[2], r.v[3]);
}
AD_HD void ad_philox_normal_pair(uint64_t seed, uint64_t offset, uint64_t j, double *a, double *b) {
  ad_philox_ctr r = ad_philox4x32_10(seed, offset + j, 1);
  double u1 = ad_u32_to_unit_open0(r.v[0], r.v[1]);
  double u2 = ad_u32_to_unit(r.v[2], r.v[3]);
  double rad = sqrt(-2.0 * log(u1));
  double th = 6.283185307179586476925 * u2;
  *a = rad * cos(th);
  *b = rad * sin(th);
}
/* 64 random bits for element i (randint, randperm) */
AD_HD uint64_t ad_philox_bits(uint64_t seed, uint64_t offset, uint64_t i) {
  ad_philox_ctr r = ad_philox4x32_10(seed, offset + (i >> 1), 2);
  return (i & 1) ? (((uint64_t)r.v[2] << 32) | r.v[3]) : (((uint64_t)r.v[0] << 32) | r.v[1]);
}

#endif
