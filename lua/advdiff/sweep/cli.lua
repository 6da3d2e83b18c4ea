--- advdiff.sweep.cli: the `advdiff sweep` command.
--
--   advdiff sweep FILE [--parallel N] [--slurm] [--report] [--list] [--set key=value ...]
--
-- runs the sweep file FILE (see advdiff.sweep.spec) locally; --slurm writes
-- a Slurm job array instead; --report only rebuilds the results tables and
-- the plot from the run folders; --list prints the runs without running
-- them. --set pairs are fixed overrides added to the file's `set` for every
-- run. Exits 1 when a run failed, 2 on a usage error.
local M = {}

local USAGE = [[
usage: advdiff sweep FILE [options]
Runs a hyperparameter sweep: each configuration of FILE's grid or random search
as `advdiff <script> --set key=value ... --set out=<out>/<run-id>`, N at a time;
finished runs are skipped, so an interrupted sweep continues where it stopped.
Options:
  --parallel N     runs at a time (default: FILE's `parallel`, else the number of cores)
  --slurm          write a Slurm job array (<out>/slurm/sweep.sbatch) instead of running
  --report         only rebuild <out>/results.csv, results.md and tradeoff.png
  --list           print the runs and their overrides, run nothing
  --set key=value  a fixed override for every run (repeatable)
  -h, --help       show this help]]

local function usage_error(msg)
  io.stderr:write("advdiff sweep: ", msg, "\n", "Try 'advdiff sweep --help' for more information.\n")
  os.exit(2)
end

function M.main(...)
  local args = { ... }
  local file, opts, mode = nil, {}, "run"
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      print(USAGE)
      return
    elseif a == "--slurm" then mode = "slurm"
    elseif a == "--report" then mode = "report"
    elseif a == "--list" then mode = "list"
    elseif a == "--parallel" or a:match("^%-%-parallel=") then
      local v = a:match("^%-%-parallel=(.*)$")
      if not v then i = i + 1; v = args[i] end
      local n = math.tointeger(tonumber(v or ""))
      if not n or n < 1 then usage_error("--parallel needs a positive integer, got " .. tostring(v)) end
      opts.parallel = n
    elseif a:sub(1, 1) == "-" then
      usage_error("unrecognized option '" .. a .. "'")
    elseif file then
      usage_error("one sweep file expected, got '" .. file .. "' and '" .. a .. "'")
    else
      file = a
    end
    i = i + 1
  end
  if not file then usage_error("no sweep file given") end
  local sweep = require "advdiff.sweep"
  local ok, s = pcall(sweep.load, file)
  if not ok then
    io.stderr:write("advdiff ", tostring(s), "\n")
    os.exit(2)
  end
  local cli = package.loaded["advdiff.config.cli"]
  if type(cli) == "table" and next(cli) then
    local set = {}
    for k, v in pairs(s.set) do set[k] = v end
    for k, v in pairs(cli) do set[k] = v end
    s.set = set
    s = sweep.check(s, file)
  end
  if mode == "list" then
    local spec = require "advdiff.sweep.spec"
    for _, r in ipairs(sweep.expand(s)) do
      local parts = {}
      for _, k in ipairs(spec.sorted_keys(r.overrides)) do parts[#parts + 1] = k .. "=" .. spec.format_value(r.overrides[k]) end
      print(r.id, table.concat(parts, " "))
    end
    return
  elseif mode == "slurm" then
    local w = sweep.slurm(s, opts)
    print(string.format("sweep %s: %d runs as a Slurm job array; submit with\n  sbatch %s", s.name, w.n, w.sbatch))
    return
  elseif mode == "report" then
    local rep = sweep.report(s)
    print("sweep " .. s.name .. ": " .. rep.tables.md .. ", " .. rep.tables.csv)
    if rep.plot then print("sweep " .. s.name .. ": trade-off plot " .. rep.plot)
    elseif rep.plot_message then print("sweep " .. s.name .. ": " .. rep.plot_message) end
    io.write(require("advdiff.sweep.report").markdown(s, rep.rows))
    return
  end
  local res = sweep.run(s, opts)
  io.write(require("advdiff.sweep.report").markdown(s, res.rows))
  if #res.failed > 0 then os.exit(1) end
end

return M
