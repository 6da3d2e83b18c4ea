-- Images: ad.image.load / save / grid (stb_image, stb_image_write, and
-- torchvision's make_grid semantics), and hostile image files.
local ad = require "advdiff"
local image = ad.image

local T = require "advdiff.testing"
local tmp, cleanup_tmp, _, TMP = T.tmpfiles()
local readfile, writefile = T.read_file, T.write_file
local raises = T.raises
local function shape_is(x, s)
  local got = x:shape()
  assert(#got == #s, ("ndim %d vs %d"):format(#got, #s))
  for i = 1, #s do assert(got[i] == s[i], ("dim %d: %d vs %d"):format(i, got[i], s[i])) end
end
-- element (c, y, x) of a (C, H, W) tensor, 1-based
local function at(t, c, y, x)
  local s = t:shape()
  return t:_getflat(((c - 1) * s[2] + (y - 1)) * s[3] + x)
end
local function pattern(C, H, W, dt, fn)
  local t = ad.zeros(C, H, W, { dtype = dt })
  for c = 1, C do
    for y = 1, H do
      for x = 1, W do t:_setflat(((c - 1) * H + (y - 1)) * W + x, fn(c, y, x)) end
    end
  end
  return t
end
local function same(a, b, what)
  assert(a:dtype() == b:dtype(), what .. ": dtype " .. a:dtype() .. " vs " .. b:dtype())
  shape_is(a, b:shape())
  for i = 1, a:numel() do
    assert(a:_getflat(i) == b:_getflat(i), ("%s: element %d: %s vs %s"):format(what, i, a:_getflat(i), b:_getflat(i)))
  end
end
-- torchvision's save_image: (x mapped to [0, 1]) * 255 + 0.5, clamped, truncated
local function to_u8(v, lo, hi)
  local y = (v - lo) / (hi - lo) * 255 + 0.5
  if y ~= y or y <= 0 then return 0 end
  if y >= 255 then return 255 end
  return math.floor(y)
end

local JPEG_8x8 = table.concat{
  "\xff\xd8\xff\xe0\x00\x10\x4a\x46\x49\x46\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x84\x00\x03\x02\x02\x03\x02",
  "\x02\x03\x03\x03\x03\x04\x03\x03\x04\x05\x08\x05\x05\x04\x04\x05\x0a\x07\x07\x06\x08\x0c\x0a\x0c\x0c\x0b\x0a\x0b\x0b\x0d",
  "\x0e\x12\x10\x0d\x0e\x11\x0e\x0b\x0b\x10\x16\x10\x11\x13\x14\x15\x15\x15\x0c\x0f\x17\x18\x16\x14\x18\x12\x14\x15\x14\x01",
  "\x03\x04\x04\x05\x04\x05\x09\x05\x05\x09\x14\x0d\x0b\x0d\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14",
  "\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14\x14",
  "\x14\x14\x14\x14\xff\xc0\x00\x11\x08\x00\x08\x00\x08\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xc4\x01\xa2\x00\x00\x01",
  "\x05\x01\x01\x01\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x10\x00\x02\x01",
  "\x03\x03\x02\x04\x03\x05\x05\x04\x04\x00\x00\x01\x7d\x01\x02\x03\x00\x04\x11\x05\x12\x21\x31\x41\x06\x13\x51\x61\x07\x22",
  "\x71\x14\x32\x81\x91\xa1\x08\x23\x42\xb1\xc1\x15\x52\xd1\xf0\x24\x33\x62\x72\x82\x09\x0a\x16\x17\x18\x19\x1a\x25\x26\x27",
  "\x28\x29\x2a\x34\x35\x36\x37\x38\x39\x3a\x43\x44\x45\x46\x47\x48\x49\x4a\x53\x54\x55\x56\x57\x58\x59\x5a\x63\x64\x65\x66",
  "\x67\x68\x69\x6a\x73\x74\x75\x76\x77\x78\x79\x7a\x83\x84\x85\x86\x87\x88\x89\x8a\x92\x93\x94\x95\x96\x97\x98\x99\x9a\xa2",
  "\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xb2\xb3\xb4\xb5\xb6\xb7\xb8\xb9\xba\xc2\xc3\xc4\xc5\xc6\xc7\xc8\xc9\xca\xd2\xd3\xd4\xd5",
  "\xd6\xd7\xd8\xd9\xda\xe1\xe2\xe3\xe4\xe5\xe6\xe7\xe8\xe9\xea\xf1\xf2\xf3\xf4\xf5\xf6\xf7\xf8\xf9\xfa\x01\x00\x03\x01\x01",
  "\x01\x01\x01\x01\x01\x01\x01\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x11\x00\x02\x01\x02\x04",
  "\x04\x03\x04\x07\x05\x04\x04\x00\x01\x02\x77\x00\x01\x02\x03\x11\x04\x05\x21\x31\x06\x12\x41\x51\x07\x61\x71\x13\x22\x32",
  "\x81\x08\x14\x42\x91\xa1\xb1\xc1\x09\x23\x33\x52\xf0\x15\x62\x72\xd1\x0a\x16\x24\x34\xe1\x25\xf1\x17\x18\x19\x1a\x26\x27",
  "\x28\x29\x2a\x35\x36\x37\x38\x39\x3a\x43\x44\x45\x46\x47\x48\x49\x4a\x53\x54\x55\x56\x57\x58\x59\x5a\x63\x64\x65\x66\x67",
  "\x68\x69\x6a\x73\x74\x75\x76\x77\x78\x79\x7a\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x92\x93\x94\x95\x96\x97\x98\x99\x9a\xa2",
  "\xa3\xa4\xa5\xa6\xa7\xa8\xa9\xaa\xb2\xb3\xb4\xb5\xb6\xb7\xb8\xb9\xba\xc2\xc3\xc4\xc5\xc6\xc7\xc8\xc9\xca\xd2\xd3\xd4\xd5",
  "\xd6\xd7\xd8\xd9\xda\xe2\xe3\xe4\xe5\xe6\xe7\xe8\xe9\xea\xf2\xf3\xf4\xf5\xf6\xf7\xf8\xf9\xfa\xff\xda\x00\x0c\x03\x01\x00",
  "\x02\x11\x03\x11\x00\x3f\x00\xab\x45\x14\x57\xe1\xe7\xf4\x81\xff\xd9",
}

test("u8 images round-trip through PNG for 1 to 4 channels", function()
  for C = 1, 4 do
    local x = pattern(C, 7, 5, "u8", function(c, y, x) return (c * 61 + y * 17 + x * 29) % 256 end)
    local p = tmp(".png")
    image.save(p, x)
    local y = image.load(p)
    same(y, x, C .. " channels")
  end
  -- (H, W) is written as one gray channel
  local g = ad.zeros(4, 6, { dtype = "u8" })
  for i = 1, 24 do g:_setflat(i, i * 10) end
  local p = tmp(".png")
  image.save(p, g)
  local y = image.load(p)
  shape_is(y, { 1, 4, 6 })
  assert(y:_getflat(24) == 240)
end)

test("float images are mapped from their range like torchvision's save_image", function()
  local x = pattern(3, 6, 9, "f32", function(c, y, x) return (c - 2) * 0.7 + (y - 3.5) * 0.31 - (x - 5) * 0.13 end)
  for _, r in ipairs{ { -1, 1 }, { 0, 1 }, { -3, 2 } } do
    local p = tmp(".png")
    image.save(p, x, { range = r })
    local y = image.load(p)
    shape_is(y, { 3, 6, 9 })
    for i = 1, x:numel() do
      assert(y:_getflat(i) == to_u8(x:_getflat(i), r[1], r[2]), ("range {%g,%g} element %d"):format(r[1], r[2], i))
    end
  end
  -- default range [0, 1]; f64 works too
  local d = pattern(1, 2, 2, "f64", function(_, y, x) return (y + x) / 4 end)
  local p = tmp(".png")
  image.save(p, d)
  assert(image.load(p):_getflat(4) == to_u8(1, 0, 1))
  -- loading as f32 gives values / 255
  local f = image.load(p, { dtype = "f32" })
  assert(f:dtype() == "f32" and math.abs(f:_getflat(1) - to_u8(0.5, 0, 1) / 255) < 1e-7)
end)

test("channels can be converted on load", function()
  local x = pattern(3, 3, 3, "u8", function(c, y, x) return c == 1 and 200 or c == 2 and 100 or 50 end)
  local p = tmp(".png")
  image.save(p, x)
  local g = image.load(p, { channels = 1 })
  shape_is(g, { 1, 3, 3 })
  -- stb_image's luminance: (77 r + 150 g + 29 b) >> 8
  assert(g:_getflat(1) == (77 * 200 + 150 * 100 + 29 * 50) >> 8)
  local a = image.load(p, { channels = 4 })
  shape_is(a, { 4, 3, 3 })
  assert(at(a, 4, 2, 2) == 255 and at(a, 1, 2, 2) == 200)
end)

test("BMP and JPEG files load", function()
  -- a 3x2 24-bit BMP written by hand: rows bottom-up, BGR, padded to 4 bytes
  local W, H = 3, 2
  local px = { { { 255, 0, 0 }, { 0, 255, 0 }, { 0, 0, 255 } }, { { 10, 20, 30 }, { 40, 50, 60 }, { 70, 80, 90 } } }
  local rows = {}
  for y = H, 1, -1 do
    local r = {}
    for x = 1, W do r[#r + 1] = string.char(px[y][x][3], px[y][x][2], px[y][x][1]) end
    local s = table.concat(r)
    rows[#rows + 1] = s .. string.rep("\0", (4 - #s % 4) % 4)
  end
  local data = table.concat(rows)
  local bmp = "BM" .. string.pack("<I4I2I2I4", 54 + #data, 0, 0, 54) ..
              string.pack("<I4i4i4I2I2I4I4i4i4I4I4", 40, W, H, 1, 24, 0, #data, 2835, 2835, 0, 0) .. data
  local p = writefile(tmp(".bmp"), bmp)
  local b = image.load(p)
  shape_is(b, { 3, 2, 3 })
  for y = 1, H do for x = 1, W do for c = 1, 3 do assert(at(b, c, y, x) == px[y][x][c], "bmp pixel") end end end
  -- an 8x8 JPEG of the color (200, 100, 50), made by stb_image_write
  local j = image.load(writefile(tmp(".jpg"), JPEG_8x8))
  shape_is(j, { 3, 8, 8 })
  for y = 1, 8 do
    for x = 1, 8 do
      assert(math.abs(at(j, 1, y, x) - 200) <= 3 and math.abs(at(j, 2, y, x) - 100) <= 3 and math.abs(at(j, 3, y, x) - 50) <= 3)
    end
  end
  local jf = image.load(writefile(tmp(".jpg"), JPEG_8x8), { dtype = "f32" })
  assert(math.abs(jf:_getflat(1) - 200 / 255) < 0.015)
end)

test("grid follows torchvision's make_grid", function()
  local N, C, H, W = 5, 3, 4, 3
  local b = ad.zeros(N, C, H, W)
  for i = 1, b:numel() do b:_setflat(i, i) end
  local function src(n, c, y, x) return b:_getflat((((n - 1) * C + (c - 1)) * H + (y - 1)) * W + x) end
  -- nrow=2, padding=2: 2 columns, 3 rows, (H+2)*3+2 by (W+2)*2+2
  local g = image.grid(b, { nrow = 2, padding = 2, pad_value = -7 })
  shape_is(g, { 3, (H + 2) * 3 + 2, (W + 2) * 2 + 2 })
  for n = 1, N do
    local gy, gx = (n - 1) // 2, (n - 1) % 2
    for c = 1, C do
      for y = 1, H do
        for x = 1, W do
          assert(at(g, c, gy * (H + 2) + 2 + y, gx * (W + 2) + 2 + x) == src(n, c, y, x), "grid placement")
        end
      end
    end
  end
  assert(at(g, 1, 1, 1) == -7 and at(g, 2, 3, 1) == -7) -- padding
  -- the empty slot of the last row is padding too
  assert(at(g, 1, 2 * (H + 2) + 3, (W + 2) + 3) == -7)
  -- defaults: nrow=8 -> one row of 5
  shape_is(image.grid(b), { 3, H + 4, (W + 2) * 5 + 2 })
  -- one image: returned without padding; one channel becomes three
  local one = image.grid(b:narrow(1, 2, 1))
  shape_is(one, { 3, H, W })
  assert(at(one, 2, 1, 1) == src(2, 2, 1, 1))
  local gray = ad.zeros(2, 1, H, W)
  for i = 1, gray:numel() do gray:_setflat(i, i) end
  local gg = image.grid(gray, { padding = 0 })
  shape_is(gg, { 3, H, 2 * W })
  assert(at(gg, 1, 1, W + 1) == at(gg, 3, 1, W + 1) and at(gg, 2, 1, W + 1) == H * W + 1)
  shape_is(image.grid(ad.zeros(H, W)), { 3, H, W })
end)

test("grid normalize, value_range and scale_each", function()
  local b = ad.zeros(2, 1, 1, 2)
  b:_setflat(1, -2); b:_setflat(2, 2); b:_setflat(3, 0); b:_setflat(4, 10)
  -- min/max over the batch: [-2, 10]
  local g = image.grid(b, { normalize = true, padding = 0 })
  assert(math.abs(at(g, 1, 1, 1) - 0) < 1e-6 and math.abs(at(g, 1, 1, 2) - 4 / 12) < 1e-6 and math.abs(at(g, 1, 1, 4) - 1) < 1e-6)
  -- value_range clamps first
  g = image.grid(b, { normalize = true, value_range = { 0, 4 }, padding = 0 })
  assert(at(g, 1, 1, 1) == 0 and math.abs(at(g, 1, 1, 2) - 0.5) < 1e-6 and at(g, 1, 1, 4) == 1)
  -- scale_each: each image by its own min/max
  g = image.grid(b, { normalize = true, scale_each = true, padding = 0 })
  assert(at(g, 1, 1, 2) == 1 and at(g, 1, 1, 3) == 0 and at(g, 1, 1, 4) == 1)
end)

test("saving a batch writes a grid", function()
  local b = ad.zeros(3, 3, 4, 4)
  for i = 1, b:numel() do b:_setflat(i, (i % 7) / 3 - 1) end
  local p = tmp(".png")
  image.save(p, b, { range = { -1, 1 }, nrow = 2 })
  local y = image.load(p)
  shape_is(y, { 3, 6 * 2 + 2, 6 * 2 + 2 })
  -- first image's first pixel at (3, 3); padding is black (pad_value 0 in [0, 1] terms)
  assert(at(y, 1, 3, 3) == to_u8(b:_getflat(1), -1, 1) and at(y, 1, 1, 1) == 0)
  -- a batch of one is saved as that image
  local q = tmp(".png")
  image.save(q, b:narrow(1, 1, 1), { range = { -1, 1 } })
  shape_is(image.load(q), { 3, 4, 4 })
end)

test("bad arguments", function()
  local p = tmp(".png")
  raises("1 to 4 can be written", image.save, p, ad.zeros(5, 2, 2))
  raises("expected (C, H, W)", image.save, p, ad.zeros(8))
  raises("hi > lo", image.save, p, ad.zeros(3, 2, 2), { range = { 1, 1 } })
  raises("range", image.save, p, ad.zeros(3, 2, 2), { range = 1 })
  raises("cannot create", image.save, TMP .. "_no_dir/x.png", ad.zeros(3, 2, 2))
  image.save(p, ad.zeros(3, 2, 2))
  raises("channels must be", image.load, p, { channels = 7 })
  raises("dtype must be u8, f32 or f64", image.load, p, { dtype = "i64" })
  raises("cannot open", image.load, TMP .. "_missing.png")
  raises("nrow must be", image.grid, ad.zeros(2, 3, 2, 2), { nrow = 0 })
  raises("expected (N, C, H, W)", image.grid, ad.zeros(1, 2, 3, 2, 2))
end)

test("hostile image files give errors, never crashes", function()
  local x = pattern(3, 16, 16, "u8", function(c, y, x) return (c * y * x) % 256 end)
  local p = tmp(".png")
  image.save(p, x)
  local png = readfile(p)
  local bmp = "BM" .. string.pack("<I4I2I2I4", 54 + 12, 0, 0, 54) ..
              string.pack("<I4i4i4I2I2I4I4i4i4I4I4", 40, 2, 2, 1, 24, 0, 16, 0, 0, 0, 0) .. string.rep("\7", 16)
  -- every truncation of a PNG, JPEG and BMP
  for _, s in ipairs{ png, JPEG_8x8, bmp } do
    for cut = 0, #s - 1, math.max(1, #s // 200) do
      pcall(ad._image_decode, s:sub(1, cut))
    end
  end
  assert(not pcall(ad._image_decode, png:sub(1, 40)))
  raises("cannot decode image", ad._image_decode, "not an image at all")
  raises("cannot decode image", ad._image_decode, "")
  -- a PNG header that declares 100000 x 100000 pixels
  local ihdr = string.pack(">I4I4I1I1I1I1I1", 100000, 100000, 8, 2, 0, 0, 0)
  local huge = "\x89PNG\r\n\26\n" .. string.pack(">I4", 13) .. "IHDR" .. ihdr .. "\0\0\0\0"
  raises("cannot decode image", ad._image_decode, huge)
  -- a BMP that declares 2^30 x 2^30
  local hb = "BM" .. string.pack("<I4I2I2I4", 70, 0, 0, 54) ..
             string.pack("<I4i4i4I2I2I4I4i4i4I4I4", 40, 1 << 30, 1 << 30, 1, 24, 0, 0, 0, 0, 0, 0) .. string.rep("\0", 16)
  raises("cannot decode image", ad._image_decode, hb)
  -- random byte flips
  local seed = 99
  local function rng(n)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n + 1
  end
  for _, s in ipairs{ png, JPEG_8x8, bmp } do
    for _ = 1, 300 do
      local b = { s:byte(1, -1) }
      for _ = 1, rng(6) do b[rng(#b)] = rng(256) - 1 end
      pcall(ad._image_decode, string.char(table.unpack(b)))
    end
  end
  -- the file path goes through the same checks
  raises("cannot decode image", image.load, writefile(tmp(".png"), "\x89PNG\r\n\26\n"))
end)

test("cleanup", function()
  cleanup_tmp()
end)
