--- advdiff.log: run logs and progress.
--
--   local log = ad.log   (or require "advdiff.log"; ad.log is also callable as PyTorch's
--                         elementwise logarithm: ad.log(x))
--   log.json.encode(v, {indent="  "}), log.json.decode(s)
--   local j = log.JSONL(path, {append=false})  j:write(record_table); j:close()
--   local c = log.CSV(path, {columns={...}})   c:write(record_table)   -- columns: given, or the
--       first record's keys (sorted, "step" first); later keys not in the header are left out
--   local tb = log.TensorBoard(dir)            tb:scalar(tag, v, step), tb:image_tensor(tag, x, step)
--   local p = log.Progress{total=N, stream=io.stderr}   p:update(step, {D=..., G=..., lambda=...})
--       on a terminal: one line redrawn in place (step/total, rate, ETA, fields); otherwise a
--       plain line every `every` updates (default: every 10% of total, or 50 steps)
--   log.plot.curves(path, series, opts)        loss curves as PNG (see log/plot.lua)
--   log.read_jsonl(path) -> list of records
--   log.isatty(file) -> boolean (io.stdout / io.stderr)
local ad = require "advdiff"
local json = require "advdiff.log.json"

local M = {}
M.json = json
M.plot = require "advdiff.log.plot"

local function mkdir_for(path)
  local dir = path:match("^(.*)/[^/]*$")
  if dir and dir ~= "" then os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'") end
end
M.mkdir_for = mkdir_for

function M.mkdir(dir) os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'") end

function M.isatty(f)
  if f == io.stdout then return ad._isatty(1) end
  if f == io.stderr then return ad._isatty(2) end
  return false
end

---------------------------------------------------------------------------- JSONL

local JSONL = {}
JSONL.__index = JSONL

function M.JSONL(path, opts)
  mkdir_for(path)
  local f, err = io.open(path, (opts and opts.append) and "a" or "w")
  if not f then error("log.JSONL: cannot open '" .. path .. "': " .. tostring(err), 2) end
  f:setvbuf("line")
  return setmetatable({ path = path, f = f }, JSONL)
end

function JSONL:write(rec) self.f:write(json.encode(rec), "\n") end
function JSONL:flush() self.f:flush() end
function JSONL:close() if self.f then self.f:close(); self.f = nil end end

--- All records of a JSONL file (lines that do not parse are skipped: a run killed mid-line).
function M.read_jsonl(path)
  local f = io.open(path, "r")
  if not f then return {} end
  local out = {}
  for line in f:lines() do
    local ok, v = pcall(json.decode, line)
    if ok and type(v) == "table" then out[#out + 1] = v end
  end
  f:close()
  return out
end

---------------------------------------------------------------------------- CSV

local CSV = {}
CSV.__index = CSV

function M.CSV(path, opts)
  mkdir_for(path)
  local f, err = io.open(path, (opts and opts.append) and "a" or "w")
  if not f then error("log.CSV: cannot open '" .. path .. "': " .. tostring(err), 2) end
  return setmetatable({ path = path, f = f, columns = opts and opts.columns, wrote_header = opts and opts.append }, CSV)
end

local function csv_cell(v)
  if v == nil then return "" end
  if type(v) == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.10g", v)
  end
  if type(v) == "boolean" then return v and "true" or "false" end
  local s = tostring(v)
  if s:find('[,"\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

function CSV:write(rec)
  if not self.columns then
    local cols = {}
    for k, v in pairs(rec) do if type(v) ~= "table" then cols[#cols + 1] = k end end
    table.sort(cols, function(a, b)
      if a == "step" then return true elseif b == "step" then return false end
      return a < b
    end)
    self.columns = cols
  end
  if not self.wrote_header then
    self.f:write(table.concat(self.columns, ","), "\n")
    self.wrote_header = true
  end
  local cells = {}
  for i, c in ipairs(self.columns) do cells[i] = csv_cell(rec[c]) end
  self.f:write(table.concat(cells, ","), "\n")
end
function CSV:flush() self.f:flush() end
function CSV:close() if self.f then self.f:close(); self.f = nil end end

---------------------------------------------------------------------------- TensorBoard

function M.TensorBoard(dir) return require("advdiff.log.tensorboard").new(dir) end

---------------------------------------------------------------------------- progress

local Progress = {}
Progress.__index = Progress

function M.Progress(opts)
  opts = opts or {}
  local stream = opts.stream or io.stderr
  local tty = opts.tty
  if tty == nil then tty = M.isatty(stream) end
  local total = opts.total or 0
  return setmetatable({ total = total, stream = stream, tty = tty, t0 = ad._now(), s0 = nil, count = 0,
                        every = opts.every or (total > 0 and math.max(1, math.min(50, total // 10)) or 50),
                        label = opts.label or "" }, Progress)
end

local function hms(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%d:%02d:%02d", s // 3600, s % 3600 // 60, s % 60) end
  return string.format("%d:%02d", s // 60, s % 60)
end

local function field(k, v)
  if type(v) == "number" then
    if math.type(v) == "integer" then return k .. "=" .. v end
    local a = math.abs(v)
    if a ~= 0 and (a < 1e-2 or a >= 1e4) then return string.format("%s=%.3e", k, v) end
    return string.format("%s=%.4f", k, v)
  end
  return k .. "=" .. tostring(v)
end

--- The progress text for step (steps done) with fields {name = value} (ordered by opts.order).
function Progress:format(step, fields, order)
  local now = ad._now()
  if self.s0 == nil then self.s0, self.t0 = step, now end
  local done = step - self.s0
  local rate = done > 0 and done / math.max(now - self.t0, 1e-9) or 0
  local parts = {}
  if self.label ~= "" then parts[#parts + 1] = self.label end
  if self.total > 0 then
    parts[#parts + 1] = string.format("%d/%d (%.0f%%)", step, self.total, 100 * step / self.total)
  else
    parts[#parts + 1] = tostring(step)
  end
  parts[#parts + 1] = rate > 0 and (rate >= 1 and string.format("%.2f it/s", rate) or string.format("%.2f s/it", 1 / rate)) or "- it/s"
  if self.total > 0 and rate > 0 then parts[#parts + 1] = "ETA " .. hms((self.total - step) / rate) end
  if fields then
    local keys = order or {}
    if not order then for k in pairs(fields) do keys[#keys + 1] = k end table.sort(keys) end
    for _, k in ipairs(keys) do if fields[k] ~= nil then parts[#parts + 1] = field(k, fields[k]) end end
  end
  return table.concat(parts, "  ")
end

function Progress:update(step, fields, order)
  local line = self:format(step, fields, order)
  self.count = self.count + 1
  if self.tty then
    self.stream:write("\r\27[K", line)
    self.stream:flush()
    self.open = true
  elseif self.count % self.every == 0 or step == self.total then
    self.stream:write(line, "\n")
    self.stream:flush()
  end
  self.last = line
  return line
end

--- End the redrawn line (a newline on a terminal).
function Progress:close()
  if self.tty and self.open then self.stream:write("\n"); self.stream:flush() end
  self.open = false
end

return M
