-- make_corpus.lua OUT_DIR [FIXTURES_DIR]: seed corpora for the fuzzers, made
-- from the golden fixtures: small .npy fixtures as they are, and small
-- checkpoints (torch zip, legacy, safetensors, npz, raw pickles) and images
-- written from fixture tensors. Run with the advdiff executable.
local ad = require "advdiff"

local args = { ... }
if #args == 0 and arg then args = arg end
local out = assert(args[1], "usage: advdiff make_corpus.lua OUT_DIR [FIXTURES_DIR]")
local fix = args[2] or os.getenv("ADVDIFF_FIXTURES") or "../shared/fixtures"

local function sh(cmd) assert(os.execute(cmd), cmd) end
local function readfile(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local function writefile(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end
for _, d in ipairs{ "torch", "torch_legacy", "safetensors", "npy", "npz", "pickle", "image" } do
  sh("mkdir -p '" .. out .. "/" .. d .. "'")
end
local n = 0
local function seed(kind, name, bytes)
  writefile(out .. "/" .. kind .. "/" .. name, bytes)
  n = n + 1
end

-- small .npy fixtures, as NumPy wrote them
local lst = io.popen("ls " .. fix .. "/*/*.npy")
for p in lst:lines() do
  local s = readfile(p)
  if #s <= 16384 then seed("npy", p:match("([^/]+/[^/]+)$"):gsub("/", "_"), s) end
end
lst:close()

-- a few tensors from each checkpoint fixture, rewritten small
local sd = ad.load(fix .. "/adm_tiny/adm_tiny.pt")
local rn = ad.load(fix .. "/resnet18/resnet18.pth")
local small = { ["out.2.bias"] = sd["out.2.bias"], ["time_embed.0.bias"] = sd["time_embed.0.bias"]:narrow(1, 1, 16),
                ["bn1.num_batches_tracked"] = rn["bn1.num_batches_tracked"], ["bn1.running_var"] = rn["bn1.running_var"] }
local base = sd["out.2.bias"]
local tmp = os.tmpname()
os.remove(tmp)   -- only its name is used, with suffixes
local function via(ext, value, opts)
  local p = tmp .. ext
  ad.save(p, value, opts)
  local s = readfile(p)
  os.remove(p)
  return s
end
seed("torch", "state.pt", via(".pt", small))
seed("torch", "nested.pt", via(".pt", { model = small, step = 3, lr = 1e-4, name = "x", flags = { true, false },
                                        views = { base = base, t = base:view(2, 3):transpose(1, 2) } }))
seed("safetensors", "state.safetensors", via(".safetensors", small, { metadata = { format = "pt" } }))
seed("npz", "stored.npz", via(".npz", small))
seed("npz", "deflated.npz", via(".npz", small, { compress = true }))
do
  local p = tmp .. ".png"
  local img = ad.zeros(3, 8, 8, { dtype = "u8" })
  for i = 1, img:numel() do img:_setflat(i, (i * 37) % 256) end
  ad.image.save(p, img)
  seed("image", "rgb.png", "\0" .. readfile(p))
  ad.image.save(p, img:narrow(1, 1, 1))
  seed("image", "gray.png", "\x13" .. readfile(p))
  os.remove(p)
end

-- the pickle inside a torch zip: the first entry, stored
local function first_entry(z)
  local csize = string.unpack("<I4", z, 19)
  local nlen, xlen = string.unpack("<I2I2", z, 27)
  local at = 31 + nlen + xlen
  return z:sub(at, at + csize - 1)
end
seed("pickle", "state.pkl", first_entry(via(".pt", small)))
seed("pickle", "nested.pkl", first_entry(via(".pt", { a = { 1, 2.5, "s", true }, b = base })))
os.remove(tmp)

-- a legacy checkpoint of fixture values (the fixture itself is 8.6 MB)
local function pstr(s) return "X" .. string.pack("<I4", #s) .. s end
local function pint(i) return i < 256 and ("K" .. string.char(i)) or ("J" .. string.pack("<i4", i)) end
local vals = {}
for i = 1, 6 do vals[i] = string.pack("<f", base:_getflat(i)) end
local pid = "(" .. pstr("storage") .. "ctorch\nFloatStorage\n" .. pstr("0") .. pstr("cpu") .. pint(6) .. "Nt"
local obj = "\x80\x02ccollections\nOrderedDict\n)R(" .. pstr("out.2.bias") ..
            "ctorch._utils\n_rebuild_tensor_v2\n(" .. pid .. "Q" .. pint(0) .. "(" .. pint(6) .. "t(" .. pint(1) ..
            "t\x89ccollections\nOrderedDict\n)RtRu."
local legacy = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e" .. "\x80\x02" .. pint(1001) .. "." ..
               "\x80\x02}(" .. pstr("little_endian") .. "\x88u." .. obj .. "\x80\x02](" .. pstr("0") .. "e." ..
               string.pack("<i8", 6) .. table.concat(vals)
seed("torch_legacy", "state.pt", legacy)
seed("pickle", "legacy_obj.pkl", obj)
-- the first 64 KiB of the legacy fixture: a real torch.save header and pickle
seed("torch_legacy", "fixture_head.pt", readfile(fix .. "/adm_tiny/adm_tiny_legacy.pt"):sub(1, 65536))
print(("%d seeds in %s"):format(n, out))
