-- test_autocast.lua: autocast's two op policies (core/autocast.h), PyTorch's:
-- conv/matmul/linear/attention run in bf16/f16 (test_cuda_cpu.lua covers those),
-- while group_norm, layer_norm, softmax, log_softmax and the losses upcast
-- f16/bf16 inputs and compute and return f32, batch_norm returns its input's
-- dtype, f64 is never cast, and gradients reach every input in its own dtype.
-- The models under autocast against the golden fixtures: test_autocast_models.lua.
local ad = require "advdiff"
local T = require "advdiff.testing"

local function gen(seed) return { generator = ad.Generator(seed) } end
local I64 = { dtype = "i64" }

-- each f32-policy op as fn(x) of one float input (other arguments fixed, f32 or integer), and
-- whether, outside autocast, its result keeps x's dtype (the losses promote x with their f32 target)
local C_W, C_B = ad.randn(4, gen(11)), ad.randn(4, gen(12))
local LN_W, LN_B = ad.randn(3, gen(13)), ad.randn(3, gen(14))
local TARGET = ad.rand(2, 4, 3, 3, gen(15))
local CLASSES = ad.tensor({ 1, 3 }, I64)
local F32_OPS = {
  { "group_norm", function(x) return ad.group_norm(x, 2, C_W, C_B) end, true },
  { "layer_norm", function(x) return ad.layer_norm(x, 3, LN_W, LN_B) end, true },
  { "softmax", function(x) return ad.softmax(x, 2) end, true },
  { "log_softmax", function(x) return ad.log_softmax(x, -1) end, true },
  { "mse_loss", function(x) return ad.mse_loss(x, TARGET) end, false },
  { "l1_loss", function(x) return ad.l1_loss(x, TARGET, { reduction = "none" }) end, false },
  { "binary_cross_entropy_with_logits", function(x)
    return ad.binary_cross_entropy_with_logits(x, TARGET, { pos_weight = ad.full({ 3 }, 2.0) })
  end, false },
  { "cross_entropy", function(x) return ad.cross_entropy(x:flatten(2), CLASSES, { label_smoothing = 0.1 }) end, true },
  { "nll_loss", function(x) return ad.nll_loss(ad.log_softmax(x:flatten(2), 2), CLASSES, { weight = ad.rand(36, gen(16)) }) end, true },
}

test("f32-policy ops: f16/bf16 inputs give f32 results, equal to the op on the upcast input", function()
  local x32 = ad.randn(2, 4, 3, 3, gen(1))
  for _, ac in ipairs({ "bf16", "f16" }) do
    for _, in_dt in ipairs({ "bf16", "f16" }) do
      local x = x32:to(in_dt)
      for _, e in ipairs(F32_OPS) do
        local name, fn = e[1], e[2]
        local y = ad.autocast(ac, fn, x)
        assert(y:dtype() == "f32", string.format("%s(%s) under %s autocast gives %s", name, in_dt, ac, y:dtype()))
        -- the same f32 computation, bit for bit: only the input was upcast
        T.assert_close(y, fn(x:float()), { atol = 0, rtol = 0 }, name)
        -- outside autocast the op returns the dtype it is given (it computes in f32 inside)
        assert(fn(x):dtype() == (e[3] and in_dt or "f32"), name .. " outside autocast")
      end
    end
  end
end)

test("f32-policy ops leave f32 and f64 inputs alone under autocast", function()
  local x = ad.randn(2, 4, 3, 3, gen(2))
  local x64 = x:double()
  for _, e in ipairs(F32_OPS) do
    local name, fn = e[1], e[2]
    local y = ad.autocast("bf16", fn, x)
    assert(y:dtype() == "f32", name)
    T.assert_close(y, fn(x), { atol = 0, rtol = 0 }, name)
  end
  -- f64 stays f64 even when the other arguments are f32 (the op promotes as outside autocast)
  ad.autocast("bf16", function()
    assert(ad.group_norm(x64, 2):dtype() == "f64")
    assert(ad.layer_norm(x64, 3):dtype() == "f64")
    assert(ad.softmax(x64, 1):dtype() == "f64" and ad.log_softmax(x64, 1):dtype() == "f64")
    assert(ad.mse_loss(x64, TARGET:double()):dtype() == "f64")
    assert(ad.cross_entropy(x64:flatten(2), CLASSES):dtype() == "f64")
  end)
end)

