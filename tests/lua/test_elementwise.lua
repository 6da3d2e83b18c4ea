-- test_elementwise.lua: the elementwise family through the public Lua API:
-- unary math and activations, binary arithmetic and comparisons, scalars on
-- either side, clamp, where, maximum/minimum; every dtype path, broadcasting,
-- non-contiguous inputs, f64 gradchecks and error messages.
local ad = require "advdiff"
local T = require "advdiff.testing"

-- ---------------------------------------------------------------- helpers

local expect_error, shape_str, check_shape, check_flat = T.raises, T.shape_str, T.check_shape, T.check_flat

local function flat(t)
  local out = {}
  for i = 1, t:numel() do out[i] = t:_getflat(i) end
  return out
end

-- deterministic values: n numbers in [lo, hi], none repeated
local function values(n, lo, hi)
  local out = {}
  for i = 1, n do out[i] = lo + (hi - lo) * (0.5 + 0.5 * math.sin(i * 1.7 + 0.3)) end
  return out
end

local function tensor(vals, shape, dtype)
  return ad.tensor(vals, { dtype = dtype or "f64" }):view(shape)
end

-- erf by its Maclaurin series: accurate to ~1e-13 on [-3, 3]
local function erf(x)
  local sum, term, n = x, x, 0
  repeat
    n = n + 1
    term = -term * x * x / n
    local add = term / (2 * n + 1)
    sum = sum + add
  until math.abs(add) < 1e-17 * math.abs(sum) and n > 5
  return 2 / math.sqrt(math.pi) * sum
end
local function sigmoid(x) return 1 / (1 + math.exp(-x)) end
local function rint(x)
  local f = math.floor(x)
  local d = x - f
  if d > 0.5 then return f + 1 elseif d < 0.5 then return f end
  return (f % 2 == 0) and f or f + 1
end

-- name -> reference and input domain
local UNARY = {
  { "neg", function(x) return -x end, -3, 3 },
  { "exp", math.exp, -3, 3 },
  { "log", math.log, 0.1, 4 },
  { "log1p", function(x) return math.log(1 + x) end, -0.5, 3 },
  { "expm1", function(x) return math.exp(x) - 1 end, -2, 2 },
  { "sqrt", math.sqrt, 0.1, 4 },
  { "rsqrt", function(x) return 1 / math.sqrt(x) end, 0.1, 4 },
  { "abs", math.abs, -3, 3 },
  { "sign", function(x) return x > 0 and 1 or (x < 0 and -1 or 0) end, -3, 3 },
  { "sin", math.sin, -3, 3 },
  { "cos", math.cos, -3, 3 },
  { "tanh", function(x) local e = math.exp(2 * x); return (e - 1) / (e + 1) end, -3, 3 },
  { "sigmoid", sigmoid, -4, 4 },
  { "relu", function(x) return x > 0 and x or 0 end, -3, 3 },
  { "silu", function(x) return x * sigmoid(x) end, -4, 4 },
  { "gelu", function(x) return 0.5 * x * (1 + erf(x / math.sqrt(2))) end, -3, 3 },
  { "softplus", function(x) return math.log(1 + math.exp(x)) end, -4, 4 },
  { "square", function(x) return x * x end, -3, 3 },
  { "reciprocal", function(x) return 1 / x end, 0.2, 3 },
  { "floor", math.floor, -3, 3 },
  { "ceil", math.ceil, -3, 3 },
  { "round", rint, -3, 3 },
}
local NONDIFF_ZERO = { sign = true, floor = true, ceil = true, round = true }

-- ---------------------------------------------------------------- unary

test("unary ops: f64 and f32 against closed forms, function and method", function()
  for _, u in ipairs(UNARY) do
    local name, ref, lo, hi = u[1], u[2], u[3], u[4]
    local v = values(35, lo, hi)
    local want = {}
    for i = 1, #v do want[i] = ref(v[i]) end
    local x64 = tensor(v, { 7, 5 }, "f64")
    local y = ad[name](x64)
    assert(y:dtype() == "f64", name .. " dtype")
    check_shape(y, { 7, 5 })
    check_flat(y, want, 1e-12, 1e-12, name .. " f64")
    check_flat(x64[name](x64), want, 1e-12, 1e-12, name .. " f64 method")
    local x32 = tensor(v, { 7, 5 }, "f32")
    local want32 = {}
    for i = 1, 35 do want32[i] = ref(x32:_getflat(i)) end -- reference on the rounded inputs
    local y32 = ad[name](x32)
    assert(y32:dtype() == "f32", name .. " f32 dtype")
    check_flat(y32, want32, 1e-6, 1e-5, name .. " f32")
  end
end)

