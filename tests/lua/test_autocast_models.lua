-- test_autocast_models.lua: the golden fixtures (written in f32 by guided-diffusion,
-- torchvision and pytorch-fid) run under ad.autocast, with the bounds a bf16/f16 model
-- can meet: adm_tiny's output and gradients (bf16 and f16), the respaced p_sample_loop
-- on adm_tiny with the fixture's per-step noise (bf16), ResNet-18's eval logits and
-- features (bf16), and InceptionV3's FID features (bf16).
--
-- Device: ADVDIFF_TEST_DEVICE=cuda runs the same checks on CUDA tensors (tests/gpu/run.sh
-- does); the default is the CPU. Without the device asked for, every test skips.
--
-- The bounds. Under autocast every conv/linear/attention input is rounded to the autocast
-- dtype (unit roundoff u = 2^-8 for bf16, 2^-11 for f16; products are accumulated in f32),
-- and nothing else is, so each error below is a rounding error of relative size ~u carried
-- through the network, and scales with u: the bf16 errors measured on the CPU are 8x the
-- f16 ones, as 2^-8 / 2^-11 says. Each bound is therefore k*u, one k per quantity for both
-- dtypes, with k about twice the largest error seen on the CPU (in units of u), which leaves
-- room for another accumulation order (cuBLAS, cuDNN, tensor cores) but not for a real fault:
-- an input cast to the wrong dtype, a norm or softmax run in bf16 when it should be f32, a
-- gradient of the wrong dtype or a lost path are all far outside (an f32 result, by
-- contrast, is 1e-6 off). Errors are relative to the reference: l2 = |got - ref| / |ref|
-- and max = max|got - ref| / max|ref|. Measured on the CPU, in units of u (bf16 / f16):
--   adm_tiny output           l2 3.0 / 2.9   max 4.2 / 3.4    -> bounds l2 6u,  max 10u
--   adm_tiny gradients        l2 <= 10.3     max <= 11.3      -> bounds l2 20u, max 25u
--     (x, input_blocks.0.0.weight, input_blocks.4.1.qkv.weight, out.2.weight, label_emb.weight)
--   p_sample_loop final       l2 0.94 (bf16), max|diff| 15.7u -> bounds l2 2u,  max|diff| 35u
--     (10 steps; the clamp of pred_xstart to [-1, 1] keeps the error from growing)
--   resnet18 eval logits      l2 4.9, max 4.9; features l2 4.8, max 5.8 -> l2 10u, max 12u
--   inception blocks 0, 1     l2 0.8, max 1.5                 -> l2 2u,  max 3u
--   inception block 2         l2 8.1, max 10.1                -> l2 16u, max 20u
--   inception features        l2 32,  max 50                  -> l2 64u, max 100u
-- The Inception error grows with depth because these random weights amplify rounding: the
-- fixture's own f32 run is 1.7e-5 (l2) from f64, about 290 f32 units; its bf16 features are
-- good to about 12%, which is what a bf16 FID network with these weights can give.
local ad = require "advdiff"
local T = require "advdiff.testing"

local DEV = os.getenv("ADVDIFF_TEST_DEVICE")
if DEV == nil or DEV == "" then DEV = "cpu" end
local function need_device()
  if DEV ~= "cpu" and not ad.cuda.is_available() then
    skip("ADVDIFF_TEST_DEVICE=" .. DEV .. " but no CUDA device: " .. ad.cuda.unavailable_reason())
  end
end
local function dev(t) return DEV == "cpu" and t or t:to(DEV) end

local fixtures_dir = T.fixtures_dir
local FIX = fixtures_dir()
local function npy(dir, name) return ad.load(FIX .. "/" .. dir .. "/" .. name) end

local U = { bf16 = 2 ^ -8, f16 = 2 ^ -11 }

-- l2 and max relative errors within k_l2*u and k_max*u
local function check(name, got, ref, u, k_l2, k_max)
  local g, r = got:cpu():double(), ref:double()
  T.check_shape(g, r:shape())
  local d = g - r
  local l2 = d:norm():item() / r:norm():item()
  local mx = d:abs():max():item() / r:abs():max():item()
  if not (l2 <= k_l2 * u and mx <= k_max * u) then
    error(string.format("%s: l2 %.3g (%.1fu, bound %gu), max %.3g (%.1fu, bound %gu)", name, l2, l2 / u, k_l2,
      mx, mx / u, k_max), 2)
  end
end

------------------------------------------------------------------------------ adm_tiny

-- fixtures/adm_tiny/manifest.json config.create_model_and_diffusion_kwargs
local ADM_OPTS = { image_size = 32, num_channels = 32, num_res_blocks = 2, channel_mult = "1,2,2",
  attention_resolutions = "16,8", num_heads = 4, num_head_channels = 16, num_heads_upsample = -1,
  learn_sigma = true, class_cond = true, use_scale_shift_norm = true, resblock_updown = true,
  use_new_attention_order = true, dropout = 0.0, use_fp16 = false, use_checkpoint = false }

local tiny   -- built once: the model runs are what this file spends its time on
local function adm_tiny()
  if not tiny then
    tiny = ad.models.adm.UNetModel(ADM_OPTS)
    tiny:load_state_dict(npy("adm_tiny", "adm_tiny.pt"))
    tiny:eval()
    tiny:to(DEV)
  end
  tiny:zero_grad()
  return tiny
end

local GRADS = {
  { "input_blocks.0.0.weight", "grad_input_blocks_0_0_weight.npy" },
  { "input_blocks.4.1.qkv.weight", "grad_input_blocks_4_1_qkv_weight.npy" },
  { "out.2.weight", "grad_out_2_weight.npy" },
  { "label_emb.weight", "grad_label_emb_weight.npy" },
}