test("batch_norm under autocast: computes in f32 and keeps the input's dtype, as PyTorch's", function()
  local x = ad.randn(4, 3, 5, 5, gen(3))
  local w, b = ad.rand(3, gen(4)) + 0.5, ad.randn(3, gen(5))
  for _, dt in ipairs({ "bf16", "f16" }) do
    local xh = x:to(dt)
    local rm, rv = ad.zeros(3), ad.ones(3)
    local y = ad.autocast(dt, function() return ad.batch_norm(xh, rm, rv, w, b, { training = true }) end)
    assert(y:dtype() == dt, "batch_norm(" .. dt .. ") under autocast gives " .. y:dtype())
    -- running statistics stay f32 and are updated from the f32 computation
    assert(rm:dtype() == "f32")
    local rm2, rv2 = ad.zeros(3), ad.ones(3)
    local y32 = ad.batch_norm(xh:float(), rm2, rv2, w, b, { training = true })
    T.assert_close(y, y32:to(dt), { atol = 0, rtol = 0 })
    T.assert_close(rm, rm2, { atol = 0, rtol = 0 })
    T.assert_close(rv, rv2, { atol = 0, rtol = 0 })
  end
  assert(ad.autocast("bf16", function() return ad.batch_norm(x, ad.zeros(3), ad.ones(3)) end):dtype() == "f32")
end)

test("gradients: f32 leaves get f32 grads through bf16 convs and f32 norms/losses, close to f32", function()
  local x = ad.randn(2, 3, 8, 8, gen(6)); x.requires_grad = true
  local w = ad.randn(8, 3, 3, 3, gen(7)) * 0.3; w.requires_grad = true
  local gw, gb = ad.rand(8, gen(8)) + 0.5, ad.randn(8, gen(9)) * 0.1
  gw.requires_grad = true; gb.requires_grad = true
  local target = ad.randn(2, 8, 8, 8, gen(10))
  local labels = ad.tensor({ 2, 5 }, I64)
  local function run()
    local h = ad.conv2d(x, w, nil, { padding = 1 })
    local n = ad.group_norm(h, 4, gw, gb)
    local ln = ad.layer_norm(n, 8)
    local p = ad.softmax(ln, 4)
    return ad.mse_loss(ln, target) + ad.cross_entropy(n:mean({ 3, 4 }), labels) + p:sum() * 0, h, n, ln, p
  end
  local loss, h, n, ln, p = ad.autocast("bf16", run)
  assert(h:dtype() == "bf16", "conv2d: " .. h:dtype())
  assert(n:dtype() == "f32" and ln:dtype() == "f32" and p:dtype() == "f32" and loss:dtype() == "f32")
  loss:backward()
  local grads = { x = x.grad, w = w.grad, gw = gw.grad, gb = gb.grad }
  for k, g in pairs(grads) do assert(g:dtype() == "f32", k .. " grad is " .. g:dtype()) end
  x.grad, w.grad, gw.grad, gb.grad = nil, nil, nil, nil
  local ref = run()
  ref:backward()
  -- bf16 has an 8-bit significand (unit roundoff 2^-8 = 3.9e-3): one rounded conv ahead of the
  -- norms keeps the loss and gradients within a few units of it
  T.assert_close(loss, ref, { atol = 0, rtol = 2e-2 })
  local refs = { x = x.grad, w = w.grad, gw = gw.grad, gb = gb.grad }
  for k, g in pairs(grads) do
    local rel = (g - refs[k]):norm():item() / refs[k]:norm():item()
    assert(rel < 3e-2, string.format("grad %s under bf16 autocast: relative l2 error %.3g", k, rel))
  end
end)

