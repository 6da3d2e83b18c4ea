-- Autograd: backward, accumulation, graphs, no_grad, Lua functions, checkpoint.
local ad = require "advdiff"
local T = require "advdiff.testing"

local raises = T.raises

test("backward computes and accumulates leaf gradients", function()
  local x = ad.tensor({1, 2, 3}, {dtype = "f64", requires_grad = true})
  local y = (x * x):sum()
  y:backward()
  T.assert_close(x.grad, ad.tensor({2, 4, 6}, {dtype = "f64"}))
  local z = (x * 3):sum()
  z:backward()
  T.assert_close(x.grad, ad.tensor({5, 7, 9}, {dtype = "f64"}), nil, "gradients accumulate")
  x.grad = nil
  assert(x.grad == nil)
end)

test("broadcast gradients are summed back to the input shape", function()
  local a = ad.randn(3, 1, {dtype = "f64", requires_grad = true})
  local b = ad.randn(4, {dtype = "f64", requires_grad = true})
  local y = (a + b):sum()
  y:backward()
  T.assert_close(a.grad, ad.full({3, 1}, 4, {dtype = "f64"}))
  T.assert_close(b.grad, ad.full({4}, 3, {dtype = "f64"}))
end)

test("views and shape ops pass gradients through", function()
  local x = ad.randn(2, 3, 4, {dtype = "f64", requires_grad = true})
  local f = function(x)
    local a, b = x:permute(3, 1, 2):chunk(2, 1)
    return ad.cat({b, a:narrow(3, 2, 2), x:select(2, 1):t():narrow(1, 1, 2):unsqueeze(3):expand(2, 2, 2)}, 3)
      :reshape(-1):slice(1, 2, -1, 2)
  end
  T.gradcheck(f, {x})
  local y = ad.randn(3, 2, {dtype = "f64", requires_grad = true})
  T.gradcheck(function(a, b) return ad.stack({a:t(), b:view(2, 3)}, 2):contiguous() end,
    {ad.randn(3, 2, {dtype = "f64", requires_grad = true}), y})
  T.gradcheck(function(a) return a:index_select(1, ad.tensor{2, 0, 2}) end,
    {ad.randn(3, 2, {dtype = "f64", requires_grad = true})})
  T.gradcheck(function(a) return a:to("f32"):to("f64") * 2 end, {ad.randn(3, {dtype = "f64", requires_grad = true})},
    {atol = 1e-4, eps = 1e-3})
end)

test("a non-scalar backward needs a gradient; retain_graph allows a second pass", function()
  local x = ad.randn(3, {requires_grad = true})
  local y = x:exp()
  raises("grad can be implicitly created only for one-element tensors", function() y:backward() end)
  y:backward(ad.ones(3), {retain_graph = true})
  local g1 = x.grad:clone()
  y:backward(ad.ones(3))
  T.assert_close(x.grad, g1 * 2)
  raises("backward through the graph a second time", function() y:backward(ad.ones(3)) end)
end)

test("no_grad, detach and requires_grad", function()
  local x = ad.randn(3, {requires_grad = true})
  local y = ad.no_grad(function() return x * 2 end)
  assert(not y.requires_grad and y.grad_fn == nil)
  assert(ad.is_grad_enabled())
  local ok = pcall(ad.no_grad, function() error("boom") end)
  assert(not ok and ad.is_grad_enabled(), "grad mode restored after an error")
  local d = (x * 2):detach()
  assert(not d.requires_grad and d.is_leaf)
  raises("only floating-point tensors can require gradients", function() ad.arange(3).requires_grad = true end)
  raises("requires_grad can only be changed on leaf tensors", function() (x * 2).requires_grad = false end)
  raises("does not require grad", function() ad.ones(1):backward() end)
end)

test("autograd functions written in Lua", function()
  local Cube = ad.Function{
    name = "cube",
    forward = function(ctx, x, k)
      ctx:save_for_backward(x)
      ctx.k = k
      return x * x * x * k
    end,
    backward = function(ctx, g)
      local x = ctx.saved_tensors[1]
      return g * x * x * (3 * ctx.k), nil
    end,
  }
  local x = ad.randn(5, {dtype = "f64", requires_grad = true})
  local y = Cube(x, 2)
  assert(y.grad_fn == "cube")
  T.gradcheck(function(x) return Cube(x, 2) end, {x})
  local Bad = ad.Function{forward = function(ctx, x) return x * 1 end,
                          backward = function(ctx, g) error("backward exploded") end}
  raises("backward exploded", function() Bad(x):sum():backward() end)
  -- the engine is still usable after a failed backward
  local z = (x * 2):sum(); z:backward()
end)

test("checkpoint gives the same gradients and keeps no activations", function()
  local w = ad.randn(64, 64, {dtype = "f64", requires_grad = true})
  local x = ad.randn(16, 64, {dtype = "f64", requires_grad = true})
  local function block(h)
    for _ = 1, 6 do h = (h:matmul(w) * 0.1):tanh() end
    return h
  end
  collectgarbage(); collectgarbage()
  local base0 = ad.memory().cpu
  local loss = block(x):sum()
  collectgarbage(); collectgarbage()
  local kept_plain = ad.memory().cpu - base0
  loss:backward()
  local gw, gx = w.grad:clone(), x.grad:clone()
  w.grad, x.grad = nil, nil
  collectgarbage(); collectgarbage()
  ad.reset_peak_memory()
  local base = ad.memory().cpu
  local out = ad.checkpoint(block, x)
  collectgarbage(); collectgarbage()
  local kept = ad.memory().cpu - base
  out:sum():backward()
  T.assert_close(w.grad, gw, {atol = 0, rtol = 0})
  T.assert_close(x.grad, gx, {atol = 0, rtol = 0})
  -- the plain version keeps 6 activations of 16x64 f64 (8 KiB each) plus the tanh outputs;
  -- the checkpointed one keeps only its output
  assert(kept <= 16 * 64 * 8 * 2, "checkpoint kept " .. kept .. " bytes")
  assert(kept_plain >= 16 * 64 * 8 * 6, "the plain version keeps its activations (" .. kept_plain .. " bytes)")
end)
