--- advdiff.nn.module: the Module base class and the class mechanism every
-- layer and model uses (see advdiff/nn/init.lua for the API summary).
--
-- A module is a Lua table whose metatable is its class. Registered
-- parameters, buffers and children are plain fields of the instance (so
-- `self.weight`, `self.layer1` read naturally); the registries only keep the
-- names in registration order, which fixes the order of parameters(),
-- state_dict() and printing. The value of a name is always the current
-- field, so reassigning it (m.fc = nn.Identity()) replaces the registered
-- thing, and nil removes it, as PyTorch's setattr does.
local core = require "advdiff.core"

local Module = {}
Module._class_name = "Module"

local FLOAT_DTYPES = { f32 = true, f64 = true, f16 = true, bf16 = true }

local function is_module(v)
  return type(v) == "table" and rawget(v, "_module_names") ~= nil
end
Module.is_module = is_module

local function is_tensor(v) return core.is_tensor(v) end

-- registries every instance has; created before __init runs so that a
-- subclass that forgets to call Module.__init still works
local function init_state(self)
  rawset(self, "training", true)
  rawset(self, "_param_names", {})
  rawset(self, "_buffer_names", {})
  rawset(self, "_module_names", {})
  rawset(self, "_kind", {})              -- name -> "param" | "buffer" | "module"
  rawset(self, "_nonpersistent", {})     -- buffer name -> true
end