test("gradients come back in each input's dtype (bf16 and f16 leaves, f32 loss)", function()
  for _, dt in ipairs({ "bf16", "f16" }) do
    local x = ad.randn(3, 5, gen(20)):to(dt); x.requires_grad = true
    local w = ad.rand(5, gen(21)):to(dt); w.requires_grad = true
    local t = ad.randn(3, 5, gen(22)):to(dt); t.requires_grad = true
    local loss = ad.autocast("bf16", function()
      return ad.mse_loss(ad.layer_norm(x, 5, w), t) + ad.cross_entropy(ad.log_softmax(x, 2), ad.tensor({ 0, 4, 2 }, I64))
    end)
    assert(loss:dtype() == "f32")
    loss:backward()
    assert(x.grad:dtype() == dt and w.grad:dtype() == dt and t.grad:dtype() == dt, dt)
    -- the same as the f32 computation's gradient, rounded to the leaf's dtype
    local x32, w32, t32 = x:detach():float(), w:detach():float(), t:detach():float()
    x32.requires_grad = true; w32.requires_grad = true; t32.requires_grad = true
    local ref = ad.mse_loss(ad.layer_norm(x32, 5, w32), t32) + ad.cross_entropy(ad.log_softmax(x32, 2), ad.tensor({ 0, 4, 2 }, I64))
    ref:backward()
    T.assert_close(loss, ref, { atol = 0, rtol = 0 })
    T.assert_close(w.grad, w32.grad:to(dt), { atol = 0, rtol = 0 })
    T.assert_close(t.grad, t32.grad:to(dt), { atol = 0, rtol = 0 })
    -- x's two paths are each rounded to its dtype before they are summed (three roundings, each
    -- at most half an ulp of a term, and the terms can cancel): one ulp of the largest value
    local ulp = dt == "bf16" and 2 ^ -7 or 2 ^ -10
    T.assert_close(x.grad:float(), x32.grad, { atol = ulp * x32.grad:abs():max():item(), rtol = ulp })
  end
end)

test("f64 gradchecks are unaffected by autocast (norms, softmax, losses)", function()
  local x = ad.randn(2, 4, 3, { dtype = "f64", generator = ad.Generator(30) })
  x.requires_grad = true
  local w = ad.randn(4, { dtype = "f64", generator = ad.Generator(31) }); w.requires_grad = true
  local tgt = ad.randn(2, 4, 3, { dtype = "f64", generator = ad.Generator(32) })
  local labels = ad.tensor({ 1, 3 }, I64)
  ad.autocast("bf16", function()
    T.gradcheck(function(a, b) return ad.group_norm(a, 2, b) end, { x, w }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
    T.gradcheck(function(a) return ad.layer_norm(a, 3) end, { x }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
    T.gradcheck(function(a) return ad.log_softmax(a, 2) end, { x }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
    T.gradcheck(function(a) return ad.mse_loss(a, tgt) end, { x }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
    T.gradcheck(function(a) return ad.cross_entropy(a:flatten(2), labels) end, { x }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
  end)
end)

test("autocast stays on after f32-policy ops, also after one fails", function()
  local s <close> = ad.autocast("bf16")
  local x = ad.randn(2, 4, gen(40)):to("f16")
  assert(ad.softmax(x, 2):dtype() == "f32")
  assert(ad.is_autocast_enabled() and ad.get_autocast_dtype() == "bf16")
  -- errors come from the op's own checks, with the input's shape in them
  T.raises("num_groups must be positive and divide the 4 channels, got 3", ad.group_norm, x, 3)
  T.raises("target must be an integer tensor of class indices", ad.cross_entropy, x, ad.zeros(2):to("bf16"))
  assert(ad.is_autocast_enabled(), "a failed f32-policy op must resume autocast")
  -- and the lower-precision ops still cast afterwards
  assert(ad.matmul(ad.ones(2, 2), ad.ones(2, 2)):dtype() == "bf16")
end)
