--- advdiff.testing: numerical checks used by the test suites and by users
-- writing their own ops or autograd functions.
local core = require "advdiff.core"

local M = {}

local function fmt_shape(t) return "[" .. table.concat(t:shape(), ", ") .. "]" end

--- Compare two tensors (or numbers) elementwise: |a-b| <= atol + rtol*|b|.
-- Raises an error naming the worst element when they differ.
function M.assert_close(a, b, opts, msg)
  opts = opts or {}
  local atol, rtol = opts.atol or 1e-6, opts.rtol or 1e-5
  msg = msg and (msg .. ": ") or ""
  if type(a) == "number" and type(b) == "number" then
    if not (math.abs(a - b) <= atol + rtol * math.abs(b)) then
      error(string.format("%snumbers differ: %.10g vs %.10g", msg, a, b), 2)
    end
    return true
  end
  if type(b) == "number" then b = core.full_like(a, b) end
  local sa, sb = a:shape(), b:shape()
  if #sa ~= #sb then error(msg .. "shapes differ: " .. fmt_shape(a) .. " vs " .. fmt_shape(b), 2) end
  for i = 1, #sa do
    if sa[i] ~= sb[i] then error(msg .. "shapes differ: " .. fmt_shape(a) .. " vs " .. fmt_shape(b), 2) end
  end
  local n = a:numel()
  local worst, wi, wa, wb = -1, 0, 0, 0
  for i = 1, n do
    local x, y = a:_getflat(i), b:_getflat(i)
    local bad
    if x ~= x or y ~= y then bad = (x == x) ~= (y == y) and math.huge or 0
    elseif x == y then bad = 0
    else bad = math.abs(x - y) - (atol + rtol * math.abs(y)) end
    if bad > worst then worst, wi, wa, wb = bad, i, x, y end
  end
  if worst > 0 then
    error(string.format("%stensors differ at flat index %d: %.10g vs %.10g (atol %g, rtol %g, shape %s)",
      msg, wi, wa, wb, atol, rtol, fmt_shape(a)), 2)
  end
  return true
end

