-- test_cuda_ops.lua: every core op on CUDA against the CPU, forward and
-- backward, on random inputs: odd sizes, non-contiguous views (transposes,
-- slices, permutes taken on each device) and broadcasts. One row per op
-- (STYLE.md 8: adding an op means adding a row).
--
--   advdiff tests/gpu/test_cuda_ops.lua [--quick] [--only PATTERN] [--out FILE]
--
-- A row: { name, make = function() return {inputs...} end, fn = function(...) return out end,
--          tol = forward bound, gtol = gradient bound (default tol), grad = false (no backward),
--          half = true (bf16/f16 row: inputs cast on each device), setup/teardown = functions }
-- make() returns CPU tensors (f32 unless the row says otherwise); each device gets copies,
-- float ones requiring grad. The error measure is max|gpu - cpu| / max|cpu| per output and
-- per input gradient (bool and integer outputs must match exactly). Bounds: f32 exact ops
-- 1e-5, reductions and convolutions 1e-4, bf16/f16 and TF32 their own.
-- Exits 77 without a CUDA device, 1 when a row fails.
local ad = require "advdiff"

local args = { ... }
local QUICK, ONLY, OUTFILE = false, nil, nil
do
  local i = 1
  while i <= #args do
    if args[i] == "--quick" then QUICK = true
    elseif args[i] == "--only" then ONLY = args[i + 1]; i = i + 1
    elseif args[i] == "--out" then OUTFILE = args[i + 1]; i = i + 1
    end
    i = i + 1
  end
end

-- ADVDIFF_OPS_SELFTEST=1 runs both sides on the CPU: it checks the rows and the runner
-- themselves on a machine without a GPU (every error must then be 0).
local SELFTEST = os.getenv("ADVDIFF_OPS_SELFTEST") == "1"
local DEV = SELFTEST and "cpu" or "cuda"
if not SELFTEST and not ad.cuda.is_available() then
  print("test_cuda_ops: SKIP: no CUDA device: " .. ad.cuda.unavailable_reason())
  os.exit(77)
end

local seed = 1000
local function gen() seed = seed + 1; return ad.Generator(seed) end
local function R(...) return ad.randn({ ... }, { generator = gen() }) end              -- f32 normal
local function U(lo, hi, ...) return ad.rand({ ... }, { generator = gen() }) * (hi - lo) + lo end
local function I(lo, hi, ...) return ad.randint(lo, hi, { ... }, { generator = gen(), dtype = "i64" }) end

local EXACT, RED, CONV = 1e-5, 1e-4, 1e-4
local HALF, TF32 = 2e-2, 5e-3

