"""bench_metrics.py: NumPy doing the same computation as advdiff's metrics, for
tests/bench/bench_metrics.lua (which writes the features and runs this).

Usage: python3 bench_metrics.py DIR K
DIR holds real.npy and fake.npy (N, D) float32. Prints RESULT lines:
  RESULT numpy_pr_s <seconds>      k-NN radii of both sets + the cross pass
  RESULT numpy_precision <p>  RESULT numpy_recall <r>
  RESULT numpy_fid_s <seconds>     np.mean/np.cov in f64 + the eigen formula
  RESULT numpy_fid <value>

Precision/recall is prdc's computation (clovaai/generative-evaluation-prdc)
with the distance matrix made block by block as ||a||^2 + ||b||^2 - 2ab from
an f32 matrix product, np.partition for the k-th neighbour (not a full
sort), in float32 as NumPy users (and prdc through sklearn) do. FID is the
eigendecomposition route advdiff takes (SciPy's sqrtm, pytorch-fid's route,
is not installed here): eigh(S1) -> A = sqrt(S1), eigvalsh(A S2 A).
"""
import sys
import time

import numpy as np

BLOCK = 1024


def knn_radii(x, k):
    n = x.shape[0]
    n2 = np.einsum("ij,ij->i", x, x)
    radii = np.empty(n, dtype=np.float32)
    for i0 in range(0, n, BLOCK):
        b = min(BLOCK, n - i0)
        d2 = n2[i0:i0 + b, None] + n2[None, :] - 2.0 * (x[i0:i0 + b] @ x.T)
        np.maximum(d2, 0, out=d2)
        # index 0 of each row is the point itself (distance 0): k-th other = index k
        radii[i0:i0 + b] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
    return radii


def precision_recall(real, fake, k):
    rr, rf = knn_radii(real, k), knn_radii(fake, k)
    nr2, nf2 = np.einsum("ij,ij->i", real, real), np.einsum("ij,ij->i", fake, fake)
    fake_in_real = np.zeros(fake.shape[0], dtype=bool)
    real_in_fake = np.zeros(real.shape[0], dtype=bool)
    for i0 in range(0, real.shape[0], BLOCK):
        b = min(BLOCK, real.shape[0] - i0)
        d2 = nr2[i0:i0 + b, None] + nf2[None, :] - 2.0 * (real[i0:i0 + b] @ fake.T)
        np.maximum(d2, 0, out=d2)
        d = np.sqrt(d2)
        fake_in_real |= (d <= rr[i0:i0 + b, None]).any(axis=0)
        real_in_fake[i0:i0 + b] = (d <= rf[None, :]).any(axis=1)
    return fake_in_real.mean(), real_in_fake.mean()


def fid(f1, f2):
    a, b = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    A = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = A @ s2 @ A
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum()


def main():
    d, k = sys.argv[1], int(sys.argv[2])
    real, fake = np.load(d + "/real.npy"), np.load(d + "/fake.npy")
    t0 = time.perf_counter()
    p, r = precision_recall(real, fake, k)
    t1 = time.perf_counter()
    print(f"RESULT numpy_pr_s {t1 - t0:.3f}")
    print(f"RESULT numpy_precision {p:.6f}")
    print(f"RESULT numpy_recall {r:.6f}")
    t0 = time.perf_counter()
    f = fid(real, fake)
    t1 = time.perf_counter()
    print(f"RESULT numpy_fid_s {t1 - t0:.3f}")
    print(f"RESULT numpy_fid {f:.10f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
