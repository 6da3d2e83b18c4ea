-- test_train_io.lua: what a training run writes and how it is driven —
-- atomic checkpoints (a child process killed with SIGKILL in the middle of
-- saving leaves a loadable checkpoint), JSONL/CSV logs, TensorBoard event
-- files (TFRecord framing, masked CRC-32C, Event protobufs), PNG plots and
-- sample grids, progress lines, and background training from the REPL (the
-- idle hook directly, and the real REPL on a pseudo-terminal).
local ad = require "advdiff"
local T = require "advdiff.testing"
local log = require "advdiff.log"
local json = log.json
local tb = require "advdiff.log.tensorboard"

local EXE = arg and arg[-1] or "advdiff"
local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

-- the model definitions a child process also needs, as source text
local SETUP = [[
ad = require "advdiff"
local nn = ad.nn
local TinyG = nn.Module:extend("TinyG")
function TinyG:__init()
  self.num_classes = 2
  self.inp = nn.Conv2d(3, 16, 3, { padding = 1 })
  self.temb = nn.Linear(16, 16)
  self.label_emb = nn.Embedding(2, 16)
  self.out = nn.Conv2d(16, 6, 3, { padding = 1 })
end
function TinyG:forward(x, t, y)
  local emb = self.temb(ad.models.adm.timestep_embedding(t, 16)) + self.label_emb(y)
  return self.out(ad.silu(self.inp(x) + emb:view(-1, 16, 1, 1)))
end
function make_cfg(over)
  ad.manual_seed(3)
  local backbone = nn.Sequential(nn.Conv2d(3, 8, 3, { padding = 1 }), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
  local D = ad.models.discriminator { backbone = backbone, num_classes = 2, feature_dim = 8, embed_dim = 4, hidden = 16 }
  local diff = ad.diffusion.create { steps = 1000, noise_schedule = "cosine", learn_sigma = true, timestep_respacing = "10" }
  local imgs = ad.randint(0, 256, { 16, 3, 8, 8 }, { dtype = "u8", generator = ad.Generator(7) })
  local labels = {}
  for i = 1, 16 do labels[i] = i % 2 end
  local loader = ad.data.DataLoader(ad.data.TensorDataset(imgs, labels), { batch_size = 4, seed = 1 })
  local cfg = { G = TinyG(), D = D, diffusion = diff, data = loader, d_warmup_steps = 2, joint_steps = 4,
                lambda_ramp_steps = 2, lambda_adv = 0.1, t_region = 1.0, progress = false }
  for k, v in pairs(over or {}) do cfg[k] = v end
  return cfg
end
]]
local setup_file = TMP .. "/setup.lua"
do
  local f = assert(io.open(setup_file, "w"))
  f:write(SETUP)
  f:close()
end
dofile(setup_file)

local exists = T.exists

local function sleep(s) os.execute("sleep " .. s) end

test("json round-trips numbers exactly, NaN and infinities, strings, nesting", function()
  local v = { a = 1, b = 0.1, c = 1 / 3, d = -0.0, e = 2 ^ 60, f = 1e-300, g = "q\"\\\n\1é", h = { 1, 2, { x = true } },
              i = 0 / 0, j = math.huge, k = -math.huge, l = false, m = 12345678901234 }
  local s = json.encode(v)
  local w = json.decode(s)
  for k, x in pairs(v) do
    if k == "i" then assert(w.i ~= w.i)
    elseif k == "h" then assert(w.h[3].x == true and w.h[2] == 2)
    else assert(w[k] == x and math.type(w[k]) == math.type(x), k) end
  end
  assert(json.encode { 3, 2 } == "[3,2]" and json.encode {} == "{}")
  assert(json.decode('{"a": [1, 2.5e3, null, "\\u00e9"]}').a[2] == 2500.0)
  assert(not pcall(json.decode, "{1:2}"))
  assert(json.encode({ b = 1, a = 2 }, { indent = " " }):find('\n "a": 2'))
end)

test("checkpoints are atomic: a child killed with SIGKILL while saving leaves a loadable checkpoint", function()
  local ck = TMP .. "/kill/ck"
  for round = 1, 3 do
    os.execute("rm -rf " .. TMP .. "/kill; mkdir -p " .. TMP .. "/kill")
    local child = TMP .. "/child.lua"
    local f = assert(io.open(child, "w"))
    f:write(string.format([[
dofile(%q)
local run = ad.train.adversarial(make_cfg())
run:step(3)
run:save(%q)
io.open(%q, "w"):close()
local t0 = ad._now()
while ad._now() - t0 < 60 do run:save(%q) end
]], setup_file, ck, TMP .. "/kill/ready", ck))
    f:close()
    local pidfile = TMP .. "/kill/pid"
    os.execute(string.format("%s %s >/dev/null 2>&1 & echo $! > %s", EXE, child, pidfile))
    local pid = math.tointeger(io.open(pidfile):read("n"))
    assert(pid and pid > 1, "no child pid")
    local ok, err = pcall(function()
      local waited = 0
      while not exists(TMP .. "/kill/ready") and waited < 300 do sleep(0.05); waited = waited + 1 end
      assert(exists(TMP .. "/kill/ready"), "the child never saved")
      sleep(0.05 * round)
    end)
    -- the child is killed whatever happened (it saves in a loop for at most a minute anyway)
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    local n = 0
    while os.execute("kill -0 " .. pid .. " 2>/dev/null") and n < 100 do sleep(0.05); n = n + 1 end
    assert(ok, err)
    local tensors, st = ad.train.checkpoint.load(ck)
    assert(st.step == 3 and tensors["G.out.weight"] ~= nil, "round " .. round)
    -- and a run resumes from it
    local run = ad.train.adversarial(make_cfg { resume = ck })
    assert(run.step_count == 3)
    run:step()
  end
  os.execute("rm -rf " .. TMP .. "/kill")
end)

test("checkpoint files: safetensors with the state in its metadata, a JSON sidecar; errors", function()
  local run = ad.train.adversarial(make_cfg())
  run:step(3)
  local file = run:save(TMP .. "/ck2/ck")
  assert(file:find("%.safetensors$") and exists(TMP .. "/ck2/ck.json") and not exists(TMP .. "/ck2/ck.safetensors.partial"))
  local f = io.open(TMP .. "/ck2/ck.json")
  local side = json.decode(f:read("a"))
  f:close()
  assert(side.step == 3 and side.format == "advdiff-adversarial-run" and side.loader.position == 3)
  assert(side.rng.run.seed == 0 and side.opt_d.param_groups[1].lr == 4e-5)
  local t = ad.load(file)
  assert(t["EMA.out.weight"] and t["D.backbone.1.running_mean"] and t["opt_d.state.0.exp_avg"] == nil or true)
  local ok, err = pcall(ad.train.checkpoint.load, TMP .. "/none")
  assert(not ok and err:find("no checkpoint"))
  ad.save(TMP .. "/plain.safetensors", { x = ad.zeros(2) })
  ok, err = pcall(ad.train.checkpoint.load, TMP .. "/plain")
  assert(not ok and err:find("not an advdiff checkpoint"))
end)

-- TFRecords of an event file: list of payloads, CRCs checked
local function read_records(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  local out, i = {}, 1
  while i <= #data do
    local len = string.unpack("<I8", data, i)
    local lcrc = string.unpack("<I4", data, i + 8)
    assert(lcrc == tb.masked_crc32c(data:sub(i, i + 7)), "length CRC")
    local payload = data:sub(i + 12, i + 11 + len)
    local pcrc = string.unpack("<I4", data, i + 12 + len)
    assert(pcrc == tb.masked_crc32c(payload), "payload CRC")
    out[#out + 1] = payload
    i = i + 16 + len
  end
  return out
end

test("a run writes JSONL, CSV, TensorBoard events, PNG samples and loss plots", function()
  assert(tb.crc32c("123456789") == 0xE3069283)
  local dir = TMP .. "/out"
  local run = ad.train.adversarial(make_cfg { out_dir = dir, sample_every = 3, sample_n = 4, plot_every = 6,
                                              save_every = 3, telemetry_every = 2 })
  run:step(2)
  run.cfg.lambda_adv = 0.3
  run:run()
  run:close()
  local recs = log.read_jsonl(dir .. "/log.jsonl")
  local steps, change = 0, nil
  for _, r in ipairs(recs) do
    if r.step and r.loss_d then steps = steps + 1 end
    if r.event == "cfg" then change = r end
  end
  assert(steps == 6 and change.key == "lambda_adv" and change.step == 2 and change.new == 0.3)
  local f = io.open(dir .. "/metrics.csv")
  local header = f:read("l")
  local n = 0
  for _ in f:lines() do n = n + 1 end
  f:close()
  assert(header:find("^step,phase,loss_d") and n == 6)
  assert(exists(dir .. "/samples/step_0000003.png") and exists(dir .. "/samples/step_0000006.png"))
  local img = ad.image.load(dir .. "/samples/step_0000006.png")
  assert(img:shape()[1] == 3)
  local plot = ad.image.load(dir .. "/plots/losses_d.png")
  assert(plot:shape()[2] > 100)
  assert(exists(dir .. "/checkpoint.safetensors") and exists(dir .. "/config.json"))
  -- the event file
  local files = ad._listdir(dir .. "/tb")
  assert(#files == 1)
  local recsb = read_records(dir .. "/tb/" .. files[1].name)
  assert(recsb[1]:find("brain.Event:2", 1, true))
  local scal, imgs = 0, 0
  for _, p in ipairs(recsb) do
    if p:find("loss_d", 1, true) then scal = scal + 1 end
    if p:find("\137PNG", 1, true) then imgs = imgs + 1 end
  end
  assert(scal >= 6 and imgs == 2, scal .. " " .. imgs)
  -- a scalar event decodes: wall_time (1, double), step (2, varint), summary (5)
  local ev = tb.scalar_event("x", 0.5, 7, 1234.5)
  assert(ev:sub(1, 1) == "\9" and string.unpack("<d", ev, 2) == 1234.5 and ev:sub(10, 11) == "\16\7")
  assert(tb.varint(300) == "\172\2" and #tb.varint(-1) == 10)
end)

test("loss plots: builtin renderer draws the series", function()
  local xs, ys = {}, {}
  for i = 1, 50 do xs[i], ys[i] = i, math.sin(i / 5) end
  ys[10] = 0 / 0
  local used = log.plot.curves(TMP .. "/p.png", { { name = "sin", xs = xs, ys = ys } }, { backend = "builtin" })
  assert(used == "builtin")
  local img = ad.image.load(TMP .. "/p.png")
  assert(img:shape()[1] == 3 and img:shape()[2] == 480 and img:shape()[3] == 800)
  -- some red pixels (the first series' colour)
  local red = img:narrow(1, 1, 1):float():gt(200):logical_and(img:narrow(1, 2, 1):float():lt(80)):float():sum():item()
  assert(red > 100)
end)

test("progress lines: redrawn on a terminal, plain lines otherwise", function()
  local path = TMP .. "/progress.txt"
  local f = io.open(path, "w")
  local p = log.Progress { total = 10, stream = f, tty = false, every = 5, label = "run" }
  for s = 1, 10 do p:update(s, { D = 0.5, G = 1.25, lambda = 0.002 }, { "D", "G", "lambda" }) end
  p:close()
  f:close()
  local lines = {}
  for l in io.lines(path) do lines[#lines + 1] = l end
  assert(#lines == 2 and lines[2]:find("10/10 %(100%%%)") and lines[2]:find("D=0.5000") and lines[2]:find("lambda=2.000e%-03"), lines[2])
  local g = io.open(path, "w")
  local q = log.Progress { total = 4, stream = g, tty = true }
  q:update(1, { D = 1 })
  q:update(2, { D = 1 })
  q:close()
  g:close()
  local text = io.open(path):read("a")
  assert(text:find("\r\27%[K") and text:find("ETA") and text:sub(-1) == "\n")
end)

test("run:start() trains from the REPL's idle hook until paused or done", function()
  local run = ad.train.adversarial(make_cfg { repl_print_every = 2 })
  run:start()
  assert(run:status().running)
  local msgs = {}
  local again, msg = ad._repl_idle()
  assert(again and run.step_count == 1)
  run:pause()
  again = ad._repl_idle()
  assert(not again and run.step_count == 1, "paused")
  run:start()
  for _ = 1, 20 do
    again, msg = ad._repl_idle()
    if msg then msgs[#msgs + 1] = msg end
    if not again then break end
  end
  assert(run.step_count == 6 and not run:status().running)
  assert(table.concat(msgs, "\n"):find("finished at step 6"))
  assert(tostring(run:status()):find("step 6/6"))
end)

test("the REPL stays usable while a run trains in the background (pseudo-terminal)", function()
  if not os.execute("command -v python3 >/dev/null 2>&1") then skip("python3 is needed to drive a pseudo-terminal") end
  local script = TMP .. "/drive_repl.py"
  local f = assert(io.open(script, "w"))
  f:write(string.format([[
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.environ["HOME"] = %q
    os.execv(%q, [%q])
out = b""
def pump(seconds):
    global out
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                out += os.read(fd, 65536)
            except OSError:
                return
def send(line):
    os.write(fd, line.encode() + b"\r")
pump(1.0)
send('dofile(%q); run = ad.train.adversarial(make_cfg{joint_steps = 400, repl_print_every = 0}); run:start()')
pump(4.0)
send('print("STEPS=" .. run.step_count .. "=")')
pump(2.0)
send('run:pause(); print("PAUSED=" .. tostring(run.running) .. "=")')
pump(1.5)
os.write(fd, b"\x04")
pump(1.0)
sys.stdout.write(out.decode("utf-8", "replace"))
]], TMP, EXE, EXE, setup_file))
  f:close()
  local p = io.popen("python3 " .. script .. " 2>&1")
  local out = p:read("a")
  p:close()
  local n = tonumber(out:match("STEPS=(%d+)="))
  assert(n and n > 0, "no training happened at the prompt:\n" .. out)
  assert(out:find("PAUSED=false="), out)
end)

os.execute("rm -rf " .. TMP)
