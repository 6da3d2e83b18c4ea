--- advdiff.sweep.spec: reading and checking a sweep file, and expanding it into
-- runs.
--
-- A sweep file is a Lua file that returns a table:
--
--   return {
--     script = "experiments/quickstart.lua",    -- run as `advdiff <script> --set k=v ... --set out=<run dir>`
--     grid = { lambda_adv = {0.001, 0.002}, gate_region = {0.3, 0.5} },   -- every combination
--     -- or: random = { n = 8, seed = 1, space = {
--     --        ["opt.lr"] = {"log", 1e-6, 1e-4},    -- log-uniform
--     --        dropout = {"uniform", 0, 0.3},      -- uniform
--     --        d_updates_per_g = {"int", 1, 4},    -- integer, both ends included
--     --        frozen = {"choice", {"", "input_blocks"}},  -- or a plain list {a, b, ...}
--     --   } },
--     set = { steps = 200 },        -- fixed overrides for every run
--     parallel = 2,                 -- runs at a time (default: the number of cores)
--     metric = "recall",            -- the column the results table is sorted by
--     order = "desc",               -- "desc" (higher first) or "asc"; default desc, asc for fid/loss/error/kid
--     out = "runs/sweeps/lambda",   -- default runs/sweeps/<sweep file name>
--     name = "lambda",              -- default: the sweep file name
--     plot = { sharpness = "sharpness", recall = "recall", fid = "fid" },   -- result keys of the trade-off plot
--     slurm = { "--gres=gpu:1", "--time=02:00:00" },   -- extra #SBATCH lines for --slurm
--   }
--
-- Keys are any keys of the experiment's ad.config table, dotted keys
-- included. Values are numbers, strings, booleans or lists (passed as the
-- comma lists ad.config reads: {1, 2} -> "1,2").
local M = {}

local TOP_KEYS = {
  script = true, grid = true, random = true, set = true, parallel = true, metric = true, order = true,
  out = true, name = true, plot = true, slurm = true, advdiff = true,
}

local function fail(where, fmt, ...)
  error(string.format("sweep: %s: " .. fmt, where, ...), 0)
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end
M.sorted_keys = sorted_keys

local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local function check_key(where, k)
  if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") and not k:match("^[%a_][%w_]*[%.%w_]*[%w_]$") then
    fail(where, "keys must be config names like lr or opt.lr, got %s", type(k) == "string" and string.format("%q", k) or tostring(k))
  end
end

local function check_value(where, v)
  local t = type(v)
  if t == "number" or t == "string" or t == "boolean" then
    if t == "number" and v ~= v then fail(where, "NaN is not a valid value") end
    return
  end
  if t == "table" and is_list(v) then
    for i, x in ipairs(v) do
      local tx = type(x)
      if tx ~= "number" and tx ~= "string" and tx ~= "boolean" then
        fail(where, "a list value may hold numbers, strings or booleans, element %d is a %s", i, tx)
      end
    end
    return
  end
  fail(where, "values must be numbers, strings, booleans or lists of them, got a %s", t == "table" and "table with named keys" or t)
end

--- The --set text of a value: what ad.config reads back as the same value.
function M.format_value(v)
  local t = type(v)
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    if v == math.huge then return "inf" end
    if v == -math.huge then return "-inf" end
    for p = 1, 17 do
      local s = string.format("%." .. p .. "g", v)
      if tonumber(s) == v then return s end
    end
    return string.format("%.17g", v)
  elseif t == "table" then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = M.format_value(x) end
    return table.concat(parts, ",")
  end
  return tostring(v)
end