local function add_name(self, name, kind)
  if type(name) ~= "string" or name == "" or name:find(".", 1, true) then
    error(string.format("%s: invalid name %s (a non-empty string without '.')", kind, tostring(name)), 3)
  end
  local prev = self._kind[name]
  if prev and prev ~= kind then
    error(string.format("%s: '%s' is already registered as a %s", kind, name, prev), 3)
  end
  if not prev then
    if Module[name] ~= nil and type(Module[name]) == "function" then
      error(string.format("%s: '%s' would hide the Module method of that name", kind, name), 3)
    end
    self._kind[name] = kind
    local list = kind == "param" and self._param_names or kind == "buffer" and self._buffer_names
                 or self._module_names
    list[#list + 1] = name
  end
end

---------------------------------------------------------------------------- classes

-- Instance metamethods live in every class table (Lua reads metamethods with
-- rawget), so extend() copies them down.
local METAMETHODS = { "__call", "__tostring", "__newindex", "__len" }

local function make_index(cls)
  if not cls._int_index then return cls end
  -- containers: m[i] is the i-th child (1-based; negative from the end)
  return function(t, k)
    if math.type(k) == "integer" then
      local names = rawget(t, "_module_names")
      if k < 0 then k = #names + 1 + k end
      local name = names[k]
      if name == nil then return nil end
      return rawget(t, name)
    end
    return cls[k]
  end
end

local function new_instance(cls, ...)
  local self = setmetatable({}, cls)
  init_state(self)
  self:__init(...)
  return self
end

--- Create a subclass: local Linear = Module:extend("Linear").
-- Linear(...) makes an instance and calls Linear.__init(self, ...).
function Module:extend(name, fields)
  assert(type(name) == "string", "extend: expected a class name")
  local parent = self
  local cls = fields or {}
  cls._class_name = name
  cls.super = parent
  for _, mm in ipairs(METAMETHODS) do
    if cls[mm] == nil then cls[mm] = rawget(parent, mm) end
  end
  if cls._int_index == nil then cls._int_index = parent._int_index end
  cls.__index = make_index(cls)
  return setmetatable(cls, {
    __index = parent,
    __call = new_instance,
    __tostring = function() return "<class " .. name .. ">" end,
  })
end

Module.__index = Module
setmetatable(Module, {
  __call = new_instance,
  __tostring = function() return "<class Module>" end,
})

function Module:__init() end

function Module:__call(...) return self:forward(...) end

function Module:forward()
  error(self._class_name .. ": forward is not implemented", 2)
end

-- assigning a module to a new field registers it as a child
function Module.__newindex(t, k, v)
  if is_module(v) and type(k) == "string" and rawget(t, "_kind") then
    add_name(t, k, "module")
    rawset(t, k, v)
    return
  end
  if math.type(k) == "integer" and t._int_index then
    local names = rawget(t, "_module_names")
    if k < 0 then k = #names + 1 + k end
    if k >= 1 and k <= #names then rawset(t, names[k], v); return end
    if k == #names + 1 then t:append(v); return end
    error(string.format("%s: index %d out of range (%d children)", t._class_name, k, #names), 2)
  end
  rawset(t, k, v)
end

---------------------------------------------------------------------------- registration

--- Register a child module under `name` (any string without '.', e.g. "0").
function Module:add_module(name, m)
  if m ~= nil and not is_module(m) then
    error(string.format("add_module: '%s' must be a module or nil, got %s", tostring(name), type(m)), 2)
  end
  add_name(self, name, "module")
  rawset(self, name, m)
  return m
end

--- Register a parameter (a tensor, made a leaf that requires grad, or nil).
function Module:register_parameter(name, t)
  if t ~= nil and not is_tensor(t) then
    error(string.format("register_parameter: '%s' must be a tensor or nil, got %s", tostring(name), type(t)), 2)
  end
  add_name(self, name, "param")
  if t ~= nil then
    -- a parameter is a leaf (as nn.Parameter): a computed tensor is detached first
    if not t.is_leaf then t = t:detach() end
    if not t.requires_grad then t.requires_grad = true end
  end
  rawset(self, name, t)
  return t
end

--- Register a buffer: state that is not trained (running statistics).
-- opts.persistent = false keeps it out of state_dict (to() still moves it).
function Module:register_buffer(name, t, opts)
  if t ~= nil and not is_tensor(t) then
    error(string.format("register_buffer: '%s' must be a tensor or nil, got %s", tostring(name), type(t)), 2)
  end
  add_name(self, name, "buffer")
  self._nonpersistent[name] = (opts and opts.persistent == false) or nil
  rawset(self, name, t)
  return t
end

---------------------------------------------------------------------------- traversal

-- ordered list of {name, child} for present children
local function child_list(self)
  local out = {}
  for _, name in ipairs(self._module_names) do
    local c = rawget(self, name)
    if c ~= nil then out[#out + 1] = { name, c } end
  end
  return out
end

local function list_iter(list)
  local i = 0
  return function()
    i = i + 1
    local e = list[i]
    if e then return e[1], e[2] end
  end
end

--- Iterator over (name, child) of the direct children.
function Module:named_children() return list_iter(child_list(self)) end

--- Iterator over the direct children.
function Module:children()
  local it = list_iter(child_list(self))
  return function() local _, c = it(); return c end
end

-- depth-first pre-order list of {prefix, module}; each module once
local function module_list(self)
  local out, seen = {}, {}
  local function walk(m, prefix)
    if seen[m] then return end
    seen[m] = true
    out[#out + 1] = { prefix, m }
    for _, nc in ipairs(child_list(m)) do
      walk(nc[2], prefix == "" and nc[1] or prefix .. "." .. nc[1])
    end
  end
  walk(self, "")
  return out
end

--- Iterator over (qualified name, module), self first with name "".
function Module:named_modules() return list_iter(module_list(self)) end

--- List of all modules, self first, depth-first.
function Module:modules()
  local out = {}
  for i, e in ipairs(module_list(self)) do out[i] = e[2] end
  return out
end

-- list of {qualified name, tensor} of parameters or buffers. Own entries come
-- before the children's (PyTorch's named_parameters order); a tensor reached
-- twice (tied weights) is listed once.
local function tensor_list(self, kind, include_nonpersistent)
  local out, seen = {}, {}
  for _, e in ipairs(module_list(self)) do
    local prefix, m = e[1], e[2]
    local names = kind == "param" and m._param_names or m._buffer_names
    for _, name in ipairs(names) do
      local t = rawget(m, name)
      if t ~= nil and not seen[t] and (include_nonpersistent or not m._nonpersistent[name]) then
        seen[t] = true
        out[#out + 1] = { prefix == "" and name or prefix .. "." .. name, t }
      end
    end
  end
  return out
end

--- Iterator over (name, parameter) in parameters() order.
function Module:named_parameters() return list_iter(tensor_list(self, "param")) end

--- List of parameters (only those with requires_grad when trainable_only).
function Module:parameters(trainable_only)
  local out = {}
  for _, e in ipairs(tensor_list(self, "param")) do
    if not trainable_only or e[2].requires_grad then out[#out + 1] = e[2] end
  end
  return out
end

--- Iterator over (name, buffer), persistent or not.
function Module:named_buffers() return list_iter(tensor_list(self, "buffer", true)) end

--- List of buffers.
function Module:buffers()
  local out = {}
  for _, e in ipairs(tensor_list(self, "buffer", true)) do out[#out + 1] = e[2] end
  return out
end

--- Number of parameter elements (only trainable ones when trainable_only).
function Module:num_parameters(trainable_only)
  local n = 0
  for _, p in ipairs(self:parameters(trainable_only)) do n = n + p:numel() end
  return n
end

---------------------------------------------------------------------------- state

-- {name, tensor} in PyTorch's state_dict order: for each module (pre-order),
-- its parameters, then its persistent buffers. Unlike parameters(), a tied
-- tensor appears under each of its names, as in PyTorch.
local function state_list(self)
  local out = {}
  local function walk(m, prefix)
    for _, name in ipairs(m._param_names) do
      local t = rawget(m, name)
      if t ~= nil then out[#out + 1] = { prefix .. name, t } end
    end
    for _, name in ipairs(m._buffer_names) do
      local t = rawget(m, name)
      if t ~= nil and not m._nonpersistent[name] then out[#out + 1] = { prefix .. name, t } end
    end
    for _, nc in ipairs(child_list(m)) do walk(nc[2], prefix .. nc[1] .. ".") end
  end
  walk(self, "")
  return out
end

--- state_dict() -> sd, keys. sd: name -> detached tensor sharing storage with
-- the module's; keys: the names in PyTorch's order.
function Module:state_dict()
  local sd, keys = {}, {}
  for i, e in ipairs(state_list(self)) do
    keys[i] = e[1]
    sd[e[1]] = e[2]:detach()
  end
  return sd, keys
end

local function shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

local function same_shape(a, b)
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then return false end
  for i = 1, #sa do if sa[i] ~= sb[i] then return false end end
  return true
end

local function key_list(keys)
  local MAX = 40
  local parts = {}
  for i = 1, math.min(#keys, MAX) do parts[i] = '"' .. keys[i] .. '"' end
  local s = table.concat(parts, ", ")
  if #keys > MAX then s = s .. string.format(", ... (%d more)", #keys - MAX) end
  return s
end

--- load_state_dict(sd, {strict=true}) -> missing, unexpected
-- Copies every entry into the module's existing tensor (converting dtype and
-- device), so references held elsewhere (an optimizer's) stay valid. Nothing
-- is copied unless the whole load can succeed.
function Module:load_state_dict(sd, opts)
  if type(sd) ~= "table" then
    error("load_state_dict: expected a table of name -> tensor, got " .. type(sd), 2)
  end
  local strict = true
  if opts ~= nil and opts.strict ~= nil then strict = opts.strict end
  local own = state_list(self)
  local known = {}
  local missing, mismatch, copies = {}, {}, {}
  for _, e in ipairs(own) do
    local name, dst = e[1], e[2]
    known[name] = true
    local src = sd[name]
    if src == nil then
      -- checkpoints written before BatchNorm had this buffer (PyTorch fills it in too)
      if not name:match("num_batches_tracked$") then missing[#missing + 1] = name end
    elseif not is_tensor(src) then
      mismatch[#mismatch + 1] = string.format("%s: expected a tensor, got %s", name, type(src))
    elseif not same_shape(src, dst) then
      mismatch[#mismatch + 1] = string.format("size mismatch for %s: copying a param with shape %s from checkpoint, "
        .. "the shape in current model is %s", name, shape_str(src), shape_str(dst))
    else
      copies[#copies + 1] = { dst, src }
    end
  end
  local unexpected = {}
  for k in pairs(sd) do
    if not known[k] then unexpected[#unexpected + 1] = tostring(k) end
  end
  table.sort(unexpected)
  local errs = {}
  if #mismatch > 0 then errs[#errs + 1] = table.concat(mismatch, "; ") end
  if strict and #missing > 0 then errs[#errs + 1] = "missing keys: " .. key_list(missing) end
  if strict and #unexpected > 0 then errs[#errs + 1] = "unexpected keys: " .. key_list(unexpected) end
  if #errs > 0 then
    error(string.format("load_state_dict: error(s) loading state_dict for %s: %s", self._class_name,
      table.concat(errs, "; ")), 2)
  end
  core.no_grad(function()
    for _, c in ipairs(copies) do c[1]:copy_(c[2]) end
  end)
  return missing, unexpected
end

---------------------------------------------------------------------------- modes

--- Set training mode recursively (mode defaults to true). Returns self.
function Module:train(mode)
  if mode == nil then mode = true end
  rawset(self, "training", mode and true or false)
  for _, nc in ipairs(child_list(self)) do nc[2]:train(mode) end
  return self
end

--- Evaluation mode: train(false).
function Module:eval() return self:train(false) end

--- Call fn(module) on every submodule, children first, then self. Returns self.
function Module:apply(fn)
  for _, nc in ipairs(child_list(self)) do nc[2]:apply(fn) end
  fn(self)
  return self
end

local function set_requires_grad(self, pattern, flag)
  if pattern ~= nil and type(pattern) ~= "string" then
    error("freeze/unfreeze: pattern must be a Lua pattern string or nil", 3)
  end
  for _, e in ipairs(tensor_list(self, "param")) do
    if pattern == nil or e[1]:find(pattern) then e[2].requires_grad = flag end
  end
  return self
end

--- Stop gradients for parameters whose name matches the Lua pattern (all when nil).
function Module:freeze(pattern) return set_requires_grad(self, pattern, false) end

--- Re-enable gradients for parameters whose name matches the pattern (all when nil).
function Module:unfreeze(pattern) return set_requires_grad(self, pattern, true) end

--- Drop every parameter's gradient (p.grad = nil).
function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

---------------------------------------------------------------------------- conversion

local DTYPE_ALIASES = {
  f32 = "f32", float32 = "f32", float = "f32", f64 = "f64", float64 = "f64", double = "f64",
  f16 = "f16", float16 = "f16", half = "f16", bf16 = "bf16", bfloat16 = "bf16",
}

--- to(dtype_or_device, ...) or to{dtype=, device=}: convert every parameter
-- and buffer. A dtype applies to floating-point tensors only (BatchNorm's
-- num_batches_tracked stays i64). Parameters stay leaves with their
-- requires_grad; gradients are converted along. Returns self.
function Module:to(...)
  local dtype, device
  for i = 1, select("#", ...) do
    local a = select(i, ...)
    if type(a) == "table" then
      dtype, device = a.dtype or dtype, a.device or device
    elseif type(a) == "string" then
      if a:sub(1, 3) == "cpu" or a:sub(1, 4) == "cuda" then device = a else dtype = a end
    elseif a ~= nil then
      error("to: expected a dtype name, a device name or {dtype=, device=}, got " .. type(a), 2)
    end
  end
  if dtype ~= nil then
    local canon = DTYPE_ALIASES[dtype]
    if not canon then
      error("to: modules only convert to floating-point dtypes (f32, f64, f16, bf16), got '" .. tostring(dtype) .. "'", 2)
    end
    dtype = canon
  end
  local want_device = device == "cuda" and "cuda:0" or device
  -- a tensor already of the wanted dtype and device is kept (same object), so
  -- to() on a module that needs no conversion leaves its parameters untouched
  local function convert(t)
    local args = {}
    if want_device and t:device() ~= want_device then args.device = device end
    if dtype and FLOAT_DTYPES[t:dtype()] and t:dtype() ~= dtype then args.dtype = dtype end
    if next(args) == nil then return t end
    return t:to(args)
  end
  core.no_grad(function()
    for _, m in ipairs(self:modules()) do
      for _, name in ipairs(m._param_names) do
        local p = rawget(m, name)
        if p ~= nil then
          local q = convert(p)
          if not rawequal(q, p) then
            q = q:detach()
            q.requires_grad = p.requires_grad
            local g = p.grad
            if g ~= nil then q.grad = convert(g) end
            rawset(m, name, q)
          end
        end
      end
      for _, name in ipairs(m._buffer_names) do
        local b = rawget(m, name)
        if b ~= nil then rawset(m, name, convert(b)) end
      end
    end
  end)
  return self
end

function Module:float() return self:to("f32") end
function Module:double() return self:to("f64") end
function Module:half() return self:to("f16") end
function Module:cuda() return self:to("cuda") end
function Module:cpu() return self:to("cpu") end

---------------------------------------------------------------------------- printing

--- One line describing the module's configuration (override in layers).
function Module:extra_repr() return "" end

local function indent(s)
  return (s:gsub("\n", "\n  "))
end

function Module:__tostring()
  local lines = {}
  local extra = self:extra_repr()
  if extra ~= "" then
    for line in (extra .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
  end
  local children = child_list(self)
  for _, nc in ipairs(children) do
    lines[#lines + 1] = "(" .. nc[1] .. "): " .. indent(tostring(nc[2]))
  end
  local name = self._class_name
  if #children == 0 then
    return name .. "(" .. table.concat(lines, "\n") .. ")"
  end
  return name .. "(\n  " .. table.concat(lines, "\n  ") .. "\n)"
end

---------------------------------------------------------------------------- repr helpers

--- Python's repr of a float (shortest round-trip form, "2.0" for integers).
function Module.pyfloat(x)
  if x ~= x then return "nan" end
  if x == math.huge then return "inf" elseif x == -math.huge then return "-inf" end
  if x == math.floor(x) and math.abs(x) < 1e16 then return string.format("%.1f", x) end
  for p = 1, 17 do
    local s = string.format("%." .. p .. "g", x)
    if tonumber(s) == x then return s end
  end
  return string.format("%.17g", x)
end

--- Python's repr of a tuple of integers: (3, 3) or (3,).
function Module.pytuple(t)
  if type(t) ~= "table" then return tostring(t) end
  if #t == 1 then return "(" .. tostring(t[1]) .. ",)" end
  local parts = {}
  for i, v in ipairs(t) do parts[i] = tostring(v) end
  return "(" .. table.concat(parts, ", ") .. ")"
end

--- Python's repr of a boolean.
function Module.pybool(b) return b and "True" or "False" end

return Module
