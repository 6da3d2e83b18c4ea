-- test_quickstart.lua: experiments/quickstart.lua end to end at a scale
-- smaller than tiny (every stage a couple of steps), run as a child process of
-- the advdiff executable into a temporary folder: results.json has the keys
-- experiments/sweep_lambda.lua ranks on, the outputs exist, a rerun skips every
-- cached stage, and a changed lambda_adv redoes only the adversarial stage and
-- the evaluation.
local ad = require "advdiff"
local json = require "advdiff.log.json"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local ROOT = here .. "/../.."
local SCRIPT = ROOT .. "/experiments/quickstart.lua"
local EXE = ad._proc_exe()

local T = require "advdiff.testing"
local q, exists, read, tmpdir, ls = T.shell_quote, T.exists, T.read_file, T.tmpdir, T.listdir

local function need()
  if not EXE or not EXE:find("advdiff[^/]*$") then skip("not run by the advdiff executable") end
  if not exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") then
    skip("Fashion-MNIST is not installed (Debian's dataset-fashion-mnist)")
  end
end

local SMALLEST = {
  "scale=tiny", "pretrain_steps=2", "pretrain_batch=4", "classifier_steps=2", "classifier_batch=8",
  "featnet_steps=2", "featnet_batch=8", "warmup_steps=1", "steps=2", "adv_batch=4", "adv_per_class=10",
  "train_respacing=10", "eval_n=10", "sample_steps=2", "bootstrap=0",
}

