--- advdiff.diffusion.losses: the likelihood helpers of guided-diffusion's
-- losses.py (normal_kl, approx_standard_normal_cdf,
-- discretized_gaussian_log_likelihood) and nn.py's mean_flat, written with the
-- core's differentiable ops. Results are in nats.
local ad = require "advdiff"

local M = {}

local function is_tensor(v) return ad.is_tensor(v) end

--- Mean over every dimension but the first: (N, ...) -> (N).
function M.mean_flat(x)
  local nd = x:dim()
  if nd <= 1 then return x end
  local dims = {}
  for d = 2, nd do dims[#dims + 1] = d end
  return x:mean(dims)
end

--- KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise with
-- broadcasting; any argument may be a number, at least one must be a tensor.
function M.normal_kl(mean1, logvar1, mean2, logvar2)
  local like
  for _, v in ipairs { mean1, logvar1, mean2, logvar2 } do
    if is_tensor(v) then like = v; break end
  end
  if not like then error("normal_kl: at least one argument must be a tensor", 2) end
  if not is_tensor(logvar1) then logvar1 = ad.full_like(like, logvar1) end
  if not is_tensor(logvar2) then logvar2 = ad.full_like(like, logvar2) end
  local diff = mean1 - mean2
  return 0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2):exp() + (diff * diff) * (-logvar2):exp())
end

--- A fast approximation of the standard normal CDF (the tanh form).
function M.approx_standard_normal_cdf(x)
  return 0.5 * (1.0 + (math.sqrt(2.0 / math.pi) * (x + 0.044715 * x:pow(3))):tanh())
end

--- Log-likelihood of x (uint8 images rescaled to [-1, 1]) under a Gaussian
-- discretized to 256 bins: opts.means, opts.log_scales (log std). Same shapes.
function M.discretized_gaussian_log_likelihood(x, opts)
  local means, log_scales = opts.means, opts.log_scales
  local function same(a, b) return table.concat(a:shape(), ",") == table.concat(b:shape(), ",") end
  if not (is_tensor(means) and is_tensor(log_scales)) then
    error("discretized_gaussian_log_likelihood: means and log_scales must be tensors", 2)
  end
  if not (same(x, means) and same(x, log_scales)) then
    error(string.format("discretized_gaussian_log_likelihood: x [%s], means [%s] and log_scales [%s] must have the same shape",
      table.concat(x:shape(), ", "), table.concat(means:shape(), ", "), table.concat(log_scales:shape(), ", ")), 2)
  end
  local centered_x = x - means
  local inv_stdv = (-log_scales):exp()
  local plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
  local cdf_plus = M.approx_standard_normal_cdf(plus_in)
  local min_in = inv_stdv * (centered_x - 1.0 / 255.0)
  local cdf_min = M.approx_standard_normal_cdf(min_in)
  local log_cdf_plus = cdf_plus:clamp(1e-12, nil):log()
  local log_one_minus_cdf_min = (1.0 - cdf_min):clamp(1e-12, nil):log()
  local cdf_delta = cdf_plus - cdf_min
  return ad.where(x:lt(-0.999), log_cdf_plus,
    ad.where(x:gt(0.999), log_one_minus_cdf_min, cdf_delta:clamp(1e-12, nil):log()))
end

return M
