-- test_cuda_fixtures.lua: the golden fixtures (written by the reference code:
-- guided-diffusion, torchvision) run on CUDA, with the CPU tests' criteria:
--   adm_tiny: forward output (1e-4 relative), loss, input and weight gradients (1e-3),
--             and the same forward under bf16 autocast (5e-2);
--   resnet18: eval logits and features (1e-4), train-mode logits, gradients (1e-3) and the
--             BatchNorm running statistics (1e-5);
--   diffusion: q_sample and p_mean_variance on CUDA tensors (1e-5).
-- Fixtures: $ADVDIFF_FIXTURES, else ../shared/fixtures beside the checkout. Prints one
-- line per check and "fixtures on cuda: N passed, M failed"; exits 77 without a device.
local ad = require "advdiff"

local SELFTEST = os.getenv("ADVDIFF_OPS_SELFTEST") == "1"    -- run on the CPU: checks the script itself
local DEV = SELFTEST and "cpu" or "cuda"
if not SELFTEST and not ad.cuda.is_available() then
  print("test_cuda_fixtures: SKIP: no CUDA device: " .. ad.cuda.unavailable_reason())
  os.exit(77)
end

local fixtures_dir = require("advdiff.testing").fixtures_dir
local FIX = fixtures_dir()

local n_pass, n_fail = 0, 0
local function report(ok, line)
  if ok then n_pass = n_pass + 1 else n_fail = n_fail + 1 end
  print(string.format("%-5s %s", ok and "ok" or "FAIL", line))
end

-- the fixtures' criterion: max|got - ref| <= tol * max|ref|
local function check(name, got, ref, tol)
  local g, r = got:cpu():double(), ref:cpu():double()
  local same = table.concat(g:shape(), ",") == table.concat(r:shape(), ",")
  if not same then
    report(false, string.format("%s: shape [%s] vs [%s]", name, table.concat(g:shape(), ", "), table.concat(r:shape(), ", ")))
    return
  end
  local d = (g - r):abs():max():item()
  local s = r:abs():max():item()
  local rel = d / (s > 0 and s or 1)
  report(rel <= tol, string.format("%-44s rel %.2e (bound %.0e)", name, rel, tol))
end

local function guarded(name, fn)
  local ok, err = pcall(fn)
  if not ok then report(false, name .. ": " .. tostring(err)) end
end

local t0 = ad._now()

