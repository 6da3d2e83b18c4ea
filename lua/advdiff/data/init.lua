--- advdiff.data: datasets and the data loader.
--
-- Datasets (a list of items with optional integer labels):
--   data.ImageFolder(root, {labels_file=, extensions=, classes=, max_per_class=, relabel=})
--       one sub-folder per class (sorted names -> labels 0, 1, ...; torchvision's rule), or, with
--       labels_file, a text file of "relative/path label" lines (files then need no sub-folders)
--   data.NpzBatch(path, {...})     a NumPy .npz as guided-diffusion's reference batches store them:
--       arr_0 (N, H, W, C) u8, optional arr_1 (N) labels
--   data.FashionMNIST{root="/usr/share/datasets/fashion-mnist", split="train"|"test", ...}
--       the IDX .gz files (train-images-idx3-ubyte.gz, ...), (N, 28, 28) u8, labels 0..9
--   data.TensorDataset(images, [labels], {layout="nchw"|"nhwc"})  in-memory tensors: u8 images
--       go through the C loader; float images (N, C, H, W) are batched in Lua
--   Common options: classes = {207, 250} keeps those labels (class names such as "n02099601" work
--   for image folders); max_per_class = 500 keeps the first
--   500 of each class (dataset order); relabel = true maps the kept classes to 0..K-1 (in the
--   order given). dataset:subset{...} applies the same options later; #dataset is its size.
--
-- Loader:
--   local loader = data.DataLoader(dataset, {batch_size = 32, shuffle = true, seed = 0,
--       drop_last = true, image_size = 64 (or {h, w}), resize = "center"|"crop"|"stretch"|"none",
--       pad = 0, pad_value = 0 (pixel units), hflip = false, channels = 3|1, num_workers = 1,
--       prefetch = 2, device = "cpu", dtype = "f32", range = "sym"|"unit"|"u8",
--       on_error = "skip"|"error"})
--   loader:next() -> {x = (B, C, H, W), y = (B) i64 labels or nil, index = (B) i64 1-based item
--       numbers, position = stream position of this batch (0-based)}
--   for batch in loader:iter() do ... end      endless, over epochs
--   for batch in loader:epoch_iter() do ... end the rest of the current epoch
--   loader:state_dict() -> {position=, seed=, batch_size=, num_items=}; loader:load_state_dict(sd)
--   loader:epoch(), loader:batches_per_epoch(), loader:position(), loader:bad_items(), loader:close()
--
-- The stream is a function of (seed, position) alone: epoch e is a Philox-drawn permutation of
-- the items, flips are Philox-drawn per (epoch, item); decoding runs on num_workers background
-- threads, prefetch batches ahead. Images that cannot be read are skipped (their batch is
-- shorter), counted once in bad_items(), and reported on stderr; on_error = "error" raises
-- instead. x is mapped to [-1, 1] (range = "sym") NCHW f32 and moved to the device.
local ad = require "advdiff"

local data = {}

local function fail(fname, fmt, ...)
  error(string.format("data.%s: " .. fmt, fname, ...), 3)
end

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end

---------------------------------------------------------------------------- datasets

local Dataset = {}
Dataset.__index = Dataset
Dataset.__len = function(self) return self.n end
data.Dataset = Dataset

local function new_dataset(fields)
  local d = setmetatable(fields, Dataset)
  d.n = d.n or #(d.paths or d.rows or {})
  return d
end

--- Label of item i (1-based), or nil.
function Dataset:label(i) return self.labels and self.labels[i] end

-- the item list after class filtering / max_per_class / relabelling
function Dataset:subset(opts)
  opts = opts or {}
  local classes, maxpc, relabel, idx = opts.classes, opts.max_per_class, opts.relabel, opts.indices
  if classes == nil and maxpc == nil and not relabel and idx == nil then return self end
  if (classes or maxpc or relabel) and not self.labels then
    fail("subset", "classes/max_per_class/relabel need labels, and this dataset has none")
  end
  local keep_class, remap
  if classes ~= nil then
    if type(classes) ~= "table" or #classes == 0 then fail("subset", "classes must be a non-empty list of labels") end
    keep_class, remap = {}, {}
    for k, c in ipairs(classes) do
      if type(c) == "string" and self.classes then
        -- a class name (an image folder's sub-folder): its label
        for i, name in ipairs(self.classes) do if name == c then c = i - 1; break end end
      end
      if math.type(c) ~= "integer" then fail("subset", "classes[%d] must be an integer label or a class name, got %s", k, tostring(c)) end
      keep_class[c] = true
      remap[c] = k - 1
    end
  elseif relabel then
    local seen, list = {}, {}
    for i = 1, self.n do
      local c = self.labels[i]
      if not seen[c] then seen[c] = true; list[#list + 1] = c end
    end
    table.sort(list)
    remap = {}
    for k, c in ipairs(list) do remap[c] = k - 1 end
  end
  if maxpc ~= nil and (math.type(maxpc) ~= "integer" or maxpc < 1) then
    fail("subset", "max_per_class must be a positive integer, got %s", tostring(maxpc))
  end
  local picked = {}
  if idx then
    for k, i in ipairs(idx) do
      if math.type(i) ~= "integer" or i < 1 or i > self.n then fail("subset", "indices[%d] = %s is not an item (1..%d)", k, tostring(i), self.n) end
      picked[#picked + 1] = i
    end
  else
    local count = {}
    for i = 1, self.n do
      local c = self.labels and self.labels[i]
      if keep_class == nil or keep_class[c] then
        local k = (count[c or 0] or 0) + 1
        if maxpc == nil or k <= maxpc then
          count[c or 0] = k
          picked[#picked + 1] = i
        end
      end
    end
  end
  if #picked == 0 then fail("subset", "no item is left after filtering") end
  local out = {}
  for k, v in pairs(self) do out[k] = v end
  out.n = #picked
  if self.paths then
    out.paths = {}
    for k, i in ipairs(picked) do out.paths[k] = self.paths[i] end
  end
  if self.kind == "array" then
    out.rows = {}
    for k, i in ipairs(picked) do out.rows[k] = self.rows and self.rows[i] or i - 1 end
  end
  if self.labels then
    out.labels = {}
    for k, i in ipairs(picked) do
      local c = self.labels[i]
      out.labels[k] = (relabel and remap) and remap[c] or c
    end
  end
  if self.kind == "tensor" then
    out.picked = {}
    for k, i in ipairs(picked) do out.picked[k] = self.picked and self.picked[i] or i end
  end
  return setmetatable(out, Dataset)
end

function Dataset:__tostring()
  return string.format("Dataset(%s, %d items%s)", self.kind, self.n, self.labels and ", labelled" or "")
end

local IMAGE_EXT = { png = true, jpg = true, jpeg = true, bmp = true }

local function list_dir(path)
  local entries, err = ad._listdir(path)
  if not entries then return nil, err end
  table.sort(entries, function(a, b) return a.name < b.name end)
  return entries
end

local function has_ext(name, exts)
  local ext = name:match("%.([^./]+)$")
  return ext ~= nil and exts[ext:lower()] == true
end

--- ImageFolder(root, opts): class sub-folders, or a labels file.
function data.ImageFolder(root, opts)
  opts = opts or {}
  if type(root) ~= "string" then fail("ImageFolder", "root must be a directory path, got %s", type(root)) end
  local exts = IMAGE_EXT
  if opts.extensions then
    exts = {}
    for _, e in ipairs(opts.extensions) do exts[(e:gsub("^%.", "")):lower()] = true end
  end
  local paths, labels, classes = {}, {}, {}
  if opts.labels_file then
    local f, err = io.open(opts.labels_file, "r")
    if not f then fail("ImageFolder", "cannot read the labels file: %s", err) end
    local lineno = 0
    for line in f:lines() do
      lineno = lineno + 1
      local l = line:gsub("#.*$", ""):match("^%s*(.-)%s*$")
      if l ~= "" then
        local p, lab = l:match("^(.-)[%s,]+(-?%d+)$")
        if not p then
          f:close()
          fail("ImageFolder", "%s:%d: expected 'path label', got '%s'", opts.labels_file, lineno, line)
        end
        paths[#paths + 1] = p:sub(1, 1) == "/" and p or (root .. "/" .. p)
        labels[#labels + 1] = math.tointeger(tonumber(lab))
      end
    end
    f:close()
  else
    local entries, err = list_dir(root)
    if not entries then fail("ImageFolder", "%s", err) end
    local dirs = {}
    for _, e in ipairs(entries) do if e.dir then dirs[#dirs + 1] = e.name end end
    if #dirs == 0 then
      -- a flat folder: unlabelled images
      labels = nil
      for _, e in ipairs(entries) do
        if not e.dir and has_ext(e.name, exts) then paths[#paths + 1] = root .. "/" .. e.name end
      end
    else
      for ci, d in ipairs(dirs) do
        classes[ci] = d
        local files = list_dir(root .. "/" .. d) or {}
        for _, e in ipairs(files) do
          if not e.dir and has_ext(e.name, exts) then
            paths[#paths + 1] = root .. "/" .. d .. "/" .. e.name
            labels[#labels + 1] = ci - 1
          end
        end
      end
    end
  end
  if #paths == 0 then fail("ImageFolder", "no images found under '%s'", root) end
  local ds = new_dataset { kind = "files", paths = paths, labels = labels, classes = classes, root = root }
  return ds:subset(opts)
end

local function labels_list(t, n, fname)
  if t == nil then return nil end
  if type(t) == "table" then
    if #t ~= n then fail(fname, "%d labels for %d images", #t, n) end
    return t
  end
  if not ad.is_tensor(t) or t:dim() ~= 1 then fail(fname, "labels must be a 1-D tensor or a list") end
  if t:shape()[1] ~= n then fail(fname, "%d labels for %d images", t:shape()[1], n) end
  local l = t:long():tolist()
  for i = 1, #l do l[i] = math.tointeger(l[i]) end
  return l
end

--- NpzBatch(path, opts): arr_0 (N, H, W, C) u8 images, arr_1 labels if present.
function data.NpzBatch(path, opts)
  opts = opts or {}
  local t = ad.load(path)
  if type(t) ~= "table" or not ad.is_tensor(t.arr_0) then fail("NpzBatch", "'%s' has no arr_0 array", path) end
  local imgs = t.arr_0
  local s = imgs:shape()
  if imgs:dtype() ~= "u8" or #s ~= 4 then
    fail("NpzBatch", "arr_0 must be (N, H, W, C) u8 as guided-diffusion writes it, got %s %s", imgs:dtype(), shape_str(s))
  end
  local ds = new_dataset { kind = "array", images = imgs, hwc = true, n = s[1], labels = labels_list(t.arr_1, s[1], "NpzBatch") }
  return ds:subset(opts)
end

local FMNIST_CLASSES = { "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot" }

--- FashionMNIST{root=, split="train"|"test"}: Debian's dataset-fashion-mnist files.
function data.FashionMNIST(opts)
  opts = opts or {}
  local root = opts.root or "/usr/share/datasets/fashion-mnist"
  local split = opts.split or "train"
  local prefix = split == "train" and "train" or split == "test" and "t10k" or nil
  if not prefix then fail("FashionMNIST", "split must be 'train' or 'test', got '%s'", tostring(split)) end
  local function find(kind)
    for _, name in ipairs { prefix .. "-" .. kind .. "-idx%d-ubyte.gz", prefix .. "-" .. kind .. "-idx%d-ubyte" } do
      for _, d in ipairs { 3, 1 } do
        local p = root .. "/" .. string.format(name, d)
        local f = io.open(p, "rb")
        if f then f:close(); return p end
      end
    end
    fail("FashionMNIST", "no %s %s file under '%s' (install Debian's dataset-fashion-mnist)", split, kind, root)
  end
  local imgs = ad._read_idx(find("images"))
  local labs = ad._read_idx(find("labels"))
  local n = imgs:shape()[1]
  local ds = new_dataset { kind = "array", images = imgs, hwc = true, n = n, labels = labels_list(labs, n, "FashionMNIST"),
                           classes = FMNIST_CLASSES }
  return ds:subset(opts)
end

--- TensorDataset(images, labels, {layout=}): u8 images are (N, C, H, W) by default
-- (layout = "nhwc" for NumPy's order) or (N, H, W); float images (N, C, H, W) in the range the
-- caller chose (passed through unchanged apart from resizing, padding and flipping).
function data.TensorDataset(images, labels, opts)
  if type(labels) == "table" and not ad.is_tensor(labels) and labels[1] == nil and next(labels) ~= nil then
    opts, labels = labels, nil
  end
  opts = opts or {}
  if not ad.is_tensor(images) then fail("TensorDataset", "images must be a tensor") end
  local s = images:shape()
  local n = s[1]
  if images:dtype() == "u8" then
    if #s ~= 3 and #s ~= 4 then fail("TensorDataset", "u8 images must be (N, C, H, W), (N, H, W, C) or (N, H, W), got %s", shape_str(s)) end
    local ds = new_dataset { kind = "array", images = images:cpu(), hwc = opts.layout == "nhwc", n = n,
                             labels = labels_list(labels, n, "TensorDataset") }
    return ds:subset(opts)
  end
  if #s ~= 4 then fail("TensorDataset", "float images must be (N, C, H, W), got %s", shape_str(s)) end
  local ds = new_dataset { kind = "tensor", images = images, n = n, labels = labels_list(labels, n, "TensorDataset") }
  return ds:subset(opts)
end

---------------------------------------------------------------------------- loader

local Loader = {}
Loader.__index = Loader
data.Loader = Loader

local RESIZE = { none = true, center = true, crop = true, stretch = true }
local RANGE = { sym = true, unit = true, u8 = true }

local function size_pair(v, fname)
  if v == nil then return 0, 0 end
  if type(v) == "number" then return math.tointeger(v), math.tointeger(v) end
  if type(v) == "table" and #v == 2 then return math.tointeger(v[1]), math.tointeger(v[2]) end
  fail(fname, "image_size must be a number or {height, width}")
end

function data.DataLoader(dataset, opts)
  if getmetatable(dataset) ~= Dataset then fail("DataLoader", "expected a dataset (data.ImageFolder, data.FashionMNIST, ...)") end
  opts = opts or {}
  local self = setmetatable({ dataset = dataset }, Loader)
  self.batch_size = opts.batch_size or 32
  if math.type(self.batch_size) ~= "integer" or self.batch_size < 1 then fail("DataLoader", "batch_size must be a positive integer") end
  self.shuffle = opts.shuffle ~= false
  self.drop_last = opts.drop_last ~= false
  self.seed = opts.seed or 0
  if math.type(self.seed) ~= "integer" then fail("DataLoader", "seed must be an integer") end
  self.device = opts.device or "cpu"
  self.dtype = opts.dtype or "f32"
  local h, w = size_pair(opts.image_size, "DataLoader")
  self.height, self.width = h, w
  self.resize = opts.resize or (h > 0 and "center" or "none")
  if not RESIZE[self.resize] then fail("DataLoader", "resize must be 'none', 'center', 'crop' or 'stretch', got '%s'", tostring(self.resize)) end
  self.pad = opts.pad or 0
  self.hflip = opts.hflip and true or false
  self.range = opts.range or "sym"
  if not RANGE[self.range] then fail("DataLoader", "range must be 'sym', 'unit' or 'u8', got '%s'", tostring(self.range)) end
  self.on_error = opts.on_error or "skip"
  if self.on_error ~= "skip" and self.on_error ~= "error" then fail("DataLoader", "on_error must be 'skip' or 'error'") end
  self.quiet = opts.quiet
  local n = dataset.n
  self.num_items = n
  self.bpe = self.drop_last and n // self.batch_size or (n + self.batch_size - 1) // self.batch_size
  if self.bpe == 0 then fail("DataLoader", "%d items make no full batch of %d (drop_last)", n, self.batch_size) end
  if dataset.kind == "tensor" then
    self.pos = 0
  else
    local o = {
      batch_size = self.batch_size, shuffle = self.shuffle, drop_last = self.drop_last, seed = self.seed,
      num_workers = opts.num_workers or 1, prefetch = opts.prefetch or 2, channels = opts.channels or 0,
      height = h, width = w, resize = self.resize, pad = self.pad, pad_value = opts.pad_value or 0,
      hflip = self.hflip, out = self.range, on_error = self.on_error, labels = dataset.labels,
    }
    if dataset.kind == "files" then o.paths = dataset.paths
    else
      o.images, o.hwc = dataset.images, dataset.hwc
      if dataset.rows then o.rows = dataset.rows end
    end
    self._c = ad._loader_new(o)
  end
  return self
end

function Loader:batches_per_epoch() return self.bpe end
function Loader:position() return self._c and self._c:position() or self.pos end
function Loader:epoch() return self:position() // self.bpe end
function Loader:bad_items() return self._c and self._c:bad_items() or 0 end
function Loader:__len() return self.bpe end

function Loader:close()
  if self._c then self._c:close() end
end

local function to_device(self, x)
  if self.dtype ~= x:dtype() and x:dtype() ~= "u8" then x = x:to(self.dtype) end
  if self.device ~= "cpu" then x = x:to { device = self.device } end
  return x
end

-- the Lua path: float tensors in memory, same order and flips as the C loader
function Loader:_next_tensor()
  local ds = self.dataset
  local s = self.pos
  self.pos = s + 1
  local e, b = s // self.bpe, s % self.bpe
  if self._order_epoch ~= e then
    self._order = ad._data_order(ds.n, self.seed, e, self.shuffle)
    self._order_epoch = e
  end
  local lo = b * self.batch_size
  local hi = math.min(lo + self.batch_size, ds.n)
  local items, rows = {}, {}
  for k = lo + 1, hi do
    local it = self._order[k]
    items[#items + 1] = it
    rows[#rows + 1] = (ds.picked and ds.picked[it + 1] or it + 1) - 1
  end
  local x = ds.images:index_select(1, ad.tensor(rows, { dtype = "i64" }))
  if self.height > 0 then
    local sh = x:shape()
    if sh[3] ~= self.height or sh[4] ~= self.width then
      x = ad.interpolate(x, { size = { self.height, self.width }, mode = "bilinear", align_corners = false })
    end
  end
  if self.hflip then
    local flips = ad._data_flips(self.seed, e, items)
    local W = x:shape()[4]
    local rev = {}
    for i = 1, W do rev[i] = W - i end
    local flipped = x:index_select(4, ad.tensor(rev, { dtype = "i64" }))
    local m = {}
    for i, f in ipairs(flips) do m[i] = f end
    local mask = ad.tensor(m, { dtype = "bool" }):view(-1, 1, 1, 1)
    x = ad.where(mask, flipped, x)
  end
  if self.pad > 0 then x = ad.pad(x, { self.pad, self.pad, self.pad, self.pad }) end
  local idx = {}
  for i, it in ipairs(items) do idx[i] = it + 1 end
  local y
  if ds.labels then
    local l = {}
    for i, it in ipairs(items) do l[i] = ds.labels[it + 1] end
    y = ad.tensor(l, { dtype = "i64" })
  end
  return { x = x, y = y, index = ad.tensor(idx, { dtype = "i64" }), position = s }
end

--- The next batch of the endless stream.
function Loader:next()
  local b
  if self._c then
    local x, y, items, pos = self._c:next()
    if not self.quiet then
      for _, w in ipairs(self._c:warnings()) do io.stderr:write("warning: ", w, "\n") end
    end
    b = { x = x, y = y, index = items + 1, position = pos }
  else
    b = self:_next_tensor()
  end
  b.x = to_device(self, b.x)
  if b.y and self.device ~= "cpu" then b.y = b.y:to { device = self.device } end
  return b
end

--- Endless iterator over batches (epochs follow one another).
function Loader:iter()
  return function() return self:next() end
end

--- Iterator over the remaining batches of the current epoch.
function Loader:epoch_iter()
  local e = self:epoch()
  return function()
    if self:epoch() ~= e then return nil end
    return self:next()
  end
end

--- The loader's position, enough to resume the stream exactly.
function Loader:state_dict()
  return { position = self:position(), seed = self.seed, batch_size = self.batch_size, num_items = self.num_items,
           shuffle = self.shuffle, drop_last = self.drop_last }
end

function Loader:load_state_dict(sd)
  if type(sd) ~= "table" or math.type(sd.position) ~= "integer" then
    error("DataLoader.load_state_dict: expected {position=integer, ...}", 2)
  end
  for _, k in ipairs { "seed", "batch_size", "num_items", "shuffle", "drop_last" } do
    if sd[k] ~= nil and sd[k] ~= self[k] then
      error(string.format("DataLoader.load_state_dict: the saved loader had %s = %s, this one has %s: the stream "
        .. "would not continue where it stopped", k, tostring(sd[k]), tostring(self[k])), 2)
    end
  end
  if self._c then self._c:seek(sd.position) else self.pos = sd.position end
end

--- Seek the stream (batch s is returned next).
function Loader:seek(s)
  if self._c then self._c:seek(s) else self.pos = s end
end

function Loader:__tostring()
  return string.format("DataLoader(%d items, batch_size=%d, %d batches/epoch, position %d)", self.num_items,
    self.batch_size, self.bpe, self:position())
end

return data
