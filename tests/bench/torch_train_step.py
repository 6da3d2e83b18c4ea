"""The PyTorch twin of bench_train_step.lua: same net, same step, same threads."""
import sys, time
import torch
import torch.nn as nn

batch, C, steps, warmup, threads = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
torch.manual_seed(0)

def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

net = nn.Sequential(block(3, C), block(C, C), nn.AvgPool2d(2), block(C, 2 * C), block(2 * C, 2 * C),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * C, 10))
x = torch.randn(batch, 3, 32, 32)
y = torch.randint(0, 10, (batch,))
params = list(net.parameters())

def step():
    loss = nn.functional.cross_entropy(net(x), y)
    for p in params:
        p.grad = None
    loss.backward()
    with torch.no_grad():
        for p in params:
            p.copy_(p - p.grad * 0.01)
    return loss.item()

for _ in range(warmup):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
print("ms_per_step %.3f" % ((time.perf_counter() - t0) / steps * 1000))
