-- Checkpoint and array formats: ad.load / ad.save for PyTorch (.pt zip and
-- legacy), safetensors, .npy and .npz.
--
-- 1. every golden fixture loads, with the keys, shapes, dtypes and values the
--    manifests and the reference (torch.load / np.load) give;
-- 2. hostile files, built here byte by byte, give errors and never crash or
--    run anything: forbidden pickle globals, truncated zips, lying sizes,
--    short storages, huge shapes, bad safetensors offsets, bad npy headers,
--    and a few thousand random mutations of valid files;
-- 3. save -> load round trips are exact for every dtype and for views;
-- 4. when /usr/bin/python3 has torch and numpy, files we write are read back
--    by torch.load / np.load, and files they write are read by us.
local ad = require "advdiff"

-- ---- helpers ----------------------------------------------------------------
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local FIX = os.getenv("ADVDIFF_FIXTURES") or (here .. "/../../../shared/fixtures")

local T = require "advdiff.testing"
local tmp, cleanup_tmp, track_tmp, TMP = T.tmpfiles()
local readfile, writefile = T.read_file, T.write_file
local exists = T.exists

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error containing '" .. pattern .. "'")
  assert(tostring(err):find(pattern, 1, true), "error '" .. tostring(err) .. "' does not contain '" .. pattern .. "'")
  return tostring(err)
end

