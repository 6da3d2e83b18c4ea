--- advdiff.sweep: hyperparameter sweeps (grid and random search) over any
-- keys of an experiment's ad.config table.
--
--   local sweep = require "advdiff.sweep"     -- or ad.sweep
--   local res = sweep.run("experiments/sweep_lambda.lua", {parallel = 2})
--   -- res.rows: one row per run, sorted by the sweep's metric
--
-- or from the shell: `advdiff sweep experiments/sweep_lambda.lua [--parallel N] [--slurm]`.
--
-- Each run is a separate process, `advdiff <script> --set k=v ... --set
-- out=<out>/<run-id>`, in its own folder <out>/<run-id>/ holding config.json
-- (what the run was given), log.txt (its stdout and stderr) and whatever the
-- script writes there, results.json among it (its final metrics). A run that
-- finishes with exit status 0 and a results.json gets a DONE marker; a run
-- with DONE and results.json is never run again, so rerunning an interrupted
-- sweep continues where it stopped, and anything else (half-finished, failed)
-- is run again. A failed run gets a FAILED file with the reason. After the
-- runs, <out>/results.csv and <out>/results.md list every run's swept values
-- and final metrics (whatever keys its results.json has) sorted by the
-- sweep's metric, and <out>/tradeoff.png plots sharpness against recall and
-- FID with the Pareto front marked (through gnuplot, when installed).
--
-- The sweep file format is described in advdiff.sweep.spec.
local core = require "advdiff.core"
local json = require "advdiff.log.json"
local spec = require "advdiff.sweep.spec"
local report = require "advdiff.sweep.report"

local M = {}
M.load = spec.load
M.check = spec.check
M.expand = spec.expand
M.format_value = spec.format_value
M.results = report.results
M.write_tables = report.write_tables
M.pareto = report.pareto
M.plot = report.plot

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end
M._exists = exists

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M._shell_quote = shell_quote

local function mkdir_p(dir)
  local ok = os.execute("mkdir -p " .. shell_quote(dir))
  if not ok then error("sweep: cannot create directory '" .. dir .. "'", 0) end
end
M._mkdir_p = mkdir_p

local function write_file(path, text)
  local f, err = io.open(path, "w")
  if not f then error("sweep: cannot write " .. tostring(err), 0) end
  f:write(text)
  f:close()
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- The sweep table of a path or a table (checked either way).
local function as_spec(s)
  if type(s) == "string" then return spec.load(s) end
  if type(s) == "table" and s._checked then return s end
  local c = spec.check(s, nil)
  c._checked = true
  return c
end
M.spec = as_spec

local function load_spec(s)
  local c = as_spec(s)
  c._checked = true
  return c
end

--- The advdiff executable runs are started with: opts.advdiff, the sweep's
-- `advdiff` field, $ADVDIFF, the running executable when it is advdiff, else
-- "advdiff" from PATH.
function M.executable(s, opts)
  local exe = (opts and opts.advdiff) or s.advdiff or os.getenv("ADVDIFF")
  if exe and exe ~= "" then return exe end
  local self = core._proc_exe and core._proc_exe()
  if self and self:match("advdiff[^/]*$") then return self end
  return "advdiff"
end

--- Where the script is: as given when it exists (relative to the working
-- directory), else next to the sweep file.
function M.script_path(s)
  if exists(s.script) or s.script:sub(1, 1) == "/" or not s.file then return s.script end
  local dir = s.file:match("^(.*)/[^/]*$")
  if dir and exists(dir .. "/" .. s.script) then return dir .. "/" .. s.script end
  return s.script
end

--- Whether a run folder holds a finished run: DONE and results.json, and,
-- when `overrides` is given, a config.json recording the same overrides (a
-- run done with other fixed settings, e.g. after `set` was edited, is stale).
function M.is_done(dir, overrides)
  if not (exists(dir .. "/DONE") and exists(dir .. "/results.json")) then return false end
  if overrides == nil then return true end
  local ok, cfg = pcall(json.decode, read_file(dir .. "/config.json") or "")
  return ok and type(cfg) == "table" and json.encode(cfg.overrides or {}) == json.encode(overrides)
end

local function now() return os.time() end

--- Prepares a run folder for a (re)run: stale markers and results go, the
-- run's config.json is written. Returns the argv to start.
function M.prepare(s, run, exe)
  local dir = s.out .. "/" .. run.id
  mkdir_p(dir)
  os.remove(dir .. "/DONE")
  os.remove(dir .. "/FAILED")
  os.remove(dir .. "/results.json")
  local script = M.script_path(s)
  local sc = { script = script, overrides = run.overrides }
  local argv = spec.argv(setmetatable(sc, { __index = s }), run, dir)
  table.insert(argv, 1, exe)
  write_file(dir .. "/config.json", json.encode({
    sweep = s.name, id = run.id, index = run.index, script = script, point = run.point,
    overrides = run.overrides, out = dir, argv = argv,
  }, { indent = "  " }) .. "\n")
  return argv, dir
end