local function check_grid(grid)
  if type(grid) ~= "table" then fail("grid", "must be a table of key = {values...}, got a %s", type(grid)) end
  if next(grid) == nil then fail("grid", "is empty; give at least one key = {values...}") end
  for _, k in ipairs(sorted_keys(grid)) do
    check_key("grid", k)
    local vals = grid[k]
    if type(vals) ~= "table" or not is_list(vals) then
      fail("grid", "%s must be a list of values like {0.001, 0.002}, got %s", k, type(vals) == "table" and "a table with named keys" or "a " .. type(vals))
    end
    if #vals == 0 then fail("grid", "%s has no values", k) end
    for i, v in ipairs(vals) do check_value(string.format("grid.%s[%d]", k, i), v) end
  end
end

local DISTS = { log = 3, uniform = 3, int = 3, choice = 2 }

local function check_random(r)
  if type(r) ~= "table" then fail("random", "must be a table {n=, seed=, space={...}}, got a %s", type(r)) end
  for k in pairs(r) do
    if k ~= "n" and k ~= "seed" and k ~= "space" then fail("random", "unknown field %s (valid: n, seed, space)", tostring(k)) end
  end
  if math.type(r.n) ~= "integer" or r.n < 1 then fail("random", "n must be a positive integer, got %s", tostring(r.n)) end
  if r.seed ~= nil and math.type(r.seed) ~= "integer" then fail("random", "seed must be an integer, got %s", tostring(r.seed)) end
  if type(r.space) ~= "table" or next(r.space) == nil then
    fail("random", "space must be a non-empty table of key = distribution")
  end
  for _, k in ipairs(sorted_keys(r.space)) do
    check_key("random.space", k)
    local d = r.space[k]
    local where = "random.space." .. k
    if type(d) ~= "table" or not is_list(d) or #d == 0 then
      fail(where, "must be {\"log\", lo, hi}, {\"uniform\", lo, hi}, {\"int\", lo, hi}, {\"choice\", {values}} or a list of values")
    end
    local kind = d[1]
    if type(kind) == "string" and DISTS[kind] then
      if #d ~= DISTS[kind] then fail(where, "%q takes %d arguments, got %d", kind, DISTS[kind] - 1, #d - 1) end
      if kind == "choice" then
        if type(d[2]) ~= "table" or not is_list(d[2]) or #d[2] == 0 then fail(where, "\"choice\" needs a non-empty list of values") end
        for i, v in ipairs(d[2]) do check_value(where .. "[" .. i .. "]", v) end
      else
        local lo, hi = d[2], d[3]
        if type(lo) ~= "number" or type(hi) ~= "number" then fail(where, "%q needs numeric bounds, got %s and %s", kind, tostring(lo), tostring(hi)) end
        if not (lo <= hi) then fail(where, "lower bound %s is above upper bound %s", M.format_value(lo), M.format_value(hi)) end
        if kind == "log" and lo <= 0 then fail(where, "\"log\" needs positive bounds, got %s", M.format_value(lo)) end
        if kind == "int" and (math.tointeger(lo) == nil or math.tointeger(hi) == nil) then
          fail(where, "\"int\" needs integer bounds, got %s and %s", M.format_value(lo), M.format_value(hi))
        end
      end
    elseif type(kind) == "string" and #d == 3 and type(d[2]) == "number" and type(d[3]) == "number" then
      fail(where, "unknown distribution %q (valid: log, uniform, int, choice)", kind)
    else
      for i, v in ipairs(d) do check_value(where .. "[" .. i .. "]", v) end
    end
  end
end