local function adm_golden(dt)
  need_device()
  local m, u = adm_tiny(), U[dt]
  local function load(n) return npy("adm_tiny", n) end
  local x = dev(load("x.npy"))
  x.requires_grad = true
  local out = ad.autocast(dt, function() return m(x, dev(load("t.npy")), dev(load("y.npy"))) end)
  assert(out:dtype() == dt, "the output conv runs in " .. dt .. ", got " .. out:dtype())
  check("output", out, load("output.npy"), u, 6, 10)
  -- the loss outside the scope, in f32, as a training step with master weights computes it
  local loss = (out:float() * dev(load("loss_weight.npy"))):sum()
  loss:backward()
  assert(x.grad:dtype() == "f32", "grad x is " .. x.grad:dtype())
  check("grad x", x.grad, load("grad_x.npy"), u, 20, 25)
  local params = {}
  for name, p in m:named_parameters() do params[name] = p end
  for _, e in ipairs(GRADS) do
    local g = params[e[1]].grad
    assert(g and g:dtype() == "f32", e[1] .. ": the f32 parameter gets an f32 gradient")
    check("grad " .. e[1], g, load(e[2]), u, 20, 25)
  end
  for _, p in ipairs(m:parameters()) do assert(p:dtype() == "f32", "parameters stay f32") end
end

test("adm_tiny under bf16 autocast: output, input and parameter gradients vs the f32 reference", function()
  adm_golden("bf16")
end)

test("adm_tiny under f16 autocast: output, input and parameter gradients vs the f32 reference", function()
  adm_golden("f16")
end)

test("diffusion: respaced p_sample_loop on adm_tiny under bf16 autocast, the fixture's step noise", function()
  need_device()
  local m = adm_tiny()
  local function load(n) return npy("diffusion", n) end
  local d = ad.diffusion.create { steps = 1000, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = "10" }
  local step_noise = load("loop_step_noise.npy")
  local drawn = 0
  local final = ad.autocast("bf16", function()
    return d:p_sample_loop(m, { 2, 3, 32, 32 }, { noise = dev(load("loop_x_T.npy")), clip_denoised = true,
      model_kwargs = { y = dev(load("loop_y.npy")) }, progress = false,
      noise_fn = function(like)
        drawn = drawn + 1
        return dev(step_noise:select(1, drawn)):to(like:dtype())   -- iteration i gets loop_step_noise[i]
      end })
  end)
  assert(drawn == 10)
  -- the process's arithmetic stays in the sample's f32; only the U-Net runs in bf16
  assert(final:dtype() == "f32", "final sample is " .. final:dtype())
  assert(final:device():sub(1, #DEV) == DEV, "final sample on " .. final:device())
  local ref = load("loop_final.npy")
  check("p_sample_loop final", final, ref, U.bf16, 2, 1e9)
  local diff = (final:cpu():double() - ref:double()):abs():max():item()
  assert(diff <= 35 * U.bf16, string.format("p_sample_loop final: max|diff| %.3g > 35u = %.3g", diff, 35 * U.bf16))
end)

------------------------------------------------------------------------------ resnet18, inception

test("resnet18 under bf16 autocast: eval logits and pooled features vs the f32 reference", function()
  need_device()
  local m = ad.models.resnet18 { num_classes = 1000 }
  m:load_state_dict(npy("resnet18", "resnet18.pth"))
  m:eval()
  m:to(DEV)
  local x = dev(npy("resnet18", "input.npy"))
  local logits, feats = ad.no_grad(function()
    return ad.autocast("bf16", function() return m(x), m:features(x) end)
  end)
  assert(logits:dtype() == "bf16" and feats:dtype() == "bf16", logits:dtype() .. ", " .. feats:dtype())
  check("logits_eval", logits, npy("resnet18", "logits_eval.npy"), U.bf16, 10, 12)
  check("features_eval", feats, npy("resnet18", "features_eval.npy"), U.bf16, 10, 12)
  -- batch_norm kept the running statistics f32 and untouched in eval mode
  assert(m.bn1.running_mean:dtype() == "f32")
end)

test("inception_v3_fid under bf16 autocast: block outputs and 2048-d features vs the f32 reference", function()
  need_device()
  -- the GPU machine gets only the fixtures that fit its 64 MB carry (tests/gpu/prepare.sh)
  local probe = io.open(FIX .. "/inception_fid/pt_inception_fid_random_fp16.pth", "rb")
  if not probe then skip("the inception_fid fixture is not in " .. FIX) end
  probe:close()
  local m = ad.models.inception_v3_fid()
  m:load_state_dict(npy("inception_fid", "pt_inception_fid_random_fp16.pth"))
  m:eval()
  m:to(DEV)
  local blocks = ad.no_grad(function()
    return ad.autocast("bf16", function() return m:blocks(dev(npy("inception_fid", "input.npy"))) end)
  end)
  local bounds = { { 2, 3 }, { 2, 3 }, { 16, 20 } }
  for i = 1, 3 do
    check("block" .. (i - 1) .. " spatial mean", blocks[i]:float():mean({ 3, 4 }),
      npy("inception_fid", "block" .. (i - 1) .. "_spatial_mean.npy"), U.bf16, bounds[i][1], bounds[i][2])
  end
  local feats = blocks[4]:flatten(2)
  T.check_shape(feats, { 4, 2048 })
  check("features", feats, npy("inception_fid", "features.npy"), U.bf16, 64, 100)
end)
