-- fake_experiment.lua: a stand-in experiment for the sweep tests. Reads its
-- config like a real experiment (ad.config with --set overrides), optionally
-- sleeps or fails, and writes <out>/results.json with metrics that are simple
-- functions of the config, so the tests know what each run must report.
local ad = require "advdiff"
local json = require "advdiff.log.json"
local cfg = ad.config{
  lambda_adv = 0.002, gate_region = 0.5, lr = 1e-4, steps = 10, seed = 0,
  opt = { beta1 = 0.9 }, frozen = { "input_blocks" },
  sleep = 0.0, fail = "", fail_while = "", marker = "", out = "out",
}
print(string.format("fake experiment: lambda_adv=%g gate_region=%g lr=%g steps=%d seed=%d",
  cfg.lambda_adv, cfg.gate_region, cfg.lr, cfg.steps, cfg.seed))
io.stderr:write("fake experiment: a line on stderr\n")
if cfg.marker ~= "" then -- one file per start, so a test can count how often a run was started
  local f = assert(io.open(cfg.marker .. "/" .. cfg.out:gsub("[/=,]", "_") .. "." .. ad._proc_getpid(), "w"))
  f:close()
end
if cfg.sleep > 0 then ad._proc_sleep(cfg.sleep) end
-- fail = a part of the run folder's name; fail_while = a file: fail only while it exists
local function file_exists(p) local f = io.open(p) if f then f:close() end return f ~= nil end
if cfg.fail ~= "" and string.find(cfg.out, cfg.fail, 1, true) and (cfg.fail_while == "" or file_exists(cfg.fail_while)) then
  error("fake experiment: asked to fail")
end
local f = assert(io.open(cfg.out .. "/results.json", "w"))
f:write(json.encode({
  sharpness = cfg.lambda_adv * 100 + cfg.gate_region,
  recall = 1 - cfg.lambda_adv * 100,
  fid = 10 + cfg.lambda_adv * 1000 - cfg.gate_region,
  steps = cfg.steps,
  frozen = table.concat(cfg.frozen, "+"),
  beta1 = cfg.opt.beta1,
  eval = { seed = cfg.seed },
}))
f:close()