--- Checks a sweep table and fills in defaults. `file` is the sweep file's
-- path (for defaults and messages), or nil for a table built in Lua.
function M.check(spec, file)
  local where = file or "sweep table"
  if type(spec) ~= "table" then
    error(string.format("sweep: %s must return a table, got %s", where, type(spec)), 0)
  end
  for k in pairs(spec) do
    if not TOP_KEYS[k] and k ~= "file" and k ~= "_checked" then -- the last two: set by an earlier check
      error(string.format("sweep: %s: unknown field '%s' (valid: %s)", where, tostring(k),
        table.concat(sorted_keys(TOP_KEYS), ", ")), 0)
    end
  end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  if type(s.script) ~= "string" or s.script == "" then
    error(string.format("sweep: %s: 'script' must name the experiment script (e.g. \"experiments/quickstart.lua\")", where), 0)
  end
  if s.grid ~= nil and s.random ~= nil then
    error(string.format("sweep: %s: give either 'grid' or 'random', not both", where), 0)
  end
  if s.grid == nil and s.random == nil then
    error(string.format("sweep: %s: needs 'grid' = {key = {values}} or 'random' = {n=, seed=, space={...}}", where), 0)
  end
  if s.grid ~= nil then check_grid(s.grid) else check_random(s.random) end
  s.set = s.set or {}
  if type(s.set) ~= "table" then fail("set", "must be a table of key = value, got a %s", type(s.set)) end
  for _, k in ipairs(sorted_keys(s.set)) do
    check_key("set", k)
    if k == "out" then fail("set", "'out' is chosen by the sweep (one folder per run)") end
    check_value("set." .. k, s.set[k])
  end
  local swept = s.grid or s.random.space
  if swept.out ~= nil then fail(s.grid and "grid" or "random.space", "'out' is chosen by the sweep (one folder per run)") end
  if s.parallel ~= nil and (math.type(s.parallel) ~= "integer" or s.parallel < 1) then
    fail("parallel", "must be a positive integer, got %s", tostring(s.parallel))
  end
  if s.metric ~= nil and type(s.metric) ~= "string" then fail("metric", "must be a result key (a string), got a %s", type(s.metric)) end
  if s.order ~= nil and s.order ~= "asc" and s.order ~= "desc" then
    fail("order", "must be \"asc\" or \"desc\", got %s", tostring(s.order))
  end
  if s.order == nil then
    local m = (s.metric or ""):lower()
    local lower_better = m:match("fid") or m:match("loss") or m:match("error") or m:match("kid")
    s.order = lower_better and "asc" or "desc"
  end
  local base = file and file:match("([^/]+)$"):gsub("%.lua$", "") or "sweep"
  if s.name ~= nil and (type(s.name) ~= "string" or not s.name:match("^[%w_%-%.]+$")) then
    fail("name", "must be a simple name (letters, digits, _ - .), got %s", tostring(s.name))
  end
  s.name = s.name or base
  if s.out ~= nil and (type(s.out) ~= "string" or s.out == "") then fail("out", "must be a directory path") end
  s.out = (s.out or ("runs/sweeps/" .. s.name)):gsub("/+$", "")
  if s.plot ~= nil and type(s.plot) ~= "table" then fail("plot", "must be a table {sharpness=, recall=, fid=}") end
  local plot = { sharpness = "sharpness", recall = "recall", fid = "fid" }
  for k, v in pairs(s.plot or {}) do
    if plot[k] == nil then fail("plot", "unknown field %s (valid: sharpness, recall, fid)", tostring(k)) end
    if type(v) ~= "string" then fail("plot", "%s must name a result key", k) end
    plot[k] = v
  end
  s.plot = plot
  if s.slurm ~= nil then
    if type(s.slurm) ~= "table" or not is_list(s.slurm) then fail("slurm", "must be a list of #SBATCH options like {\"--time=01:00:00\"}") end
    for i, o in ipairs(s.slurm) do
      if type(o) ~= "string" or not o:match("^%-") then fail("slurm", "option %d must be a string like \"--gres=gpu:1\"", i) end
    end
  end
  s.file = file
  return s
end

--- Loads and checks a sweep file.
function M.load(path)
  if type(path) ~= "string" then error("sweep: expected a sweep file path, got a " .. type(path), 0) end
  local chunk, err = loadfile(path, "t", setmetatable({}, { __index = _G }))
  if not chunk then
    local f = io.open(path, "r")
    if not f then error("sweep: cannot open sweep file '" .. path .. "'", 0) end
    f:close()
    error("sweep: " .. err, 0)
  end
  local ok, spec = pcall(chunk)
  if not ok then error("sweep: " .. path .. ": " .. tostring(spec), 0) end
  return M.check(spec, path)
