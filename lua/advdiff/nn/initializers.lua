--- advdiff.nn.init: parameter initialisers (torch.nn.init's names and formulas).
-- All fill a tensor in place without recording autograd and return it.
-- Random ones draw from the default generator unless opts.generator is given.
local core = require "advdiff.core"

local init = {}

--- fan_in, fan_out of a weight: (out, in, k...) -> in*prod(k), out*prod(k).
function init.fan_in_and_fan_out(t)
  local s = t:shape()
  if #s < 2 then
    error("init: fan in and fan out need a tensor with at least 2 dimensions, got " .. #s, 3)
  end
  local receptive = 1
  for i = 3, #s do receptive = receptive * s[i] end
  return s[2] * receptive, s[1] * receptive
end

--- Recommended gain for a nonlinearity (torch.nn.init.calculate_gain).
function init.calculate_gain(nonlinearity, param)
  local lin = { linear = true, identity = true, conv1d = true, conv2d = true, conv3d = true, sigmoid = true,
                conv_transpose1d = true, conv_transpose2d = true, conv_transpose3d = true }
  if lin[nonlinearity] then return 1 end
  if nonlinearity == "tanh" then return 5 / 3 end
  if nonlinearity == "relu" then return math.sqrt(2) end
  if nonlinearity == "leaky_relu" then
    local slope = param or 0.01
    return math.sqrt(2 / (1 + slope * slope))
  end
  if nonlinearity == "selu" then return 3 / 4 end
  error("init.calculate_gain: unsupported nonlinearity '" .. tostring(nonlinearity) .. "'", 2)
end

local function gen_opts(opts) return { generator = opts and opts.generator } end

-- The fills are the core's in-place uniform_/normal_ (the same Philox draws as rand_like and
-- randn_like, scaled in one rounding): a 296M-parameter ADM is initialised without the three
-- weight-sized temporaries per tensor that rand_like * (b - a) + a made, which stayed in the
-- CPU block cache (a 64x64 checkpoint load peaked at 3.25 GB RSS against PyTorch's 1.37).

--- U(a, b) in place.
function init.uniform_(t, a, b, opts)
  a, b = a or 0, b or 1
  core.no_grad(function() t:uniform_(a, b, gen_opts(opts)) end)
  return t
end

--- N(mean, std) in place.
function init.normal_(t, mean, std, opts)
  mean, std = mean or 0, std or 1
  core.no_grad(function() t:normal_(mean, std, gen_opts(opts)) end)
  return t
end

function init.constant_(t, v)
  core.no_grad(function() t:fill_(v) end)
  return t
end
function init.zeros_(t) return init.constant_(t, 0) end
function init.ones_(t) return init.constant_(t, 1) end

local function kaiming_std(t, opts)
  opts = opts or {}
  local a = opts.a or 0
  local mode = opts.mode or "fan_in"
  local fan_in, fan_out = init.fan_in_and_fan_out(t)
  local fan
  if mode == "fan_in" then fan = fan_in
  elseif mode == "fan_out" then fan = fan_out
  else error("init.kaiming: mode must be 'fan_in' or 'fan_out', got '" .. tostring(mode) .. "'", 3) end
  local gain = init.calculate_gain(opts.nonlinearity or "leaky_relu", a)
  return gain / math.sqrt(fan)
end

--- kaiming_uniform_(t, {a=0, mode="fan_in", nonlinearity="leaky_relu"}):
-- U(-bound, bound) with bound = gain * sqrt(3 / fan).
function init.kaiming_uniform_(t, opts)
  local bound = math.sqrt(3) * kaiming_std(t, opts)
  return init.uniform_(t, -bound, bound, opts)
end

--- kaiming_normal_(t, {a=0, mode="fan_in", nonlinearity="leaky_relu"}): N(0, gain / sqrt(fan)).
function init.kaiming_normal_(t, opts)
  return init.normal_(t, 0, kaiming_std(t, opts), opts)
end

--- xavier_uniform_(t, {gain=1}): U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out)).
function init.xavier_uniform_(t, opts)
  local fan_in, fan_out = init.fan_in_and_fan_out(t)
  local gain = opts and opts.gain or 1
  local bound = gain * math.sqrt(6 / (fan_in + fan_out))
  return init.uniform_(t, -bound, bound, opts)
end

--- xavier_normal_(t, {gain=1}): N(0, gain * sqrt(2 / (fan_in + fan_out))).
function init.xavier_normal_(t, opts)
  local fan_in, fan_out = init.fan_in_and_fan_out(t)
  local gain = opts and opts.gain or 1
  return init.normal_(t, 0, gain * math.sqrt(2 / (fan_in + fan_out)), opts)
end

--- PyTorch's default for Linear/Conv: weight kaiming_uniform_(a=sqrt(5)),
-- bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
function init.default_linear_(weight, bias)
  init.kaiming_uniform_(weight, { a = math.sqrt(5) })
  if bias ~= nil then
    local fan_in = init.fan_in_and_fan_out(weight)
    local bound = fan_in > 0 and 1 / math.sqrt(fan_in) or 0
    init.uniform_(bias, -bound, bound)
  end
end

return init