-- ------------------------------------------------------------------------ the rows
local ROWS = {}
local function row(r) ROWS[#ROWS + 1] = r end

-- elementwise unary: on a transposed (non-contiguous) view
local UNARY = {
  { "neg" }, { "exp" }, { "log", pos = true }, { "log1p", pos = true }, { "expm1" }, { "sqrt", pos = true },
  { "rsqrt", pos = true }, { "abs" }, { "sign", grad = false }, { "sin" }, { "cos" }, { "tanh" }, { "sigmoid" },
  { "relu" }, { "silu" }, { "gelu" }, { "softplus" }, { "square" }, { "reciprocal", pos = true },
  { "floor", grad = false }, { "ceil", grad = false }, { "round", grad = false },
  { "isfinite", grad = false }, { "isnan", grad = false }, { "logical_not", grad = false },
}
for _, u in ipairs(UNARY) do
  local name, pos = u[1], u.pos
  row { name = name .. " (transposed)", grad = u.grad, tol = EXACT,
        make = function() return { pos and (U(0.2, 3, 7, 33, 5)) or R(7, 33, 5) * 2 } end,
        fn = function(x) return ad[name](x:transpose(1, 3)) end }
end
row { name = "silu (bf16)", half = "bf16", tol = HALF, make = function() return { R(7, 33, 5) } end,
      fn = function(x) return ad.silu(x) end }
row { name = "exp (f16, sliced)", half = "f16", tol = HALF, make = function() return { R(9, 8) } end,
      fn = function(x) return ad.exp(x:narrow(2, 2, 5)) end }

-- elementwise binary with broadcast, and scalar forms
local BINARY = { "add", "sub", "mul", "div", "pow", "maximum", "minimum" }
for _, name in ipairs(BINARY) do
  row { name = name .. " (broadcast)", tol = EXACT,
        make = function()
          if name == "pow" then return { U(0.5, 2, 7, 33, 5), R(7, 1, 5) } end
          if name == "div" then return { R(7, 33, 5), U(0.5, 2, 7, 1, 5) } end
          return { R(7, 33, 5), R(7, 1, 5) }
        end,
        fn = function(a, b) return ad[name](a, b) end }
end
row { name = "add (permuted + broadcast row)", tol = EXACT, make = function() return { R(5, 7, 3), R(3) } end,
      fn = function(a, b) return a:permute(3, 1, 2) + b:view(3, 1, 1) end }
row { name = "add (bf16)", half = "bf16", tol = HALF, make = function() return { R(33, 17), R(17) } end,
      fn = function(a, b) return a + b end }
-- NCHW broadcasts that coalesce to rows (the vectorised rows kernel), and one that does not align
row { name = "mul + add (bf16, per-(n, c) scale and shift rows)", half = "bf16", tol = HALF,
      make = function() return { R(4, 6, 8, 8), R(4, 6, 1, 1), R(4, 6, 1, 1) } end,
      fn = function(x, s, t) return x * (s + 1) + t end }
row { name = "mul (f32, rows against a row vector, and rows of 12)", tol = EXACT,
      make = function() return { R(3, 5, 64), R(3, 5, 1), R(5, 12), R(1, 12) } end,
      fn = function(a, b, c, d) return (a * b):sum() + (c * d):sum() end }
row { name = "sub (f16, rows of 8, offset view)", half = "f16", tol = HALF,
      make = function() return { R(7, 9, 8), R(7, 9, 1) } end,
      fn = function(a, b) return a:narrow(2, 2, 8) - b:narrow(2, 2, 8) end }
for _, name in ipairs({ "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor" }) do
  row { name = name, grad = false, tol = 0,
        make = function() return { ad.round(R(7, 9) * 2), ad.round(R(7, 9) * 2) } end,
        fn = function(a, b) return ad[name](a, b) end }
end
row { name = "scalar ops (x*0.5 + 3, 2 - x, x / 3, x ^ 2)", tol = EXACT, make = function() return { R(7, 33) } end,
      fn = function(x) return (x * 0.5 + 3) + (2 - x) + x / 3 + x ^ 2 end }
row { name = "clamp", tol = EXACT, make = function() return { R(7, 33) } end,
      fn = function(x) return ad.clamp(x, -0.5, 0.7) end }
row { name = "where", tol = EXACT, make = function() return { R(7, 33), R(7, 33) } end,
      fn = function(a, b) return ad.where(a:gt(0), a, b) end }
row { name = "add_ in place (strided dst)", grad = false, tol = EXACT, make = function() return { R(6, 8), R(8, 6) } end,
      fn = function(a, b) return ad.no_grad(function() local c = a:clone(); c:add_(b:t()); return c end) end }

-- reductions
row { name = "sum all", tol = RED, make = function() return { R(7, 33, 5) } end, fn = function(x) return x:sum() end }
row { name = "sum dim 2 (keepdim)", tol = RED, make = function() return { R(7, 33, 5) } end,
      fn = function(x) return x:sum(2, { keepdim = true }) end }
row { name = "sum dims {1,3} of a permuted view", tol = RED, make = function() return { R(7, 33, 5) } end,
      fn = function(x) return x:permute(2, 3, 1):sum({ 1, 3 }) end }
row { name = "sum of a long run (split reduction)", tol = RED, make = function() return { R(3, 300000) } end,
      fn = function(x) return x:sum(2) end }
row { name = "mean", tol = RED, make = function() return { R(7, 33, 5) } end, fn = function(x) return x:mean(3) end }
row { name = "var (unbiased)", tol = RED, make = function() return { R(7, 33, 5) } end, fn = function(x) return x:var(2) end }
row { name = "std", tol = RED, make = function() return { R(7, 33, 5) } end, fn = function(x) return x:std(1) end }
row { name = "prod", tol = RED, make = function() return { U(0.8, 1.2, 7, 9) } end, fn = function(x) return x:prod(2) end }
row { name = "max dim (values)", tol = EXACT, make = function() return { R(7, 33, 5) } end,
      fn = function(x) return (x:max(2)) end }
row { name = "min all", tol = EXACT, make = function() return { R(7, 33, 5) } end, fn = function(x) return x:min() end }
row { name = "argmax dim", grad = false, tol = 0, make = function() return { R(7, 33, 5) } end,
      fn = function(x) return x:argmax(3) end }
row { name = "argmin flat", grad = false, tol = 0, make = function() return { R(70, 33) } end,
      fn = function(x) return x:argmin() end }
row { name = "norm p=2", tol = RED, make = function() return { R(7, 33) } end, fn = function(x) return x:norm() end }
row { name = "norm p=1 dim", tol = RED, make = function() return { R(7, 33) } end, fn = function(x) return x:norm(1, 2) end }
row { name = "norm p=inf", tol = EXACT, make = function() return { R(7, 33) } end,
      fn = function(x) return x:norm(math.huge) end }
row { name = "logsumexp", tol = RED, make = function() return { R(7, 33, 5) * 3 } end,
      fn = function(x) return x:logsumexp(2) end }
row { name = "all / any", grad = false, tol = 0, make = function() return { R(7, 33) } end,
      fn = function(x) return ad.stack({ x:gt(-2):all(2):float(), x:gt(2):any(2):float() }) end }
row { name = "cumsum", tol = RED, make = function() return { R(7, 33, 5) } end, fn = function(x) return x:cumsum(2) end }

-- shape and memory ops (copies through the strided copy kernel)
row { name = "permute + contiguous", tol = 0, make = function() return { R(4, 5, 6, 7) } end,
      fn = function(x) return x:permute(4, 2, 1, 3):contiguous() end }
row { name = "expand + contiguous", tol = 0, make = function() return { R(5, 1, 7) } end,
      fn = function(x) return x:expand(5, 9, 7):contiguous() end }
row { name = "cat / stack", tol = 0, make = function() return { R(3, 5), R(4, 5) } end,
      fn = function(a, b) return ad.cat({ a, b, a:narrow(1, 2, 2) }, 1) end }
row { name = "index_select (repeats)", tol = 0,
      make = function() return { R(9, 6), ad.tensor({ 0, 3, 3, 8, 1, 0 }, { dtype = "i64" }) } end,
      fn = function(x, idx) return x:index_select(1, idx) end }
row { name = "to(f16) and back", tol = 0, grad = false, make = function() return { R(7, 33) * 1000 } end,
      fn = function(x) return x:to("f16"):to("f32") end }

-- linear algebra
row { name = "matmul 2-D", tol = EXACT, make = function() return { R(33, 17), R(17, 9) } end,
      fn = function(a, b) return ad.matmul(a, b) end }
row { name = "matmul batched + broadcast", tol = EXACT, make = function() return { R(3, 5, 7), R(7, 4) } end,
      fn = function(a, b) return ad.matmul(a, b) end }
row { name = "matmul transposed operand", tol = EXACT, make = function() return { R(17, 33), R(9, 17) } end,
      fn = function(a, b) return ad.matmul(a:t(), b:t()) end }
row { name = "matmul vector", tol = EXACT, make = function() return { R(17), R(5, 17, 3) } end,
      fn = function(a, b) return ad.matmul(a, b) end }
row { name = "bmm", tol = EXACT, make = function() return { R(4, 9, 13), R(4, 13, 6) } end,
      fn = function(a, b) return ad.bmm(a, b) end }
row { name = "linear (bias)", tol = EXACT, make = function() return { R(2, 5, 17), R(9, 17), R(9) } end,
      fn = function(x, w, b) return ad.linear(x, w, b) end }
row { name = "matmul (bf16)", half = "bf16", tol = HALF, make = function() return { R(64, 96), R(96, 48) } end,
      fn = function(a, b) return ad.matmul(a, b) end }
row { name = "linear (f16)", half = "f16", tol = HALF, make = function() return { R(8, 64), R(32, 64), R(32) } end,
      fn = function(x, w, b) return ad.linear(x, w, b) end }
row { name = "bmm (bf16, cuBLAS batched)", half = "bf16", tol = HALF,
      make = function() return { R(3, 32, 40), R(3, 40, 24) } end, fn = function(a, b) return ad.bmm(a, b) end }
row { name = "matmul (TF32)", tol = TF32, make = function() return { R(128, 256), R(256, 64) } end,
      setup = function() return ad.cuda.allow_tf32(true) end, teardown = function(prev) ad.cuda.allow_tf32(prev) end,
      fn = function(a, b) return ad.matmul(a, b) end }

-- convolution
row { name = "conv2d pad 1", tol = CONV, make = function() return { R(2, 3, 9, 9), R(4, 3, 3, 3), R(4) } end,
      fn = function(x, w, b) return ad.conv2d(x, w, b, { padding = 1 }) end }
row { name = "conv2d stride 2 dilation 2", tol = CONV, make = function() return { R(2, 3, 11, 10), R(5, 3, 3, 3) } end,
      fn = function(x, w) return ad.conv2d(x, w, nil, { stride = 2, dilation = 2, padding = { 1, 2 } }) end }
row { name = "conv2d groups 2, 1x1", tol = CONV, make = function() return { R(2, 6, 7, 7), R(4, 3, 1, 1), R(4) } end,
      fn = function(x, w, b) return ad.conv2d(x, w, b, { groups = 2 }) end }
row { name = "conv2d (permuted input)", tol = CONV, make = function() return { R(2, 8, 8, 3), R(4, 3, 3, 3) } end,
      fn = function(x, w) return ad.conv2d(x:permute(1, 4, 2, 3), w, nil, { padding = 1 }) end }
row { name = "conv1d (ADM qkv)", tol = CONV, make = function() return { R(2, 16, 12), R(48, 16, 1), R(48) } end,
      fn = function(x, w, b) return ad.conv1d(x, w, b) end }
row { name = "conv2d (bf16, cuDNN)", half = "bf16", tol = HALF,
      make = function() return { R(2, 16, 12, 12), R(32, 16, 3, 3), R(32) } end,
      fn = function(x, w, b) return ad.conv2d(x, w, b, { padding = 1 }) end }
-- the bias kernels: 16-byte runs (S a multiple of 8 / 4) or single elements, and a
-- bias gradient split over batch slices (N*S large enough) folded by a second kernel
row { name = "conv2d bias (bf16, 7x7 planes)", half = "bf16", tol = HALF,
      make = function() return { R(3, 8, 7, 7), R(24, 8, 3, 3), R(24) } end,
      fn = function(x, w, b) return ad.conv2d(x, w, b, { padding = 1 }) end }
row { name = "conv2d bias (bf16, split gradient)", half = "bf16", tol = HALF,
      make = function() return { R(4, 2, 64, 64), R(16, 2, 1, 1), R(16) } end,
      fn = function(x, w, b) return ad.conv2d(x, w, b) end }
row { name = "conv2d bias (bf16, odd planes, split gradient)", half = "bf16", tol = HALF,
      make = function() return { R(8, 2, 45, 45), R(8, 2, 1, 1), R(8) } end,
      fn = function(x, w, b) return ad.conv2d(x, w, b) end }
row { name = "conv2d bias (f32, split gradient)", tol = CONV,
      make = function() return { R(4, 2, 48, 48), R(8, 2, 3, 3), R(8) } end,
      fn = function(x, w, b) return ad.conv2d(x, w, b, { padding = 1 }) end }
row { name = "conv2d (f16, cuDNN)", half = "f16", tol = HALF,
      make = function() return { R(2, 16, 12, 12), R(32, 16, 3, 3) } end,
      fn = function(x, w) return ad.conv2d(x, w, nil, { padding = 1, stride = 2 }) end }
row { name = "conv2d (TF32)", tol = TF32, make = function() return { R(4, 32, 16, 16), R(32, 32, 3, 3) } end,
      setup = function() return ad.cuda.allow_tf32(true) end, teardown = function(prev) ad.cuda.allow_tf32(prev) end,
      fn = function(x, w) return ad.conv2d(x, w, nil, { padding = 1 }) end }

-- pooling, resampling, padding
row { name = "max_pool2d k3 s2 p1", tol = EXACT, make = function() return { R(2, 3, 11, 9) } end,
      fn = function(x) return ad.max_pool2d(x, 3, { stride = 2, padding = 1 }) end }
row { name = "avg_pool2d ceil_mode, no pad count", tol = EXACT, make = function() return { R(2, 3, 11, 9) } end,
      fn = function(x) return ad.avg_pool2d(x, 3, { stride = 2, padding = 1, ceil_mode = true, count_include_pad = false }) end }
row { name = "avg_pool2d 2x2 (ADM downsample)", tol = EXACT, make = function() return { R(2, 4, 8, 8) } end,
      fn = function(x) return ad.avg_pool2d(x, 2) end }
-- kernel == stride without padding: the tiled kernels (edges dropped by floor mode,
-- non-square windows, divisor_override); ceil mode with a partial window: the general ones
row { name = "avg_pool2d 2x2 32x32 planes", tol = EXACT, make = function() return { R(4, 16, 32, 32) } end,
      fn = function(x) return ad.avg_pool2d(x, 2) end }
row { name = "avg_pool2d 2x2, dropped edges", tol = EXACT, make = function() return { R(2, 3, 9, 11) } end,
      fn = function(x) return ad.avg_pool2d(x, 2) end }
row { name = "avg_pool2d 2x3, divisor_override", tol = EXACT, make = function() return { R(2, 3, 8, 10) } end,
      fn = function(x) return ad.avg_pool2d(x, { 2, 3 }, { divisor_override = 5 }) end }
row { name = "avg_pool2d 2x2 ceil_mode, partial", tol = EXACT, make = function() return { R(2, 3, 9, 9) } end,
      fn = function(x) return ad.avg_pool2d(x, 2, { ceil_mode = true }) end }
row { name = "adaptive_avg_pool2d 7x9 -> 3x4", tol = EXACT, make = function() return { R(2, 3, 7, 9) } end,
      fn = function(x) return ad.adaptive_avg_pool2d(x, { 3, 4 }) end }
row { name = "interpolate nearest x2", tol = EXACT, make = function() return { R(2, 3, 5, 6) } end,
      fn = function(x) return ad.interpolate(x, { scale_factor = 2, mode = "nearest" }) end }
row { name = "interpolate nearest 7 -> 10", tol = EXACT, make = function() return { R(2, 3, 7, 7) } end,
      fn = function(x) return ad.interpolate(x, { size = { 10, 10 }, mode = "nearest" }) end }
row { name = "interpolate bilinear", tol = EXACT, make = function() return { R(2, 3, 7, 5) } end,
      fn = function(x) return ad.interpolate(x, { size = { 13, 11 }, mode = "bilinear" }) end }
row { name = "interpolate bilinear align_corners", tol = EXACT, make = function() return { R(2, 3, 7, 5) } end,
      fn = function(x) return ad.interpolate(x, { size = { 12, 9 }, mode = "bilinear", align_corners = true }) end }
for _, mode in ipairs({ "constant", "reflect", "replicate" }) do
  row { name = "pad " .. mode, tol = EXACT, make = function() return { R(2, 3, 6, 7) } end,
        fn = function(x) return ad.pad(x, { 2, 1, 1, 3 }, { mode = mode, value = mode == "constant" and 0.5 or nil }) end }
end

-- normalisation, softmax, attention
row { name = "group_norm (w, b)", tol = RED, make = function() return { R(3, 6, 5, 7) + 3, R(6), R(6) } end,
      fn = function(x, w, b) return ad.group_norm(x, 3, w, b, { eps = 1e-5 }) end }
row { name = "group_norm (ADM 32 groups)", tol = RED, make = function() return { R(2, 64, 8, 8) } end,
      fn = function(x) return ad.group_norm(x, 32) end }
row { name = "batch_norm training (running stats)", tol = RED,
      make = function() return { R(4, 5, 3, 3), R(5), R(5) } end,
      fn = function(x, w, b)
        local rm, rv = ad.zeros(5, { device = x:device() }), ad.ones(5, { device = x:device() })
        local y = ad.batch_norm(x, rm, rv, w, b, { training = true, momentum = 0.1 })
        return ad.cat({ y:flatten(), rm:view(-1), rv:view(-1) })
      end }
row { name = "batch_norm eval", tol = RED, make = function() return { R(4, 5, 3, 3), R(5), U(0.5, 2, 5) } end,
      fn = function(x, rm, rv) return ad.batch_norm(x, rm:detach(), rv:detach(), { training = false }) end }
row { name = "layer_norm (w, b)", tol = RED, make = function() return { R(4, 7, 10), R(10), R(10) } end,
      fn = function(x, w, b) return ad.layer_norm(x, 10, w, b) end }
row { name = "layer_norm no affine, many rows", tol = RED, make = function() return { R(600, 48) } end,
      fn = function(x) return ad.layer_norm(x, 48) end }
row { name = "softmax last dim", tol = EXACT, make = function() return { R(7, 33) * 3 } end,
      fn = function(x) return ad.softmax(x, -1) end }
row { name = "softmax middle dim", tol = EXACT, make = function() return { R(7, 33, 5) * 3 } end,
      fn = function(x) return ad.softmax(x, 2) end }
row { name = "log_softmax", tol = EXACT, make = function() return { R(7, 33) * 3 } end,
      fn = function(x) return ad.log_softmax(x, 2) end }
row { name = "attention", tol = RED, make = function() return { R(2, 3, 9, 8), R(2, 3, 11, 8), R(2, 3, 11, 6) } end,
      fn = function(q, k, v) return ad.scaled_dot_product_attention(q, k, v) end }
row { name = "attention causal", tol = RED, make = function() return { R(2, 3, 9, 8), R(2, 3, 9, 8), R(2, 3, 9, 8) } end,
      fn = function(q, k, v) return ad.scaled_dot_product_attention(q, k, v, { is_causal = true }) end }
row { name = "attention bool mask (broadcast)", tol = RED,
      make = function() return { R(2, 3, 9, 8), R(2, 3, 11, 8), R(2, 3, 11, 8), R(9, 11) } end,
      fn = function(q, k, v, m) return ad.scaled_dot_product_attention(q, k, v, m:detach():gt(-0.5)) end }
row { name = "attention float mask (differentiable)", tol = RED,
      make = function() return { R(2, 3, 9, 8), R(2, 3, 11, 8), R(2, 3, 11, 8), R(3, 9, 11) } end,
      fn = function(q, k, v, m) return ad.scaled_dot_product_attention(q, k, v, m) end }
row { name = "attention (bf16)", half = "bf16", tol = HALF,
      make = function() return { R(2, 4, 64, 32), R(2, 4, 64, 32), R(2, 4, 64, 32) } end,
      fn = function(q, k, v) return ad.scaled_dot_product_attention(q, k, v) end }
-- half attention on CUDA: f32 scores and softmax, products on tensor cores
row { name = "attention (f16, causal, rows of 300)", half = "f16", tol = HALF,
      make = function() return { R(2, 3, 300, 64), R(2, 3, 300, 64), R(2, 3, 300, 48) } end,
      fn = function(q, k, v) return ad.scaled_dot_product_attention(q, k, v, { is_causal = true }) end }
row { name = "attention (bf16, float mask, differentiable)", half = "bf16", tol = HALF,
      make = function() return { R(2, 3, 40, 32), R(2, 3, 56, 32), R(2, 3, 56, 32), R(3, 40, 56) } end,
      fn = function(q, k, v, m) return ad.scaled_dot_product_attention(q, k, v, m) end }

-- embedding, dropout
row { name = "embedding (repeated indices)", tol = EXACT,
      make = function() return { ad.tensor({ 3, 0, 9, 3, 3, 5 }, { dtype = "i64" }), R(10, 6) } end,
      fn = function(idx, w) return ad.embedding(idx, w) end }
row { name = "dropout (same Philox stream)", tol = 0, make = function() return { R(33, 17) } end,
      fn = function(x) return ad.dropout(x, { p = 0.3, generator = ad.Generator(77) }) end }

-- losses
for _, red in ipairs({ "none", "mean", "sum" }) do
  row { name = "mse_loss " .. red, tol = RED, make = function() return { R(7, 9), R(7, 9) } end,
        fn = function(a, b) return ad.mse_loss(a, b, { reduction = red }) end }
  row { name = "l1_loss " .. red, tol = RED, make = function() return { R(7, 9), R(7, 9) } end,
        fn = function(a, b) return ad.l1_loss(a, b, { reduction = red }) end }
end
row { name = "bce_with_logits (weight, pos_weight)", tol = RED,
      make = function() return { R(7, 9) * 3, U(0, 1, 7, 9), U(0.5, 2, 7, 9), U(0.5, 2, 9) } end,
      fn = function(x, t, w, pw) return ad.binary_cross_entropy_with_logits(x, t, { weight = w, pos_weight = pw }) end }
row { name = "cross_entropy (weight, smoothing, ignore)", tol = RED,
      make = function() return { R(8, 5), ad.tensor({ 0, 4, 2, -100, 1, 1, 3, 0 }, { dtype = "i64" }), U(0.5, 2, 5) } end,
      fn = function(x, t, w) return ad.cross_entropy(x, t, { weight = w:detach(), label_smoothing = 0.1 }) end }
row { name = "cross_entropy spatial (N, C, H, W)", tol = RED,
      make = function() return { R(2, 5, 3, 4), I(0, 5, 2, 3, 4) } end,
      fn = function(x, t) return ad.cross_entropy(x, t, { reduction = "sum" }) end }
row { name = "cross_entropy 1000 classes", tol = RED, make = function() return { R(6, 1000) * 2, I(0, 1000, 6) } end,
      fn = function(x, t) return ad.cross_entropy(x, t) end }
row { name = "nll_loss", tol = RED,
      make = function() return { ad.log_softmax(R(8, 5), 2), I(0, 5, 8) } end,
      fn = function(lp, t) return ad.nll_loss(lp, t, { reduction = "none" }) end }

-- the optimizer family: fused multi-tensor updates (in place; compared after 3 steps)
local function adam_row(dtype, decoupled)
  row { name = "adam step x3 (" .. dtype .. (decoupled and ", decoupled" or "") .. ", many tensors)", grad = false,
        tol = dtype == "f32" and 1e-6 or HALF,
        make = function() return { R(300, 7), R(70000), R(3), R(300, 7), R(70000), R(3) } end,
        fn = function(p1, p2, p3, g1, g2, g3)
          return ad.no_grad(function()
            local ps = { p1:to(dtype):clone(), p2:to(dtype):clone(), p3:to(dtype):clone() }
            local gs = { g1:to(dtype), g2:to(dtype), g3:to(dtype) }
            local ms, vs = {}, {}
            for i = 1, 3 do ms[i] = ad.zeros_like(ps[i], { dtype = "f32" }); vs[i] = ad.zeros_like(ps[i], { dtype = "f32" }) end
            for step = 1, 3 do
              ad._adam_step(ps, gs, ms, vs, { lr = 1e-2, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.1,
                                              step = step, decoupled = decoupled, grad_scale = 2 })
            end
            local flat = {}
            for i = 1, 3 do flat[#flat + 1] = ps[i]:float():flatten(); flat[#flat + 1] = ms[i]:flatten(); flat[#flat + 1] = vs[i]:flatten() end
            return ad.cat(flat)
          end)
        end }
end
adam_row("f32", true)
adam_row("f32", false)
adam_row("bf16", true)
row { name = "sgd step x3 (momentum, nesterov)", grad = false, tol = 1e-6,
      make = function() return { R(300, 7), R(300, 7) } end,
      fn = function(p, g)
        return ad.no_grad(function()
          local ps, bufs = { p:clone() }, { ad.zeros_like(p) }
          for step = 1, 3 do
            ad._sgd_step(ps, { g }, bufs, { lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 1e-2, first = step == 1 })
          end
          return ad.cat({ ps[1]:flatten(), bufs[1]:flatten() })
        end)
      end }
row { name = "ema update, sq_norm, scale_", grad = false, tol = 1e-6,
      make = function() return { R(300, 7), R(300, 7), R(70000) } end,
      fn = function(e, s, big)
        return ad.no_grad(function()
          local es, bs = { e:clone() }, { big:clone() }
          ad._ema_update(es, { s }, 0.99)
          ad._foreach_scale_(bs, 0.5)
          local sq = ad._foreach_sq_norm({ e, big }):float():view(1)
          return ad.cat({ es[1]:flatten(), bs[1], sq })
        end)
      end }

-- autocast: the same scope on both devices (CPU computes bf16 through f32)
row { name = "autocast linear + group_norm + silu", half = "autocast", tol = HALF,
      make = function() return { R(4, 64), R(64, 64), R(64) } end,
      fn = function(x, w, b)
        return ad.autocast("bf16", function()
          local h = ad.linear(x, w, b)
          return ad.silu(ad.group_norm(h:view(4, 64, 1), 8)):float()
        end)
      end }

-- ------------------------------------------------------------------------ the runner
local function is_float(t) local d = t:dtype(); return d == "f32" or d == "f64" or d == "f16" or d == "bf16" end

-- max|a - b| / max|b| (b the CPU result); bool/integer: the fraction of mismatches
local function rel(a, b)
  if a:numel() == 0 then return 0 end
  if not is_float(b) then
    local bad = a:cpu():ne(b):float():sum():item()
    return bad / b:numel()
  end
  local x, y = a:cpu():double(), b:double()
  local nan_a, nan_b = x:isnan(), y:isnan()
  if nan_a:ne(nan_b):any():item() then return math.huge end
  x = ad.where(nan_a, ad.zeros_like(x), x)
  y = ad.where(nan_b, ad.zeros_like(y), y)
  local d = (x - y):abs():max():item()
  local s = y:abs():max():item()
  if d ~= d then return math.huge end
  return d / (s > 0 and s or 1)
end

local function prepare(inputs, dev, half)
  local out = {}
  for i, t in ipairs(inputs) do
    local x = t:detach():clone():to(dev)
    if half and half ~= "autocast" and is_float(x) then x = x:to(half) end
    if is_float(x) then x = x:detach(); x.requires_grad = true end
    out[i] = x
  end
  return out
end

local function first(out) if type(out) == "table" and not ad.is_tensor(out) then return out[1] end return out end

local results, n_fail, n_pass = {}, 0, 0
local clock = os.clock

for _, r in ipairs(ROWS) do
  if (not ONLY or r.name:find(ONLY, 1, true)) and not (QUICK and r.slow) then
    local t0 = clock()
    local prev
    local ok, fwd, gerr = pcall(function()
      if r.setup then prev = r.setup() end
      local inputs = r.make()
      local ins_c, ins_g = prepare(inputs, "cpu", r.half), prepare(inputs, DEV, r.half)
      local yc = first(r.fn(table.unpack(ins_c)))
      local yg = first(r.fn(table.unpack(ins_g)))
      assert(yg:device():sub(1, #DEV) == DEV, "the CUDA run returned a " .. yg:device() .. " tensor")
      assert(yc:dtype() == yg:dtype(), "dtype " .. yg:dtype() .. " on CUDA, " .. yc:dtype() .. " on the CPU")
      local f = rel(yg, yc)
      local g = 0
      if r.grad ~= false and is_float(yc) and yc.requires_grad then
        local up = ad.randn(yc:shape(), { generator = ad.Generator(4242) })
        ad.backward({ yc }, { up:to(yc:dtype()) })
        ad.backward({ yg }, { up:to(DEV):to(yg:dtype()) })
        for i = 1, #ins_c do
          local gc, gg = ins_c[i].grad, ins_g[i].grad
          if gc or gg then
            assert(gc and gg, "input " .. i .. " has a gradient on one device only")
            g = math.max(g, rel(gg, gc))
          end
        end
      end
      return f, g
    end)
    if r.teardown then pcall(r.teardown, prev) end
    local res = { name = r.name, tol = r.tol, gtol = r.gtol or r.tol, secs = clock() - t0 }
    if not ok then
      res.status, res.msg = "ERROR", tostring(fwd)
    else
      res.fwd, res.grad = fwd, gerr
      res.status = (fwd <= res.tol and gerr <= res.gtol) and "ok" or "FAIL"
    end
    if res.status == "ok" then n_pass = n_pass + 1 else n_fail = n_fail + 1 end
    results[#results + 1] = res
  end
end

-- ------------------------------------------------------------------------ report
local lines = {}
local function out(s) lines[#lines + 1] = s; print(s) end
out(string.format("%-48s %-6s %10s %10s %8s", "op", "status", "fwd err", "grad err", "bound"))
for _, res in ipairs(results) do
  if res.status == "ERROR" then
    out(string.format("%-48s %-6s %s", res.name, "ERROR", res.msg:gsub("\n", " | ")))
  else
    out(string.format("%-48s %-6s %10.2e %10.2e %8.0e", res.name, res.status, res.fwd, res.grad, res.tol))
  end
end
out(string.format("cuda ops: %d passed, %d failed (%d rows)", n_pass, n_fail, n_pass + n_fail))
local stats = not SELFTEST and ad.cuda.memory_stats()
if stats then out(string.format("allocator: %d cudaMalloc, %d cudaFree, %d allocations (%d from the cache), peak %.1f MiB",
  stats.num_cuda_malloc, stats.num_cuda_free, stats.num_alloc, stats.num_cache_hits, stats.peak / 2 ^ 20)) end
if OUTFILE then
  local f = io.open(OUTFILE, "w")
  if f then f:write(table.concat(lines, "\n"), "\n"); f:close() end
end
os.exit(n_fail == 0 and 0 or 1)
