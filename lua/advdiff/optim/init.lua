--- advdiff.optim: optimizers, gradient clipping, EMA and schedules.
--
--   local opt = ad.optim.AdamW(model:parameters(), {lr = 5e-6, betas = {0.9, 0.999}, eps = 1e-8,
--                                                  weight_decay = 0})
--   local opt = ad.optim.Adam(params, {...})        -- weight_decay is L2 (added to the gradient)
--   local opt = ad.optim.SGD(params, {lr=, momentum=0, dampening=0, weight_decay=0, nesterov=false})
--   params: a module, a list of tensors, or a list of groups {{params = ..., lr = ...,
--           weight_decay = ...}, ...} with their own hyper-parameters (PyTorch's param groups).
--   opt:zero_grad(), opt:step(), opt.param_groups[i].lr = ..., opt:state_dict(), opt:load_state_dict(sd)
--   Only parameters that require grad and have a gradient are updated. Adam and AdamW run as one
--   fused multi-tensor core op per group (ad._adam_step).
--
--   ad.optim.clip_grad_norm_(params_or_module_or_opt, max_norm) -> total norm before clipping
--   ad.optim.grad_norm(params) -> global L2 norm of the gradients
--   ad.optim.EMA(model, {decay = 0.9999, warmup = false})   (see optim/ema.lua)
--   ad.optim.schedule.{constant, linear, cosine, step, warmup, warmup_cosine, custom, from}
--   ad.optim.LRScheduler(opt, schedule)                     lr = initial_lr * schedule(step)
local opt = require "advdiff.optim.optimizer"
local schedule = require "advdiff.optim.schedule"

local M = {}

M.Optimizer = opt.Optimizer
M.clip_grad_norm_ = opt.clip_grad_norm_
M.grad_norm = opt.grad_norm
M.schedule = schedule
M.LRScheduler = schedule.LRScheduler
M.EMA = require "advdiff.optim.ema"

--- Adam(params, {lr=1e-3, betas={0.9, 0.999}, eps=1e-8, weight_decay=0, maximize=false})
function M.Adam(params, opts) return opt.Adam_new(params, opts, "Adam", false) end

--- AdamW(params, {lr=1e-3, betas={0.9, 0.999}, eps=1e-8, weight_decay=1e-2, maximize=false}):
-- decoupled weight decay, p *= 1 - lr * weight_decay before the Adam update.
function M.AdamW(params, opts) return opt.Adam_new(params, opts, "AdamW", true, 1e-2) end

--- SGD(params, {lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=false, maximize=false})
function M.SGD(params, opts) return opt.SGD_new(params, opts) end

return M