end

---------------------------------------------------------------------------- expansion

-- splitmix64: a small self-contained generator, so a random sweep is the same
-- on every machine and does not disturb math.random
local function rng(seed)
  local state = seed
  local function next64()
    state = state + 0x9E3779B97F4A7C15
    local z = state
    z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ~ (z >> 27)) * 0x94D049BB133111EB
    return z ~ (z >> 31)
  end
  return function() -- uniform in [0, 1)
    return (next64() >> 11) * (1.0 / 9007199254740992.0)
  end
end

local function round_sig(x)
  -- 6 significant digits: readable run names and --set values, still distinct
  return tonumber(string.format("%.6g", x))
end

local function draw(u, d)
  local kind = d[1]
  if kind == "log" then
    return round_sig(math.exp(math.log(d[2]) + u() * (math.log(d[3]) - math.log(d[2]))))
  elseif kind == "uniform" then
    return round_sig(d[2] + u() * (d[3] - d[2]))
  elseif kind == "int" then
    local lo, hi = math.tointeger(d[2]), math.tointeger(d[3])
    return lo + math.min(hi - lo, math.floor(u() * (hi - lo + 1)))
  else
    local vals = kind == "choice" and d[2] or d
    return vals[1 + math.min(#vals - 1, math.floor(u() * #vals))]
  end
end

local function slug(s)
  return (s:gsub("[^%w%.%-_=,]", "_"))
end

local function fnv1a(s)
  local h = 0xcbf29ce484222325
  for i = 1, #s do h = ((h ~ s:byte(i)) * 0x100000001b3) end
  return string.format("%08x", h & 0xffffffff)
end

--- The runs of a checked sweep: a list of {index=, id=, point={swept key =
-- value}, overrides={every --set key = value (fixed and swept)}}. The grid
-- varies its last key (in sorted order) fastest.
function M.expand(s)
  local points = {}
  if s.grid then
    local keys = sorted_keys(s.grid)
    local function rec(i, cur)
      if i > #keys then
        local p = {}
        for k, v in pairs(cur) do p[k] = v end
        points[#points + 1] = p
        return
      end
      for _, v in ipairs(s.grid[keys[i]]) do
        cur[keys[i]] = v
        rec(i + 1, cur)
      end
      cur[keys[i]] = nil
    end
    rec(1, {})
  else
    local keys = sorted_keys(s.random.space)
    local u = rng(s.random.seed or 0)
    for _ = 1, s.random.n do
      local p = {}
      for _, k in ipairs(keys) do p[k] = draw(u, s.random.space[k]) end
      points[#points + 1] = p
    end
  end
  local width = math.max(3, #tostring(#points))
  local runs = {}
  for i, p in ipairs(points) do
    local ov = {}
    for k, v in pairs(s.set) do ov[k] = v end
    for k, v in pairs(p) do ov[k] = v end
    local parts = {}
    for _, k in ipairs(sorted_keys(p)) do parts[#parts + 1] = k .. "=" .. M.format_value(p[k]) end
    local name = slug(table.concat(parts, ","))
    if #name > 60 then name = name:sub(1, 50) .. "-" .. fnv1a(table.concat(parts, ",")) end
    runs[i] = { index = i, id = string.format("%0" .. width .. "d-%s", i - 1, name), point = p, overrides = ov }
  end
  return runs
end

--- The executable's arguments of a run: script, the --set pairs in sorted key
-- order, then out.
function M.argv(s, run, dir)
  local argv = { s.script }
  for _, k in ipairs(sorted_keys(run.overrides)) do
    argv[#argv + 1] = "--set"
    argv[#argv + 1] = k .. "=" .. M.format_value(run.overrides[k])
  end
  argv[#argv + 1] = "--set"
  argv[#argv + 1] = "out=" .. dir
  return argv
end

return M
