--- advdiff.config: command-line overrides for a script's config table.
--
--   advdiff train.lua --set lr=1e-4 --set opt.betas=0.9,0.99 --set sample=false
--
-- and in train.lua
--
--   local cfg = ad.config{ lr = 5e-6, sample = true, opt = { betas = {0.9, 0.999} } }
--
-- `ad.config(defaults)` returns a copy of `defaults` with the overrides
-- applied, each value converted to the type of its default. A key that names
-- nothing in the defaults is an error that lists the valid keys, so a typo
-- fails at once instead of silently training with the default.
--
-- The executable stores the `--set` pairs, as a map key -> string, in
-- package.loaded["advdiff.config.cli"] before any script runs. Under plain
-- lua5.4 that entry is absent and there are no overrides.

local M = {}

--- The overrides given on the command line: key (possibly dotted) -> string.
M.overrides = {}
do
  local cli = package.loaded["advdiff.config.cli"]
  if type(cli) == "table" then
    for k, v in pairs(cli) do M.overrides[k] = v end
  end
end

local function fail(fmt, ...)
  error("config: " .. string.format(fmt, ...), 0)
end

local function deep_copy(v, seen)
  if type(v) ~= "table" then return v end
  if seen[v] then return seen[v] end
  local c = {}
  seen[v] = c
  for k, x in next, v do c[deep_copy(k, seen)] = deep_copy(x, seen) end
  return setmetatable(c, getmetatable(v))
end

-- A list is a table whose keys are exactly 1..n (an empty table counts as a
-- list: it takes a comma list). Any other table is a group of named options.
local function is_list(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  return n == #t
end

-- every settable key of defaults, dotted, sorted: "batch", "opt.lr", ...
local function valid_keys(t, prefix, out)
  out = out or {}
  for k, v in next, t do
    if type(k) == "string" then
      if type(v) == "table" and not is_list(v) then
        valid_keys(v, prefix .. k .. ".", out)
      else
        out[#out + 1] = prefix .. k
      end
    end
  end
  if prefix == "" then table.sort(out) end
  return out
end

local function describe(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

local SPECIAL = { inf = math.huge, ["+inf"] = math.huge, ["-inf"] = -math.huge, nan = 0 / 0 }

local function to_number(key, v, default)
  local n = v
  if type(v) == "string" then
    n = tonumber(v)
    if n == nil then n = SPECIAL[v:lower():match("^%s*(.-)%s*$")] end
  end
  if type(n) ~= "number" then fail("%s expects a number, got %s", key, describe(v)) end
  -- An integer default (a step count, a batch size) stays an integer when the
  -- new value is integral; otherwise the value is taken as given, so `lr = 1`
  -- can still be overridden with 0.5.
  if math.type(default) == "integer" then return math.tointeger(n) or n end
  if math.type(default) == "float" then return n + 0.0 end
  return n
end

local function to_boolean(key, v)
  if type(v) == "boolean" then return v end
  if v == "true" then return true end
  if v == "false" then return false end
  fail("%s expects true or false, got %s", key, describe(v))
end

-- "1,2,3" -> {1, 2, 3}; elements take the type of the default's elements
-- (numbers when the default list is empty or numeric).
local function to_list(key, v, default)
  local kind = "number"
  for _, x in ipairs(default) do
    if type(x) == "string" or type(x) == "boolean" then kind = type(x) end
    break
  end
  local items = {}
  if type(v) == "table" then
    for i, x in ipairs(v) do items[i] = x end
  elseif type(v) == "string" then
    if v:match("^%s*$") == nil then
      for item in (v .. ","):gmatch("([^,]*),") do items[#items + 1] = item:match("^%s*(.-)%s*$") end
    end
  else
    fail("%s expects a comma list like 1,2,3, got %s", key, describe(v))
  end
  local out = {}
  for i, x in ipairs(items) do
    local ik = string.format("%s[%d]", key, i)
    if kind == "number" then
      if x == "" then fail("%s expects a comma list like 1,2,3, got %s", key, describe(v)) end
      out[i] = to_number(ik, x, default[i] or default[1])
    elseif kind == "boolean" then
      out[i] = to_boolean(ik, x)
    else
      out[i] = tostring(x)
    end
  end
  return out
end

local function convert(key, v, default)
  local t = type(default)
  if t == "number" then return to_number(key, v, default) end
  if t == "boolean" then return to_boolean(key, v) end
  if t == "string" then
    if type(v) == "string" or type(v) == "number" then return tostring(v) end
    fail("%s expects a string, got %s", key, describe(v))
  end
  if t == "table" then return to_list(key, v, default) end
  fail("%s has a default of type %s, which cannot be set from an override", key, t)
end

local function unknown(key, defaults)
  fail("unknown key '%s' (valid keys: %s)", key, table.concat(valid_keys(defaults, ""), ", "))
end

--- Return a copy of `defaults` with `overrides` (key -> value; keys may be
-- dotted, "opt.lr", to reach nested tables) applied. String values are
-- converted to the type of the default: number, boolean ("true"/"false"),
-- string, or a list from a comma list "1,2,3". Non-string values must already
-- have the default's type. Raises on a key absent from `defaults`.
function M.apply(defaults, overrides)
  if type(defaults) ~= "table" then
    fail("defaults must be a table, got %s", type(defaults))
  end
  overrides = overrides or {}
  if type(overrides) ~= "table" then
    fail("overrides must be a table, got %s", type(overrides))
  end
  local cfg = deep_copy(defaults, {})
  local keys = {}
  for k in pairs(overrides) do
    if type(k) ~= "string" then fail("override keys must be strings, got %s", describe(k)) end
    keys[#keys + 1] = k
  end
  table.sort(keys)  -- deterministic: the same error whatever the table order
  for _, key in ipairs(keys) do
    local parts = {}
    for p in (key .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = p end
    local node = cfg
    for i = 1, #parts - 1 do
      local sub = rawget(node, parts[i])
      if type(sub) ~= "table" or is_list(sub) then unknown(key, defaults) end
      node = sub
    end
    local last = parts[#parts]
    local default = rawget(node, last)
    if last == "" or default == nil then unknown(key, defaults) end
    if type(default) == "table" and not is_list(default) then
      local sub = {}
      for _, k in ipairs(valid_keys(default, "")) do sub[#sub + 1] = key .. "." .. k end
      fail("'%s' is a group of options; set one of them (%s)", key, table.concat(sub, ", "))
    end
    node[last] = convert(key, overrides[key], default)
  end
  return cfg
end

--- ad.config(defaults [, overrides]): apply the command-line overrides (or
-- the given ones) to a copy of defaults.
return setmetatable(M, {
  __call = function(_, defaults, overrides)
    return M.apply(defaults, overrides or M.overrides)
  end,
})
