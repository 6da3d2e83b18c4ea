--- advdiff.metrics.spectrum: radially averaged power spectra of images, to
-- see where (which spatial frequencies) generated images lack or add energy
-- compared with real ones. Blurry samples fall off at high frequencies;
-- over-sharpened or noisy ones overshoot.
--
-- The 2-D DFT is two matrix products with the DFT matrix (cos and sin parts,
-- f64): for the 32/64-px images of this project that is as fast as an FFT and
-- reuses the BLAS path. Power |F(u, v)|^2 / (H W) of the luminance is binned
-- by the rounded radius sqrt(fy^2 + fx^2) in units of 1/min(H, W) cycles per
-- pixel (bins 0 .. min(H, W)/2; the corners beyond Nyquist are left out).
local core = require "advdiff.core"
local U = require "advdiff.metrics.util"

local M = {}

local function dft_mats(n)
  local k = core.arange(n, { dtype = "f64" })
  local ang = k:view(n, 1) * k:view(1, n) * (2 * math.pi / n)
  return ang:cos(), ang:sin()
end

-- the signed frequency index of DFT bin k: min(k, n - k)
local function freq_index(n)
  local t = {}
  for k = 0, n - 1 do t[k + 1] = math.min(k, n - k) end
  return core.tensor(t, { dtype = "f64" })
end

--- Radially averaged power spectrum. images: (N, C, H, W) float (opts.range,
-- default {0, 1}) or u8. Returns mean (R) f64 over the images, per-image
-- spectra (N, R) f64, and the bin frequencies (R) in cycles per pixel.
function M.radial_power_spectrum(images, opts)
  opts = U.opts("radial_power_spectrum", opts)
  local x = U.images01("radial_power_spectrum", images, opts.range):double():cpu()
  local s = x:shape()
  local n, c, h, w = s[1], s[2], s[3], s[4]
  if n == 0 then error("radial_power_spectrum: no images", 2) end
  if c == 3 then
    x = x:select(2, 1) * 0.299 + x:select(2, 2) * 0.587 + x:select(2, 3) * 0.114
  elseif c == 1 then
    x = x:select(2, 1)
  else
    error("radial_power_spectrum: images must have 1 or 3 channels, got " .. c, 2)
  end
  local ch, sh = dft_mats(h)
  local cw, sw = dft_mats(w)
  -- rows: Y = X e^{-i 2 pi k n / W};  columns: Z = e^{-i 2 pi k n / H} Y
  local yr, yi = x:matmul(cw), -x:matmul(sw)
  local zr = ch:matmul(yr) + sh:matmul(yi)
  local zi = ch:matmul(yi) - sh:matmul(yr)
  local power = (zr * zr + zi * zi) / (h * w)
  local m = math.min(h, w)
  local nb = m // 2 + 1
  local fy, fx = freq_index(h) / h * m, freq_index(w) / w * m
  local r = (fy:view(h, 1) * fy:view(h, 1) + fx:view(1, w) * fx:view(1, w)):sqrt():round():view(h * w, 1)
  local onehot = r:eq(core.arange(nb, { dtype = "f64" }):view(1, nb)):double()   -- (H W, R)
  local counts = onehot:sum(1)
  local per = power:view(n, h * w):matmul(onehot) / counts
  local freqs = core.arange(nb, { dtype = "f64" }) / m
  return per:mean(1), per, freqs
end

return M
