-- test_linalg.lua: matmul (torch.matmul semantics), bmm and linear.
-- Forward results are checked against a naive product written here, on
-- contiguous operands and on the views BLAS reads in place (transposed,
-- sliced, broadcast); every op is gradchecked in f64; bad shapes must fail
-- with a message that names the op and both shapes.
local ad = require "advdiff"
local T = require "advdiff.testing"

-- deterministic data without ties: sin(1.7 i + 0.3) * scale
local function ramp(shape, scale, dtype)
  local t = ad.zeros(shape, { dtype = dtype or "f64" })
  for i = 1, t:numel() do t:_setflat(i, math.sin((i - 1) * 1.7 + 0.3) * (scale or 1)) end
  return t
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  err = tostring(err)
  assert(err:find(pattern, 1, true), "error '" .. err .. "' does not contain '" .. pattern .. "'")
end

local function concat(a, b)
  local r = { table.unpack(a) }
  for _, v in ipairs(b) do r[#r + 1] = v end
  return r
end

-- naive torch.matmul: 1-D operands get a dim inserted then removed, batch dims broadcast
local function naive_matmul(a, b)
  local a1, b1 = a:dim() == 1, b:dim() == 1
  if a1 then a = a:view(1, a:numel()) end
  if b1 then b = b:view(b:numel(), 1) end
  local sa, sb = a:shape(), b:shape()
  local m, k, n = sa[#sa - 1], sa[#sa], sb[#sb]
  assert(sb[#sb - 1] == k)
  local ba, bb = { table.unpack(sa, 1, #sa - 2) }, { table.unpack(sb, 1, #sb - 2) }
  local nb = math.max(#ba, #bb)
  local bshape = {}
  for i = 1, nb do
    local x = ba[#ba - nb + i] or 1
    local y = bb[#bb - nb + i] or 1
    bshape[i] = x == 1 and y or x
  end
  local ae = a:expand(concat(bshape, { m, k })):contiguous()
  local be = b:expand(concat(bshape, { k, n })):contiguous()
  local batch = 1
  for _, v in ipairs(bshape) do batch = batch * v end
  local out = {}
  for p = 0, batch - 1 do
    for i = 0, m - 1 do
      for j = 0, n - 1 do
        local s = 0
        for q = 0, k - 1 do s = s + ae:_getflat(p * m * k + i * k + q + 1) * be:_getflat(p * k * n + q * n + j + 1) end
        out[#out + 1] = s
      end
    end
  end
  local oshape = { table.unpack(bshape) }
  if not a1 then oshape[#oshape + 1] = m end
  if not b1 then oshape[#oshape + 1] = n end
  if #oshape == 0 then return ad.tensor(out[1], { dtype = "f64" }) end   -- ({} would read as an options table)
  local r = ad.zeros(oshape, { dtype = "f64" })
  for i = 1, #out do r:_setflat(i, out[i]) end
  return r
end

local function check_matmul(a, b, tol)
  local got = ad.matmul(a, b)
  local want = naive_matmul(a:to("f64"), b:to("f64"))
  T.assert_close(got:to("f64"), want, { atol = tol or 1e-12, rtol = tol or 1e-12 })
  return got
end

-- ======================================================================== matmul

test("matmul 1-D and 2-D forms (dot, matrix-vector, vector-matrix, matrix)", function()
  local d = check_matmul(ramp({ 7 }), ramp({ 7 }, 0.5))
  assert(d:dim() == 0)
  assert(#check_matmul(ramp({ 5, 7 }), ramp({ 7 })):shape() == 1)
  assert(check_matmul(ramp({ 7 }), ramp({ 7, 3 })):shape()[1] == 3)
  check_matmul(ramp({ 5, 7 }), ramp({ 7, 3 }, 0.5))
  check_matmul(ramp({ 1, 1 }), ramp({ 1, 1 }))
end)

test("matmul batched with broadcasting", function()
  check_matmul(ramp({ 2, 5, 7 }), ramp({ 7, 3 }))          -- folds into one (10, 7) product
  check_matmul(ramp({ 5, 7 }), ramp({ 2, 7, 3 }))
  check_matmul(ramp({ 2, 1, 5, 7 }), ramp({ 3, 7, 4 }))    -- -> (2, 3, 5, 4)
  check_matmul(ramp({ 4 }), ramp({ 2, 4, 3 }))             -- -> (2, 3)
  check_matmul(ramp({ 2, 3, 4 }), ramp({ 4 }))             -- -> (2, 3)
  check_matmul(ramp({ 3, 1, 4 }), ramp({ 3, 4, 1 }))
  local y = check_matmul(ramp({ 2, 1, 5, 7 }), ramp({ 3, 7, 4 }))
  assert(table.concat(y:shape(), ",") == "2,3,5,4")
end)

test("matmul reads transposed, sliced and permuted views", function()
  local at = ramp({ 7, 5 }):t()                                 -- column-major (5, 7)
  local bt = ramp({ 3, 7 }):t()                                 -- column-major (7, 3)
  assert(not at:is_contiguous() and not bt:is_contiguous())
  check_matmul(at, bt)
  check_matmul(at, ramp({ 7, 3 }))
  check_matmul(ramp({ 5, 9 }):narrow(2, 2, 7), ramp({ 7, 6 }):narrow(2, 3, 3))   -- ld > cols
  check_matmul(ramp({ 3, 2, 5, 7 }):permute(2, 1, 3, 4), ramp({ 7, 4 }))       -- batch dims do not collapse
  check_matmul(ramp({ 2, 7, 5 }):transpose(2, 3), ramp({ 2, 3, 7 }):transpose(2, 3))
  check_matmul(ramp({ 5, 7 }):expand(4, 5, 7), ramp({ 4, 7, 2 }))             -- stride-0 batch
  check_matmul(ramp({ 2, 5, 14 }):slice(3, 1, 14, 2), ramp({ 7, 3 }))            -- column stride 2: copied
end)

test("matmul with empty dimensions", function()
  local y = ad.matmul(ramp({ 0, 3 }), ramp({ 3, 4 }))
  assert(y:shape()[1] == 0 and y:shape()[2] == 4)
  local z = ad.matmul(ad.zeros({ 2, 0 }, { dtype = "f64" }), ad.zeros({ 0, 3 }, { dtype = "f64" }))
  T.assert_close(z, ad.zeros({ 2, 3 }, { dtype = "f64" }), { atol = 0, rtol = 0 })
end)

test("matmul f32 at a size with tails, and f16/bf16 through f32", function()
  local a, b = ramp({ 33, 65 }, 1, "f32"), ramp({ 65, 17 }, 1, "f32")
  check_matmul(a, b, 1e-5)
  check_matmul(ramp({ 3, 33, 65 }, 1, "f32"), ramp({ 3, 65, 17 }, 1, "f32"), 1e-5)
  for _, dt in ipairs({ "f16", "bf16" }) do
    local y = ad.matmul(ramp({ 9, 13 }, 1, dt), ramp({ 13, 6 }, 1, dt):t():contiguous():t())
    assert(y:dtype() == dt)
    T.assert_close(y:to("f64"), naive_matmul(ramp({ 9, 13 }, 1, dt):to("f64"), ramp({ 13, 6 }, 1, dt):to("f64")),
      { atol = 0.05, rtol = 0.02 })
  end
end)

test("tensor method a:matmul(b)", function()
  local a, b = ramp({ 3, 4 }), ramp({ 4, 2 })
  T.assert_close(a:matmul(b), ad.matmul(a, b), { atol = 0, rtol = 0 })
end)

test("matmul gradcheck: every form, broadcast and non-contiguous operands", function()
  local function leaf(shape, s) local t = ramp(shape, s); t.requires_grad = true; return t end
  local forms = {
    { leaf({ 7 }), leaf({ 7 }, 0.5) },
    { leaf({ 5, 3 }), leaf({ 3 }, 0.5) },
    { leaf({ 3 }), leaf({ 3, 4 }, 0.5) },
    { leaf({ 2, 5, 3 }), leaf({ 3, 4 }, 0.5) },       -- weight-like b: folded gradient
    { leaf({ 5, 3 }), leaf({ 2, 3, 4 }, 0.5) },
    { leaf({ 2, 1, 3, 5 }), leaf({ 3, 5, 2 }, 0.5) },
    { leaf({ 3 }), leaf({ 2, 3, 4 }, 0.5) },
    { leaf({ 2, 4, 3 }), leaf({ 3 }, 0.5) },
  }
  for _, f in ipairs(forms) do T.gradcheck(function(a, b) return ad.matmul(a, b) end, f) end
  local a, b = leaf({ 3, 5 }), leaf({ 4, 3 }, 0.5)
  T.gradcheck(function(a_, b_) return ad.matmul(a_:t(), b_:t()) end, { a, b })
  local c, d = leaf({ 3, 2, 4, 5 }), leaf({ 5, 3 }, 0.5)
  T.gradcheck(function(c_, d_) return ad.matmul(c_:permute(2, 1, 3, 4), d_) end, { c, d })
end)

test("matmul errors name the shapes", function()
  raises("matmul: shapes [2, 3] and [4, 5] cannot be multiplied", ad.matmul, ramp({ 2, 3 }), ramp({ 4, 5 }))
  raises("matmul: shapes [3] and [4] cannot be multiplied", ad.matmul, ramp({ 3 }), ramp({ 4 }))
  raises("matmul: both operands must have the same dtype, got f32 and f64", ad.matmul, ramp({ 2, 3 }, 1, "f32"), ramp({ 3, 2 }))
  raises("matmul: floating-point tensors expected, got i64 and i64", ad.matmul, ad.zeros({ 2, 2 }, { dtype = "i64" }),
    ad.zeros({ 2, 2 }, { dtype = "i64" }))
  raises("matmul: both arguments need at least 1 dimension", ad.matmul, ad.tensor(1.0, { dtype = "f64" }), ramp({ 2 }))
  raises("matmul", ad.matmul, ramp({ 2, 2, 3 }), ramp({ 3, 3, 2 }))      -- batch 2 vs 3
  raises("advdiff.Tensor expected", ad.matmul, ramp({ 2, 2 }), nil)
end)

-- ======================================================================== bmm

test("bmm forward, gradcheck and errors", function()
  local a, b = ramp({ 3, 4, 5 }), ramp({ 3, 5, 2 }, 0.5)
  T.assert_close(ad.bmm(a, b), naive_matmul(a, b), { atol = 1e-12, rtol = 1e-12 })
  T.assert_close(a:bmm(b), naive_matmul(a, b), { atol = 1e-12, rtol = 1e-12 })
  a.requires_grad, b.requires_grad = true, true
  T.gradcheck(function(a_, b_) return ad.bmm(a_, b_:transpose(2, 3):contiguous():transpose(2, 3)) end, { a, b })
  raises("bmm: expected 3-D tensors (B, n, k) and (B, k, m), got [4, 5] and [3, 5, 2]", ad.bmm, ramp({ 4, 5 }), ramp({ 3, 5, 2 }))
  raises("bmm: batch sizes differ: [3, 4, 5] and [2, 5, 2]", ad.bmm, ramp({ 3, 4, 5 }), ramp({ 2, 5, 2 }))
  raises("bmm: shapes [3, 4, 5] and [3, 4, 2] cannot be multiplied", ad.bmm, ramp({ 3, 4, 5 }), ramp({ 3, 4, 2 }))
end)

-- ======================================================================== linear

test("linear forward: x of any leading dims, with and without bias", function()
  local w, b = ramp({ 4, 6 }, 0.5), ramp({ 4 }, 0.1)
  for _, shape in ipairs({ { 6 }, { 3, 6 }, { 2, 3, 6 }, { 2, 1, 3, 6 } }) do
    local x = ramp(shape)
    local want = naive_matmul(x, w:t())
    T.assert_close(ad.linear(x, w), want, { atol = 1e-12, rtol = 1e-12 })
    T.assert_close(ad.linear(x, w, b), want + b, { atol = 1e-12, rtol = 1e-12 })
  end
  -- a transposed weight view and a non-contiguous x
  local wt = ramp({ 6, 4 }, 0.5):t()
  local x = ramp({ 3, 6, 2 }):transpose(2, 3)
  T.assert_close(ad.linear(x, wt, b), naive_matmul(x, wt:t()) + b, { atol = 1e-12, rtol = 1e-12 })
  local x32 = ramp({ 5, 6 }, 1, "f32")
  T.assert_close(ad.linear(x32, w:to("f32"), b:to("f32")):to("f64"), naive_matmul(x32:to("f64"), w:t()) + b,
    { atol = 1e-5, rtol = 1e-5 })
end)

test("linear gradcheck (bias, no bias, 1-D and batched x, non-contiguous)", function()
  local function leaf(shape, s) local t = ramp(shape, s); t.requires_grad = true; return t end
  local w, b = leaf({ 3, 5 }, 0.5), leaf({ 3 }, 0.1)
  T.gradcheck(function(x_, w_, b_) return ad.linear(x_, w_, b_) end, { leaf({ 2, 4, 5 }), w, b })
  T.gradcheck(function(x_, w_) return ad.linear(x_, w_) end, { leaf({ 5 }), w })
  T.gradcheck(function(x_, w_, b_) return ad.linear(x_:transpose(2, 3), w_, b_) end, { leaf({ 2, 5, 4 }), w, b })
  T.gradcheck(function(x_, w_, b_) return ad.linear(x_, w_:t(), b_) end, { leaf({ 4, 5 }), leaf({ 5, 3 }, 0.5), b })
end)

test("linear errors", function()
  raises("linear: input [2, 4] does not end in in_features = 5 (weight [3, 5])", ad.linear, ramp({ 2, 4 }), ramp({ 3, 5 }))
  raises("linear: weight must be 2-D (out_features, in_features), got 3-D [1, 3, 5]", ad.linear, ramp({ 2, 5 }), ramp({ 1, 3, 5 }))
  raises("linear: bias must be 1-D of size out_features = 3, got [4]", ad.linear, ramp({ 2, 5 }), ramp({ 3, 5 }), ramp({ 4 }))
  raises("linear: bias dtype f32 differs from input dtype f64", ad.linear, ramp({ 2, 5 }), ramp({ 3, 5 }), ramp({ 3 }, 1, "f32"))
end)
