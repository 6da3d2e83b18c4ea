-- Losses: mse, l1, binary_cross_entropy_with_logits, cross_entropy, nll_loss.
-- Forward against naive Lua references and closed forms for every reduction,
-- gradchecks for every differentiable input, and error messages.
local ad = require "advdiff"
local T = require "advdiff.testing"

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern, 1, true), "error '" .. tostring(err) .. "' does not contain '" .. pattern .. "'")
end

local gen = ad.Generator(31337)
local function randn(shape, dtype, requires_grad)
  local t = ad.randn(shape, { dtype = dtype or "f64", generator = gen })
  if requires_grad then t.requires_grad = true end
  return t
end
local function rand(shape, dtype, requires_grad)
  local t = ad.rand(shape, { dtype = dtype or "f64", generator = gen })
  if requires_grad then t.requires_grad = true end
  return t
end
local function long(t) return ad.tensor(t, { dtype = "i64" }) end

-- reduce a table of elementwise losses like the op does
local function reduce(vals, r, denom)
  if r == "none" then return vals end
  local s = 0
  for _, v in ipairs(vals) do s = s + v end
  if r == "sum" then return s end
  return s / (denom or #vals)
end

local function check(out, want, tol, msg)
  if type(want) == "number" then
    assert(#out:shape() == 0, (msg or "") .. ": a reduced loss is 0-d")
    T.assert_close(out:item(), want, tol, msg)
  else
    assert(out:numel() == #want, (msg or "") .. ": element count")
    for i = 1, #want do T.assert_close(out:_getflat(i), want[i], tol, msg) end
  end
end

test("mse_loss and l1_loss: every reduction, broadcast target, f32", function()
  local x, t = randn({3, 4}), randn({4})
  local sq, ab = {}, {}
  for i = 0, 11 do
    local d = x:_getflat(i + 1) - t:_getflat(i % 4 + 1)
    sq[#sq + 1], ab[#ab + 1] = d * d, math.abs(d)
  end
  for _, r in ipairs({ "none", "mean", "sum" }) do
    check(ad.mse_loss(x, t, { reduction = r }), reduce(sq, r), { atol = 1e-12 }, "mse " .. r)
    check(ad.l1_loss(x, t, { reduction = r }), reduce(ab, r), { atol = 1e-12 }, "l1 " .. r)
  end
  check(ad.mse_loss(x, t), reduce(sq, "mean"), { atol = 1e-12 }, "default reduction is mean")
  local y32 = ad.mse_loss(x:to("f32"), t:to("f32"))
  assert(y32:dtype() == "f32")
  T.assert_close(y32:item(), reduce(sq, "mean"), { atol = 1e-5 })
  local xl = randn({100000}, "f32")
  T.assert_close(ad.mse_loss(xl, ad.zeros(100000)):item(), ad.mse_loss(xl:to("f64"), ad.zeros(100000, { dtype = "f64" })):item(),
    { rtol = 1e-6 }, "threaded reduction")
end)

test("mse_loss and l1_loss: gradcheck for input and target (non-contiguous, broadcast)", function()
  local x = randn({4, 3}):t()
  x.requires_grad = true
  local t = randn({4}, "f64", true)
  for _, r in ipairs({ "none", "mean", "sum" }) do
    T.gradcheck(function(x, t) return ad.mse_loss(x, t, { reduction = r }) end, { x, t })
    T.gradcheck(function(x, t) return ad.l1_loss(x, t, { reduction = r }) end, { x, t })
  end
end)

local function sigmoid(x) return 1 / (1 + math.exp(-x)) end

test("binary_cross_entropy_with_logits: PyTorch's formula with weight and pos_weight", function()
  local x, t = randn({2, 3}), rand({2, 3})
  local w, pw = rand({3}), ad.tensor({ 0.5, 2, 3 }, { dtype = "f64" })
  local plain, full = {}, {}
  for i = 0, 5 do
    local xi, ti, c = x:_getflat(i + 1), t:_getflat(i + 1), i % 3 + 1
    local ls, l1s = math.log(sigmoid(xi)), math.log(1 - sigmoid(xi))
    plain[#plain + 1] = -(ti * ls + (1 - ti) * l1s)
    full[#full + 1] = -w:_getflat(c) * (pw:_getflat(c) * ti * ls + (1 - ti) * l1s)
  end
  for _, r in ipairs({ "none", "mean", "sum" }) do
    check(ad.binary_cross_entropy_with_logits(x, t, { reduction = r }), reduce(plain, r), { atol = 1e-12 }, r)
    check(ad.binary_cross_entropy_with_logits(x, t, { weight = w, pos_weight = pw, reduction = r }), reduce(full, r),
      { atol = 1e-12 }, "weighted " .. r)
  end
end)

test("binary_cross_entropy_with_logits: finite and exact for |x| = 100", function()
  local x = ad.tensor({ 100, -100, 100, -100, 0 }, { dtype = "f32" })
  local t = ad.tensor({ 0, 1, 1, 0, 1 }, { dtype = "f32" })
  local y = ad.binary_cross_entropy_with_logits(x, t, { reduction = "none" })
  local want = { 100, 100, 0, 0, math.log(2) }
  for i = 1, 5 do
    local v = y:_getflat(i)
    assert(v == v and v ~= math.huge, "finite loss")
    T.assert_close(v, want[i], { atol = 1e-6 })
  end
  local xg = ad.tensor({ 100, -100, 100, -100, 0 }, { dtype = "f64", requires_grad = true })
  ad.binary_cross_entropy_with_logits(xg, t:to("f64"), { reduction = "sum" }):backward()
  local gw = { 1, -1, 0, 0, -0.5 }                       -- sigmoid(x) - t
  for i = 1, 5 do T.assert_close(xg.grad:_getflat(i), gw[i], { atol = 1e-12 }) end
end)

test("binary_cross_entropy_with_logits: gradcheck for logits, target, weight and pos_weight", function()
  local x = randn({3, 4}):t()                            -- (4, 3) strided
  x.requires_grad = true
  local t = rand({4, 3}, "f64", true)
  local w, pw = rand({3}, "f64", true), rand({3}, "f64", true)
  T.gradcheck(function(x, t) return ad.binary_cross_entropy_with_logits(x, t, { reduction = "none" }) end, { x, t })
  T.gradcheck(function(x, t, w, pw)
    return ad.binary_cross_entropy_with_logits(x, t, { weight = w, pos_weight = pw })
  end, { x, t, w, pw })
  T.gradcheck(function(x, t, w, pw)
    return ad.binary_cross_entropy_with_logits(x, t, { weight = w, pos_weight = pw, reduction = "sum" })
  end, { x, t, w, pw })
end)

-- ===================================================================== class losses

-- naive cross entropy on logits (N, C, S...) viewed flat; targets a Lua table of (N*S) ints
local function ref_cross_entropy(x, tgt, opts)
  opts = opts or {}
  local sh = x:shape()
  local N, C = sh[1], sh[2]
  local S = x:numel() // (N * C)
  local eps, ign, w = opts.label_smoothing or 0, opts.ignore_index or -100, opts.weight
  local vals, denom = {}, 0
  for n = 0, N - 1 do
    for s = 0, S - 1 do
      local t = tgt[n * S + s + 1]
      local loss = 0
      if t ~= ign then
        local mx = -math.huge
        for c = 0, C - 1 do mx = math.max(mx, x:_getflat((n * C + c) * S + s + 1)) end
        local z = 0
        for c = 0, C - 1 do z = z + math.exp(x:_getflat((n * C + c) * S + s + 1) - mx) end
        local lse = mx + math.log(z)
        local function logp(c) return x:_getflat((n * C + c) * S + s + 1) - lse end
        local function wc(c) return w and w:_getflat(c + 1) or 1 end
        local smooth = 0
        for c = 0, C - 1 do smooth = smooth - wc(c) * logp(c) end
        loss = (1 - eps) * -wc(t) * logp(t) + eps / C * smooth
        denom = denom + wc(t)
      end
      vals[#vals + 1] = loss
    end
  end
  return vals, denom
end

test("cross_entropy: log_softmax + gather by hand, with weight, ignore_index and label smoothing", function()
  local x = randn({5, 4})
  local tgt = { 3, 0, 1, 3, 2 }
  local target = long(tgt)
  for _, r in ipairs({ "none", "mean", "sum" }) do
    local vals, denom = ref_cross_entropy(x, tgt)
    check(ad.cross_entropy(x, target, { reduction = r }), reduce(vals, r, denom), { atol = 1e-12 }, r)
  end
  local w = ad.tensor({ 0.2, 1.5, 1, 3 }, { dtype = "f64" })
  local tgt2 = { 3, 0, -100, 3, 2 }
  for _, r in ipairs({ "none", "mean", "sum" }) do
    local vals, denom = ref_cross_entropy(x, tgt2, { weight = w })
    check(ad.cross_entropy(x, long(tgt2), { weight = w, reduction = r }), reduce(vals, r, denom), { atol = 1e-12 },
      "weighted mean divides by the weights of the non-ignored targets: " .. r)
    vals, denom = ref_cross_entropy(x, tgt2, { weight = w, label_smoothing = 0.3 })
    check(ad.cross_entropy(x, long(tgt2), { weight = w, label_smoothing = 0.3, reduction = r }),
      reduce(vals, r, denom), { atol = 1e-12 }, "smoothed " .. r)
  end
  local tgt3 = { 3, 0, 1, 1, 2 }
  local vals, denom = ref_cross_entropy(x, tgt3, { ignore_index = 1 })
  check(ad.cross_entropy(x, long(tgt3), { ignore_index = 1 }), reduce(vals, "mean", denom), { atol = 1e-12 })
  check(ad.cross_entropy(x, long(tgt):to("i32")), reduce(ref_cross_entropy(x, tgt), "mean"), { atol = 1e-12 }, "i32")
end)

test("cross_entropy: spatial (N, C, d1, d2) layout, 1-D logits, f32, and nll_loss(log_softmax) agreement", function()
  local x = randn({2, 3, 2, 3})
  local tg = ad.randint(0, 3, {2, 2, 3}, { generator = gen })
  local tgt = {}
  for i = 1, tg:numel() do tgt[i] = math.tointeger(tg:_getflat(i)) end
  local vals, denom = ref_cross_entropy(x, tgt, { label_smoothing = 0.1 })
  check(ad.cross_entropy(x, tg, { label_smoothing = 0.1, reduction = "none" }), vals, { atol = 1e-12 })
  local y = ad.cross_entropy(x, tg, { reduction = "none" })
  assert(#y:shape() == 3 and y:shape()[3] == 3, "none keeps the target's shape")
  check(ad.cross_entropy(x, tg, { label_smoothing = 0.1 }), reduce(vals, "mean", denom), { atol = 1e-12 })
  T.assert_close(ad.nll_loss(ad.log_softmax(x, 2), tg), ad.cross_entropy(x, tg), { atol = 1e-12 })
  local x1 = randn({6})
  check(ad.cross_entropy(x1, ad.tensor(4, { dtype = "i64" })),
    reduce(ref_cross_entropy(x1:view(1, 6), { 4 }), "mean"), { atol = 1e-12 }, "unbatched (C) logits")
  local x32 = randn({64, 10}, "f32")
  local t32 = ad.randint(0, 10, {64}, { generator = gen })
  T.assert_close(ad.cross_entropy(x32, t32):item(), ad.cross_entropy(x32:to("f64"), t32):item(), { atol = 1e-5 })
  local big, tb = randn({40, 1000}, "f32"), ad.randint(0, 1000, {40}, { generator = gen })
  T.assert_close(ad.cross_entropy(big, tb, { reduction = "sum" }):item(),
    ad.cross_entropy(big:to("f64"), tb, { reduction = "sum" }):item(), { rtol = 1e-5 }, "threaded rows")
end)

test("nll_loss: -w_t logp_t with weights and ignore_index", function()
  local lp = ad.log_softmax(randn({4, 5}), 2)
  local tgt = { 4, 0, 2, 4 }
  local w = ad.tensor({ 1, 2, 3, 4, 5 }, { dtype = "f64" })
  local vals, wsum = {}, 0
  for n = 0, 3 do
    if n ~= 2 then
      local t = tgt[n + 1]
      vals[#vals + 1] = -w:_getflat(t + 1) * lp:_getflat(n * 5 + t + 1)
      wsum = wsum + w:_getflat(t + 1)
    else
      vals[#vals + 1] = 0
    end
  end
  local tt = long({ 4, 0, 2, 4 })
  check(ad.nll_loss(lp, tt, { weight = w, ignore_index = 2, reduction = "none" }), vals, { atol = 1e-12 })
  check(ad.nll_loss(lp, tt, { weight = w, ignore_index = 2 }), reduce(vals, "mean", wsum), { atol = 1e-12 })
  check(ad.nll_loss(lp, tt, { weight = w, ignore_index = 2, reduction = "sum" }), reduce(vals, "sum"), { atol = 1e-12 })
end)

test("cross_entropy and nll_loss: gradcheck (odd sizes, non-contiguous logits, every option)", function()
  local x = randn({3, 4, 5}):permute(3, 2, 1)            -- (5, 4, 3) strided: N=5, C=4, d=3
  x.requires_grad = true
  local tg = ad.randint(0, 4, {5, 3}, { generator = gen })
  tg:_setflat(2, -100)
  local w = rand({4})
  for _, r in ipairs({ "none", "mean", "sum" }) do
    T.gradcheck(function(x) return ad.cross_entropy(x, tg, { reduction = r }) end, { x })
    T.gradcheck(function(x)
      return ad.cross_entropy(x, tg, { weight = w, label_smoothing = 0.2, reduction = r })
    end, { x })
  end
  local x2 = randn({7, 3}, "f64", true)
  local t2 = long({ 0, 2, 1, 1, 0, 2, 2 })
  T.gradcheck(function(x) return ad.cross_entropy(x, t2, { ignore_index = 1 }) end, { x2 })
  T.gradcheck(function(x) return ad.nll_loss(x, t2, { weight = w:narrow(1, 1, 3) }) end, { x2 })
  T.gradcheck(function(x) return ad.nll_loss(x, t2, { reduction = "none" }) end, { x2 })
end)

test("losses: errors name the problem", function()
  local x = randn({2, 4})
  raises("cross_entropy: target 5 out of range for 4 classes", ad.cross_entropy, x, long({ 1, 5 }))
  raises("nll_loss: target -3 out of range for 4 classes", ad.nll_loss, x, long({ 1, -3 }))
  raises("cross_entropy: target must be an integer tensor of class indices (i64 or i32), got f64", ad.cross_entropy,
    x, randn({2}))
  raises("cross_entropy: target of shape [3] does not match input of shape [2, 4]", ad.cross_entropy, x,
    long({ 1, 2, 3 }))
  raises("cross_entropy: weight must have shape [4] (one value per class), got [3]", ad.cross_entropy, x,
    long({ 1, 2 }), { weight = randn({3}) })
  raises("cross_entropy: label_smoothing must be in [0, 1], got 1.5", ad.cross_entropy, x, long({ 1, 2 }),
    { label_smoothing = 1.5 })
  raises("mse_loss: reduction must be 'none', 'mean' or 'sum', got 'avg'", ad.mse_loss, x, x, { reduction = "avg" })
  raises("mse_loss: input of shape [2, 4] and target of shape [3] do not broadcast", ad.mse_loss, x, randn({3}))
  raises("binary_cross_entropy_with_logits: target size [4] must be the same as input size [2, 4]",
    ad.binary_cross_entropy_with_logits, x, rand({4}))
  raises("binary_cross_entropy_with_logits: pos_weight of shape [3] does not broadcast to the input's shape [2, 4]",
    ad.binary_cross_entropy_with_logits, x, rand({2, 4}), { pos_weight = rand({3}) })
  raises("l1_loss: target must be a floating-point tensor, got i64", ad.l1_loss, x, long({ 1, 2, 3, 4 }))
end)
