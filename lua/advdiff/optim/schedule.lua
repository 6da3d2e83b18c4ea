--- advdiff.optim.schedule: schedules — values as a function of a step count —
-- for learning rates and for training curricula (the adversarial weight λ).
--
-- A schedule is an object s with s:value(step) (also s(step)); step counts
-- from 0. Anything with a value method, or a plain function(step), works
-- wherever a schedule is expected, so people can write their own:
--   local my = schedule.custom(function(step) return step < 100 and 0 or 1 end)
--
--   schedule.constant(v)
--   schedule.linear{from=0, to=1, steps=N, start=0}   ramp from `from` at `start` to `to` at
--       start+steps, constant outside (steps = 0: a jump at start)
--   schedule.cosine{from=0, to=1, steps=N, start=0}   the same ramp along a half cosine
--   schedule.step{values={v0, v1, ...}, milestones={m1, m2, ...}}   v0 before m1, v1 from m1, ...
--       or schedule.step{base=1, gamma=0.1, milestones={...}}        base * gamma^(milestones passed)
--   schedule.warmup{steps=N, base=1}                  linear warm-up 0 -> base over N steps, then base
--   schedule.warmup_cosine{warmup=W, total=T, base=1, min=0}  linear warm-up then cosine decay to min
--   schedule.custom(fn)                               fn(step) -> value
--   schedule.from(spec)   a number (constant), a function, a schedule, or {kind="linear", ...}
--
-- LRScheduler(optimizer, schedule) multiplies each group's initial_lr by schedule(step):
-- sched:step() advances it; state_dict/load_state_dict hold the step.
local M = {}

local Schedule = {}
Schedule.__index = Schedule
Schedule.__call = function(self, step) return self:value(step) end
M.Schedule = Schedule

local function new(kind, fields, fn)
  fields.kind = kind
  fields._fn = fn
  return setmetatable(fields, Schedule)
end

function Schedule:value(step)
  if type(step) ~= "number" then error("schedule: step must be a number, got " .. type(step), 2) end
  return self._fn(self, step)
end

function Schedule:__tostring()
  local parts = {}
  for k, v in pairs(self) do
    if k ~= "kind" and k ~= "_fn" then
      parts[#parts + 1] = k .. "=" .. (type(v) == "table" and ("{" .. table.concat(v, ",") .. "}") or tostring(v))
    end
  end
  table.sort(parts)
  return "schedule." .. self.kind .. "{" .. table.concat(parts, ", ") .. "}"
end

local function num(name, v, def)
  if v == nil then v = def end
  if type(v) ~= "number" then error(string.format("schedule: '%s' must be a number, got %s", name, type(v)), 4) end
  return v
end

local function frac(self, step)
  if self.steps <= 0 then return step >= self.start and 1 or 0 end
  local p = (step - self.start) / self.steps
  return p < 0 and 0 or p > 1 and 1 or p
end

function M.constant(v)
  return new("constant", { v = num("v", v) }, function(self) return self.v end)
end

function M.linear(o)
  o = o or {}
  return new("linear", { from = num("from", o.from, 0), to = num("to", o.to, 1), steps = num("steps", o.steps),
                         start = num("start", o.start, 0) },
    function(self, step) return self.from + (self.to - self.from) * frac(self, step) end)
end

function M.cosine(o)
  o = o or {}
  return new("cosine", { from = num("from", o.from, 0), to = num("to", o.to, 1), steps = num("steps", o.steps),
                         start = num("start", o.start, 0) },
    function(self, step)
      local p = frac(self, step)
      return self.from + (self.to - self.from) * (1 - math.cos(math.pi * p)) / 2
    end)
end

function M.step(o)
  o = o or {}
  local ms = o.milestones or {}
  for i = 2, #ms do
    if ms[i] <= ms[i - 1] then error("schedule.step: milestones must increase", 2) end
  end
  if o.values then
    if #o.values ~= #ms + 1 then error("schedule.step: give one more value than milestones", 2) end
    return new("step", { values = o.values, milestones = ms }, function(self, step)
      local k = 1
      for _, m in ipairs(self.milestones) do if step >= m then k = k + 1 end end
      return self.values[k]
    end)
  end
  return new("step", { base = num("base", o.base, 1), gamma = num("gamma", o.gamma, 0.1), milestones = ms },
    function(self, step)
      local k = 0
      for _, m in ipairs(self.milestones) do if step >= m then k = k + 1 end end
      return self.base * self.gamma ^ k
    end)
end

function M.warmup(o)
  o = o or {}
  return new("warmup", { steps = num("steps", o.steps), base = num("base", o.base, 1) }, function(self, step)
    if self.steps <= 0 or step >= self.steps then return self.base end
    return self.base * (step + 1) / self.steps
  end)
end

function M.warmup_cosine(o)
  o = o or {}
  return new("warmup_cosine", { warmup = num("warmup", o.warmup, 0), total = num("total", o.total),
                                base = num("base", o.base, 1), min = num("min", o.min, 0) },
    function(self, step)
      if step < self.warmup then return self.base * (step + 1) / self.warmup end
      local span = self.total - self.warmup
      local p = span <= 0 and 1 or math.min(1, (step - self.warmup) / span)
      return self.min + (self.base - self.min) * (1 + math.cos(math.pi * p)) / 2
    end)
end

function M.custom(fn)
  if type(fn) ~= "function" then error("schedule.custom: expected a function(step) -> value", 2) end
  return new("custom", { fn = fn }, function(self, step) return self.fn(step) end)
end

local KINDS = { constant = true, linear = true, cosine = true, step = true, warmup = true, warmup_cosine = true }

--- A schedule from a number, a function, a schedule, or a {kind=..., ...} table.
function M.from(spec)
  if type(spec) == "number" then return M.constant(spec) end
  if type(spec) == "function" then return M.custom(spec) end
  if type(spec) == "table" then
    if type(spec.value) == "function" then return spec end
    if KINDS[spec.kind] then
      if spec.kind == "constant" then return M.constant(spec.v or spec.value) end
      return M[spec.kind](spec)
    end
  end
  error("schedule.from: expected a number, a function, a schedule or {kind=..., ...}, got " .. tostring(spec), 2)
end

--- Evaluate any schedule-like value at step.
function M.eval(s, step)
  if type(s) == "number" then return s end
  if type(s) == "function" then return s(step) end
  return s:value(step)
end

---------------------------------------------------------------------------- LR scheduler

local LRScheduler = {}
LRScheduler.__index = LRScheduler
M.LRScheduler = LRScheduler

setmetatable(LRScheduler, { __call = function(_, opt, sched)
  if type(opt) ~= "table" or type(opt.param_groups) ~= "table" then error("LRScheduler: expected an optimizer", 2) end
  local self = setmetatable({ optimizer = opt, schedule = M.from(sched), last_step = 0 }, LRScheduler)
  self:_apply()
  return self
end })

function LRScheduler:_apply()
  local f = M.eval(self.schedule, self.last_step)
  for _, g in ipairs(self.optimizer.param_groups) do g.lr = g.initial_lr * f end
end

--- Advance one step and set the groups' learning rates.
function LRScheduler:step()
  self.last_step = self.last_step + 1
  self:_apply()
end

function LRScheduler:get_last_lr()
  local out = {}
  for i, g in ipairs(self.optimizer.param_groups) do out[i] = g.lr end
  return out
end

function LRScheduler:state_dict() return { last_step = self.last_step } end
function LRScheduler:load_state_dict(sd)
  self.last_step = sd.last_step
  self:_apply()
end

return M
