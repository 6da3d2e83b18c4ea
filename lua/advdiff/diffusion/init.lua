--- advdiff.diffusion: the Gaussian diffusion process of guided-diffusion.
--
--   local d = ad.diffusion.create{steps = 1000, noise_schedule = "cosine", learn_sigma = true,
--                                 timestep_respacing = "100"}
--   local x_t = d:q_sample(x0, t, noise)                     -- t: i64 tensor, 0-based steps
--   local out = d:p_mean_variance(model, x_t, t, {clip_denoised = true, model_kwargs = {y = y}})
--   local terms = d:training_losses(model, x0, t, {noise = noise, model_kwargs = {y = y}})
--   local img = d:p_sample_loop(model, {N, 3, 64, 64}, {model_kwargs = {y = y}})
--   local img = d:ddim_sample_loop(model, {N, 3, 64, 64}, {eta = 0})
--
-- create(opts) takes create_gaussian_diffusion's names: steps (alias
-- diffusion_steps, 1000), learn_sigma (false), sigma_small (false),
-- noise_schedule ("linear" | "cosine"), use_kl, predict_xstart,
-- rescale_timesteps, rescale_learned_sigmas, timestep_respacing ("" | "100" |
-- "10,10,10" | "ddim25" | list of section counts). Also: betas (a list or f64
-- tensor used instead of a named schedule), noise_fn(like) (replaces
-- randn_like in every step), generator, and the explicit model_mean_type /
-- model_var_type / loss_type overrides (see gaussian.lua for the names).
-- The object's methods and fields are documented in gaussian.lua; fields:
-- num_timesteps, original_num_steps, timestep_map (list of original steps,
-- tensor-like), betas, alphas_cumprod, ... (f64 tensors), model_mean_type,
-- model_var_type, loss_type, rescale_timesteps.
local schedule = require "advdiff.diffusion.schedule"
local gaussian = require "advdiff.diffusion.gaussian"
local losses = require "advdiff.diffusion.losses"
local resample = require "advdiff.diffusion.resample"

local M = {}

M.get_named_beta_schedule = schedule.get_named_beta_schedule
M.betas_for_alpha_bar = schedule.betas_for_alpha_bar
M.space_timesteps = schedule.space_timesteps
M.GaussianDiffusion = gaussian.GaussianDiffusion
M.ModelMeanType, M.ModelVarType, M.LossType = gaussian.ModelMeanType, gaussian.ModelVarType, gaussian.LossType
M.normal_kl = losses.normal_kl
M.approx_standard_normal_cdf = losses.approx_standard_normal_cdf
M.discretized_gaussian_log_likelihood = losses.discretized_gaussian_log_likelihood
M.mean_flat = losses.mean_flat
M.UniformSampler = resample.UniformSampler
M.LossSecondMomentResampler = resample.LossSecondMomentResampler
M.create_named_schedule_sampler = resample.create_named_schedule_sampler

local KNOWN = {
  steps = true, diffusion_steps = true, learn_sigma = true, sigma_small = true, noise_schedule = true,
  use_kl = true, predict_xstart = true, rescale_timesteps = true, rescale_learned_sigmas = true,
  timestep_respacing = true, betas = true, noise_fn = true, generator = true, model_mean_type = true,
  model_var_type = true, loss_type = true,
}
-- create_model's options: accepted and ignored, so one create_model_and_diffusion
-- table (e.g. ad.models.adm.config("imagenet64")) serves both the model and the diffusion
local MODEL_KEYS = {
  image_size = true, num_channels = true, num_res_blocks = true, channel_mult = true,
  attention_resolutions = true, num_heads = true, num_head_channels = true, num_heads_upsample = true,
  use_scale_shift_norm = true, resblock_updown = true, use_new_attention_order = true, class_cond = true,
  dropout = true, use_fp16 = true, use_checkpoint = true, in_channels = true, out_channels = true,
  num_classes = true, conv_resample = true, attention_ds = true,
}

--- create_gaussian_diffusion: a (respaced) GaussianDiffusion from guided-diffusion's options.
function M.create(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("diffusion.create: expected an options table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not KNOWN[k] and not MODEL_KEYS[k] then error(string.format("diffusion.create: unknown option '%s'", tostring(k)), 2) end
  end
  if opts.steps and opts.diffusion_steps and opts.steps ~= opts.diffusion_steps then
    error("diffusion.create: steps and diffusion_steps disagree", 2)
  end
  local steps = opts.steps or opts.diffusion_steps or 1000
  if math.type(steps) ~= "integer" then
    if type(steps) == "number" and steps == math.floor(steps) then steps = math.tointeger(steps)
    else error("diffusion.create: steps must be a positive integer, got " .. tostring(steps), 2) end
  end
  if steps < 1 then error("diffusion.create: steps must be a positive integer, got " .. tostring(steps), 2) end

  local betas = opts.betas
  if betas == nil then
    local name = opts.noise_schedule or "linear"
    if name ~= "linear" and name ~= "cosine" then
      error(string.format("unknown noise schedule '%s' (expected linear or cosine)", tostring(name)), 2)
    end
    betas = schedule.get_named_beta_schedule(name, steps)
  else
    if opts.noise_schedule then error("diffusion.create: give either betas or noise_schedule, not both", 2) end
    if type(betas) ~= "table" and not require("advdiff").is_tensor(betas) then
      error("diffusion.create: betas must be a list or a 1-D tensor", 2)
    end
    if type(betas) ~= "table" then betas = betas:double():tolist() end
    steps = #betas
  end

  local loss_type = opts.loss_type
  if loss_type == nil then
    if opts.use_kl then loss_type = "rescaled_kl"
    elseif opts.rescale_learned_sigmas then loss_type = "rescaled_mse"
    else loss_type = "mse" end
  end
  local mean_type = opts.model_mean_type or (opts.predict_xstart and "start_x" or "epsilon")
  local var_type = opts.model_var_type
  if var_type == nil then
    if opts.learn_sigma then var_type = "learned_range"
    elseif opts.sigma_small then var_type = "fixed_small"
    else var_type = "fixed_large" end
  end

  local respacing = opts.timestep_respacing
  if respacing == nil or respacing == "" then respacing = { steps } end
  local ok, use = pcall(schedule.space_timesteps, steps, respacing)
  if not ok then error((tostring(use):gsub("^[^:]*:%d+: ", "")), 2) end

  return gaussian.GaussianDiffusion.new {
    betas = betas, use_timesteps = use, model_mean_type = mean_type, model_var_type = var_type,
    loss_type = loss_type, rescale_timesteps = opts.rescale_timesteps, noise_fn = opts.noise_fn,
    generator = opts.generator,
  }
end
M.create_gaussian_diffusion = M.create

return M
