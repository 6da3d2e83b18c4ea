--- quickstart: the paper's method end to end, out of the box, on Fashion-MNIST.
--
--   build/advdiff experiments/quickstart.lua                      -- scale=small (<= 20 min, 2 CPU cores)
--   build/advdiff experiments/quickstart.lua --set scale=tiny     -- a smoke run (~1 min, 2 CPU cores)
--   build/advdiff experiments/quickstart.lua --set scale=full --set device=cuda
--   build/advdiff experiments/quickstart.lua --set lambda_adv=0.004 --set gate_region=0.25 --set out=runs/qs-l4
--
-- The official checkpoints and ImageNet are large licensed downloads, so this
-- experiment builds its own stand-ins on a dataset Debian installs
-- (dataset-fashion-mnist) and then runs the paper's protocol unchanged:
--
--   1 pretrain   a small class-conditional ADM (guided-diffusion's UNetModel scaled down:
--                32x32, 1 channel, 32 channels, mult 1,2,2, one res block per level,
--                attention at 8x8, learned sigma, 10 classes; cosine schedule, hybrid
--                loss) on Fashion-MNIST padded to 32x32 in [-1, 1]; EMA weights kept
--   2 classifier a ResNet18 classifier (the "ImageNet-pretrained" backbone of the
--                discriminator; the grey channel is replicated to 3 by the discriminator's
--                own [-1,1] -> ImageNet mean/std mapping) and, separately, a small CNN
--                classifier with another architecture and seed whose penultimate features
--                are the evaluation's eye (Inception's role)
--   3 adversarial the paper's protocol with ad.train.adversarial: D warm-up with G frozen,
--                then joint training with lambda ramped linearly from 0 to lambda_adv and
--                the adversarial term gated to mean(t)/(T-1) <= gate_region; training on
--                the diffusion respaced to 100 steps, as in the paper
--   4 evaluate   samples of the pretrained and the fine-tuned model from the same noise
--                and labels (respaced sampling), against real test images of the same
--                labels: sharpness, precision, recall, density, coverage, FID, KID,
--                discriminator scores, the Table-1 comparison with percentage change
--                (ad.metrics.compare), sample grids side by side, loss curves
--
-- Every stage is cached under the output folder (out/<stage>/ holds the weights and a
-- DONE marker with the stage's settings): a rerun loads what is done and does the rest.
-- A stage whose settings changed (say pretrain_steps) is redone, and so is everything
-- after it. The adversarial stage also resumes from its last checkpoint when interrupted.
--
-- Shared stage cache (--set cache=DIR): the stages that do not depend on the adversarial
-- settings (pretrain, classifier, featnet) are read from and written to DIR instead of
-- out/, as DIR/<stage>-<hash of its settings>/, so runs with other lambda_adv, gate_region,
-- lr_g, ... (a sweep's runs, each in its own out folder) pretrain once between them, and
-- runs with other pretraining settings never collide. A stage is computed in a private
-- folder and renamed into place when complete, so DIR never holds half a stage; a lock
-- (DIR/<stage>-<hash>.lock, naming the holder's host and pid) makes a run wait while
-- another process on the same machine computes the stage it needs instead of computing it
-- twice; a lock whose process is gone is taken over. A holder on another machine (a shared
-- cache on a cluster) is not waited for: both compute, the first rename wins and the other
-- run loads the winner's weights.
--
-- Outputs (out = runs/quickstart by default): report.md, results.json (flat: the
-- fine-tuned model's sharpness, precision, recall, fid, ... at the top level, the
-- pretrained model's under "pretrained", changes in % under "change_pct", timings,
-- stage_dirs: the folder each stage's weights are in, out/<stage> or the cache's entry),
-- eval/ (table.md, compare's results.json, samples.png, spectrum.png, real.png),
-- plots/ (loss curves of every stage), adversarial/ (the trainer's log.jsonl,
-- metrics.csv, plots/, checkpoint), the stages' weights as .safetensors.
--
-- Config keys (--set key=value): scale, out, cache, live, seed, device, lambda_adv, gate_region,
-- lr_g, lr_d, and per stage the counts below; a scale preset fills every count the
-- command line does not set.
local ad = require "advdiff"
local nn = ad.nn
local logm = require "advdiff.log"
local json = require "advdiff.log.json"
local config = require "advdiff.config"

local PRESETS = {
  -- smoke run: every stage runs, nothing is learnt to speak of
  tiny = {
    pretrain_steps = 60, pretrain_batch = 16, pretrain_lr = 1e-3, pretrain_ema = 0.9,
    classifier_steps = 30, classifier_batch = 32, featnet_steps = 80, featnet_batch = 32,
    warmup_steps = 4, steps = 8, adv_batch = 8, adv_per_class = 50, lr_g = 2e-5,
    eval_n = 40, sample_steps = 10, bootstrap = 50,
  },
  -- the default: under 20 minutes on 2 CPU cores
  small = {
    pretrain_steps = 350, pretrain_batch = 32, pretrain_lr = 5e-4, pretrain_ema = 0.995,
    classifier_steps = 100, classifier_batch = 64, featnet_steps = 300, featnet_batch = 64,
    warmup_steps = 40, steps = 80, adv_batch = 16, adv_per_class = 500, lr_g = 2e-5,
    eval_n = 100, sample_steps = 25, bootstrap = 200,
  },
  -- for a GPU: the paper's step counts and batch size
  full = {
    pretrain_steps = 20000, pretrain_batch = 128, pretrain_lr = 2e-4, pretrain_ema = 0.9999,
    classifier_steps = 3000, classifier_batch = 128, featnet_steps = 3000, featnet_batch = 128,
    warmup_steps = 500, steps = 1000, adv_batch = 32, adv_per_class = 500, lr_g = 5e-6,
    eval_n = 1000, sample_steps = 50, bootstrap = 200,
  },
}

local cfg = ad.config {
  scale = "small", out = "runs/quickstart", cache = "", seed = 0, device = "cpu",
  lambda_adv = 0.002, gate_region = 0.5, lr_d = 4e-5, lr_g = 5e-6,
  pretrain_steps = 0, pretrain_batch = 0, pretrain_lr = 0.0, pretrain_ema = 0.0,
  classifier_steps = 0, classifier_batch = 0, featnet_steps = 0, featnet_batch = 0,
  warmup_steps = 0, steps = 0, adv_batch = 0, adv_per_class = 0,
  train_respacing = 100, eval_n = 0, sample_steps = 0, bootstrap = 0,
  data = "/usr/share/datasets/fashion-mnist", live = false,
}
local preset = PRESETS[cfg.scale]
if not preset then error("quickstart: scale must be tiny, small or full, got '" .. cfg.scale .. "'", 0) end
for k, v in pairs(preset) do
  if config.overrides[k] == nil then cfg[k] = v end
end
local out = cfg.out:gsub("/+$", "")
local cache = cfg.cache ~= "" and (cfg.cache:gsub("(.)/+$", "%1")) or nil
local dev = cfg.device ~= "cpu" and cfg.device or nil
local T_START = ad._now()

local function say(fmt, ...) io.stdout:write(string.format(fmt, ...), "\n"); io.stdout:flush() end
local function exists(p) local f = io.open(p, "r"); if f then f:close() end return f ~= nil end
local function read_json(p)
  local f = io.open(p, "r")
  if not f then return nil end
  local s = f:read("a"); f:close()
  local ok, v = pcall(json.decode, s)
  return ok and v or nil
end
local function write_file(p, s)
  local f = assert(io.open(p, "w"))
  f:write(s); f:close()
end
local function write_json(p, v) write_file(p, json.encode(v, { indent = "  " }) .. "\n") end
local function num_params(m) local n = 0; for _, p in ipairs(m:parameters()) do n = n + p:numel() end return n end

logm.mkdir(out)
logm.mkdir(out .. "/plots")

say("quickstart: scale=%s out=%s seed=%d device=%s lambda_adv=%g gate_region=%g%s", cfg.scale, out, cfg.seed,
  cfg.device, cfg.lambda_adv, cfg.gate_region, cache and (" cache=" .. cache) or "")

---------------------------------------------------------------------------- models and data

-- guided-diffusion's UNetModel at 32x32 on one channel (create_model_and_diffusion's names)
local MODEL = {
  image_size = 32, num_channels = 32, num_res_blocks = 1, channel_mult = "1,2,2", attention_resolutions = "8",
  num_heads = 1, num_head_channels = -1, num_heads_upsample = -1, use_scale_shift_norm = true,
  resblock_updown = false, use_new_attention_order = false, learn_sigma = true, class_cond = true,
  num_classes = 10, in_channels = 1, dropout = 0.0, use_fp16 = false, use_checkpoint = false,
  diffusion_steps = 1000, noise_schedule = "cosine", timestep_respacing = "", use_kl = false,
  predict_xstart = false, rescale_timesteps = false, rescale_learned_sigmas = false,
}
local function diffusion(respacing)
  local o = {}
  for k, v in pairs(MODEL) do o[k] = v end
  o.timestep_respacing = respacing
  return ad.diffusion.create(o)
end
local function new_unet()
  local m = ad.models.adm.UNetModel(MODEL)
  if dev then m:to(dev) end
  return m
end

-- the discriminator's input mapping, shared by its classifier pretraining: [-1, 1] -> [0, 1]
-- -> ImageNet mean/std; (N, 1, H, W) broadcasts against the (1, 3, 1, 1) statistics, which
-- replicates the grey channel to the 3 channels ResNet18 expects
local MEAN = ad.tensor({ 0.485, 0.456, 0.406 }):view(1, 3, 1, 1)
local STD = ad.tensor({ 0.229, 0.224, 0.225 }):view(1, 3, 1, 1)
if dev then MEAN, STD = MEAN:to { device = dev }, STD:to { device = dev } end
local function to_rgb(x) return ((x + 1) * 0.5 - MEAN) / STD end

local function new_resnet()
  local m = ad.models.resnet18 { num_classes = 10 }
  if dev then m:to(dev) end
  return m
end

-- the evaluation's feature network: a small CNN classifier on [0, 1] images; its
-- 128-d penultimate activations are the features of FID, precision/recall, density/coverage
local FeatNet = nn.Module:extend("FeatNet")
function FeatNet:__init()
  self.body = nn.Sequential(
    nn.Conv2d(1, 32, 3, { padding = 1 }), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, { padding = 1 }), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(64, 128, 3, { padding = 1 }), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
  self.fc1 = nn.Linear(128, 128)
  self.fc2 = nn.Linear(128, 10)
end
function FeatNet:features(x) return ad.relu(self.fc1(self.body(x):flatten(2))) end
function FeatNet:forward(x) return self.fc2(self:features(x)) end
local function new_featnet()
  local m = FeatNet()
  if dev then m:to(dev) end
  return m
end

local function loader(split, batch, opts)
  opts = opts or {}
  local ds = ad.data.FashionMNIST { root = cfg.data, split = split, max_per_class = opts.max_per_class }
  return ad.data.DataLoader(ds, { batch_size = batch, pad = 2, pad_value = 0, channels = 1, seed = opts.seed or cfg.seed,
    shuffle = opts.shuffle, drop_last = opts.drop_last, device = cfg.device })
end

---------------------------------------------------------------------------- stage cache

local STAGE_ORDER = { "pretrain", "classifier", "featnet", "adversarial", "eval" }
local timings, redone, sigs, stage_dirs = {}, {}, {}, {}

-- the settings a stage depends on, as a canonical string (json.encode sorts keys); a stage
-- after others also depends on theirs, so a run folder whose pretraining now comes from
-- other settings (the shared cache filled by another process) redoes its later stages
local function signature(settings, upstream)
  if not upstream or #upstream == 0 then return json.encode(settings) end
  local up = {}
  for _, u in ipairs(upstream) do up[u] = sigs[u] end
  return json.encode({ settings = settings, upstream = up })
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function copy_file(src, dst)
  local f = io.open(src, "rb")
  if not f then return false end
  local data = f:read("a"); f:close()
  local g = assert(io.open(dst, "wb"))
  g:write(data); g:close()
  return true
end

-- 64-bit FNV-1a as hex: a cache entry's name from its signature (the entry's DONE keeps the
-- whole signature, checked on load, so a collision is a recomputation, never a wrong load)
local function fnv1a64(s)
  local h = 0xcbf29ce484222325
  for i = 1, #s do h = (h ~ s:byte(i)) * 0x100000001b3 end
  return string.format("%016x", h)
end

local HOST = (function()
  local f = io.open("/proc/sys/kernel/hostname", "r")
  local h = f and f:read("l"); if f then f:close() end
  return (h and h ~= "" and h or os.getenv("HOSTNAME") or "localhost"):gsub("%s", "_")
end)()
local PID = ad._proc_getpid()

-- A lock is a symbolic link whose target names the holder ("host pid"): creating one is
-- atomic and fails when it exists, and the holder is read with the link.
local function try_lock(path)
  return os.execute("ln -s " .. q(HOST .. " " .. PID) .. " " .. q(path) .. " 2>/dev/null") == true
end
local function lock_holder(path)
  local h = io.popen("readlink " .. q(path) .. " 2>/dev/null")
  local s = h:read("l"); h:close()
  if not s then return nil end
  local host, pid = s:match("^(%S+) (%d+)$")
  return host or "?", math.tointeger(tonumber(pid)) or 0, s
end

-- load a stage's weights from dir, after checking its DONE marker holds signature sig
local function load_stage(dir, sig, models)
  local marker = read_json(dir .. "/DONE")
  if not marker then return nil end
  if marker.signature ~= sig then return nil, "its DONE marker holds other settings" end
  local ok, err = pcall(function()
    for stem, m in pairs(models) do m:load_state_dict(ad.load(dir .. "/" .. stem .. ".safetensors")) end
  end)
  if not ok then return nil, tostring(err) end
  return marker
end

-- train in dir, save the weights and the DONE marker
local function compute_stage(name, dir, settings, sig, models, train)
  say("[%s] running", name)
  local t0 = ad._now()
  local info = train(dir, sig) or {}
  info.seconds = ad._now() - t0
  for stem, m in pairs(models) do ad.save(dir .. "/" .. stem .. ".safetensors", (m:state_dict())) end
  write_json(dir .. "/DONE", { stage = name, signature = sig, settings = settings, info = info })
  redone[name] = true
  say("[%s] done in %.1f s", name, info.seconds)
  return info
end

-- A stage of the shared cache: load DIR/<name>-<hash>, or take its lock, compute it in a
-- private folder and rename that into place. Returns info, the entry's folder.
local function cached_stage(name, settings, sig, models, train)
  local entry = cache .. "/" .. name .. "-" .. fnv1a64(sig)
  local lock = entry .. ".lock"
  logm.mkdir(cache)
  local locked, said_wait, no_lock = false, false, 0
  while true do
    local marker, why = load_stage(entry, sig, models)
    if marker then
      say("[%s] cached (%s): loaded", name, entry)
      return marker.info or {}, entry
    end
    if why and not said_wait then say("[%s] the cached %s does not load (%s): redoing it", name, entry, why) end
    if try_lock(lock) then locked = true; break end
    local host, pid, raw = lock_holder(lock)
    if host == nil then
      -- released between our two looks: look for the entry again; but a folder where no
      -- link can be made (a file system without symbolic links) never gets one
      no_lock = no_lock + 1
      if no_lock >= 5 then
        say("[%s] cannot create the lock %s: computing without it", name, lock)
        break
      end
    elseif host ~= HOST then
      say("[%s] %s (on another machine) is computing it too; computing it here as well", name, raw)
      break
    elseif pid == PID or not ad._proc_kill(pid, 0) then
      -- the holder is gone (killed mid-stage): take the lock over. Renaming the stale link
      -- away first means that of several runs finding it at once only one removes it.
      local stale = string.format("%s.stale-%s-%d", lock, HOST, PID)
      if os.rename(lock, stale) then os.remove(stale) end
    else
      if not said_wait then say("[%s] waiting for process %d, which is computing it into %s", name, pid, entry) end
      said_wait = true
      ad._proc_sleep(0.5)
    end
  end
  local tmp = string.format("%s/.tmp-%s-%s-%d", cache, name, HOST, PID)
  os.execute("rm -rf " .. q(tmp))
  logm.mkdir(tmp)
  local ok, info = pcall(compute_stage, name, tmp, settings, sig, models, train)
  local stored = ok and os.rename(tmp, entry)
  if ok and not stored then
    -- the entry exists: computed by a run on another machine (load the winner, so every run
    -- of a sweep fine-tunes the same weights), or one that did not load (replace it)
    local marker = load_stage(entry, sig, models)
    if marker then
      say("[%s] another run stored it first: using %s", name, entry)
      info = marker.info or info
    else
      local old = string.format("%s/.old-%s-%s-%d", cache, name, HOST, PID)
      stored = os.rename(entry, old) and os.rename(tmp, entry)
      ok = stored
      if ok then os.execute("rm -rf " .. q(old)) else info = "cannot move " .. tmp .. " to " .. entry end
    end
  end
  os.execute("rm -rf " .. q(tmp))
  if locked then os.remove(lock) end
  if not ok then error(info, 0) end
  if stored then say("[%s] stored in the cache: %s", name, entry) end
  return info, entry
end

-- Run a stage or load it. models: {file_stem = module}; train(dir, signature) -> info table;
-- upstream: the stages it builds on; shared: the stage goes to the shared cache when there is
-- one. A stage's loss curve, dir/loss.png, is copied to out/plots/<name>_loss.png.
local function stage(name, settings, models, train, upstream, shared)
  local sig = signature(settings, upstream)
  sigs[name] = sig
  local info, dir
  if shared and cache then
    info, dir = cached_stage(name, settings, sig, models, train)
    timings[name] = info.seconds or 0
  else
    dir = out .. "/" .. name
    local stale_upstream = false
    for _, u in ipairs(upstream or {}) do if redone[u] then stale_upstream = true end end
    local marker, why
    if not stale_upstream then marker, why = load_stage(dir, sig, models) end
    if marker then
      say("[%s] done before (%s): loaded", name, dir)
      info = marker.info or {}
      timings[name] = info.seconds or 0
    else
      if stale_upstream and exists(dir .. "/DONE") then
        say("[%s] an earlier stage was redone: redoing the stage", name)
      elseif why then
        say("[%s] %s: redoing the stage", name, why == "its DONE marker holds other settings" and "settings changed"
          or "cached weights do not load (" .. why .. ")")
      end
      os.remove(dir .. "/DONE")
      logm.mkdir(dir)
      info = compute_stage(name, dir, settings, sig, models, train)
      timings[name] = info.seconds
    end
  end
  stage_dirs[name] = dir
  copy_file(dir .. "/loss.png", out .. "/plots/" .. name .. "_loss.png")
  return info
end

local function curves(path, title, hist)
  local ok, err = pcall(logm.plot.curves, path, { { name = title, xs = hist.xs, ys = hist.ys } },
    { title = title, smooth = math.max(1, #hist.xs // 20) })
  if not ok then say("(no plot %s: %s)", path, tostring(err)) end
end

-- a classifier's accuracy on the first n test images (eval mode)
local function accuracy(model, prep, n)
  local l = loader("test", n, { shuffle = false, drop_last = false })
  local b = l:next()
  l:close()
  return ad.no_grad(function()
    model:eval()
    local acc = model(prep(b.x)):argmax(2):eq(b.y):float():mean():item()
    model:train()
    return acc
  end)
end

---------------------------------------------------------------------------- 1 pretrain the ADM

local G0 = new_unet()
local pre_info = stage("pretrain", {
  model = MODEL, steps = cfg.pretrain_steps, batch = cfg.pretrain_batch, lr = cfg.pretrain_lr,
  ema = cfg.pretrain_ema, seed = cfg.seed, data = cfg.data,
}, { model = G0 }, function(dir)
  ad.manual_seed(cfg.seed)
  local d = diffusion("")
  local G = G0
  G:train()
  local opt = ad.optim.AdamW(G:parameters(), { lr = cfg.pretrain_lr, weight_decay = 0 })
  local ema = ad.optim.EMA(G, { decay = cfg.pretrain_ema, warmup = true })
  local l = loader("train", cfg.pretrain_batch)
  local gen = ad.Generator(cfg.seed + 11)
  local hist = { xs = {}, ys = {} }
  local bar = logm.Progress { total = cfg.pretrain_steps, label = "pretrain ADM" }
  for s = 1, cfg.pretrain_steps do
    local b = l:next()
    local t = ad.randint(0, d.num_timesteps, { b.x:shape()[1] }, { generator = gen })
    if dev then t = t:to { device = dev } end
    local terms = d:training_losses(G, b.x, t, { model_kwargs = { y = b.y } })
    local loss = terms.loss:mean()
    opt:zero_grad()
    loss:backward()
    ad.optim.clip_grad_norm_(G:parameters(), 1.0)
    opt:step()
    ema:update()
    local v = loss:item()
    hist.xs[s], hist.ys[s] = s, v
    bar:update(s, { loss = v, mse = terms.mse:mean():item() }, { "loss", "mse" })
    if s % 10 == 0 then collectgarbage("step") end
  end
  bar:close()
  l:close()
  ema:swap(G)   -- the pretrained model is the EMA, as guided-diffusion's released checkpoints
  G:eval()
  curves(dir .. "/loss.png", "ADM pretraining loss (hybrid)", hist)
  local n = #hist.ys
  local tail = 0
  for i = math.max(1, n - 9), n do tail = tail + hist.ys[i] end
  return { final_loss = tail / math.min(10, n), params = num_params(G) }
end, nil, true)
G0:eval()

---------------------------------------------------------------------------- 2 classifiers

local function train_classifier(model, prep, steps, batch, lr, seed, label, plot)
  ad.manual_seed(seed)
  model:train()
  local opt = ad.optim.AdamW(model:parameters(), { lr = lr, weight_decay = 0 })
  local l = loader("train", batch, { seed = seed })
  local hist = { xs = {}, ys = {} }
  local bar = logm.Progress { total = steps, label = label }
  for s = 1, steps do
    local b = l:next()
    local loss = ad.cross_entropy(model(prep(b.x)), b.y)
    opt:zero_grad()
    loss:backward()
    opt:step()
    local v = loss:item()
    hist.xs[s], hist.ys[s] = s, v
    bar:update(s, { loss = v }, { "loss" })
    if s % 10 == 0 then collectgarbage("step") end
  end
  bar:close()
  l:close()
  curves(plot, label .. " loss", hist)
  local acc = accuracy(model, prep, 500)
  model:eval()
  return { final_loss = hist.ys[#hist.ys], test_accuracy_500 = acc, params = num_params(model) }
end

local resnet = new_resnet()
local cls_info = stage("classifier", {
  steps = cfg.classifier_steps, batch = cfg.classifier_batch, seed = cfg.seed, data = cfg.data,
}, { resnet18 = resnet }, function(dir)
  return train_classifier(resnet, to_rgb, cfg.classifier_steps, cfg.classifier_batch, 1e-3, cfg.seed,
    "ResNet18 classifier", dir .. "/loss.png")
end, nil, true)
say("[classifier] ResNet18 test accuracy (500 images): %.3f", cls_info.test_accuracy_500 or 0 / 0)

local featnet = new_featnet()
local function to01(x) return (x + 1) * 0.5 end
local feat_info = stage("featnet", {
  steps = cfg.featnet_steps, batch = cfg.featnet_batch, seed = cfg.seed + 1, data = cfg.data,
}, { featnet = featnet }, function(dir)
  return train_classifier(featnet, to01, cfg.featnet_steps, cfg.featnet_batch, 2e-3, cfg.seed + 1,
    "feature network", dir .. "/loss.png")
end, nil, true)
featnet:eval()
say("[featnet] feature network test accuracy (500 images): %.3f", feat_info.test_accuracy_500 or 0 / 0)

---------------------------------------------------------------------------- 3 adversarial fine-tuning

-- G starts from the pretrained weights; D's backbone is the trained ResNet18
local G1 = new_unet()
G1:load_state_dict((G0:state_dict()))
local backbone = new_resnet()
backbone:load_state_dict((resnet:state_dict()))
local D = ad.models.discriminator { backbone = backbone, num_classes = 10 }
if dev then D:to(dev) end

local adv_settings = {
  warmup_steps = cfg.warmup_steps, steps = cfg.steps, batch = cfg.adv_batch, per_class = cfg.adv_per_class,
  lambda_adv = cfg.lambda_adv, gate_region = cfg.gate_region, lr_g = cfg.lr_g, lr_d = cfg.lr_d,
  respacing = cfg.train_respacing, seed = cfg.seed,
}
-- the adversarial run: the paper's protocol with this run's settings (also the live mode's run)
local function adversarial_run(dir, resume, progress)
  local ds = ad.data.FashionMNIST { root = cfg.data, split = "train", max_per_class = cfg.adv_per_class }
  local l = ad.data.DataLoader(ds, { batch_size = cfg.adv_batch, pad = 2, channels = 1, seed = cfg.seed, device = cfg.device })
  local run = ad.train.adversarial {
    G = G1, D = D, diffusion = diffusion(tostring(cfg.train_respacing)), data = l,
    batch_size = cfg.adv_batch, seed = cfg.seed, device = cfg.device,
    d_warmup_steps = cfg.warmup_steps, joint_steps = cfg.steps,
    lr_g = cfg.lr_g, lr_d = cfg.lr_d, weight_decay_g = 0, weight_decay_d = 0,
    lambda_adv = cfg.lambda_adv, lambda_schedule = "linear", lambda_ramp_steps = math.max(1, cfg.steps),
    t_gate = "batch_mean", t_region = cfg.gate_region, diffusion_loss = "mse", d_target = "pred_xstart",
    ema_decay = false, telemetry_every = 10, save_every = math.max(10, (cfg.warmup_steps + cfg.steps) // 5),
    tensorboard = false, out_dir = dir, resume = resume, name = "adversarial", progress = progress,
  }
  return run, l
end

-- live=true: stop here with the adversarial run built but not run, as the global `run`, for
-- the REPL (`advdiff -i experiments/quickstart.lua --set live=true`): run:start() trains between
-- keystrokes, run.cfg.lambda_adv = ... changes λ at the next step (README, "Steering a run live").
-- It trains in out/live/, apart from the cached stage, and resumes there when started again.
if cfg.live then
  local dir = out .. "/live"
  logm.mkdir(dir)
  local resume = exists(dir .. "/checkpoint.json") and dir .. "/checkpoint" or false
  run = adversarial_run(dir, resume, false)   -- the REPL prints a status line every few steps
  say("[live] the adversarial run is the global `run` (step %d of %d, logs in %s):", run.step_count,
    cfg.warmup_steps + cfg.steps, dir)
  say("[live]   run:start()  run:pause()  run:status()  run:step(5)  run.cfg.lambda_adv = 0.004  run:save()")
  return run
end

local adv_info = stage("adversarial", adv_settings, { generator = G1, discriminator = D }, function(dir, sig)
  -- an interrupted run with the same settings resumes from its last checkpoint
  local resume = false
  local sigfile = dir .. "/SETTINGS"
  local old = io.open(sigfile, "r")
  if old then
    local s = old:read("a"); old:close()
    if s == sig and exists(dir .. "/checkpoint.json") then resume = dir .. "/checkpoint" end
  end
  write_file(sigfile, sig)
  local run, l = adversarial_run(dir, resume)
  if resume then say("[adversarial] resuming at step %d", run.step_count) end
  run:run()
  run:close()
  l:close()
  for _, f in ipairs { "losses_d", "losses_g", "loss_adv", "d_logits", "d_acc", "lambda", "grad_norms" } do
    local src = dir .. "/plots/" .. f .. ".png"
    if exists(src) then os.execute(string.format("cp '%s' '%s/plots/adversarial_%s.png'", src, out, f)) end
  end
  local last = run.last or {}
  return { final_loss_d = last.loss_d, final_loss_g = last.loss_g, final_lambda = last.lambda, d_acc = last.d_acc,
           skipped = run.skipped }
end, { "pretrain", "classifier" })
G1:eval()
D:eval()

---------------------------------------------------------------------------- 4 evaluation

local eval_dir = out .. "/eval"
local res
local eval_info = stage("eval", {
  n = cfg.eval_n, sample_steps = cfg.sample_steps, bootstrap = cfg.bootstrap, seed = cfg.seed,
}, {}, function(dir)
  -- real test images, class-balanced; the samples use their labels
  local per = math.max(1, cfg.eval_n // 10)
  local ds = ad.data.FashionMNIST { root = cfg.data, split = "test", max_per_class = per }
  local l = ad.data.DataLoader(ds, { batch_size = #ds, shuffle = false, drop_last = false, pad = 2, channels = 1,
    device = cfg.device })
  local real = l:next()
  l:close()
  local n = real.x:shape()[1]
  local s0, s1 = table.unpack(ad.metrics.sample_models(diffusion(tostring(cfg.sample_steps)), { G0, G1 },
    { shape = { n, 1, 32, 32 }, y = real.y, seed = cfg.seed, device = dev, progress = true,
      names = { "pretrained", "fine-tuned" } }))
  ad.save(dir .. "/samples.npz", { pretrained = s0:cpu(), finetuned = s1:cpu(), real = real.x:cpu(), labels = real.y:cpu() })
  ad.image.save(dir .. "/real.png", ad.image.grid(((real.x:cpu() + 1) * 0.5):narrow(1, 1, math.min(64, n)),
    { nrow = 8, padding = 2, pad_value = 1 }))
  res = ad.metrics.compare {
    real = real.x:cpu(), a = s0:cpu(), b = s1:cpu(), names = { "pretrained", "fine-tuned" }, range = { -1, 1 },
    extractor = featnet, D = D, labels = real.y:cpu(), bootstrap = cfg.bootstrap, seed = cfg.seed, out = dir,
    device = dev, grid_n = 64,
  }
  return { n = n }
end, { "pretrain", "classifier", "featnet", "adversarial" })

-- compare's own results (written by the eval stage, read back when it was cached)
local cres = read_json(eval_dir .. "/results.json")
local table_md = res and res.markdown
if not table_md then
  local f = io.open(eval_dir .. "/table.md", "r")
  if f then table_md = f:read("a"); f:close() end
end
if not cres or not table_md then error("quickstart: the evaluation left no results in " .. eval_dir, 0) end

---------------------------------------------------------------------------- results and report

local results = ad.metrics.flat_results(cres.metrics, {
  scale = cfg.scale, seed = cfg.seed, lambda_adv = cfg.lambda_adv, gate_region = cfg.gate_region,
  classifier_accuracy = cls_info.test_accuracy_500, featnet_accuracy = feat_info.test_accuracy_500,
  pretrain_loss = pre_info.final_loss, n_eval = eval_info.n,
  timings_s = timings, config = cfg, stage_dirs = stage_dirs,
})
local total = 0
for _, k in ipairs(STAGE_ORDER) do total = total + (timings[k] or 0) end
timings.stages_total = total
timings.this_run = ad._now() - T_START
write_json(out .. "/results.json", results)

local L = {}
L[#L + 1] = "# quickstart: adversarial fine-tuning of a small ADM on Fashion-MNIST"
L[#L + 1] = ""
L[#L + 1] = string.format("Scale `%s`, seed %d, λ = %g (linear ramp over %d joint steps), gate mean(t)/(T-1) ≤ %g, "
  .. "lr_G %g, lr_D %g, device %s.", cfg.scale, cfg.seed, cfg.lambda_adv, cfg.steps, cfg.gate_region, cfg.lr_g,
  cfg.lr_d, cfg.device)
L[#L + 1] = ""
L[#L + 1] = "| Stage | What | Seconds |"
L[#L + 1] = "|---|---|---|"
L[#L + 1] = string.format("| pretrain | ADM (%d params), %d steps, batch %d, final loss %.4f | %.1f |",
  pre_info.params or 0, cfg.pretrain_steps, cfg.pretrain_batch, pre_info.final_loss or 0 / 0, timings.pretrain or 0)
L[#L + 1] = string.format("| classifier | ResNet18, %d steps, batch %d, test accuracy %.3f | %.1f |", cfg.classifier_steps,
  cfg.classifier_batch, cls_info.test_accuracy_500 or 0 / 0, timings.classifier or 0)
L[#L + 1] = string.format("| featnet | feature CNN, %d steps, batch %d, test accuracy %.3f | %.1f |", cfg.featnet_steps,
  cfg.featnet_batch, feat_info.test_accuracy_500 or 0 / 0, timings.featnet or 0)
L[#L + 1] = string.format("| adversarial | D warm-up %d steps, joint %d steps, batch %d | %.1f |", cfg.warmup_steps,
  cfg.steps, cfg.adv_batch, timings.adversarial or 0)
L[#L + 1] = string.format("| eval | %d samples per model, %d sampling steps | %.1f |", eval_info.n or 0, cfg.sample_steps,
  timings.eval or 0)
L[#L + 1] = string.format("| total | | %.1f |", total)
L[#L + 1] = ""
if cache then
  L[#L + 1] = string.format("Pretraining stages from the shared cache `%s`: `%s`, `%s`, `%s` (their seconds are those of "
    .. "the run that computed them).", cache, stage_dirs.pretrain, stage_dirs.classifier, stage_dirs.featnet)
  L[#L + 1] = ""
end
L[#L + 1] = (table_md:gsub("^# [^\n]*\n", "## Pretrained vs fine-tuned\n"))
L[#L + 1] = "## Figures"
L[#L + 1] = ""
L[#L + 1] = "- `eval/samples.png`: pretrained (left) and fine-tuned (right) samples, same noise and labels; `eval/real.png`: real test images"
L[#L + 1] = "- `eval/spectrum.png`: radial power spectrum of each model relative to the real images"
L[#L + 1] = "- `plots/pretrain_loss.png`, `plots/classifier_loss.png`, `plots/featnet_loss.png`, `plots/adversarial_*.png`: loss curves"
write_file(out .. "/report.md", table.concat(L, "\n") .. "\n")

print("")
print(table_md)
say("results: %s/results.json, report: %s/report.md (stages %.1f s, this run %.1f s)", out, out, total, timings.this_run)
