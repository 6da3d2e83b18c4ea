--- advdiff.log.plot: loss curves as PNG files.
--
--   plot.curves("loss_g.png", { {name = "G", xs = {...}, ys = {...}}, ... },
--               {width = 800, height = 480, logy = false, smooth = 0, backend = "auto"})
--
-- backend "gnuplot" runs gnuplot (the gnuplot-nox package; a legend and
-- titles), "builtin" draws with advdiff's own renderer (axes, a grid, numeric
-- tick labels, one colour per series in the order red, blue, green, orange,
-- purple, grey; no text besides numbers), "auto" uses gnuplot when it is
-- installed. NaN and infinite points are left out; smooth = k draws the
-- running mean over k points.
local ad = require "advdiff"

local M = {}

local COLORS = { { 220, 40, 40 }, { 40, 90, 220 }, { 30, 160, 60 }, { 240, 150, 20 }, { 140, 60, 180 }, { 110, 110, 110 } }

-- 3x5 digits and the characters numbers need
local FONT = {
  ["0"] = { 7, 5, 5, 5, 7 }, ["1"] = { 2, 6, 2, 2, 7 }, ["2"] = { 7, 1, 7, 4, 7 }, ["3"] = { 7, 1, 7, 1, 7 },
  ["4"] = { 5, 5, 7, 1, 1 }, ["5"] = { 7, 4, 7, 1, 7 }, ["6"] = { 7, 4, 7, 5, 7 }, ["7"] = { 7, 1, 1, 1, 1 },
  ["8"] = { 7, 5, 7, 5, 7 }, ["9"] = { 7, 5, 7, 1, 7 }, ["."] = { 0, 0, 0, 0, 2 }, ["-"] = { 0, 0, 7, 0, 0 },
  ["+"] = { 0, 2, 7, 2, 0 }, ["e"] = { 0, 7, 7, 4, 7 },
}

local Canvas = {}
Canvas.__index = Canvas

local function canvas(w, h)
  local px = {}
  for i = 1, w * h * 3 do px[i] = 255 end
  return setmetatable({ w = w, h = h, px = px }, Canvas)
end

function Canvas:set(x, y, c)
  x, y = math.floor(x + 0.5), math.floor(y + 0.5)
  if x < 0 or y < 0 or x >= self.w or y >= self.h then return end
  local o = (y * self.w + x) * 3
  self.px[o + 1], self.px[o + 2], self.px[o + 3] = c[1], c[2], c[3]
end

function Canvas:line(x0, y0, x1, y1, c, thick)
  local dx, dy = x1 - x0, y1 - y0
  local n = math.max(1, math.ceil(math.max(math.abs(dx), math.abs(dy))))
  for i = 0, n do
    local x, y = x0 + dx * i / n, y0 + dy * i / n
    self:set(x, y, c)
    if thick then self:set(x, y + 1, c); self:set(x + 1, y, c) end
  end
end

function Canvas:text(x, y, s, c, scale)
  scale = scale or 2
  for ch in s:gmatch(".") do
    local g = FONT[ch]
    if g then
      for r = 1, 5 do
        for col = 0, 2 do
          if g[r] & (4 >> col) ~= 0 then
            for a = 0, scale - 1 do for b = 0, scale - 1 do self:set(x + col * scale + a, y + (r - 1) * scale + b, c) end end
          end
        end
      end
    end
    x = x + 4 * scale
  end
end

