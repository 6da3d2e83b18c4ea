"""bench_load.py PATH REPEATS [cold|warm]: times torch.load of a state dict
(the PyTorch side of bench_load.lua). Prints one line per run:
"torch.load <s>" and "torch.load+sum <s>" (load, then one pass over every
tensor's data). "cold" drops the page cache before each load."""
import os
import sys
import time

import torch

path, repeats = sys.argv[1], int(sys.argv[2])
cold = len(sys.argv) > 3 and sys.argv[3] == "cold"
torch.set_num_threads(2)
for _ in range(repeats):
    if cold:
        os.system("sync")
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    t0 = time.perf_counter()
    sd = torch.load(path, map_location="cpu")
    t1 = time.perf_counter()
    s = 0.0
    for v in sd.values():
        s += float(v.sum())
    t2 = time.perf_counter()
    print(f"torch.load {t1 - t0:.4f}", flush=True)
    print(f"torch.load+sum {t2 - t0:.4f} tensors={len(sd)} checksum={s:.6g}", flush=True)
    del sd
