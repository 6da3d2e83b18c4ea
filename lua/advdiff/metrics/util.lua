--- advdiff.metrics.util: argument checks and small helpers shared by the
-- metric modules (not part of the public API).
local core = require "advdiff.core"

local U = {}

function U.is_tensor(x) return core.is_tensor(x) end

function U.shape_str(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

--- options table or {}; errors name the function
function U.opts(fname, opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" or core.is_tensor(opts) then
    error(string.format("%s: options must be a table, got %s", fname, core.is_tensor(opts) and "tensor" or type(opts)), 3)
  end
  return opts
end

--- a positive integer option
function U.posint(fname, name, v, default, min)
  if v == nil then v = default end
  min = min or 1
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
    error(string.format("%s: option '%s' must be an integer, got %s", fname, name, tostring(v)), 3)
  end
  v = math.tointeger(v)
  if v < min then error(string.format("%s: option '%s' must be >= %d, got %d", fname, name, min, v), 3) end
  return v
end

--- the largest k of the CUDA k-NN radii (ADK_KNN_MAXK in kernels/cuda/kernels.h)
U.CUDA_KNN_MAXK = 32

--- (N, D) float features on the CPU, or left on their CUDA device when
-- keep_cuda is true (the caller's op has a CUDA kernel: knn_radii,
-- manifold_counts, mean_cov); errors name the function and the argument
function U.features(fname, what, x, keep_cuda)
  if not core.is_tensor(x) then
    error(string.format("%s: %s must be a feature tensor (N, D), got %s", fname, what, type(x)), 3)
  end
  local s = x:shape()
  if #s ~= 2 then
    error(string.format("%s: %s must be 2-D (N, D), got %d-D %s", fname, what, #s, U.shape_str(x)), 3)
  end
  local dt = x:dtype()
  if dt ~= "f32" and dt ~= "f64" then
    if dt == "f16" or dt == "bf16" then x = x:float()
    else error(string.format("%s: %s must be float features, got %s", fname, what, dt), 3) end
  end
  if x:device() ~= "cpu" and not (keep_cuda and U.on_cuda(x)) then x = x:cpu() end
  return x
end

function U.on_cuda(x) return x:device():sub(1, 4) == "cuda" end

--- a, b (tensors or nil) on one CUDA device: the two-set metric ops can stay there
function U.same_cuda(a, b)
  return core.is_tensor(a) and core.is_tensor(b) and U.on_cuda(a) and a:device() == b:device()
end

--- an optional tensor argument (ids, radii) moved to the features' device
function U.to_device_of(t, x)
  if t == nil or not core.is_tensor(t) or t:device() == x:device() then return t end
  return t:to(x:device())
end

--- error when x holds NaN or Inf, naming the first bad row
function U.check_finite(fname, what, x)
  local ok = x:isfinite():all():item()
  if ok == true or ok == 1 then return end
  local rows = x:isfinite():all(2)
  local n = rows:numel()
  for i = 1, n do
    local v = rows:_getflat(i)
    if v == false or v == 0 then
      error(string.format("%s: %s features contain NaN or Inf (row %d of %d)", fname, what, i, n), 3)
    end
  end
  error(string.format("%s: %s features contain NaN or Inf", fname, what), 3)
end

--- images as float (N, C, H, W) in [0, 1]. u8 images are divided by 255;
-- float images are mapped from range {lo, hi} (default {0, 1}).
function U.images01(fname, x, range)
  if not core.is_tensor(x) then error(string.format("%s: images must be a tensor (N, C, H, W), got %s", fname, type(x)), 3) end
  local s = x:shape()
  if #s == 3 then x = x:unsqueeze(1); s = x:shape() end
  if #s ~= 4 then error(string.format("%s: images must be (N, C, H, W), got %d-D %s", fname, #s, U.shape_str(x)), 3) end
  if x:dtype() == "u8" then return x:float() / 255 end
  if x:dtype() ~= "f32" and x:dtype() ~= "f64" then x = x:float() end
  if range ~= nil then
    if type(range) ~= "table" or type(range[1]) ~= "number" or type(range[2]) ~= "number" or not (range[2] > range[1]) then
      error(string.format("%s: option 'range' must be {lo, hi} with hi > lo", fname), 3)
    end
    if range[1] ~= 0 or range[2] ~= 1 then x = (x - range[1]) / (range[2] - range[1]) end
  end
  return x
end

--- wall-clock seconds
function U.now()
  if core._now then return core._now() end
  return os.time()
end

--- the k-th quantile (0..1) of a Lua list of numbers, linear interpolation (NumPy's default)
function U.quantile(list, q)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return 0 / 0 end
  local pos = q * (n - 1) + 1
  local lo = math.floor(pos)
  local hi = math.min(lo + 1, n)
  return s[lo] + (s[hi] - s[lo]) * (pos - lo)
end

function U.mean(list)
  local s = 0
  for _, v in ipairs(list) do s = s + v end
  return s / #list
end

function U.std(list)   -- population (ddof 0), as np.std
  local m, s = U.mean(list), 0
  for _, v in ipairs(list) do s = s + (v - m) ^ 2 end
  return math.sqrt(s / #list)
end

---------------------------------------------------------------------------- JSON

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local map = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
    return map[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function is_array(t)
  local n = #t
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 or k > n then return false end
  end
  return true
end

--- JSON text of a Lua value (tables with keys 1..n are arrays; other keys sorted;
-- NaN/Inf become null; tensors become nested lists)
function U.json(v, indent, cur)
  indent = indent or "  "
  cur = cur or ""
  local t = type(v)
  if v == nil then return "null"
  elseif t == "boolean" then return tostring(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  elseif t == "string" then return json_string(v)
  elseif core.is_tensor(v) then return U.json(v:tolist(), indent, cur)
  elseif t == "table" then
    local nxt = cur .. indent
    if is_array(v) then
      if #v == 0 then return "[]" end
      local simple = true
      for _, e in ipairs(v) do if type(e) == "table" then simple = false end end
      local parts = {}
      for i, e in ipairs(v) do parts[i] = U.json(e, indent, nxt) end
      if simple then return "[" .. table.concat(parts, ", ") .. "]" end
      return "[\n" .. nxt .. table.concat(parts, ",\n" .. nxt) .. "\n" .. cur .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      local val = v[k]
      if val == nil then val = v[tonumber(k)] end
      parts[#parts + 1] = json_string(k) .. ": " .. U.json(val, indent, nxt)
    end
    if #parts == 0 then return "{}" end
    return "{\n" .. nxt .. table.concat(parts, ",\n" .. nxt) .. "\n" .. cur .. "}"
  end
  return json_string(tostring(v))
end

function U.write_file(path, text)
  local f, err = io.open(path, "wb")
  if not f then error("cannot write " .. path .. ": " .. tostring(err), 3) end
  f:write(text)
  f:close()
end

function U.mkdir(path)
  -- a directory that already exists is fine; os.execute is the portable way in plain Lua
  local ok = os.execute("mkdir -p '" .. path:gsub("'", "'\\''") .. "'")
  if not ok then error("cannot create directory " .. path, 3) end
end

return U