--- Gradient check by central finite differences.
-- fn(...) returns a tensor; inputs is a list of tensors (f64 recommended);
-- those with requires_grad are checked. The scalar checked is sum(fn(...) * R)
-- with a fixed random R, so every output element contributes.
-- opts: eps (1e-6), atol (1e-5), rtol (1e-3), seed.
function M.gradcheck(fn, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  local out = fn(table.unpack(inputs))
  local gen = core.Generator(opts.seed or 1234)
  local R = core.randn(out:shape(), { dtype = out:dtype(), generator = gen })
  for _, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then x.grad = nil end
  end
  local loss = (out * R):sum()
  loss:backward()
  local function f()
    return core.no_grad(function() return (fn(table.unpack(inputs)) * R):sum():item() end)
  end
  for k, x in ipairs(inputs) do
    if core.is_tensor(x) and x.requires_grad then
      local g = x.grad
      if g == nil then error(string.format("gradcheck: input %d got no gradient", k), 2) end
      for i = 1, x:numel() do
        local orig = x:_getflat(i)
        x:_setflat(i, orig + eps)
        local fp = f()
        x:_setflat(i, orig - eps)
        local fm = f()
        x:_setflat(i, orig)
        local num = (fp - fm) / (2 * eps)
        local ana = g:_getflat(i)
        if not (math.abs(num - ana) <= atol + rtol * math.abs(num)) then
          error(string.format("gradcheck: input %d %s, element %d: analytical %.10g, numerical %.10g",
            k, fmt_shape(x), i, ana, num), 2)
        end
      end
    end
  end
  return true
end

--- Shared helpers of the test files.

--- Raise unless fn(...) raises an error whose message contains `pattern` (plain text).
function M.raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error containing '" .. pattern .. "'")
  err = tostring(err)
  assert(err:find(pattern, 1, true), "error '" .. err .. "' does not contain '" .. pattern .. "'")
end

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end
M.shape_str = shape_str

--- Raise unless tensor t has shape s (a list of sizes).
function M.check_shape(t, s)
  assert(shape_str(t:shape()) == shape_str(s), "shape " .. shape_str(t:shape()) .. " expected " .. shape_str(s))
end

--- Compare every element of t (row-major) with the list want; booleans, nan
-- and infinities must match exactly, numbers within atol + rtol*|want|.
function M.check_flat(t, want, atol, rtol, msg)
  atol, rtol = atol or 1e-12, rtol or 1e-12
  assert(t:numel() == #want, (msg or "") .. ": numel " .. t:numel() .. " expected " .. #want)
  for i = 1, #want do
    local a, b = t:_getflat(i), want[i]
    if type(b) == "boolean" or type(a) == "boolean" then
      assert(a == b, string.format("%s: element %d is %s, expected %s", msg or "", i, tostring(a), tostring(b)))
    elseif b ~= b then
      assert(a ~= a, string.format("%s: element %d is %s, expected nan", msg or "", i, tostring(a)))
    elseif b == math.huge or b == -math.huge then
      assert(a == b, string.format("%s: element %d is %s, expected %s", msg or "", i, tostring(a), tostring(b)))
    else
      assert(math.abs(a - b) <= atol + rtol * math.abs(b),
        string.format("%s: element %d is %.17g, expected %.17g", msg or "", i, a, b))
    end
  end
end

--- The whole contents of a file (a missing file is an error naming it).
--- The golden fixtures' folder: $ADVDIFF_FIXTURES (ctest and tests/gpu/run.sh set it), else
-- ../shared/fixtures beside the checkout this file is in.
function M.fixtures_dir()
  local env = os.getenv("ADVDIFF_FIXTURES")
  if env and env ~= "" then return env end
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local root = src:match("^(.-)/?lua/advdiff/[^/]+$")
  if root == nil or root == "" then root = "." end
  return root .. "/../shared/fixtures"
end

--- Temporary files for a test file: tmp(suffix) returns a fresh path ending in suffix,
-- track(path) adds a path made otherwise, cleanup() removes them all (os.remove: files and
-- empty folders).
function M.tmpfiles()
  local base = os.tmpname()
  os.remove(base)
  local created = {}
  local function track(path) created[#created + 1] = path; return path end
  local function tmp(suffix) return track(base .. "_" .. #created .. (suffix or "")) end
  local function cleanup() for _, q in ipairs(created) do os.remove(q) end end
  return tmp, cleanup, track, base
end

--- Writes s to path (binary) and returns path.
function M.write_file(path, s)
  local f = assert(io.open(path, "wb"), "cannot write " .. path)
  f:write(s)
  f:close()
  return path
end

function M.read_file(path)
  local f = assert(io.open(path, "rb"), "missing file " .. path)
  local s = f:read("a")
  f:close()
  return s
end

--- A string quoted for sh: 'it'\''s'.
function M.shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

--- Whether path can be opened for reading.
function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- A fresh empty folder under the system's temporary folder.
function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. M.shell_quote(p)), "cannot make the folder " .. p)
  return p
end

--- The names in a folder (with dotfiles, without . and ..); {} when it does not exist.
function M.listdir(dir)
  local h = io.popen("ls -1A " .. M.shell_quote(dir) .. " 2>/dev/null")
  local names = {}
  for l in h:lines() do names[#names + 1] = l end
  h:close()
  return names
end

--- A fixture manifest's "state_dict_keys_and_shapes": ordered list of {name, shape}.
function M.manifest_keys(path)
  local s = M.read_file(path)
  local start = s:find('"state_dict_keys_and_shapes"%s*:%s*{')
  assert(start, "manifest has no state_dict_keys_and_shapes")
  local body = s:sub(start):match('^"state_dict_keys_and_shapes"%s*:%s*(%b{})')
  local out = {}
  for name, dims in body:gmatch('"([^"]+)"%s*:%s*%[([^%]]*)%]') do
    local shape = {}
    for d in dims:gmatch("%d+") do shape[#shape + 1] = tonumber(d) end
    out[#out + 1] = { name, shape }
  end
  return out
end

return M
