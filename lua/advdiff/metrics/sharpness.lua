--- advdiff.metrics.sharpness: the variance of the Laplacian, exactly as
-- OpenCV computes cv2.Laplacian(gray, cv2.CV_64F).var():
--   gray  = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
--           float images: 0.299 R + 0.587 G + 0.114 B in f32, evaluated the
--           way OpenCV's SIMD loop does (fma(B, .114, fma(G, .587, R * .299)))
--           u8 images:    (9798 R + 19235 G + 3735 B + 16384) >> 15
--   L     = 3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]] over the f64 gray image,
--           border BORDER_REFLECT_101 (PyTorch's "reflect" pad)
--   value = population variance of L, per image.
-- Float images are taken in [0, 1] (opts.range maps another range there,
-- e.g. {-1, 1} for diffusion samples); u8 images in 0..255, so their values
-- are about 255^2 times larger.
local core = require "advdiff.core"
local U = require "advdiff.metrics.util"

local M = {}

-- the f32 coefficients OpenCV uses, as exact Lua numbers
local function f32(x) return (string.unpack("<f", string.pack("<f", x))) end
local CR, CG, CB = f32(0.299), f32(0.587), f32(0.114)

--- (N, C, H, W) or (N, H, W) -> (N, 1, H, W) channels, checked
local function as_nchw(fname, images)
  if not core.is_tensor(images) then
    error(string.format("%s: images must be a tensor (N, C, H, W) or (N, H, W), got %s", fname, type(images)), 3)
  end
  local s = images:shape()
  if #s == 3 then images = images:unsqueeze(2); s = images:shape() end
  if #s ~= 4 then
    error(string.format("%s: images must be (N, C, H, W) or (N, H, W), got %d-D %s", fname, #s, U.shape_str(images)), 3)
  end
  if s[2] ~= 1 and s[2] ~= 3 then
    error(string.format("%s: images must have 1 or 3 channels (RGB), got %d", fname, s[2]), 3)
  end
  if s[3] < 2 or s[4] < 2 then
    error(string.format("%s: images must be at least 2x2 for a reflected 3x3 Laplacian, got %dx%d", fname, s[3], s[4]), 3)
  end
  return images
end

--- OpenCV's RGB -> gray. images: (N, 3, H, W) or (N, 1, H, W); float in
-- [0, 1] (or opts.range) or u8. Returns (N, H, W): f32 for float input,
-- u8 for u8 input (one-channel input is passed through, as f32 or u8).
function M.gray(images, opts)
  opts = U.opts("gray", opts)
  images = as_nchw("gray", images)
  local s = images:shape()
  local n, h, w = s[1], s[3], s[4]
  if images:device() ~= "cpu" then images = images:cpu() end
  if images:dtype() == "u8" then
    if s[2] == 1 then return images:view(n, h, w) end
    local x = images:double()
    local r, g, b = x:select(2, 1), x:select(2, 2), x:select(2, 3)
    -- OpenCV's fixed point (14+1 bits): exact in f64, and /2^15 is exact, so floor is the shift
    local acc = r * 9798 + g * 19235 + b * 3735 + 16384
    return (acc / 32768):floor():to("u8")
  end
  local x = images
  if x:dtype() ~= "f32" and x:dtype() ~= "f64" then x = x:float() end
  if opts.range then x = U.images01("gray", x, opts.range) end
  if s[2] == 1 then return x:float():view(n, h, w) end
  -- products of f32 values are exact in f64; adding and rounding once to f32
  -- reproduces each fused multiply-add
  x = x:float():double()
  local r, g, b = x:select(2, 1), x:select(2, 2), x:select(2, 3)
  local t = (r * CR):float():double()
  t = (g * CG + t):float():double()
  return (b * CB + t):float()
end

--- The 3x3 Laplacian (ksize 1) of gray images (N, H, W), f64, BORDER_REFLECT_101.
function M.laplacian(gray)
  if not core.is_tensor(gray) then error("laplacian: gray images (N, H, W) expected", 2) end
  local s = gray:shape()
  if #s == 2 then gray = gray:unsqueeze(1); s = gray:shape() end
  if #s ~= 3 then error("laplacian: gray images must be (N, H, W), got " .. U.shape_str(gray), 2) end
  local n, h, w = s[1], s[2], s[3]
  if h < 2 or w < 2 then error(string.format("laplacian: images must be at least 2x2, got %dx%d", h, w), 2) end
  local p = core.pad(gray:double():view(n, 1, h, w), { 1, 1, 1, 1 }, { mode = "reflect" })
  local function at(dy, dx) return p:narrow(3, 2 + dy, h):narrow(4, 2 + dx, w) end
  local lap = at(-1, 0) + at(0, -1) + at(0, 1) + at(1, 0) - at(0, 0) * 4
  return lap:view(n, h, w)
end

--- Sharpness of a batch: returns the mean (a number) and the per-image values
-- (an f64 tensor (N)). images: (N, 3, H, W) RGB or (N, 1, H, W) / (N, H, W) gray;
-- float in [0, 1] (opts.range = {lo, hi} maps another range to [0, 1]) or u8.
function M.sharpness(images, opts)
  opts = U.opts("sharpness", opts)
  images = as_nchw("sharpness", images)
  local n = images:shape()[1]
  if n == 0 then error("sharpness: no images", 2) end
  if images:dtype() ~= "u8" then
    local ok = images:isfinite():all():item()
    if not (ok == true or ok == 1) then error("sharpness: images contain NaN or Inf", 2) end
  end
  local g = M.gray(images, { range = opts.range })
  local lap = M.laplacian(g)
  local values = lap:view(n, -1):var(2, { correction = 0 })
  return values:mean():item(), values
end

return M
