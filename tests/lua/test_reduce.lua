-- test_reduce.lua: the reduction family through the public Lua API: sum,
-- mean, var, std, prod, max/min (values and 0-based indices), argmax/argmin,
-- norm, logsumexp, all/any, cumsum; dims lists, keepdim, non-contiguous
-- inputs, dtypes, f64 gradchecks, empty tensors and error messages.
local ad = require "advdiff"
local T = require "advdiff.testing"

-- ---------------------------------------------------------------- helpers

local expect_error, shape_str, check_shape, check_flat = T.raises, T.shape_str, T.check_shape, T.check_flat

local function values(n, lo, hi)
  local out = {}
  for i = 1, n do out[i] = lo + (hi - lo) * (0.5 + 0.5 * math.sin(i * 1.7 + 0.3)) end
  return out
end

local function tensor(vals, shape, dtype) return ad.tensor(vals, { dtype = dtype or "f64" }):view(shape) end

-- Reference reduction: groups x's elements by output position (the reduced
-- dims, 1-based, collapsed) and applies f to each group's list, in order.
-- dims == nil: everything. Returns the outputs in row-major order and the
-- keepdim shape.
local function red_ref(x, dims, f)
  local s = x:shape()
  local red = {}
  if dims == nil then for d = 1, #s do red[d] = true end
  elseif type(dims) == "number" then red[dims < 0 and #s + 1 + dims or dims] = true
  else for _, d in ipairs(dims) do red[d < 0 and #s + 1 + d or d] = true end end
  local ks, nout = {}, 1
  for d = 1, #s do ks[d] = red[d] and 1 or s[d]; nout = nout * ks[d] end
  local groups = {}
  for o = 1, nout do groups[o] = {} end
  local n = x:numel()
  for i = 0, n - 1 do
    local rem, o, mul = i, 0, 1
    local idx = {}
    for d = #s, 1, -1 do idx[d] = rem % s[d]; rem = rem // s[d] end
    for d = 1, #s do o = o * ks[d] + (red[d] and 0 or idx[d]) end
    local g = groups[o + 1]
    g[#g + 1] = x:_getflat(i + 1)
  end
  local out = {}
  for o = 1, nout do out[o] = f(groups[o]) end
  return out, ks
end

local function lsum(v) local s = 0; for _, a in ipairs(v) do s = s + a end; return s end
local function lmean(v) return lsum(v) / #v end
local function lvar(c) return function(v)
  local m, s = lmean(v), 0
  for _, a in ipairs(v) do s = s + (a - m) ^ 2 end
  return s / (#v - c)
end end
local function lprod(v) local p = 1; for _, a in ipairs(v) do p = p * a end; return p end
local function lmax(v) local m = -math.huge; for _, a in ipairs(v) do if a > m then m = a end end; return m end
local function lmin(v) local m = math.huge; for _, a in ipairs(v) do if a < m then m = a end end; return m end
local function lnorm(p) return function(v)
  if p == math.huge then local m = 0; for _, a in ipairs(v) do m = math.max(m, math.abs(a)) end; return m end
  local s = 0
  for _, a in ipairs(v) do s = s + math.abs(a) ^ p end
  return s ^ (1 / p)
end end
local function llse(v) local m = lmax(v); local s = 0; for _, a in ipairs(v) do s = s + math.exp(a - m) end; return m + math.log(s) end

local function drop_reduced(ks, dims, nd)
  local red, out = {}, {}
  if dims == nil then return out end
  if type(dims) == "number" then dims = { dims } end
  for _, d in ipairs(dims) do red[d < 0 and nd + 1 + d or d] = true end
  for d = 1, nd do if not red[d] then out[#out + 1] = ks[d] end end
  return out
end

-- the value reductions checked against their references
local OPS = {
  { "sum", lsum }, { "mean", lmean }, { "prod", lprod }, { "logsumexp", llse },
  { "var", lvar(1) }, { "std", function(v) return math.sqrt(lvar(1)(v)) end },
}

local DIMSETS = { false, 1, 2, -1, { 1, 3 }, { 2, 3 }, { 3, 1 }, { 1, 2, 3 } }

-- ---------------------------------------------------------------- forward

test("sum/mean/prod/logsumexp/var/std over dims, keepdim, f64 and f32", function()
  local base = values(3 * 4 * 5, -1.2, 1.5)
  for _, dt in ipairs({ "f64", "f32" }) do
    local x = tensor(base, { 3, 4, 5 }, dt)
    for _, op in ipairs(OPS) do
      local name, ref = op[1], op[2]
      for _, dims in ipairs(DIMSETS) do
        local d = dims or nil
        local want, ks = red_ref(x, d, ref)
        local tol = dt == "f64" and 1e-12 or 2e-6
        local y = d and ad[name](x, d) or ad[name](x)
        assert(y:dtype() == dt, name .. " dtype " .. y:dtype())
        check_shape(y, drop_reduced(ks, d, 3))
        check_flat(y, want, tol, tol, name .. " " .. dt .. " dims " .. tostring(d and (type(d) == "table" and table.concat(d, ",") or d) or "all"))
        local yk = d and x[name](x, d, { keepdim = true }) or x[name](x, { keepdim = true })
        check_shape(yk, ks)
        check_flat(yk, want, tol, tol, name .. " keepdim")
      end
    end
  end
end)

test("reductions of non-contiguous inputs (transpose, permute, narrow)", function()
  local x = tensor(values(4 * 5 * 6, -1, 1), { 4, 5, 6 }, "f32")
  local views = { x:transpose(1, 3), x:permute(2, 3, 1), x:narrow(3, 2, 3), x:narrow(1, 2, 2):transpose(2, 3) }
  for vi, v in ipairs(views) do
    for _, name in ipairs({ "sum", "mean", "var", "logsumexp", "prod", "amaxlike" }) do
      for _, dims in ipairs({ false, 1, 3, { 1, 2 }, { 1, 3 } }) do
        if name == "amaxlike" then
          if type(dims) == "number" then
            local a, ia = v:max(dims)
            local b, ib = v:contiguous():max(dims)
            T.assert_close(a, b, { atol = 0, rtol = 0 })
            T.assert_close(ia, ib, { atol = 0, rtol = 0 })
          end
        else
          local a = dims and ad[name](v, dims) or ad[name](v)
          local b = dims and ad[name](v:contiguous(), dims) or ad[name](v:contiguous())
          T.assert_close(a, b, { atol = 1e-6, rtol = 1e-5 }, name .. " view " .. vi)
        end
      end
    end
  end
end)

test("integer, bool and half dtypes", function()
  local i = ad.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "i64" })
  local s = i:sum()
  assert(s:dtype() == "i64", "sum of i64 is i64")
  assert(s:item() == 21)
  check_flat(i:sum(1), { 5, 7, 9 }, 0, 0, "i64 sum dim")
  assert(i:prod():dtype() == "i64" and i:prod():item() == 720)
  assert(ad.tensor({ 1, 2 }, { dtype = "i32" }):sum():dtype() == "i64")
  local b = ad.tensor({ true, false, true }, { dtype = "bool" })
  assert(b:sum():dtype() == "i64" and b:sum():item() == 2, "bool sum counts")
  local m = i:max()
  assert(m:dtype() == "i64" and m:item() == 6)
  local v, ix = i:max(2)
  assert(v:dtype() == "i64")
  check_flat(v, { 3, 6 }, 0, 0, "i64 max values")
  check_flat(ix, { 2, 2 }, 0, 0, "i64 max indices")
  check_flat(i:cumsum(2), { 1, 3, 6, 4, 9, 15 }, 0, 0, "i64 cumsum")
  assert(i:cumsum(1):dtype() == "i64")
  assert(i:logsumexp(1):dtype() == "f32", "logsumexp of ints is f32")
  local h = ad.tensor({ 0.5, 0.25, 1024, 1 }, { dtype = "f16" })
  local hs = h:sum()
  assert(hs:dtype() == "f16")
  check_flat(hs, { 1026 }, 0, 0, "f16 sum rounds once (1025.75 -> 1026)")
  local bf = ad.tensor({ 1, 2, 3 }, { dtype = "bf16" })
  assert(bf:mean():dtype() == "bf16")
  check_flat(bf:mean(), { 2 }, 0, 0, "bf16 mean")
  expect_error("mean: expected a floating-point tensor, got i64", ad.mean, i)
  expect_error("var: expected a floating-point tensor, got i64", ad.var, i)
  expect_error("norm: expected a floating-point tensor, got i64", ad.norm, i)
end)

test("var/std corrections and options", function()
  local x = ad.tensor({ { 1, 2, 3, 4 }, { 2, 4, 6, 8 } }, { dtype = "f64" })
  check_flat(x:var(), { lvar(1)({ 1, 2, 3, 4, 2, 4, 6, 8 }) }, 1e-12, 1e-12, "unbiased default")
  check_flat(x:var(2, { unbiased = false }), { 1.25, 5 }, 1e-12, 1e-12, "population")
  check_flat(x:var(2, { correction = 0 }), { 1.25, 5 }, 1e-12, 1e-12, "correction 0")
  check_flat(x:var(2, { correction = 2 }), { 2.5, 10 }, 1e-12, 1e-12, "correction 2")
  check_flat(x:var(false), { lvar(0)({ 1, 2, 3, 4, 2, 4, 6, 8 }) }, 1e-12, 1e-12, "legacy unbiased=false")
  check_flat(x:std(2, { unbiased = false, keepdim = true }), { math.sqrt(1.25), math.sqrt(5) }, 1e-12, 1e-12, "std")
  check_shape(x:std(2, { keepdim = true }), { 2, 1 })
  check_flat(ad.tensor({ 3.0 }):var(), { 0 / 0 }, 0, 0, "var of one element is nan")
  expect_error("option 'correction' must be >= 0", function() return x:var(1, { correction = -1 }) end)
end)

test("prod with zeros: values and gradients", function()
  local x = ad.tensor({ { 2, 0, 3 }, { 0, 0, 5 }, { 1, 2, 4 } }, { dtype = "f64", requires_grad = true })
  local p = x:prod(2)
  check_flat(p, { 0, 0, 8 }, 0, 0, "prod rows")
  p:sum():backward()
  -- one zero: only it gets the product of the others; two zeros: all zero
  check_flat(x.grad, { 0, 6, 0, 0, 0, 0, 8, 4, 2 }, 0, 0, "prod grad")
  local y = tensor(values(35, 0.5, 1.5), { 7, 5 })
  y.requires_grad = true
  T.gradcheck(function(v) return v:prod(1) end, { y })
  local w = tensor(values(6, 0.7, 1.3), { 2, 3 })
  w.requires_grad = true
  T.gradcheck(function(v) return v:prod() end, { w })
  T.gradcheck(function(v) return v:transpose(1, 2):prod(1, { keepdim = true }) end, { w })
end)

test("max/min: values, 0-based indices, keepdim, ties, NaN", function()
  local x = ad.tensor({ { 3, 7, 7, 1 }, { 9, 2, 9, 0 } }, { dtype = "f32" })
  local v, i = x:max(2)
  check_flat(v, { 7, 9 }, 0, 0, "max values")
  check_flat(i, { 1, 0 }, 0, 0, "max indices: first of ties, 0-based")
  assert(i:dtype() == "i64")
  v, i = ad.min(x, 1, { keepdim = true })
  check_shape(v, { 1, 4 })
  check_flat(v, { 3, 2, 7, 0 }, 0, 0, "min values")
  check_flat(i, { 0, 1, 0, 1 }, 0, 0, "min indices")
  v, i = x:max(-1, true)
  check_shape(v, { 2, 1 })
  check_flat(x:max(), { 9 }, 0, 0, "max all")
  check_shape(x:max(), {})
  check_flat(x:min(), { 0 }, 0, 0, "min all")
  local n = ad.tensor({ { 1, 0 / 0, 5 }, { 2, 3, 1 } })
  v, i = n:max(2)
  check_flat(v, { 0 / 0, 3 }, 0, 0, "nan wins")
  check_flat(i, { 1, 1 }, 0, 0, "nan index")
  check_flat(n:max(), { 0 / 0 }, 0, 0, "max all nan")
  check_flat(n:min(), { 0 / 0 }, 0, 0, "min all nan")
  -- reduce over the middle of three dims, inner > 1
  local z = tensor(values(3 * 6 * 5, -3, 3), { 3, 6, 5 }, "f64")
  local zv, zi = z:max(2)
  local want = red_ref(z, 2, lmax)
  check_flat(zv, want, 0, 0, "max mid dim")
  for k = 1, zi:numel() do
    local o, j = (k - 1) // 5, (k - 1) % 5
    assert(z:_getflat(o * 30 + zi:_getflat(k) * 5 + j + 1) == zv:_getflat(k), "index points at the max")
  end
end)

test("max/min gradients go to the arg position; max over all splits ties", function()
  local x = ad.tensor({ { 1, 5, 5 }, { 2, 0, 1 } }, { dtype = "f64", requires_grad = true })
  local v = x:max(2)
  v:sum():backward()
  check_flat(x.grad, { 0, 1, 0, 1, 0, 0 }, 0, 0, "max dim grad")
  x.grad = nil
  x:max():backward()
  check_flat(x.grad, { 0, 0.5, 0.5, 0, 0, 0 }, 0, 0, "max all: ties share")
  x.grad = nil
  x:min():backward()
  check_flat(x.grad, { 0, 0, 0, 0, 1, 0 }, 0, 0, "min all")
  local y = tensor(values(35, -2, 2), { 7, 5 })
  y.requires_grad = true
  T.gradcheck(function(a) return a:max(1) end, { y })
  T.gradcheck(function(a) return (a:min(2, { keepdim = true })) end, { y })
  T.gradcheck(function(a) return a:transpose(1, 2):max(2) end, { y })
  T.gradcheck(function(a) return a:max() end, { y })
  T.gradcheck(function(a) return a:min() end, { y })
end)

test("argmax/argmin: flat, dim, keepdim", function()
  local x = ad.tensor({ { 3, 7, 1 }, { 9, 2, 9 } })
  local a = x:argmax()
  check_shape(a, {})
  assert(a:dtype() == "i64" and a:item() == 3, "flat argmax (0-based, row-major)")
  assert(ad.argmin(x):item() == 2)
  check_flat(x:argmax(2), { 1, 0 }, 0, 0, "argmax dim")
  check_flat(x:argmin(1), { 0, 1, 0 }, 0, 0, "argmin dim")
  check_shape(x:argmax(1, { keepdim = true }), { 1, 3 })
  check_shape(x:argmax(nil, { keepdim = true }), { 1, 1 })
  assert(x:transpose(1, 2):argmax():item() == 1, "flat index follows the logical (row-major) order")
  local g = ad.randn(3, 4, { requires_grad = true })
  assert(not g:argmax().requires_grad)
end)

test("norm: p = 2, 1, inf, -inf, 0, 3, 'fro', dims", function()
  local x = tensor(values(12, -2, 2), { 3, 4 })
  local vals = {}
  for k = 1, 12 do vals[k] = x:_getflat(k) end
  for _, p in ipairs({ 2, 1, math.huge, 3, 0.5 }) do
    check_flat(x:norm(p), { lnorm(p)(vals) }, 1e-12, 1e-12, "norm p=" .. p)
    check_flat(ad.norm(x, p, 2), red_ref(x, 2, lnorm(p)), 1e-12, 1e-12, "norm dim p=" .. p)
  end
  check_flat(x:norm(), { lnorm(2)(vals) }, 1e-12, 1e-12, "default p")
  check_flat(x:norm("fro"), { lnorm(2)(vals) }, 1e-12, 1e-12, "fro")
  check_flat(x:norm(-math.huge), { lmin((function() local a = {}; for k, v in ipairs(vals) do a[k] = math.abs(v) end; return a end)()) },
    0, 0, "-inf")
  check_flat(ad.tensor({ 0, 1.5, 0, -2 }):norm(0), { 2 }, 0, 0, "p=0 counts nonzeros")
  check_shape(x:norm(2, 1, { keepdim = true }), { 1, 4 })
  check_shape(x:norm({ keepdim = true }), { 1, 1 })
  expect_error("unsupported norm 'nuc'", function() return x:norm("nuc") end)
end)

test("norm gradients, including the zero vector", function()
  local x = tensor(values(35, -2, 2), { 7, 5 })
  x.requires_grad = true
  for _, p in ipairs({ 2, 1, 3, 1.5, math.huge }) do
    T.gradcheck(function(a) return a:norm(p) end, { x })
    T.gradcheck(function(a) return a:norm(p, 2) end, { x })
  end
  T.gradcheck(function(a) return a:transpose(1, 2):norm(2, { 1 }) end, { x })
  local z = ad.zeros(3, { dtype = "f64", requires_grad = true })
  z:norm():backward()
  check_flat(z.grad, { 0, 0, 0 }, 0, 0, "zero vector gets a zero gradient")
  local r = ad.tensor({ { 3, 4 }, { 0, 0 } }, { dtype = "f64", requires_grad = true })
  r:norm(2, 2):sum():backward()
  check_flat(r.grad, { 0.6, 0.8, 0, 0 }, 1e-15, 0, "row norms, one zero row")
end)

test("logsumexp: stable for large inputs; gradient is the softmax", function()
  local x = ad.tensor({ { 1000, 1000 }, { -1000, -1000 }, { 0, math.log(3) } }, { dtype = "f64" })
  check_flat(x:logsumexp(2), { 1000 + math.log(2), -1000 + math.log(2), math.log(4) }, 1e-12, 1e-12, "lse")
  check_flat(ad.tensor({ -math.huge, -math.huge }):logsumexp(1), { -math.huge }, 0, 0, "all -inf")
  check_flat(ad.tensor({ math.huge, 1 }):logsumexp(1), { math.huge }, 0, 0, "+inf")
  local g = ad.tensor({ { 0, math.log(3) } }, { dtype = "f64", requires_grad = true })
  g:logsumexp(2):sum():backward()
  check_flat(g.grad, { 0.25, 0.75 }, 1e-15, 0, "softmax")
  local y = tensor(values(35, -3, 3), { 7, 5 })
  y.requires_grad = true
  T.gradcheck(function(a) return a:logsumexp(2) end, { y })
  T.gradcheck(function(a) return a:logsumexp({ 1, 2 }) end, { y })
  T.gradcheck(function(a) return a:transpose(1, 2):logsumexp(1, { keepdim = true }) end, { y })
end)

test("all/any over dims; float and bool inputs", function()
  local b = ad.tensor({ { true, false, true }, { true, true, true } }, { dtype = "bool" })
  check_flat(b:all(), { false }, 0, 0, "all")
  check_flat(b:any(), { true }, 0, 0, "any")
  check_flat(b:all(2), { false, true }, 0, 0, "all dim 2")
  check_flat(b:any(1), { true, true, true }, 0, 0, "any dim 1")
  check_shape(b:all(1, { keepdim = true }), { 1, 3 })
  assert(b:all():dtype() == "bool")
  local f = ad.tensor({ { 0, 0.5 }, { 0, 0 } })
  check_flat(f:any(2), { true, false }, 0, 0, "float any")
  check_flat(f:all(1), { false, false }, 0, 0, "float all")
  check_flat(ad.zeros(0, 3):all(), { true }, 0, 0, "all of empty is true")
  check_flat(ad.zeros(0, 3):any(), { false }, 0, 0, "any of empty is false")
  check_flat(b:transpose(1, 2):all(1), { false, true }, 0, 0, "transposed bool")
end)

test("cumsum: forward, reverse-cumsum gradient", function()
  local x = ad.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "f64", requires_grad = true })
  check_flat(x:cumsum(2), { 1, 3, 6, 4, 9, 15 }, 0, 0, "cumsum dim 2")
  check_flat(ad.cumsum(x, 1), { 1, 2, 3, 5, 7, 9 }, 0, 0, "cumsum dim 1")
  check_flat(x:cumsum(-1), { 1, 3, 6, 4, 9, 15 }, 0, 0, "negative dim")
  check_flat(x:transpose(1, 2):cumsum(2), { 1, 5, 2, 7, 3, 9 }, 0, 0, "transposed")
  x:cumsum(2):sum():backward()
  check_flat(x.grad, { 3, 2, 1, 3, 2, 1 }, 0, 0, "grad = reverse cumsum")
  local y = tensor(values(3 * 5 * 4, -1, 1), { 3, 5, 4 })
  y.requires_grad = true
  T.gradcheck(function(a) return a:cumsum(2) end, { y })
  T.gradcheck(function(a) return a:permute(3, 1, 2):cumsum(1) end, { y })
end)

-- ---------------------------------------------------------------- gradchecks

test("gradchecks in f64: sum/mean/var/std over dims, keepdim, permuted", function()
  local x = tensor(values(3 * 4 * 5, -1.5, 1.5), { 3, 4, 5 })
  x.requires_grad = true
  local dimsets = { false, 2, -1, { 1, 3 }, { 1, 2 } }
  for _, name in ipairs({ "sum", "mean", "var", "std" }) do
    for _, d in ipairs(dimsets) do
      T.gradcheck(function(a) if d then return a[name](a, d) end return a[name](a) end, { x })
      T.gradcheck(function(a) if d then return a[name](a, d, { keepdim = true }) end return a[name](a, { keepdim = true }) end, { x })
    end
    T.gradcheck(function(a) return a:permute(3, 1, 2)[name](a:permute(3, 1, 2), { 1, 3 }) end, { x })
  end
  T.gradcheck(function(a) return a:var(2, { correction = 0 }) end, { x })
  local y = tensor(values(35, -1, 1), { 7, 5 })
  y.requires_grad = true
  T.gradcheck(function(a) return a:sum(1) * a:mean(2, { keepdim = true }) end, { y })
  -- broadcast inside: the engine reduces the gradient of a (3, 1, 4) operand
  local b = tensor(values(12, -1, 1), { 3, 1, 4 })
  b.requires_grad = true
  T.gradcheck(function(a) return (a * ad.ones(3, 5, 4, { dtype = "f64" })):sum({ 2, 3 }) end, { b })
end)

-- ---------------------------------------------------------------- sizes

test("large reductions: accuracy and the threaded paths", function()
  local n = 1000003
  local ones = ad.ones(n)
  assert(ones:sum():item() == n, "f32 sum of a million ones is exact (double accumulation)")
  check_flat(ad.full({ n }, 0.1):sum(), { n * 0.1 }, 0, 1e-6, "f32 sum of 0.1s")
  check_flat(ad.full({ n }, 0.1):mean(), { 0.1 }, 0, 1e-6, "mean")
  local a = ad.arange(0, 1000 * 301, 1, { dtype = "f64" }):view(1000, 301)
  -- columns (inner > 1) and rows
  local cs = a:sum(1)
  for _, j in ipairs({ 1, 2, 150, 301 }) do
    local want = 0
    for i = 0, 999 do want = want + i * 301 + (j - 1) end
    assert(cs:_getflat(j) == want, "column sum " .. j)
  end
  local rs = a:sum(2)
  for _, i in ipairs({ 1, 500, 1000 }) do
    local base = (i - 1) * 301
    assert(rs:_getflat(i) == 301 * base + 300 * 301 / 2, "row sum " .. i)
  end
  local v, ix = a:max(1)
  assert(v:_getflat(7) == 999 * 301 + 6 and ix:_getflat(7) == 999)
  check_flat(a:var(), { lvar(1)((function() local t = {}; for k = 0, 1000 * 301 - 1 do t[#t + 1] = k end; return t end)()) },
    0, 1e-12, "var of a long run")
  assert(a:transpose(1, 2):sum():item() == (1000 * 301 - 1) * (1000 * 301) / 2, "dense transposed full sum")
  local c = ad.ones(300001):cumsum(1)
  assert(c:_getflat(300001) == 300001)
end)

test("empty tensors", function()
  local e = ad.zeros(0)
  check_flat(e:sum(), { 0 }, 0, 0, "sum of empty is 0")
  check_flat(e:prod(), { 1 }, 0, 0, "prod of empty is 1")
  check_flat(e:mean(), { 0 / 0 }, 0, 0, "mean of empty is nan")
  local e2 = ad.zeros(3, 0)
  check_flat(e2:sum(2), { 0, 0, 0 }, 0, 0, "sum over an empty dim")
  check_shape(e2:sum(1), { 0 })
  check_shape(e2:cumsum(2), { 3, 0 })
  expect_error("max: cannot reduce an empty tensor", function() return e:max() end)
  expect_error("max: cannot reduce over dim 1 of size 0", function() return e2:max(2) end)
  expect_error("argmax: cannot reduce an empty tensor", function() return e:argmax() end)
  check_shape(e2:max(1), { 0 })
end)

test("0-d tensors", function()
  local s = ad.tensor(2.5, { dtype = "f64" })
  check_flat(s:sum(), { 2.5 }, 0, 0, "sum")
  check_flat(s:sum(1), { 2.5 }, 0, 0, "sum dim 1 of a 0-d tensor")
  check_flat(s:max(), { 2.5 }, 0, 0, "max")
  assert(s:argmax():item() == 0)
  check_flat(s:cumsum(1), { 2.5 }, 0, 0, "cumsum")
end)

-- ---------------------------------------------------------------- errors

test("bad inputs raise clear errors", function()
  local x = ad.zeros(2, 3)
  expect_error("dimension 3 out of range for a 2-D tensor", function() return x:sum(3) end)
  expect_error("dimension -3 out of range", function() return x:mean(-3) end)
  expect_error("repeated dimension", function() return x:sum({ 1, 1 }) end)
  expect_error("dimension 5 out of range", function() return x:max(5) end)
  expect_error("dimension 3 out of range", function() return x:cumsum(3) end)
  expect_error("sum' (advdiff.Tensor expected, got string)", ad.sum, "x")
  expect_error("max' (advdiff.Tensor expected, got nil)", ad.max, nil)
  expect_error("dim, list of dims, options table or boolean expected, got string", function() return x:sum("a") end)
  expect_error("option 'keepdim' must be a boolean", function() return x:sum(1, { keepdim = 1 }) end)
  expect_error("cumsum' (number expected, got no value)", ad.cumsum, x)
end)
