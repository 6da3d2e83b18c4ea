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

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function exists(p) local f = io.open(p, "r"); if f then f:close() end return f ~= nil end
local function read(p) local f = assert(io.open(p, "r")); local s = f:read("a"); f:close(); return s end

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
local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  os.execute("mkdir -p " .. q(p))
  return p
end

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
