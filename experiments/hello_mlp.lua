--- hello_mlp: the smallest end-to-end use of the core. A two-layer MLP
-- learns to tell three interleaved spirals apart, trained with Adam written
-- in a few lines of Lua on top of the tensor ops and autograd. Prints the
-- loss and accuracy as they go; the loss must fall from ~1.1 to below 0.2.
--   build/advdiff experiments/hello_mlp.lua [--set steps=400 --set lr=0.01]
local ad = require "advdiff"
local cfg = ad.config{ steps = 300, hidden = 64, lr = 0.02, points = 300, seed = 0, log_every = 25 }

ad.manual_seed(cfg.seed)
local K, N = 3, cfg.points                       -- classes, points per class

-- three spirals in 2-D: class k winds from the centre outwards
local x, y
do
  local xs, ys = {}, {}
  local rl = ad.linspace(0.05, 1, N):tolist()
  local noise = ad.randn(K * N, {dtype = "f64"}):tolist()
  for k = 0, K - 1 do
    for i = 1, N do
      local t = (k * 4 + 4 * rl[i]) + 0.2 * noise[k * N + i]
      xs[#xs + 1] = { rl[i] * math.sin(t), rl[i] * math.cos(t) }
      ys[#ys + 1] = k
    end
  end
  x, y = ad.tensor(xs, {dtype = "f32"}), ad.tensor(ys)
end

local H = cfg.hidden
local W1 = (ad.randn(H, 2) * math.sqrt(2 / 2)):detach(); W1.requires_grad = true
local b1 = ad.zeros(H, {requires_grad = true})
local W2 = (ad.randn(K, H) * math.sqrt(1 / H)):detach(); W2.requires_grad = true
local b2 = ad.zeros(K, {requires_grad = true})
local params = { W1, b1, W2, b2 }

-- Adam, in Lua, on the core's ops
local m, v = {}, {}
for i, p in ipairs(params) do m[i] = ad.zeros_like(p); v[i] = ad.zeros_like(p) end
local b1_, b2_, eps = 0.9, 0.999, 1e-8

local function forward(inp)
  return ad.linear(ad.linear(inp, W1, b1):relu(), W2, b2)
end

local first, last
for step = 1, cfg.steps do
  local logits = forward(x)
  local loss = ad.cross_entropy(logits, y)
  for _, p in ipairs(params) do p.grad = nil end
  loss:backward()
  ad.no_grad(function()
    for i, p in ipairs(params) do
      local g = p.grad
      m[i] = m[i] * b1_ + g * (1 - b1_)
      v[i] = v[i] * b2_ + g * g * (1 - b2_)
      local mh = m[i] / (1 - b1_ ^ step)
      local vh = v[i] / (1 - b2_ ^ step)
      p:copy_(p - mh / (vh:sqrt() + eps) * cfg.lr)
    end
  end)
  local l = loss:item()
  first = first or l
  last = l
  if step % cfg.log_every == 0 or step == 1 then
    local acc = ad.no_grad(function() return forward(x):argmax(2):eq(y):float():mean():item() end)
    print(string.format("step %4d  loss %.4f  accuracy %.3f", step, l, acc))
  end
end
print(string.format("loss %.4f -> %.4f", first, last))
if not (last < first * 0.5) then error("the loss did not go down") end