test("unary ops: special values", function()
  local x = ad.tensor({ 0 / 0, math.huge, -math.huge, 0, -2.5, 2.5, 0.5, 1.5 })
  check_flat(ad.relu(x), { 0 / 0, math.huge, 0, 0, 0, 2.5, 0.5, 1.5 }, 0, 0, "relu")
  check_flat(ad.round(x), { 0 / 0, math.huge, -math.huge, 0, -2, 2, 0, 2 }, 0, 0, "round half to even")
  check_flat(ad.sigmoid(ad.tensor({ -1000, 1000 })), { 0, 1 }, 0, 0, "sigmoid saturates")
  check_flat(ad.softplus(ad.tensor({ 30, -1000 })), { 30, 0 }, 1e-12, 0, "softplus stable")
  check_flat(ad.isnan(x), { true, false, false, false, false, false, false, false }, 0, 0, "isnan")
  check_flat(ad.isfinite(x), { false, false, false, true, true, true, true, true }, 0, 0, "isfinite")
  check_flat(ad.logical_not(x), { false, false, false, true, false, false, false, false }, 0, 0, "logical_not")
  assert(ad.isnan(x):dtype() == "bool")
end)

test("unary ops on non-contiguous inputs equal the contiguous result", function()
  local base = tensor(values(6 * 7, -2, 2), { 6, 7 }, "f32")
  local tr = base:transpose(1, 2)                 -- (7, 6), strided
  local nar = base:narrow(2, 2, 4)                -- (6, 4), row stride 7
  assert(not tr:is_contiguous() and not nar:is_contiguous())
  for _, name in ipairs({ "exp", "silu", "neg", "abs", "gelu", "isnan" }) do
    T.assert_close(ad[name](tr), ad[name](tr:contiguous()), { atol = 0, rtol = 0 }, name .. " transpose")
    T.assert_close(ad[name](nar), ad[name](nar:contiguous()), { atol = 0, rtol = 0 }, name .. " narrow")
  end
  -- a broadcast view (stride 0) as input
  local row = tensor({ 1, 2, 3 }, { 1, 3 }, "f64"):expand(4, 3)
  check_flat(ad.square(row), { 1, 4, 9, 1, 4, 9, 1, 4, 9, 1, 4, 9 }, 0, 0, "expanded input")
end)

test("unary ops: integer, f16 and bf16 dtypes", function()
  local xi = ad.tensor({ -3, 0, 2, 7 }, { dtype = "i64" })
  for name, want in pairs({ abs = { 3, 0, 2, 7 }, neg = { 3, 0, -2, -7 }, sign = { -1, 0, 1, 1 },
                            relu = { 0, 0, 2, 7 }, square = { 9, 0, 4, 49 }, floor = { -3, 0, 2, 7 } }) do
    local y = ad[name](xi)
    assert(y:dtype() == "i64", name .. " keeps i64, got " .. y:dtype())
    check_flat(y, want, 0, 0, name .. " i64")
  end
  local e = ad.exp(xi)
  assert(e:dtype() == "f32", "exp of i64 is f32")
  check_flat(e, { math.exp(-3), 1, math.exp(2), math.exp(7) }, 0, 1e-6, "exp i64")
  assert(ad.sqrt(ad.tensor({ 4 }, { dtype = "i32" })):dtype() == "f32")
  -- f16/bf16: computed in higher precision, rounded to the storage format
  local h = ad.tensor({ 0.5, 1, 2 }, { dtype = "f16" })
  local eh = ad.exp(h)
  assert(eh:dtype() == "f16")
  check_flat(eh, { 1.6484375, 2.71875, 7.390625 }, 0, 0, "exp f16 rounds to nearest f16")
  local b = ad.tensor({ 0.5, 1, 2 }, { dtype = "bf16" })
  local eb = ad.exp(b)
  assert(eb:dtype() == "bf16")
  check_flat(eb, { 1.6484375, 2.71875, 7.375 }, 0, 0, "exp bf16 rounds to nearest bf16")
  expect_error("neg: bool tensors are not supported", ad.neg, ad.tensor({ true, false }, { dtype = "bool" }))
end)

test("unary gradchecks in f64 (odd sizes, permuted input)", function()
  for _, u in ipairs(UNARY) do
    local name, lo, hi = u[1], u[3], u[4]
    if not NONDIFF_ZERO[name] then
      local x = tensor(values(35, lo, hi), { 7, 5 }, "f64")
      x.requires_grad = true
      T.gradcheck(function(a) return ad[name](a) end, { x })
      local p = tensor(values(12, lo, hi), { 3, 4 }, "f64")
      p.requires_grad = true
      T.gradcheck(function(a) return ad[name](a:transpose(1, 2)) end, { p })
    end
  end
end)

