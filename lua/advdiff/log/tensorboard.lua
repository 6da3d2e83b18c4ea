--- advdiff.log.tensorboard: TensorBoard event files written by hand, so
-- `tensorboard --logdir <dir>` shows a run with no TensorFlow present.
--
-- An event file is a sequence of TFRecords: u64 length, u32 masked CRC-32C of
-- the length bytes, the payload, u32 masked CRC-32C of the payload (all
-- little-endian; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8). Each
-- payload is a serialised tensorflow.Event protobuf:
--   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
--   Summary { repeated Value value = 1; }
--   Value   { string tag = 1; float simple_value = 2; Image image = 4; }
--   Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
-- The first record carries file_version "brain.Event:2".
--
--   local tb = TensorBoard(dir)           -- dir/events.out.tfevents.<time>.<host>.advdiff
--   tb:scalar("loss/d", 0.69, step)
--   tb:image("samples", png_bytes, h, w, step)   -- or tb:image_tensor(tag, (C,H,W) tensor in [-1,1], step)
--   tb:flush(); tb:close()
local M = {}

---------------------------------------------------------------------------- CRC-32C

local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c & 1 == 1 then c = (c >> 1) ~ 0x82F63B78 else c = c >> 1 end
  end
  CRC_TABLE[i] = c
end

--- CRC-32C (Castagnoli) of a string.
function M.crc32c(s)
  local crc = 0xFFFFFFFF
  local byte = string.byte
  for i = 1, #s do
    crc = CRC_TABLE[(crc ~ byte(s, i)) & 0xFF] ~ (crc >> 8)
  end
  return crc ~ 0xFFFFFFFF
end

function M.masked_crc32c(s)
  local c = M.crc32c(s)
  return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xa282ead8) & 0xFFFFFFFF
end

--- One TFRecord around payload.
function M.record(payload)
  local len = string.pack("<I8", #payload)
  return len .. string.pack("<I4", M.masked_crc32c(len)) .. payload .. string.pack("<I4", M.masked_crc32c(payload))
end

---------------------------------------------------------------------------- protobuf

local function varint(n)
  local out = {}
  -- int64 fields: negative numbers as 10-byte two's complement, as protobuf does
  repeat
    local b = n & 0x7F
    n = n >> 7   -- logical shift: a negative n terminates after 10 bytes
    if n ~= 0 then b = b | 0x80 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end
M.varint = varint

local function key(field, wire) return varint((field << 3) | wire) end
local function f_varint(field, v) return key(field, 0) .. varint(v) end
local function f_double(field, v) return key(field, 1) .. string.pack("<d", v) end
local function f_float(field, v) return key(field, 5) .. string.pack("<f", v) end
local function f_bytes(field, s) return key(field, 2) .. varint(#s) .. s end

local function event(wall, step, body) return f_double(1, wall) .. f_varint(2, step) .. body end

function M.scalar_event(tag, value, step, wall)
  local v = f_bytes(1, tag) .. f_float(2, value)
  return event(wall, step, f_bytes(5, f_bytes(1, v)))
end

function M.image_event(tag, png, h, w, c, step, wall)
  local img = f_varint(1, h) .. f_varint(2, w) .. f_varint(3, c) .. f_bytes(4, png)
  local v = f_bytes(1, tag) .. f_bytes(4, img)
  return event(wall, step, f_bytes(5, f_bytes(1, v)))
end

---------------------------------------------------------------------------- writer

local Writer = {}
Writer.__index = Writer

local function now()
  local ad = require "advdiff"
  -- wall-clock seconds with a fraction: os.time's whole seconds plus the monotonic clock's fraction
  return os.time() + (ad._now() % 1)
end

local function hostname()
  local f = io.open("/etc/hostname", "r")
  local h = f and f:read("l") or "localhost"
  if f then f:close() end
  return (h:gsub("[^%w%-_.]", ""))
end

function M.new(dir)
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  local path = string.format("%s/events.out.tfevents.%d.%s.advdiff", dir, os.time(), hostname())
  local f, err = io.open(path, "wb")
  if not f then error("TensorBoard: cannot create '" .. path .. "': " .. tostring(err), 2) end
  local self = setmetatable({ path = path, f = f }, Writer)
  f:write(M.record(event(now(), 0, f_bytes(3, "brain.Event:2"))))
  f:flush()
  return self
end

function Writer:scalar(tag, value, step)
  if type(value) ~= "number" then return end
  self.f:write(M.record(M.scalar_event(tag, value, step, now())))
end

--- png: the PNG file's bytes; h, w: its size; c: channels (3 RGB)
function Writer:image(tag, png, h, w, step, c)
  self.f:write(M.record(M.image_event(tag, png, h, w, c or 3, step, now())))
end

--- A (C, H, W) or (N, C, H, W) tensor in `range` ({-1, 1} by default) as a PNG image (a grid for N).
function Writer:image_tensor(tag, x, step, opts)
  local ad = require "advdiff"
  local tmp = os.tmpname()
  local s = x:shape()
  local grid = x
  if #s == 4 then grid = ad.image.grid(x, { nrow = opts and opts.nrow or 8, padding = 2, value_range = opts and opts.range or { -1, 1 }, normalize = true }) end
  ad.image.save(tmp, grid, { range = #s == 4 and { 0, 1 } or (opts and opts.range or { -1, 1 }) })
  local f = io.open(tmp, "rb")
  local png = f:read("a")
  f:close()
  os.remove(tmp)
  local gs = grid:shape()
  self:image(tag, png, gs[#gs - 1], gs[#gs], step, gs[1] == 1 and 1 or 3)
end

function Writer:flush() self.f:flush() end
function Writer:close()
  if self.f then self.f:close(); self.f = nil end
end

M.Writer = Writer
return M
