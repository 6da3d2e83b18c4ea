-- softmax / log_softmax, scaled_dot_product_attention, embedding and dropout:
-- forward against naive Lua references, masks, broadcasting, gradchecks,
-- dropout statistics and reproducibility, and error messages.
local ad = require "advdiff"
local T = require "advdiff.testing"

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern, 1, true), "error '" .. tostring(err) .. "' does not contain '" .. pattern .. "'")
end

local function assert_shape(t, want)
  local sh = t:shape()
  assert(#sh == #want, "shape [" .. table.concat(sh, ", ") .. "] vs [" .. table.concat(want, ", ") .. "]")
  for i = 1, #want do
    assert(sh[i] == want[i], "shape [" .. table.concat(sh, ", ") .. "] vs [" .. table.concat(want, ", ") .. "]")
  end
end

local gen = ad.Generator(777)
local function randn(shape, dtype, requires_grad)
  local t = ad.randn(shape, { dtype = dtype or "f64", generator = gen })
  if requires_grad then t.requires_grad = true end
  return t
end

-- row-major strides of a shape table
local function strides_of(sh)
  local st, s = {}, 1
  for d = #sh, 1, -1 do st[d] = s; s = s * sh[d] end
  return st
end

-- naive softmax along dim (1-based) of any tensor
local function ref_softmax(x, dim, log)
  local sh = x:shape()
  local st = strides_of(sh)
  local y = ad.zeros(sh, { dtype = "f64" })
  local n, L, inner = x:numel(), sh[dim], st[dim]
  for i0 = 0, n - 1 do
    if (i0 // inner) % L == 0 then                 -- first element of a line along dim
      local mx = -math.huge
      for l = 0, L - 1 do mx = math.max(mx, x:_getflat(i0 + l * inner + 1)) end
      local s = 0
      for l = 0, L - 1 do s = s + math.exp(x:_getflat(i0 + l * inner + 1) - mx) end
      for l = 0, L - 1 do
        local v = x:_getflat(i0 + l * inner + 1) - mx
        y:_setflat(i0 + l * inner + 1, log and v - math.log(s) or math.exp(v) / s)
      end
    end
  end
  return y
end

test("softmax: lines sum to 1 along every dim and match a naive reference", function()
  local x = randn({3, 4, 5}, "f64")
  for _, dim in ipairs({1, 2, 3, -1, -2}) do
    local d = dim < 0 and dim + 4 or dim
    local y = ad.softmax(x, dim)
    T.assert_close(y, ref_softmax(x, d), { atol = 1e-14 })
    T.assert_close(ad.log_softmax(x, dim), ref_softmax(x, d, true), { atol = 1e-13 })
  end
  local y = x:softmax(-1)
  for r = 0, 11 do
    local s = 0
    for c = 1, 5 do s = s + y:_getflat(r * 5 + c) end
    T.assert_close(s, 1, { atol = 1e-14 })
  end
  T.assert_close(x:log_softmax(2), ref_softmax(x, 2, true), { atol = 1e-13 })
end)

test("softmax: stable for large values; big f32 inputs (both kernel layouts) agree with f64", function()
  local x = ad.tensor({ {1000, 1001, 1002}, {-1000, -1000, -1000} }, { dtype = "f32" })
  local y = ad.softmax(x, 2)
  local e = { math.exp(-2), math.exp(-1), 1 }
  local s = e[1] + e[2] + e[3]
  T.assert_close(y, ad.tensor({ {e[1] / s, e[2] / s, e[3] / s}, {1 / 3, 1 / 3, 1 / 3} }, { dtype = "f32" }),
    { atol = 1e-6 })
  local ls = ad.log_softmax(x, 2)
  T.assert_close(ls:_getflat(3), -math.log(s), { atol = 1e-5 })
  local big = randn({8, 70, 90}, "f32")
  for _, dim in ipairs({1, 2, 3}) do
    T.assert_close(ad.softmax(big, dim):to("f64"), ad.softmax(big:to("f64"), dim), { atol = 1e-6, rtol = 1e-5 })
    T.assert_close(ad.log_softmax(big, dim):to("f64"), ad.log_softmax(big:to("f64"), dim), { atol = 1e-5 })
  end
  local h = ad.softmax(big:to("f16"), 3)
  assert(h:dtype() == "f16")
  T.assert_close(h:to("f64"), ad.softmax(big:to("f16"):to("f64"), 3), { atol = 2e-3 })
end)

test("softmax / log_softmax: gradcheck along inner and outer dims, non-contiguous input", function()
  local x = randn({5, 3, 4}):transpose(1, 3)           -- (4, 3, 5) strided
  x.requires_grad = true
  for _, dim in ipairs({1, 2, 3}) do
    T.gradcheck(function(x) return ad.softmax(x, dim) end, { x })
    T.gradcheck(function(x) return ad.log_softmax(x, dim) end, { x })
  end
  local x1 = randn({7}, "f64", true)
  T.gradcheck(function(x) return x:softmax(1) end, { x1 })
end)

test("softmax / log_softmax: f32 backward agrees with f64 (row and column layouts)", function()
  local base = randn({6, 50, 300}, "f32")
  local g = randn({6, 50, 300})
  for _, dim in ipairs({3, 2}) do
    for _, fn in ipairs({ ad.softmax, ad.log_softmax }) do
      local a, b = base:clone(), base:to("f64")
      a.requires_grad, b.requires_grad = true, true
      fn(a, dim):backward(g:to("f32"))
      fn(b, dim):backward(g)
      T.assert_close(a.grad:to("f64"), b.grad, { atol = 1e-5, rtol = 1e-4 })
    end
  end
end)

test("softmax: errors name the problem", function()
  raises("softmax: input must be a floating-point tensor, got i64", ad.softmax, ad.zeros(3, { dtype = "i64" }), 1)
  raises("softmax: dim is required", ad.softmax, randn({3}))
  local ok = pcall(ad.softmax, randn({3, 4}), 3)
  assert(not ok, "dim 3 of a 2-D tensor is out of range")
end)

-- ===================================================================== attention

-- Naive attention on tensors with identical batch dims. maskfn(b, i, j) gives an
-- additive term (0, -inf, or a value); i, j are 0-based.
local function ref_attention(q, k, v, scale, maskfn, causal)
  local qs, ks, vs = q:shape(), k:shape(), v:shape()
  local nd = #qs
  local Lq, D, Lk, Dv = qs[nd - 1], qs[nd], ks[nd - 1], vs[nd]
  local B = q:numel() // (Lq * D)
  scale = scale or 1 / math.sqrt(D)
  local oshape = {}
  for d = 1, nd - 1 do oshape[d] = qs[d] end
  oshape[nd] = Dv
  local out = ad.zeros(oshape, { dtype = "f64" })
  for b = 0, B - 1 do
    for i = 0, Lq - 1 do
      local s, mx = {}, -math.huge
      for j = 0, Lk - 1 do
        local dot = 0
        for d = 0, D - 1 do dot = dot + q:_getflat((b * Lq + i) * D + d + 1) * k:_getflat((b * Lk + j) * D + d + 1) end
        local v0 = dot * scale + (maskfn and maskfn(b, i, j) or 0)
        if causal and j > i then v0 = -math.huge end
        s[j] = v0
        mx = math.max(mx, v0)
      end
      local z = 0
      for j = 0, Lk - 1 do s[j] = mx == -math.huge and 0 or math.exp(s[j] - mx); z = z + s[j] end
      for e = 0, Dv - 1 do
        local acc = 0
        for j = 0, Lk - 1 do acc = acc + (z > 0 and s[j] / z or 0) * v:_getflat((b * Lk + j) * Dv + e + 1) end
        out:_setflat((b * Lq + i) * Dv + e + 1, acc)
      end
    end
  end
  return out
end

test("attention: matches a naive softmax(Q K^T * scale) V, default and explicit scale", function()
  local q, k, v = randn({2, 3, 4, 6}), randn({2, 3, 5, 6}), randn({2, 3, 5, 3})
  T.assert_close(ad.scaled_dot_product_attention(q, k, v), ref_attention(q, k, v), { atol = 1e-12 })
  T.assert_close(ad.scaled_dot_product_attention(q, k, v, { scale = 0.7 }), ref_attention(q, k, v, 0.7),
    { atol = 1e-12 })
  local o = ad.scaled_dot_product_attention(q:to("f32"), k:to("f32"), v:to("f32"))
  assert(o:dtype() == "f32")
  T.assert_close(o:to("f64"), ref_attention(q, k, v), { atol = 1e-5 })
  local oh = ad.scaled_dot_product_attention(q:to("f16"), k:to("f16"), v:to("f16"))
  assert(oh:dtype() == "f16")
  T.assert_close(oh:to("f64"), ref_attention(q, k, v), { atol = 1e-2, rtol = 1e-2 })
end)

test("attention: agrees with the same formula written with matmul and softmax", function()
  local q, k, v = randn({3, 7, 8}), randn({3, 9, 8}), randn({3, 9, 5})
  local ref = ad.matmul(ad.softmax(ad.matmul(q, k:transpose(-2, -1)) * (1 / math.sqrt(8)), -1), v)
  T.assert_close(ad.scaled_dot_product_attention(q, k, v), ref, { atol = 1e-12 })
end)

test("attention: bool keep-mask, additive mask, is_causal, fully masked rows", function()
  local q, k, v = randn({2, 4, 3}), randn({2, 5, 3}), randn({2, 5, 2})
  -- bool (Lq, Lk) mask broadcast over the batch
  local keep = ad.zeros(4, 5, { dtype = "bool" })
  local pattern = {}
  for i = 0, 3 do
    for j = 0, 4 do
      local on = (i + 2 * j) % 3 ~= 0 or j == 0
      pattern[i * 5 + j] = on
      keep:_setflat(i * 5 + j + 1, on and 1 or 0)
    end
  end
  local want = ref_attention(q, k, v, nil, function(_, i, j) return pattern[i * 5 + j] and 0 or -math.huge end)
  T.assert_close(ad.scaled_dot_product_attention(q, k, v, { mask = keep }), want, { atol = 1e-12 })
  T.assert_close(ad.scaled_dot_product_attention(q, k, v, keep), want, { atol = 1e-12 }, "mask as argument 4")
  -- additive float mask with a per-batch dim of size 2 and broadcast rows
  local add = randn({2, 1, 5})
  T.assert_close(ad.scaled_dot_product_attention(q, k, v, { mask = add }),
    ref_attention(q, k, v, nil, function(b, _, j) return add:_getflat(b * 5 + j + 1) end), { atol = 1e-12 })
  -- causal (top-left aligned: key j <= query i), alone and with a mask
  T.assert_close(ad.scaled_dot_product_attention(q, k, v, { is_causal = true }),
    ref_attention(q, k, v, nil, nil, true), { atol = 1e-12 })
  T.assert_close(ad.scaled_dot_product_attention(q, k, v, { is_causal = true, mask = add }),
    ref_attention(q, k, v, nil, function(b, _, j) return add:_getflat(b * 5 + j + 1) end, true), { atol = 1e-12 })
  -- a row with every key masked gives zeros, not NaN
  local none = ad.zeros(4, 5, { dtype = "bool" })
  for j = 1, 5 do none:_setflat(5 + j, 1) end          -- only query row 2 may attend
  local o = ad.scaled_dot_product_attention(q, k, v, { mask = none })
  for i = 1, o:numel() do assert(o:_getflat(i) == o:_getflat(i), "no NaN") end
  T.assert_close(o:_getflat(1), 0, { atol = 0 })
end)

test("attention: batch dims broadcast (k, v shared across heads)", function()
  local q = randn({2, 3, 4, 5})
  local k, v = randn({2, 1, 6, 5}), randn({1, 6, 2})
  local ke = k:expand(2, 3, 6, 5):contiguous()
  local ve = v:expand(2, 3, 6, 2):contiguous()
  T.assert_close(ad.scaled_dot_product_attention(q, k, v), ref_attention(q, ke, ve), { atol = 1e-12 })
end)

test("attention: larger f32 problems (threaded slices, threaded rows) agree with f64", function()
  local q, k, v = randn({8, 64, 16}, "f32"), randn({8, 64, 16}, "f32"), randn({8, 64, 16}, "f32")
  local o = ad.scaled_dot_product_attention(q, k, v, { is_causal = true })
  T.assert_close(o:to("f64"), ad.scaled_dot_product_attention(q:to("f64"), k:to("f64"), v:to("f64"),
    { is_causal = true }), { atol = 1e-5 })
  local q1, k1, v1 = randn({1, 300, 8}, "f32"), randn({1, 290, 8}, "f32"), randn({1, 290, 4}, "f32")
  for _, t in ipairs({ q1, k1, v1 }) do t.requires_grad = true end
  local o1 = ad.scaled_dot_product_attention(q1, k1, v1)
  local q2, k2, v2 = q1:detach():to("f64"), k1:detach():to("f64"), v1:detach():to("f64")
  for _, t in ipairs({ q2, k2, v2 }) do t.requires_grad = true end
  local o2 = ad.scaled_dot_product_attention(q2, k2, v2)
  T.assert_close(o1:to("f64"), o2, { atol = 1e-5 })
  local g = randn({1, 300, 4})
  o1:backward(g:to("f32"))
  o2:backward(g)
  T.assert_close(q1.grad:to("f64"), q2.grad, { atol = 1e-4 })
  T.assert_close(k1.grad:to("f64"), k2.grad, { atol = 1e-4 })
  T.assert_close(v1.grad:to("f64"), v2.grad, { atol = 1e-4 })
end)

test("attention: gradcheck for q, k, v and an additive mask (odd sizes, non-contiguous q)", function()
  local q = randn({3, 2, 4}):transpose(1, 2)            -- (2, 3, 4) strided
  q.requires_grad = true
  local k, v = randn({2, 5, 4}, "f64", true), randn({2, 5, 3}, "f64", true)
  T.gradcheck(function(q, k, v) return ad.scaled_dot_product_attention(q, k, v) end, { q, k, v })
  T.gradcheck(function(q, k, v) return ad.scaled_dot_product_attention(q, k, v, { is_causal = true, scale = 0.5 }) end,
    { q, k, v })
  local m = randn({3, 5}, "f64", true)                  -- broadcast over the batch
  T.gradcheck(function(q, k, v, m) return ad.scaled_dot_product_attention(q, k, v, { mask = m }) end, { q, k, v, m })
  local keep = ad.ones(3, 5, { dtype = "bool" })
  keep:_setflat(2, 0); keep:_setflat(9, 0)
  T.gradcheck(function(q, k, v) return ad.scaled_dot_product_attention(q, k, v, { mask = keep }) end, { q, k, v })
  local kb, vb = randn({1, 5, 4}, "f64", true), randn({5, 3}, "f64", true)
  T.gradcheck(function(q, k, v) return ad.scaled_dot_product_attention(q, k, v) end, { q, kb, vb })
end)

test("attention: errors name the problem", function()
  local q, k, v = randn({2, 3, 4}), randn({2, 5, 4}), randn({2, 5, 3})
  raises("scaled_dot_product_attention: expected query (..., Lq, D), key (..., Lk, D), value (..., Lk, Dv), got [2, 3, 4], [2, 5, 3], [2, 5, 3]",
    ad.scaled_dot_product_attention, q, randn({2, 5, 3}), v)
  raises("scaled_dot_product_attention: mask of shape [4, 5] does not broadcast to the score shape [2, 3, 5]",
    ad.scaled_dot_product_attention, q, k, v, { mask = randn({4, 5}) })
  raises("scaled_dot_product_attention: query, key and value must have the same dtype, got f64, f32, f64",
    ad.scaled_dot_product_attention, q, k:to("f32"), v)
  raises("scaled_dot_product_attention: mask must be bool (true = attend) or floating point",
    ad.scaled_dot_product_attention, q, k, v, { mask = ad.zeros(3, 5, { dtype = "i64" }) })
end)

-- ===================================================================== embedding

test("embedding: gathers rows by 0-based index values, any index shape, i64 and i32", function()
  local w = randn({10, 3})
  local idx = ad.tensor({ {0, 9, 4}, {4, 4, 1} }, { dtype = "i64" })
  local y = ad.embedding(idx, w)
  assert_shape(y, {2, 3, 3})
  local flat = { 0, 9, 4, 4, 4, 1 }
  for r = 1, 6 do
    for d = 1, 3 do T.assert_close(y:_getflat((r - 1) * 3 + d), w:_getflat(flat[r] * 3 + d), { atol = 0 }) end
  end
  T.assert_close(ad.embedding(idx:to("i32"), w), y, { atol = 0 })
  local y0 = ad.embedding(ad.tensor(7, { dtype = "i64" }), w)
  assert_shape(y0, {3})
end)

test("embedding: backward accumulates repeated indices; gradcheck (non-contiguous weight)", function()
  local w = randn({4, 5}, "f64", true)
  local idx = ad.tensor({ 2, 0, 2, 2 }, { dtype = "i64" })
  ad.embedding(idx, w):backward(ad.ones(4, 5, { dtype = "f64" }))
  local counts = { 1, 0, 3, 0 }
  for r = 1, 4 do
    for d = 1, 5 do T.assert_close(w.grad:_getflat((r - 1) * 5 + d), counts[r], { atol = 0 }) end
  end
  local wt = randn({5, 4}):t()
  wt.requires_grad = true
  T.gradcheck(function(w) return ad.embedding(ad.tensor({ {3, 1}, {1, 1}, {0, 2} }, { dtype = "i64" }), w) end, { wt })
  -- a wide embedding takes the column-parallel backward path
  local wb = randn({50, 256}, "f32", true)
  local ib = ad.randint(0, 50, {700}, { generator = gen })
  ad.embedding(ib, wb):backward(ad.ones(700, 256))
  local want = {}
  for r = 0, 49 do want[r] = 0 end
  for i = 1, 700 do local r = math.tointeger(ib:_getflat(i)); want[r] = want[r] + 1 end
  for r = 0, 49 do T.assert_close(wb.grad:_getflat(r * 256 + 100), want[r], { atol = 0 }) end
end)

test("embedding: errors name the problem", function()
  local w = randn({10, 3})
  raises("embedding: index 12 out of range for 10 rows", ad.embedding, ad.tensor({ 1, 12 }, { dtype = "i64" }), w)
  raises("embedding: index -1 out of range for 10 rows", ad.embedding, ad.tensor({ -1 }, { dtype = "i32" }), w)
  raises("embedding: indices must be an integer tensor (i64 or i32), got f64", ad.embedding, randn({2}), randn({10, 3}))
  raises("embedding: arguments are (indices, weight) as in F.embedding", ad.embedding, w,
    ad.tensor({ 1 }, { dtype = "i64" }))
  raises("embedding: weight must be 2-D (num_embeddings, embedding_dim), got [10]", ad.embedding,
    ad.tensor({ 1 }, { dtype = "i64" }), randn({10}))
end)

-- ===================================================================== dropout

test("dropout: identity when p = 0 or not training, zeros when p = 1", function()
  local x = randn({3, 4})
  T.assert_close(ad.dropout(x, { p = 0 }), x, { atol = 0 })
  T.assert_close(ad.dropout(x, { p = 0.7, training = false }), x, { atol = 0 })
  T.assert_close(ad.dropout(x, { p = 1 }), ad.zeros(3, 4, { dtype = "f64" }), { atol = 0 })
end)

test("dropout: keep rate, 1/(1-p) scaling and gradient", function()
  local n, p = 200000, 0.3
  local x = ad.ones(n, { requires_grad = true })
  local y = ad.dropout(x, { p = p, generator = ad.Generator(11) })
  local zeros = 0
  for i = 1, n do
    local v = y:_getflat(i)
    if v == 0 then zeros = zeros + 1
    else assert(math.abs(v - 1 / (1 - p)) < 1e-6, "kept values are scaled by 1/(1-p)") end
  end
  -- binomial std of the fraction is sqrt(p(1-p)/n) ~ 0.001: allow 5 sigma
  assert(math.abs(zeros / n - p) < 0.005, "dropped fraction " .. zeros / n)
  y:backward(ad.ones(n))
  T.assert_close(x.grad, y:detach(), { atol = 0 }, "dx = mask / (1-p)")
  local xg = randn({7, 5}, "f64", true)
  T.gradcheck(function(x) return ad.dropout(x, { p = 0.4, generator = ad.Generator(5) }) end, { xg })
end)

test("dropout: reproducible with a seeded generator; the mask is the ad.rand stream", function()
  local x = randn({33, 7})
  local g1, g2 = ad.Generator(42), ad.Generator(42)
  local a = ad.dropout(x, { p = 0.5, generator = g1 })
  local b = ad.dropout(x, { p = 0.5, generator = g2 })
  T.assert_close(a, b, { atol = 0 })
  assert(g1:get_state().offset == (33 * 7 + 1) // 2, "offset advances by ceil(n/2) Philox blocks")
  local c = ad.dropout(x, { p = 0.5, generator = g1 })
  local differ = 0
  for i = 1, x:numel() do if (a:_getflat(i) == 0) ~= (c:_getflat(i) == 0) then differ = differ + 1 end end
  assert(differ > 0, "the next draw gives a new mask")
  local u = ad.rand(33, 7, { dtype = "f64", generator = ad.Generator(42) })
  for i = 1, x:numel() do
    assert((a:_getflat(i) ~= 0) == (u:_getflat(i) < 0.5), "element kept iff its uniform < 1 - p")
  end
  ad.manual_seed(99)
  local d1 = ad.dropout(x)
  ad.manual_seed(99)
  T.assert_close(ad.dropout(x), d1, { atol = 0 }, "the default generator is used and re-seedable")
end)

test("dropout: errors name the problem", function()
  raises("dropout: p must be in [0, 1], got 1.5", ad.dropout, randn({3}), { p = 1.5 })
  raises("dropout: input must be a floating-point tensor, got i64", ad.dropout, ad.zeros(3, { dtype = "i64" }))
  raises("option 'generator' must be an ad.Generator", ad.dropout, randn({3}), { generator = 5 })
end)
