--- advdiff.image: images in and out (PNG, JPEG, BMP in; PNG out) and
-- torchvision's make_grid. Tensors are (C, H, W), or (N, C, H, W) batches.
--
--   local image = require "advdiff.image"
--   local x = image.load("cat.png", {dtype = "f32"})      -- (3, H, W) in [0, 1]
--   image.save("samples.png", batch, {range = {-1, 1}})   -- (N, 3, H, W) -> a grid
--   local g = image.grid(batch, {nrow = 8, padding = 2})
local core = require "advdiff.core"

local image = {}

local function opts_of(fname, opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" or core.is_tensor(opts) then
    error(string.format("image.%s: options must be a table, got %s", fname, type(opts)), 3)
  end
  return opts
end

local function range_of(fname, r)
  if r == nil then return nil end
  if type(r) ~= "table" or type(r[1]) ~= "number" or type(r[2]) ~= "number" then
    error(string.format("image.%s: option 'range' must be {lo, hi}", fname), 3)
  end
  if not (r[2] > r[1]) then
    error(string.format("image.%s: option 'range' must have hi > lo, got {%g, %g}", fname, r[1], r[2]), 3)
  end
  return r
end

--- Loads a PNG, JPEG or BMP file as a (C, H, W) tensor.
-- opts.dtype: "u8" (default, values 0..255) or "f32"/"f64" (values in [0, 1]).
-- opts.channels: 0 (as stored, default), 1 (gray), 3 (RGB) or 4 (RGBA).
function image.load(path, opts)
  if type(path) ~= "string" then error("image.load: path must be a string", 2) end
  opts = opts_of("load", opts)
  return core._image_load(path, opts.channels or 0, opts.dtype or "u8")
end

--- torchvision.utils.make_grid: (N, C, H, W) -> (C, H', W') with nrow images
-- per row and padding pixels between them (filled with pad_value).
-- opts: nrow=8, padding=2, pad_value=0, normalize=false, value_range={lo, hi}
-- (or range=), scale_each=false. One-channel images become three-channel.
function image.grid(batch, opts)
  if not core.is_tensor(batch) then error("image.grid: batch must be a tensor", 2) end
  opts = opts_of("grid", opts)
  local r = range_of("grid", opts.value_range or opts.range)
  return core._image_grid(batch, opts.nrow or 8, opts.padding or 2, opts.pad_value or 0,
                          opts.normalize and true or false, opts.scale_each and true or false,
                          r and r[1], r and r[2])
end

--- Writes a (C, H, W) or (H, W) tensor, or a (N, C, H, W) batch as a grid, to
-- a PNG file. Float values are mapped from opts.range (default {0, 1}) to
-- 0..255 and clamped, as torchvision's save_image does; u8 tensors are written
-- as they are. Grid options (nrow, padding, pad_value) apply to batches.
function image.save(path, tensor, opts)
  if type(path) ~= "string" then error("image.save: path must be a string", 2) end
  if not core.is_tensor(tensor) then error("image.save: tensor expected", 2) end
  opts = opts_of("save", opts)
  local r = range_of("save", opts.range) or {0, 1}
  local x = tensor
  local shape = x:shape()
  if #shape == 4 then
    if shape[1] == 1 then
      x = x:view(shape[2], shape[3], shape[4])
    else
      -- pad in the output's scale: pad_value is given in [0, 1] terms like torchvision's
      local pad = opts.pad_value or 0
      if x:dtype() ~= "u8" then pad = r[1] + pad * (r[2] - r[1]) end
      x = core._image_grid(x, opts.nrow or 8, opts.padding or 2, pad, false, false)
    end
  elseif #shape ~= 3 and #shape ~= 2 then
    error(string.format("image.save: expected (C, H, W), (H, W) or (N, C, H, W), got %d dimensions", #shape), 2)
  end
  core._image_save(path, x, r[1], r[2])
end

return image
