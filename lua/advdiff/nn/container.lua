--- advdiff.nn.container: Sequential, ModuleList, ModuleDict.
-- Children of Sequential and ModuleList are named "0", "1", ... as in
-- PyTorch (so "input_blocks.3.0.weight" style keys match checkpoints) and
-- indexed from 1 in Lua: seq[1] is the child named "0".
local Module = require "advdiff.nn.module"

local M = {}

-- the modules given either as varargs or as one plain list table
local function module_args(cls_name, ...)
  local n = select("#", ...)
  local first = ...
  local list
  if n == 1 and type(first) == "table" and not Module.is_module(first) then
    list = first
  else
    list = table.pack(...)
    list.n = nil
  end
  for i, m in ipairs(list) do
    if not Module.is_module(m) then
      error(string.format("%s: element %d is not a module (%s)", cls_name, i, type(m)), 3)
    end
  end
  return list
end

local function append(self, m)
  if not Module.is_module(m) then
    error(self._class_name .. ":append: expected a module, got " .. type(m), 2)
  end
  self:add_module(tostring(#self._module_names), m)
  return self
end

local function len(self) return #rawget(self, "_module_names") end

--- Sequential(m1, m2, ...) or Sequential{m1, m2, ...}: forward chains the children.
local Sequential = Module:extend("Sequential", { _int_index = true, __len = len })
M.Sequential = Sequential

function Sequential:__init(...)
  for _, m in ipairs(module_args("Sequential", ...)) do append(self, m) end
end

Sequential.append = append
Sequential.add = append

function Sequential:forward(x)
  for _, name in ipairs(self._module_names) do
    local m = rawget(self, name)
    if m ~= nil then x = m(x) end
  end
  return x
end

--- ModuleList{m1, m2, ...}: holds children; has no forward of its own.
local ModuleList = Module:extend("ModuleList", { _int_index = true, __len = len })
M.ModuleList = ModuleList

function ModuleList:__init(...)
  for _, m in ipairs(module_args("ModuleList", ...)) do append(self, m) end
end

ModuleList.append = append

function ModuleList:forward()
  error("ModuleList has no forward: iterate over it (for i, m in ipairs(list)) and call the modules", 2)
end

--- ModuleDict{{"name", m}, ...} (ordered) or ModuleDict{name = m, ...} (keys sorted).
-- md.name or md:get(name) reads a child; md:add(name, m) adds one.
local ModuleDict = Module:extend("ModuleDict")
M.ModuleDict = ModuleDict

function ModuleDict:__init(items)
  if items == nil then return end
  if type(items) ~= "table" or Module.is_module(items) then
    error("ModuleDict: expected a table of name = module or a list of {name, module}", 3)
  end
  if #items > 0 then
    for i, pair in ipairs(items) do
      if type(pair) ~= "table" or type(pair[1]) ~= "string" or not Module.is_module(pair[2]) then
        error(string.format("ModuleDict: element %d must be {name, module}", i), 3)
      end
      self:add_module(pair[1], pair[2])
    end
  else
    local keys = {}
    for k in pairs(items) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      if type(k) ~= "string" or not Module.is_module(items[k]) then
        error("ModuleDict: entry " .. tostring(k) .. " must map a string name to a module", 3)
      end
      self:add_module(k, items[k])
    end
  end
end

function ModuleDict:add(name, m) self:add_module(name, m); return self end
function ModuleDict:get(name) return rawget(self, name) end
function ModuleDict:keys()
  local out = {}
  for _, name in ipairs(self._module_names) do
    if rawget(self, name) ~= nil then out[#out + 1] = name end
  end
  return out
end
function ModuleDict:forward()
  error("ModuleDict has no forward: index it (md.name) and call the module", 2)
end

return M
