--- paper_imagenet64: the paper's exact protocol on the official checkpoints.
--
--   build/advdiff experiments/paper_imagenet64.lua \
--     --set generator=models/64x64_diffusion.pt \
--     --set discriminator_backbone=models/resnet18-f37072fd.pth \
--     --set inception=models/pt_inception-2015-12-05-6726825d.pth \
--     --set data=data/imagenet64            (an image folder, or an .npz)
--
-- What it runs (../shared/ARCHITECTURE.md, "The paper's protocol"):
--   generator     guided-diffusion's class-conditional ImageNet 64x64 ADM (generator_config =
--                 "imagenet64": 192 channels, 3 res blocks, mult 1,2,3,4, attention at 32,16,8,
--                 64 channels per head, learned sigma, scale-shift norm, resblock up/down, new
--                 attention order, dropout 0.1; 1000-step cosine diffusion), loaded strictly
--   discriminator torchvision's ImageNet ResNet18, backbone and BatchNorm statistics frozen, fc
--                 replaced by [512 features, 128-d class embedding] -> 256 -> ReLU -> 1
--   data          classes 207 and 250, 500 images each, batch 32
--   phase 1       500 discriminator warm-up steps, G frozen
--   phase 2       1000 joint steps, lambda ramped linearly 0 -> 0.002, adversarial term only when
--                 mean(t)/(T-1) <= 0.5; AdamW lr_G 5e-6, lr_D 4e-5, no weight decay; training on
--                 the diffusion respaced to 100 steps
--   evaluation    100 samples from the pretrained and from the fine-tuned model, same noise and
--                 labels, 50 respaced steps, against 100 real images: sharpness, precision,
--                 recall, density, coverage, FID, KID, Inception Score, discriminator scores,
--                 the table with % change (ad.metrics.compare with pytorch-fid's InceptionV3)
--   The paper reports sharpness 0.0355 -> 0.1385 (+289.6%), precision 0.42 -> 0.28,
--   recall 0.14 -> 0.03.
--
-- Data: an .npz holding arr_0 (N, H, W, 3) u8 and arr_1 (N) ImageNet class indices (the
-- layout of guided-diffusion's reference batches, e.g. VIRTUAL_imagenet64_labeled.npz), or an
-- image folder with one sub-folder per class named by synset (all 1000 synsets present, so that
-- sorted names give ImageNet's indices, torchvision's rule), or any image folder plus
-- labels_file (lines "relative/path class_index"). Images are resized (center crop) to the
-- model's size.
--
-- Files a user must fetch (the script names the missing ones and where they are):
--   64x64_diffusion.pt                      guided-diffusion's README (openaipublic blob storage)
--   resnet18-f37072fd.pth                   torchvision: download.pytorch.org/models/
--   pt_inception-2015-12-05-6726825d.pth    pytorch-fid's GitHub release fid_weights
--
-- generator_config may also be a JSON file of create_model_and_diffusion options (or a fixture
-- manifest holding config.create_model_and_diffusion_kwargs): the test runs this script on the
-- small checkpoints of ../shared/fixtures that way.
--
-- Outputs under out (runs/paper_imagenet64): adversarial/ (the trainer's logs, plots and
-- checkpoint; an interrupted run resumes), generator.safetensors, discriminator.safetensors
-- (the fine-tuned weights), eval/ (table.md, results.json, samples.png, spectrum.png),
-- results.json (flat: fine-tuned metrics at the top level, "pretrained", "change_pct"),
-- report.md.
local ad = require "advdiff"
local adm = require "advdiff.models.adm"
local logm = require "advdiff.log"
local json = require "advdiff.log.json"

local cfg = ad.config {
  generator = "models/64x64_diffusion.pt", generator_config = "imagenet64",
  discriminator_backbone = "models/resnet18-f37072fd.pth",
  inception = "models/pt_inception-2015-12-05-6726825d.pth",
  data = "data/imagenet64", labels_file = "",
  classes = { 207, 250 }, per_class = 500, batch = 32,
  warmup_steps = 500, steps = 1000, lambda_adv = 0.002, gate_region = 0.5,
  lr_g = 5e-6, lr_d = 4e-5, grad_clip = 0.0, train_respacing = 100,
  eval_n = 100, sample_steps = 50, bootstrap = 200,
  seed = 0, device = "auto", amp = "", out = "runs/paper_imagenet64", save_every = 100,
}
local out = cfg.out:gsub("/+$", "")

local function say(fmt, ...) io.stdout:write(string.format(fmt, ...), "\n"); io.stdout:flush() end
local function exists(p) local f = io.open(p, "r"); if f then f:close() end return f ~= nil end
local function is_dir(p) return os.execute("test -d '" .. p:gsub("'", "'\\''") .. "'") == true end
local function write_file(p, s) local f = assert(io.open(p, "w")); f:write(s); f:close() end
local function read_json(p)
  local f = io.open(p, "r")
  if not f then return nil end
  local s = f:read("a"); f:close()
  local ok, v = pcall(json.decode, s)
  return ok and v or nil
end

---------------------------------------------------------------------------- the files

local missing = {}
local function need(key, path, what)
  if path == "" or not exists(path) then
    missing[#missing + 1] = string.format("  --set %s=%s\n      not found: %s", key, path, what)
  end
end
need("generator", cfg.generator, "64x64_diffusion.pt, guided-diffusion's class-conditional ImageNet 64x64 model.\n"
  .. "      Get it from the links in openai/guided-diffusion's README:\n"
  .. "      https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt")
need("discriminator_backbone", cfg.discriminator_backbone, "resnet18-f37072fd.pth, torchvision's ImageNet ResNet18 weights:\n"
  .. "      https://download.pytorch.org/models/resnet18-f37072fd.pth")
need("inception", cfg.inception, "pt_inception-2015-12-05-6726825d.pth, pytorch-fid's FID InceptionV3 weights:\n"
  .. "      https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
if cfg.data == "" or not (exists(cfg.data) or is_dir(cfg.data)) then
  missing[#missing + 1] = string.format("  --set data=%s\n      not found: ImageNet 64x64, an .npz with arr_0 (N, 64, 64, 3) u8 "
    .. "and arr_1 (N) class indices\n      (e.g. guided-diffusion's reference batch VIRTUAL_imagenet64_labeled.npz, linked "
    .. "from its evaluations/README.md),\n      or an image folder with one sub-folder per ImageNet synset (the "
    .. "ILSVRC-2012 train set or\n      image-net.org's downsampled Imagenet64_train converted to images)", cfg.data)
end
if cfg.generator_config ~= "imagenet64" and not exists(cfg.generator_config) then
  missing[#missing + 1] = string.format("  --set generator_config=%s\n      not found: 'imagenet64' or a JSON file of "
    .. "create_model_and_diffusion options", cfg.generator_config)
end
if #missing > 0 then
  io.stderr:write("paper_imagenet64: missing input files:\n" .. table.concat(missing, "\n") .. "\n"
    .. "Put them where the defaults point (models/, data/) or give their paths with --set.\n"
    .. "Without them, experiments/quickstart.lua runs the same method on Fashion-MNIST out of the box.\n")
  os.exit(2)
end

local device = cfg.device
if device == "auto" then device = (ad.cuda and ad.cuda.is_available()) and "cuda" or "cpu" end
local dev = device ~= "cpu" and device or nil
say("paper_imagenet64: device=%s out=%s warm-up %d + joint %d steps, batch %d, lambda %g, gate %g", device, out,
  cfg.warmup_steps, cfg.steps, cfg.batch, cfg.lambda_adv, cfg.gate_region)
logm.mkdir(out)

---------------------------------------------------------------------------- models

local opts
if cfg.generator_config == "imagenet64" then
  opts = adm.config("imagenet64")
else
  local f = assert(io.open(cfg.generator_config, "r"))
  local j = json.decode(f:read("a"))
  f:close()
  local src = j
  if type(j.config) == "table" and type(j.config.create_model_and_diffusion_kwargs) == "table" then
    src = {}
    for k, v in pairs(j.config.all_defaults_used or {}) do src[k] = v end
    for k, v in pairs(j.config.create_model_and_diffusion_kwargs) do src[k] = v end
  end
  opts = {}
  for k, v in pairs(src) do if type(k) == "string" and k:sub(1, 1) ~= "_" then opts[k] = v end end
end
if not opts.class_cond then error("paper_imagenet64: the protocol needs a class-conditional generator (class_cond)", 0) end
local num_classes = opts.num_classes or 1000
local function diffusion(respacing)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.timestep_respacing = respacing
  return ad.diffusion.create(o)
end

say("loading %s", cfg.generator)
local G0 = adm.from_checkpoint(cfg.generator, opts)   -- strict: every name and shape must match
if dev then G0:to(dev) end
G0:eval()
local G1 = adm.UNetModel(opts)
if dev then G1:to(dev) end
G1:load_state_dict((G0:state_dict()))

say("loading %s", cfg.discriminator_backbone)
local backbone = ad.models.resnet18 { num_classes = 1000 }
backbone:load_state_dict(ad.load(cfg.discriminator_backbone))
local D = ad.models.discriminator { backbone = backbone, num_classes = num_classes }
if dev then D:to(dev) end

---------------------------------------------------------------------------- data

local function dataset(extra)
  local o = { classes = cfg.classes }
  for k, v in pairs(extra or {}) do o[k] = v end
  if cfg.data:match("%.npz$") then return ad.data.NpzBatch(cfg.data, o) end
  if cfg.labels_file ~= "" then o.labels_file = cfg.labels_file end
  return ad.data.ImageFolder(cfg.data, o)
end
local size = opts.image_size
local train_ds = dataset { max_per_class = cfg.per_class }
say("data: %d images of classes %s", #train_ds, table.concat(cfg.classes, ", "))
local loader = ad.data.DataLoader(train_ds, { batch_size = cfg.batch, image_size = size, resize = "center", channels = 3,
  seed = cfg.seed, device = device })

---------------------------------------------------------------------------- adversarial fine-tuning

local adv_dir = out .. "/adversarial"
local settings = json.encode {
  generator = cfg.generator, backbone = cfg.discriminator_backbone, data = cfg.data, classes = cfg.classes,
  per_class = cfg.per_class, batch = cfg.batch, warmup = cfg.warmup_steps, steps = cfg.steps,
  lambda = cfg.lambda_adv, gate = cfg.gate_region, lr_g = cfg.lr_g, lr_d = cfg.lr_d, clip = cfg.grad_clip,
  respacing = cfg.train_respacing, seed = cfg.seed, amp = cfg.amp,
}
local done = read_json(out .. "/DONE")
local t_train = 0
if done and done.settings == settings and exists(out .. "/generator.safetensors") then
  say("[adversarial] done before: loading %s/generator.safetensors and discriminator.safetensors", out)
  G1:load_state_dict(ad.load(out .. "/generator.safetensors"))
  D:load_state_dict(ad.load(out .. "/discriminator.safetensors"))
  t_train = done.seconds or 0
else
  os.remove(out .. "/DONE")
  logm.mkdir(adv_dir)
  local resume = false
  local prev = io.open(adv_dir .. "/SETTINGS", "r")
  if prev then
    local s = prev:read("a"); prev:close()
    if s == settings and exists(adv_dir .. "/checkpoint.json") then resume = adv_dir .. "/checkpoint" end
  end
  write_file(adv_dir .. "/SETTINGS", settings)
  local t0 = ad._now()
  local run = ad.train.adversarial {
    G = G1, D = D, diffusion = diffusion(tostring(cfg.train_respacing)), data = loader,
    batch_size = cfg.batch, seed = cfg.seed, device = device,
    d_warmup_steps = cfg.warmup_steps, joint_steps = cfg.steps, optimizer = "adamw",
    lr_g = cfg.lr_g, lr_d = cfg.lr_d, weight_decay_g = 0, weight_decay_d = 0,
    grad_clip_g = cfg.grad_clip > 0 and cfg.grad_clip or false, grad_clip_d = cfg.grad_clip > 0 and cfg.grad_clip or false,
    lambda_adv = cfg.lambda_adv, lambda_schedule = "linear", lambda_ramp_steps = math.max(1, cfg.steps),
    t_gate = "batch_mean", t_region = cfg.gate_region, diffusion_loss = "mse", d_target = "pred_xstart",
    freeze_d_backbone = true, ema_decay = false, amp = cfg.amp ~= "" and cfg.amp or false,
    save_every = cfg.save_every, out_dir = adv_dir, resume = resume, name = "paper",
  }
  if resume then say("[adversarial] resuming at step %d", run.step_count) end
  run:run()
  run:close()
  t_train = ad._now() - t0
  ad.save(out .. "/generator.safetensors", (G1:state_dict()))
  ad.save(out .. "/discriminator.safetensors", (D:state_dict()))
  write_file(out .. "/DONE", json.encode { settings = settings, seconds = t_train } .. "\n")
end
loader:close()
G1:eval()
D:eval()

---------------------------------------------------------------------------- evaluation

local t_eval0 = ad._now()
local per = math.max(1, cfg.eval_n // #cfg.classes)
local eval_ds = dataset { max_per_class = per }
local el = ad.data.DataLoader(eval_ds, { batch_size = #eval_ds, shuffle = false, drop_last = false, image_size = size,
  resize = "center", channels = 3, device = device })
local real = el:next()
el:close()
local n = real.x:shape()[1]
local s0, s1 = table.unpack(ad.metrics.sample_models(diffusion(tostring(cfg.sample_steps)), { G0, G1 },
  { shape = { n, 3, size, size }, y = real.y, seed = cfg.seed, device = dev, progress = true,
    names = { "pretrained", "fine-tuned" } }))
local eval_dir = out .. "/eval"
logm.mkdir(eval_dir)
ad.save(eval_dir .. "/samples.npz", { pretrained = s0:cpu(), finetuned = s1:cpu(), labels = real.y:cpu() })
local res = ad.metrics.compare {
  real = real.x:cpu(), a = s0:cpu(), b = s1:cpu(), names = { "pretrained", "fine-tuned" }, range = { -1, 1 },
  extractor = ad.metrics.inception(cfg.inception, { device = dev }), D = D, labels = real.y:cpu(),
  bootstrap = cfg.bootstrap, seed = cfg.seed, out = eval_dir, device = dev,
}
local t_eval = ad._now() - t_eval0

local results = ad.metrics.flat_results(res.metrics, {
  n_eval = n, lambda_adv = cfg.lambda_adv, gate_region = cfg.gate_region,
  timings_s = { adversarial = t_train, eval = t_eval }, config = cfg,
  paper = { sharpness = { 0.0355, 0.1385 }, precision = { 0.42, 0.28 }, recall = { 0.14, 0.03 } } })
write_file(out .. "/results.json", json.encode(results, { indent = "  " }) .. "\n")
write_file(out .. "/report.md", "# The paper's protocol on ImageNet 64x64\n\n"
  .. string.format("Generator %s, backbone %s, data %s (classes %s, %d per class), device %s; adversarial training "
    .. "%.1f s, evaluation %.1f s.\nThe paper reports sharpness 0.0355 -> 0.1385 (+289.6%%), precision 0.42 -> 0.28, "
    .. "recall 0.14 -> 0.03.\n\n", cfg.generator, cfg.discriminator_backbone, cfg.data, table.concat(cfg.classes, ","),
    cfg.per_class, device, t_train, t_eval)
  .. (res.markdown:gsub("^# [^\n]*\n", "## Pretrained vs fine-tuned\n")))
print("")
print(res.markdown)
say("results: %s/results.json, report: %s/report.md", out, out)
