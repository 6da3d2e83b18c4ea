-- The Gaussian diffusion process (advdiff.diffusion) against guided-diffusion's
-- own outputs (fixtures/diffusion, written by the reference code): schedules,
-- respacing, single-step ops with a fixed fake model output, training losses,
-- and the respaced sampling loops driven by the adm_tiny U-Net with injected
-- noise. Plus gradient flow, samplers, options and error messages.
local ad = require "advdiff"
local T = require "advdiff.testing"
local diffusion = ad.diffusion

local fixtures_dir = T.fixtures_dir
local FIX = fixtures_dir()
local function load(name) return ad.load(FIX .. "/diffusion/" .. name) end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern, 1, true), "error '" .. tostring(err) .. "' does not contain '" .. pattern .. "'")
end

local function shape_eq(a, b) return table.concat(a:shape(), ",") == table.concat(b:shape(), ",") end

local function max_abs(t) return t:abs():max():item() end

-- max|got - ref| <= scale * max(1, max|ref|) (README: step ops and losses use scale 1e-5)
local function check_rel(name, got, ref, scale)
  assert(ad.is_tensor(got), name .. ": not a tensor")
  if not shape_eq(got, ref) then
    error(string.format("%s: shape [%s] vs reference [%s]", name, table.concat(got:shape(), ", "),
      table.concat(ref:shape(), ", ")), 2)
  end
  local diff = max_abs(got:double() - ref:double())
  local tol = scale * math.max(1, max_abs(ref:double()))
  if not (diff <= tol) then error(string.format("%s: max|diff| = %.4g > %.4g", name, diff, tol), 2) end
end

-- max|got - ref| <= tol
local function check_abs(name, got, ref, tol)
  if not shape_eq(got, ref) then
    error(string.format("%s: shape [%s] vs reference [%s]", name, table.concat(got:shape(), ", "),
      table.concat(ref:shape(), ", ")), 2)
  end
  local diff = max_abs(got:double() - ref:double())
  if not (diff <= tol) then error(string.format("%s: max|diff| = %.4g > %.4g", name, diff, tol), 2) end
end

