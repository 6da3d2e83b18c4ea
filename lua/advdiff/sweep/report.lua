--- advdiff.sweep.report: the results of a sweep's runs as tables (CSV and
-- Markdown) and the sharpness-diversity trade-off plot.
--
-- Metrics are read from each run's results.json, whatever keys it has;
-- nested objects become dotted columns ({eval = {fid = 3}} -> eval.fid).
local json = require "advdiff.log.json"
local spec = require "advdiff.sweep.spec"

local M = {}

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function flatten(t, prefix, out)
  for k, v in pairs(t) do
    local key = prefix .. tostring(k)
    if type(v) == "table" and next(v) ~= nil and #v == 0 then
      flatten(v, key .. ".", out)
    elseif type(v) == "number" or type(v) == "string" or type(v) == "boolean" then
      out[key] = v
    elseif type(v) == "table" then
      out[key] = spec.format_value(v)
    end
  end
  return out
end

--- One row per run of a checked sweep, in the sweep's order: {id=, status=
-- "done"|"failed"|"interrupted"|"stale"|"not run", reason=, point=,
-- metrics={key = value}}, then sorted by the sweep's metric (s.order; runs
-- without the metric last, in sweep order).
function M.results(s, runs)
  runs = runs or spec.expand(s)
  local rows = {}
  for _, r in ipairs(runs) do
    local dir = s.out .. "/" .. r.id
    local row = { id = r.id, index = r.index, point = r.point, metrics = {} }
    local text = read_file(dir .. "/results.json")
    if text then
      local ok, v = pcall(json.decode, text)
      if ok and type(v) == "table" then row.metrics = flatten(v, "", {}) end
    end
    if require("advdiff.sweep").is_done(dir, r.overrides) then
      row.status = "done"
    elseif exists(dir .. "/DONE") and text then
      row.status = "stale" -- done with other overrides; the next run of the sweep redoes it
    elseif exists(dir .. "/FAILED") then
      row.status = "failed"
      row.reason = (read_file(dir .. "/FAILED") or ""):gsub("%s+$", "")
    elseif exists(dir .. "/config.json") then
      row.status = "interrupted"
    else
      row.status = "not run"
    end
    rows[#rows + 1] = row
  end
  local m, desc = s.metric, s.order ~= "asc"
  if m then
    table.sort(rows, function(a, b)
      local x, y = a.metrics[m], b.metrics[m]
      local nx, ny = type(x) == "number" and x == x, type(y) == "number" and y == y
      if nx and ny and x ~= y then
        if desc then return x > y end
        return x < y
      end
      if nx ~= ny then return nx end
      return a.index < b.index
    end)
  end
  return rows
end

--- The columns of a table of rows: run, the swept keys, status, then the
-- metric keys (the sort metric first, the rest sorted).
function M.columns(s, rows)
  local swept = spec.sorted_keys(s.grid or s.random.space)
  local seen, metrics = {}, {}
  for _, r in ipairs(rows) do
    for k in pairs(r.metrics) do
      if not seen[k] then seen[k] = true; metrics[#metrics + 1] = k end
    end
  end
  table.sort(metrics, function(a, b)
    if a == s.metric then return b ~= s.metric end
    if b == s.metric then return false end
    return a < b
  end)
  return swept, metrics
end

local function cell(v, short)
  if v == nil then return "" end
  if type(v) == "number" then
    if short and math.type(v) == "float" then return string.format("%.4g", v) end
    return spec.format_value(v)
  end
  return tostring(v)
end

local function csv_field(s)
  if s:find('[,"\n\r]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end

--- CSV text of the rows (full precision).
function M.csv(s, rows)
  local swept, metrics = M.columns(s, rows)
  local head = { "run" }
  for _, k in ipairs(swept) do head[#head + 1] = k end
  head[#head + 1] = "status"
  for _, k in ipairs(metrics) do head[#head + 1] = k end
  local lines = {}
  for i, h in ipairs(head) do head[i] = csv_field(h) end
  lines[1] = table.concat(head, ",")
  for _, r in ipairs(rows) do
    local f = { csv_field(r.id) }
    for _, k in ipairs(swept) do f[#f + 1] = csv_field(cell(r.point[k])) end
    f[#f + 1] = csv_field(r.status)
    for _, k in ipairs(metrics) do f[#f + 1] = csv_field(cell(r.metrics[k])) end
    lines[#lines + 1] = table.concat(f, ",")
  end
  return table.concat(lines, "\n") .. "\n"
end

local function md_field(s)
  return (s:gsub("|", "\\|"):gsub("\n", " "))
end

--- Markdown table of the rows (4 significant digits).
function M.markdown(s, rows)
  local swept, metrics = M.columns(s, rows)
  local head = { "#", "run" }
  for _, k in ipairs(swept) do head[#head + 1] = k end
  head[#head + 1] = "status"
  for _, k in ipairs(metrics) do head[#head + 1] = k end
  local out = {}
  local title = string.format("Sweep %s: %d runs", s.name, #rows)
  if s.metric then title = title .. string.format(", sorted by %s (%s)", s.metric, s.order == "asc" and "lowest first" or "highest first") end
  out[1] = title
  out[2] = ""
  local function line(fields)
    for i, f in ipairs(fields) do fields[i] = md_field(f) end
    return "| " .. table.concat(fields, " | ") .. " |"
  end
  local sep = {}
  for i = 1, #head do sep[i] = "---" end
  out[#out + 1] = line(head)
  out[#out + 1] = "|" .. table.concat(sep, "|") .. "|"
  for i, r in ipairs(rows) do
    local f = { tostring(i), r.id }
    for _, k in ipairs(swept) do f[#f + 1] = cell(r.point[k], true) end
    f[#f + 1] = r.status == "failed" and ("failed: " .. (r.reason or "")) or r.status
    for _, k in ipairs(metrics) do f[#f + 1] = cell(r.metrics[k], true) end
    out[#out + 1] = line(f)
  end
  return table.concat(out, "\n") .. "\n"
end

--- Writes <out>/results.csv and <out>/results.md; returns {csv=, md=}.
function M.write_tables(s, rows)
  local paths = { csv = s.out .. "/results.csv", md = s.out .. "/results.md" }
  for kind, text in pairs({ csv = M.csv(s, rows), md = M.markdown(s, rows) }) do
    local f, err = io.open(paths[kind], "w")
    if not f then error("sweep: cannot write " .. tostring(err), 0) end
    f:write(text)
    f:close()
  end
  return paths
end

--- The Pareto-optimal points: those no other point beats on both axes.
-- points: list of {x, y, ...}; maximize_x / maximize_y say which way is
-- better. Returns the optimal points sorted by x.
function M.pareto(points, maximize_x, maximize_y)
  local function better_or_eq(a, b, max) if max then return a >= b end return a <= b end
  local function strictly(a, b, max) if max then return a > b end return a < b end
  local front = {}
  for i, p in ipairs(points) do
    local dominated = false
    for j, q in ipairs(points) do
      if i ~= j and better_or_eq(q[1], p[1], maximize_x) and better_or_eq(q[2], p[2], maximize_y)
         and (strictly(q[1], p[1], maximize_x) or strictly(q[2], p[2], maximize_y)) then
        dominated = true
        break
      end
    end
    if not dominated then front[#front + 1] = p end
  end
  table.sort(front, function(a, b) return a[1] < b[1] end)
  return front
end

local function have_gnuplot()
  local ok = os.execute("command -v gnuplot >/dev/null 2>&1")
  return ok == true or ok == 0
end
M._have_gnuplot = have_gnuplot

local function gp_string(s) return '"' .. s:gsub('[\\"]', "\\%0") .. '"' end

--- Plots sharpness against recall (left) and against FID (right), one point
-- per finished run, the Pareto front (high sharpness with high recall / low
-- FID) drawn as a line, to <out>/tradeoff.png. Returns the path, or nil and
-- a message saying why there is no plot (no gnuplot, no run with the keys).
function M.plot(s, rows)
  local keys = s.plot
  local panels = {
    { x = keys.recall, maximize_x = true, title = "sharpness vs recall" },
    { x = keys.fid, maximize_x = false, title = "sharpness vs FID" },
  }
  local any = false
  for _, p in ipairs(panels) do
    p.points = {}
    for _, r in ipairs(rows) do
      local x, y = r.metrics[p.x], r.metrics[keys.sharpness]
      if r.status == "done" and type(x) == "number" and type(y) == "number" and x == x and y == y then
        p.points[#p.points + 1] = { x, y, r.id }
      end
    end
    p.front = M.pareto(p.points, p.maximize_x, true)
    any = any or #p.points > 0
  end
  if not any then
    return nil, string.format("no trade-off plot: no finished run has '%s' with '%s' or '%s' in its results.json",
      keys.sharpness, keys.recall, keys.fid)
  end
  local path = s.out .. "/tradeoff.png"
  if not have_gnuplot() then
    return nil, "no trade-off plot: gnuplot is not installed (Debian: apt-get install gnuplot-nox, or scripts/setup.sh)"
  end
  local dat = s.out .. "/tradeoff.dat"
  local f = assert(io.open(dat, "w"))
  for _, p in ipairs(panels) do
    f:write("# ", p.title, ": all runs\n")
    for _, q in ipairs(p.points) do f:write(string.format("%.17g %.17g %s\n", q[1], q[2], q[3])) end
    f:write("\n\n# ", p.title, ": Pareto front\n")
    for _, q in ipairs(p.front) do f:write(string.format("%.17g %.17g %s\n", q[1], q[2], q[3])) end
    f:write("\n\n")
  end
  f:close()
  local gp = {
    "set terminal pngcairo size 1200,520 noenhanced",
    "set output " .. gp_string(path),
    "set multiplot layout 1,2 title " .. gp_string("Sweep " .. s.name .. ": sharpness-diversity trade-off (one point per run)"),
    "set grid",
    "set key below",
    "set offsets graph 0.08, graph 0.08, graph 0.08, graph 0.08",
  }
  for i, p in ipairs(panels) do
    local b = (i - 1) * 2
    gp[#gp + 1] = "set title " .. gp_string(p.title)
    gp[#gp + 1] = "set xlabel " .. gp_string(p.x)
    gp[#gp + 1] = "set ylabel " .. gp_string(keys.sharpness)
    if #p.points == 0 then
      gp[#gp + 1] = "set label 1 " .. gp_string("no run has " .. p.x) .. " at graph 0.3,0.5"
      gp[#gp + 1] = "plot [0:1][0:1] NaN notitle"
      gp[#gp + 1] = "unset label 1"
    else
      gp[#gp + 1] = string.format("plot %s index %d using 1:2 with points pt 7 ps 1.2 lc rgb '#2060c0' title 'runs', "
        .. "'' index %d using 1:2 with linespoints pt 6 ps 2 lw 2 lc rgb '#d03030' title 'Pareto front'",
        gp_string(dat), b, b + 1)
    end
  end
  gp[#gp + 1] = "unset multiplot"
  local p = io.popen("gnuplot 2>&1 >/dev/null", "w")
  p:write(table.concat(gp, "\n"), "\n")
  local ok = p:close()
  if not ok or not exists(path) then
    -- pngcairo may be missing from a minimal gnuplot; the plain png terminal is always there
    gp[1] = "set terminal png size 1200,520 noenhanced"
    p = io.popen("gnuplot 2>&1 >/dev/null", "w")
    p:write(table.concat(gp, "\n"), "\n")
    ok = p:close()
  end
  if not ok or not exists(path) then return nil, "no trade-off plot: gnuplot failed on " .. dat end
  return path
end

--- Tables and plot of a checked sweep: {rows=, tables={csv=, md=}, plot=, plot_message=}.
function M.report(s)
  local rows = M.results(s)
  local tables = M.write_tables(s, rows)
  local plot, msg = M.plot(s, rows)
  return { rows = rows, tables = tables, plot = plot, plot_message = msg }
end

return M
