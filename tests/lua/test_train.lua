-- test_train.lua: ad.train.adversarial — both phases, the curriculum
-- (lambda schedule, timestep gates), freezing, frozen BatchNorm statistics,
-- exact resume, NaN handling, live config changes and their replay, the
-- design-space options, and the R1 estimate. A tiny conv G with ADM's
-- interface (learned sigma, class labels, dropout) and a tiny ResNet-style D
-- keep every test fast; one test runs a real (small) ADM UNetModel.
local ad = require "advdiff"
local T = require "advdiff.testing"
local nn = ad.nn

local TinyG = nn.Module:extend("TinyG")
function TinyG:__init(opts)
  opts = opts or {}
  self.num_classes = opts.num_classes
  self.inp = nn.Conv2d(3, 16, 3, { padding = 1 })
  self.temb = nn.Linear(16, 16)
  if self.num_classes then self.label_emb = nn.Embedding(self.num_classes, 16) end
  self.mid = nn.Conv2d(16, 16, 3, { padding = 1 })
  self.out = nn.Conv2d(16, opts.learn_sigma and 6 or 3, 3, { padding = 1 })
  self.drop = nn.Dropout(opts.dropout or 0)
end
function TinyG:forward(x, t, y)
  local emb = self.temb(ad.models.adm.timestep_embedding(t, 16))
  if self.num_classes then emb = emb + self.label_emb(y) end
  local h = ad.silu(self.inp(x) + emb:view(-1, 16, 1, 1))
  h = self.drop(ad.silu(self.mid(h)))
  return self.out(h)
end