local function assert_list_eq(name, got, want)
  assert(#got == #want, string.format("%s: %d values, expected %d", name, #got, #want))
  for i = 1, #want do
    if got[i] ~= want[i] then error(string.format("%s[%d] = %s, expected %s", name, i, tostring(got[i]), tostring(want[i])), 2) end
  end
end

------------------------------------------------------------------------------ schedules and respacing

test("beta schedules and derived float64 arrays match guided-diffusion (rel 1e-12)", function()
  for _, name in ipairs { "linear", "cosine" } do
    local d = diffusion.create { steps = 1000, noise_schedule = name }
    assert(d.betas:dtype() == "f64" and d.alphas_cumprod:dtype() == "f64")
    T.assert_close(d.betas, load("betas_" .. name .. "_1000.npy"), { atol = 0, rtol = 1e-12 }, name .. " betas")
    T.assert_close(d.alphas_cumprod, load("alphas_cumprod_" .. name .. "_1000.npy"), { atol = 0, rtol = 1e-12 },
      name .. " alphas_cumprod")
    T.assert_close(d.posterior_log_variance_clipped, load("posterior_log_variance_clipped_" .. name .. "_1000.npy"),
      { atol = 0, rtol = 1e-12 }, name .. " posterior_log_variance_clipped")
    T.assert_close(ad.tensor(diffusion.get_named_beta_schedule(name, 1000), { dtype = "f64" }),
      load("betas_" .. name .. "_1000.npy"), { atol = 0, rtol = 1e-12 }, "get_named_beta_schedule")
    assert(d.num_timesteps == 1000 and d.original_num_steps == 1000)
  end
end)

test("derived arrays follow their definitions", function()
  local d = diffusion.create { steps = 50, noise_schedule = "linear" }
  local b, ac = d.betas:tolist(), d.alphas_cumprod:tolist()
  -- linear schedule scaled by 1000/steps
  assert(math.abs(b[1] - 20 * 0.0001) < 1e-15 and math.abs(b[50] - 20 * 0.02) < 1e-15)
  local prev, nxt = d.alphas_cumprod_prev:tolist(), d.alphas_cumprod_next:tolist()
  assert(prev[1] == 1.0 and nxt[50] == 0.0 and prev[2] == ac[1] and nxt[1] == ac[2])
  local pv, c1, c2 = d.posterior_variance:tolist(), d.posterior_mean_coef1:tolist(), d.posterior_mean_coef2:tolist()
  for i = 2, 50 do
    local want = b[i] * (1 - ac[i - 1]) / (1 - ac[i])
    assert(math.abs(pv[i] - want) <= 1e-15 * want)
    assert(math.abs(c1[i] - b[i] * math.sqrt(ac[i - 1]) / (1 - ac[i])) < 1e-15)
    assert(math.abs(c2[i] - (1 - ac[i - 1]) * math.sqrt(1 - b[i]) / (1 - ac[i])) < 1e-15)
  end
  local s1, s2 = d.sqrt_recip_alphas_cumprod:tolist(), d.sqrt_recipm1_alphas_cumprod:tolist()
  assert(math.abs(s1[7] - math.sqrt(1 / ac[7])) < 1e-15 and math.abs(s2[7] - math.sqrt(1 / ac[7] - 1)) < 1e-15)
  -- the cosine schedule clips at 0.999
  local cb = diffusion.get_named_beta_schedule("cosine", 1000)
  assert(cb[1000] == 0.999)
end)

test("space_timesteps and SpacedDiffusion betas match guided-diffusion", function()
  for _, r in ipairs { { "100", "100" }, { "50", "50" }, { "ddim25", "ddim25" }, { "10,10,10", "10_10_10" }, { "10", "10" } } do
    local spec, tag = r[1], r[2]
    local want = load("respace_" .. tag .. "_timesteps.npy"):tolist()
    assert_list_eq("space_timesteps(1000, '" .. spec .. "')", diffusion.space_timesteps(1000, spec), want)
    for _, name in ipairs { "linear", "cosine" } do
      local d = diffusion.create { steps = 1000, noise_schedule = name, timestep_respacing = spec }
      assert(d.num_timesteps == #want and d.original_num_steps == 1000)
      assert_list_eq("timestep_map", d.timestep_map, want)
      T.assert_close(d.timestep_map, load("respace_" .. tag .. "_timesteps.npy"), { atol = 0, rtol = 0 })
      T.assert_close(d.betas, load("respace_" .. tag .. "_betas_" .. name .. ".npy"), { atol = 0, rtol = 1e-12 },
        spec .. " " .. name .. " betas")
    end
  end
  -- list of section counts and Python's round-half-to-even
  assert_list_eq("sections", diffusion.space_timesteps(300, { 10, 15, 20 }), diffusion.space_timesteps(300, "10,15,20"))
  assert_list_eq("half to even", diffusion.space_timesteps(6, "3"), { 0, 2, 5 })   -- cur_idx 2.5 -> 2
  assert_list_eq("one step", diffusion.space_timesteps(10, "1"), { 0 })
end)

------------------------------------------------------------------------------ single steps

local function step_diffusion()
  return diffusion.create { steps = 1000, learn_sigma = true, sigma_small = false, noise_schedule = "cosine",
    use_kl = false, predict_xstart = false, rescale_timesteps = false, rescale_learned_sigmas = false,
    timestep_respacing = "100" }
end

-- a model that returns a fixed output and checks the timesteps it receives
local function fixed_model(output, want_t)
  local calls = 0
  local want = want_t and want_t:tolist()
  local fn = function(x, t, kwargs)
    calls = calls + 1
    assert(type(kwargs) == "table", "the model gets a model_kwargs table")
    if want then
      assert(t:dtype() == "i64", "model timesteps are i64, got " .. t:dtype())
      assert_list_eq("model timesteps", t:tolist(), want)
    end
    return output
  end
  return fn, function() return calls end
end

test("q_sample, p_mean_variance and predict_xstart_from_eps (step_* fixtures)", function()
  local d = step_diffusion()
  local x0, noise, t = load("step_x_start.npy"), load("step_noise.npy"), load("step_t.npy")
  local model = fixed_model(load("step_model_output.npy"), load("step_model_t.npy"))
  local x_t = d:q_sample(x0, t, noise)
  check_rel("q_sample", x_t, load("step_q_sample.npy"), 1e-5)
  x_t = load("step_q_sample.npy")
  local out = d:p_mean_variance(model, x_t, t, { clip_denoised = true })
  check_rel("pmv clip mean", out.mean, load("step_pmv_clip_mean.npy"), 1e-5)
  check_rel("pmv clip variance", out.variance, load("step_pmv_clip_variance.npy"), 1e-5)
  check_rel("pmv clip log_variance", out.log_variance, load("step_pmv_clip_log_variance.npy"), 1e-5)
  check_rel("pmv clip pred_xstart", out.pred_xstart, load("step_pmv_clip_pred_xstart.npy"), 1e-5)
  assert(out.mean:dtype() == "f32" and out.variance:dtype() == "f32")
  out = d:p_mean_variance(model, x_t, t, { clip_denoised = false })
  check_rel("pmv noclip mean", out.mean, load("step_pmv_noclip_mean.npy"), 1e-5)
  check_rel("pmv noclip pred_xstart", out.pred_xstart, load("step_pmv_noclip_pred_xstart.npy"), 1e-5)
  local eps = load("step_model_output.npy"):narrow(2, 1, 3)
  check_rel("predict_xstart_from_eps", d:predict_xstart_from_eps(x_t, t, eps), load("step_predict_xstart_from_eps.npy"), 1e-5)
  check_rel("_predict_xstart_from_eps", d:_predict_xstart_from_eps(x_t, t, eps), load("step_predict_xstart_from_eps.npy"), 1e-5)
  -- the inverse relations
  local xs = d:predict_xstart_from_eps(x_t, t, eps)
  check_rel("predict_eps_from_xstart", d:predict_eps_from_xstart(x_t, t, xs), eps, 1e-4)
  local mean = d:q_posterior_mean_variance(xs, x_t, t)
  check_rel("predict_xstart_from_xprev", d:predict_xstart_from_xprev(x_t, t, mean), xs, 1e-4)
end)

test("p_sample and ddim_sample with injected noise (step_* fixtures)", function()
  local d = step_diffusion()
  local t, x_t = load("step_t.npy"), load("step_q_sample.npy")
  local model, calls = fixed_model(load("step_model_output.npy"), load("step_model_t.npy"))
  local step_noise = load("step_step_noise.npy")
  local drawn = 0
  local noise_fn = function(like)
    drawn = drawn + 1
    assert(shape_eq(like, step_noise))
    return step_noise
  end
  local out = d:p_sample(model, x_t, t, { clip_denoised = true, noise_fn = noise_fn })
  check_rel("p_sample", out.sample, load("step_p_sample.npy"), 1e-5)
  check_rel("p_sample pred_xstart", out.pred_xstart, load("step_pmv_clip_pred_xstart.npy"), 1e-5)
  out = d:ddim_sample(model, x_t, t, { clip_denoised = true, eta = 0.0, noise_fn = noise_fn })
  check_rel("ddim eta 0", out.sample, load("step_ddim_eta00.npy"), 1e-5)
  out = d:ddim_sample(model, x_t, t, { clip_denoised = true, eta = 0.5, noise_fn = noise_fn })
  check_rel("ddim eta 0.5", out.sample, load("step_ddim_eta05.npy"), 1e-5)
  assert(drawn == 3 and calls() == 3)
  -- a diffusion-wide noise_fn is used when the call gives none
  local d2 = diffusion.create { steps = 1000, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = "100",
    noise_fn = noise_fn }
  check_rel("p_sample (create's noise_fn)", d2:p_sample(model, x_t, t).sample, load("step_p_sample.npy"), 1e-5)
end)

------------------------------------------------------------------------------ training losses

local function check_training(prefix, respacing)
  local d = diffusion.create { steps = 1000, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = respacing }
  local x0, noise, t = load(prefix .. "x_start.npy"), load(prefix .. "noise.npy"), load(prefix .. "t.npy")
  local want_t = {}
  for i, s in ipairs(t:tolist()) do want_t[i] = d.timestep_map[s + 1] end
  local seen_x
  local model = function(x, mt, kwargs)
    seen_x = x
    assert_list_eq("model timesteps", mt:tolist(), want_t)
    assert(kwargs.y == 7)
    return load(prefix .. "model_output.npy")
  end
  local terms = d:training_losses(model, x0, t, { noise = noise, model_kwargs = { y = 7 } })
  check_rel(prefix .. "x_t", seen_x, load(prefix .. "x_t.npy"), 1e-5)
  check_rel(prefix .. "x_t (returned)", terms.x_t, load(prefix .. "x_t.npy"), 1e-5)
  check_rel(prefix .. "mse", terms.mse, load(prefix .. "mse.npy"), 1e-5)
  check_rel(prefix .. "vb", terms.vb, load(prefix .. "vb.npy"), 1e-5)
  check_rel(prefix .. "loss", terms.loss, load(prefix .. "loss.npy"), 1e-5)
  assert(terms.loss:dim() == 1 and terms.loss:shape()[1] == 4)
end

test("training_losses on the respaced process (train_resp_*)", function()
  check_training("train_resp_", "100")
end)

test("training_losses on the full 1000-step process (train_full_*)", function()
  check_training("train_full_", "")
end)

test("hybrid loss: the VB term trains only the variance channels", function()
  local d = diffusion.create { steps = 100, learn_sigma = true, noise_schedule = "cosine" }
  local x0 = ad.rand(3, 2, 4, 4, { dtype = "f64" }) * 2 - 1
  local noise = ad.randn(3, 2, 4, 4, { dtype = "f64" })
  local t = ad.tensor({ 0, 37, 99 }, { dtype = "i64" })
  local out = (ad.randn(3, 4, 4, 4, { dtype = "f64" }) * 0.5):detach()
  out.requires_grad = true
  local model = function() return out end
  local terms = d:training_losses(model, x0, t, { noise = noise })
  terms.vb:sum():backward()
  local g = out.grad
  assert(max_abs(g:narrow(2, 1, 2)) == 0, "vb must not reach the mean channels")
  assert(max_abs(g:narrow(2, 3, 2)) > 0, "vb trains the variance channels")
  out.grad = nil
  terms = d:training_losses(model, x0, t, { noise = noise })
  terms.mse:sum():backward()
  assert(max_abs(out.grad:narrow(2, 3, 2)) == 0 and max_abs(out.grad:narrow(2, 1, 2)) > 0)
end)

test("gradcheck: training_losses in f64 (hybrid MSE + VB, rescaled KL)", function()
  local d = diffusion.create { steps = 100, learn_sigma = true, noise_schedule = "linear", timestep_respacing = "5" }
  local x0 = (ad.rand(3, 2, 2, 3, { dtype = "f64" }) * 1.6 - 0.8)
  local noise = ad.randn(3, 2, 2, 3, { dtype = "f64" })
  local t = ad.tensor({ 0, 2, 4 }, { dtype = "i64" })
  -- the VB term stops the mean's gradient, which finite differences cannot see:
  -- check the loss through the variance channels and the MSE through the mean channels
  local mean = (ad.randn(3, 2, 2, 3, { dtype = "f64" }) * 0.3):detach()
  local var = (ad.rand(3, 2, 2, 3, { dtype = "f64" }) * 1.8 - 0.9):detach()
  mean.requires_grad, var.requires_grad = true, true
  T.gradcheck(function(v)
    return d:training_losses(function() return ad.cat({ mean, v }, 2) end, x0, t, { noise = noise }).loss
  end, { var }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
  T.gradcheck(function(m)
    return d:training_losses(function() return ad.cat({ m, var }, 2) end, x0, t, { noise = noise }).mse
  end, { mean }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
  mean.grad = nil
  d:training_losses(function() return ad.cat({ mean, var }, 2) end, x0, t, { noise = noise }).loss:sum():backward()
  local mse_only = mean.grad
  mean.grad = nil
  d:training_losses(function() return ad.cat({ mean, var }, 2) end, x0, t, { noise = noise }).mse:sum():backward()
  T.assert_close(mse_only, mean.grad, { atol = 1e-14, rtol = 1e-12 }, "loss reaches the mean only through mse")
  -- rescaled KL (use_kl) and fixed variances
  local dk = diffusion.create { steps = 20, noise_schedule = "cosine", use_kl = true }
  local o2 = (ad.randn(3, 2, 2, 3, { dtype = "f64" }) * 0.3):detach()
  o2.requires_grad = true
  local t2 = ad.tensor({ 0, 9, 19 }, { dtype = "i64" })
  T.gradcheck(function(o)
    return dk:training_losses(function() return o end, x0, t2, { noise = noise }).loss
  end, { o2 }, { eps = 1e-6, atol = 1e-6, rtol = 1e-4 })
end)

test("training_losses backward through a tiny conv model", function()
  local nn = ad.nn
  local d = diffusion.create { steps = 50, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = "10" }
  local conv = nn.Conv2d(3, 6, 3, { padding = 1 })
  local emb = nn.Embedding(50, 6)
  local model = function(x, t) return conv(x) + emb(t):view(-1, 6, 1, 1) end
  local x0 = ad.rand(2, 3, 8, 8) * 2 - 1
  local t = ad.tensor({ 3, 9 }, { dtype = "i64" })
  local terms = d:training_losses(model, x0, t)
  for _, k in ipairs { "loss", "mse", "vb" } do assert(terms[k]:shape()[1] == 2, k) end
  terms.loss:mean():backward()
  assert(conv.weight.grad and max_abs(conv.weight.grad) > 0)
  assert(emb.weight.grad and max_abs(emb.weight.grad) > 0)
  -- RESCALED_MSE scales vb by num_timesteps / 1000
  local d2 = diffusion.create { steps = 50, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = "10",
    rescale_learned_sigmas = true }
  local noise = ad.randn(2, 3, 8, 8)
  local a = d:training_losses(model, x0, t, { noise = noise })
  local b = d2:training_losses(model, x0, t, { noise = noise })
  assert(d2.loss_type == "rescaled_mse")
  T.assert_close(b.vb, a.vb * (10 / 1000), { atol = 1e-7, rtol = 1e-5 })
  T.assert_close(b.mse, a.mse)
end)

------------------------------------------------------------------------------ the sampling loops on adm_tiny

-- the adm_tiny U-Net with the reference weights (built once: its runs are what
-- this file spends its time on)
local tiny
local function adm_tiny()
  if tiny then return tiny end
  local adm = require "advdiff.models.adm"
  -- fixtures/adm_tiny/manifest.json config.create_model_and_diffusion_kwargs
  tiny = adm.UNetModel {
    image_size = 32, num_channels = 32, num_res_blocks = 2, channel_mult = "1,2,2", attention_resolutions = "16,8",
    num_heads = 4, num_head_channels = 16, num_heads_upsample = -1, learn_sigma = true, class_cond = true,
    use_scale_shift_norm = true, resblock_updown = true, use_new_attention_order = true, dropout = 0.0,
    use_fp16 = false, use_checkpoint = false,
  }
  tiny:load_state_dict(ad.load(FIX .. "/adm_tiny/adm_tiny.pt"))
  tiny:eval()
  return tiny
end

local function loop_diffusion()
  return diffusion.create { steps = 1000, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = "10" }
end

test("p_sample_loop on adm_tiny with injected noise: every step and the final (loop_* fixtures)", function()
  local d, model = loop_diffusion(), adm_tiny()
  local x_T, y = load("loop_x_T.npy"), load("loop_y.npy")
  local samples, preds = load("loop_samples.npy"), load("loop_pred_xstart.npy")
  local mts, mouts = load("loop_model_timesteps.npy"), load("loop_model_outputs.npy")
  local step_noise = load("loop_step_noise.npy")
  local drawn = 0
  local noise_fn = function(like)
    drawn = drawn + 1
    assert(shape_eq(like, x_T))
    return step_noise:select(1, drawn)   -- iteration i gets loop_step_noise[i]
  end
  local seen_t, seen_out = {}, {}
  -- a plain function model: (x, t, model_kwargs)
  local wrapped = function(x, t, kwargs)
    local out = model(x, t, kwargs.y)
    seen_t[#seen_t + 1] = t
    seen_out[#seen_out + 1] = out
    return out
  end
  local k = 0
  local final = d:p_sample_loop(wrapped, { 2, 3, 32, 32 }, { noise = x_T, clip_denoised = true,
    model_kwargs = { y = y }, noise_fn = noise_fn, progress = false,
    callback = function(out, i)
      k = k + 1
      assert(i == k and out.t == 10 - k)
      assert_list_eq("model timesteps at step " .. k, seen_t[k]:tolist(), mts:select(1, k):tolist())
      check_abs("model output at step " .. k, seen_out[k], mouts:select(1, k), 2e-4)
      check_abs("sample at step " .. k, out.sample, samples:select(1, k), 2e-4)
      check_abs("pred_xstart at step " .. k, out.pred_xstart, preds:select(1, k), 2e-4)
    end })
  assert(k == 10 and drawn == 10)
  check_abs("p_sample_loop final", final, load("loop_final.npy"), 2e-4)
  assert(not final.requires_grad)
end)

test("ddim_sample_loop_progressive (eta 0) on the adm_tiny module itself (loop_ddim_*)", function()
  local d, model = loop_diffusion(), adm_tiny()
  local x_T, y = load("loop_x_T.npy"), load("loop_y.npy")
  local ddim = load("loop_ddim_samples.npy")
  local k, last = 0, nil
  -- the module gets model_kwargs.y as forward's y
  for out in d:ddim_sample_loop_progressive(model, { 2, 3, 32, 32 }, { noise = x_T, clip_denoised = true, eta = 0.0,
      model_kwargs = { y = y }, progress = false }) do
    k = k + 1
    assert(out.t == 10 - k)
    check_abs("ddim sample at step " .. k, out.sample, ddim:select(1, k), 2e-4)
    last = out.sample
  end
  assert(k == 10)
  check_abs("ddim final", last, load("loop_ddim_final.npy"), 2e-4)
end)

------------------------------------------------------------------------------ options

test("rescale_timesteps feeds float timesteps scaled to 1000", function()
  local got
  local model = function(x, t) got = t; return ad.zeros_like(x) end
  local x = ad.randn(2, 1, 2, 2)
  local d = diffusion.create { steps = 1000, timestep_respacing = "10", rescale_timesteps = true }
  d:p_mean_variance(model, x, ad.tensor({ 0, 9 }, { dtype = "i64" }))
  assert(got:dtype() == "f32")
  assert_list_eq("rescaled", got:tolist(), { 0, 999 })
  local d2 = diffusion.create { steps = 500, rescale_timesteps = true }
  d2:p_mean_variance(model, x, ad.tensor({ 3, 499 }, { dtype = "i64" }))
  assert_list_eq("rescaled 500", got:tolist(), { 6, 998 })
  local d3 = diffusion.create { diffusion_steps = 200, timestep_respacing = "ddim4" }
  assert(d3.num_timesteps == 4 and d3.original_num_steps == 200)
  d3:p_mean_variance(model, x, ad.tensor({ 1, 3 }, { dtype = "i64" }))
  assert(got:dtype() == "i64")
  assert_list_eq("mapped", got:tolist(), { 50, 150 })
end)

test("fixed variances, x_0 prediction, betas given directly", function()
  local betas = {}
  for i = 1, 30 do betas[i] = 0.001 + 0.01 * i end
  local x = ad.randn(2, 3, 2, 2, { dtype = "f64" })
  local t = ad.tensor({ 0, 17 }, { dtype = "i64" })
  local mo = ad.randn(2, 3, 2, 2, { dtype = "f64" })
  local model = function() return mo end
  local small = diffusion.create { betas = betas, sigma_small = true }
  local large = diffusion.create { betas = ad.tensor(betas, { dtype = "f64" }) }
  assert(small.num_timesteps == 30 and small.model_var_type == "fixed_small" and large.model_var_type == "fixed_large")
  local a = small:p_mean_variance(model, x, t)
  local pv, b = small.posterior_variance:tolist(), small.betas:tolist()
  T.assert_close(a.variance:select(1, 2), ad.full({ 3, 2, 2 }, pv[18], { dtype = "f64" }), { atol = 0, rtol = 1e-15 })
  local l = large:p_mean_variance(model, x, t)
  -- fixed large: betas, with the first replaced by the posterior variance of step 1
  T.assert_close(l.variance:select(1, 2), ad.full({ 3, 2, 2 }, b[18], { dtype = "f64" }), { atol = 0, rtol = 1e-15 })
  T.assert_close(l.variance:select(1, 1), ad.full({ 3, 2, 2 }, pv[2], { dtype = "f64" }), { atol = 0, rtol = 1e-15 })
  T.assert_close(l.log_variance, l.variance:log(), { atol = 1e-12, rtol = 1e-12 })
  -- predict_xstart: the model output is x_0 (clipped)
  local px = diffusion.create { betas = betas, predict_xstart = true }
  local o = px:p_mean_variance(model, x, t)
  T.assert_close(o.pred_xstart, mo:clamp(-1, 1))
  local mean = px:q_posterior_mean_variance(mo:clamp(-1, 1), x, t)
  T.assert_close(o.mean, mean)
  local terms = px:training_losses(model, x:clamp(-1, 1), t, { noise = x })
  local dd = x:clamp(-1, 1) - mo
  T.assert_close(terms.loss, (dd * dd):mean({ 2, 3, 4 }))
  -- denoised_fn runs before the clip
  local o2 = px:p_mean_variance(model, x, t, { denoised_fn = function(v) return v * 0.5 end, clip_denoised = false })
  T.assert_close(o2.pred_xstart, mo * 0.5)
  -- previous_x prediction
  local pp = diffusion.GaussianDiffusion.new { betas = betas, model_mean_type = "previous_x", model_var_type = "fixed_small" }
  local o3 = pp:p_mean_variance(model, x, t, { clip_denoised = false })
  T.assert_close(o3.mean, mo)
  T.assert_close(pp:q_posterior_mean_variance(o3.pred_xstart, x, t), mo, { atol = 1e-12, rtol = 1e-10 })
end)

test("q_mean_variance and prior_bpd", function()
  local d = diffusion.create { steps = 100, noise_schedule = "cosine" }
  local x0 = ad.rand(2, 3, 4, 4, { dtype = "f64" }) * 2 - 1
  local t = ad.tensor({ 5, 99 }, { dtype = "i64" })
  local mean, var, logvar = d:q_mean_variance(x0, t)
  local ac = d.alphas_cumprod:tolist()
  T.assert_close(mean:select(1, 1), x0:select(1, 1) * math.sqrt(ac[6]), { atol = 1e-15, rtol = 1e-14 })
  T.assert_close(var:select(1, 2), ad.full({ 3, 4, 4 }, 1 - ac[100], { dtype = "f64" }))
  T.assert_close(logvar, var:log(), { atol = 1e-14, rtol = 1e-14 })
  local p = d:prior_bpd(x0)
  assert(p:shape()[1] == 2 and p:max():item() < 1e-3 and p:min():item() >= 0)
end)

test("ddim_reverse_sample inverts ddim_sample for an exact eps model", function()
  local d = diffusion.create { steps = 100, noise_schedule = "linear", timestep_respacing = "20" }
  local x0 = ad.rand(2, 3, 4, 4, { dtype = "f64" }) * 1.8 - 0.9
  local eps = ad.randn(2, 3, 4, 4, { dtype = "f64" })
  local model = function() return eps end
  local t = ad.tensor({ 4, 11 }, { dtype = "i64" })
  local x_t = d:q_sample(x0, t, eps)
  local up = d:ddim_reverse_sample(model, x_t, t, { clip_denoised = false })
  T.assert_close(up.sample, d:q_sample(x0, t + 1, eps), { atol = 1e-10, rtol = 1e-9 })
  local down = d:ddim_sample(model, x_t, t, { clip_denoised = false, eta = 0 })
  T.assert_close(down.sample, d:q_sample(x0, t - 1, eps), { atol = 1e-10, rtol = 1e-9 })
  raises("eta = 0", function() d:ddim_reverse_sample(model, x_t, t, { eta = 0.5 }) end)
end)

test("classifier guidance: condition_mean and condition_score", function()
  local d = diffusion.create { steps = 100, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = "25" }
  local x = ad.randn(2, 3, 4, 4, { dtype = "f64" })
  local mo = ad.randn(2, 6, 4, 4, { dtype = "f64" }) * 0.5
  local model = function() return mo end
  local grad = ad.randn(2, 3, 4, 4, { dtype = "f64" })
  local got_y, got_t
  local cond_fn = function(xx, t, y, kwargs)
    got_y, got_t = y, t
    assert(kwargs.y == y)
    return grad
  end
  local zero = function(like) return ad.zeros_like(like) end
  local y = ad.tensor({ 3, 5 }, { dtype = "i64" })
  local t = ad.tensor({ 1, 24 }, { dtype = "i64" })
  local plain = d:p_mean_variance(model, x, t)
  local s = d:p_sample(model, x, t, { cond_fn = cond_fn, noise_fn = zero, model_kwargs = { y = y } })
  assert(got_y == y)
  assert_list_eq("cond_fn timesteps", got_t:tolist(), { d.timestep_map[2], d.timestep_map[25] })
  T.assert_close(s.sample, plain.mean + plain.variance * grad, { atol = 1e-12, rtol = 1e-10 })
  -- condition_score: eps' = eps - sqrt(1 - abar) * grad
  local out = d:condition_score(cond_fn, plain, x, t, { model_kwargs = { y = y } })
  local ab = d.alphas_cumprod:tolist()
  local eps = d:predict_eps_from_xstart(x, t, plain.pred_xstart)
  local c = ad.tensor({ math.sqrt(1 - ab[2]), math.sqrt(1 - ab[25]) }, { dtype = "f64" }):view(2, 1, 1, 1)
  T.assert_close(out.pred_xstart, d:predict_xstart_from_eps(x, t, eps - c * grad), { atol = 1e-10, rtol = 1e-10 })
  local g = d:ddim_sample(model, x, t, { cond_fn = cond_fn, noise_fn = zero, model_kwargs = { y = y } })
  assert(ad.is_tensor(g.sample))
end)

test("loops: default noise from the Philox generator, callbacks, no grad", function()
  local d = diffusion.create { steps = 100, timestep_respacing = "5" }
  local model = function(x) return x * 0.1 end
  local g1, g2 = ad.Generator(7), ad.Generator(7)
  local a = d:p_sample_loop(model, { 2, 1, 3, 3 }, { generator = g1, progress = false })
  local b = d:p_sample_loop(model, { 2, 1, 3, 3 }, { generator = g2, progress = false })
  T.assert_close(a, b, { atol = 0, rtol = 0 })
  local c = d:ddim_sample_loop(model, { 2, 1, 3, 3 }, { generator = ad.Generator(8), eta = 1.0, progress = false })
  assert(shape_eq(c, a) and max_abs(c - a) > 0)
  local n = 0
  d:ddim_sample_loop(model, { 1, 1, 2, 2 }, { progress = false, callback = function(out, i)
    n = n + 1
    assert(i == n and out.t == 5 - i and ad.is_tensor(out.pred_xstart))
  end })
  assert(n == 5)
  -- the diffusion's own generator
  local dg = diffusion.create { steps = 100, timestep_respacing = "5", generator = ad.Generator(3) }
  local dh = diffusion.create { steps = 100, timestep_respacing = "5", generator = ad.Generator(3) }
  T.assert_close(dg:q_sample(a, ad.tensor({ 1, 2 }, { dtype = "i64" })), dh:q_sample(a, ad.tensor({ 1, 2 }, { dtype = "i64" })),
    { atol = 0, rtol = 0 })
end)

test("calc_bpd_loop gives the VLB terms", function()
  local d = diffusion.create { steps = 40, learn_sigma = true, noise_schedule = "cosine", timestep_respacing = "4" }
  local x0 = ad.rand(2, 3, 4, 4) * 2 - 1
  local model = function(x) return ad.cat({ x * 0.1, ad.zeros_like(x) }, 2) end
  local r = d:calc_bpd_loop(model, x0, { generator = ad.Generator(1) })
  assert(table.concat(r.vb:shape(), ",") == "2,4" and r.total_bpd:shape()[1] == 2)
  T.assert_close(r.total_bpd, r.vb:sum(2) + r.prior_bpd, { atol = 1e-4, rtol = 1e-5 })
end)

------------------------------------------------------------------------------ samplers

test("uniform and loss-second-moment timestep samplers", function()
  local d = diffusion.create { steps = 100, timestep_respacing = "10" }
  local u = diffusion.create_named_schedule_sampler("uniform", d)
  local idx, w = u:sample(64, { generator = ad.Generator(1) })
  assert(idx:dtype() == "i64" and w:dtype() == "f32" and idx:shape()[1] == 64)
  for _, v in ipairs(idx:tolist()) do assert(v >= 0 and v < 10) end
  T.assert_close(w, ad.ones(64))
  local s = diffusion.create_named_schedule_sampler("loss-second-moment", d, { history_per_term = 2 })
  local ones = s:weights()
  for t = 1, 10 do assert(ones[t] == 1) end
  -- warm up: two losses per step; step 9 has by far the largest losses
  for _ = 1, 2 do
    local ts, ls = {}, {}
    for t = 0, 9 do ts[#ts + 1] = t; ls[#ls + 1] = t == 9 and 100.0 or 1.0 end
    s:update_with_local_losses(ad.tensor(ts, { dtype = "i64" }), ad.tensor(ls))
  end
  assert(s:_warmed_up())
  local wts = s:weights()
  local total = 0
  for t = 1, 10 do total = total + wts[t] end
  assert(math.abs(total - 1) < 1e-12)
  T.assert_close(wts[10], (100 / 109) * (1 - 0.001) + 0.001 / 10, { atol = 1e-12, rtol = 0 })
  local i2, w2 = s:sample(2000, { generator = ad.Generator(5) })
  local n9 = 0
  for k, v in ipairs(i2:tolist()) do
    if v == 9 then
      n9 = n9 + 1
      assert(math.abs(w2:_getflat(k) - 1 / (10 * wts[10])) < 1e-5)
    end
  end
  assert(n9 > 1700, "step 9 should dominate, drew it " .. n9 .. " times")
  -- the history shifts out the oldest loss
  s:update_with_all_losses({ 9, 9 }, { 1.0, 1.0 })
  T.assert_close(s:weights()[10], s:weights()[1], { atol = 1e-12, rtol = 0 })
  raises("out of range", function() s:update_with_local_losses({ 10 }, { 1.0 }) end)
  raises("unknown schedule sampler 'foo'", diffusion.create_named_schedule_sampler, "foo", d)
  -- the classes are callable too
  assert(#diffusion.UniformSampler(d):weights() == 10)
  assert(diffusion.LossSecondMomentResampler(d, { uniform_prob = 0.01 }).uniform_prob == 0.01)
end)

------------------------------------------------------------------------------ errors

test("bad options and inputs give clear errors", function()
  raises("unknown noise schedule 'foo' (expected linear or cosine)", diffusion.create, { noise_schedule = "foo" })
  raises("unknown noise schedule 'foo' (expected linear or cosine)", diffusion.get_named_beta_schedule, "foo", 10)
  raises("bad timestep_respacing 'abc'", diffusion.create, { timestep_respacing = "abc" })
  raises("bad timestep_respacing '10,x'", diffusion.create, { timestep_respacing = "10,x" })
  raises("cannot create exactly 999 steps", diffusion.create, { timestep_respacing = "ddim999" })
  raises("cannot divide section of 1000 steps into 2000", diffusion.create, { timestep_respacing = "2000" })
  raises("cannot divide section of 334 steps into 400", diffusion.space_timesteps, 1000, "400,10,10")
  raises("unknown option 'stepz'", diffusion.create, { stepz = 10 })
  raises("steps must be a positive integer", diffusion.create, { steps = 0 })
  raises("betas must be in (0, 1]", diffusion.create, { betas = { 0.1, 0 } })

  local d = diffusion.create { steps = 100, learn_sigma = true, timestep_respacing = "10" }
  local x = ad.randn(2, 3, 4, 4)
  local t = ad.tensor({ 1, 2 }, { dtype = "i64" })
  local bad_model = function() return ad.randn(2, 3, 4, 4) end
  raises("model output must have shape [2, 6, 4, 4]", function() d:p_mean_variance(bad_model, x, t) end)
  raises("model output must have shape [2, 6, 4, 4]", function() d:training_losses(bad_model, x, t) end)
  raises("t has 3 timesteps but the batch has 2", function() d:q_sample(x, ad.tensor({ 1, 2, 3 }, { dtype = "i64" })) end)
  raises("out of range [0, 9]", function() d:q_sample(x, ad.tensor({ 1, 10 }, { dtype = "i64" })) end)
  raises("out of range [0, 9]", function() d:q_sample(x, ad.tensor({ -1, 0 }, { dtype = "i64" })) end)
  raises("t must be a 1-D tensor", function() d:q_sample(x, ad.tensor({ { 1, 2 } }, { dtype = "i64" })) end)
  raises("noise must be a tensor shaped like x_start [2, 3, 4, 4]", function() d:q_sample(x, t, ad.randn(2, 3, 4)) end)
  raises("noise must be a tensor of shape [2, 3, 4, 4]", function()
    d:p_sample_loop(bad_model, { 2, 3, 4, 4 }, { noise = ad.randn(1, 3, 4, 4), progress = false })
  end)
  raises("shape must be a table", function() d:p_sample_loop(bad_model, 5) end)
  raises("noise_fn returned shape [1], expected [2, 3, 4, 4]", function()
    d:q_sample(x, t, nil, { noise_fn = function() return ad.zeros(1) end })
  end)
  raises("model must return a tensor", function() d:p_mean_variance(function() return 1 end, x, t) end)
  raises("unknown model_var_type 'wide'", diffusion.GaussianDiffusion.new, { betas = { 0.1, 0.2 }, model_var_type = "wide" })
end)
