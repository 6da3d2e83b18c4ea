"""torch_conv.py: PyTorch's CPU conv2d speed at ADM's ResBlock shapes, the
yardstick for advdiff's bench_linalg.lua: the same work (batch 8, 3x3,
padding 1, C -> C: 128 channels at 32x32, 256 at 16x16, with bias), the same
thread count, the same timing method (best of 4 blocks of 5 calls) and the
same output lines. Run: /usr/bin/python3 tests/bench/torch_conv.py [threads]"""
import sys
import time

import torch

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(THREADS)
torch.manual_seed(0)

SHAPES = [("c128_32x32", 8, 128, 32, 32), ("c256_16x16", 8, 256, 16, 16)]
BLOCKS, PER_BLOCK = 4, 5


def best_time(fn):
    fn()  # warm-up: oneDNN primitive creation, allocator
    fn()
    best = float("inf")
    for _ in range(BLOCKS):
        t0 = time.perf_counter()
        for _ in range(PER_BLOCK):
            fn()
        best = min(best, (time.perf_counter() - t0) / PER_BLOCK)
    return best


for name, n, c, h, w in SHAPES:
    x = torch.randn(n, c, h, w, requires_grad=True)
    wt = torch.randn(c, c, 3, 3, requires_grad=True)
    b = torch.randn(c, requires_grad=True)
    gy = torch.randn(n, c, h, w)
    flop = 2.0 * n * c * c * 9 * h * w

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, wt, b, padding=1)

    def fwdbwd():
        x.grad = wt.grad = b.grad = None
        y = torch.nn.functional.conv2d(x, wt, b, padding=1)
        y.backward(gy)

    tf = best_time(fwd)
    tb = best_time(fwdbwd)
    print("%-12s fwd %8.2f ms %7.1f GFLOP/s   fwd+bwd %8.2f ms %7.1f GFLOP/s"
          % (name, tf * 1e3, flop / tf / 1e9, tb * 1e3, 3 * flop / tb / 1e9))
    print("RESULT %s_fwd_ms %.3f" % (name, tf * 1e3))
    print("RESULT %s_fwdbwd_ms %.3f" % (name, tb * 1e3))
