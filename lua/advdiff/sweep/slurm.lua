--- advdiff.sweep.slurm: a sweep as a Slurm job array.
--
-- write(spec) writes, in <out>/slurm/:
--   configs.json   the list of runs ({id=, argv=} each, argv as a local sweep
--                  would start it, minus the executable)
--   sweep.sbatch   #SBATCH --array=0-(N-1)[%parallel]; task i runs entry i+1
--                  of configs.json through `advdiff -e` and task() below
-- Submit with `sbatch <out>/slurm/sweep.sbatch`. Runs land in the same
-- folders with the same markers as a local sweep, so a resubmitted array
-- skips finished runs, and `advdiff sweep FILE --report` builds the tables
-- and the plot afterwards.
local core = require "advdiff.core"
local json = require "advdiff.log.json"
local spec = require "advdiff.sweep.spec"

local M = {}

local function abspath(p)
  if p:sub(1, 1) == "/" then return p end
  local pwd = os.getenv("PWD")
  if not pwd or pwd == "" then
    local h = io.popen("pwd")
    pwd = h:read("l")
    h:close()
  end
  return pwd .. "/" .. p
end
M._abspath = abspath

--- opts: advdiff (the executable on the cluster; default the sweep's
-- executable), parallel (at most this many tasks at once, the %N of
-- --array; default the sweep's `parallel`, none when absent).
function M.write(s, opts)
  local sweep = require "advdiff.sweep"
  opts = opts or {}
  local runs = spec.expand(s)
  local dir = s.out .. "/slurm"
  sweep._mkdir_p(dir)
  local script = sweep.script_path(s)
  local list = {}
  for i, r in ipairs(runs) do
    local rd = s.out .. "/" .. r.id
    local sc = setmetatable({ script = script }, { __index = s })
    list[i] = { id = r.id, index = r.index, out = rd, point = r.point, overrides = r.overrides, argv = spec.argv(sc, r, rd) }
  end
  local configs = dir .. "/configs.json"
  local f = assert(io.open(configs, "w"))
  f:write(json.encode(list, { indent = "  " }), "\n")
  f:close()
  local exe = sweep.executable(s, opts)
  if exe:find("/") then exe = abspath(exe) end
  local par = opts.parallel or s.parallel
  local q = sweep._shell_quote
  local lines = {
    "#!/bin/bash",
    "# Slurm job array for the advdiff sweep '" .. s.name .. "'" .. (s.file and (" (" .. s.file .. ")") or "") .. ".",
    "# Submit with: sbatch " .. dir .. "/sweep.sbatch",
    "# Task i runs entry i+1 of configs.json; finished runs (DONE + results.json) are skipped.",
    "#SBATCH --job-name=" .. s.name,
    string.format("#SBATCH --array=0-%d%s", #runs - 1, par and ("%" .. par) or ""),
    "#SBATCH --output=" .. abspath(dir) .. "/%A_%a.out",
    "#SBATCH --chdir=" .. abspath("."),
    "#SBATCH --ntasks=1",
  }
  for _, o in ipairs(s.slurm or {}) do lines[#lines + 1] = "#SBATCH " .. o end
  lines[#lines + 1] = "set -euo pipefail"
  lines[#lines + 1] = "export ADVDIFF=${ADVDIFF:-" .. q(exe) .. "}"
  lines[#lines + 1] = "export CONFIGS=" .. q(abspath(configs))
  lines[#lines + 1] = [[exec "$ADVDIFF" -e "require('advdiff.sweep.slurm').task(os.getenv('CONFIGS'), ]]
    .. [[tonumber(os.getenv('SLURM_ARRAY_TASK_ID')), os.getenv('ADVDIFF'))"]]
  local sbatch = dir .. "/sweep.sbatch"
  f = assert(io.open(sbatch, "w"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  os.execute("chmod +x " .. q(sbatch))
  return { sbatch = sbatch, configs = configs, n = #runs }
end

--- Runs task `i` (0-based) of a configs.json in the foreground (the body of
-- an array task): skips a finished run, else runs it with its log in the run
-- folder and records DONE or FAILED. Exits non-zero when the run failed.
function M.task(configs, i, exe)
  local sweep = require "advdiff.sweep"
  if type(configs) ~= "string" then error("sweep task: CONFIGS is not set", 0) end
  if math.type(i) ~= "integer" then error("sweep task: SLURM_ARRAY_TASK_ID is not set", 0) end
  local f = io.open(configs, "r")
  if not f then error("sweep task: cannot open " .. configs, 0) end
  local list = json.decode(f:read("a"))
  f:close()
  local c = list[i + 1]
  if not c then error(string.format("sweep task: no entry %d in %s (%d entries)", i, configs, #list), 0) end
  if sweep.is_done(c.out, c.overrides) then
    print("sweep task: " .. c.id .. " is already done")
    return
  end
  sweep._mkdir_p(c.out)
  os.remove(c.out .. "/DONE")
  os.remove(c.out .. "/FAILED")
  os.remove(c.out .. "/results.json")
  local argv = { exe or core._proc_exe() or "advdiff" }
  for _, a in ipairs(c.argv) do argv[#argv + 1] = a end
  f = assert(io.open(c.out .. "/config.json", "w"))
  f:write(json.encode({ id = c.id, index = c.index, point = c.point, overrides = c.overrides, out = c.out, argv = argv },
    { indent = "  " }), "\n")
  f:close()
  local t0 = os.time()
  local pid = core._proc_spawn(argv, { stdout = c.out .. "/log.txt", stderr = "stdout" })
  local how, code = core._proc_wait(pid, true)
  local ok, reason = sweep.finish(c.out, how, code, os.time() - t0)
  if not ok then
    io.stderr:write("sweep task: ", c.id, " failed: ", reason, "\n")
    os.exit(1)
  end
  print("sweep task: " .. c.id .. " done")
end

return M
