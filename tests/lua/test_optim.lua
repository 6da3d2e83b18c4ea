-- test_optim.lua: ad.optim — the fused Adam/AdamW/SGD core ops against
-- PyTorch's formulas written out in Lua doubles, param groups, frozen
-- parameters, clipping, EMA, schedules, state_dict round trips and errors.
local ad = require "advdiff"
local T = require "advdiff.testing"
local optim = ad.optim

local function tlist(t) return t:double():tolist() end

-- PyTorch's Adam (single-tensor path) in Lua doubles
local function ref_adam(p, grads_seq, o)
  local m, v = {}, {}
  for i = 1, #p do m[i], v[i] = 0, 0 end
  for step, g in ipairs(grads_seq) do
    local bc1 = 1 - o.b1 ^ step
    local bc2 = 1 - o.b2 ^ step
    for i = 1, #p do
      local gi = g[i]
      if o.maximize then gi = -gi end
      if o.wd ~= 0 then
        if o.decoupled then p[i] = p[i] * (1 - o.lr * o.wd) else gi = gi + o.wd * p[i] end
      end
      m[i] = m[i] + (1 - o.b1) * (gi - m[i])
      v[i] = v[i] * o.b2 + (1 - o.b2) * gi * gi
      p[i] = p[i] - (o.lr / bc1) * m[i] / (math.sqrt(v[i]) / math.sqrt(bc2) + o.eps)
    end
  end
  return p
end

local function grads_for(n, steps, seed)
  local g = {}
  local gen = ad.Generator(seed)
  for s = 1, steps do g[s] = ad.randn(n, { dtype = "f64", generator = gen }):tolist() end
  return g
end

local function run_opt(make, dtype, init, gseq)
  local p = ad.tensor(init, { dtype = dtype })
  p.requires_grad = true
  local opt = make({ p })
  for _, g in ipairs(gseq) do
    p.grad = ad.tensor(g, { dtype = dtype })
    opt:step()
  end
  return p, opt
end

local INIT = { 0.5, -1.25, 2.0, 0.0, 3.5, -0.75, 1e-3 }

