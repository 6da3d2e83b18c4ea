--- advdiff.train.checkpoint: atomic checkpoints — a safetensors file of every
-- tensor plus the run's other state as JSON, inside the safetensors metadata
-- (key "advdiff_state") so the one file is the unit of atomicity, and copied
-- to a small pretty-printed <path>.json beside it for people and tools.
--
--   checkpoint.save(path, tensors, state)   path without extension
--   local tensors, state = checkpoint.load(path)
--
-- save writes <path>.safetensors.partial (ad.save itself writes a temporary
-- and renames it into place), fsyncs it, renames it over <path>.safetensors
-- and fsyncs the directory; then the same for the .json. A kill at any moment
-- leaves <path>.safetensors either the previous complete checkpoint or the new
-- complete one; the .json may lag one save behind the .safetensors (load reads
-- the state from the .safetensors).
local ad = require "advdiff"
local json = require "advdiff.log.json"

local M = {}

local function dir_of(path)
  local d = path:match("^(.*)/[^/]*$")
  return (d == nil or d == "") and "." or d
end

local function strip(path)
  return (path:gsub("%.safetensors$", ""):gsub("%.json$", ""))
end
M.strip = strip

local function fsync(p)
  local ok, err = pcall(ad._fsync, p)
  if not ok then error("checkpoint: " .. tostring(err), 3) end
end

local function rename(a, b)
  local ok, err = os.rename(a, b)
  if not ok then error("checkpoint: cannot rename '" .. a .. "' to '" .. b .. "': " .. tostring(err), 3) end
end

--- tensors: a flat table name -> tensor; state: a JSON-able table.
function M.save(path, tensors, state)
  path = strip(path)
  local dir = dir_of(path)
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  local text = json.encode(state)
  local final, tmp = path .. ".safetensors", path .. ".safetensors.partial"
  -- leftovers of a save that was killed: our temporary, and ad.save's own "<tmp>.tmp.<pid>"
  os.remove(tmp)
  local base = tmp:match("([^/]*)$") .. ".tmp."
  for _, e in ipairs(ad._listdir(dir) or {}) do
    if e.name:sub(1, #base) == base then os.remove(dir .. "/" .. e.name) end
  end
  ad.save(tmp, tensors, { format = "safetensors", metadata = { advdiff_state = text, format = "advdiff-checkpoint-1" } })
  fsync(tmp)
  rename(tmp, final)
  fsync(dir)
  local jf, jtmp = path .. ".json", path .. ".json.partial"
  local f, err = io.open(jtmp, "w")
  if not f then error("checkpoint: cannot write '" .. jtmp .. "': " .. tostring(err), 2) end
  f:write(json.encode(state, { indent = "  " }), "\n")
  f:close()
  fsync(jtmp)
  rename(jtmp, jf)
  fsync(dir)
  return final
end

--- tensors, state of the checkpoint at path (with or without ".safetensors").
function M.load(path)
  path = strip(path)
  local file = path .. ".safetensors"
  local f = io.open(file, "rb")
  if not f then error("checkpoint: no checkpoint at '" .. file .. "'", 2) end
  f:close()
  local tensors, info = ad.load(file)
  local meta = info and info.metadata
  if type(meta) ~= "table" or type(meta.advdiff_state) ~= "string" then
    error("checkpoint: '" .. file .. "' is not an advdiff checkpoint (no advdiff_state metadata)", 2)
  end
  return tensors, json.decode(meta.advdiff_state)
end

--- Does a complete checkpoint exist at path?
function M.exists(path)
  local f = io.open(strip(path) .. ".safetensors", "rb")
  if f then f:close(); return true end
  return false
end

return M