local function shape_is(x, s)
  local got = x:shape()
  assert(#got == #s, ("ndim %d vs %d"):format(#got, #s))
  for i = 1, #s do assert(got[i] == s[i], ("dim %d: %d vs %d"):format(i, got[i], s[i])) end
end

local function flat(x) -- row-major values
  local t, n = {}, x:numel()
  for i = 1, n do t[i] = x:_getflat(i) end
  return t
end

local function same(a, b, what)
  assert(a:dtype() == b:dtype(), (what or "") .. ": dtype " .. a:dtype() .. " vs " .. b:dtype())
  shape_is(a, b:shape())
  -- fast path through the elementwise ops when they exist; the element loop
  -- below names the first difference (and treats NaN as equal to NaN)
  local ok, eq = pcall(function() return a:eq(b):all():item() end)
  if ok and (eq == true or eq == 1) then return end
  local fa, fb = flat(a), flat(b)
  for i = 1, #fa do
    if fa[i] ~= fb[i] and not (fa[i] ~= fa[i] and fb[i] ~= fb[i]) then
      error(("%s: element %d differs: %s vs %s"):format(what or "", i, tostring(fa[i]), tostring(fb[i])), 2)
    end
  end
end

local function sum64(x)
  local ok, s = pcall(function() return x:double():sum():item() end)
  if ok and type(s) == "number" then return s end
  s = 0
  for i = 1, x:numel() do
    local v = x:_getflat(i)
    s = s + (v == true and 1 or v == false and 0 or v)
  end
  return s
end

local function close(a, b, tol) return math.abs(a - b) <= tol * math.max(1, math.abs(b)) end

-- a small JSON reader for the manifests
local function json_decode(s)
  local pos = 1
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local esc = { n = "\n", t = "\t", r = "\r", b = "\b", f = "\f", ['"'] = '"', ["\\"] = "\\", ["/"] = "/" }
  local function str()
    local out, i = {}, pos + 1
    while true do
      local c = s:sub(i, i)
      if c == '"' then pos = i + 1 return table.concat(out) end
      if c == "\\" then
        local e = s:sub(i + 1, i + 1)
        if e == "u" then out[#out + 1] = utf8.char(tonumber(s:sub(i + 2, i + 5), 16)); i = i + 6
        else out[#out + 1] = esc[e]; i = i + 2 end
      else
        local j = s:find('["\\]', i)
        out[#out + 1] = s:sub(i, j - 1)
        i = j
      end
    end
  end
  local value
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" or c == "[" then
      local t, obj = {}, c == "{"
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == (obj and "}" or "]") then pos = pos + 1 return t end
      while true do
        if obj then
          ws()
          local k = str()
          ws()
          pos = pos + 1 -- ':'
          t[k] = value()
        else
          t[#t + 1] = value()
        end
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d ~= "," then return t end
      end
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4 return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5 return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4 return nil
    else
      local num = s:match("^-?[%d%.eE+-]+", pos)
      pos = pos + #num
      return math.tointeger(tonumber(num)) or tonumber(num)
    end
  end
  return value()
end

-- CRC-32 and a zip writer, for building hostile archives
local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do c = (c & 1 == 1) and (0xEDB88320 ~ (c >> 1)) or (c >> 1) end
  CRC[i] = c
end
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do c = CRC[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8) end
  return c ~ 0xFFFFFFFF
end

-- entries: list of {name, data}; opts.zip64 writes zip64 extra fields and records
local function zip(entries, opts)
  opts = opts or {}
  local out, cd, off = {}, {}, 0
  for _, e in ipairs(entries) do
    local name, data = e[1], e[2]
    local crc = crc32(data)
    local lh, cde
    if opts.zip64 then
      local x = string.pack("<I2I2I8I8", 1, 16, #data, #data)
      lh = string.pack("<I4I2I2I2I2I2I4I4I4I2I2", 0x04034b50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, #name, #x) .. name .. x
      local cx = string.pack("<I2I2I8I8I8", 1, 24, #data, #data, off)
      cde = string.pack("<I4I2I2I2I2I2I2I4I4I4I2I2I2I2I2I4I4", 0x02014b50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF,
                        0xFFFFFFFF, #name, #cx, 0, 0, 0, 0, 0xFFFFFFFF) .. name .. cx
    else
      lh = string.pack("<I4I2I2I2I2I2I4I4I4I2I2", 0x04034b50, 20, 0, 0, 0, 0, crc, #data, #data, #name, 0) .. name
      cde = string.pack("<I4I2I2I2I2I2I2I4I4I4I2I2I2I2I2I4I4", 0x02014b50, 20, 20, 0, 0, 0, 0, crc, #data, #data,
                        #name, 0, 0, 0, 0, 0, off) .. name
    end
    out[#out + 1] = lh .. data
    cd[#cd + 1] = cde
    off = off + #lh + #data
  end
  local cds = table.concat(cd)
  local tail
  if opts.zip64 then
    local rec = string.pack("<I4I8I2I2I4I4I8I8I8I8", 0x06064b50, 44, 45, 45, 0, 0, #entries, #entries, #cds, off)
    local loc = string.pack("<I4I4I8I4", 0x07064b50, 0, off + #cds, 1)
    tail = rec .. loc .. string.pack("<I4I2I2I2I2I4I4I2", 0x06054b50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
  else
    tail = string.pack("<I4I2I2I2I2I4I4I2", 0x06054b50, 0, 0, #entries, #entries, #cds, off, 0)
  end
  return table.concat(out) .. cds .. tail
end

-- pickle (protocol 2) building blocks
local P = {}
function P.str(s) return "X" .. string.pack("<I4", #s) .. s end
function P.int(i)
  if i >= 0 and i < 256 then return "K" .. string.char(i) end
  if i >= -2147483648 and i <= 2147483647 then return "J" .. string.pack("<i4", i) end
  return "\x8a\x08" .. string.pack("<i8", i)
end
function P.global(m, n) return "c" .. m .. "\n" .. n .. "\n" end
function P.tuple(list) return "(" .. table.concat(list) .. "t" end
local function ints(list)
  local t = {}
  for i, v in ipairs(list) do t[i] = P.int(v) end
  return t
end
local function P_tensor(cls, key, numel, offset, shape, stride)
  local pid = P.tuple{ P.str("storage"), P.global("torch", cls), P.str(key), P.str("cpu"), P.int(numel) }
  return P.global("torch._utils", "_rebuild_tensor_v2") .. "(" .. pid .. "Q" .. P.int(offset) ..
         P.tuple(ints(shape)) .. P.tuple(ints(stride)) .. "\x89" .. P.global("collections", "OrderedDict") .. ")R" .. "tR"
end
local function P_state(items) -- items: list of {key, pickled value}
  local body = {}
  for _, kv in ipairs(items) do body[#body + 1] = P.str(kv[1]) .. kv[2] end
  return "\x80\x02" .. P.global("collections", "OrderedDict") .. ")R(" .. table.concat(body) .. "u."
end
local function torch_zip(pkl, records)
  local entries = { { "archive/data.pkl", pkl } }
  for _, r in ipairs(records or {}) do entries[#entries + 1] = { "archive/data/" .. r[1], r[2] } end
  entries[#entries + 1] = { "archive/version", "3\n" }
  return zip(entries)
end
local function f32bytes(list)
  local t = {}
  for i, v in ipairs(list) do t[i] = string.pack("<f", v) end
  return table.concat(t)
end

-- a legacy (pre-1.6) torch file: magic, protocol, sys info, object, keys, data
local function legacy_file(obj_pkl, keys, datas)
  local magic = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e"
  local proto = "\x80\x02" .. P.int(1001) .. "."
  local sys = "\x80\x02}(" .. P.str("protocol_version") .. P.int(1001) .. P.str("little_endian") .. "\x88" .. "u."
  local klist = {}
  for i, k in ipairs(keys) do klist[i] = P.str(k) end
  local kp = "\x80\x02](" .. table.concat(klist) .. "e."
  local data = {}
  for i, d in ipairs(datas) do data[i] = string.pack("<i8", d[1]) .. d[2] end
  return magic .. proto .. sys .. obj_pkl .. kp .. table.concat(data)
end

-- ---- 1. fixtures ---------------------------------------------------------------
local function manifest(dir) return json_decode(readfile(FIX .. "/" .. dir .. "/manifest.json")) end

local NP_DTYPE = { float32 = "f32", float64 = "f64", int64 = "i64", int32 = "i32", uint8 = "u8", float16 = "f16", bool = "bool" }

test("every .npy fixture loads with the manifest's dtype and shape", function()
  local n = 0
  for _, dir in ipairs{ "adm_tiny", "diffusion", "metrics", "resnet18", "inception_fid" } do
    local m = manifest(dir)
    for file, info in pairs(m.files) do
      if info.kind == "npy" then
        local x, meta = ad.load(FIX .. "/" .. dir .. "/" .. file)
        assert(meta.format == "npy")
        assert(ad.is_tensor(x), file)
        assert(x:dtype() == NP_DTYPE[info.dtype], file .. ": dtype " .. x:dtype() .. " vs " .. info.dtype)
        shape_is(x, info.shape)
        n = n + 1
      end
    end
  end
  assert(n >= 130, "only " .. n .. " npy fixtures found")
end)

test("every file in the fixtures directory loads, mapped, read, and CRC-verified", function()
  local ls = assert(io.popen("ls " .. FIX .. "/*/*"))
  local n, ck = 0, 0
  for p in ls:lines() do
    if p:match("%.npy$") or p:match("%.pt$") or p:match("%.pth$") then
      local a, meta = ad.load(p)
      assert(a ~= nil, p)
      if meta.format ~= "npy" then
        ck = ck + 1
        local b = ad.load(p, { mmap = false })
        local c = ad.load(p, { verify = true, populate = true })
        for _, k in ipairs(meta.keys) do
          assert(b[k]:dtype() == a[k]:dtype() and c[k]:numel() == a[k]:numel(), p .. " " .. k)
        end
        local k = meta.keys[#meta.keys]
        assert(a[k]:_getflat(a[k]:numel()) == b[k]:_getflat(b[k]:numel()), p)
      end
      n = n + 1
    end
  end
  ls:close()
  assert(n >= 140 and ck == 4, ("%d files, %d checkpoints"):format(n, ck))
end)

test("npy fixture values match np.load", function()
  -- first values, last value and float64 sum, as NumPy reports them
  local cases = {
    { "adm_tiny/x.npy", { -0.3108336329460144, 0.5303759574890137, 1.309380292892456 }, -0.30512791872024536, 122.86970239214133 },
    { "adm_tiny/t.npy", { 803, 17 }, 17, 820 },
    { "adm_tiny/y.npy", { 3, 917 }, 917, 920 },
    { "metrics/sharp_u8_gray.npy", { 50, 58, 79 }, 107, 3459577 },
    { "diffusion/betas_cosine_1000.npy", { 4.128422482196914e-05, 4.614175273665033e-05, 5.099948119891007e-05 }, 0.999, 12.441496417056296 },
    { "diffusion/loop_step_noise.npy", { -1.0249828100204468, -2.0867509841918945, -1.0867384672164917 }, -0.7094799280166626, 8.819136123041972 },
    { "metrics/pr_near_results.npy", { 0.55, 0.515, 0.63125 }, 0.855, 5.13875 },
  }
  for _, c in ipairs(cases) do
    local x = ad.load(FIX .. "/" .. c[1])
    for i, v in ipairs(c[2]) do assert(x:_getflat(i) == v, c[1] .. " element " .. i) end
    assert(x:_getflat(x:numel()) == c[3], c[1] .. " last element")
    assert(close(sum64(x), c[4], 1e-9), c[1] .. " sum " .. sum64(x) .. " vs " .. c[4])
  end
end)

local function check_checkpoint(dir, file, info, keys_shapes)
  local sd, meta = ad.load(FIX .. "/" .. dir .. "/" .. file)
  assert(type(sd) == "table")
  assert(#meta.keys == info.num_tensors, file .. ": " .. #meta.keys .. " keys vs " .. info.num_tensors)
  local dts = {}
  for _, d in ipairs(info.tensor_dtypes) do dts[NP_DTYPE[d]] = true end
  local count = 0
  for k, shape in pairs(keys_shapes) do
    local t = sd[k]
    assert(ad.is_tensor(t), file .. ": missing key " .. k)
    shape_is(t, shape)
    assert(dts[t:dtype()], file .. ": " .. k .. " has dtype " .. t:dtype())
    count = count + 1
  end
  for _, k in ipairs(meta.keys) do assert(keys_shapes[k], file .. ": unexpected key " .. k) end
  assert(count == info.num_tensors)
  return sd, meta
end

test("the torch checkpoint fixtures load with the manifest's keys, shapes and dtypes", function()
  local m = manifest("adm_tiny")
  local sd, meta = check_checkpoint("adm_tiny", "adm_tiny.pt", m.files["adm_tiny.pt"], m.state_dict_keys_and_shapes)
  assert(meta.format == "torch")
  assert(meta.keys[1] == "time_embed.0.weight" and meta.keys[2] == "time_embed.0.bias") -- file order kept
  local legacy, lmeta = check_checkpoint("adm_tiny", "adm_tiny_legacy.pt", m.files["adm_tiny_legacy.pt"],
                                         m.state_dict_keys_and_shapes)
  assert(lmeta.format == "torch_legacy")
  for i, k in ipairs(meta.keys) do
    assert(lmeta.keys[i] == k, "legacy key order")
    same(sd[k], legacy[k], k)
  end
  local r = manifest("resnet18")
  local rs = check_checkpoint("resnet18", "resnet18.pth", r.files["resnet18.pth"], r.state_dict_keys_and_shapes)
  assert(rs["conv1.weight"]:dtype() == "f16" and rs["bn1.num_batches_tracked"]:dtype() == "i64")
  shape_is(rs["bn1.num_batches_tracked"], {})
  local q = manifest("inception_fid")
  check_checkpoint("inception_fid", "pt_inception_fid_random_fp16.pth", q.files["pt_inception_fid_random_fp16.pth"],
                   q.state_dict_keys_and_shapes)
end)

test("checkpoint fixture values match torch.load", function()
  -- values printed by torch.load(...)[key].flatten()[:3] and .double().sum()
  local cases = {
    { "adm_tiny/adm_tiny.pt", "time_embed.0.weight", { -0.17117562890052795, -0.05208679288625717, -0.02860545739531517 }, 2.42677545233164 },
    { "adm_tiny/adm_tiny.pt", "out.2.bias", { 0.005407052580267191, -0.0129281897097826, -0.010162807069718838 }, -0.01790049928240478 },
    { "adm_tiny/adm_tiny.pt", "label_emb.weight", { 0.09192019701004028, 0.8151022791862488, 0.7475214600563049 }, 133.98857721524837 },
    { "adm_tiny/adm_tiny_legacy.pt", "label_emb.weight", { 0.09192019701004028, 0.8151022791862488, 0.7475214600563049 }, 133.98857721524837 },
    { "resnet18/resnet18.pth", "conv1.weight", { -0.068115234375, -0.054229736328125, -0.018402099609375 }, -1.320176899433136 },
    { "resnet18/resnet18.pth", "fc.bias", { -0.08062744140625, -0.0022296905517578125, -0.0279388427734375 }, -0.1336478590965271 },
    { "resnet18/resnet18.pth", "bn1.running_var", { 0.1365966796875, 0.0660400390625, 0.072509765625 }, 5.0631256103515625 },
    { "resnet18/resnet18.pth", "layer4.1.bn2.num_batches_tracked", { 1 }, 1 },
    { "inception_fid/pt_inception_fid_random_fp16.pth", "Conv2d_1a_3x3.conv.weight", { 0.1029052734375, -0.13134765625, 0.12744140625 }, -7.819148540496826 },
    { "inception_fid/pt_inception_fid_random_fp16.pth", "fc.bias", { 0.01279449462890625, -0.035400390625, 0.018798828125 }, 0.3622605800628662 },
  }
  local cache = {}
  for _, c in ipairs(cases) do
    cache[c[1]] = cache[c[1]] or ad.load(FIX .. "/" .. c[1])
    local t = cache[c[1]][c[2]]
    for i, v in ipairs(c[3]) do assert(t:_getflat(i) == v, c[2] .. " element " .. i .. ": " .. t:_getflat(i)) end
    assert(close(sum64(t), c[4], 1e-9), c[2] .. " sum " .. sum64(t) .. " vs " .. c[4])
  end
end)

test("the adm64 manifest lists 541 keys and 295,904,454 parameters (the benchmark's layout)", function()
  local m = manifest("adm64_keys")
  local n = 0
  for _ in pairs(m.state_dict_keys_and_shapes) do n = n + 1 end
  assert(n == m.num_state_dict_keys and n == 541)
  local total = 0
  for _, shape in pairs(m.state_dict_keys_and_shapes) do
    local e = 1
    for _, d in ipairs(shape) do e = e * d end
    total = total + e
  end
  assert(total == m.total_parameters and total == 295904454)
end)

-- ---- 2. hostile files --------------------------------------------------------------
local MARKER = TMP .. "_pwned"

test("pickles naming forbidden globals are refused by name, and nothing runs", function()
  local bad = { { "os", "system" }, { "builtins", "eval" }, { "__builtin__", "eval" }, { "posix", "system" },
                { "subprocess", "Popen" }, { "builtins", "exec" }, { "nt", "system" }, { "torch", "load" },
                { "numpy.core.multiarray", "_reconstruct" }, { "copyreg", "_reconstructor" }, { "torch.serialization", "load" } }
  for _, g in ipairs(bad) do
    local call = P.global(g[1], g[2]) .. P.tuple{ P.str("touch " .. MARKER) } .. "R"
    local name = g[1] .. "." .. g[2]
    -- zip format, at the top level and nested after valid tensors
    local p = tmp(".pt")
    writefile(p, torch_zip("\x80\x02" .. call .. "."))
    raises("forbidden global '" .. name .. "'", ad.load, p)
    writefile(p, torch_zip(P_state{ { "w", P_tensor("FloatStorage", "0", 2, 0, { 2 }, { 1 }) }, { "evil", call } },
                           { { "0", f32bytes{ 1, 2 } } }))
    raises("forbidden global '" .. name .. "'", ad.load, p)
    -- protocol 4: STACK_GLOBAL
    writefile(p, torch_zip("\x80\x04" .. P.str(g[1]) .. P.str(g[2]) .. "\x93" .. P.tuple{ P.str("id") } .. "R."))
    raises("forbidden global '" .. name .. "'", ad.load, p)
    -- INST names its class inline
    writefile(p, torch_zip("\x80\x02(" .. P.str("x") .. "i" .. g[1] .. "\n" .. g[2] .. "\n."))
    raises("forbidden global '" .. name .. "'", ad.load, p)
    -- the legacy format goes through the same interpreter
    writefile(p, legacy_file("\x80\x02" .. call .. ".", {}, {}))
    raises("forbidden global '" .. name .. "'", ad.load, p)
  end
  assert(not exists(MARKER), "a forbidden call ran")
  -- the message says where
  local p = tmp(".pt")
  writefile(p, torch_zip("\x80\x02" .. P.global("os", "system") .. "."))
  local err = raises("forbidden global", ad.load, p)
  assert(err:find(p, 1, true) and err:find("archive/data.pkl offset 2", 1, true), err)
end)

test("other refused pickle constructs", function()
  local p = tmp(".pt")
  local function pkl(body) writefile(p, torch_zip(body)); return p end
  raises("not callable", ad.load, pkl("\x80\x02" .. P.global("torch", "FloatStorage") .. ")R."))
  raises("EXT1", ad.load, pkl("\x80\x02\x82\x01."))
  raises("OBJ opcode refused", ad.load, pkl("\x80\x02(" .. P.global("collections", "OrderedDict") .. "o."))
  raises("out-of-band", ad.load, pkl("\x80\x05\x97."))
  raises("persistent id of a module", ad.load, pkl("\x80\x02" .. P.tuple{ P.str("module"), P.str("x") } .. "Q."))
  raises("unknown opcode 0xff", ad.load, pkl("\x80\x02\xff."))
  raises("pickle protocol 9", ad.load, pkl("\x80\x09N."))
  raises("stack underflow", ad.load, pkl("\x80\x02R."))
  raises("memo entry 7 was never stored", ad.load, pkl("\x80\x02h\x07."))
  raises("memo index", ad.load, pkl("\x80\x02Nr\xff\xff\xff\x7f."))
  raises("ends without STOP", ad.load, pkl("\x80\x02]"))
  raises("integer wider than 64 bits", ad.load, pkl("\x80\x02\x8a\x09\1\1\1\1\1\1\1\1\1."))
  raises("runs past the end", ad.load, pkl("\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f."))
  -- a list that contains itself, and a chain nested 10000 deep built through the memo
  raises("cycle", ad.load, pkl("\x80\x02]q\x00h\x00a."))
  local deep = { "\x80\x02]q\x00" }
  for i = 1, 10000 do deep[#deep + 1] = "]" .. "j" .. string.pack("<I4", i - 1) .. "a" .. "r" .. string.pack("<I4", i) end
  deep[#deep + 1] = "."
  raises("nested deeper", ad.load, pkl(table.concat(deep)))
  -- 2^20 doubling references: shared, so it is cheap, not exponential
  local dag = { "\x80\x02]q\x00" }
  for i = 1, 60 do
    dag[#dag + 1] = "(j" .. string.pack("<I4", i - 1) .. "j" .. string.pack("<I4", i - 1) .. "lr" .. string.pack("<I4", i) .. "0"
  end
  dag[#dag + 1] = "j" .. string.pack("<I4", 60) .. "."
  local d = ad.load(pkl(table.concat(dag)))
  assert(rawequal(d[1], d[2]) and rawequal(d[1][1][1], d[2][2][2]))
end)

test("storages shorter than their tensors, missing records and huge shapes are errors", function()
  local p = tmp(".pt")
  local function ckpt(tensor_pkl, records)
    writefile(p, torch_zip(P_state{ { "w", tensor_pkl } }, records))
    return p
  end
  local rec = { { "0", f32bytes{ 1, 2, 3, 4 } } }
  -- well formed: 4 floats viewed as 2x2
  local sd = ad.load(ckpt(P_tensor("FloatStorage", "0", 4, 0, { 2, 2 }, { 2, 1 }), rec))
  assert(sd.w:_getflat(4) == 4)
  raises("needs 100 elements of storage '0', which holds 4", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 0, { 100 }, { 1 }), rec))
  raises("needs 5 elements", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 1, { 2, 2 }, { 2, 1 }), rec))
  raises("needs 9 elements", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 0, { 2, 2 }, { 1, 7 }), rec))
  raises("declares 1000 elements (4000 bytes) but its record holds 16 bytes", ad.load,
         ckpt(P_tensor("FloatStorage", "0", 1000, 0, { 2 }, { 1 }), rec))
  raises("has no record 'archive/data/9'", ad.load, ckpt(P_tensor("FloatStorage", "9", 4, 0, { 2 }, { 1 }), rec))
  raises("too large", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 0, { 1 << 31, 1 << 31, 1 << 31 }, { 0, 0, 0 }), rec))
  raises("extent overflows", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 0, { 1 << 20, 1 << 20 }, { 1 << 62, 1 }), rec))
  raises("is too large", ad.load, ckpt(P_tensor("FloatStorage", "0", 1 << 62, 0, { 2 }, { 1 }), rec))
  raises("negative entry", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 0, { -2 }, { 1 }), rec))
  raises("at most 8 supported", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 0, { 1, 1, 1, 1, 1, 1, 1, 1, 1 }, { 1, 1, 1, 1, 1, 1, 1, 1, 1 }), rec))
  raises("2 sizes but 1 strides", ad.load, ckpt(P_tensor("FloatStorage", "0", 4, 0, { 2, 2 }, { 1 }), rec))
  raises("which advdiff does not support", ad.load, ckpt(P_tensor("CharStorage", "0", 4, 0, { 4 }, { 1 }), rec))
  -- a tensor of zero elements needs no storage bytes at all
  local e = ad.load(ckpt(P_tensor("FloatStorage", "0", 0, 0, { 0, 5 }, { 5, 1 }), { { "0", "" } }))
  shape_is(e.w, { 0, 5 })
end)

local function small_state()
  ad.manual_seed(7)
  return { a = ad.randn(3, 4), b = ad.tensor({ 1, 2, 3 }, { dtype = "i64" }), c = ad.randn(5, { dtype = "f64" }) }
end

test("truncated zips fail cleanly at every length", function()
  local p, q = tmp(".pt"), tmp(".pt")
  ad.save(p, small_state())
  local full = readfile(p)
  local n = 0
  for cut = 0, #full - 1, math.max(1, #full // 500) do
    local ok = pcall(ad._load_string, full:sub(1, cut), { format = "torch" })
    assert(not ok, "a zip truncated to " .. cut .. " of " .. #full .. " bytes loaded")
    n = n + 1
  end
  for cut = #full - 30, #full - 1 do
    assert(not pcall(ad._load_string, full:sub(1, cut), { format = "torch" }))
  end
  assert(n > 100)
  writefile(q, full:sub(1, 10))
  raises("truncated", ad.load, q)
end)

-- locate a central-directory entry by name; returns its offset (1-based) in s
local function cd_entry(s, name)
  local eocd = #s - 21
  assert(string.unpack("<I4", s, eocd) == 0x06054b50)
  local cd_off = string.unpack("<I4", s, eocd + 16)
  local p = cd_off + 1
  while string.unpack("<I4", s, p) == 0x02014b50 do
    local nlen, xlen, clen = string.unpack("<I2I2I2", s, p + 28)
    if s:sub(p + 46, p + 45 + nlen) == name then return p end
    p = p + 46 + nlen + xlen + clen
  end
  error("no entry " .. name)
end
local function patch(s, at, packed) return s:sub(1, at - 1) .. packed .. s:sub(at + #packed) end

test("zip entries whose sizes or offsets lie are errors", function()
  local p = tmp(".pt")
  ad.save(p, small_state())
  local s = readfile(p)
  local e = cd_entry(s, "archive/data/0")
  local q = tmp(".pt")
  writefile(q, patch(s, e + 20, string.pack("<I4I4", 0x7FFFFFF0, 0x7FFFFFF0)))
  raises("run past the end of the entries", ad.load, q)
  writefile(q, patch(s, e + 20, string.pack("<I4I4", 4, 4000)))
  raises("is stored but declares 4 compressed and 4000 uncompressed bytes", ad.load, q)
  writefile(q, patch(s, e + 20, string.pack("<I4I4", 4, 4)))
  raises("record holds 4 bytes", ad.load, q)
  writefile(q, patch(s, e + 42, string.pack("<I4", 0x7FFFFFF0)))
  raises("local header at offset", ad.load, q)
  writefile(q, patch(s, e + 10, string.pack("<I2", 12)))
  raises("compression method 12", ad.load, q)
  writefile(q, patch(s, e + 8, string.pack("<I2", 1)))
  raises("encrypted", ad.load, q)
  -- the end record: directory offset and entry count
  local eocd = #s - 21
  writefile(q, patch(s, eocd + 16, string.pack("<I4", #s + 100)))
  raises("central directory", ad.load, q)
  writefile(q, patch(s, eocd + 10, string.pack("<I2", 60000)))
  raises("declares 60000 entries", ad.load, q)
  -- a damaged pickle entry is caught by its CRC
  local pk = cd_entry(s, "archive/data.pkl")
  local lh = string.unpack("<I4", s, pk + 42) + 1
  local data_at = lh + 30 + string.unpack("<I2", s, lh + 26) + string.unpack("<I2", s, lh + 28)
  writefile(q, patch(s, data_at + 5, "\0"))
  raises("CRC-32", ad.load, q)
  -- zip64 end records pointing outside the file
  local z = zip({ { "x.npy", "" } }, { zip64 = true })
  local loc = #z - 22 - 20 + 1
  writefile(q, patch(z, loc + 8, string.pack("<I8", 1 << 40)))
  raises("zip64", ad.load, q, { format = "npz" })
end)

test("zip64 archives are read", function()
  local x = ad.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "f32" })
  local p = tmp(".npy")
  ad.save(p, x)
  local q = writefile(tmp(".npz"), zip({ { "x.npy", readfile(p) }, { "y.npy", readfile(p) } }, { zip64 = true }))
  local d, meta = ad.load(q)
  assert(meta.format == "npz" and meta.keys[1] == "x" and meta.keys[2] == "y")
  same(d.x, x, "zip64 npz")
  local t = writefile(tmp(".pt"), (function()
    local pk = P_state{ { "w", P_tensor("FloatStorage", "0", 4, 0, { 2, 2 }, { 2, 1 }) } }
    return zip({ { "archive/data.pkl", pk }, { "archive/data/0", f32bytes{ 1, 2, 3, 4 } }, { "archive/version", "3\n" } }, { zip64 = true })
  end)())
  same(ad.load(t).w, x, "zip64 torch")
end)

test("a legacy checkpoint built by hand, views and all", function()
  -- storage "a" of 6 floats; tensor t views it as 2x3; v views the legacy
  -- storage view (offset 2, size 3) of "a"
  local pid_a = P.tuple{ P.str("storage"), P.global("torch", "FloatStorage"), P.str("a"), P.str("cpu"), P.int(6), "N" }
  local pid_v = P.tuple{ P.str("storage"), P.global("torch", "FloatStorage"), P.str("a"), P.str("cpu"), P.int(6),
                         P.tuple{ P.str("v"), P.int(2), P.int(3) } }
  local function tens(pid, shape, stride)
    return P.global("torch._utils", "_rebuild_tensor_v2") .. "(" .. pid .. "Q" .. P.int(0) .. P.tuple(ints(shape)) ..
           P.tuple(ints(stride)) .. "\x89" .. P.global("collections", "OrderedDict") .. ")RtR"
  end
  local obj = P_state{ { "t", tens(pid_a, { 2, 3 }, { 3, 1 }) }, { "v", tens(pid_v, { 3 }, { 1 }) } }
  local p = writefile(tmp(".pt"), legacy_file(obj, { "a" }, { { 6, f32bytes{ 1, 2, 3, 4, 5, 6 } } }))
  local d, meta = ad.load(p)
  assert(meta.format == "torch_legacy")
  same(d.t, ad.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "f32" }), "legacy t")
  same(d.v, ad.tensor({ 3, 4, 5 }, { dtype = "f32" }), "legacy view")
  -- the data section disagrees with the reference, or is cut short
  writefile(p, legacy_file(obj, { "a" }, { { 5, f32bytes{ 1, 2, 3, 4, 5 } } }))
  raises("storage 'a' has 5 elements, its reference says 6", ad.load, p)
  writefile(p, legacy_file(obj, { "a" }, { { 6, f32bytes{ 1, 2, 3 } } }))
  raises("truncated?", ad.load, p)
  writefile(p, legacy_file(obj, {}, {}))
  raises("missing from the data section", ad.load, p)
  writefile(p, legacy_file(obj, { "a", "a" }, { { 6, f32bytes{ 1, 2, 3, 4, 5, 6 } }, { 6, f32bytes{ 1, 2, 3, 4, 5, 6 } } }))
  raises("listed twice", ad.load, p)
  local bad_view = P.tuple{ P.str("storage"), P.global("torch", "FloatStorage"), P.str("a"), P.str("cpu"), P.int(6),
                            P.tuple{ P.str("v"), P.int(5), P.int(3) } }
  writefile(p, legacy_file(P_state{ { "v", tens(bad_view, { 3 }, { 1 }) } }, { "a" }, { { 6, f32bytes{ 1, 2, 3, 4, 5, 6 } } }))
  raises("lies outside storage 'a'", ad.load, p)
end)

-- safetensors built by hand
local function st_file(header, data)
  return string.pack("<I8", #header) .. header .. (data or "")
end

test("safetensors headers with bad lengths, offsets, dtypes or shapes are errors", function()
  local p = tmp(".safetensors")
  local d16 = string.rep("\0", 16)
  local function st(h, data) writefile(p, st_file(h, data or d16)); return p end
  local ok_h = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}'
  local d = ad.load(st(ok_h))
  shape_is(d.a, { 2 })
  raises("overlap", ad.load, st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'))
  raises("outside the 16-byte data area", ad.load, st('{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}'))
  raises("outside", ad.load, st('{"a":{"dtype":"F32","shape":[0],"data_offsets":[12,8]}}'))
  raises("outside", ad.load, st('{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}'))
  raises("needs 12 bytes", ad.load, st('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}'))
  raises("too large", ad.load, st('{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}'))
  raises("not a non-negative integer", ad.load, st('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}'))
  raises('dtype "F8_E4M3" is not supported', ad.load, st('{"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}'))
  raises("appears twice", ad.load, st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}'))
  raises("data_offsets", ad.load, st('{"a":{"dtype":"F32","shape":[2]}}'))
  raises("value must be a string", ad.load, st('{"__metadata__":{"k":1}}'))
  raises("integer out of range", ad.load, st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}}'))
  raises("nested too deeply", ad.load, st('{"a":' .. string.rep("[", 5000) .. string.rep("]", 5000) .. '}'))
  raises("header JSON offset", ad.load, st('{"a":{"dtype":"F32",'))
  raises("trailing characters", ad.load, st('{} x'))
  -- the header length itself
  writefile(p, string.pack("<I8", 1000) .. "{}")
  raises("header length 1000 exceeds the file", ad.load, p, { format = "safetensors" })
  writefile(p, string.pack("<i8", -16) .. "{}")
  raises("exceeds the file", ad.load, p, { format = "safetensors" })
  writefile(p, "\1\0\0")
  raises("truncated safetensors", ad.load, p, { format = "safetensors" })
end)

-- .npy built by hand
local function npy(header, data, version)
  version = version or 1
  local h = header .. "\n"
  if version == 1 then return "\x93NUMPY\1\0" .. string.pack("<I2", #h) .. h .. (data or "") end
  return "\x93NUMPY" .. string.char(version) .. "\0" .. string.pack("<I4", #h) .. h .. (data or "")
end

test("npy headers with bad shapes, dtypes or lengths are errors", function()
  local p = tmp(".npy")
  local d = f32bytes{ 1, 2, 3, 4, 5, 6 }
  local function f(h, data, v) writefile(p, npy(h, data or d, v)); return p end
  same(ad.load(f("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }")), ad.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "f32" }), "npy")
  raises("bad shape", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"))
  raises("bad shape", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }"))
  raises("bad shape tuple", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }"))
  raises("shape must be a tuple", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }"))
  raises("too many dimensions", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }"))
  raises("dimension too large", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }"))
  raises("is too large", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }"))
  raises("needs 28 data bytes", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }"))
  raises("object arrays", ad.load, f("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"))
  raises("dtype 'c8' is not supported", ad.load, f("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }"))
  raises("structured dtypes", ad.load, f("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }"))
  raises("unexpected key 'evil'", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'evil': 1}"))
  raises("lacks descr", ad.load, f("{'descr': '<f4', 'shape': (2,), }"))
  raises("fortran_order must be True or False", ad.load, f("{'descr': '<f4', 'fortran_order': __import__('os'), 'shape': (2,), }"))
  raises("unterminated string", ad.load, f("{'descr': '<f4"))
  raises("version 7", ad.load, f("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", d, 7))
  writefile(p, "\x93NUMPY\1\0" .. string.pack("<I2", 5000) .. "{}")
  raises("runs past the end", ad.load, p)
  writefile(p, "\x93NUMPX\1\0\0\0")
  raises("bad magic", ad.load, p, { format = "npy" })
  -- a version-2 header is fine
  same(ad.load(f("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", d, 2)), ad.tensor({ 1, 2, 3, 4, 5, 6 }, { dtype = "f32" }), "npy v2")
end)

test("npy in Fortran order and big-endian is read into C order", function()
  local p = tmp(".npy")
  -- [[1, 2, 3], [4, 5, 6]] stored column-major
  writefile(p, npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f32bytes{ 1, 4, 2, 5, 3, 6 }))
  local x = ad.load(p)
  assert(x:is_contiguous())
  same(x, ad.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "f32" }), "fortran")
  writefile(p, npy("{'descr': '>i8', 'fortran_order': False, 'shape': (3,), }", string.pack(">i8>i8>i8", 1, -2, 1 << 40)))
  same(ad.load(p), ad.tensor({ 1, -2, 1 << 40 }, { dtype = "i64" }), "big-endian")
  writefile(p, npy("{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2), }", string.pack(">d>d>d>d", 1, 3, 2, 4)))
  same(ad.load(p), ad.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "f64" }), "big-endian fortran")
  writefile(p, npy("{'descr': '|b1', 'fortran_order': False, 'shape': (), }", "\1"))
  local b = ad.load(p)
  assert(b:dtype() == "bool" and b:dim() == 0 and (b:item() == true or b:item() == 1))
end)

test("npz members that are not arrays, damaged or lying are errors", function()
  local p = tmp(".npz")
  local x = tmp(".npy")
  ad.save(x, ad.tensor({ 1, 2, 3 }, { dtype = "f32" }))
  writefile(p, zip({ { "a.npy", readfile(x) }, { "evil.pkl", "\x80\x02cos\nsystem\n." } }))
  raises("member 'evil.pkl' is not an .npy array", ad.load, p)
  writefile(p, zip({ { "a.npy", "\x93NUMPY\1\0\255\255{" } }))
  raises("member 'a.npy'", ad.load, p)
  -- a compressed npz whose deflate data is damaged, or whose size lies
  ad.save(p, { a = ad.zeros(1000) }, { compress = true })
  local s = readfile(p)
  local e = cd_entry(s, "a.npy")
  local lh = string.unpack("<I4", s, e + 42) + 1
  local data_at = lh + 30 + string.unpack("<I2", s, lh + 26) + string.unpack("<I2", s, lh + 28)
  local q = tmp(".npz")
  writefile(q, patch(s, data_at, "\255\255\255"))
  assert(not pcall(ad.load, q))
  local usize = string.unpack("<I4", s, e + 24)
  writefile(q, patch(s, e + 24, string.pack("<I4", usize + 100)))
  raises("inflates to", ad.load, q)
  writefile(q, patch(s, e + 24, string.pack("<I4", 0x7FFFFFFF)))
  raises("impossible for deflate", ad.load, q)
  -- two directory entries sharing one member's bytes (how zip bombs multiply)
  local z = zip({ { "a.npy", readfile(x) } })
  local cd_off = string.unpack("<I4", z, #z - 21 + 16)
  local cd = z:sub(cd_off + 1, #z - 22)
  local cd2 = cd .. cd:gsub("a%.npy", "b.npy")
  writefile(q, z:sub(1, cd_off) .. cd2 .. string.pack("<I4I2I2I2I2I4I4I2", 0x06054b50, 0, 0, 2, 2, #cd2, cd_off, 0))
  raises("zip entries overlap", ad.load, q)
end)

test("unknown formats and bad arguments", function()
  local p = writefile(tmp(".bin2"), "hello world, not a checkpoint")
  raises("unrecognised format", ad.load, p)
  raises("cannot open", ad.load, TMP .. "_does_not_exist.pt")
  raises("not a regular file", ad.load, "/")
  local png = writefile(tmp(".png"), "\x89PNG\r\n\26\n0000")
  raises("use ad.image.load", ad.load, png)
  writefile(p, "")
  raises("'", ad.load, p)
  raises("option 'format'", ad.load, p, { format = "pickle" })
  raises("cannot tell the format", ad.save, tmp(".xyz"), { a = ad.zeros(1) })
  raises("cannot be saved", ad.save, tmp(".pt"), { f = print })
  local cyc = {}
  cyc.self = cyc
  raises("cycle", ad.save, tmp(".pt"), cyc)
  raises("safetensors holds only tensors", ad.save, tmp(".safetensors"), { a = { b = ad.zeros(1) } })
  raises(".npy holds one tensor", ad.save, tmp(".npy"), { a = ad.zeros(1) })
  raises("NumPy has no bf16", ad.save, tmp(".npy"), ad.zeros(2, { dtype = "bf16" }))
  raises("cannot create", ad.save, TMP .. "_no_such_dir/x.pt", { a = ad.zeros(1) })
  raises("metadata", ad.save, tmp(".safetensors"), { a = ad.zeros(1) }, { metadata = { k = {} } })
end)

-- seeded random mutations of valid files: each load must fail cleanly or succeed
local function mutate(s, rng)
  local kind = rng(4)
  local t = {}
  if kind == 1 then -- flip a few bytes
    local b = { s:byte(1, -1) }
    for _ = 1, rng(8) do
      local i = rng(#b)
      b[i] = rng(256) - 1
    end
    for i = 1, #b, 4096 do t[#t + 1] = string.char(table.unpack(b, i, math.min(#b, i + 4095))) end
    return table.concat(t)
  elseif kind == 2 then -- truncate
    return s:sub(1, rng(#s) - 1)
  elseif kind == 3 then -- overwrite a 4- or 8-byte field with an extreme value
    local at = rng(math.max(1, #s - 8))
    local vals = { "\255\255\255\255", "\0\0\0\128", "\255\255\255\255\255\255\255\127", "\0\0\0\0", "\1\0\0\0" }
    return patch(s, at, vals[rng(#vals)])
  else -- duplicate a slice
    local a = rng(#s)
    local b = math.min(#s, a + rng(64))
    return s:sub(1, b) .. s:sub(a, b) .. s:sub(b + 1)
  end
end

test("random mutations of valid files never crash", function()
  local seed = 12345
  local function rng(n) -- xorshift, independent of math.random
    seed = seed ~ (seed << 13) & 0xFFFFFFFF
    seed = seed ~ (seed >> 17)
    seed = seed ~ (seed << 5) & 0xFFFFFFFF
    return seed % n + 1
  end
  local st = small_state()
  local files = {}
  local pt = tmp(".pt"); ad.save(pt, st); files[#files + 1] = { pt, "torch" }
  local sf = tmp(".safetensors"); ad.save(sf, st, { metadata = { a = "b" } }); files[#files + 1] = { sf, "safetensors" }
  local nz = tmp(".npz"); ad.save(nz, st, { compress = true }); files[#files + 1] = { nz, "npz" }
  local nz2 = tmp(".npz"); ad.save(nz2, st); files[#files + 1] = { nz2, "npz" }
  local np = tmp(".npy"); ad.save(np, st.a); files[#files + 1] = { np, "npy" }
  local pid = P.tuple{ P.str("storage"), P.global("torch", "FloatStorage"), P.str("a"), P.str("cpu"), P.int(4), "N" }
  local obj = P_state{ { "t", P.global("torch._utils", "_rebuild_tensor_v2") .. "(" .. pid .. "Q" .. P.int(0) ..
                          P.tuple(ints{ 2, 2 }) .. P.tuple(ints{ 2, 1 }) .. "\x89" .. P.global("collections", "OrderedDict") .. ")RtR" } }
  local lg = writefile(tmp(".pt"), legacy_file(obj, { "a" }, { { 4, f32bytes{ 1, 2, 3, 4 } } }))
  files[#files + 1] = { lg, "torch_legacy" }
  local loaded, failed = 0, 0
  for _, f in ipairs(files) do
    local s = readfile(f[1])
    assert(pcall(ad._load_string, s))
    for _ = 1, 1500 do
      local ok, err = pcall(ad._load_string, mutate(s, rng), { format = f[2] })
      if ok then loaded = loaded + 1 else
        failed = failed + 1
        assert(type(err) == "string" and #err > 0)
      end
    end
  end
  assert(failed > 5000, "mutations failed " .. failed .. " times")
  -- the same files through the file path (mapped) load too
  for _, f in ipairs(files) do assert(pcall(ad.load, f[1])) end
end)

-- ---- 3. round trips ----------------------------------------------------------------
local ALL = { "f32", "f64", "f16", "bf16", "i64", "i32", "u8", "bool" }
-- deterministic values that exercise sign, fraction and range of each dtype
local function sample(dt, rows, cols, seed)
  local x = ad.zeros(rows, cols, { dtype = dt })
  local state = seed or 1
  for i = 1, rows * cols do
    state = (state * 1103515245 + 12345) % 2147483648
    local u = state / 2147483648
    local v
    if dt == "bool" then v = u > 0.5
    elseif dt == "u8" then v = math.floor(u * 256)
    elseif dt == "i32" then v = math.floor((u - 0.5) * 4e9)
    elseif dt == "i64" then v = math.floor((u - 0.5) * 2 ^ 62)
    else v = (u - 0.5) * 10 ^ (i % 7 - 3) end
    x:_setflat(i, v)
  end
  return x
end

test("save -> load is exact for every dtype in every format", function()
  for k, dt in ipairs(ALL) do
    local x = sample(dt, 7, 5, k)
    local formats = { ".pt", ".safetensors" }
    if dt ~= "bf16" then formats[#formats + 1] = ".npy"; formats[#formats + 1] = ".npz" end
    for _, ext in ipairs(formats) do
      local p = tmp(ext)
      if ext == ".npy" then ad.save(p, x) else ad.save(p, { x = x, [dt] = x }) end
      local y = ad.load(p)
      if ext ~= ".npy" then
        y = y.x
      end
      same(y, x, dt .. " " .. ext)
    end
    if dt ~= "bf16" then
      local p = tmp(".npz")
      ad.save(p, { x = x }, { compress = true })
      same(ad.load(p).x, x, dt .. " npz compressed")
    end
  end
end)

test("non-contiguous tensors and shared storages round-trip", function()
  ad.manual_seed(4)
  local base = ad.randn(6, 5)
  local t = base:transpose(1, 2)
  local n = base:narrow(2, 2, 3)
  local p = tmp(".pt")
  ad.save(p, { base = base, t = t, n = n })
  local d = ad.load(p)
  same(d.base, base, "base")
  same(d.t, t, "transpose")
  same(d.n, n, "narrow")
  -- views of one storage stay views: strides and offset are kept, and
  -- writing through one shows in the others
  local st = d.t:stride()
  assert(st[1] == 1 and st[2] == 5, "strides kept")
  assert(d.n:storage_offset() == 1)
  d.base:_setflat(2, 42)
  assert(d.t:_getflat(7) == 42 and d.n:_getflat(1) == 42, "views share the loaded storage")
  -- the other formats store them as contiguous copies
  for _, ext in ipairs{ ".safetensors", ".npz" } do
    local q = tmp(ext)
    ad.save(q, { t = t, n = n })
    local e = ad.load(q)
    same(e.t, t, ext .. " transpose")
    same(e.n, n, ext .. " narrow")
    assert(e.t:is_contiguous())
  end
  local q = tmp(".npy")
  ad.save(q, t)
  same(ad.load(q), t, "npy transpose")
end)

test("nested values round-trip through .pt", function()
  local x = ad.tensor({ 1, 2, 3 }, { dtype = "f32" })
  local v = {
    model = { ["layer.0.weight"] = x, ["layer.10.weight"] = x, ["layer.2.weight"] = x },
    ema = { ["layer.0.weight"] = x },
    optimizer = { state = { [0] = { step = 10, exp_avg = x } }, param_groups = { { lr = 1e-4, betas = { 0.9, 0.999 }, params = { 0 } } } },
    step = 1234567890123, name = "run-1", flag = true, off = false, neg = -3, half = 0.5, big = 1 << 62,
    utf8 = "héllo", binary = "\0\1\255",
  }
  local p = tmp(".pt")
  ad.save(p, v)
  local d, meta = ad.load(p)
  same(d.model["layer.0.weight"], x, "nested tensor")
  -- the same tensor saved under three keys is one object when loaded
  assert(rawequal(d.model["layer.0.weight"], d.model["layer.10.weight"]) and rawequal(d.ema["layer.0.weight"], d.model["layer.2.weight"]))
  assert(d.optimizer.state[0].step == 10 and math.type(d.optimizer.state[0].step) == "integer")
  assert(d.optimizer.param_groups[1].lr == 1e-4 and d.optimizer.param_groups[1].betas[2] == 0.999)
  assert(d.optimizer.param_groups[1].params[1] == 0)
  assert(d.step == 1234567890123 and d.name == "run-1" and d.flag == true and d.off == false)
  assert(d.neg == -3 and d.half == 0.5 and d.big == 1 << 62 and d.utf8 == "héllo" and d.binary == "\0\1\255")
  -- keys are written in natural order
  local mk = {}
  for i, k in ipairs(meta.keys) do mk[i] = k end
  assert(table.concat(mk, ",") == "big,binary,ema,flag,half,model,name,neg,off,optimizer,step,utf8", table.concat(mk, ","))
  -- requires_grad survives
  local w = ad.randn(2, 2)
  w.requires_grad = true
  ad.save(p, { w = w })
  assert(ad.load(p).w.requires_grad == true)
end)

test("safetensors metadata and key order", function()
  local p = tmp(".safetensors")
  local x = ad.tensor({ 1, 2 }, { dtype = "f32" })
  ad.save(p, { ["b.2"] = x, ["b.10"] = ad.tensor({ 1 }, { dtype = "f64" }), a = ad.tensor({ 1 }, { dtype = "u8" }) },
          { metadata = { format = "pt", step = 12 } })
  local d, meta = ad.load(p)
  assert(meta.format == "safetensors" and meta.metadata.format == "pt" and meta.metadata.step == "12")
  same(d["b.2"], x, "safetensors")
  -- the header is 8-byte padded and the data offsets are aligned for mapping
  local s = readfile(p)
  assert((string.unpack("<I8", s) + 8) % 8 == 0)
  -- mmap=false gives the same values
  same(ad.load(p, { mmap = false })["b.2"], x, "no mmap")
end)

test("loaded tensors outlive the load and can be modified in place", function()
  local p = tmp(".pt")
  ad.save(p, { x = ad.tensor({ 1, 2, 3 }, { dtype = "f32" }) })
  local x = ad.load(p).x
  collectgarbage()
  collectgarbage()
  x:_setflat(1, 7)
  assert(x:_getflat(1) == 7)
  -- the file on disk is not changed by writes to a mapped tensor
  assert(ad.load(p).x:_getflat(1) == 1)
  -- a file overwritten by save while a mapping is alive: the old tensor keeps its data
  ad.save(p, { x = ad.tensor({ 9, 9, 9 }, { dtype = "f32" }) })
  assert(x:_getflat(2) == 2 and ad.load(p).x:_getflat(2) == 9)
end)

-- ---- 4. against PyTorch and NumPy, when they are installed ----------------------
-- One Python run (importing torch takes seconds): it checks the files we
-- wrote, then writes its own for us to read.
local function python(script)
  local sp = writefile(tmp(".py"), script)
  local f = assert(io.popen("/usr/bin/python3 " .. sp .. " 2>&1"))
  local out = f:read("a")
  local ok = f:close()
  assert(ok, "python failed:\n" .. out)
  return out
end

test("PyTorch and NumPy read what we write, and we read what they write", function()
  if not exists("/usr/bin/python3") then skip("/usr/bin/python3 is not installed") end
  ad.manual_seed(5)
  local base = ad.randn(6, 5)
  local v = { views = { base = base, t = base:transpose(1, 2), n = base:narrow(2, 2, 3) }, epoch = 3, name = "x",
              nested = { list = { 1, 2, 3 }, flag = true } }
  for _, dt in ipairs(ALL) do
    local x = ad.zeros(4, 3, { dtype = dt })
    for i = 1, 12 do
      local val
      if dt == "bool" then val = i % 2 == 0
      elseif dt == "f32" or dt == "f64" or dt == "f16" or dt == "bf16" then val = (i * 7 % 13 - 6) * 0.75
      else val = i * 7 % 13 end
      x:_setflat(i, val)
    end
    v[dt] = x
  end
  local pt, nz, nzc, ny, wo = tmp(".pt"), tmp(".npz"), tmp(".npz"), tmp(".npy"), tmp(".pt")
  ad.save(pt, v)
  local arrays = { base = base }
  for _, dt in ipairs(ALL) do if dt ~= "bf16" then arrays[dt] = v[dt] end end
  ad.save(nz, arrays)
  ad.save(nzc, arrays, { compress = true })
  ad.save(ny, base:transpose(1, 2))
  ad.save(wo, { w = base, b = ad.zeros(3, { dtype = "i64" }), n = 3 })
  local dir = TMP .. "_py"
  track_tmp(dir)
  local out = python(([[
import os, sys
try:
    import torch, numpy as np
except ImportError:
    print('NOTORCH'); sys.exit(0)
# --- what we wrote
d = torch.load(%q)
v = d['views']
assert v['t'].stride() == (1, 5) and v['n'].storage_offset() == 1
assert v['t'].storage().data_ptr() == v['base'].storage().data_ptr()
assert torch.equal(v['t'], v['base'].t()) and torch.equal(v['n'], v['base'][:, 1:4])
assert d['epoch'] == 3 and d['name'] == 'x' and d['nested']['list'] == [1, 2, 3] and d['nested']['flag'] is True
z, zc = np.load(%q), np.load(%q)
assert np.array_equal(z['base'], v['base'].numpy()) and np.array_equal(zc['base'], z['base'])
names = dict(f32=torch.float32, f64=torch.float64, f16=torch.float16, bf16=torch.bfloat16, i64=torch.int64, i32=torch.int32, u8=torch.uint8)
names['bool'] = torch.bool
for k, dt in names.items():
    t = d[k]
    assert t.dtype == dt, (k, t.dtype)
    if k != 'bf16':
        assert np.array_equal(t.numpy(), z[k]) and np.array_equal(zc[k], z[k]) and z[k].dtype == t.numpy().dtype, k
    if dt.is_floating_point: ref = torch.tensor([(i * 7 %% 13 - 6) * 0.75 for i in range(1, 13)])
    elif k == 'bool': ref = torch.tensor([i %% 2 == 0 for i in range(1, 13)])
    else: ref = torch.tensor([i * 7 %% 13 for i in range(1, 13)])
    assert torch.equal(t, ref.reshape(4, 3).to(dt)), k
assert np.array_equal(np.load(%q), v['base'].numpy().T)
w = torch.load(%q, weights_only=True)   # torch's own restricted unpickler
assert w['w'].shape == (6, 5) and w['n'] == 3
# --- what they write
os.makedirs(%q, exist_ok=True)
os.chdir(%q)
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
m(torch.randn(5, 3)).sum().backward(); opt.step()
base = torch.arange(30, dtype=torch.float32).reshape(6, 5)
d = {"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
     "views": {"base": base, "t": base.t(), "sl": base[1:4, ::2]},
     "bf16": torch.arange(4).bfloat16(), "param": torch.nn.Parameter(torch.ones(2)), "dt": torch.float16,
     "size": torch.Size([2, 3]), "tup": (1, "a", None), "set": {5}}
for p in (2, 4, 5):
    torch.save(d, f"p{p}.pt", pickle_protocol=p)
torch.save(d, "legacy.pt", _use_new_zipfile_serialization=False)
a = np.arange(12, dtype=np.float64).reshape(3, 4)
np.save("f.npy", np.asfortranarray(a))
np.save("be.npy", a.astype('>f4'))
np.savez("s.npz", a=a, b=np.arange(3, dtype=np.int32), c=np.array([True, False]))
np.savez_compressed("c.npz", a=a, b=np.arange(3, dtype=np.int32), c=np.array([True, False]))
print("OK", repr(float(m.state_dict()["0.weight"].double().sum())), repr(float(opt.state_dict()["state"][0]["exp_avg"].double().sum())))
]]):format(pt, nz, nzc, ny, wo, dir, dir))
  if out:find("NOTORCH") then skip("/usr/bin/python3 has no torch/numpy") end
  local w_sum, avg_sum = out:match("OK (%S+) (%S+)")
  assert(w_sum, out)
  for _, f in ipairs{ "p2", "p4", "p5", "legacy" } do
    local d = ad.load(dir .. "/" .. f .. ".pt")
    assert(close(sum64(d.model["0.weight"]), tonumber(w_sum), 1e-12), f)
    assert(close(sum64(d.optimizer.state[0].exp_avg), tonumber(avg_sum), 1e-12), f)
    assert(d.optimizer.param_groups[1].lr == 1e-3 and d.epoch == 3, f)
    assert(d.model["1.num_batches_tracked"]:item() == 1, f)
    assert(d.views.t:_getflat(2) == 5 and d.views.sl:_getflat(2) == 7, f)
    shape_is(d.views.sl, { 3, 3 })
    assert(d.bf16:dtype() == "bf16" and d.bf16:_getflat(4) == 3, f)
    assert(d.param.requires_grad == true and d.dt == "f16", f)
    assert(d.size[1] == 2 and d.size[2] == 3 and d.tup[2] == "a" and d.set[1] == 5, f)
    d.views.base:_setflat(2, -1)
    assert(d.views.t:_getflat(7) == -1, f .. ": views share storage")
  end
  local a = ad.tensor({ { 0, 1, 2, 3 }, { 4, 5, 6, 7 }, { 8, 9, 10, 11 } }, { dtype = "f64" })
  same(ad.load(dir .. "/f.npy"), a, "fortran npy")
  same(ad.load(dir .. "/be.npy"), a:to("f32"), "big-endian npy")
  for _, f in ipairs{ "s.npz", "c.npz" } do
    local d, meta = ad.load(dir .. "/" .. f)
    assert(meta.format == "npz" and #meta.keys == 3)
    same(d.a, a, f)
    same(d.b, ad.tensor({ 0, 1, 2 }, { dtype = "i32" }), f)
    same(d.c, ad.tensor({ true, false }), f)
  end
  os.execute("rm -rf '" .. dir .. "'")
end)

test("cleanup", function()
  cleanup_tmp()
  os.remove(MARKER)
end)
