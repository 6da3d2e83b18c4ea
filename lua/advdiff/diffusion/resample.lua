--- advdiff.diffusion.resample: timestep samplers for training, as
-- guided-diffusion's resample.py. sampler:sample(batch_size, opts) returns
-- (indices, weights): an i64 tensor of 0-based step indices drawn with
-- probability p_t proportional to weights(), and the f32 importance weights
-- 1 / (T * p_t) that keep the objective unbiased. opts: generator (Philox; the
-- default generator otherwise), device.
local ad = require "advdiff"

local M = {}

local function num_timesteps(diffusion)
  local T = type(diffusion) == "table" and diffusion.num_timesteps or diffusion
  if math.type(T) ~= "integer" or T < 1 then
    error("schedule sampler: expected a diffusion (or a number of timesteps), got " .. tostring(diffusion), 3)
  end
  return T
end

local Sampler = {}
Sampler.__index = Sampler
M.ScheduleSampler = Sampler

function Sampler:sample(batch_size, opts)
  opts = opts or {}
  if math.type(batch_size) ~= "integer" or batch_size < 1 then
    error("sample: batch_size must be a positive integer, got " .. tostring(batch_size), 2)
  end
  local w = self:weights()
  local T, total = #w, 0.0
  for i = 1, T do total = total + w[i] end
  if not (total > 0) then error("sample: the sampler's weights sum to " .. tostring(total), 2) end
  local cdf, acc = {}, 0.0
  for i = 1, T do acc = acc + w[i] / total; cdf[i] = acc end
  local u = ad.rand(batch_size, { dtype = "f64", generator = opts.generator }):tolist()
  local idx, wts = {}, {}
  for k = 1, batch_size do
    local r = u[k] * acc
    local lo, hi = 1, T                    -- first i with cdf[i] > r
    while lo < hi do
      local mid = (lo + hi) // 2
      if cdf[mid] > r then hi = mid else lo = mid + 1 end
    end
    while w[lo] <= 0 and lo < T do lo = lo + 1 end   -- never pick a zero-weight step
    idx[k] = lo - 1
    wts[k] = 1.0 / (T * (w[lo] / total))
  end
  local dev = opts.device
  return ad.tensor(idx, { dtype = "i64", device = dev }), ad.tensor(wts, { dtype = "f32", device = dev })
end

--- Uniform over the T steps (all weights 1).
local Uniform = setmetatable({}, { __index = Sampler })
Uniform.__index = Uniform
M.UniformSampler = Uniform
function Uniform.new(diffusion)
  local T = num_timesteps(diffusion)
  local w = {}
  for i = 1, T do w[i] = 1.0 end
  return setmetatable({ num_timesteps = T, _weights = w }, Uniform)
end
function Uniform:weights() return self._weights end
function Uniform:update_with_local_losses() end
function Uniform:update_with_all_losses() end
setmetatable(Uniform, { __index = Sampler, __call = function(_, ...) return Uniform.new(...) end })

--- Importance sampling by the second moment of each step's recent losses
-- (Nichol & Dhariwal 2021): uniform until every step has history_per_term
-- losses, then p_t ~ sqrt(E[loss_t^2]), mixed with uniform_prob of uniform.
local LSM = {}
LSM.__index = LSM
M.LossSecondMomentResampler = LSM
function LSM.new(diffusion, opts)
  opts = opts or {}
  local T = num_timesteps(diffusion)
  local self = setmetatable({ num_timesteps = T, history_per_term = opts.history_per_term or 10,
                              uniform_prob = opts.uniform_prob or 0.001 }, LSM)
  if math.type(self.history_per_term) ~= "integer" or self.history_per_term < 1 then
    error("LossSecondMomentResampler: history_per_term must be a positive integer", 2)
  end
  self._loss_history, self._loss_counts = {}, {}
  for t = 1, T do
    local h = {}
    for k = 1, self.history_per_term do h[k] = 0.0 end
    self._loss_history[t], self._loss_counts[t] = h, 0
  end
  return self
end
setmetatable(LSM, { __index = Sampler, __call = function(_, ...) return LSM.new(...) end })

function LSM:_warmed_up()
  for t = 1, self.num_timesteps do
    if self._loss_counts[t] ~= self.history_per_term then return false end
  end
  return true
end

function LSM:weights()
  local T = self.num_timesteps
  local w = {}
  if not self:_warmed_up() then
    for t = 1, T do w[t] = 1.0 end
    return w
  end
  local total = 0.0
  for t = 1, T do
    local h, s = self._loss_history[t], 0.0
    for k = 1, #h do s = s + h[k] * h[k] end
    w[t] = math.sqrt(s / #h)
    total = total + w[t]
  end
  for t = 1, T do w[t] = w[t] / total * (1 - self.uniform_prob) + self.uniform_prob / T end
  return w
end

--- Record losses: ts (0-based step indices) and losses, lists or 1-D tensors.
function LSM:update_with_all_losses(ts, losses)
  if ad.is_tensor(ts) then ts = ts:tolist() end
  if ad.is_tensor(losses) then losses = losses:detach():double():tolist() end
  if #ts ~= #losses then
    error(string.format("update_with_local_losses: %d timesteps but %d losses", #ts, #losses), 2)
  end
  local H = self.history_per_term
  for k = 1, #ts do
    local t = math.tointeger(ts[k])
    if not t or t < 0 or t >= self.num_timesteps then
      error(string.format("update_with_local_losses: timestep %s out of range [0, %d]", tostring(ts[k]),
        self.num_timesteps - 1), 2)
    end
    local h, c = self._loss_history[t + 1], self._loss_counts[t + 1]
    if c == H then
      table.remove(h, 1)          -- shift out the oldest loss
      h[H] = losses[k]
    else
      h[c + 1] = losses[k]
      self._loss_counts[t + 1] = c + 1
    end
  end
end
-- single process: the local losses are all the losses (a data-parallel run
-- gathers them first and calls update_with_all_losses on every rank)
LSM.update_with_local_losses = LSM.update_with_all_losses

--- "uniform" or "loss-second-moment"
function M.create_named_schedule_sampler(name, diffusion, opts)
  if name == "uniform" then return Uniform.new(diffusion) end
  if name == "loss-second-moment" then return LSM.new(diffusion, opts) end
  error(string.format("unknown schedule sampler '%s' (expected uniform or loss-second-moment)", tostring(name)), 2)
end

return M