-- the canvas as a (3, H, W) u8 tensor, through an in-memory .npy
function Canvas:tensor()
  local hdr = string.format("{'descr': '|u1', 'fortran_order': False, 'shape': (%d, %d, 3), }", self.h, self.w)
  local total = 10 + #hdr + 1
  local pad = (64 - total % 64) % 64
  hdr = hdr .. string.rep(" ", pad) .. "\n"
  local parts = { "\147NUMPY\1\0", string.pack("<I2", #hdr), hdr }
  local px, chunk = self.px, 4096
  for i = 1, #px, chunk do
    parts[#parts + 1] = string.char(table.unpack(px, i, math.min(i + chunk - 1, #px)))
  end
  local t = ad._load_string(table.concat(parts), { format = "npy" })
  return t:permute(3, 1, 2):contiguous()
end

local function fmt(v)
  if v == 0 then return "0" end
  if v == math.floor(v) and math.abs(v) < 1e6 then return string.format("%d", v) end
  local a = math.abs(v)
  if a >= 1e4 or a < 1e-2 then return string.format("%.1e", v):gsub("e%+?(%-?)0*(%d)", "e%1%2") end
  if a >= 100 then return string.format("%.0f", v) end
  if a >= 1 then return string.format("%.2f", v) end
  return string.format("%.3f", v)
end

local function clean(series, smooth, logy)
  local out = {}
  for _, s in ipairs(series) do
    local xs, ys = {}, {}
    local win, sum = {}, 0
    for i = 1, math.min(#s.xs, #s.ys) do
      local x, y = s.xs[i], s.ys[i]
      if type(y) == "number" and y == y and y ~= math.huge and y ~= -math.huge and (not logy or y > 0) then
        if smooth and smooth > 1 then
          win[#win + 1] = y; sum = sum + y
          if #win > smooth then sum = sum - table.remove(win, 1) end
          y = sum / #win
        end
        xs[#xs + 1], ys[#ys + 1] = x, logy and math.log(y, 10) or y
      end
    end
    out[#out + 1] = { name = s.name, xs = xs, ys = ys }
  end
  return out
end

local function builtin(path, series, o)
  local W, H = o.width or 800, o.height or 480
  local L, R, Tm, B = 90, 20, 20, 40
  local cv = canvas(W, H)
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(series) do
    for i = 1, #s.xs do
      xmin, xmax = math.min(xmin, s.xs[i]), math.max(xmax, s.xs[i])
      ymin, ymax = math.min(ymin, s.ys[i]), math.max(ymax, s.ys[i])
    end
  end
  if xmin == math.huge then xmin, xmax, ymin, ymax = 0, 1, 0, 1 end
  if xmax == xmin then xmax = xmin + 1 end
  if ymax == ymin then ymin, ymax = ymin - 0.5, ymax + 0.5 end
  local pad = (ymax - ymin) * 0.05
  ymin, ymax = ymin - pad, ymax + pad
  local function X(x) return L + (x - xmin) / (xmax - xmin) * (W - L - R) end
  local function Y(y) return H - B - (y - ymin) / (ymax - ymin) * (H - B - Tm) end
  local grid, axis, ink = { 225, 225, 225 }, { 0, 0, 0 }, { 60, 60, 60 }
  for k = 0, 4 do
    local yv = ymin + (ymax - ymin) * k / 4
    cv:line(L, Y(yv), W - R, Y(yv), grid)
    local label = o.logy and fmt(10 ^ yv) or fmt(yv)
    cv:text(4, Y(yv) - 5, label, ink)
    local xv = xmin + (xmax - xmin) * k / 4
    cv:line(X(xv), Tm, X(xv), H - B, grid)
    local xl = fmt(xv)
    cv:text(math.min(X(xv) - 4 * #xl, W - 8 * #xl - 2), H - B + 8, xl, ink)
  end
  cv:line(L, H - B, W - R, H - B, axis)
  cv:line(L, Tm, L, H - B, axis)
  for k, s in ipairs(series) do
    local c = COLORS[(k - 1) % #COLORS + 1]
    for i = 2, #s.xs do cv:line(X(s.xs[i - 1]), Y(s.ys[i - 1]), X(s.xs[i]), Y(s.ys[i]), c, true) end
    if #s.xs == 1 then cv:set(X(s.xs[1]), Y(s.ys[1]), c) end
  end
  ad.image.save(path, cv:tensor())
end

local function have_gnuplot()
  if M._gnuplot == nil then
    local ok = os.execute("command -v gnuplot >/dev/null 2>&1")
    M._gnuplot = ok == true or ok == 0
  end
  return M._gnuplot
end

local function gnuplot(path, series, o)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  for k, s in ipairs(series) do
    if k > 1 then f:write("\n\n") end
    for i = 1, #s.xs do f:write(string.format("%.17g %.17g\n", s.xs[i], o.logy and 10 ^ s.ys[i] or s.ys[i])) end
  end
  f:close()
  local q = function(x) return "'" .. tostring(x):gsub("'", "") .. "'" end
  local plots = {}
  for k, s in ipairs(series) do
    plots[k] = string.format("%s index %d with lines lw 2 title %s", q(tmp), k - 1, q(s.name or ("series " .. k)))
  end
  local script = string.format("set terminal png size %d,%d; set output %s; set grid; %s %s plot %s\n",
    o.width or 800, o.height or 480, q(path), o.logy and "set logscale y;" or "",
    o.title and ("set title " .. q(o.title) .. ";") or "", table.concat(plots, ", "))
  local p = io.popen("gnuplot >/dev/null 2>&1", "w")
  p:write(script)
  local ok = p:close()
  os.remove(tmp)
  return ok
end

--- Draw series {{name=, xs=, ys=}, ...} into the PNG file path.
function M.curves(path, series, opts)
  opts = opts or {}
  local s = clean(series, opts.smooth, opts.logy)
  local backend = opts.backend or "auto"
  if backend == "gnuplot" or (backend == "auto" and have_gnuplot()) then
    if gnuplot(path, s, opts) then return "gnuplot" end
    if backend == "gnuplot" then error("plot.curves: gnuplot failed", 2) end
  end
  builtin(path, s, opts)
  return "builtin"
end

return M