-- ---------------------------------------------------------------- ADM (guided-diffusion's UNet)
guarded("adm_tiny", function()
  local adm = ad.models.adm
  local dir = FIX .. "/adm_tiny/"
  local function load(n) return ad.load(dir .. n) end
  -- manifest.json's create_model_and_diffusion_kwargs
  local opts = { image_size = 32, num_channels = 32, num_res_blocks = 2, channel_mult = "1,2,2",
                 attention_resolutions = "16,8", num_heads = 4, num_head_channels = 16, num_heads_upsample = -1,
                 learn_sigma = true, class_cond = true, use_scale_shift_norm = true, resblock_updown = true,
                 use_new_attention_order = true, dropout = 0.0, use_fp16 = false, use_checkpoint = false }
  local m = adm.UNetModel(opts)
  m:load_state_dict(load("adm_tiny.pt"))
  m:eval()
  m:to(DEV)
  local x, t, y = load("x.npy"):to(DEV), load("t.npy"):to(DEV), load("y.npy"):to(DEV)
  local out = ad.no_grad(function() return m(x, t, y) end)
  check("adm_tiny output", out, load("output.npy"), 1e-4)
  local xg = x:clone():detach()
  xg.requires_grad = true
  local loss = (m(xg, t, y) * load("loss_weight.npy"):to(DEV)):sum()
  loss:backward()
  check("adm_tiny loss", loss:view(1), load("loss.npy"), 1e-5)
  check("adm_tiny grad x", xg.grad, load("grad_x.npy"), 1e-3)
  local params = {}
  for name, p in m:named_parameters() do params[name] = p end
  for _, e in ipairs({ { "input_blocks.0.0.weight", "grad_input_blocks_0_0_weight.npy" },
                       { "input_blocks.4.1.qkv.weight", "grad_input_blocks_4_1_qkv_weight.npy" },
                       { "out.2.weight", "grad_out_2_weight.npy" },
                       { "label_emb.weight", "grad_label_emb_weight.npy" } }) do
    check("adm_tiny grad " .. e[1], params[e[1]].grad, load(e[2]), 1e-3)
  end
  local outb = ad.no_grad(function() return ad.autocast("bf16", function() return m(x, t, y) end) end)
  check("adm_tiny output under bf16 autocast", outb:float(), load("output.npy"), 5e-2)
end)

-- ---------------------------------------------------------------- ResNet-18 (torchvision)
guarded("resnet18", function()
  local dir = FIX .. "/resnet18/"
  local function npy(n) return ad.load(dir .. n .. ".npy"):to(DEV) end
  local ckpt = ad.load(dir .. "resnet18.pth")
  local m = ad.models.resnet18 { num_classes = 1000 }
  m:load_state_dict(ckpt)
  m:to(DEV)
  m:eval()
  local x = npy("input")
  check("resnet18 eval logits", ad.no_grad(function() return m(x) end), npy("logits_eval"), 1e-4)
  check("resnet18 eval features", ad.no_grad(function() return m:features(x) end), npy("features_eval"), 1e-4)
  m:load_state_dict(ckpt)                  -- fresh BatchNorm statistics
  m:to(DEV)
  m:train()
  m:zero_grad()
  local xg = x:clone():detach()
  xg.requires_grad = true
  local logits = m(xg)
  check("resnet18 train logits", logits, npy("logits_train"), 1e-4)
  local loss = (logits * npy("loss_weight")):sum()
  check("resnet18 train loss", loss:view(1), npy("loss_train"), 1e-4)
  loss:backward()
  check("resnet18 grad input", xg.grad, npy("grad_input_train"), 1e-3)
  check("resnet18 grad conv1.weight", m.conv1.weight.grad, npy("grad_conv1_weight_train"), 1e-3)
  check("resnet18 grad fc.weight", m.fc.weight.grad, npy("grad_fc_weight_train"), 1e-3)
  check("resnet18 bn1.running_mean", m.bn1.running_mean, npy("bn1_running_mean_after_train"), 1e-5)
  check("resnet18 bn1.running_var", m.bn1.running_var, npy("bn1_running_var_after_train"), 1e-5)
end)

-- ---------------------------------------------------------------- Gaussian diffusion steps
guarded("diffusion", function()
  local dir = FIX .. "/diffusion/"
  local function load(n) return ad.load(dir .. n):to(DEV) end
  local d = ad.diffusion.create { steps = 1000, learn_sigma = true, sigma_small = false, noise_schedule = "cosine",
    use_kl = false, predict_xstart = false, rescale_timesteps = false, rescale_learned_sigmas = false,
    timestep_respacing = "100" }
  local x0, noise, t = load("step_x_start.npy"), load("step_noise.npy"), load("step_t.npy")
  check("diffusion q_sample", d:q_sample(x0, t, noise), load("step_q_sample.npy"), 1e-5)
  local output = load("step_model_output.npy")
  local model = function() return output end
  local out = d:p_mean_variance(model, load("step_q_sample.npy"), t, { clip_denoised = true })
  check("diffusion p_mean_variance mean", out.mean, load("step_pmv_clip_mean.npy"), 1e-5)
  check("diffusion p_mean_variance pred_xstart", out.pred_xstart, load("step_pmv_clip_pred_xstart.npy"), 1e-5)
end)

print(string.format("fixtures on %s: %d passed, %d failed (%.1f s)", DEV, n_pass, n_fail, ad._now() - t0))
os.exit(n_fail == 0 and 0 or 1)
