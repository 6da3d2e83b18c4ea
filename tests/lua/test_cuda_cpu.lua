-- test_cuda_cpu.lua: what the CUDA issue promises on a machine without a GPU:
-- ad.cuda answers (is_available false, device_count 0), asking for a CUDA
-- tensor is a clear "no CUDA device" error, and the mixed-precision tools
-- work on the CPU: ad.autocast (matmul/linear/conv/attention in bf16/f16 with
-- f32 gradients for f32 parameters) and ad.amp.GradScaler (skip on inf/NaN,
-- backoff, growth, fused unscale, state_dict). On a GPU machine the no-device
-- tests skip; tests/gpu/ covers the device.
local ad = require "advdiff"
local T = require "advdiff.testing"

local function no_gpu()
  if ad.cuda.is_available() then skip("a GPU is present: tests/gpu/run.sh covers it") end
end

local function expect_error(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern), "error '" .. tostring(err) .. "' does not match '" .. pattern .. "'")
end

local function max_rel(a, b)
  local d = (a:double() - b:double()):abs():max():item()
  local s = b:double():abs():max():item()
  return d / (s > 0 and s or 1)
end

test("ad.cuda answers without a GPU", function()
  no_gpu()
  assert(ad.cuda.is_available() == false)
  assert(ad.cuda.device_count() == 0)
  assert(type(ad.cuda.is_built()) == "boolean")
  assert(type(ad.cuda.unavailable_reason()) == "string" and #ad.cuda.unavailable_reason() > 0)
  assert(ad.cuda.default_device() == "cpu")
  ad.cuda.empty_cache()                                     -- nothing cached: a no-op
  local prev = ad.cuda.allow_tf32(true)
  assert(ad.cuda.allow_tf32(prev) == true)                  -- the setting reads back
end)

test("asking for a CUDA tensor without a GPU is a clear error", function()
  no_gpu()
  local x = ad.ones(2, 3)
  expect_error("no CUDA device", function() return x:cuda() end)
  expect_error("no CUDA device", function() return x:to("cuda") end)
  expect_error("no CUDA device", function() return x:to{ device = "cuda:1" } end)
  expect_error("no CUDA device", function() return ad.zeros(2, 3, { device = "cuda" }) end)
  expect_error("no CUDA device", function() return ad.randn(4, { device = "cuda" }) end)
  expect_error("no CUDA device", ad.cuda.synchronize)
  expect_error("no CUDA device", ad.cuda.memory_stats)
  expect_error("no CUDA device", ad.cuda.get_device_name)
  expect_error("no CUDA device", ad.cuda.profiler_start)
  expect_error("no CUDA device", ad.cuda.profiler_stop)
  -- the failed requests left nothing behind: the CPU keeps working
  assert(x:cpu():sum():item() == 6)
end)

test("autocast runs matmul, bmm and linear in bf16 with f32 gradients", function()
  local a = ad.randn(5, 7, { generator = ad.Generator(1) })
  local b = ad.randn(7, 3, { generator = ad.Generator(2) })
  local ref = ad.matmul(a, b)
  local y = ad.autocast("bf16", function() return ad.matmul(a, b) end)
  assert(y:dtype() == "bf16", "matmul under autocast gives " .. y:dtype())
  assert(max_rel(y, ref) < 2e-2)
  local yb = ad.autocast("f16", function() return ad.bmm(a:view(1, 5, 7), b:view(1, 7, 3)) end)
  assert(yb:dtype() == "f16")
  -- linear: parameters stay f32 and receive f32 gradients close to the f32 ones
  local w = ad.randn(4, 7, { generator = ad.Generator(3) }); w.requires_grad = true
  local bias = ad.randn(4, { generator = ad.Generator(4) }); bias.requires_grad = true
  local x = ad.randn(6, 7, { generator = ad.Generator(5) })
  local loss = ad.autocast("bf16", function()
    local out = ad.linear(x, w, bias)
    assert(out:dtype() == "bf16")
    return out:float():square():sum()
  end)
  loss:backward()
  assert(w.grad:dtype() == "f32" and bias.grad:dtype() == "f32")
  local gw, gb = w.grad:clone(), bias.grad:clone()
  w.grad, bias.grad = nil, nil
  ad.linear(x, w, bias):square():sum():backward()
  assert(max_rel(gw, w.grad) < 3e-2, "linear weight grad under autocast: rel " .. max_rel(gw, w.grad))
  assert(max_rel(gb, bias.grad) < 3e-2)
end)

test("autocast runs conv2d and attention in its dtype, leaves f64 and other ops alone", function()
  local x = ad.randn(2, 3, 6, 6, { generator = ad.Generator(6) })
  local w = ad.randn(4, 3, 3, 3, { generator = ad.Generator(7) }); w.requires_grad = true
  local y = ad.autocast("bf16", function() return ad.conv2d(x, w, nil, { padding = 1 }) end)
  assert(y:dtype() == "bf16")
  assert(max_rel(y, ad.conv2d(x, w, nil, { padding = 1 })) < 2e-2)
  y:float():sum():backward()
  assert(w.grad:dtype() == "f32")
  local q = ad.randn(2, 5, 8, { generator = ad.Generator(8) })
  local o = ad.autocast("f16", function() return ad.scaled_dot_product_attention(q, q, q) end)
  assert(o:dtype() == "f16")
  assert(max_rel(o, ad.scaled_dot_product_attention(q, q, q)) < 1e-2)
  ad.autocast("bf16", function()
    -- f64 inputs are never cast (gradchecks stay exact); elementwise ops keep their dtype
    assert(ad.matmul(ad.ones(2, 2, { dtype = "f64" }), ad.ones(2, 2, { dtype = "f64" })):dtype() == "f64")
    assert((ad.ones(3) + 1):dtype() == "f32")
    assert(ad.softmax(ad.ones(3), 1):dtype() == "f32")
  end)
end)

test("autocast state: nesting, scopes with :close() and <close>, restore on error", function()
  assert(not ad.is_autocast_enabled())
  local s = ad.autocast{ dtype = "f16" }
  assert(ad.is_autocast_enabled() and ad.get_autocast_dtype() == "f16")
  ad.autocast({ enabled = false }, function() assert(not ad.is_autocast_enabled()) end)
  assert(ad.is_autocast_enabled())
  s:close()
  s:close()                                                   -- idempotent
  assert(not ad.is_autocast_enabled())
  do
    local scope <close> = ad.autocast("bf16")
    assert(ad.is_autocast_enabled() and ad.get_autocast_dtype() == "bf16")
    assert(tostring(scope):find("open"))
  end
  assert(not ad.is_autocast_enabled())
  local ok, err = pcall(ad.autocast, "bf16", function() error("boom") end)
  assert(not ok and tostring(err):find("boom"))
  assert(not ad.is_autocast_enabled(), "autocast must be off again after an error")
  expect_error("autocast dtype must be bf16 or f16", ad.autocast, "f32", function() end)
  expect_error("a function expected", ad.autocast, "bf16", 3)
  assert(ad.amp.autocast == ad.autocast)
end)

-- a scaler run: grads set by hand so inf/NaN can be planted
local function scaler_setup(opts)
  local p = ad.tensor({ 1.0, -2.0, 3.0 }); p.requires_grad = true
  local ref = ad.tensor({ 1.0, -2.0, 3.0 }); ref.requires_grad = true
  local opt = ad.optim.AdamW({ p }, { lr = 0.1, weight_decay = 0 })
  local ropt = ad.optim.AdamW({ ref }, { lr = 0.1, weight_decay = 0 })
  return p, ref, opt, ropt, ad.amp.GradScaler(opts)
end

test("GradScaler scales the loss, fuses the unscale into the step, matches an unscaled run", function()
  local p, ref, opt, ropt, scaler = scaler_setup{ init_scale = 1024 }
  local loss = ad.tensor(2.0)
  assert(scaler:scale(loss):item() == 2048)
  local g = { 0.5, -0.25, 4.0 }
  p.grad = ad.tensor(g) * 1024
  ref.grad = ad.tensor(g)
  assert(scaler:step(opt) == true)
  ropt:step()
  scaler:update()
  T.assert_close(p:detach(), ref:detach(), { atol = 1e-6, rtol = 1e-6 })
  -- explicit unscale_ (for clipping), then step
  p.grad = ad.tensor(g) * 1024
  ref.grad = ad.tensor(g)
  scaler:unscale_(opt)
  T.assert_close(p.grad, ad.tensor(g), { atol = 0, rtol = 1e-7 })
  expect_error("already called", function() scaler:unscale_(opt) end)
  scaler:step(opt)
  ropt:step()
  scaler:update()
  T.assert_close(p:detach(), ref:detach(), { atol = 1e-6, rtol = 1e-6 })
end)

test("GradScaler skips the step on inf/NaN, halves the scale, grows after clean steps", function()
  local p, _, opt, _, scaler = scaler_setup{ init_scale = 256, growth_interval = 2 }
  local before = p:detach():clone()
  for _, bad in ipairs({ math.huge, 0 / 0 }) do
    p.grad = ad.tensor({ 1.0, bad, 1.0 })
    assert(scaler:step(opt) == false)
    scaler:update()
    T.assert_close(p:detach(), before, { atol = 0, rtol = 0 })
  end
  assert(scaler:get_scale() == 64, "scale after two skipped steps: " .. scaler:get_scale())
  for _ = 1, 2 do
    p.grad = ad.tensor({ 1.0, 1.0, 1.0 })
    assert(scaler:step(opt) == true)
    scaler:update()
  end
  assert(scaler:get_scale() == 128)
  scaler:update(4096)
  assert(scaler:get_scale() == 4096)
end)

test("GradScaler state_dict round trip, disabled passthrough, bad options", function()
  local _, _, _, _, scaler = scaler_setup{ init_scale = 8, growth_interval = 3 }
  scaler._growth_tracker = 2
  local sd = scaler:state_dict()
  local other = ad.amp.GradScaler()
  other:load_state_dict(sd)
  assert(other:get_scale() == 8 and other:get_growth_interval() == 3 and other._growth_tracker == 2)
  local off = ad.amp.GradScaler{ enabled = false }
  local l = ad.tensor(3.0)
  assert(off:scale(l) == l and off:get_scale() == 1.0)
  local p, _, opt = scaler_setup{}
  p.grad = ad.tensor({ 1.0, 1.0, 1.0 })
  assert(off:step(opt) == true)
  expect_error("growth_factor must be > 1", ad.amp.GradScaler, { growth_factor = 0.5 })
  expect_error("init_scale", ad.amp.GradScaler, { init_scale = -1 })
  expect_error("growth_interval must be a positive integer", ad.amp.GradScaler, { growth_interval = 1.5 })
end)
