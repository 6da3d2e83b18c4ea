-- group_norm, batch_norm, layer_norm: forward against naive Lua references and
-- closed forms, running-stat updates, dtypes, gradchecks, and error messages.
local ad = require "advdiff"
local T = require "advdiff.testing"

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern, 1, true), "error '" .. tostring(err) .. "' does not contain '" .. pattern .. "'")
end

local gen = ad.Generator(20240607)
local function randn(shape, dtype, opts)
  opts = opts or {}
  local t = ad.randn(shape, { dtype = dtype or "f64", generator = gen })
  if opts.scale or opts.shift then
    local n = t:numel()
    for i = 1, n do t:_setflat(i, t:_getflat(i) * (opts.scale or 1) + (opts.shift or 0)) end
  end
  if opts.requires_grad then t.requires_grad = true end
  return t
end

local function prod(t, a, b)
  local p = 1
  for i = a, b do p = p * t[i] end
  return p
end

-- naive group norm: x (N, C, S...) flattened; w, b tables or nil
local function ref_group_norm(x, G, w, b, eps)
  local sh = x:shape()
  local N, C = sh[1], sh[2]
  local S = prod(sh, 3, #sh)
  local Cg = C // G
  local y = ad.zeros(sh, { dtype = "f64" })
  for n = 0, N - 1 do
    for g = 0, G - 1 do
      local s, q, cnt = 0, 0, Cg * S
      for c = g * Cg, (g + 1) * Cg - 1 do
        for k = 0, S - 1 do s = s + x:_getflat((n * C + c) * S + k + 1) end
      end
      local mu = s / cnt
      for c = g * Cg, (g + 1) * Cg - 1 do
        for k = 0, S - 1 do
          local d = x:_getflat((n * C + c) * S + k + 1) - mu
          q = q + d * d
        end
      end
      local rs = 1 / math.sqrt(q / cnt + eps)
      for c = g * Cg, (g + 1) * Cg - 1 do
        for k = 0, S - 1 do
          local i = (n * C + c) * S + k + 1
          local v = (x:_getflat(i) - mu) * rs
          if w then v = v * w:_getflat(c + 1) end
          if b then v = v + b:_getflat(c + 1) end
          y:_setflat(i, v)
        end
      end
    end
  end
  return y
end

test("group_norm: zero mean and unit variance per group (no affine)", function()
  local x = randn({3, 6, 5, 4}, "f64", { scale = 3, shift = 2 })
  local y = ad.group_norm(x, 3)
  local N, C, S, Cg = 3, 6, 20, 2
  for n = 0, N - 1 do
    for g = 0, 2 do
      local s, q = 0, 0
      for c = g * Cg, (g + 1) * Cg - 1 do
        for k = 0, S - 1 do
          local v = y:_getflat((n * C + c) * S + k + 1)
          s, q = s + v, q + v * v
        end
      end
      local m = s / (Cg * S)
      T.assert_close(m, 0, { atol = 1e-12 })
      T.assert_close(q / (Cg * S) - m * m, 1, { atol = 1e-5 }) -- eps=1e-5 shrinks it by ~eps/var
    end
  end
end)

test("group_norm: matches a naive reference with affine, for every spatial rank", function()
  for _, shape in ipairs({ {4, 6}, {2, 6, 7}, {2, 6, 3, 5}, {2, 4, 3, 2, 3} }) do
    local x = randn(shape, "f64")
    local C = shape[2]
    local w, b = randn({C}), randn({C})
    local G = C // 2
    T.assert_close(ad.group_norm(x, G, w, b), ref_group_norm(x, G, w, b, 1e-5), { atol = 1e-10 })
    T.assert_close(ad.group_norm(x, G, { eps = 1e-3 }), ref_group_norm(x, G, nil, nil, 1e-3), { atol = 1e-10 },
      "options table right after num_groups")
  end
end)

test("group_norm: f32 with a large mean stays accurate; f16 computes in f32 and returns f16", function()
  local x64 = randn({2, 8, 16, 16}, "f64", { scale = 0.01, shift = 1000 })
  local x32 = x64:to("f32")
  local ref = ad.group_norm(x32:to("f64"), 4)
  T.assert_close(ad.group_norm(x32, 4):to("f64"), ref, { atol = 1e-5, rtol = 0 })
  -- backward too: dx depends on x - mean, so the saved mean must not be rounded to f32
  local xa, xb = x32:clone(), x32:to("f64")
  xa.requires_grad, xb.requires_grad = true, true
  local g = randn({2, 8, 16, 16})
  ad.group_norm(xa, 4):backward(g:to("f32"))
  ad.group_norm(xb, 4):backward(g)
  T.assert_close(xa.grad:to("f64"), xb.grad, { atol = 1e-3, rtol = 1e-5 })  -- |dx| ~ 400
  local xc, xd = x32:clone(), x32:to("f64")
  xc.requires_grad, xd.requires_grad = true, true
  ad.batch_norm(xc, nil, nil, nil, nil, { training = true }):backward(g:to("f32"))
  ad.batch_norm(xd, nil, nil, nil, nil, { training = true }):backward(g)
  T.assert_close(xc.grad:to("f64"), xd.grad, { atol = 1e-3, rtol = 1e-5 })
  local xh = randn({2, 8, 4, 4}, "f32"):to("f16")
  local w, b = randn({8}, "f32"), randn({8}, "f32")
  local yh = ad.group_norm(xh, 4, w, b)
  assert(yh:dtype() == "f16", "f16 in, f16 out")
  T.assert_close(yh:to("f32"), ad.group_norm(xh:to("f32"), 4, w, b), { atol = 1e-2, rtol = 1e-2 })
end)

test("group_norm: larger input runs the threaded path and agrees with f64", function()
  local x = randn({4, 32, 16, 16}, "f32")
  local w, b = randn({32}, "f32"), randn({32}, "f32")
  local y = ad.group_norm(x, 8, w, b)
  T.assert_close(y:to("f64"), ad.group_norm(x:to("f64"), 8, w:to("f64"), b:to("f64")), { atol = 1e-5, rtol = 1e-5 })
end)

test("group_norm: gradcheck for x, weight and bias (odd sizes, non-contiguous x)", function()
  local base = randn({5, 2, 6, 3})                     -- (H, N, C, W) -> permuted to (N, C, H, W)
  local x = base:permute(2, 3, 1, 4)
  assert(not x:is_contiguous())
  x.requires_grad = true
  local w = randn({6}, "f64", { requires_grad = true })
  local b = randn({6}, "f64", { requires_grad = true })
  T.gradcheck(function(x, w, b) return ad.group_norm(x, 3, w, b) end, { x, w, b })
  local x2 = randn({3, 4}, "f64", { requires_grad = true })
  T.gradcheck(function(x) return ad.group_norm(x, 2) end, { x2 })
  local x3 = randn({2, 6, 7}, "f64", { requires_grad = true })
  T.gradcheck(function(x, w) return ad.group_norm(x, 1, w) end, { x3, randn({6}, "f64", { requires_grad = true }) })
end)

test("group_norm: errors name the problem", function()
  local x = randn({2, 6, 3})
  raises("group_norm: num_groups must be positive and divide the 6 channels, got 4", ad.group_norm, x, 4)
  raises("group_norm: weight must have shape [6] (one value per channel), got [5]", ad.group_norm, x, 3, randn({5}))
  raises("group_norm: input must be (N, C, *) with at least 2 dims, got [6]", ad.group_norm, randn({6}), 3)
  raises("group_norm: input must be a floating-point tensor, got i64", ad.group_norm,
    ad.zeros(2, 6, { dtype = "i64" }), 3)
end)

-- ===================================================================== batch norm

test("batch_norm training: batch statistics and in-place running-stat update (unbiased var)", function()
  local N, C, S = 4, 3, 5
  local x = randn({N, C, S}, "f64", { scale = 2, shift = 1 })
  local rm = ad.tensor({0.5, -1, 2}, { dtype = "f64" })
  local rv = ad.tensor({1, 2, 0.5}, { dtype = "f64" })
  local w, b = randn({C}), randn({C})
  local y = ad.batch_norm(x, rm, rv, w, b, { training = true, momentum = 0.2 })
  local rm0, rv0 = { 0.5, -1, 2 }, { 1, 2, 0.5 }
  for c = 0, C - 1 do
    local s, q, M = 0, 0, N * S
    for n = 0, N - 1 do for k = 0, S - 1 do s = s + x:_getflat((n * C + c) * S + k + 1) end end
    local mu = s / M
    for n = 0, N - 1 do
      for k = 0, S - 1 do local d = x:_getflat((n * C + c) * S + k + 1) - mu; q = q + d * d end
    end
    T.assert_close(rm:_getflat(c + 1), 0.8 * rm0[c + 1] + 0.2 * mu, { atol = 1e-12 })
    T.assert_close(rv:_getflat(c + 1), 0.8 * rv0[c + 1] + 0.2 * q / (M - 1), { atol = 1e-12 })
    local rs = 1 / math.sqrt(q / M + 1e-5)
    for n = 0, N - 1 do
      for k = 0, S - 1 do
        local i = (n * C + c) * S + k + 1
        T.assert_close(y:_getflat(i), (x:_getflat(i) - mu) * rs * w:_getflat(c + 1) + b:_getflat(c + 1),
          { atol = 1e-12 })
      end
    end
  end
end)

test("batch_norm: f32 running stats with f64 input, non-contiguous stats, (N, C) input", function()
  local x = randn({6, 4})
  local rm, rv = ad.zeros(4, { dtype = "f32" }), ad.ones(4, { dtype = "f32" })
  ad.batch_norm(x, rm, rv, nil, nil, { training = true })
  for c = 1, 4 do
    local s = 0
    for n = 0, 5 do s = s + x:_getflat(n * 4 + c) end
    T.assert_close(rm:_getflat(c), 0.1 * s / 6, { atol = 1e-6 })
  end
  -- running stats that are a strided view are updated in place too
  local big = ad.zeros(4, 2, { dtype = "f64" })
  local rmv = big:select(2, 1)
  local rvv = ad.ones(4, 2, { dtype = "f64" }):select(2, 2)
  ad.batch_norm(x, rmv, rvv, nil, nil, { training = true, momentum = 1 })
  for c = 1, 4 do
    local s = 0
    for n = 0, 5 do s = s + x:_getflat(n * 4 + c) end
    T.assert_close(big:_getflat(2 * c - 1), s / 6, { atol = 1e-12 })
    T.assert_close(big:_getflat(2 * c), 0, { atol = 0 }, "the other column is untouched")
  end
end)

test("batch_norm eval: uses the running statistics and leaves them alone", function()
  local x = randn({3, 2, 4})
  local rm = ad.tensor({0.3, -0.2}, { dtype = "f64" })
  local rv = ad.tensor({2.0, 0.5}, { dtype = "f64" })
  local w, b = ad.tensor({1.5, -1}, { dtype = "f64" }), ad.tensor({0.1, 0.2}, { dtype = "f64" })
  local y = ad.batch_norm(x, rm, rv, w, b, { eps = 1e-3 })
  for n = 0, 2 do
    for c = 0, 1 do
      for k = 0, 3 do
        local i = (n * 2 + c) * 4 + k + 1
        local want = (x:_getflat(i) - rm:_getflat(c + 1)) / math.sqrt(rv:_getflat(c + 1) + 1e-3)
          * w:_getflat(c + 1) + b:_getflat(c + 1)
        T.assert_close(y:_getflat(i), want, { atol = 1e-12 })
      end
    end
  end
  T.assert_close(rm, ad.tensor({0.3, -0.2}, { dtype = "f64" }))
end)

test("batch_norm: gradcheck in training and eval mode (non-contiguous x)", function()
  local x = randn({5, 3, 2}):transpose(1, 3)           -- (2, 3, 5), strided
  x.requires_grad = true
  local w = randn({3}, "f64", { requires_grad = true })
  local b = randn({3}, "f64", { requires_grad = true })
  T.gradcheck(function(x, w, b) return ad.batch_norm(x, nil, nil, w, b, { training = true }) end, { x, w, b })
  local rm, rv = randn({3}), ad.tensor({0.5, 1.5, 2}, { dtype = "f64" })
  T.gradcheck(function(x, w, b) return ad.batch_norm(x, rm, rv, w, b) end, { x, w, b })
  local x2 = randn({7, 3}, "f64", { requires_grad = true })
  T.gradcheck(function(x) return ad.batch_norm(x, ad.zeros(3, { dtype = "f64" }), ad.ones(3, { dtype = "f64" }), nil,
    nil, { training = true }) end, { x2 })
end)

test("batch_norm: errors name the problem", function()
  local x = randn({2, 3, 4})
  raises("batch_norm: running_mean and running_var are required in evaluation mode", ad.batch_norm, x, nil, nil)
  raises("batch_norm: expected more than 1 value per channel when training, got input of shape [1, 3]",
    ad.batch_norm, randn({1, 3}), nil, nil, nil, nil, { training = true })
  raises("batch_norm: running_var must have shape [3] (one value per channel), got [4]", ad.batch_norm, x,
    randn({3}), randn({4}))
  raises("option 'training' must be a boolean", ad.batch_norm, x, nil, nil, nil, nil, { training = 1 })
end)

-- ===================================================================== layer norm

local function ref_layer_norm(x, k, w, b, eps)
  local sh = x:shape()
  local D = prod(sh, #sh - k + 1, #sh)
  local M = x:numel() // D
  local y = ad.zeros(sh, { dtype = "f64" })
  for m = 0, M - 1 do
    local s, q = 0, 0
    for d = 1, D do s = s + x:_getflat(m * D + d) end
    local mu = s / D
    for d = 1, D do local v = x:_getflat(m * D + d) - mu; q = q + v * v end
    local rs = 1 / math.sqrt(q / D + eps)
    for d = 1, D do
      local v = (x:_getflat(m * D + d) - mu) * rs
      if w then v = v * w:_getflat(d) end
      if b then v = v + b:_getflat(d) end
      y:_setflat(m * D + d, v)
    end
  end
  return y
end

test("layer_norm: matches a naive reference over the last 1 and 2 dims", function()
  local x = randn({3, 4, 5}, "f64", { scale = 4, shift = -3 })
  local w, b = randn({5}), randn({5})
  T.assert_close(ad.layer_norm(x, 5, w, b), ref_layer_norm(x, 1, w, b, 1e-5), { atol = 1e-10 })
  local w2, b2 = randn({4, 5}), randn({4, 5})
  T.assert_close(ad.layer_norm(x, {4, 5}, w2, b2, { eps = 1e-2 }), ref_layer_norm(x, 2, w2, b2, 1e-2), { atol = 1e-10 })
  T.assert_close(ad.layer_norm(x, {3, 4, 5}), ref_layer_norm(x, 3, nil, nil, 1e-5), { atol = 1e-10 })
  local x32 = randn({64, 300}, "f32")
  T.assert_close(ad.layer_norm(x32, 300):to("f64"), ad.layer_norm(x32:to("f64"), 300), { atol = 1e-5 })
end)

test("layer_norm: gradcheck for x, weight and bias (non-contiguous x)", function()
  local x = randn({5, 3, 2}):permute(3, 2, 1)          -- (2, 3, 5)
  x.requires_grad = true
  local w = randn({3, 5}, "f64", { requires_grad = true })
  local b = randn({3, 5}, "f64", { requires_grad = true })
  T.gradcheck(function(x, w, b) return ad.layer_norm(x, {3, 5}, w, b) end, { x, w, b })
  local w1 = randn({5}, "f64", { requires_grad = true })
  T.gradcheck(function(x, w) return ad.layer_norm(x, 5, w) end, { x, w1 })
  -- a large threaded case through backward: weight gradient summed over rows by several threads
  local xl = randn({200, 257}, "f64", { requires_grad = true })
  local wl = randn({257}, "f64", { requires_grad = true })
  local y = ad.layer_norm(xl, 257, wl)
  local gy = randn({200, 257})
  y:backward(gy)
  local xh = ad.layer_norm(xl:detach(), 257)
  local want = ad.zeros(257, { dtype = "f64" })
  for d = 1, 257 do
    local s = 0
    for m = 0, 199 do s = s + gy:_getflat(m * 257 + d) * xh:_getflat(m * 257 + d) end
    want:_setflat(d, s)
  end
  T.assert_close(wl.grad, want, { atol = 1e-9 })
end)

test("layer_norm: errors name the problem", function()
  local x = randn({2, 3, 5})
  raises("layer_norm: normalized_shape [4] does not match the last dims of input [2, 3, 5]", ad.layer_norm, x, 4)
  raises("layer_norm: weight must have the normalized shape [5], got [3]", ad.layer_norm, x, 5, randn({3}))
end)
