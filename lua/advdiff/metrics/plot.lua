--- advdiff.metrics.plot: a tiny PNG line-plot renderer (no gnuplot, no
-- fonts installed): a pixel canvas in a Lua table, Bresenham lines, a 5x7
-- bitmap font, written through advdiff.image.save. Enough for the report's
-- spectrum plot and the captions of its sample grids.
local core = require "advdiff.core"

local M = {}

-- 5x7 glyphs, rows top to bottom; lowercase letters print as capitals
local GLYPHS = {
  [" "] = ".....  .....  .....  .....  .....  .....  .....",
  ["0"] = ".###.  #...#  #..##  #.#.#  ##..#  #...#  .###.",
  ["1"] = "..#..  .##..  ..#..  ..#..  ..#..  ..#..  .###.",
  ["2"] = ".###.  #...#  ....#  ...#.  ..#..  .#...  #####",
  ["3"] = "#####  ...#.  ..#..  ...#.  ....#  #...#  .###.",
  ["4"] = "...#.  ..##.  .#.#.  #..#.  #####  ...#.  ...#.",
  ["5"] = "#####  #....  ####.  ....#  ....#  #...#  .###.",
  ["6"] = "..##.  .#...  #....  ####.  #...#  #...#  .###.",
  ["7"] = "#####  ....#  ...#.  ..#..  .#...  .#...  .#...",
  ["8"] = ".###.  #...#  #...#  .###.  #...#  #...#  .###.",
  ["9"] = ".###.  #...#  #...#  .####  ....#  ...#.  .##..",
  A = ".###.  #...#  #...#  #####  #...#  #...#  #...#",
  B = "####.  #...#  #...#  ####.  #...#  #...#  ####.",
  C = ".###.  #...#  #....  #....  #....  #...#  .###.",
  D = "###..  #..#.  #...#  #...#  #...#  #..#.  ###..",
  E = "#####  #....  #....  ####.  #....  #....  #####",
  F = "#####  #....  #....  ####.  #....  #....  #....",
  G = ".###.  #...#  #....  #.###  #...#  #...#  .####",
  H = "#...#  #...#  #...#  #####  #...#  #...#  #...#",
  I = ".###.  ..#..  ..#..  ..#..  ..#..  ..#..  .###.",
  J = "..###  ...#.  ...#.  ...#.  ...#.  #..#.  .##..",
  K = "#...#  #..#.  #.#..  ##...  #.#..  #..#.  #...#",
  L = "#....  #....  #....  #....  #....  #....  #####",
  M = "#...#  ##.##  #.#.#  #.#.#  #...#  #...#  #...#",
  N = "#...#  #...#  ##..#  #.#.#  #..##  #...#  #...#",
  O = ".###.  #...#  #...#  #...#  #...#  #...#  .###.",
  P = "####.  #...#  #...#  ####.  #....  #....  #....",
  Q = ".###.  #...#  #...#  #...#  #.#.#  #..#.  .##.#",
  R = "####.  #...#  #...#  ####.  #.#..  #..#.  #...#",
  S = ".####  #....  #....  .###.  ....#  ....#  ####.",
  T = "#####  ..#..  ..#..  ..#..  ..#..  ..#..  ..#..",
  U = "#...#  #...#  #...#  #...#  #...#  #...#  .###.",
  V = "#...#  #...#  #...#  #...#  #...#  .#.#.  ..#..",
  W = "#...#  #...#  #...#  #.#.#  #.#.#  #.#.#  .#.#.",
  X = "#...#  #...#  .#.#.  ..#..  .#.#.  #...#  #...#",
  Y = "#...#  #...#  .#.#.  ..#..  ..#..  ..#..  ..#..",
  Z = "#####  ....#  ...#.  ..#..  .#...  #....  #####",
  ["."] = ".....  .....  .....  .....  .....  .##..  .##..",
  [","] = ".....  .....  .....  .....  .##..  ..#..  .#...",
  ["-"] = ".....  .....  .....  #####  .....  .....  .....",
  ["+"] = ".....  ..#..  ..#..  #####  ..#..  ..#..  .....",
  ["/"] = ".....  ....#  ...#.  ..#..  .#...  #....  .....",
  ["("] = "...#.  ..#..  .#...  .#...  .#...  ..#..  ...#.",
  [")"] = ".#...  ..#..  ...#.  ...#.  ...#.  ..#..  .#...",
  ["%"] = "##...  ##..#  ...#.  ..#..  .#...  #..##  ...##",
  [":"] = ".....  .##..  .##..  .....  .##..  .##..  .....",
  ["="] = ".....  .....  #####  .....  #####  .....  .....",
  ["["] = ".###.  .#...  .#...  .#...  .#...  .#...  .###.",
  ["]"] = ".###.  ...#.  ...#.  ...#.  ...#.  ...#.  .###.",
  ["_"] = ".....  .....  .....  .....  .....  .....  #####",
  ["|"] = "..#..  ..#..  ..#..  ..#..  ..#..  ..#..  ..#..",
  ["<"] = "...#.  ..#..  .#...  #....  .#...  ..#..  ...#.",
  [">"] = ".#...  ..#..  ...#.  ....#  ...#.  ..#..  .#...",
  ["*"] = ".....  ..#..  #.#.#  .###.  #.#.#  ..#..  .....",
  ["'"] = "..#..  ..#..  .#...  .....  .....  .....  .....",
  ["?"] = ".###.  #...#  ....#  ...#.  ..#..  .....  ..#..",
}
local FONT = {}
for ch, s in pairs(GLYPHS) do
  local rows = {}
  for row in s:gmatch("[#.]+") do rows[#rows + 1] = row end
  FONT[ch] = rows
end

---------------------------------------------------------------------------- canvas

local Canvas = {}
Canvas.__index = Canvas

--- A w x h RGB canvas filled with bg ({r, g, b}, 0..255; white by default).
function M.canvas(w, h, bg)
  bg = bg or { 255, 255, 255 }
  local px = {}
  for i = 0, w * h - 1 do
    px[3 * i + 1], px[3 * i + 2], px[3 * i + 3] = bg[1], bg[2], bg[3]
  end
  return setmetatable({ w = w, h = h, px = px }, Canvas)
end

function Canvas:set(x, y, c)
  x, y = math.floor(x + 0.5), math.floor(y + 0.5)
  if x < 0 or y < 0 or x >= self.w or y >= self.h then return end
  local i = 3 * (y * self.w + x)
  self.px[i + 1], self.px[i + 2], self.px[i + 3] = c[1], c[2], c[3]
end

function Canvas:rect(x0, y0, x1, y1, c)
  for y = math.max(0, math.floor(y0)), math.min(self.h - 1, math.floor(y1)) do
    for x = math.max(0, math.floor(x0)), math.min(self.w - 1, math.floor(x1)) do self:set(x, y, c) end
  end
end

--- a line of the given thickness (pixels); dash = {on, off} for a dashed line
function Canvas:line(x0, y0, x1, y1, c, thick, dash)
  thick = thick or 1
  local dx, dy = x1 - x0, y1 - y0
  local steps = math.max(1, math.ceil(math.max(math.abs(dx), math.abs(dy))))
  local r = (thick - 1) / 2
  for s = 0, steps do
    local draw = true
    if dash then draw = (s % (dash[1] + dash[2])) < dash[1] end
    if draw then
      local x, y = x0 + dx * s / steps, y0 + dy * s / steps
      if r <= 0 then self:set(x, y, c)
      else
        for oy = -r, r do for ox = -r, r do self:set(x + ox, y + oy, c) end end
      end
    end
  end
end

--- text with its top-left corner at (x, y); scale multiplies the 5x7 glyphs
function Canvas:text(x, y, s, c, scale)
  scale = scale or 1
  local cx = x
  for ch in s:gmatch(".") do
    local g = FONT[ch] or FONT[ch:upper()] or FONT["?"]
    for row = 1, 7 do
      local bits = g[row]
      for col = 1, 5 do
        if bits:sub(col, col) == "#" then
          self:rect(cx + (col - 1) * scale, y + (row - 1) * scale, cx + col * scale - 1, y + row * scale - 1, c)
        end
      end
    end
    cx = cx + 6 * scale
  end
end

function M.text_width(s, scale) return #s * 6 * (scale or 1) - (scale or 1) end

--- vertical text (rotated 90 degrees counter-clockwise), bottom at (x, y)
function Canvas:vtext(x, y, s, c, scale)
  scale = scale or 1
  local cy = y
  for ch in s:gmatch(".") do
    local g = FONT[ch] or FONT[ch:upper()] or FONT["?"]
    for row = 1, 7 do
      for col = 1, 5 do
        if g[row]:sub(col, col) == "#" then
          local px, py = x + (row - 1) * scale, cy - col * scale
          self:rect(px, py, px + scale - 1, py + scale - 1, c)
        end
      end
    end
    cy = cy - 6 * scale
  end
end

--- the canvas as a (3, h, w) u8 tensor
function Canvas:tensor()
  return core.tensor(self.px, { dtype = "u8" }):view(self.h, self.w, 3):permute(3, 1, 2):contiguous()
end

function Canvas:save(path)
  require("advdiff.image").save(path, self:tensor())
end

--- a caption as a (3, h, w) f32 image in [0, 1] (black on white)
function M.text_image(s, scale, pad)
  scale, pad = scale or 2, pad or 4
  local w = M.text_width(s, scale) + 2 * pad
  local h = 7 * scale + 2 * pad
  local cv = M.canvas(w, h)
  cv:text(pad, pad, s, { 0, 0, 0 }, scale)
  return cv:tensor():float() / 255
end

---------------------------------------------------------------------------- line plots

local function nice_step(range, target)
  local raw = range / target
  local mag = 10 ^ math.floor(math.log(raw, 10))
  for _, m in ipairs { 1, 2, 2.5, 5, 10 } do
    if raw <= m * mag then return m * mag end
  end
  return 10 * mag
end

local function fmt(v)
  if v == 0 then return "0" end
  local a = math.abs(v)
  if a >= 1e4 or a < 1e-3 then return string.format("%.0e", v) end
  local s = string.format("%.3f", v):gsub("0+$", ""):gsub("%.$", "")
  return s
end

M.COLORS = {
  { 31, 119, 180 }, { 214, 39, 40 }, { 44, 160, 44 }, { 255, 127, 14 }, { 148, 103, 189 }, { 140, 86, 75 },
}

--- Draw series = {{name=, x={...}, y={...}, color=}, ...} and save a PNG.
-- opts: title, xlabel, ylabel, logy (log10 y axis), hline (a dashed
-- reference line at that y), width=760, height=460.
function M.line_plot(path, series, opts)
  opts = opts or {}
  local W, H = opts.width or 760, opts.height or 460
  local cv = M.canvas(W, H)
  local left, right, top, bottom = 78, 20, 40, 56
  local pw, ph = W - left - right, H - top - bottom
  local logy = opts.logy
  local function ty(v) return logy and math.log(v, 10) or v end
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(series) do
    for i = 1, #s.x do
      local y = s.y[i]
      if y == y and y ~= math.huge and y ~= -math.huge and (not logy or y > 0) then
        xmin, xmax = math.min(xmin, s.x[i]), math.max(xmax, s.x[i])
        ymin, ymax = math.min(ymin, ty(y)), math.max(ymax, ty(y))
      end
    end
  end
  if opts.hline and (not logy or opts.hline > 0) then
    ymin, ymax = math.min(ymin, ty(opts.hline)), math.max(ymax, ty(opts.hline))
  end
  if xmin > xmax then xmin, xmax = 0, 1 end
  if ymin > ymax then ymin, ymax = 0, 1 end
  if xmax == xmin then xmax = xmin + 1 end
  if ymax == ymin then ymin, ymax = ymin - 0.5, ymax + 0.5 end
  local pad = (ymax - ymin) * 0.05
  ymin, ymax = ymin - pad, ymax + pad
  local function px(x) return left + (x - xmin) / (xmax - xmin) * pw end
  local function py(y) return top + ph - (y - ymin) / (ymax - ymin) * ph end
  local grid, axis, black = { 225, 225, 225 }, { 90, 90, 90 }, { 0, 0, 0 }

  -- grid and ticks
  local xs = nice_step(xmax - xmin, 8)
  for v = math.ceil(xmin / xs) * xs, xmax + 1e-12, xs do
    cv:line(px(v), top, px(v), top + ph, grid)
    local lab = fmt(v)
    cv:text(px(v) - M.text_width(lab) / 2, top + ph + 6, lab, black)
  end
  local yt = {}
  if logy then
    local span = ymax - ymin
    local step = span > 3 and math.ceil(span / 6) or nil
    if step then
      for e = math.ceil(ymin), math.floor(ymax), step do yt[#yt + 1] = e end
    else
      for e = math.floor(ymin), math.ceil(ymax) do
        for _, m in ipairs(span > 1 and { 1, 2, 5 } or { 1, 1.5, 2, 3, 5, 7 }) do
          local v = math.log(m, 10) + e
          if v >= ymin and v <= ymax then yt[#yt + 1] = v end
        end
      end
    end
  else
    local ys = nice_step(ymax - ymin, 6)
    for v = math.ceil(ymin / ys) * ys, ymax + 1e-12, ys do yt[#yt + 1] = v end
  end
  for _, v in ipairs(yt) do
    cv:line(left, py(v), left + pw, py(v), grid)
    local lab = fmt(logy and 10 ^ v or v)
    cv:text(left - 6 - M.text_width(lab), py(v) - 3, lab, black)
  end
  cv:line(left, top, left, top + ph, axis)
  cv:line(left, top + ph, left + pw, top + ph, axis)
  cv:line(left + pw, top, left + pw, top + ph, axis)
  cv:line(left, top, left + pw, top, axis)
  if opts.hline then cv:line(left, py(ty(opts.hline)), left + pw, py(ty(opts.hline)), { 60, 60, 60 }, 1, { 6, 4 }) end

  -- series
  for si, s in ipairs(series) do
    local c = s.color or M.COLORS[(si - 1) % #M.COLORS + 1]
    local prev
    for i = 1, #s.x do
      local y = s.y[i]
      local ok = y == y and y ~= math.huge and y ~= -math.huge and (not logy or y > 0)
      if ok then
        local p = { px(s.x[i]), py(ty(y)) }
        if prev then cv:line(prev[1], prev[2], p[1], p[2], c, 2) end
        prev = p
      else
        prev = nil
      end
    end
  end

  -- labels and legend
  if opts.title then cv:text((W - M.text_width(opts.title, 2)) / 2, 10, opts.title, black, 2) end
  if opts.xlabel then cv:text(left + (pw - M.text_width(opts.xlabel)) / 2, H - 18, opts.xlabel, black) end
  if opts.ylabel then cv:vtext(8, top + (ph + M.text_width(opts.ylabel)) / 2, opts.ylabel, black) end
  local named, lw = {}, 0
  for si, s in ipairs(series) do
    if s.name then
      named[#named + 1] = { s.name, s.color or M.COLORS[(si - 1) % #M.COLORS + 1] }
      lw = math.max(lw, M.text_width(s.name))
    end
  end
  if #named > 0 then
    -- a boxed legend in the top-right corner, drawn over the curves
    local bw, bh = lw + 40, #named * 14 + 8
    local bx, by = left + pw - bw - 8, top + 8
    cv:rect(bx, by, bx + bw, by + bh, { 255, 255, 255 })
    cv:line(bx, by, bx + bw, by, axis); cv:line(bx, by + bh, bx + bw, by + bh, axis)
    cv:line(bx, by, bx, by + bh, axis); cv:line(bx + bw, by, bx + bw, by + bh, axis)
    for i, e in ipairs(named) do
      local ly = by + 6 + (i - 1) * 14
      cv:line(bx + 6, ly + 3, bx + 26, ly + 3, e[2], 2)
      cv:text(bx + 32, ly, e[1], black)
    end
  end
  cv:save(path)
  return cv
end

return M
