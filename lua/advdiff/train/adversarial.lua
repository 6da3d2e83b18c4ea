--- advdiff.train.adversarial: adversarial fine-tuning of a trained diffusion
-- model (the method of paper.txt) as a configurable, resumable, live-steerable
-- training loop.
--
--   local run = ad.train.adversarial{G = unet, D = disc, diffusion = diff, data = loader_or_dataset,
--                                    out_dir = "runs/x", ...}
--   run:run()            -- to the end (d_warmup_steps + joint_steps)
--   run:step(10)         -- ten steps;  run:status();  run:save();  run:sample()
--   run.cfg.lambda_adv = 0.004   -- any config value may change between steps: it is read at each
--                                -- step, and the change is logged with its step (replayable)
--   run:start() / run:pause()    -- in the advdiff REPL: train between keystrokes
--
-- One step (the step counter counts both phases):
--   phase 1 (step < d_warmup_steps): the discriminator warms up, G frozen. A batch x0, t uniform
--     over the (respaced) steps, x_t = q_sample(x0, t, noise); fake = clamp(pred_xstart) of
--     p_mean_variance(G, x_t, t) under no_grad; D loss = BCE(D(x0)->1) + BCE(D(fake)->0).
--   phase 2: d_updates_per_g D steps as above, then one G step with
--     G loss = diffusion loss + lambda(step) * adversarial loss on D(fake), where fake is built from
--     G's output at x_t (the same forward gives the diffusion loss), and the adversarial term only
--     counts where the timestep gate opens.
-- With reuse_g_forward (default) the first D update of a phase-2 step uses the fake of G's
-- forward for the G step (detached): the same G weights, t and noise the paper's separate
-- no-grad forward would use, one G forward cheaper (only dropout masks are shared).
--
-- Configuration (defaults = the paper's protocol; every key is read at each step unless noted):
--   G, D, diffusion, data (a DataLoader or a Dataset)                   construction only
--   batch_size=32, seed=0, device="cpu"                                  construction only
--   d_warmup_steps=500, joint_steps=1000
--   optimizer="adamw" ("adam", "sgd"), lr_g=5e-6, lr_d=4e-5, betas_g={0.9,0.999}, betas_d=...,
--   eps=1e-8, weight_decay_g=0, weight_decay_d=0, lr_schedule_g/lr_schedule_d (schedule factors
--   of lr, step = global step; false: constant), grad_clip_g/grad_clip_d (max global norm; false)
--   lambda_adv=0.002, lambda_schedule="linear" | "cosine" | "step" | "constant" | a schedule or
--   function(phase2_step) -> lambda, lambda_ramp_steps=1000, lambda_start=0 (value at the start)
--   t_gate="batch_mean" (the paper: mean(t)/(T-1) <= t_region) | "per_sample" | "none",
--   t_region=0.5 (a number or a schedule of the phase-2 step)
--   d_updates_per_g=1, d_loss="bce" | "hinge" | "lsgan", g_adv_loss=false (same as d_loss; "bce" is
--   the non-saturating loss), diffusion_loss="mse" (eps MSE) | "hybrid" (guided-diffusion's loss
--   with learned sigma: mse + vb)
--   d_target="pred_xstart" (clamped) | "pred_xstart_unclamped" | "x_prev" (one reverse step; the
--   real side is then a sample of q(x_{t-1} | x_t, x0))
--   d_renoise=false: D sees real and fake diffused again to a random t' < d_renoise_max_t (false:
--   T) and is called D(x, y, t') (use train.TimeConditionedD)
--   r1_gamma=0, r1_every=16 (lazy; the penalty is scaled by r1_every), r1_fd_eps=1e-2 — see R1
--   below
--   diffaug="" ("color,translation,cutout": DiffAugment on D's inputs, both steps)
--   adaptive_lambda=false: lambda_eff = lambda * clamp(|g_diff| / |g_adv|, 0, adaptive_lambda_max)
--   with g_* the gradients of each term w.r.t. G's output (see telemetry), adaptive_lambda_max=10
--   freeze_g={} (Lua patterns of G parameter names kept frozen), freeze_d_backbone=true
--   ema_decay=0.9999 (false: no EMA; construction decides whether there is one)
--   amp=false | "bf16" | "f16" (needs ad.autocast / ad.amp.GradScaler), grad_checkpoint=false
--   reuse_g_forward=true, g_train_mode=true (G in train mode for its step: dropout active)
--   nan_policy="stop" | "skip": a non-finite loss or gradient norm stops training with an error
--   naming the step and the quantity (no checkpoint is written, so the last one stays the last
--   good one), or skips that update and counts it (run.skipped). The D and diffusion losses are
--   checked before any update of the step; the adversarial loss needs the updated D, so when it
--   is the one that is not finite, D has been updated in that step (the message says so).
--   optimizer, ema_decay (whether there is an EMA), batch_size, seed, device, out_dir are read
--   at construction; a live change of them is logged as having no effect.
--   log_every=1, telemetry_every=10, sample_every=0, sample_n=16, sample_seed=1234,
--   sample_method="ddim" | "ddpm", sample_diffusion=nil (the training one), save_every=0,
--   plot_every=0, progress=nil (auto), tensorboard=true, csv=true, out_dir=false, resume=false,
--   replay=false (a JSONL log or a list of events: the cfg changes it holds are applied at their
--   steps), diversity_guard=false | {every=, n=, real_features=, feature_fn=, metric="recall",
--   k=3, margin=0.05, factor=0.5, min_factor=0.01}
--
-- Telemetry (every telemetry_every steps, in the log records): D accuracy and mean logits on real
-- and fake, the norms of the gradients of the diffusion and adversarial terms with respect to G's
-- output tensor (the output layer's activations) and their ratio, the diffusion loss by timestep
-- quartile, and the learning rates and lambda in force.
--
-- R1 (gamma/2 mean_i ||grad_{x_i} D(x_i)||^2 on real images) needs the gradient of its value with
-- respect to D's parameters, grad_theta R1 = gamma/N sum_i (d g_i / d theta)^T g_i with
-- g_i = grad_{x_i} D(x_i): a second-order term that frameworks get from double backward.
-- advdiff's autograd runs backward rules with grad mode off (no create_graph), so the same vector
-- is computed as a DIRECTIONAL FINITE DIFFERENCE: with F = sum_i D(x_i), g = grad_x F from an
-- ordinary backward to the input, u = g/||g|| held constant and s(theta) = ||g|| (F(x + h u) -
-- F(x - h u)) / (2 h), grad_theta s = (dg/dtheta)^T g + O(h^2) (h = eps sqrt(N)). The penalty's value is exact
-- (from g); its gradient is deterministic and exact to O(eps^2) (r1_fd_eps, in input units;
-- tests/lua/test_train.lua checks it against float64 finite differences of the exact value). The
-- two probe forwards run outside autocast (a bf16 difference quotient would be noise) and leave
-- D's BatchNorm statistics as they were. Cost: one backward to the input, two forwards and their
-- backward, every r1_every D steps (the penalty is then scaled by r1_every: lazy regularisation).
local ad = require "advdiff"
local optim = require "advdiff.optim"
local schedule = require "advdiff.optim.schedule"
local augment = require "advdiff.train.augment"
local checkpoint = require "advdiff.train.checkpoint"
local json = require "advdiff.log.json"
local logm = require "advdiff.log"

local M = {}

local Run = {}
Run.__index = Run
M.Run = Run

local DEFAULTS = {
  batch_size = 32, seed = 0, device = "cpu",
  d_warmup_steps = 500, joint_steps = 1000,
  optimizer = "adamw", lr_g = 5e-6, lr_d = 4e-5, betas_g = { 0.9, 0.999 }, betas_d = { 0.9, 0.999 }, eps = 1e-8,
  weight_decay_g = 0, weight_decay_d = 0, lr_schedule_g = false, lr_schedule_d = false,
  grad_clip_g = false, grad_clip_d = false,
  lambda_adv = 0.002, lambda_schedule = "linear", lambda_ramp_steps = 1000, lambda_start = 0,
  t_gate = "batch_mean", t_region = 0.5,
  d_updates_per_g = 1, d_loss = "bce", g_adv_loss = false, diffusion_loss = "mse",
  d_target = "pred_xstart", d_renoise = false, d_renoise_max_t = false,
  r1_gamma = 0, r1_every = 16, r1_fd_eps = 1e-2,
  diffaug = "", adaptive_lambda = false, adaptive_lambda_max = 10,
  freeze_g = {}, freeze_d_backbone = true, ema_decay = 0.9999, amp = false, grad_checkpoint = false,
  reuse_g_forward = true, g_train_mode = true, nan_policy = "stop",
  log_every = 1, telemetry_every = 10, sample_every = 0, sample_n = 16, sample_seed = 1234,
  sample_method = "ddim", save_every = 0, plot_every = 0, progress = "auto", tensorboard = true, csv = true,
  out_dir = false, resume = false, replay = false, diversity_guard = false, name = "adversarial",
  repl_print_every = 10, sample_labels = false,
}
-- keys holding objects (never logged as values, never restored from a checkpoint)
local OBJECT_KEYS = { G = true, D = true, diffusion = true, data = true, sample_diffusion = true }
-- keys that only matter at construction (a live change is logged but has no effect)
local CONSTRUCTION_KEYS = { batch_size = true, seed = true, device = true, out_dir = true, resume = true, optimizer = true,
                            replay = true, tensorboard = true, csv = true, name = true }

local ENUMS = {
  optimizer = { adamw = true, adam = true, sgd = true },
  t_gate = { batch_mean = true, per_sample = true, none = true },
  d_loss = { bce = true, hinge = true, lsgan = true },
  g_adv_loss = { [false] = true, bce = true, hinge = true, lsgan = true },
  diffusion_loss = { mse = true, hybrid = true },
  d_target = { pred_xstart = true, pred_xstart_unclamped = true, x_prev = true },
  nan_policy = { stop = true, skip = true },
  sample_method = { ddim = true, ddpm = true },
  amp = { [false] = true, bf16 = true, f16 = true },
}

local function fail(fmt, ...) error("train.adversarial: " .. string.format(fmt, ...), 0) end

local function isfinite(v) return v == v and v ~= math.huge and v ~= -math.huge end

---------------------------------------------------------------------------- config

-- plain (loggable, comparable) form of a config value
local function plain(v, seen)
  local tv = type(v)
  if tv == "number" or tv == "string" or tv == "boolean" then return v end
  if tv == "function" then return "<function>" end
  if tv == "table" and getmetatable(v) == nil and not ad.is_tensor(v) then
    seen = seen or {}
    if seen[v] then return "<cycle>" end
    seen[v] = true
    local out = {}
    for k, x in pairs(v) do out[k] = plain(x, seen) end
    seen[v] = nil
    return out
  end
  if ad.is_tensor(v) then return "<tensor>" end
  return "<object>"
end

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b or (a ~= a and b ~= b) end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function snapshot(cfg)
  local s, ids = {}, {}
  for k, v in pairs(cfg) do
    if type(k) == "string" and not OBJECT_KEYS[k] then
      s[k] = plain(v)
      if type(v) == "function" or (type(v) == "table" and getmetatable(v) ~= nil) then ids[k] = v end
    end
  end
  return s, ids
end

local function validate(cfg)
  for k, allowed in pairs(ENUMS) do
    local v = cfg[k]
    if v == nil then v = false end
    if not allowed[v] then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = tostring(n) end
      table.sort(names)
      fail("%s must be one of %s, got %s", k, table.concat(names, ", "), tostring(v))
    end
  end
  for _, k in ipairs { "d_warmup_steps", "joint_steps", "d_updates_per_g", "log_every", "telemetry_every", "r1_every" } do
    local v = cfg[k]
    if math.type(v) ~= "integer" or v < 0 then fail("%s must be a non-negative integer, got %s", k, tostring(v)) end
  end
  if cfg.d_updates_per_g < 1 then fail("d_updates_per_g must be >= 1") end
  for _, k in ipairs { "lr_g", "lr_d", "eps", "weight_decay_g", "weight_decay_d", "r1_gamma", "r1_fd_eps" } do
    if type(cfg[k]) ~= "number" or cfg[k] < 0 then fail("%s must be a number >= 0, got %s", k, tostring(cfg[k])) end
  end
  augment.parse(cfg.diffaug)
end

---------------------------------------------------------------------------- construction

local function is_loader(v) return type(v) == "table" and type(v.next) == "function" and getmetatable(v) ~= nil end

local function amp_module()
  local ok, m = pcall(require, "advdiff.amp")
  if ok then return m end
  return nil
end

function M.new(cfg)
  if type(cfg) ~= "table" then fail("expected a config table") end
  local given = {}
  for k in pairs(cfg) do given[k] = true end
  for k, v in pairs(DEFAULTS) do
    if cfg[k] == nil then
      if type(v) == "table" then
        local c = {}
        for i, x in pairs(v) do c[i] = x end
        v = c
      end
      cfg[k] = v
    end
  end
  for k in pairs(cfg) do
    if DEFAULTS[k] == nil and not OBJECT_KEYS[k] then
      local names = {}
      for n in pairs(DEFAULTS) do names[#names + 1] = n end
      table.sort(names)
      fail("unknown config key '%s' (known: G, D, diffusion, data, sample_diffusion, %s)", tostring(k), table.concat(names, ", "))
    end
  end
  for _, k in ipairs { "G", "D", "diffusion", "data" } do
    if cfg[k] == nil then fail("cfg.%s is required", k) end
  end
  validate(cfg)
  local self = setmetatable({ cfg = cfg, G = cfg.G, D = cfg.D, diffusion = cfg.diffusion, step_count = 0,
                              history = {}, events = {}, skipped = 0, d_steps = 0, guard_factor = 1.0,
                              running = false, last = nil }, Run)
  -- device
  if cfg.device ~= "cpu" then
    self.G:to(cfg.device)
    self.D:to(cfg.device)
  end
  -- data
  if is_loader(cfg.data) then
    self.loader = cfg.data
  elseif getmetatable(cfg.data) == ad.data.Dataset then
    self.loader = ad.data.DataLoader(cfg.data, { batch_size = cfg.batch_size, seed = cfg.seed, device = cfg.device })
  else
    fail("cfg.data must be a DataLoader (ad.data.DataLoader) or a Dataset")
  end
  self.gen = ad.Generator(cfg.seed)
  -- models
  self._frozen = {}
  self:_apply_freeze()
  if cfg.freeze_d_backbone and self.D.freeze_backbone then self.D:freeze_backbone() end
  self._d_frozen_backbone = cfg.freeze_d_backbone and true or false
  if cfg.grad_checkpoint then self:_set_checkpointing(true) end
  self._ckpt_on = cfg.grad_checkpoint and true or false
  self.opt_g = self:_make_opt(self.G, "g")
  self.opt_d = self:_make_opt(self.D, "d")
  if cfg.ema_decay then self.ema = optim.EMA(self.G, { decay = cfg.ema_decay }) end
  self:_setup_amp()
  -- outputs
  if cfg.out_dir then
    logm.mkdir(cfg.out_dir)
    local append = cfg.resume and true or false
    self.jsonl = logm.JSONL(cfg.out_dir .. "/log.jsonl", { append = append })
    if cfg.csv then
      local app = append and io.open(cfg.out_dir .. "/metrics.csv", "r")
      if app then app:close() end
      self.csv = logm.CSV(cfg.out_dir .. "/metrics.csv", { append = app and true or false, columns = M.CSV_COLUMNS })
    end
    if cfg.tensorboard then self.tb = logm.TensorBoard(cfg.out_dir .. "/tb") end
  end
  self:_load_replay()
  if cfg.resume then self:load(cfg.resume, given) end
  self._snap, self._snap_ids = snapshot(cfg)
  if cfg.out_dir and not cfg.resume then
    local f = io.open(cfg.out_dir .. "/config.json", "w")
    if f then f:write(json.encode(self._snap, { indent = "  " }), "\n"); f:close() end
  end
  return self
end

function Run:_make_opt(model, which)
  local c = self.cfg
  local o = { lr = c["lr_" .. which], weight_decay = c["weight_decay_" .. which] }
  if c.optimizer == "sgd" then return optim.SGD(model:parameters(), o) end
  o.betas = { c["betas_" .. which][1], c["betas_" .. which][2] }
  o.eps = c.eps
  if c.optimizer == "adam" then return optim.Adam(model:parameters(), o) end
  return optim.AdamW(model:parameters(), o)
end

-- freeze G parameters matching cfg.freeze_g (only those this run froze are unfrozen on a change)
function Run:_apply_freeze()
  local pats = self.cfg.freeze_g or {}
  if type(pats) == "string" then pats = { pats } end
  for p in pairs(self._frozen) do p.requires_grad = true end
  self._frozen = {}
  for name, p in self.G:named_parameters() do
    for _, pat in ipairs(pats) do
      if name:find(pat) then
        if p.requires_grad then
          p.requires_grad = false
          self._frozen[p] = true
        end
        break
      end
    end
  end
end

function Run:_set_checkpointing(on)
  for _, m in ipairs(self.G:modules()) do
    if rawget(m, "use_checkpoint") ~= nil then m.use_checkpoint = on end
  end
end

function Run:_setup_amp()
  local mode = self.cfg.amp
  self._amp_mode = mode
  if not mode then self.autocast, self.scaler = nil, nil; return end
  local amp = amp_module()
  local autocast = rawget(ad, "autocast") or (amp and amp.autocast)
  if type(autocast) ~= "function" then
    error("train.adversarial: amp = '" .. mode .. "' needs ad.autocast (mixed precision from the CUDA backend's "
      .. "advdiff.amp), which is not available in this build", 3)
  end
  self.autocast = autocast
  if mode == "f16" then
    if not (amp and amp.GradScaler) then
      error("train.adversarial: amp = 'f16' needs ad.amp.GradScaler (the dynamic loss scaler), which is not "
        .. "available in this build", 3)
    end
    self.scaler = self.scaler or amp.GradScaler()
  end
end

function Run:_autocast(fn, ...)
  if self.autocast then return self.autocast(self._amp_mode, fn, ...) end
  return fn(...)
end

---------------------------------------------------------------------------- live config

function Run:_load_replay()
  local r = self.cfg.replay
  self._replay = {}
  if not r then return end
  local events = type(r) == "string" and logm.read_jsonl(r) or r
  for _, e in ipairs(events) do
    if e.event == "cfg" and math.type(e.step) == "integer" then
      local list = self._replay[e.step] or {}
      list[#list + 1] = e
      self._replay[e.step] = list
    end
  end
end

function Run:_event(e)
  e.step = e.step or self.step_count
  self.events[#self.events + 1] = e
  if self.jsonl then self.jsonl:write(e) end
end

-- apply replayed changes for this step, then diff cfg against the last snapshot
function Run:_check_cfg()
  local c = self.cfg
  local rep = self._replay[self.step_count]
  if rep then
    for _, e in ipairs(rep) do
      if not (type(e.new) == "string" and e.new:sub(1, 1) == "<") then c[e.key] = e.new end
    end
  end
  local snap, ids = snapshot(c)
  local changed = {}
  for k, v in pairs(snap) do
    local old = self._snap[k]
    local moved = not same(old, v) or (ids[k] ~= nil and ids[k] ~= self._snap_ids[k])
    if moved then changed[#changed + 1] = k end
  end
  for k in pairs(self._snap) do if snap[k] == nil then changed[#changed + 1] = k end end
  if #changed == 0 then return end
  table.sort(changed)
  local ok, err = pcall(validate, c)
  if not ok then
    -- refuse the change: put the old values back
    for _, k in ipairs(changed) do
      local old = self._snap[k]
      if type(old) ~= "string" or old:sub(1, 1) ~= "<" then c[k] = old end
    end
    error(err, 0)
  end
  for _, k in ipairs(changed) do
    local e = { event = "cfg", key = k, old = self._snap[k], new = snap[k], step = self.step_count }
    if DEFAULTS[k] == nil then e.note = "unknown key (no effect)" elseif CONSTRUCTION_KEYS[k] then e.note = "construction-time key (no effect)" end
    self:_event(e)
    if self.on_message then self.on_message(string.format("step %d: cfg.%s = %s (was %s)", self.step_count, k,
      json.encode(snap[k]), json.encode(self._snap[k]))) end
  end
  self._snap, self._snap_ids = snap, ids
  -- keys whose effect is more than being read
  for _, k in ipairs(changed) do
    if k == "freeze_g" then self:_apply_freeze() end
    if k == "freeze_d_backbone" and self.D.freeze_backbone then
      if c.freeze_d_backbone then self.D:freeze_backbone() elseif self.D.unfreeze_backbone then self.D:unfreeze_backbone() end
    end
    if k == "grad_checkpoint" then self:_set_checkpointing(c.grad_checkpoint and true or false) end
    if k == "amp" then self:_setup_amp() end
  end
end

---------------------------------------------------------------------------- schedules

--- lambda (before adaptive scaling and the diversity guard) at phase-2 step p.
function Run:lambda_at(p)
  local c = self.cfg
  local s = c.lambda_schedule
  local target = schedule.eval(c.lambda_adv, p)
  if type(s) == "string" then
    local n = c.lambda_ramp_steps
    if s == "constant" then return target end
    if s == "linear" then return schedule.linear { from = c.lambda_start, to = target, steps = n }:value(p) end
    if s == "cosine" then return schedule.cosine { from = c.lambda_start, to = target, steps = n }:value(p) end
    if s == "step" then return p >= n and target or c.lambda_start end
    error("train.adversarial: lambda_schedule must be linear, cosine, step, constant, a schedule or a function, got '" .. s .. "'", 2)
  end
  return schedule.eval(s, p)
end

--- The gate: a (N) weight vector (1 = adversarial term counts), and the fraction open.
function Run:gate(t_list, T)
  local c = self.cfg
  local region = schedule.eval(c.t_region, math.max(0, self.step_count - c.d_warmup_steps))
  local n = #t_list
  local w = {}
  if c.t_gate == "none" then
    for i = 1, n do w[i] = 1 end
  elseif c.t_gate == "batch_mean" then
    local s = 0
    for i = 1, n do s = s + t_list[i] end
    local open = (s / n) / math.max(T - 1, 1) <= region
    for i = 1, n do w[i] = open and 1 or 0 end
  else
    for i = 1, n do w[i] = (t_list[i] / math.max(T - 1, 1) <= region) and 1 or 0 end
  end
  local k = 0
  for i = 1, n do k = k + w[i] end
  return w, k / n
end

local function lr_at(c, which, step)
  local f = c["lr_schedule_" .. which]
  local base = c["lr_" .. which]
  if not f then return base end
  return base * schedule.eval(type(f) == "table" and getmetatable(f) == nil and schedule.from(f) or f, step)
end

function Run:_sync_opt(opt, which)
  local c = self.cfg
  local lr = lr_at(c, which, self.step_count)
  for _, g in ipairs(opt.param_groups) do
    g.lr = lr
    g.weight_decay = c["weight_decay_" .. which]
    if g.betas then g.betas = { c["betas_" .. which][1], c["betas_" .. which][2] }; g.eps = c.eps end
  end
  return lr
end

---------------------------------------------------------------------------- losses

local function mean(x) return x:mean() end

local function d_loss_fn(kind, real, fake)
  if kind == "bce" then
    local lr = ad.binary_cross_entropy_with_logits(real, ad.ones_like(real))
    local lf = ad.binary_cross_entropy_with_logits(fake, ad.zeros_like(fake))
    return lr + lf, lr, lf
  elseif kind == "hinge" then
    local lr = mean(ad.relu(1 - real))
    local lf = mean(ad.relu(1 + fake))
    return lr + lf, lr, lf
  end
  local lr = mean((real - 1):square())
  local lf = mean(fake:square())
  return lr + lf, lr, lf
end
M.d_loss_fn = d_loss_fn

-- per-sample generator adversarial loss (N)
local function g_loss_fn(kind, fake)
  if kind == "bce" then
    return ad.binary_cross_entropy_with_logits(fake, ad.ones_like(fake), { reduction = "none" })
  elseif kind == "hinge" then
    return -fake
  end
  return (fake - 1):square()
end
M.g_loss_fn = g_loss_fn

---------------------------------------------------------------------------- pieces of a step

local function dev_opt(x)
  local d = x:device()
  return d ~= "cpu" and d or nil
end

function Run:_randn_like(x)
  return ad.randn(x:shape(), { dtype = x:dtype(), generator = self.gen, device = dev_opt(x) })
end

function Run:_call_d(x, y, tp)
  local D = self.D
  return self:_autocast(function()
    local out
    if tp then out = D(x, y, tp) else out = D(x, y) end
    return out
  end):float()
end

-- the fake D sees, from G's full output at x_t (with or without grad through out)
function Run:_fake_from_output(out, x_t, steps)
  local mode = self.cfg.d_target
  local pmv = self.diffusion:_p_mean_variance_from_output("train.adversarial", out, x_t, steps,
    { clip_denoised = mode ~= "pred_xstart_unclamped" })
  if mode ~= "x_prev" then return pmv.pred_xstart end
  local mask = {}
  for i, s in ipairs(steps) do mask[i] = s ~= 0 and 1 or 0 end
  local m = ad.tensor(mask, { dtype = x_t:dtype(), device = dev_opt(x_t) }):view(-1, 1, 1, 1)
  return pmv.mean + m * (pmv.log_variance * 0.5):exp() * self:_randn_like(x_t)
end

-- the real counterpart of the fake: x0, or a sample of q(x_{t-1} | x_t, x0)
function Run:_real_for_d(x0, x_t, steps)
  if self.cfg.d_target ~= "x_prev" then return x0 end
  local mean_, _, logvar = self.diffusion:q_posterior_mean_variance(x0, x_t, nil, steps)
  local mask = {}
  for i, s in ipairs(steps) do mask[i] = s ~= 0 and 1 or 0 end
  local m = ad.tensor(mask, { dtype = x0:dtype(), device = dev_opt(x0) }):view(-1, 1, 1, 1)
  return mean_ + m * (logvar * 0.5):exp() * self:_randn_like(x0)
end

function Run:_g_forward(x_t, steps, y)
  local tm = self.diffusion:_model_timesteps(steps, x_t)
  local G = self.G
  return self:_autocast(function() return G(x_t, tm, y) end):float()
end

-- a random t' for re-noising D's inputs (nil when d_renoise is off)
function Run:_renoise_t(n, like)
  local c = self.cfg
  if not c.d_renoise then return nil end
  if not self.D.time_conditioned then
    error("train.adversarial: d_renoise needs a discriminator that takes the timestep, D(x, y, t), and says so with "
      .. "D.time_conditioned = true (for example ad.train.TimeConditionedD(D))", 0)
  end
  local T = self.diffusion.num_timesteps
  local maxt = c.d_renoise_max_t or T
  return ad.randint(0, math.max(1, math.min(maxt, T)), { n }, { generator = self.gen, device = dev_opt(like) })
end

-- what D sees of an image: re-noised to t' (when given) and DiffAugmented (when configured)
function Run:_d_transform(x, tp)
  if tp then x = self.diffusion:q_sample(x, tp, self:_randn_like(x)) end
  local pol = self.cfg.diffaug
  if pol and pol ~= "" then x = augment.diff_augment(x, pol, self.gen) end
  return x
end

-- D's output in D's own dtype with autocast switched off (the R1 probes)
function Run:_call_d_plain(x, y, tp)
  local scope <close> = self.autocast and self.autocast { dtype = self._amp_mode, enabled = false } or nil
  if tp then return self.D(x, y, tp) end
  return self.D(x, y)
end

--- The R1 penalty gamma/2 * mean_i ||grad_{x_i} D(x_i)||^2 at real images x (see the header).
-- Returns term, value: term's value is the penalty and its gradient in D's parameters is the
-- penalty's (to O(eps^2)); value is the plain number. gamma defaults to cfg.r1_gamma. D's
-- parameters receive gradients from the inner backward: callers zero them before their own.
-- D's buffers (BatchNorm statistics) are as they were before the call.
function Run:r1_penalty(x, y, tp, gamma)
  local c = self.cfg
  gamma = gamma or c.r1_gamma
  local eps = c.r1_fd_eps
  local n = x:shape()[1]
  local saved = {}
  for _, b in ipairs(self.D:buffers()) do saved[#saved + 1] = { b, b:clone() } end
  local xg = x:detach():clone():requires_grad_()
  self:_call_d_plain(xg, y, tp):sum():backward()
  local g = xg.grad
  xg.grad = nil
  -- one direction for the whole batch, not one per sample: a D with BatchNorm in train mode couples
  -- the samples, and only the batch's directional derivative of sum_i D(x_i) along g is the
  -- right one then. The step is eps * sqrt(N) along the unit vector, about eps per sample.
  local gnorm = g:square():sum():sqrt():item()
  local value = gamma / (2 * n) * gnorm * gnorm
  ad.no_grad(function() for _, e in ipairs(saved) do e[1]:copy_(e[2]) end end)
  if gnorm == 0 then return (x:sum() * 0):float() + value, value end
  local h = eps * math.sqrt(n)
  local u = g / gnorm
  local x0 = xg:detach()
  local dp = self:_call_d_plain(x0 + u * h, y, tp)
  local dm = self:_call_d_plain(x0 - u * h, y, tp)
  ad.no_grad(function() for _, e in ipairs(saved) do e[1]:copy_(e[2]) end end)
  local s = (dp - dm):sum() * (gnorm / (2 * h))
  -- value: the exact penalty; gradient: gamma/N grad s = grad of gamma/(2N) ||g||^2
  local term = (s - s:detach()) * (gamma / n) + value
  return term:float(), value
end

local function params_with_grad(model)
  local out = {}
  for _, p in ipairs(model:parameters()) do if p.requires_grad then out[#out + 1] = p end end
  return out
end

-- handle a non-finite value; returns true when the caller must skip. applied: what of this step
-- was already updated when the value was found (the message says so)
function Run:_nonfinite(what, v, applied)
  local c = self.cfg
  local vs = v ~= v and "nan" or tostring(v)
  local msg = string.format("step %d: %s is %s", self.step_count, what, vs)
  self.opt_g:zero_grad()
  self.opt_d:zero_grad()
  if c.nan_policy == "skip" then
    self.skipped = self.skipped + 1
    self:_event { event = "nonfinite", what = what, value = tostring(v), action = "skipped" }
    if self.on_message then self.on_message(msg .. ": update skipped") else io.stderr:write("warning: ", msg, ": update skipped\n") end
    return true
  end
  self:_event { event = "nonfinite", what = what, value = tostring(v), action = "stopped" }
  error(string.format("train.adversarial: %s: training stopped (%s; the last good checkpoint is kept; "
    .. "nan_policy = 'skip' skips such updates)", msg, applied or "nothing was updated in this step"), 0)
end

function Run:_backward(loss)
  if self.scaler then self.scaler:scale(loss):backward() else loss:backward() end
end

-- unscale (f16), clip, step. Returns ok, grad norm; not ok = a non-finite gradient without a
-- loss scaler (with one, inf/NaN gradients are its business: it skips the step and backs off)
function Run:_opt_step(opt, params, clip)
  if self.scaler and self.scaler.unscale_ then self.scaler:unscale_(opt) end
  local gn
  if clip and clip > 0 then gn = optim.clip_grad_norm_(params, clip) else gn = optim.grad_norm(params) end
  if self.scaler then
    self.scaler:step(opt)
    return true, gn
  end
  if not isfinite(gn) then return false, gn end
  opt:step()
  return true, gn
end

-- one discriminator update on (real, fake) images; fills rec
function Run:_d_step(real, fake, y, rec, first)
  local c = self.cfg
  local D = self.D
  D:train()
  local n = real:shape()[1]
  local tp = self:_renoise_t(n, real)
  local ri, fi = self:_d_transform(real, tp), self:_d_transform(fake:detach(), tp)
  local lr = self:_call_d(ri, y, tp)
  local lf = self:_call_d(fi, y, tp)
  local loss, l_real, l_fake = d_loss_fn(c.d_loss, lr, lf)
  self.d_steps = self.d_steps + 1
  local r1
  if c.r1_gamma > 0 and c.r1_every > 0 and (self.d_steps - 1) % c.r1_every == 0 then
    local term
    term, r1 = self:r1_penalty(ri, y, tp)
    loss = loss + term * c.r1_every
  end
  local lv = loss:item()
  if first then
    rec.loss_d, rec.loss_d_real, rec.loss_d_fake = lv, l_real:item(), l_fake:item()
    rec.d_real, rec.d_fake = lr:mean():item(), lf:mean():item()
    rec.d_acc = ((lr:gt(0):float():mean() + lf:lt(0):float():mean()) * 0.5):item()
    if r1 then rec.r1 = r1 end
  end
  if not isfinite(lv) then
    if self:_nonfinite("D loss", lv) then rec.skipped_d = true; return false end
  end
  self.opt_d:zero_grad()
  self:_backward(loss)
  local ok, gn = self:_opt_step(self.opt_d, params_with_grad(D), c.grad_clip_d)
  if not ok then
    if self:_nonfinite("D gradient norm", gn, "D was not updated") then rec.skipped_d = true; return false end
  end
  if first then rec.grad_norm_d = gn end
  if self.scaler and self.scaler.update then self.scaler:update() end
  return true
end

-- a batch, its timesteps and noise, and x_t
function Run:_draw()
  local b = self.loader:next()
  local x0, y = b.x, b.y
  local n = x0:shape()[1]
  local T = self.diffusion.num_timesteps
  local t = ad.randint(0, T, { n }, { generator = self.gen })
  local steps = t:tolist()
  for i = 1, n do steps[i] = math.tointeger(steps[i]) end
  local noise = self:_randn_like(x0)
  local x_t = self.diffusion:q_sample(x0, steps, noise)
  return { x0 = x0, y = y, t = t, steps = steps, noise = noise, x_t = x_t, n = n, position = b.position }
end

-- a fake for a D step, G frozen (no grad), in eval mode as in the paper's warm-up
function Run:_nograd_fake(bt)
  local G = self.G
  local was = G.training
  G:eval()
  local fake = ad.no_grad(function()
    return self:_fake_from_output(self:_g_forward(bt.x_t, bt.steps, bt.y), bt.x_t, bt.steps)
  end)
  G:train(was)
  return fake
end

local function quartile_losses(mse, steps, T, rec)
  local v = mse:double():tolist()
  local sum, cnt = { 0, 0, 0, 0 }, { 0, 0, 0, 0 }
  for i, s in ipairs(steps) do
    local q = math.min(4, math.floor(4 * s / T) + 1)
    sum[q], cnt[q] = sum[q] + v[i], cnt[q] + 1
  end
  for q = 1, 4 do if cnt[q] > 0 then rec["loss_diff_q" .. q] = sum[q] / cnt[q] end end
end

---------------------------------------------------------------------------- the step

function Run:total_steps() return self.cfg.d_warmup_steps + self.cfg.joint_steps end

function Run:phase(step)
  step = step or self.step_count
  return step < self.cfg.d_warmup_steps and 1 or 2
end

--- One training step (both phases); returns its log record.
function Run:_one_step()
  self:_check_cfg()
  local c = self.cfg
  local t0 = ad._now()
  local s = self.step_count
  local T = self.diffusion.num_timesteps
  local phase = self:phase(s)
  local rec = { step = s + 1, phase = phase }
  rec.lr_d = self:_sync_opt(self.opt_d, "d")
  rec.lr_g = self:_sync_opt(self.opt_g, "g")
  if self.ema then self.ema.decay = c.ema_decay or self.ema.decay end
  local telemetry = c.telemetry_every > 0 and (s + 1) % c.telemetry_every == 0
  local bt = self:_draw()
  rec.t_mean = 0
  for _, v in ipairs(bt.steps) do rec.t_mean = rec.t_mean + v end
  rec.t_mean = rec.t_mean / bt.n
  rec.data_position = bt.position

  if phase == 1 then
    local fake = self:_nograd_fake(bt)
    self:_d_step(self:_real_for_d(bt.x0, bt.x_t, bt.steps), fake, bt.y, rec, true)
  else
    local p2 = s - c.d_warmup_steps
    local lam = self:lambda_at(p2)
    rec.lambda_sched = lam
    lam = lam * self.guard_factor
    local G = self.G
    G:train(c.g_train_mode and true or false)
    -- G's forward with grad; the graph is cut at its output so the two loss terms' gradients
    -- there can be measured, then one backward runs through G
    local out = self:_g_forward(bt.x_t, bt.steps, bt.y)
    local o = out:detach()
    o.requires_grad = true
    local terms = self.diffusion:training_losses(function() return o end, bt.x0, bt.steps,
      { noise = bt.noise, model_kwargs = { y = bt.y } })
    local per = c.diffusion_loss == "hybrid" and terms.loss or terms.mse
    local l_diff = per:mean()
    local fake = self:_fake_from_output(o, bt.x_t, bt.steps)
    local real_d = self:_real_for_d(bt.x0, bt.x_t, bt.steps)
    if telemetry then quartile_losses(terms.mse, bt.steps, T, rec) end
    rec.loss_diff = l_diff:item()
    if not isfinite(rec.loss_diff) and self:_nonfinite("diffusion loss", rec.loss_diff) then
      rec.skipped = true
      return self:_finish(rec, t0)
    end
    -- discriminator updates
    for k = 1, c.d_updates_per_g do
      if k == 1 and c.reuse_g_forward then
        self:_d_step(real_d, fake, bt.y, rec, true)
      else
        local b2 = k == 1 and bt or self:_draw()
        self:_d_step(self:_real_for_d(b2.x0, b2.x_t, b2.steps), self:_nograd_fake(b2), b2.y, rec, k == 1)
      end
    end
    -- generator update
    local w, open = self:gate(bt.steps, T)
    rec.gate = open
    local l_adv
    if lam ~= 0 and open > 0 then
      local D = self.D
      local d_params = params_with_grad(D)
      for _, p in ipairs(d_params) do p.requires_grad = false end
      local ok, err = pcall(function()
        local tp = self:_renoise_t(bt.n, fake)
        local logits = self:_call_d(self:_d_transform(fake, tp), bt.y, tp)
        local per_adv = g_loss_fn(c.g_adv_loss or c.d_loss, logits)
        local wt = ad.tensor(w, { dtype = per_adv:dtype(), device = dev_opt(per_adv) })
        l_adv = (per_adv * wt):sum() / math.max(1, open * bt.n)
      end)
      for _, p in ipairs(d_params) do p.requires_grad = true end
      if not ok then error(err, 0) end
      rec.loss_adv = l_adv:item()
      if not isfinite(rec.loss_adv) and self:_nonfinite("adversarial loss", rec.loss_adv,
          "D was updated in this step, G was not") then
        rec.skipped = true
        return self:_finish(rec, t0)
      end
    end
    local lam_eff = lam
    local g
    if l_adv and (c.adaptive_lambda or telemetry) then
      self:_backward_o(l_diff, true)
      local gd = o.grad:clone()
      o.grad = nil
      self:_backward_o(l_adv, false)
      local ga = o.grad:clone()
      o.grad = nil
      local nd, na = gd:norm():item(), ga:norm():item()
      rec.gnorm_diff_out, rec.gnorm_adv_out = nd, na
      rec.gnorm_ratio = na > 0 and nd / na or nil
      if c.adaptive_lambda then
        local ratio = nd / (na + 1e-8)
        lam_eff = lam * math.max(0, math.min(ratio, c.adaptive_lambda_max))
      end
      g = gd + ga * lam_eff
    else
      local loss = l_adv and (l_diff + l_adv * lam) or l_diff
      self:_backward_o(loss, false)
      g = o.grad
    end
    rec.lambda = l_adv and lam_eff or 0
    rec.loss_g = rec.loss_diff + (l_adv and lam_eff * rec.loss_adv or 0)
    self.opt_g:zero_grad()
    if self.scaler then out:backward(self.scaler:scale(g)) else out:backward(g) end
    local ok, gn = self:_opt_step(self.opt_g, params_with_grad(G), c.grad_clip_g)
    if not ok then
      if self:_nonfinite("G gradient norm", gn, "D was updated in this step, G was not") then
        rec.skipped = true
        return self:_finish(rec, t0)
      end
    end
    rec.grad_norm_g = gn
    if self.scaler and self.scaler.update then self.scaler:update() end
    if self.ema then self.ema:update() end
  end
  return self:_finish(rec, t0)
end

-- backward of a loss that depends on G only through the cut output o
function Run:_backward_o(loss, retain)
  loss:backward(nil, { retain_graph = retain })
end

function Run:_finish(rec, t0)
  self.step_count = self.step_count + 1
  rec.time = ad._now() - t0
  if self.scaler and self.scaler.get_scale then rec.loss_scale = self.scaler:get_scale() end
  self.last = rec
  local c = self.cfg
  local s = self.step_count
  if c.diversity_guard and self:phase(s - 1) == 2 then self:_diversity_guard(rec) end
  self:_record(rec)
  if c.sample_every > 0 and s % c.sample_every == 0 then self:_write_samples() end
  if c.plot_every > 0 and s % c.plot_every == 0 then self:plot() end
  if c.save_every > 0 and s % c.save_every == 0 and c.out_dir and not rec.skipped then self:save() end
  if s % 10 == 0 then collectgarbage("step") end
  return rec
end

local CSV_COLUMNS = { "step", "phase", "loss_d", "loss_d_real", "loss_d_fake", "d_real", "d_fake", "d_acc", "r1",
                      "loss_g", "loss_diff", "loss_adv", "lambda", "lambda_sched", "gate", "t_mean", "lr_g", "lr_d",
                      "grad_norm_g", "grad_norm_d", "gnorm_diff_out", "gnorm_adv_out", "gnorm_ratio",
                      "loss_diff_q1", "loss_diff_q2", "loss_diff_q3", "loss_diff_q4", "guard_recall",
                      "guard_coverage", "loss_scale", "skipped", "skipped_d", "data_position", "time" }
M.CSV_COLUMNS = CSV_COLUMNS

local HISTORY_KEYS = { "loss_d", "loss_g", "loss_diff", "loss_adv", "lambda", "d_real", "d_fake", "d_acc",
                       "grad_norm_g", "grad_norm_d", "gnorm_ratio" }

function Run:_record(rec)
  local c = self.cfg
  for _, k in ipairs(HISTORY_KEYS) do
    if rec[k] ~= nil then
      local h = self.history[k] or { xs = {}, ys = {} }
      h.xs[#h.xs + 1], h.ys[#h.ys + 1] = rec.step, rec[k]
      self.history[k] = h
    end
  end
  if c.log_every > 0 and (rec.step % c.log_every == 0 or rec.gnorm_diff_out or rec.skipped) then
    if self.jsonl then self.jsonl:write(rec) end
    if self.csv then self.csv:write(rec) end
    if self.tb then
      for k, v in pairs(rec) do
        if type(v) == "number" and k ~= "step" then self.tb:scalar(k, v, rec.step) end
      end
      self.tb:flush()
    end
  end
end

---------------------------------------------------------------------------- samples, plots, guard

function Run:_sample_setup(n)
  local c = self.cfg
  if self._sample_noise and self._sample_noise:shape()[1] == n then return end
  local b = self._sample_shape
  if not b then
    -- the shape of the data: one batch is drawn and the loader put back where it was
    local pos = self.loader.state_dict and self.loader:state_dict()
    local bt = self.loader:next()
    if pos then self.loader:load_state_dict(pos) end
    local s = bt.x:shape()
    b = { s[2], s[3], s[4] }
    self._sample_shape = b
    self._sample_dtype = bt.x:dtype()
    self._sample_dev = dev_opt(bt.x)
  end
  local gen = ad.Generator(c.sample_seed)
  self._sample_noise = ad.randn({ n, b[1], b[2], b[3] }, { generator = gen, dtype = self._sample_dtype, device = self._sample_dev })
  local labels = c.sample_labels
  local ncls = rawget(self.G, "num_classes") or (type(self.G.config) == "table" and self.G.config.num_classes)
  if not labels and ncls then
    local classes = {}
    local ds = self.loader.dataset
    if ds and ds.labels then
      local seen = {}
      for _, l in ipairs(ds.labels) do if not seen[l] then seen[l] = true; classes[#classes + 1] = l end end
      table.sort(classes)
    else
      for i = 0, ncls - 1 do classes[#classes + 1] = i end
    end
    labels = {}
    for i = 1, n do labels[i] = classes[(i - 1) % #classes + 1] end
  end
  self._sample_y = labels and ad.tensor(labels, { dtype = "i64", device = self._sample_dev }) or nil
end

--- n samples (fixed noise and labels: comparable across steps) from G, with the EMA weights
-- when there is an EMA (opts.ema = false: the raw weights). Returns (n, C, H, W) in [-1, 1].
function Run:sample(opts)
  opts = opts or {}
  local c = self.cfg
  local n = opts.n or c.sample_n
  self:_sample_setup(n)
  local d = c.sample_diffusion or self.diffusion
  local use_ema = self.ema and opts.ema ~= false
  local G = self.G
  local was = G.training
  G:eval()
  if use_ema then self.ema:swap() end
  local ok, res = pcall(function()
    local o = { noise = self._sample_noise, model_kwargs = { y = self._sample_y }, progress = false,
                generator = ad.Generator(c.sample_seed + 1) }
    local shape = self._sample_noise:shape()
    if c.sample_method == "ddpm" then return d:p_sample_loop(G, shape, o) end
    return d:ddim_sample_loop(G, shape, o)
  end)
  if use_ema then self.ema:swap() end
  G:train(was)
  if not ok then error(res, 0) end
  return res
end

function Run:_write_samples()
  local c = self.cfg
  local x = self:sample()
  if c.out_dir then
    logm.mkdir(c.out_dir .. "/samples")
    ad.image.save(string.format("%s/samples/step_%07d.png", c.out_dir, self.step_count), x:cpu(), { range = { -1, 1 } })
  end
  if self.tb then self.tb:image_tensor("samples", x:cpu(), self.step_count); self.tb:flush() end
  return x
end

--- Loss curves as PNG files in out_dir/plots (or dir).
function Run:plot(dir)
  dir = dir or (self.cfg.out_dir and self.cfg.out_dir .. "/plots")
  if not dir then return end
  logm.mkdir(dir)
  local groups = {
    losses_d = { "loss_d" }, losses_g = { "loss_g", "loss_diff" }, loss_adv = { "loss_adv" },
    d_logits = { "d_real", "d_fake" }, d_acc = { "d_acc" }, lambda = { "lambda" },
    grad_norms = { "grad_norm_g", "grad_norm_d" },
  }
  for name, keys in pairs(groups) do
    local series = {}
    for _, k in ipairs(keys) do
      local h = self.history[k]
      if h and #h.xs > 0 then series[#series + 1] = { name = k, xs = h.xs, ys = h.ys } end
    end
    if #series > 0 then logm.plot.curves(dir .. "/" .. name .. ".png", series, { title = name }) end
  end
end

function Run:_diversity_guard(rec)
  local g = self.cfg.diversity_guard
  local every = g.every or 100
  if self.step_count % every ~= 0 and self._guard_base ~= nil then return end
  local metrics_ok, metrics = pcall(require, "advdiff.metrics")
  local metric = g.metric or "recall"
  local dc = metric == "coverage" or metric == "density"
  local fn = metrics_ok and (dc and metrics.density_coverage or metrics.precision_recall)
  if type(fn) ~= "function" then
    error("train.adversarial: diversity_guard needs ad.metrics." .. (dc and "density_coverage" or
      "precision_recall") .. ", which is not available in this build", 0)
  end
  if not g.real_features or type(g.feature_fn) ~= "function" then
    error("train.adversarial: diversity_guard needs real_features (held-out real features) and feature_fn(images) -> features", 0)
  end
  local x = self:sample { n = g.n or 64 }
  local feats = ad.no_grad(function() return g.feature_fn(x) end)
  -- precision_recall -> precision, recall, table; density_coverage -> density, coverage, table
  local a, b, full = fn(g.real_features, feats, { k = g.k or (dc and 5 or 3) })
  local v = type(full) == "table" and full[metric] or (metric == "coverage" and b or (metric == "recall" and b or a))
  if ad.is_tensor(v) then v = v:item() end
  if type(v) ~= "number" then
    error("train.adversarial: diversity_guard: the metric '" .. tostring(metric) .. "' gave no number", 0)
  end
  rec["guard_" .. metric] = v
  if self._guard_base == nil then
    self._guard_base = v
    self:_event { event = "guard", metric = metric, base = v }
    return
  end
  if v < self._guard_base - (g.margin or 0.05) then
    local old = self.guard_factor
    self.guard_factor = math.max(g.min_factor or 0.01, old * (g.factor or 0.5))
    self:_event { event = "guard", metric = metric, value = v, base = self._guard_base, factor = self.guard_factor,
                  old_factor = old }
    if self.on_message then self.on_message(string.format("step %d: %s %.4f fell below %.4f - margin: lambda x%.3g",
      self.step_count, metric, v, self._guard_base, self.guard_factor)) end
  end
end

---------------------------------------------------------------------------- driving

--- Run n steps (default 1, never past the end); returns the last record.
function Run:step(n)
  n = n or 1
  local rec
  local total = self:total_steps()
  local bar
  if self:_show_progress() then bar = self._bar or logm.Progress { total = total, label = self.cfg.name }; self._bar = bar end
  for _ = 1, n do
    if self.step_count >= total then break end
    rec = self:_one_step()
    if bar then bar:update(self.step_count, self:_fields(rec), { "D", "G", "lambda" }) end
  end
  if bar and self.step_count >= total then bar:close(); self._bar = nil end
  return rec
end

function Run:_show_progress()
  local p = self.cfg.progress
  if self.background then return false end
  if p == "auto" then return true end
  return p and true or false
end

function Run:_fields(rec)
  if not rec then return {} end
  return { D = rec.loss_d, G = rec.loss_g, lambda = rec.lambda }
end

--- Train to the end (d_warmup_steps + joint_steps), saving at the end when out_dir is set.
function Run:run()
  self.running = true
  local ok, err = pcall(function()
    while self.step_count < self:total_steps() and self.running do self:step(1) end
  end)
  self.running = false
  if self._bar then self._bar:close(); self._bar = nil end
  if not ok then error(err, 0) end
  if self.cfg.out_dir and self.step_count >= self:total_steps() then
    self:save()
    pcall(self.plot, self)
  end
  return self.last
end

--- Stop a background run (run:start()) or a run() loop after the current step.
function Run:pause()
  self.running = false
  if self.background then
    local hooks = rawget(ad, "_repl_idle_hooks")
    if hooks then hooks[self] = nil end
    self.background = false
  end
  return self
end

--- In the advdiff REPL: train between keystrokes (one step each time the prompt is idle).
-- Outside the REPL there is no idle time: use run:run() or run:step(n).
function Run:start()
  require("advdiff.train").register_idle(self)
  self.background = true
  self.running = true
  return self
end

-- one unit of background work; returns again, message
function Run:_idle()
  if not self.running or self.step_count >= self:total_steps() then
    self:pause()
    return false, string.format("[%s] finished at step %d", self.cfg.name, self.step_count)
  end
  local msgs = {}
  self.on_message = function(m) msgs[#msgs + 1] = m end
  local ok, err = pcall(self._one_step, self)
  self.on_message = nil
  if not ok then
    self:pause()
    msgs[#msgs + 1] = string.format("[%s] stopped at step %d: %s", self.cfg.name, self.step_count, tostring(err))
    return false, table.concat(msgs, "\n")
  end
  local every = self.cfg.repl_print_every
  if every and every > 0 and self.step_count % every == 0 then
    local p = self._repl_bar or logm.Progress { total = self:total_steps(), label = self.cfg.name, tty = false }
    self._repl_bar = p
    msgs[#msgs + 1] = p:format(self.step_count, self:_fields(self.last), { "D", "G", "lambda" })
  end
  if self.step_count >= self:total_steps() then
    if self.cfg.out_dir then pcall(self.save, self) end
    self:pause()
    msgs[#msgs + 1] = string.format("[%s] finished at step %d", self.cfg.name, self.step_count)
    return false, table.concat(msgs, "\n")
  end
  return true, #msgs > 0 and table.concat(msgs, "\n") or nil
end

--- A summary table: step, total, phase, lambda in force, running, last record, skipped steps.
function Run:status()
  local s = self.step_count
  local p2 = math.max(0, s - self.cfg.d_warmup_steps)
  return setmetatable({ step = s, total = self:total_steps(), phase = self:phase(s), running = self.running,
                        background = self.background or false, lambda = self:phase(s) == 2 and self:lambda_at(p2) * self.guard_factor or 0,
                        guard_factor = self.guard_factor, skipped = self.skipped, last = self.last,
                        data_position = self.loader.position and self.loader:position() or nil },
    { __tostring = function(t)
        local l = t.last or {}
        return string.format("%s: step %d/%d (phase %d)%s  D=%s G=%s lambda=%.4g%s", self.cfg.name, t.step, t.total,
          t.phase, t.running and " running" or "", l.loss_d and string.format("%.4f", l.loss_d) or "-",
          l.loss_g and string.format("%.4f", l.loss_g) or "-", t.lambda,
          t.skipped > 0 and string.format("  (%d updates skipped)", t.skipped) or "")
      end })
end

function Run:__tostring() return tostring(self:status()) end

---------------------------------------------------------------------------- checkpoints

local function put_sd(dst, prefix, sd)
  for k, v in pairs(sd) do dst[prefix .. k] = v end
end

local function opt_state(opt, prefix, tensors)
  local sd = opt:state_dict()
  local scalars = {}
  for idx, st in pairs(sd.state) do
    local sc = {}
    for key, v in pairs(st) do
      if ad.is_tensor(v) then tensors[prefix .. ".state." .. idx .. "." .. key] = v else sc[key] = v end
    end
    scalars[tostring(idx)] = sc
  end
  return { param_groups = sd.param_groups, state = scalars }
end

local function opt_restore(opt, prefix, tensors, saved)
  local state = {}
  for idx, sc in pairs(saved.state or {}) do
    local i = math.tointeger(tonumber(idx))
    local st = {}
    for k, v in pairs(sc) do st[k] = v end
    state[i] = st
  end
  local pat = "^" .. prefix:gsub("[%-%.%+%*%?%^%$%%%[%]%(%)]", "%%%0") .. "%.state%.(%d+)%.(.+)$"
  for name, t in pairs(tensors) do
    local idx, key = name:match(pat)
    if idx then
      local i = math.tointeger(tonumber(idx))
      state[i] = state[i] or {}
      state[i][key] = t
    end
  end
  opt:load_state_dict { state = state, param_groups = saved.param_groups }
end

--- The run's complete state: tensors (flat) and the rest (JSON-able).
function Run:state()
  local t = {}
  put_sd(t, "G.", (self.G:state_dict()))
  put_sd(t, "D.", (self.D:state_dict()))
  local st = {
    format = "advdiff-adversarial-run", version = 1, step = self.step_count, cfg = self._snap or snapshot(self.cfg),
    rng = { default = ad.get_rng_state(), run = self.gen:get_state() },
    loader = self.loader.state_dict and self.loader:state_dict() or nil,
    opt_g = opt_state(self.opt_g, "opt_g", t), opt_d = opt_state(self.opt_d, "opt_d", t),
    trainer = { skipped = self.skipped, d_steps = self.d_steps, guard_factor = self.guard_factor,
                guard_base = self._guard_base },
  }
  if self.ema then
    local e = self.ema:state_dict()
    put_sd(t, "EMA.", e.shadow)
    st.ema = { num_updates = e.num_updates, decay = e.decay }
  end
  if self.scaler and self.scaler.state_dict then
    local ss = self.scaler:state_dict()
    local plain_s = {}
    for k, v in pairs(ss) do
      if ad.is_tensor(v) then t["scaler." .. k] = v else plain_s[k] = v end
    end
    st.scaler = plain_s
  end
  return t, st
end

--- Save the run atomically to path (default out_dir/checkpoint): <path>.safetensors + <path>.json.
function Run:save(path)
  path = path or (self.cfg.out_dir and (self.cfg.out_dir .. "/checkpoint"))
  if not path then error("Run:save: give a path (the run has no out_dir)", 2) end
  local t, st = self:state()
  local file = checkpoint.save(path, t, st)
  self:_event { event = "checkpoint", path = file }
  return file
end

local function sub(tensors, prefix)
  local out = {}
  local n = #prefix
  for k, v in pairs(tensors) do
    if k:sub(1, n) == prefix then out[k:sub(n + 1)] = v end
  end
  return out
end

--- Restore the run from a checkpoint written by save (models, EMA, optimizers, scaler, step,
-- RNG states, data position, live config values).
-- given: keys the caller set explicitly (their values win over the saved ones; a difference is
-- logged as a change at the resume step)
function Run:load(path, given)
  local tensors, st = checkpoint.load(path)
  if st.format ~= "advdiff-adversarial-run" then error("Run:load: '" .. path .. "' is not an adversarial run checkpoint", 2) end
  self.G:load_state_dict(sub(tensors, "G."))
  self.D:load_state_dict(sub(tensors, "D."))
  if self.ema then
    local shadow = sub(tensors, "EMA.")
    if next(shadow) == nil then error("Run:load: the checkpoint has no EMA weights but this run keeps an EMA", 2) end
    self.ema:load_state_dict { shadow = shadow, num_updates = st.ema and st.ema.num_updates, decay = st.ema and st.ema.decay }
  end
  opt_restore(self.opt_g, "opt_g", tensors, st.opt_g)
  opt_restore(self.opt_d, "opt_d", tensors, st.opt_d)
  if self.scaler and st.scaler and self.scaler.load_state_dict then
    local ss = {}
    for k, v in pairs(st.scaler) do ss[k] = v end
    for k, v in pairs(sub(tensors, "scaler.")) do ss[k] = v end
    self.scaler:load_state_dict(ss)
  end
  self.step_count = st.step
  ad.set_rng_state(st.rng.default)
  self.gen:set_state(st.rng.run)
  if st.loader and self.loader.load_state_dict then self.loader:load_state_dict(st.loader) end
  local tr = st.trainer or {}
  self.skipped, self.d_steps = tr.skipped or 0, tr.d_steps or 0
  self.guard_factor, self._guard_base = tr.guard_factor or 1.0, tr.guard_base
  -- live values in force when the checkpoint was written (objects stay as given; keys given
  -- explicitly now win, and differences are logged as changes at this step)
  local changes = {}
  for k, v in pairs(st.cfg or {}) do
    if DEFAULTS[k] ~= nil and not CONSTRUCTION_KEYS[k] and not (type(v) == "string" and v:sub(1, 1) == "<") then
      if given and given[k] then
        local now = plain(self.cfg[k])
        if not same(now, v) then changes[#changes + 1] = { key = k, old = v, new = now } end
      else
        self.cfg[k] = v
      end
    end
  end
  self:_apply_freeze()
  self._snap, self._snap_ids = snapshot(self.cfg)
  self:_event { event = "resume", path = path }
  table.sort(changes, function(a, b) return a.key < b.key end)
  for _, ch in ipairs(changes) do
    self:_event { event = "cfg", key = ch.key, old = ch.old, new = ch.new, note = "changed at resume" }
  end
  return self
end

function Run:close()
  self:pause()
  if self.jsonl then self.jsonl:close() end
  if self.csv then self.csv:close() end
  if self.tb then self.tb:close() end
end

M.DEFAULTS = DEFAULTS
return M