test("piecewise constant ops give zero gradients; bool ops record nothing", function()
  for name in pairs(NONDIFF_ZERO) do
    local x = tensor(values(6, -2, 2), { 2, 3 }, "f64")
    x.requires_grad = true
    local y = ad[name](x)
    assert(y.requires_grad, name .. " output requires grad")
    y:sum():backward()
    check_flat(x.grad, { 0, 0, 0, 0, 0, 0 }, 0, 0, name .. " grad")
  end
  local x = ad.randn(3, 4, { requires_grad = true })
  for _, y in ipairs({ x:lt(0), x:eq(x), ad.isnan(x), ad.logical_not(x), x:gt(ad.zeros(4)),
                       ad.logical_and(x, x), x:ge(0.5) }) do
    assert(y:dtype() == "bool")
    assert(not y.requires_grad, "comparison output must not require grad")
  end
end)

-- ---------------------------------------------------------------- binary

-- reference broadcast: out[i] = f(a[ia], b[ib]) in row-major order
local function bcast_ref(a, b, f)
  local sa, sb = a:shape(), b:shape()
  local n = math.max(#sa, #sb)
  local so = {}
  for i = 1, n do
    local da, db = sa[#sa - n + i] or 1, sb[#sb - n + i] or 1
    so[i] = da == 1 and db or da
  end
  local total = 1
  for i = 1, n do total = total * so[i] end
  local function off(s, idx)
    local o = 0
    for d = 1, #s do
      local i = idx[d + n - #s]
      if s[d] == 1 then i = 0 end
      o = o * s[d] + i
    end
    return o + 1
  end
  local out = {}
  for flatidx = 0, total - 1 do
    local rem, idx = flatidx, {}
    for d = n, 1, -1 do idx[d] = rem % so[d]; rem = rem // so[d] end
    out[flatidx + 1] = f(a:_getflat(off(sa, idx)), b:_getflat(off(sb, idx)))
  end
  return out, so
end

local BINARY = {
  add = function(x, z) return x + z end,
  sub = function(x, z) return x - z end,
  mul = function(x, z) return x * z end,
  div = function(x, z) return x / z end,
  pow = function(x, z) return x ^ z end,
  maximum = function(x, z) return math.max(x, z) end,
  minimum = function(x, z) return math.min(x, z) end,
}
local COMPARE = {
  eq = function(x, z) return x == z end, ne = function(x, z) return x ~= z end,
  lt = function(x, z) return x < z end, le = function(x, z) return x <= z end,
  gt = function(x, z) return x > z end, ge = function(x, z) return x >= z end,
  logical_and = function(x, z) return x ~= 0 and z ~= 0 end,
  logical_or = function(x, z) return x ~= 0 or z ~= 0 end,
  logical_xor = function(x, z) return (x ~= 0) ~= (z ~= 0) end,
}

local SHAPE_PAIRS = {
  { { 7, 5 }, { 7, 5 } },        -- same shape: the flat path
  { { 3, 1, 4 }, { 5, 1 } },     -- both broadcast, different ranks
  { { 2, 3 }, { 3 } },           -- row vector
  { { 1 }, { 4, 3 } },           -- size-1 on the left
  { {}, { 2, 3 } },              -- 0-d tensor on the left
  { { 4, 1 }, { 1, 6 } },        -- outer product layout
}

test("binary ops: f64 and f32 with broadcasting against a reference", function()
  for name, f in pairs(BINARY) do
    for _, sp in ipairs(SHAPE_PAIRS) do
      for _, dt in ipairs({ "f64", "f32" }) do
        local na, nb = 1, 1
        for _, s in ipairs(sp[1]) do na = na * s end
        for _, s in ipairs(sp[2]) do nb = nb * s end
        local a = ad.tensor(values(na, 0.5, 2.5), { dtype = dt }):view(sp[1])
        local b = ad.tensor(values(nb + 3, -1.5, 1.5), { dtype = dt }):narrow(1, 4, nb):view(sp[2])
        local want, so = bcast_ref(a, b, f)
        local y = ad[name](a, b)
        assert(y:dtype() == dt, name .. " dtype")
        check_shape(y, so)
        local tol = dt == "f64" and 1e-12 or 1e-6
        check_flat(y, want, tol, tol, name .. " " .. dt .. " " .. shape_str(sp[1]) .. shape_str(sp[2]))
        check_flat(a[name](a, b), want, tol, tol, name .. " method")
      end
    end
  end
end)

test("comparisons and logical ops give bool with broadcasting", function()
  local a = ad.tensor({ { 1, 2, 3 }, { 0, -1, 2 } })
  local b = ad.tensor({ 2, 2, 0 })
  for name, f in pairs(COMPARE) do
    local want = bcast_ref(a, b, f)
    local y = ad[name](a, b)
    assert(y:dtype() == "bool", name .. " bool")
    check_shape(y, { 2, 3 })
    check_flat(y, want, 0, 0, name)
    -- with a number on either side
    local wr = bcast_ref(a, ad.tensor({ 1 }), f)
    check_flat(ad[name](a, 1), wr, 0, 0, name .. " scalar right")
    local wl = bcast_ref(ad.tensor({ 1 }), a, f)
    check_flat(ad[name](1, a), wl, 0, 0, name .. " scalar left")
  end
  -- integer tensor against a non-integral number compares exactly
  check_flat(ad.lt(ad.tensor({ 2, 3 }, { dtype = "i64" }), 2.5), { true, false }, 0, 0, "i64 < 2.5")
  -- NaN compares false except ne
  local n = ad.tensor({ 0 / 0 })
  check_flat(n:eq(n), { false }, 0, 0, "nan == nan")
  check_flat(n:ne(n), { true }, 0, 0, "nan ~= nan")
end)

test("scalars on either side, metamethods", function()
  local x = ad.tensor({ 1, 2, 4 }, { dtype = "f32" })
  check_flat(x + 1, { 2, 3, 5 }, 0, 0, "x + 1")
  check_flat(1 + x, { 2, 3, 5 }, 0, 0, "1 + x")
  check_flat(x - 1, { 0, 1, 3 }, 0, 0, "x - 1")
  check_flat(10 - x, { 9, 8, 6 }, 0, 0, "10 - x")
  check_flat(x * 3, { 3, 6, 12 }, 0, 0, "x * 3")
  check_flat(x / 2, { 0.5, 1, 2 }, 0, 0, "x / 2")
  check_flat(2 / x, { 2, 1, 0.5 }, 0, 0, "2 / x")
  check_flat(x ^ 2, { 1, 4, 16 }, 0, 0, "x ^ 2")
  check_flat(2 ^ x, { 2, 4, 16 }, 0, 0, "2 ^ x")
  check_flat(-x, { -1, -2, -4 }, 0, 0, "-x")
  check_flat(x + x * x, { 2, 6, 20 }, 0, 0, "x + x * x")
  check_flat(ad.maximum(x, 2), { 2, 2, 4 }, 0, 0, "maximum(x, 2)")
  check_flat(ad.minimum(3, x), { 1, 2, 3 }, 0, 0, "minimum(3, x)")
  check_flat(ad.add(x, ad.tensor({ 1, 1, 1 }), { alpha = 2 }), { 3, 4, 6 }, 0, 0, "add alpha")
  check_flat(ad.sub(x, ad.tensor({ 1, 1, 1 }), { alpha = 0.5 }), { 0.5, 1.5, 3.5 }, 0, 0, "sub alpha")
  assert((x * 0.5):dtype() == "f32", "a number does not promote f32")
end)

test("dtype promotion", function()
  local i = ad.tensor({ 7, -3 }, { dtype = "i64" })
  local f = ad.tensor({ 0.5, 0.5 }, { dtype = "f32" })
  assert((i + f):dtype() == "f32")
  local q = i / ad.tensor({ 2, 2 }, { dtype = "i64" })
  assert(q:dtype() == "f32", "int / int is true division")
  check_flat(q, { 3.5, -1.5 }, 0, 0, "7/2")
  check_flat(i / 2, { 3.5, -1.5 }, 0, 0, "i64 / 2")
  assert((i + 2):dtype() == "i64")
  check_flat(i + 2, { 9, -1 }, 0, 0, "i64 + 2")
  assert((i * 1.5):dtype() == "f32")
  check_flat(i * 1.5, { 10.5, -4.5 }, 0, 0, "i64 * 1.5")
  assert((ad.tensor({ 1 }, { dtype = "i32" }) + ad.tensor({ 1 }, { dtype = "i64" })):dtype() == "i64")
  assert((f + ad.tensor({ 1 }, { dtype = "f64" })):dtype() == "f64", "1-d f64 promotes")
  assert((f * ad.tensor(2, { dtype = "f64" })):dtype() == "f32", "0-d f64 does not promote f32")
  assert((i * ad.tensor(2.5, { dtype = "f64" })):dtype() == "f64", "0-d float promotes ints")
  local u = ad.tensor({ 250, 3 }, { dtype = "u8" })
  check_flat(u + ad.tensor({ 10, 1 }, { dtype = "u8" }), { 4, 4 }, 0, 0, "u8 wraps")
  local bb = ad.tensor({ true, false }, { dtype = "bool" })
  check_flat(bb + 1, { 2, 1 }, 0, 0, "bool + 1 counts")
  -- f16 and bf16 arithmetic rounds to the storage format
  local h = ad.tensor({ 1, 2048 }, { dtype = "f16" })
  local hs = h + ad.tensor({ 1e-4, 1 }, { dtype = "f16" })
  assert(hs:dtype() == "f16")
  check_flat(hs, { 1, 2048 }, 0, 0, "f16 rounding")
  check_flat(ad.tensor({ 1 }, { dtype = "bf16" }) + 0.001, { 1 }, 0, 0, "bf16 rounding")
  check_flat(ad.tensor({ 3 }, { dtype = "f16" }) * ad.tensor({ 1.5 }, { dtype = "f16" }), { 4.5 }, 0, 0, "f16 mul")
end)

test("binary ops on non-contiguous and broadcast-view inputs", function()
  local a = tensor(values(6 * 5, -2, 2), { 6, 5 }, "f32")
  local b = tensor(values(5 * 6, 0.5, 2), { 5, 6 }, "f32"):transpose(1, 2)
  for name in pairs(BINARY) do
    local aa = name == "pow" and ad.abs(a) or a
    T.assert_close(ad[name](aa, b), ad[name](aa:contiguous(), b:contiguous()), { atol = 0, rtol = 0 }, name)
    T.assert_close(ad[name](aa:narrow(1, 2, 3), b:narrow(1, 2, 3)),
      ad[name](aa:narrow(1, 2, 3):contiguous(), b:narrow(1, 2, 3):contiguous()), { atol = 0, rtol = 0 }, name)
  end
  -- non-contiguous + broadcast together
  local col = tensor({ 1, 2, 3, 4, 5, 6 }, { 6, 1 }, "f32")
  check_flat(b:sub(col):narrow(2, 1, 1), bcast_ref(b:narrow(2, 1, 1), col, BINARY.sub), 1e-6, 1e-6, "strided - column")
end)

test("transposed operands (the tiled path), with batch dims and ragged tiles", function()
  local a = tensor(values(3 * 100 * 70, -2, 2), { 3, 100, 70 }, "f32")
  local b = tensor(values(3 * 70 * 100, -1, 1), { 3, 70, 100 }, "f32")
  local at = a:transpose(2, 3)                      -- (3, 70, 100), inner stride 70
  for _, name in ipairs({ "add", "mul", "maximum", "lt" }) do
    T.assert_close(ad[name](at, b), ad[name](at:contiguous(), b), { atol = 0, rtol = 0 }, name)
    T.assert_close(ad[name](b, at), ad[name](b, at:contiguous()), { atol = 0, rtol = 0 }, name .. " swapped")
  end
  T.assert_close(ad.silu(at), ad.silu(at:contiguous()), { atol = 0, rtol = 0 }, "silu")
  local p = a:permute(3, 1, 2)                      -- (70, 3, 100)
  T.assert_close(p * 2 + p, (p:contiguous() * 2) + p:contiguous(), { atol = 0, rtol = 0 }, "permute")
  local big = ad.randn(130, 150, { dtype = "f64" })
  local r = ad.randn(130, { dtype = "f64" })
  T.assert_close(big:t() * r, big:t():contiguous() * r, { atol = 0, rtol = 0 }, "transpose times a row")
end)

test("f32 exp, sigmoid and silu are accurate over the whole range", function()
  local n = 4001
  local x = ad.linspace(-110, 95, n, { dtype = "f32" })
  local e, s, si = ad.exp(x), ad.sigmoid(x), ad.silu(x)
  for i = 1, n do
    local v = x:_getflat(i)
    local ref = math.exp(v)
    local got = e:_getflat(i)
    if ref > 3.4028234663852886e38 then
      assert(got == math.huge, "exp overflow at " .. v)
    elseif ref < 1.1754943508222875e-38 then
      assert(math.abs(got - ref) <= 1.5e-45, "exp underflow at " .. v .. ": " .. got)
    else
      assert(math.abs(got - ref) <= 2.5e-7 * ref, string.format("exp(%.9g) = %.9g, want %.9g", v, got, ref))
    end
    local sr = 1 / (1 + math.exp(-v))
    assert(math.abs(s:_getflat(i) - sr) <= 2.5e-7 * sr + 3e-45, string.format("sigmoid(%.9g)", v))
    assert(math.abs(si:_getflat(i) - v * sr) <= 4e-7 * math.abs(v * sr) + (math.abs(v) + 1) * 3e-45, string.format("silu(%.9g)", v))
  end
  check_flat(ad.exp(ad.tensor({ math.huge, -math.huge, 0 / 0, 0 })), { math.huge, 0, 0 / 0, 1 }, 0, 0, "exp special")
  check_flat(ad.sigmoid(ad.tensor({ math.huge, -math.huge, 0 / 0, 0 })), { 1, 0, 0 / 0, 0.5 }, 0, 0, "sigmoid special")
  check_flat(ad.silu(ad.tensor({ -math.huge, 0 / 0 })), { 0 / 0, 0 / 0 }, 0, 0, "silu special")
end)

test("large tensors: flat, scalar, broadcast and strided paths (threaded)", function()
  local n = 300007
  local x = ad.arange(0, n, 1, { dtype = "f32" })
  local y = x * 2 + 1
  check_flat(y:narrow(1, n - 2, 3), { 2 * (n - 3) + 1, 2 * (n - 2) + 1, 2 * (n - 1) + 1 }, 0, 0, "tail")
  local a = ad.arange(0, 700 * 600, 1, { dtype = "f64" }):view(700, 600)
  local r = ad.arange(0, 700, 1, { dtype = "f64" }):view(700, 1)
  local s = a:transpose(1, 2) + r:transpose(1, 2)   -- (600, 700) strided + row broadcast
  -- s[i][j] = a[j][i] + j = (j*600 + i) + j
  local probes = { { 1, 1 }, { 600, 700 }, { 17, 333 }, { 599, 2 } }
  for _, p in ipairs(probes) do
    local i, j = p[1] - 1, p[2] - 1
    local v = s:_getflat(i * 700 + j + 1)
    assert(v == j * 600 + i + j, string.format("s[%d][%d] = %g", p[1], p[2], v))
  end
  local e = ad.exp(ad.full({ 200001 }, 0.5))
  check_flat(e:narrow(1, 200001, 1), { math.exp(0.5) }, 0, 1e-6, "exp threaded")
end)

test("empty tensors", function()
  local e = ad.zeros(0, 3)
  local y = e + ad.ones(3)
  check_shape(y, { 0, 3 })
  check_shape(ad.exp(e), { 0, 3 })
  check_shape(e:lt(1), { 0, 3 })
end)

-- ---------------------------------------------------------------- pow, clamp, where, maximum

test("pow: tensor^tensor, tensor^scalar, scalar^tensor with gradients", function()
  local a = tensor(values(15, 0.5, 2), { 3, 5 })
  local b = tensor(values(5, -1.5, 2), { 5 })
  a.requires_grad = true
  b.requires_grad = true
  T.gradcheck(function(x, y) return ad.pow(x, y) end, { a, b })
  T.gradcheck(function(x) return x ^ 3 end, { a })
  T.gradcheck(function(x) return x ^ -0.5 end, { a })
  T.gradcheck(function(x) return 2.5 ^ x end, { b })
  -- d/da at b == 0 is 0, d/db at a == 0 (b > 0) is 0, as PyTorch
  local z = ad.tensor({ 0, 2 }, { dtype = "f64", requires_grad = true })
  local e = ad.tensor({ 0, 0 }, { dtype = "f64", requires_grad = true })
  ad.pow(z, e):sum():backward()
  check_flat(z.grad, { 0, 0 }, 0, 0, "pow grad base at exponent 0")
  local z2 = ad.tensor({ 0 }, { dtype = "f64", requires_grad = true })
  local e2 = ad.tensor({ 2 }, { dtype = "f64", requires_grad = true })
  ad.pow(z2, e2):sum():backward()
  check_flat(e2.grad, { 0 }, 0, 0, "pow grad exponent at base 0")
  check_flat(ad.pow(ad.tensor({ 2, 3 }, { dtype = "i64" }), 3), { 8, 27 }, 0, 0, "i64 ^ 3")
  assert(ad.pow(ad.tensor({ 2 }, { dtype = "i64" }), 3):dtype() == "i64")
  check_flat(ad.pow(ad.tensor({ 2 }, { dtype = "i64" }), -1), { 0.5 }, 0, 0, "i64 ^ -1 is f32")
end)

test("clamp: forms, nil bounds, gradient mask", function()
  local x = ad.tensor({ -2, -0.5, 0.25, 0.75, 3 })
  check_flat(ad.clamp(x, -1, 1), { -1, -0.5, 0.25, 0.75, 1 }, 0, 0, "clamp(x, -1, 1)")
  check_flat(x:clamp({ min = 0 }), { 0, 0, 0.25, 0.75, 3 }, 0, 0, "min only")
  check_flat(x:clamp(nil, 0.5), { -2, -0.5, 0.25, 0.5, 0.5 }, 0, 0, "max only")
  check_flat(x:clamp({ max = 0.5 }), { -2, -0.5, 0.25, 0.5, 0.5 }, 0, 0, "max only (table)")
  check_flat(x:clamp_min(0), { 0, 0, 0.25, 0.75, 3 }, 0, 0, "clamp_min")
  check_flat(x:clamp_max(0), { -2, -0.5, 0, 0, 0 }, 0, 0, "clamp_max")
  check_flat(ad.clamp(ad.tensor({ 0 / 0 }), 0, 1), { 0 / 0 }, 0, 0, "nan propagates")
  check_flat(ad.clamp(ad.tensor({ -5, 5, 2 }, { dtype = "i64" }), 0, 3), { 0, 3, 2 }, 0, 0, "i64")
  assert(ad.clamp(ad.tensor({ 1 }, { dtype = "i64" }), 0.5, 3):dtype() == "f32")
  local g = ad.tensor({ -2, -0.5, 0.25, 1, 3 }, { dtype = "f64", requires_grad = true })
  ad.clamp(g, -1, 1):sum():backward()
  check_flat(g.grad, { 0, 1, 1, 1, 0 }, 0, 0, "grad passes where min <= x <= max")
  local p = tensor(values(35, -2, 2), { 7, 5 })
  p.requires_grad = true
  T.gradcheck(function(v) return ad.clamp(v, -1.05, 0.95) end, { p })
  expect_error("clamp: at least one of min and max must be given", ad.clamp, x)
  expect_error("min must be a number or nil", ad.clamp, x, "a", 1)
  expect_error("clamp: option 'max' must be a number", ad.clamp, x, { max = "b" })
end)

test("where: broadcasting, numbers, gradients", function()
  local c = ad.tensor({ true, false, true }, { dtype = "bool" })
  local a = ad.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
  local b = ad.tensor({ 10, 20, 30 })
  local y = ad.where(c, a, b)
  check_shape(y, { 2, 3 })
  check_flat(y, { 1, 20, 3, 4, 20, 6 }, 0, 0, "where")
  check_flat(ad.where(c, a, 0), { 1, 0, 3, 4, 0, 6 }, 0, 0, "where number b")
  check_flat(ad.where(c, -1, b), { -1, 20, -1 }, 0, 0, "where number a")
  check_flat(ad.where(c, 1, 0), { 1, 0, 1 }, 0, 0, "where two numbers")
  check_flat(a:where(c, 0), { 1, 0, 3, 4, 0, 6 }, 0, 0, "x:where(cond, y)")
  check_flat(ad.where(a:gt(2.5), a, b), { 10, 20, 3, 4, 5, 6 }, 0, 0, "cond from a comparison")
  local ai = ad.tensor({ 1, 2, 3 }, { dtype = "i64" })
  local yi = ad.where(c, ai, 0)
  assert(yi:dtype() == "i64")
  check_flat(yi, { 1, 0, 3 }, 0, 0, "i64 where")
  local ga = tensor(values(6, -1, 1), { 2, 3 })
  local gb = tensor(values(3, -1, 1), { 3 })
  ga.requires_grad = true
  gb.requires_grad = true
  ad.where(c, ga, gb):sum():backward()
  check_flat(ga.grad, { 1, 0, 1, 1, 0, 1 }, 0, 0, "grad to a")
  check_flat(gb.grad, { 0, 2, 0 }, 0, 0, "grad to b, broadcast reduced")
  ga.grad, gb.grad = nil, nil
  T.gradcheck(function(u, v) return ad.where(c, u, v) end, { ga, gb })
  expect_error("where: shapes", ad.where, ad.tensor({ true, false }, { dtype = "bool" }), a, b)
end)

test("maximum/minimum: gradient to the larger, ties split in half", function()
  local a = ad.tensor({ 1, 2, 3 }, { dtype = "f64", requires_grad = true })
  local b = ad.tensor({ 1, 0, 5 }, { dtype = "f64", requires_grad = true })
  ad.maximum(a, b):sum():backward()
  check_flat(a.grad, { 0.5, 1, 0 }, 0, 0, "maximum grad a")
  check_flat(b.grad, { 0.5, 0, 1 }, 0, 0, "maximum grad b")
  a.grad, b.grad = nil, nil
  ad.minimum(a, b):sum():backward()
  check_flat(a.grad, { 0.5, 0, 1 }, 0, 0, "minimum grad a")
  check_flat(b.grad, { 0.5, 1, 0 }, 0, 0, "minimum grad b")
  a.grad = nil
  ad.maximum(a, 2):sum():backward()
  check_flat(a.grad, { 0, 0.5, 1 }, 0, 0, "maximum with a number")
  local n = ad.tensor({ 0 / 0, 1 })
  check_flat(ad.maximum(n, ad.tensor({ 1, 0 / 0 })), { 0 / 0, 0 / 0 }, 0, 0, "nan propagates")
  check_flat(ad.max(ad.tensor({ 1, 5 }), ad.tensor({ 3, 2 })), { 3, 5 }, 0, 0, "ad.max(a, b)")
end)

-- ---------------------------------------------------------------- gradchecks

test("binary gradchecks in f64: broadcast 3x1x4 with 5x1, same shape, permuted", function()
  for name in pairs(BINARY) do
    local a = tensor(values(12, 0.5, 2), { 3, 1, 4 })
    local b = tensor(values(5, -1.5, 1.5), { 5, 1 })
    if name == "div" then b = tensor(values(5, 0.5, 1.5), { 5, 1 }) end
    a.requires_grad = true
    b.requires_grad = true
    T.gradcheck(function(x, y) return ad[name](x, y) end, { a, b })
    local c = tensor(values(35, 0.5, 2), { 7, 5 })
    local d = tensor(values(35 + 7, 0.6, 1.9), { 7, 6 }):narrow(2, 2, 5):contiguous()
    c.requires_grad = true
    d.requires_grad = true
    T.gradcheck(function(x, y) return ad[name](x, y) end, { c, d })
    local p = tensor(values(35, 0.5, 2), { 5, 7 })
    p.requires_grad = true
    T.gradcheck(function(x, y) return ad[name](x:transpose(1, 2), y) end, { p, d })
  end
end)

test("scalar-operand gradchecks in f64", function()
  local x = tensor(values(35, 0.5, 2), { 7, 5 })
  x.requires_grad = true
  local fns = {
    function(v) return v + 1.5 end, function(v) return 1.5 + v end,
    function(v) return v - 2 end, function(v) return 2 - v end,
    function(v) return v * 3 end, function(v) return v / 3 end, function(v) return 3 / v end,
    function(v) return ad.maximum(v, 1.2) end, function(v) return ad.minimum(1.2, v) end,
    function(v) return ad.add(v, v, { alpha = 0.3 }) end,
  }
  for _, f in ipairs(fns) do T.gradcheck(f, { x }) end
  -- a value used twice and a chain of ops
  T.gradcheck(function(v) return ad.silu(v) * v - ad.exp(v) / (v + 1) end, { x })
end)

test("mixed dtypes: gradients flow back through the promotion", function()
  local a = ad.tensor({ 1, 2, 3 }, { dtype = "f32", requires_grad = true })
  local b = ad.tensor({ 4, 5, 6 }, { dtype = "f64", requires_grad = true })
  local y = a * b
  assert(y:dtype() == "f64")
  y:sum():backward()
  assert(a.grad:dtype() == "f32", "grad of an f32 input is f32")
  check_flat(a.grad, { 4, 5, 6 }, 0, 0, "a.grad")
  check_flat(b.grad, { 1, 2, 3 }, 0, 0, "b.grad")
end)

-- ---------------------------------------------------------------- in place

test("add_ and mul_ in place", function()
  local x = ad.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "f32" })
  x:add_(ad.tensor({ 10, 20 }))
  check_flat(x, { 11, 22, 13, 24 }, 0, 0, "add_ broadcast")
  x:mul_(0.5)
  check_flat(x, { 5.5, 11, 6.5, 12 }, 0, 0, "mul_")
  local p = ad.zeros(2, { requires_grad = true })
  expect_error("add_: in-place update of a tensor that requires grad", function() p:add_(ad.ones(2)) end)
  ad.no_grad(function() p:add_(ad.ones(2)) end)
  check_flat(p, { 1, 1 }, 0, 0, "add_ under no_grad")
  expect_error("add_: cannot accumulate shape [3] into shape [2, 2]", function() x:add_(ad.ones(3)) end)
end)

-- ---------------------------------------------------------------- errors

test("bad inputs raise clear errors", function()
  expect_error("add: shapes [2, 3] and [4] cannot be broadcast", ad.add, ad.zeros(2, 3), ad.zeros(4))
  expect_error("mul: shapes [2, 3] and [2] cannot be broadcast", function() return ad.zeros(2, 3) * ad.zeros(2) end)
  expect_error("lt: shapes [3] and [2] cannot be broadcast", ad.lt, ad.zeros(3), ad.zeros(2))
  -- (Lua names the function 'advdiff.add' or 'add' depending on how it was reached)
  expect_error("add' (advdiff.Tensor or number expected, got string)", ad.add, "x", ad.zeros(2))
  expect_error("bad argument #2 to", ad.mul, ad.zeros(2), {})
  expect_error("mul' (advdiff.Tensor or number expected, got table)", ad.mul, ad.zeros(2), {})
  expect_error("bad argument #1 to 'add' (advdiff.Tensor or number expected, got string)",
    function() return ad.zeros(2):add("s") end)
  expect_error("exp' (advdiff.Tensor expected, got nil)", ad.exp, nil)
  expect_error("add' (advdiff.Tensor expected, got number)", ad.add, 1, 2)
  expect_error("advdiff.Tensor expected, got string", ad.where, "c", ad.zeros(2), ad.zeros(2))
  expect_error("sub: subtracting bool tensors is not supported",
    ad.sub, ad.tensor({ true }, { dtype = "bool" }), ad.tensor({ false }, { dtype = "bool" }))
end)
