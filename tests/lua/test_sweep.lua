-- test_sweep.lua: advdiff.sweep (grid/random expansion, the process
-- scheduler, resume, results tables, the Slurm array, bad sweep files) and the
-- `advdiff sweep` command, driven with tests/sweep/fake_experiment.lua.
local ad = require "advdiff"
local sweep = require "advdiff.sweep"
local spec = require "advdiff.sweep.spec"
local report = require "advdiff.sweep.report"
local slurm = require "advdiff.sweep.slurm"
local json = require "advdiff.log.json"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
-- absolute: the Slurm test runs the sweep's sbatch from another folder
if here:sub(1, 1) ~= "/" then here = os.getenv("PWD") .. "/" .. here end
local FAKE = here .. "/../sweep/fake_experiment.lua"
local EXE = ad._proc_exe()
local q = sweep._shell_quote

local T = require "advdiff.testing"
local tmpdir, read, listdir = T.tmpdir, T.read_file, T.listdir

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function exists(path) return sweep._exists(path) end

local function now() -- wall clock with sub-second resolution
  local h = io.popen("date +%s.%N")
  local t = tonumber(h:read("l"))
  h:close()
  return t
end


local function expect_error(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error matching '" .. pattern .. "'")
  assert(tostring(err):find(pattern, 1, true), "error '" .. tostring(err) .. "' does not contain '" .. pattern .. "'")
end

local function base(dir, extra)
  local s = { script = FAKE, out = dir .. "/out", grid = { lambda_adv = { 0.001, 0.002 }, gate_region = { 0.3, 0.5 } } }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

test("grid expansion: every combination, last key fastest, fixed overrides, stable ids", function()
  local s = sweep.check({ script = FAKE, grid = { lambda_adv = { 0.001, 0.002, 0.003 }, gate_region = { 0.3, 0.5 },
    ["opt.beta1"] = { 0.5 } }, set = { steps = 7, frozen = { "a", "b" } } })
  local runs = sweep.expand(s)
  assert(#runs == 6, #runs)
  assert(runs[1].point.gate_region == 0.3 and runs[1].point.lambda_adv == 0.001)
  assert(runs[2].point.gate_region == 0.3 and runs[2].point.lambda_adv == 0.002)
  assert(runs[4].point.gate_region == 0.5 and runs[4].point.lambda_adv == 0.001)
  assert(runs[6].point["opt.beta1"] == 0.5)
  assert(runs[1].id == "000-gate_region=0.3,lambda_adv=0.001,opt.beta1=0.5", runs[1].id)
  assert(runs[6].id:match("^005%-"))
  for _, r in ipairs(runs) do assert(r.overrides.steps == 7 and r.overrides.frozen[2] == "b") end
  assert(s.out == "runs/sweeps/sweep" and s.order == "desc")
  local argv = spec.argv(s, runs[1], "d")
  assert(table.concat(argv, " ") == FAKE .. " --set frozen=a,b --set gate_region=0.3 --set lambda_adv=0.001"
    .. " --set opt.beta1=0.5 --set steps=7 --set out=d", table.concat(argv, " "))
  -- the same file gives the same runs; values print so ad.config reads them back exactly
  local again = sweep.expand(s)
  for i = 1, #runs do assert(again[i].id == runs[i].id) end
  assert(spec.format_value(0.1) == "0.1" and spec.format_value(1e-5) == "1e-05" and spec.format_value(3) == "3")
  assert(tonumber(spec.format_value(1 / 3)) == 1 / 3)
  assert(spec.format_value(true) == "true" and spec.format_value({ 1, 2.5 }) == "1,2.5")
  -- long names are shortened with a hash, and stay distinct
  local long = sweep.expand(sweep.check({ script = FAKE, grid = { a_really_long_key_name_number_one = { 1, 2 },
    a_really_long_key_name_number_two = { 3 } } }))
  assert(#long[1].id <= 64 and long[1].id ~= long[2].id, long[1].id)
end)

test("random search: reproducible from the seed, within bounds, all distribution kinds", function()
  local function make(seed)
    return sweep.check({ script = FAKE, random = { n = 20, seed = seed, space = {
      lr = { "log", 1e-6, 1e-4 }, gate_region = { "uniform", 0.2, 0.8 }, d_updates_per_g = { "int", 1, 3 },
      frozen = { "choice", { "none", "input_blocks" } }, seed = { 1, 2, 3 },
    } } })
  end
  local a, b, c = sweep.expand(make(7)), sweep.expand(make(7)), sweep.expand(make(8))
  assert(#a == 20)
  local differs = false
  local seen_int, seen_choice = {}, {}
  for i = 1, 20 do
    for _, k in ipairs({ "lr", "gate_region", "d_updates_per_g", "frozen", "seed" }) do
      assert(a[i].point[k] == b[i].point[k], "same seed, different " .. k)
    end
    assert(a[i].id == b[i].id)
    if a[i].point.lr ~= c[i].point.lr then differs = true end
    local p = a[i].point
    assert(p.lr >= 1e-6 and p.lr <= 1e-4, p.lr)
    assert(p.gate_region >= 0.2 and p.gate_region <= 0.8)
    assert(math.type(p.d_updates_per_g) == "integer" and p.d_updates_per_g >= 1 and p.d_updates_per_g <= 3)
    seen_int[p.d_updates_per_g] = true
    seen_choice[p.frozen] = true
    assert(p.seed == 1 or p.seed == 2 or p.seed == 3)
  end
  assert(differs, "another seed should give other points")
  assert(seen_int[1] and seen_int[3] and seen_choice.none and seen_choice.input_blocks)
  -- log-uniform: about half the draws below the geometric midpoint 1e-5
  local low = 0
  for i = 1, 20 do if a[i].point.lr < 1e-5 then low = low + 1 end end
  assert(low >= 4 and low <= 16, low)
  -- math.random is left alone
  math.randomseed(42)
  local r1 = math.random()
  math.randomseed(42)
  sweep.expand(make(7))
  assert(math.random() == r1)
end)

test("runs execute in parallel, each in its own folder with config.json and a log", function()
  local dir = tmpdir()
  local s = base(dir, { parallel = 4, set = { sleep = 3 }, metric = "recall" })
  local t0 = now()
  local res = sweep.run(s, { print = false, advdiff = EXE })
  local wall = now() - t0
  assert(res.done == 4 and #res.failed == 0 and res.skipped == 0)
  -- four 3 s runs one after another would take 12 s; the margin absorbs
  -- process start-up on a loaded machine
  assert(wall < 9, string.format("4 runs with parallel=4 took %.2fs", wall))
  for _, r in ipairs(sweep.expand(sweep.check(s))) do
    local d = s.out .. "/" .. r.id
    assert(exists(d .. "/DONE") and exists(d .. "/results.json"))
    local cfg = json.decode(read(d .. "/config.json"))
    assert(cfg.id == r.id and cfg.overrides.lambda_adv == r.point.lambda_adv and cfg.argv[1] == EXE)
    local log = read(d .. "/log.txt")
    assert(log:find("fake experiment: lambda_adv=" .. spec.format_value(r.point.lambda_adv), 1, true), log)
    assert(log:find("a line on stderr", 1, true))
    local m = json.decode(read(d .. "/results.json"))
    assert(math.abs(m.recall - (1 - r.point.lambda_adv * 100)) < 1e-12)
  end
  -- the table: sorted by recall, highest first
  assert(res.rows[1].point.lambda_adv == 0.001 and res.rows[4].point.lambda_adv == 0.002)
  assert(exists(s.out .. "/results.csv") and exists(s.out .. "/results.md"))
  os.execute("rm -rf " .. q(dir))
end)

test("resume: a killed sweep continues, finished runs are not run again, the half-finished one is", function()
  local dir = tmpdir()
  local marks = dir .. "/marks"
  sweep._mkdir_p(marks)
  local file = dir .. "/resume.lua"
  write(file, string.format([[return { script = %q, out = %q, parallel = 1,
    grid = { lambda_adv = {0.001, 0.002, 0.003, 0.004} }, set = { sleep = 0.5, marker = %q } }]], FAKE, dir .. "/out", marks))
  local pid = ad._proc_spawn({ EXE, "sweep", file }, { stdout = dir .. "/sweep.log", stderr = "stdout" })
  local s = sweep.load(file)
  local runs = sweep.expand(s)
  -- wait until two runs are done, then kill the sweep while the third runs
  local deadline = now() + 20
  while not exists(s.out .. "/" .. runs[2].id .. "/DONE") do
    assert(now() < deadline, "the sweep did not finish two runs: " .. read(dir .. "/sweep.log"))
    ad._proc_sleep(0.05)
  end
  -- kill only once run 3 has really started (its marker is written at start-up,
  -- which can take a while on a loaded machine)
  local mark3 = ((s.out .. "/" .. runs[3].id):gsub("[/=,]", "_"))
  local function started3()
    for _, f in ipairs(listdir(marks)) do if f:sub(1, #mark3 + 1) == mark3 .. "." then return true end end
    return false
  end
  while not started3() do
    assert(now() < deadline + 20, "run 3 did not start: " .. read(dir .. "/sweep.log"))
    ad._proc_sleep(0.05)
  end
  ad._proc_kill(pid, 15)
  local how = ad._proc_wait(pid, true)
  assert(how == "signal")
  ad._proc_sleep(0.3) -- the killed sweep's child gets SIGTERM too
  assert(not exists(s.out .. "/" .. runs[3].id .. "/DONE"), "run 3 should have been cut off")
  assert(exists(s.out .. "/" .. runs[3].id .. "/config.json"), "run 3 should have started")
  local rows = sweep.results(s)
  assert(rows[3].status == "interrupted" and rows[4].status == "not run", rows[3].status .. " " .. rows[4].status)
  local res = sweep.run(s, { print = false, advdiff = EXE })
  assert(res.skipped == 2 and res.done == 2 and #res.failed == 0, string.format("%d %d", res.skipped, res.done))
  local starts = {}
  for _, f in ipairs(listdir(marks)) do
    local id = f:match("^(.*)%.%d+$")
    starts[id] = (starts[id] or 0) + 1
  end
  local function count(r) return starts[(s.out .. "/" .. r.id):gsub("[/=,]", "_")] or 0 end
  assert(count(runs[1]) == 1 and count(runs[2]) == 1, "finished runs were run again")
  assert(count(runs[3]) == 2, "the interrupted run should have been rerun, starts: " .. count(runs[3]))
  assert(count(runs[4]) == 1)
  for _, r in ipairs(runs) do assert(sweep.is_done(s.out .. "/" .. r.id)) end
  -- a third time runs nothing
  res = sweep.run(s, { print = false, advdiff = EXE })
  assert(res.skipped == 4 and res.done == 0)
  os.execute("rm -rf " .. q(dir))
end)

test("a failed run is reported, marked FAILED, listed in the table and rerun next time", function()
  local dir = tmpdir()
  local flag = dir .. "/fail.flag"
  write(flag, "")
  local s = base(dir, { parallel = 2, set = { fail = "001-", fail_while = flag }, metric = "fid" })
  local lines = {}
  local res = sweep.run(s, { print = function(l) lines[#lines + 1] = l end, advdiff = EXE })
  assert(res.done == 3 and #res.failed == 1 and res.failed[1].id:match("^001%-"))
  assert(res.failed[1].reason == "exited with status 1", res.failed[1].reason)
  local all = table.concat(lines, "\n")
  assert(all:find("FAILED 001-", 1, true) and all:find("asked to fail", 1, true), all)
  local last = res.rows[#res.rows]
  assert(last.status == "failed" and last.id:match("^001%-"), "a run without the metric sorts last")
  assert(read(s.out .. "/results.md"):find("failed: exited with status 1", 1, true))
  -- fid sorts lowest first
  assert(s.order == nil and sweep.check(s).order == "asc")
  assert(res.rows[1].metrics.fid <= res.rows[2].metrics.fid)
  -- the failed run (and only it) runs again once the cause is gone
  os.remove(flag)
  res = sweep.run(s, { print = false, advdiff = EXE })
  assert(res.skipped == 3 and res.done == 1, "the failed run should be rerun")
  -- changing a fixed override makes every finished run stale
  s.set.steps = 3
  assert(sweep.results(sweep.check(s))[1].status == "stale")
  res = sweep.run(s, { print = false, advdiff = EXE })
  assert(res.skipped == 0 and res.done == 4)
  os.execute("rm -rf " .. q(dir))
end)

test("results table: sorted by the metric either way, every results.json key, nested keys dotted", function()
  local dir = tmpdir()
  local s = sweep.check(base(dir, { metric = "sharpness" }))
  local runs = sweep.expand(s)
  local vals = { 0.5, 0.9, 0.1, 0.7 }
  for i, r in ipairs(runs) do
    local d = s.out .. "/" .. r.id
    sweep._mkdir_p(d)
    local m = { sharpness = vals[i], eval = { fid = 10 * i } }
    if i == 2 then m.extra = "x,y" end
    write(d .. "/results.json", json.encode(m))
    write(d .. "/DONE", "{}")
  end
  local rows = sweep.results(s)
  local got = {}
  for i, r in ipairs(rows) do got[i] = r.metrics.sharpness end
  assert(table.concat(got, " ") == "0.9 0.7 0.5 0.1", table.concat(got, " "))
  s.order = "asc"
  rows = sweep.results(s)
  assert(rows[1].metrics.sharpness == 0.1 and rows[4].metrics.sharpness == 0.9)
  local csv = report.csv(s, rows)
  local head = csv:match("^[^\n]*")
  assert(head == "run,gate_region,lambda_adv,status,sharpness,eval.fid,extra", head)
  assert(csv:find('"x,y"', 1, true), "CSV fields with commas are quoted")
  local md = report.markdown(s, rows)
  assert(md:find("sorted by sharpness (lowest first)", 1, true))
  assert(md:find("| 1 | " .. rows[1].id .. " |", 1, true), md)
  local paths = sweep.write_tables(s, rows)
  assert(read(paths.csv) == csv and read(paths.md) == md)
  -- no metric: sweep order
  s.metric = nil
  rows = sweep.results(s)
  assert(rows[1].id == runs[1].id and rows[4].id == runs[4].id)
  os.execute("rm -rf " .. q(dir))
end)

test("Pareto front and the trade-off plot", function()
  local pts = { { 0.1, 0.9, "a" }, { 0.5, 0.5, "b" }, { 0.4, 0.4, "c" }, { 0.9, 0.1, "d" }, { 0.5, 0.3, "e" } }
  local front = sweep.pareto(pts, true, true)
  local ids = {}
  for i, p in ipairs(front) do ids[i] = p[3] end
  assert(table.concat(ids) == "abd", table.concat(ids))
  -- lower x better (FID): only the lowest-x point for each level of y survives
  front = sweep.pareto(pts, false, true)
  ids = {}
  for i, p in ipairs(front) do ids[i] = p[3] end
  assert(table.concat(ids) == "a", table.concat(ids))
  local dir = tmpdir()
  local s = sweep.check(base(dir))
  sweep._mkdir_p(s.out)
  local path, msg = sweep.plot(s, {})
  assert(path == nil and msg:find("no finished run has 'sharpness'", 1, true), msg)
  local rows = {
    { id = "r1", status = "done", metrics = { sharpness = 0.1, recall = 0.5, fid = 20 } },
    { id = "r2", status = "done", metrics = { sharpness = 0.3, recall = 0.2, fid = 25 } },
  }
  path, msg = sweep.plot(s, rows)
  if report._have_gnuplot() then
    assert(path == s.out .. "/tradeoff.png", msg)
    assert(read(path):sub(1, 8) == "\137PNG\r\n\26\n")
  else
    assert(path == nil and msg:find("gnuplot is not installed", 1, true), msg)
  end
  os.execute("rm -rf " .. q(dir))
end)

test("--slurm writes a job array running one config per task", function()
  local dir = tmpdir()
  local file = dir .. "/arr.lua"
  write(file, string.format([[return { script = %q, out = %q, parallel = 2, name = "arr",
    grid = { lambda_adv = {0.001, 0.002, 0.003} }, slurm = { "--time=00:10:00", "--gres=gpu:1" } }]], FAKE, dir .. "/out"))
  local ok = os.execute(q(EXE) .. " sweep " .. q(file) .. " --slurm > " .. q(dir .. "/o.txt") .. " 2>&1")
  assert(ok, read(dir .. "/o.txt"))
  local sb = read(dir .. "/out/slurm/sweep.sbatch")
  assert(sb:match("^#!/bin/bash\n"))
  assert(sb:find("#SBATCH --array=0-2%2\n", 1, true), sb)
  assert(sb:find("#SBATCH --job-name=arr\n", 1, true))
  assert(sb:find("#SBATCH --time=00:10:00\n#SBATCH --gres=gpu:1\n", 1, true))
  assert(sb:find("SLURM_ARRAY_TASK_ID", 1, true) and sb:find("advdiff.sweep.slurm", 1, true))
  assert(sb:find("#SBATCH --chdir=/", 1, true))
  local list = json.decode(read(dir .. "/out/slurm/configs.json"))
  assert(#list == 3 and list[2].id:match("^001%-lambda_adv=0.002"))
  assert(table.concat(list[2].argv, " "):find("--set lambda_adv=0.002 --set out=" .. dir .. "/out/001-", 1, true))
  assert(read(dir .. "/o.txt"):find("sbatch " .. dir .. "/out/slurm/sweep.sbatch", 1, true))
  -- what an array task does: run entry i, as the local runner would
  slurm.task(dir .. "/out/slurm/configs.json", 1, EXE)
  assert(sweep.is_done(list[2].out))
  local ran = json.decode(read(list[2].out .. "/results.json"))
  assert(math.abs(ran.recall - 0.8) < 1e-12)
  -- the sbatch body itself, run as Slurm would run task 0
  ok = os.execute("cd " .. q(dir) .. " && SLURM_ARRAY_TASK_ID=0 ADVDIFF=" .. q(EXE) .. " bash "
    .. q(dir .. "/out/slurm/sweep.sbatch") .. " > " .. q(dir .. "/t.txt") .. " 2>&1")
  assert(ok, read(dir .. "/t.txt"))
  assert(sweep.is_done(list[1].out))
  os.execute("rm -rf " .. q(dir))
end)

test("the sweep command: --list, a local run, usage errors", function()
  local dir = tmpdir()
  local file = dir .. "/cmd.lua"
  write(file, string.format([[return { script = %q, out = %q, parallel = 2, metric = "recall",
    grid = { lambda_adv = {0.001, 0.002} } }]], FAKE, dir .. "/out"))
  local h = io.popen(q(EXE) .. " sweep " .. q(file) .. " --list --set steps=3")
  local out = h:read("a")
  h:close()
  assert(out:find("000-lambda_adv=0.001\tlambda_adv=0.001 steps=3", 1, true), out)
  h = io.popen(q(EXE) .. " sweep " .. q(file) .. " --parallel 1 --set steps=4 2>&1")
  out = h:read("a")
  local ok = h:close()
  assert(ok, out)
  assert(out:find("1 at a time", 1, true) and out:find("| 1 | 000-lambda_adv=0.001 |", 1, true), out)
  assert(json.decode(read(dir .. "/out/000-lambda_adv=0.001/results.json")).steps == 4)
  local function fails(args, code, pattern)
    local p = io.popen(q(EXE) .. " sweep " .. args .. " 2>&1; echo \"rc=$?\"")
    local text = p:read("a")
    p:close()
    assert(text:find("rc=" .. code, 1, true) and text:find(pattern, 1, true), text)
  end
  fails("", 2, "no sweep file given")
  fails(q(file) .. " --parallel 0", 2, "--parallel needs a positive integer")
  fails(q(file) .. " --bogus", 2, "unrecognized option '--bogus'")
  fails(q(dir .. "/nope.lua"), 2, "cannot open sweep file")
  fails(q(file) .. " --set steps=abc", 1, "steps expects a number")
  os.execute("rm -rf " .. q(dir))
end)

test("bad sweep files give clear errors", function()
  local dir = tmpdir()
  local function bad(text, pattern)
    local f = dir .. "/bad.lua"
    write(f, text)
    expect_error(pattern, sweep.load, f)
  end
  bad("return {grid = {lr = {1}}}", "'script' must name the experiment script")
  bad("return {script = 'x.lua'}", "needs 'grid' = {key = {values}} or 'random'")
  bad("return {script = 'x.lua', grid = {lr = {1}}, random = {n = 1, space = {lr = {1}}}}", "either 'grid' or 'random', not both")
  bad("return {script = 'x.lua', grid = {lr = {}}}", "grid: lr has no values")
  bad("return {script = 'x.lua', grid = {lr = 0.1}}", "grid: lr must be a list of values")
  bad("return {script = 'x.lua', grid = {}}", "grid: is empty")
  bad("return {script = 'x.lua', grid = {lr = {{a = 1}}}}", "grid.lr[1]: values must be numbers")
  bad("return {script = 'x.lua', grid = {out = {'a'}}}", "'out' is chosen by the sweep")
  bad("return {script = 'x.lua', gird = {lr = {1}}}", "unknown field 'gird' (valid: advdiff, grid,")
  bad("return {script = 'x.lua', random = {n = 0, space = {lr = {'log', 1, 2}}}}", "random: n must be a positive integer")
  bad("return {script = 'x.lua', random = {n = 2, space = {lr = {'log', 0, 2}}}}", "\"log\" needs positive bounds")
  bad("return {script = 'x.lua', random = {n = 2, space = {lr = {'uniform', 3, 2}}}}", "lower bound 3 is above upper bound 2")
  bad("return {script = 'x.lua', random = {n = 2, space = {lr = {'gauss', 0, 2}}}}", "unknown distribution \"gauss\"")
  bad("return {script = 'x.lua', random = {n = 2, space = {k = {'int', 0.5, 2}}}}", "\"int\" needs integer bounds")
  bad("return {script = 'x.lua', random = {n = 2, sed = 1, space = {k = {1}}}}", "random: unknown field sed")
  bad("return {script = 'x.lua', grid = {lr = {1}}, parallel = 0}", "parallel: must be a positive integer")
  bad("return {script = 'x.lua', grid = {lr = {1}}, order = 'up'}", "order: must be \"asc\" or \"desc\"")
  bad("return {script = 'x.lua', grid = {['a b'] = {1}}}", "keys must be config names")
  bad("return 42", "must return a table, got number")
  bad("return {script = ", "bad.lua:1:")
  bad("error('boom')", "boom")
  expect_error("cannot open sweep file '" .. dir .. "/missing.lua'", sweep.load, dir .. "/missing.lua")
  expect_error("script 'no/such/script.lua' not found", sweep.run,
    { script = "no/such/script.lua", out = dir .. "/o", grid = { lr = { 1 } } }, { print = false })
  os.execute("rm -rf " .. q(dir))
end)

test("experiments/sweep_lambda.lua is a valid sweep over lambda_adv and gate_region", function()
  local s = sweep.load(here .. "/../../experiments/sweep_lambda.lua")
  local runs = sweep.expand(s)
  assert(s.script == "experiments/quickstart.lua")
  assert(#runs >= 4)
  assert(runs[1].point.lambda_adv and runs[1].point.gate_region)
  assert(s.metric and s.out:match("^runs/sweeps/"))
  -- the runs share quickstart's pretraining stages through one cache folder, outside every run's folder
  assert(type(s.set.cache) == "string" and s.set.cache ~= "", "sweep_lambda.lua does not share the pretraining stages")
  for _, r in ipairs(runs) do assert(s.set.cache:sub(1, #(s.out .. "/" .. r.id)) ~= s.out .. "/" .. r.id) end
end)
