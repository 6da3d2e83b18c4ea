--- advdiff.train: training loops.
--
--   local run = ad.train.adversarial(cfg)     the paper's adversarial fine-tuning (train/adversarial.lua)
--   ad.train.checkpoint.load(path) -> tensors, state       (train/checkpoint.lua)
--   ad.train.diff_augment(x, "color,translation,cutout", generator)
--   ad.train.TimeConditionedD(D, {t_dim=128})  a t-conditioned head for re-noised D inputs
--   ad.train.losses.d(kind, real_logits, fake_logits), ad.train.losses.g(kind, fake_logits)
--
-- Background work in the REPL: run:start() registers the run in ad._repl_idle_hooks; the
-- advdiff REPL calls ad._repl_idle() while the prompt waits for input, which gives every
-- registered task one unit of work (one step) and returns (more_work, message).
local ad = require "advdiff"
local adversarial = require "advdiff.train.adversarial"

local M = {}

M.adversarial = adversarial.new
M.Run = adversarial.Run
M.DEFAULTS = adversarial.DEFAULTS
M.checkpoint = require "advdiff.train.checkpoint"
M.augment = require "advdiff.train.augment"
M.diff_augment = M.augment.diff_augment
M.TimeConditionedD = require("advdiff.train.noisy_d").TimeConditionedD
M.losses = { d = adversarial.d_loss_fn, g = adversarial.g_loss_fn }

--- Register an object with an _idle() method (returns again, message) as REPL idle work.
function M.register_idle(task)
  local hooks = rawget(ad, "_repl_idle_hooks")
  if not hooks then
    hooks = {}
    rawset(ad, "_repl_idle_hooks", hooks)
  end
  if not hooks[task] then
    M._order = (M._order or 0) + 1
    hooks[task] = M._order
  end
  rawset(ad, "_repl_idle", M.idle)
end

-- one round of idle work over the registered tasks, in registration order
function M.idle()
  local hooks = rawget(ad, "_repl_idle_hooks")
  if not hooks or next(hooks) == nil then return false end
  local tasks = {}
  for t in pairs(hooks) do tasks[#tasks + 1] = t end
  table.sort(tasks, function(a, b) return hooks[a] < hooks[b] end)
  local msgs, again = {}, false
  for _, t in ipairs(tasks) do
    local ok, more, msg = pcall(t._idle, t)
    if not ok then
      hooks[t] = nil
      msgs[#msgs + 1] = "idle task failed: " .. tostring(more)
    else
      if more then again = true else hooks[t] = nil end
      if msg then msgs[#msgs + 1] = msg end
    end
  end
  return again, #msgs > 0 and table.concat(msgs, "\n") or nil
end

return M