local function tiny_d(ncls)
  local backbone = nn.Sequential(nn.Conv2d(3, 8, 3, { padding = 1 }), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
  return ad.models.discriminator { backbone = backbone, num_classes = ncls, feature_dim = 8, embed_dim = 4, hidden = 16 }
end

-- a fresh, identical setup every call (same seeds, same data)
local function setup(over)
  ad.manual_seed(42)
  local G = TinyG { num_classes = 2, learn_sigma = true, dropout = 0.1 }
  local D = tiny_d(2)
  -- give the frozen backbone's BatchNorm non-trivial statistics
  ad.no_grad(function()
    for _, m in ipairs(D.backbone:modules()) do
      if getmetatable(m) == nn.BatchNorm2d then m.running_mean:uniform_(-0.5, 0.5); m.running_var:uniform_(0.5, 2) end
    end
  end)
  local diff = ad.diffusion.create { steps = 1000, noise_schedule = "cosine", learn_sigma = true, rescale_timesteps = true,
                                     timestep_respacing = "10" }
  local imgs = ad.randint(0, 256, { 24, 3, 8, 8 }, { dtype = "u8", generator = ad.Generator(7) })
  local labels = {}
  for i = 1, 24 do labels[i] = i % 2 end
  local loader = ad.data.DataLoader(ad.data.TensorDataset(imgs, labels), { batch_size = 4, seed = 1, hflip = true })
  local cfg = { G = G, D = D, diffusion = diff, data = loader, d_warmup_steps = 3, joint_steps = 5, lambda_ramp_steps = 2,
                lambda_adv = 0.1, t_region = 1.0, telemetry_every = 2, progress = false }
  for k, v in pairs(over or {}) do cfg[k] = v end
  return cfg
end

local function copy_params(m)
  local out = {}
  for name, p in m:named_parameters() do out[name] = p:detach():clone() end
  return out
end

local function equal(a, b) return (a - b):abs():max():item() == 0 end

test("both phases run, losses are finite; G is frozen in phase 1 and trained in phase 2", function()
  local run = ad.train.adversarial(setup())
  local g0, d0 = copy_params(run.G), copy_params(run.D)
  for s = 1, 3 do
    local r = run:step()
    assert(r.phase == 1 and r.loss_g == nil and r.loss_d == r.loss_d and math.abs(r.loss_d) < 1e3)
  end
  for name, p in run.G:named_parameters() do assert(equal(p:detach(), g0[name]), name .. " moved in phase 1") end
  assert(not equal(run.D.head[3].weight:detach(), d0["head.2.weight"]), "D trains in phase 1")
  local last
  for s = 4, 8 do
    last = run:step()
    assert(last.phase == 2)
    for _, k in ipairs { "loss_d", "loss_g", "loss_diff" } do
      assert(type(last[k]) == "number" and last[k] == last[k] and math.abs(last[k]) < 1e3, k)
    end
  end
  assert(not equal(run.G.out.weight:detach(), g0["out.weight"]), "G trains in phase 2")
  assert(run:step() == nil and run.step_count == 8, "no step past the end")
  assert(last.d_acc >= 0 and last.d_acc <= 1 and last.gnorm_diff_out and last.gnorm_adv_out and last.gnorm_ratio)
  assert(last.loss_diff_q1 or last.loss_diff_q2 or last.loss_diff_q3 or last.loss_diff_q4)
end)

test("lambda follows its schedule and the timestep gates open where they should", function()
  local run = ad.train.adversarial(setup { lambda_adv = 0.002, lambda_ramp_steps = 1000 })
  T.assert_close(run:lambda_at(0), 0.0)
  T.assert_close(run:lambda_at(500), 0.001, { atol = 1e-15 })
  T.assert_close(run:lambda_at(1000), 0.002)
  T.assert_close(run:lambda_at(5000), 0.002)
  run.cfg.lambda_schedule = "cosine"
  T.assert_close(run:lambda_at(500), 0.001, { atol = 1e-15 })
  T.assert_close(run:lambda_at(250), 0.002 * (1 - math.cos(math.pi / 4)) / 2, { atol = 1e-15 })
  run.cfg.lambda_schedule = "step"
  assert(run:lambda_at(999) == 0 and run:lambda_at(1000) == 0.002)
  run.cfg.lambda_schedule = ad.optim.schedule.linear { from = 1, to = 3, steps = 10 }
  assert(run:lambda_at(5) == 2)
  run.cfg.lambda_schedule = function(p) return p * 10 end
  assert(run:lambda_at(3) == 30)
  -- gates, T = 10 (so t/(T-1) = t/9), region 0.5
  run.cfg.t_region = 0.5
  run.cfg.t_gate = "batch_mean"
  local w, open = run:gate({ 0, 1, 8, 9 }, 10)   -- mean 4.5 -> 0.5: open
  assert(open == 1 and w[3] == 1)
  w, open = run:gate({ 0, 1, 9, 9 }, 10)         -- mean 4.75: closed
  assert(open == 0 and w[1] == 0)
  run.cfg.t_gate = "per_sample"
  w, open = run:gate({ 0, 4, 5, 9 }, 10)
  assert(w[1] == 1 and w[2] == 1 and w[3] == 0 and w[4] == 0 and open == 0.5)
  run.cfg.t_gate = "none"
  local _, o2 = run:gate({ 9, 9 }, 10)
  assert(o2 == 1)
  -- in training: lambda in force at phase-2 steps (linear ramp over 2 steps to 0.1)
  local r2 = ad.train.adversarial(setup())
  local lam = {}
  for s = 1, 8 do lam[s] = r2:step().lambda end
  assert(lam[1] == nil and lam[4] == 0 and math.abs(lam[5] - 0.05) < 1e-12 and math.abs(lam[6] - 0.1) < 1e-12)
  -- a gate that never opens keeps the adversarial term out
  local r3 = ad.train.adversarial(setup { t_region = -1 })
  for _ = 1, 8 do
    local r = r3:step()
    assert(r.phase == 1 or (r.loss_adv == nil and r.gate == 0 and r.lambda == 0 and r.loss_g == r.loss_diff))
  end
end)

test("frozen parameters stay bit-equal while the others move; D's frozen BatchNorm statistics do not move", function()
  local run = ad.train.adversarial(setup { freeze_g = { "^inp%.", "^label_emb%." } })
  local g0, d0 = copy_params(run.G), copy_params(run.D)
  local bn = {}
  for name, b in run.D:named_buffers() do bn[name] = b:clone() end
  assert(not run.G.inp.weight.requires_grad and run.G.out.weight.requires_grad)
  run:run()
  for name, p in run.G:named_parameters() do
    local frozen = name:find("^inp%.") or name:find("^label_emb%.")
    assert(equal(p:detach(), g0[name]) == (frozen and true or false), name)
  end
  for name, p in run.D:named_parameters() do
    local backbone = name:find("^backbone%.")
    assert(equal(p:detach(), d0[name]) == (backbone and true or false), name)
  end
  for name, b in run.D:named_buffers() do
    if bn[name] and b:dtype() ~= "i64" then assert(equal(b, bn[name]), name .. " moved") end
  end
  -- unfreezing live: the next steps move them
  run.cfg.freeze_g = {}
  run.cfg.joint_steps = 7
  run:step(2)
  assert(not equal(run.G.inp.weight:detach(), g0["inp.weight"]))
  assert(run.events[#run.events].event == "cfg" or run.events[#run.events - 1].event == "cfg")
end)

local function run_steps(run, n, into)
  for _ = 1, n do
    local r = run:step()
    into[#into + 1] = { r.loss_d, r.loss_g, r.loss_adv, r.lambda }
  end
end

local function states_equal(a, b)
  local ta, sa = a:state()
  local tb, sb = b:state()
  for k, v in pairs(ta) do
    if not tb[k] then return false, "missing " .. k end
    if not equal(v:double(), tb[k]:double()) then return false, k end
  end
  return sa.step == sb.step, "step"
end

test("a run stopped and resumed gives bit-identical losses and weights", function()
  local extra = { diffaug = "color,translation,cutout", r1_gamma = 1.0, r1_every = 2, grad_clip_g = 1.0, grad_clip_d = 1.0,
                  telemetry_every = 3 }
  local a = ad.train.adversarial(setup(extra))
  local la = {}
  run_steps(a, 8, la)
  local dir = os.tmpname()
  os.remove(dir)
  local b = ad.train.adversarial(setup(extra))
  local lb = {}
  run_steps(b, 4, lb)
  b:save(dir .. "/ck")
  -- the state written to disk, not the live objects, carries the resume
  b = nil
  collectgarbage()
  local cfg = setup(extra)
  cfg.resume = dir .. "/ck"
  local c = ad.train.adversarial(cfg)
  assert(c.step_count == 4)
  run_steps(c, 4, lb)
  for i = 1, 8 do
    for j = 1, 4 do assert(la[i][j] == lb[i][j], string.format("step %d value %d: %s vs %s", i, j, tostring(la[i][j]), tostring(lb[i][j]))) end
  end
  local ok, what = states_equal(a, c)
  assert(ok, what)
  os.execute("rm -rf '" .. dir .. "'")
end)

-- a discriminator whose output can be poisoned with NaN
local function poisoned_setup(policy)
  local cfg = setup { nan_policy = policy }
  local D = cfg.D
  local Poison = nn.Module:extend("Poison")
  function Poison:__init(d) self.d = d; self.bad = false end
  function Poison:forward(x, y) local o = self.d(x, y); if self.bad then o = o * (0 / 0) end; return o end
  function Poison:freeze_backbone() self.d:freeze_backbone() end
  cfg.D = Poison(D)
  return cfg
end

test("a NaN loss stops the step with a clear message (or skips it), keeping the last good checkpoint", function()
  local dir = os.tmpname()
  os.remove(dir)
  local run = ad.train.adversarial(poisoned_setup("stop"))
  run:step(2)
  run:save(dir .. "/ck")
  local before = copy_params(run.D)
  run.D.bad = true
  local ok, err = pcall(run.step, run)
  assert(not ok and err:find("step 2: D loss is nan") and err:find("training stopped"), err)
  assert(run.step_count == 2)
  for name, p in run.D:named_parameters() do assert(equal(p:detach(), before[name]), name) end
  local _, st = ad.train.checkpoint.load(dir .. "/ck")
  assert(st.step == 2)
  -- skip policy: the step is counted, the update skipped
  local r2 = ad.train.adversarial(poisoned_setup("skip"))
  r2:step(2)
  local b2 = copy_params(r2.D)
  r2.D.bad = true
  local rec = r2:step()
  assert(rec.skipped_d and r2.skipped == 1 and r2.step_count == 3)
  for name, p in r2.D:named_parameters() do assert(equal(p:detach(), b2[name]), name) end
  r2.D.bad = false
  assert(r2:step().loss_d == r2.last.loss_d)
  os.execute("rm -rf '" .. dir .. "'")
end)

test("a live config change takes effect at the next step, is logged, and replays exactly", function()
  local run = ad.train.adversarial(setup())
  local got = {}
  run_steps(run, 5, got)
  run.cfg.lambda_adv = 0.4
  run.cfg.lr_g = 1e-3
  run_steps(run, 3, got)
  assert(math.abs(got[6][4] - 0.4) < 1e-12, "new lambda at the next step")
  local ev = {}
  for _, e in ipairs(run.events) do if e.event == "cfg" then ev[e.key] = e end end
  assert(ev.lambda_adv.step == 5 and ev.lambda_adv.old == 0.1 and ev.lambda_adv.new == 0.4)
  assert(ev.lr_g.new == 1e-3)
  -- replay from the config and the event log
  local rep = ad.train.adversarial(setup { replay = run.events })
  local again = {}
  run_steps(rep, 8, again)
  for i = 1, 8 do for j = 1, 4 do assert(got[i][j] == again[i][j], i .. ":" .. j) end end
  -- an invalid value is refused and the old one kept
  run.cfg.joint_steps = 9
  run.cfg.d_loss = "wgan"
  local ok, err = pcall(run.step, run)
  assert(not ok and err:find("d_loss must be one of"))
  assert(run.cfg.d_loss == "bce")
end)

test("design options: losses, targets, re-noised D, gates, adaptive lambda, optimizers, checkpointing", function()
  local cases = {
    { d_loss = "hinge" }, { d_loss = "lsgan" }, { g_adv_loss = "hinge" }, { diffusion_loss = "hybrid" },
    { d_target = "x_prev" }, { d_target = "pred_xstart_unclamped" }, { t_gate = "per_sample", t_region = 0.5 },
    { adaptive_lambda = true, adaptive_lambda_max = 2 }, { d_updates_per_g = 2 }, { reuse_g_forward = false },
    { optimizer = "sgd" }, { optimizer = "adam", weight_decay_g = 0.01 }, { ema_decay = false }, { grad_checkpoint = true },
    { lr_schedule_g = ad.optim.schedule.warmup { steps = 3 }, lr_schedule_d = { kind = "linear", from = 1, to = 0, steps = 4 } },
    { d_renoise = true, d_renoise_max_t = 5, _timecond = true },
  }
  if type(rawget(ad, "autocast")) == "function" then
    cases[#cases + 1] = { amp = "bf16" }
    cases[#cases + 1] = { amp = "f16" }
  end
  for _, over in ipairs(cases) do
    local tc = over._timecond
    over._timecond = nil
    local cfg = setup(over)
    cfg.d_warmup_steps, cfg.joint_steps = 1, 2
    if tc then cfg.D = ad.train.TimeConditionedD(cfg.D, { t_dim = 8, hidden = 16 }) end
    local run = ad.train.adversarial(cfg)
    local r
    for _ = 1, 3 do r = run:step() end
    for _, k in ipairs { "loss_d", "loss_g" } do
      assert(r[k] == r[k] and math.abs(r[k]) < 1e4, k .. " with " .. require("advdiff.log").json.encode(over))
    end
    if over.adaptive_lambda then assert(r.lambda <= 2 * 0.1 + 1e-12) end
  end
  -- re-noising needs a t-conditioned D
  local run = ad.train.adversarial(setup { d_renoise = true, d_warmup_steps = 1 })
  local ok, err = pcall(run.step, run)
  assert(not ok and err:find("d_renoise needs a discriminator that takes the timestep"), err)
end)

-- R1's value and its gradient in D's parameters against references computed without it: the value
-- from an ordinary backward to the input, the gradient as float64 central differences of that value
-- over every parameter of a small nonlinear D (with a BatchNorm in train mode, so the samples are
-- coupled as in a real D).
local R1D = nn.Module:extend("R1D")
function R1D:__init()
  self.conv = nn.Conv2d(3, 4, 3, { padding = 1 })
  self.bn = nn.BatchNorm2d(4)
  self.fc = nn.Linear(64, 1)
end
function R1D:forward(x) return self.fc(ad.tanh(self.bn(self.conv(x))):flatten(2)):view(-1) end

local function r1_exact(D, x, gamma)
  local xg = x:detach():clone():requires_grad_()
  D(xg):sum():backward()
  local n = x:shape()[1]
  return gamma / (2 * n) * xg.grad:square():sum():item()
end

test("R1: the penalty's value and its gradient in D's parameters match float64 finite differences", function()
  ad.manual_seed(5)
  local D = R1D():to("f64")
  D:train()
  local cfg = setup { r1_gamma = 0.7, r1_fd_eps = 1e-4 }
  cfg.D = D
  local run = ad.train.adversarial(cfg)
  local x = ad.randn({ 6, 3, 4, 4 }, { generator = ad.Generator(3), dtype = "f64" })
  local rm0 = D.bn.running_mean:clone()
  local term, value = run:r1_penalty(x, nil, nil)
  assert(equal(D.bn.running_mean, rm0), "R1 moved BatchNorm's running statistics")
  for _, p in ipairs(D:parameters()) do p.grad = nil end
  local ref = r1_exact(D, x, 0.7)
  for _, p in ipairs(D:parameters()) do p.grad = nil end
  assert(math.abs(value - ref) <= 1e-12 * ref and math.abs(term:item() - ref) <= 1e-6 * ref,
         string.format("value %.17g, term %.17g, exact %.17g", value, term:item(), ref))
  term:backward()
  local grads = {}
  for name, p in D:named_parameters() do grads[name] = p.grad:flatten():clone() end
  local h = 1e-6
  for name, p in D:named_parameters() do
    local grad = grads[name]
    local flat = p:detach():view(-1)
    for i = 1, flat:shape()[1] do
      local v = flat[i]:item()
      ad.no_grad(function() flat[i] = v + h end)
      local fp = r1_exact(D, x, 0.7)
      ad.no_grad(function() flat[i] = v - h end)
      local fm = r1_exact(D, x, 0.7)
      ad.no_grad(function() flat[i] = v end)
      local num = (fp - fm) / (2 * h)
      local err = math.abs(grad[i]:item() - num) / (math.abs(num) + 1e-3 * ref)
      assert(err < 1e-5, string.format("%s[%d]: R1 gradient %.10g, finite differences %.10g", name, i, grad[i]:item(), num))
    end
  end
  -- float32 at the default eps (1e-2, D in eval mode) against the float64 gradient just checked
  D:eval()
  local function grads(model, run_, xx)
    for _, p in ipairs(model:parameters()) do p.grad = nil end
    run_:r1_penalty(xx, nil, nil):backward()
    local out = {}
    for _, p in ipairs(model:parameters()) do out[#out + 1] = p.grad:to("f64"):flatten() end
    return ad.cat(out)
  end
  local g64 = grads(D, run, x)
  local D32 = R1D()
  D32:load_state_dict(D:state_dict(), { strict = true })
  D32:eval()
  local cfg32 = setup { r1_gamma = 0.7 }
  cfg32.D = D32
  local g32 = grads(D32, ad.train.adversarial(cfg32), x:float())
  local rel = ((g32 - g64):norm() / g64:norm()):item()
  assert(rel < 1e-3, string.format("float32 R1 gradient: relative l2 error %g", rel))
end)

test("a small ADM UNetModel trains with learned sigma, the hybrid loss and gradient checkpointing", function()
  ad.manual_seed(1)
  local G = ad.models.adm.UNetModel { image_size = 8, num_channels = 32, num_res_blocks = 1, channel_mult = "1,2",
                                      attention_resolutions = "4", learn_sigma = true, class_cond = true, num_classes = 2,
                                      dropout = 0.1, use_scale_shift_norm = true }
  local cfg = setup { diffusion_loss = "hybrid", grad_checkpoint = true, freeze_g = { "^input_blocks%.0%." },
                      sample_n = 2, sample_seed = 5 }
  cfg.G = G
  cfg.d_warmup_steps, cfg.joint_steps = 1, 2
  local run = ad.train.adversarial(cfg)
  local w0 = G.input_blocks[1][1].weight:detach():clone()
  local r
  for _ = 1, 3 do r = run:step() end
  assert(r.loss_g == r.loss_g and r.loss_diff > 0)
  assert(equal(G.input_blocks[1][1].weight:detach(), w0))
  local x = run:sample()
  assert(x:shape()[1] == 2 and x:shape()[2] == 3 and x:abs():max():item() <= 1)
  T.assert_close(run:sample(), x, { atol = 0 })   -- fixed noise and labels
end)

test("configuration errors are clear", function()
  local function err(over)
    local ok, e = pcall(ad.train.adversarial, setup(over))
    assert(not ok)
    return e
  end
  assert(err { lamda_adv = 1 }:find("unknown config key 'lamda_adv'"))
  assert(err { d_loss = "wgan" }:find("d_loss must be one of bce, hinge, lsgan"))
  assert(err { diffaug = "zoom" }:find("unknown policy 'zoom'"))
  assert(err { d_updates_per_g = 0 }:find("d_updates_per_g"))
  local ok, e = pcall(ad.train.adversarial, { D = tiny_d(2) })
  assert(not ok and e:find("cfg.G is required"))
  if not rawget(ad, "autocast") then
    local amp_ok = pcall(require, "advdiff.amp")
    if not amp_ok then assert(err { amp = "bf16" }:find("needs ad.autocast")) end
  end
  local run = ad.train.adversarial(setup { diversity_guard = { every = 1 }, d_warmup_steps = 0 })
  local ok2, e2 = pcall(run.step, run)
  assert(not ok2 and (e2:find("diversity_guard needs") ), e2)
end)

test("the diversity guard backs lambda off when recall falls below its start value", function()
  local mok, metrics = pcall(require, "advdiff.metrics")
  if not mok or type(metrics.precision_recall) ~= "function" then skip("ad.metrics.precision_recall is not available") end
  local real = ad.randn({ 32, 192 }, { generator = ad.Generator(4) })
  -- margin -1: any value below start + 1 counts as a fall, so every check after the first backs off
  local run = ad.train.adversarial(setup { diversity_guard = { every = 2, n = 8, real_features = real, margin = -1,
                                                               factor = 0.5, feature_fn = function(x) return x:flatten(2) end },
                                           sample_n = 8 })
  run:step(7)
  local f = run.guard_factor
  local r = run:step()
  T.assert_close(r.lambda, run:lambda_at(4) * f, { atol = 1e-15 })
  assert(f < 1 and run._guard_base ~= nil, tostring(f))
  local ev = 0
  for _, e in ipairs(run.events) do if e.event == "guard" and e.factor then ev = ev + 1 end end
  assert(ev >= 1 and math.abs(run.guard_factor - 0.5 ^ ev) < 1e-12)
  assert(type(r.guard_recall) == "number")
end)
