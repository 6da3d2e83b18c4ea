-- test_paper_experiment.lua: experiments/paper_imagenet64.lua, the paper's
-- exact protocol, run end to end as a child process with the small
-- PyTorch-written checkpoints of ../shared/fixtures standing in for the
-- official files (adm_tiny.pt with its manifest's create_model_and_diffusion
-- options, torchvision-named resnet18.pth, pytorch-fid-named Inception
-- weights) and a tiny .npz in guided-diffusion's reference-batch layout, for a
-- few steps; and the message that names each missing file and its source.
local ad = require "advdiff"
local json = require "advdiff.log.json"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local SCRIPT = here .. "/../../experiments/paper_imagenet64.lua"
local FIX = os.getenv("ADVDIFF_FIXTURES")
if not FIX or FIX == "" then FIX = here .. "/../../../shared/fixtures" end
local EXE = ad._proc_exe()

local T = require "advdiff.testing"
local q, exists, read, tmpdir = T.shell_quote, T.exists, T.read_file, T.tmpdir

local FILES = {
  generator = FIX .. "/adm_tiny/adm_tiny.pt",
  generator_config = FIX .. "/adm_tiny/manifest.json",
  discriminator_backbone = FIX .. "/resnet18/resnet18.pth",
  inception = FIX .. "/inception_fid/pt_inception_fid_random_fp16.pth",
}

local function need()
  if not EXE or not EXE:find("advdiff[^/]*$") then skip("not run by the advdiff executable") end
  for _, p in pairs(FILES) do if not exists(p) then skip("fixture missing: " .. p) end end
end

local function run(sets, dir)
  local args = {}
  for _, kv in ipairs(sets) do args[#args + 1] = "--set " .. q(kv) end
  local cmd = string.format("%s %s %s 2>%s/stderr.txt; echo \"exit=$?\"", q(EXE), q(SCRIPT), table.concat(args, " "), q(dir))
  local h = io.popen(cmd, "r")
  local text = h:read("a")
  h:close()
  local code = tonumber(text:match("exit=(%d+)%s*$"))
  return code, text, read(dir .. "/stderr.txt")
end

test("paper_imagenet64: missing files are named with where to get them", function()
  need()
  local dir = tmpdir()
  local code, _, err = run({ "generator=" .. dir .. "/nope/64x64_diffusion.pt", "discriminator_backbone=" .. dir .. "/r.pth",
    "inception=" .. dir .. "/i.pth", "data=" .. dir .. "/imagenet64", "out=" .. dir .. "/out" }, dir)
  assert(code == 2, "expected exit status 2, got " .. tostring(code) .. "\n" .. err)
  for _, want in ipairs { "64x64_diffusion.pt", "guided-diffusion", "openaipublic",
                          "resnet18-f37072fd.pth", "download.pytorch.org/models/resnet18-f37072fd.pth",
                          "pt_inception-2015-12-05-6726825d.pth", "pytorch-fid/releases",
                          "--set data=", "arr_0", "--set generator=", "--set inception=" } do
    assert(err:find(want, 1, true), "the message does not mention '" .. want .. "':\n" .. err)
  end
  assert(not exists(dir .. "/out/results.json"))
  os.execute("rm -rf " .. q(dir))
end)

test("paper_imagenet64: the protocol end to end on the fixture checkpoints and an .npz", function()
  need()
  local dir = tmpdir()
  -- guided-diffusion's reference-batch layout: arr_0 (N, H, W, 3) u8, arr_1 ImageNet labels
  ad.manual_seed(5)
  local n = 12
  local imgs = (ad.rand(n, 32, 32, 3) * 255):to("u8")
  local labels = {}
  for i = 1, n do labels[i] = (i % 3 == 0) and 1 or (i % 2 == 0 and 207 or 250) end
  ad.save(dir .. "/data.npz", { arr_0 = imgs, arr_1 = ad.tensor(labels) })
  local sets = {
    "data=" .. dir .. "/data.npz", "per_class=4", "batch=4", "warmup_steps=1", "steps=2", "train_respacing=10",
    "eval_n=6", "sample_steps=2", "bootstrap=0", "save_every=0", "device=cpu", "out=" .. dir .. "/out",
  }
  for k, v in pairs(FILES) do sets[#sets + 1] = k .. "=" .. v end
  local code, text, err = run(sets, dir)
  assert(code == 0, "exit status " .. tostring(code) .. "\nstdout:\n" .. text .. "\nstderr:\n" .. err:sub(-3000))
  assert(text:find("data: 8 images of classes 207, 250", 1, true), "class filtering:\n" .. text)
  assert(text:find("| Sharpness", 1, true), "no table printed:\n" .. text)
  local r = json.decode(read(dir .. "/out/results.json"))
  for _, k in ipairs { "sharpness", "precision", "recall", "fid", "density", "coverage", "d_score" } do
    assert(type(r[k]) == "number", "results.json: " .. k .. " is " .. tostring(r[k]))
    assert(type(r.pretrained[k]) == "number", "results.json: pretrained." .. k)
  end
  assert(r.n_eval == 6)
  for _, f in ipairs { "generator.safetensors", "discriminator.safetensors", "DONE", "report.md", "eval/samples.png",
                       "eval/table.md", "adversarial/metrics.csv", "adversarial/checkpoint.json" } do
    assert(exists(dir .. "/out/" .. f), "missing output " .. f)
  end
  -- the fine-tuned generator moved away from the checkpoint, and only through training
  local g = ad.load(dir .. "/out/generator.safetensors")
  local g0 = ad.load(FILES.generator)
  local diff = (g["out.2.weight"] - g0["out.2.weight"]):abs():max():item()
  assert(diff > 0 and diff < 1e-2, "out.2.weight changed by " .. diff)
  os.execute("rm -rf " .. q(dir))
end)