test("adam f64 matches PyTorch's formula (L2 weight decay, maximize)", function()
  local gseq = grads_for(#INIT, 6, 1)
  for _, maximize in ipairs { false, true } do
    local p = run_opt(function(ps) return optim.Adam(ps, { lr = 0.01, betas = { 0.8, 0.95 }, eps = 1e-6,
      weight_decay = 0.1, maximize = maximize }) end, "f64", INIT, gseq)
    local ref = ref_adam({ table.unpack(INIT) }, gseq, { lr = 0.01, b1 = 0.8, b2 = 0.95, eps = 1e-6, wd = 0.1,
                                                       maximize = maximize })
    T.assert_close(p:detach(), ad.tensor(ref, { dtype = "f64" }), { atol = 1e-13, rtol = 1e-12 })
  end
end)

test("adamw f64 decouples the weight decay", function()
  local gseq = grads_for(#INIT, 5, 2)
  local p = run_opt(function(ps) return optim.AdamW(ps, { lr = 0.05, weight_decay = 0.2 }) end, "f64", INIT, gseq)
  local ref = ref_adam({ table.unpack(INIT) }, gseq, { lr = 0.05, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.2, decoupled = true })
  T.assert_close(p:detach(), ad.tensor(ref, { dtype = "f64" }), { atol = 1e-13, rtol = 1e-12 })
  -- AdamW's default weight decay is PyTorch's 1e-2
  assert(optim.AdamW({ ad.zeros(2) }).param_groups[1].weight_decay == 1e-2)
end)

test("adam f32, f16 and bf16 parameters follow the f64 result", function()
  local gseq = grads_for(#INIT, 4, 3)
  local ref = ref_adam({ table.unpack(INIT) }, gseq, { lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0 })
  local p32, opt = run_opt(function(ps) return optim.Adam(ps, { lr = 0.01 }) end, "f32", INIT, gseq)
  T.assert_close(p32:detach():double(), ad.tensor(ref, { dtype = "f64" }), { atol = 1e-6, rtol = 1e-5 })
  assert(opt.state[p32].exp_avg:dtype() == "f32")
  for _, dt in ipairs { "f16", "bf16" } do
    local ph, o2 = run_opt(function(ps) return optim.Adam(ps, { lr = 0.01 }) end, dt, INIT, gseq)
    assert(ph:dtype() == dt and o2.state[ph].exp_avg:dtype() == "f32")
    T.assert_close(ph:detach():double(), ad.tensor(ref, { dtype = "f64" }), { atol = 2e-2, rtol = 1e-2 })
  end
end)

test("a large tensor (many chunks) gives the same update as small ones", function()
  local n = 200003
  local p = ad.randn(n, { dtype = "f32", generator = ad.Generator(5) })
  local g = ad.randn(n, { dtype = "f32", generator = ad.Generator(6) })
  local a, b = p:clone(), p:narrow(1, 1, 7):clone()
  a.requires_grad, b.requires_grad = true, true
  a.grad, b.grad = g:clone(), g:narrow(1, 1, 7):clone()
  local oa, ob = optim.AdamW({ a }, { lr = 0.1 }), optim.AdamW({ b }, { lr = 0.1 })
  oa:step(); ob:step()
  assert(a:detach():narrow(1, 1, 7):tolist()[7] == b:detach():tolist()[7])
  T.assert_close(a:detach():narrow(1, 1, 7), b:detach(), { atol = 0, rtol = 0 })
end)

test("sgd: momentum, dampening, nesterov, weight decay as torch.optim.SGD", function()
  local gseq = grads_for(#INIT, 4, 7)
  for _, cfg in ipairs {
    { lr = 0.1 }, { lr = 0.1, momentum = 0.9 }, { lr = 0.05, momentum = 0.9, dampening = 0.5, weight_decay = 0.01 },
    { lr = 0.05, momentum = 0.8, nesterov = true }, { lr = 0.1, momentum = 0.5, maximize = true },
  } do
    local p = run_opt(function(ps) return optim.SGD(ps, cfg) end, "f64", INIT, gseq)
    local ref, buf = { table.unpack(INIT) }, {}
    local mom, damp, wd = cfg.momentum or 0, cfg.dampening or 0, cfg.weight_decay or 0
    for s, g in ipairs(gseq) do
      for i = 1, #ref do
        local gi = g[i]
        if cfg.maximize then gi = -gi end
        gi = gi + wd * ref[i]
        if mom ~= 0 then
          buf[i] = s == 1 and gi or mom * buf[i] + (1 - damp) * gi
          gi = cfg.nesterov and gi + mom * buf[i] or buf[i]
        end
        ref[i] = ref[i] - cfg.lr * gi
      end
    end
    T.assert_close(p:detach(), ad.tensor(ref, { dtype = "f64" }), { atol = 1e-14, rtol = 1e-13 })
  end
end)

test("param groups have their own lr and weight decay; frozen and grad-less parameters stay bit-equal", function()
  local a, b, frozen, nograd = ad.ones(3), ad.ones(3), ad.ones(3), ad.ones(3)
  for _, p in ipairs { a, b, frozen, nograd } do p.requires_grad = true end
  local opt = optim.AdamW({ { params = { a, frozen, nograd }, lr = 0.1, weight_decay = 0 },
                            { params = { b }, lr = 0.01, weight_decay = 0.5 } })
  frozen.requires_grad = false
  for _, p in ipairs { a, b } do p.grad = ad.full({ 3 }, 2.0) end
  local before_f, before_n = frozen:clone(), nograd:clone()
  opt:step()
  T.assert_close(frozen, before_f, { atol = 0, rtol = 0 })
  T.assert_close(nograd, before_n, { atol = 0, rtol = 0 })
  -- first Adam step moves by lr * sign(g) (up to eps); b also decays by lr * wd
  T.assert_close(a:detach(), ad.full({ 3 }, 0.9), { atol = 1e-6 })
  T.assert_close(b:detach(), ad.full({ 3 }, 1 * (1 - 0.01 * 0.5) - 0.01), { atol = 1e-6 })
  assert(opt.state[frozen] == nil and opt.state[nograd] == nil)
  -- a module can be passed directly
  local m = ad.nn.Linear(3, 2)
  assert(#optim.Adam(m).param_groups[1].params == 2)
end)

test("zero_grad sets grads to nil (or zeros them)", function()
  local p = ad.ones(2); p.requires_grad = true
  p.grad = ad.ones(2)
  local opt = optim.SGD({ p }, { lr = 1 })
  opt:zero_grad(false)
  T.assert_close(p.grad, ad.zeros(2))
  opt:zero_grad()
  assert(p.grad == nil)
end)

test("clip_grad_norm_ returns the norm and scales to max_norm", function()
  local a, b = ad.zeros(2), ad.zeros(3)
  a.requires_grad, b.requires_grad = true, true
  a.grad = ad.tensor({ 3, 4 }, { dtype = "f32" })
  b.grad = ad.tensor({ 0, 0, 12 }, { dtype = "f32" })
  local n = optim.clip_grad_norm_({ a, b }, 1.0)
  T.assert_close(n, 13.0, { atol = 1e-5 })
  T.assert_close(optim.grad_norm({ a, b }), 1.0, { atol = 1e-5 })
  -- under the limit: untouched
  local n2 = optim.clip_grad_norm_({ a, b }, 5.0)
  T.assert_close(n2, 1.0, { atol = 1e-5 })
  T.assert_close(a.grad, ad.tensor { 3 / 13, 4 / 13 }, { atol = 1e-6 })
  b.grad = ad.tensor({ 0 / 0, 0, 0 }, { dtype = "f32" })
  local ok, err = pcall(optim.clip_grad_norm_, { a, b }, 1.0, { error_if_nonfinite = true })
  assert(not ok and err:find("nan"), err)
end)

test("ema follows its formula, warms up, swaps and round-trips its state", function()
  local m = ad.nn.Linear(2, 2)
  local ema = optim.EMA(m, { decay = 0.9 })
  local w0 = m.weight:detach():clone()
  ad.no_grad(function() m.weight:add_(ad.ones(2, 2)) end)
  ema:update()
  T.assert_close(ema.shadow[1], w0 * 0.9 + (w0 + 1) * 0.1, { atol = 1e-6 })
  local w_model = m.weight:detach():clone()
  ema:swap()
  T.assert_close(m.weight:detach(), w0 * 0.9 + (w0 + 1) * 0.1, { atol = 1e-6 })
  ema:swap()
  T.assert_close(m.weight:detach(), w_model, { atol = 0, rtol = 0 })
  local sd = ema:state_dict()
  assert(sd.shadow.weight and sd.shadow.bias and sd.num_updates == 1)
  local e2 = optim.EMA(m, { decay = 0.5 })
  e2:load_state_dict(sd)
  T.assert_close(e2.shadow[1], ema.shadow[1], { atol = 0, rtol = 0 })
  assert(e2.decay == 0.9)
  local ew = optim.EMA(m, { decay = 0.9999, warmup = true })
  T.assert_close(ew:current_decay(), 0.1, { atol = 1e-12 })
  assert(optim.EMA(m).decay == 0.9999)
end)

test("schedules give their values at given steps", function()
  local S = optim.schedule
  local lin = S.linear { from = 0, to = 0.002, steps = 1000 }
  T.assert_close(lin(0), 0.0); T.assert_close(lin(500), 0.001, { atol = 1e-15 }); T.assert_close(lin(2000), 0.002)
  local delayed = S.linear { from = 1, to = 3, steps = 10, start = 5 }
  assert(delayed(0) == 1 and delayed(5) == 1 and delayed(10) == 2 and delayed(15) == 3)
  local cos = S.cosine { from = 0, to = 1, steps = 100 }
  T.assert_close(cos(50), 0.5, { atol = 1e-12 }); T.assert_close(cos(100), 1.0); T.assert_close(cos(25), (1 - math.cos(math.pi / 4)) / 2, { atol = 1e-12 })
  local st = S.step { values = { 0, 0.5, 1 }, milestones = { 10, 20 } }
  assert(st(9) == 0 and st(10) == 0.5 and st(25) == 1)
  local sg = S.step { base = 1, gamma = 0.5, milestones = { 2, 4 } }
  assert(sg(1) == 1 and sg(2) == 0.5 and sg(4) == 0.25)
  local wc = S.warmup_cosine { warmup = 10, total = 110, base = 1, min = 0 }
  T.assert_close(wc(0), 0.1); T.assert_close(wc(9), 1.0); T.assert_close(wc(60), 0.5, { atol = 1e-12 }); T.assert_close(wc(110), 0.0, { atol = 1e-12 })
  T.assert_close(S.warmup { steps = 4 }(1), 0.5)
  assert(S.from(0.3)(123) == 0.3)
  assert(S.from(function(s) return s * 2 end)(4) == 8)
  assert(S.from { kind = "linear", to = 1, steps = 2 }(1) == 0.5)
  local custom = { value = function(_, s) return -s end }
  assert(S.eval(custom, 3) == -3)
  local ok, err = pcall(S.from, "bogus")
  assert(not ok and err:find("schedule.from"))
end)

test("LRScheduler scales initial_lr and resumes from its state", function()
  local p = ad.zeros(1); p.requires_grad = true
  local opt = optim.SGD({ p }, { lr = 0.2 })
  local sched = optim.LRScheduler(opt, optim.schedule.warmup { steps = 4 })
  T.assert_close(opt.param_groups[1].lr, 0.05)
  sched:step(); sched:step()
  T.assert_close(opt.param_groups[1].lr, 0.15, { atol = 1e-15 })
  local s2 = optim.LRScheduler(opt, optim.schedule.warmup { steps = 4 })
  s2:load_state_dict(sched:state_dict())
  T.assert_close(s2:get_last_lr()[1], 0.15, { atol = 1e-15 })
end)

test("state_dict round trip continues bit-identically", function()
  local gseq = grads_for(#INIT, 6, 9)
  local full = run_opt(function(ps) return optim.AdamW(ps, { lr = 0.01 }) end, "f32", INIT, gseq)
  -- 3 steps, save, new optimizer, load, 3 more
  local first = { gseq[1], gseq[2], gseq[3] }
  local p, opt = run_opt(function(ps) return optim.AdamW(ps, { lr = 0.01 }) end, "f32", INIT, first)
  local sd = opt:state_dict()
  assert(sd.state[0].step == 3 and ad.is_tensor(sd.state[0].exp_avg) and sd.param_groups[1].params[1] == 0)
  local q = p:detach():clone(); q.requires_grad = true
  local opt2 = optim.AdamW({ q }, { lr = 0.5 })
  opt2:load_state_dict(sd)
  assert(opt2.param_groups[1].lr == 0.01)
  for s = 4, 6 do q.grad = ad.tensor(gseq[s], { dtype = "f32" }); opt2:step() end
  T.assert_close(q:detach(), full:detach(), { atol = 0, rtol = 0 })
end)

test("bad arguments fail with clear messages", function()
  local p = ad.zeros(3); p.requires_grad = true
  local function err(f, ...) local ok, e = pcall(f, ...); assert(not ok); return tostring(e) end
  assert(err(optim.Adam, { p }, { lr = -1 }):find("invalid learning rate"))
  assert(err(optim.Adam, { p }, { betas = { 1.5, 0.9 } }):find("betas"))
  assert(err(optim.Adam, { p }, { lr = 1, bogus = 2 }):find("unknown option 'bogus'"))
  assert(err(optim.SGD, { p }, { nesterov = true }):find("nesterov"))
  assert(err(optim.Adam, {}):find("empty"))
  -- core-level checks
  local m, v = ad.zeros(3), ad.zeros(3)
  assert(err(ad._adam_step, { p }, { ad.zeros(4) }, { m }, { v }, { lr = 1, step = 1 }):find("grads%[1%] has shape %[4%]"))
  assert(err(ad._adam_step, { p }, { ad.zeros(3) }, { m }, { v }, { lr = 1, step = 0 }):find("step must be >= 1"))
  assert(err(ad._adam_step, { p }, { ad.zeros(3) }, { m, m }, { v }, { lr = 1, step = 1 }):find("exp_avg has 2 tensors"))
  assert(err(ad._adam_step, { p }, { ad.zeros(3, { dtype = "f64" }) }, { m }, { v }, { lr = 1, step = 1 }):find("grads%[1%] is f64"))
  local w = ad.zeros(3, 2):t()
  assert(err(ad._adam_step, { w }, { ad.zeros(2, 3) }, { ad.zeros(2, 3) }, { ad.zeros(2, 3) }, { lr = 1, step = 1 }):find("contiguous"))
  assert(err(ad._ema_update, { p }, { ad.zeros(3) }, 1.5):find("decay must be in"))
  assert(err(ad._foreach_sq_norm, { ad.zeros(2, { dtype = "i64" }) }):find("floating%-point"))
  assert(err(ad._adam_step, { p }, { "x" }, { m }, { v }, { lr = 1 }):find("must be a tensor"))
end)