local function run(dir, extra)
  local args = {}
  for _, kv in ipairs(SMALLEST) do args[#args + 1] = "--set " .. q(kv) end
  for _, kv in ipairs(extra or {}) do args[#args + 1] = "--set " .. q(kv) end
  args[#args + 1] = "--set " .. q("out=" .. dir)
  local cmd = string.format("%s %s %s 2>%s/stderr.txt", q(EXE), q(SCRIPT), table.concat(args, " "), q(dir))
  local h = io.popen(cmd, "r")
  local text = h:read("a")
  local ok, _, code = h:close()
  if not ok then
    error(string.format("quickstart exited with %s\nstdout:\n%s\nstderr (tail):\n%s", tostring(code), text,
      (read(dir .. "/stderr.txt")):sub(-3000)), 2)
  end
  return text
end

local dir

test("quickstart: every stage runs, results.json has the sweep's keys, the outputs exist", function()
  need()
  dir = tmpdir()
  local text = run(dir)
  for _, stage in ipairs { "pretrain", "classifier", "featnet", "adversarial", "eval" } do
    assert(text:find("[" .. stage .. "] running", 1, true), "stage " .. stage .. " did not run:\n" .. text)
    assert(exists(dir .. "/" .. stage .. "/DONE"), "no DONE marker for " .. stage)
  end
  assert(text:find("| Sharpness", 1, true), "the table was not printed:\n" .. text)
  local r = json.decode(read(dir .. "/results.json"))
  for _, k in ipairs { "sharpness", "precision", "recall", "fid", "density", "coverage", "kid", "d_score" } do
    assert(type(r[k]) == "number", "results.json: " .. k .. " is " .. tostring(r[k]))
    assert(type(r.pretrained[k]) == "number", "results.json: pretrained." .. k .. " missing")
  end
  assert(type(r.change_pct.sharpness) == "number")
  assert(r.real.sharpness > 0)
  assert(r.scale == "tiny" and r.lambda_adv == 0.002 and r.gate_region == 0.5)
  for _, f in ipairs { "report.md", "eval/samples.png", "eval/table.md", "eval/real.png", "plots/pretrain_loss.png",
                       "pretrain/model.safetensors", "classifier/resnet18.safetensors", "featnet/featnet.safetensors",
                       "adversarial/generator.safetensors", "adversarial/discriminator.safetensors",
                       "adversarial/metrics.csv" } do
    assert(exists(dir .. "/" .. f), "missing output " .. f)
  end
  assert(read(dir .. "/report.md"):find("Pretrained vs fine-tuned", 1, true))
end)

test("quickstart: a rerun loads every stage and trains nothing", function()
  need()
  if not dir then skip("the first run failed") end
  local before = read(dir .. "/results.json")
  local text = run(dir)
  for _, stage in ipairs { "pretrain", "classifier", "featnet", "adversarial", "eval" } do
    assert(text:find("[" .. stage .. "] done before", 1, true), "stage " .. stage .. " was not skipped:\n" .. text)
    assert(not text:find("[" .. stage .. "] running", 1, true))
  end
  local a, b = json.decode(before), json.decode(read(dir .. "/results.json"))
  assert(a.sharpness == b.sharpness and a.fid == b.fid, "a cached rerun changed the results")
end)

test("quickstart live=true: loads the stages, leaves the adversarial run to the REPL as `run`", function()
  need()
  if not dir then skip("the first run failed") end
  local args = {}
  for _, kv in ipairs(SMALLEST) do args[#args + 1] = "--set " .. q(kv) end
  for _, kv in ipairs { "live=true", "out=" .. dir } do args[#args + 1] = "--set " .. q(kv) end
  -- the REPL reads these lines from stdin, as a user would type them
  local input = dir .. "/repl_input.lua"
  local f = assert(io.open(input, "w"))
  f:write('run.cfg.lambda_adv = 0.004\nrun:step(2)\nprint("LIVE", run.step_count, run.last.phase, run.cfg.lambda_adv)\n')
  f:close()
  local cmd = string.format("%s -i %s %s < %s 2>%s/stderr.txt", q(EXE), q(SCRIPT), table.concat(args, " "), q(input), q(dir))
  local h = io.popen(cmd, "r")
  local text = h:read("a")
  h:close()
  for _, stage in ipairs { "pretrain", "classifier", "featnet" } do
    assert(text:find("[" .. stage .. "] done before", 1, true), "stage " .. stage .. " was not loaded:\n" .. text)
  end
  assert(text:find("the adversarial run is the global `run`", 1, true), text)
  assert(not text:find("[adversarial] running", 1, true) and not text:find("[eval] running", 1, true),
    "live mode ran the adversarial or eval stage:\n" .. text)
  assert(text:find("LIVE\t2\t2\t0.004", 1, true), "the REPL did not train the run:\n" .. text)
  local log = read(dir .. "/live/log.jsonl")
  assert(log:find('"key":"lambda_adv"', 1, true) and log:find('"new":0.004', 1, true), "the live change was not logged")
end)

test("quickstart: a new lambda_adv redoes the adversarial stage and the evaluation only", function()
  need()
  if not dir then skip("the first run failed") end
  local text = run(dir, { "lambda_adv=0.001" })
  for _, stage in ipairs { "pretrain", "classifier", "featnet" } do
    assert(text:find("[" .. stage .. "] done before", 1, true), "stage " .. stage .. " was redone:\n" .. text)
  end
  for _, stage in ipairs { "adversarial", "eval" } do
    assert(text:find("[" .. stage .. "] running", 1, true), "stage " .. stage .. " was not redone:\n" .. text)
  end
  local r = json.decode(read(dir .. "/results.json"))
  assert(r.lambda_adv == 0.001)
  os.execute("rm -rf " .. q(dir))
end)

---------------------------------------------------------------------------- the shared stage cache

local function count(text, s)
  local n, i = 0, 1
  while true do
    local a, b = text:find(s, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

local PRE = { "pretrain", "classifier", "featnet" }
local cache_root

test("quickstart cache=DIR: two runs started at once with other lambdas pretrain once between them", function()
  need()
  cache_root = tmpdir()
  local cache = cache_root .. "/cache"
  local a, b = cache_root .. "/a", cache_root .. "/b"
  os.execute("mkdir -p " .. q(a) .. " " .. q(b))
  local function cmd(dir, lambda)
    local args = {}
    for _, kv in ipairs(SMALLEST) do args[#args + 1] = "--set " .. q(kv) end
    for _, kv in ipairs { "lambda_adv=" .. lambda, "cache=" .. cache, "out=" .. dir } do args[#args + 1] = "--set " .. q(kv) end
    return string.format("%s %s %s >%s/stdout.txt 2>%s/stderr.txt; echo $? >%s/rc", q(EXE), q(SCRIPT),
      table.concat(args, " "), q(dir), q(dir), q(dir))
  end
  -- both in the background of one shell, so they start together and contend for the locks
  os.execute("(" .. cmd(a, "0.002") .. ") & (" .. cmd(b, "0.001") .. ") & wait")
  local ta, tb = read(a .. "/stdout.txt"), read(b .. "/stdout.txt")
  for _, d in ipairs { a, b } do
    assert(read(d .. "/rc"):match("^0"), "a run failed:\n" .. read(d .. "/stdout.txt") .. read(d .. "/stderr.txt"):sub(-2000))
  end
  for _, s in ipairs(PRE) do
    local both = ta .. tb
    assert(count(both, "[" .. s .. "] running") == 1, "stage " .. s .. " was not computed exactly once:\n" .. ta .. "\n----\n" .. tb)
    assert(count(both, "[" .. s .. "] cached (") == 1, "stage " .. s .. " was not loaded from the cache by the other run")
    assert(not exists(a .. "/" .. s .. "/DONE") and not exists(b .. "/" .. s .. "/DONE"), s .. " was written to the run folder")
    assert(exists(a .. "/plots/" .. s .. "_loss.png") and exists(b .. "/plots/" .. s .. "_loss.png"), "no " .. s .. " loss plot")
  end
  for _, s in ipairs { "adversarial", "eval" } do
    assert(count(ta, "[" .. s .. "] running") == 1 and count(tb, "[" .. s .. "] running") == 1, s .. " not run in each folder")
  end
  local ra, rb = json.decode(read(a .. "/results.json")), json.decode(read(b .. "/results.json"))
  assert(ra.lambda_adv == 0.002 and rb.lambda_adv == 0.001)
  for _, s in ipairs(PRE) do
    assert(ra.stage_dirs[s] == rb.stage_dirs[s] and ra.stage_dirs[s]:sub(1, #cache) == cache, "stage_dirs." .. s)
    assert(exists(ra.stage_dirs[s] .. "/DONE"))
  end
  assert(ra.stage_dirs.adversarial == a .. "/adversarial")
  -- nothing half-done or locked is left behind
  local names = ls(cache)
  assert(#names == 3, "the cache holds " .. table.concat(names, " "))
  for _, n in ipairs(names) do assert(n:match("^%a+%-%x+$"), "leftover in the cache: " .. n) end
end)

test("quickstart cache=DIR: a later run with another lambda loads every pretraining stage; other settings get their own entry", function()
  need()
  if not cache_root then skip("the first cache run failed") end
  local cache = cache_root .. "/cache"
  local c = cache_root .. "/c"
  os.execute("mkdir -p " .. q(c))
  local text = run(c, { "lambda_adv=0", "cache=" .. cache })
  for _, s in ipairs(PRE) do
    assert(text:find("[" .. s .. "] cached (", 1, true) and not text:find("[" .. s .. "] running", 1, true),
      s .. " was not loaded from the cache:\n" .. text)
  end
  assert(json.decode(read(c .. "/results.json")).lambda_adv == 0)
  -- other pretraining settings: a new entry next to the old one; the classifiers still load
  local d = cache_root .. "/d"
  os.execute("mkdir -p " .. q(d))
  text = run(d, { "cache=" .. cache, "pretrain_steps=3" })
  assert(text:find("[pretrain] running", 1, true), "pretrain_steps changed but the cached pretraining was used:\n" .. text)
  assert(text:find("[classifier] cached (", 1, true) and text:find("[featnet] cached (", 1, true))
  local n = 0
  for _, name in ipairs(ls(cache)) do if name:match("^pretrain%-") then n = n + 1 end end
  assert(n == 2, "expected two pretrain entries, got " .. n)
end)

test("quickstart cache=DIR: a lock left by a process that died is taken over", function()
  need()
  if not cache_root then skip("the first cache run failed") end
  local entry
  for _, name in ipairs(ls(cache_root .. "/cache")) do
    if name:match("^pretrain%-") and json.decode(read(cache_root .. "/cache/" .. name .. "/DONE")).settings.steps == 2 then
      entry = name
    end
  end
  assert(entry, "no pretrain entry with the first runs' settings")
  -- the lock of the same entry in a fresh cache, held by a process that has exited
  local h = io.popen("sh -c 'echo $$'")
  local dead = h:read("l")
  h:close()
  local f = io.open("/proc/sys/kernel/hostname", "r")
  local host = f and f:read("l") or os.getenv("HOSTNAME") or "localhost"
  if f then f:close() end
  local cache2 = cache_root .. "/cache2"
  os.execute("mkdir -p " .. q(cache2))
  assert(os.execute("ln -s " .. q(host:gsub("%s", "_") .. " " .. dead) .. " " .. q(cache2 .. "/" .. entry .. ".lock")))
  local e = cache_root .. "/e"
  os.execute("mkdir -p " .. q(e))
  local text = run(e, { "cache=" .. cache2 })
  assert(text:find("[pretrain] running", 1, true), "the stale lock was not taken over:\n" .. text)
  assert(not text:find("waiting for process", 1, true))
  assert(exists(cache2 .. "/" .. entry .. "/DONE"), "the entry was not stored under the same name")
  assert(not exists(cache2 .. "/" .. entry .. ".lock"))
  os.execute("rm -rf " .. q(cache_root))
end)