--- Records how a run ended: DONE (exit 0 and a results.json) or FAILED with
-- the reason. Returns true when it is done, else false and the reason.
function M.finish(dir, how, code, seconds)
  local reason
  if how ~= "exit" then
    reason = string.format("killed by signal %d", code)
  elseif code ~= 0 then
    reason = string.format("exited with status %d", code)
  elseif not exists(dir .. "/results.json") then
    reason = "exited with status 0 but wrote no results.json"
  else
    local ok = pcall(json.decode, read_file(dir .. "/results.json"))
    if not ok then reason = "results.json is not valid JSON" end
  end
  if reason then
    write_file(dir .. "/FAILED", reason .. "\n")
    return false, reason
  end
  write_file(dir .. "/DONE", json.encode({ seconds = seconds, finished = now() }) .. "\n")
  return true
end

local function log_tail(path, n)
  local s = read_file(path) or ""
  local lines = {}
  for l in s:gmatch("[^\n]+") do lines[#lines + 1] = l end
  local from = math.max(1, #lines - n + 1)
  return table.concat(lines, "\n", from, #lines)
end

--- Runs the sweep: every run not yet done, `parallel` at a time. opts:
-- parallel (overrides the file's), advdiff (the executable), print (a
-- function for progress lines; default print; false for silence), report
-- (default true: write the tables and the plot), poll (seconds between
-- checks, default 0.05). Returns {runs=, done=, failed=, skipped=, rows=,
-- tables={csv=, md=}, plot=path|nil, plot_message=}. An error or an
-- interrupt (Ctrl-C) stops the running children before it propagates.
function M.run(s, opts)
  s = load_spec(s)
  opts = opts or {}
  local say = opts.print
  if say == nil then say = print end
  if say == false then say = function() end end
  local parallel = opts.parallel or s.parallel or core._proc_ncpu()
  if math.type(parallel) ~= "integer" or parallel < 1 then
    error("sweep: parallel must be a positive integer, got " .. tostring(parallel), 0)
  end
  local script = M.script_path(s)
  if not exists(script) then error("sweep: script '" .. s.script .. "' not found", 0) end
  local exe = M.executable(s, opts)
  local runs = spec.expand(s)
  mkdir_p(s.out)
  local pending, skipped = {}, 0
  for _, r in ipairs(runs) do
    if M.is_done(s.out .. "/" .. r.id, r.overrides) then skipped = skipped + 1 else pending[#pending + 1] = r end
  end
  say(string.format("sweep %s: %d runs, %d already done, %d to run, %d at a time -> %s",
    s.name, #runs, skipped, #pending, parallel, s.out))
  local running, n_running, done, failed, next_i = {}, 0, 0, {}, 1
  local finished_count = skipped
  local poll = opts.poll or 0.05

  local function start(r)
    local argv, dir = M.prepare(s, r, exe)
    local pid = core._proc_spawn(argv, { stdout = dir .. "/log.txt", stderr = "stdout" })
    running[pid] = { run = r, dir = dir, t0 = os.clock(), wall0 = os.time() }
    n_running = n_running + 1
  end

  local function loop()
    while next_i <= #pending or n_running > 0 do
      while n_running < parallel and next_i <= #pending do
        start(pending[next_i])
        next_i = next_i + 1
      end
      local any = false
      for pid, info in pairs(running) do
        local how, code = core._proc_wait(pid)
        if how then
          any = true
          running[pid] = nil
          n_running = n_running - 1
          finished_count = finished_count + 1
          local secs = os.time() - info.wall0
          local ok, reason = M.finish(info.dir, how, code, secs)
          if ok then
            done = done + 1
            say(string.format("[%d/%d] done   %s (%ds)", finished_count, #runs, info.run.id, secs))
          else
            failed[#failed + 1] = { id = info.run.id, reason = reason }
            say(string.format("[%d/%d] FAILED %s: %s; log %s/log.txt:\n%s", finished_count, #runs, info.run.id,
              reason, info.dir, log_tail(info.dir .. "/log.txt", 10)))
          end
        end
      end
      if not any then core._proc_sleep(poll) end
    end
  end

  local ok, err = xpcall(loop, debug.traceback)
  if not ok then
    for pid in pairs(running) do core._proc_kill(pid, 15) end
    for pid in pairs(running) do pcall(core._proc_wait, pid, true) end
    error(err, 0)
  end
  local res = { runs = #runs, done = done, failed = failed, skipped = skipped }
  if opts.report ~= false then
    local rep = report.report(s)
    for k, v in pairs(rep) do res[k] = v end
    say(string.format("sweep %s: %d done, %d failed, %d skipped; table %s", s.name, done, #failed, skipped, rep.tables.md))
    if rep.plot then say("sweep " .. s.name .. ": trade-off plot " .. rep.plot)
    elseif rep.plot_message then say("sweep " .. s.name .. ": " .. rep.plot_message) end
  end
  return res
end

--- Writes the results tables and the trade-off plot of a sweep's folder
-- (what M.run does at the end; also for a sweep run on a cluster).
function M.report(s)
  return report.report(load_spec(s))
end

--- Writes a Slurm job array that runs the sweep on a cluster (see
-- advdiff.sweep.slurm); returns {sbatch=path, configs=path, n=}.
function M.slurm(s, opts)
  return require("advdiff.sweep.slurm").write(load_spec(s), opts)
end

return setmetatable(M, { __call = function(_, s, opts) return M.run(s, opts) end })
