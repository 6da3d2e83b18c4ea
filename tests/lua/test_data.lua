-- test_data.lua: ad.data — datasets (Fashion-MNIST IDX files, image folders,
-- .npz reference batches, in-memory tensors), the threaded C loader, seeded
-- and resumable shuffling, transforms, and bad images.
local ad = require "advdiff"
local T = require "advdiff.testing"
local data = ad.data

local FMNIST = "/usr/share/datasets/fashion-mnist"
local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

local function list(t) return t:tolist() end
local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local function have_fmnist()
  local f = io.open(FMNIST .. "/t10k-images-idx3-ubyte.gz", "rb")
  if f then f:close() return true end
  return false
end

test("Fashion-MNIST: the IDX .gz files, class filter, max_per_class, pad 28 -> 32, [-1, 1]", function()
  if not have_fmnist() then skip("dataset-fashion-mnist is not installed") end
  local imgs = ad._read_idx(FMNIST .. "/t10k-images-idx3-ubyte.gz")
  assert(imgs:dtype() == "u8" and same_list(imgs:shape(), { 10000, 28, 28 }))
  local ds = data.FashionMNIST { split = "test", classes = { 7, 9 }, max_per_class = 20 }
  assert(#ds == 40)
  local counts = {}
  for i = 1, #ds do counts[ds:label(i)] = (counts[ds:label(i)] or 0) + 1 end
  assert(counts[7] == 20 and counts[9] == 20)
  local rel = data.FashionMNIST { split = "test", classes = { 7, 9 }, max_per_class = 2, relabel = true }
  assert(rel:label(1) + rel:label(2) + rel:label(3) + rel:label(4) == 2)
  local loader = data.DataLoader(ds, { batch_size = 8, pad = 2, pad_value = 0, seed = 3 })
  local b = loader:next()
  assert(same_list(b.x:shape(), { 8, 1, 32, 32 }) and b.x:dtype() == "f32")
  assert(b.x:min():item() >= -1 and b.x:max():item() <= 1)
  -- the padding is black (-1 after mapping); the image inside is the IDX row
  T.assert_close(b.x:narrow(3, 1, 2), ad.full({ 8, 1, 2, 32 }, -1.0))
  local item = b.index:tolist()[1]
  local row = ds.rows[item]
  local want = imgs:narrow(1, row + 1, 1):float() / 127.5 - 1
  T.assert_close(b.x:narrow(1, 1, 1):narrow(3, 3, 28):narrow(4, 3, 28):reshape(1, 28, 28), want, { atol = 1e-6 })
  for _, y in ipairs(b.y:tolist()) do assert(y == 7 or y == 9) end
  -- gray to RGB for a 3-channel model
  local l3 = data.DataLoader(ds, { batch_size = 4, channels = 3, pad = 2 })
  assert(same_list(l3:next().x:shape(), { 4, 3, 32, 32 }))
  local ok, err = pcall(data.FashionMNIST, { split = "val" })
  assert(not ok and err:find("split must be"))
end)

test("shuffling is seeded, covers every item each epoch, and differs between epochs", function()
  local imgs = ad.randint(0, 256, { 10, 4, 4, 3 }, { dtype = "u8", generator = ad.Generator(1) })
  local ds = data.TensorDataset(imgs, { layout = "nhwc" })
  local function order(seed, nbatches)
    local l = data.DataLoader(ds, { batch_size = 3, seed = seed, drop_last = false })
    local out = {}
    for _ = 1, nbatches do for _, i in ipairs(list(l:next().index)) do out[#out + 1] = i end end
    l:close()
    return out
  end
  local a, b, c = order(5, 8), order(5, 8), order(6, 8)
  assert(same_list(a, b), "same seed, same order")
  assert(not same_list(a, c), "another seed, another order")
  -- epoch 1 = first 4 batches (3+3+3+1) covers 1..10 once; epoch 2 is another permutation
  local e1, e2 = {}, {}
  for i = 1, 10 do e1[i] = a[i] end
  for i = 11, 20 do e2[i - 10] = a[i] end
  local s1 = { table.unpack(e1) }; table.sort(s1)
  for i = 1, 10 do assert(s1[i] == i) end
  assert(not same_list(e1, e2))
  -- shuffle=false is the dataset order
  local l = data.DataLoader(ds, { batch_size = 5, shuffle = false })
  assert(same_list(list(l:next().index), { 1, 2, 3, 4, 5 }))
end)

test("the loader's position resumes the stream exactly (threads or not)", function()
  local imgs = ad.randint(0, 256, { 37, 3, 6, 6 }, { dtype = "u8", generator = ad.Generator(2) })
  local labels = {}
  for i = 1, 37 do labels[i] = i % 3 end
  local ds = data.TensorDataset(imgs, labels)
  local function make(workers)
    return data.DataLoader(ds, { batch_size = 5, seed = 11, hflip = true, num_workers = workers, prefetch = 4 })
  end
  local ref = make(0)
  local batches = {}
  for i = 1, 20 do batches[i] = ref:next() end
  for _, workers in ipairs { 0, 1, 3 } do
    local l = make(workers)
    for i = 1, 9 do T.assert_close(l:next().x, batches[i].x, { atol = 0, rtol = 0 }) end
    local sd = l:state_dict()
    assert(sd.position == 9 and sd.seed == 11)
    l:close()
    local l2 = make(workers)
    l2:load_state_dict(sd)
    for i = 10, 20 do
      local b = l2:next()
      T.assert_close(b.x, batches[i].x, { atol = 0, rtol = 0 })
      assert(same_list(list(b.y), list(batches[i].y)) and b.position == i - 1)
    end
    l2:close()
  end
  assert(ref:epoch() == 20 // ref:batches_per_epoch())
  local bad = make(0)
  local ok, err = pcall(bad.load_state_dict, bad, { position = 3, seed = 12 })
  assert(not ok and err:find("seed"))
end)

test("flips are random per item and epoch, and the float path draws the same stream", function()
  local x = ad.arange(0, 2 * 3 * 4 * 4, { dtype = "f32" }):view(2, 3, 4, 4)
  local u8 = ad.arange(0, 2 * 3 * 4 * 4, { dtype = "f32" }):view(2, 3, 4, 4):to("u8")
  local lf = data.DataLoader(data.TensorDataset(x), { batch_size = 2, hflip = true, seed = 4 })
  local lu = data.DataLoader(data.TensorDataset(u8), { batch_size = 2, hflip = true, seed = 4, range = "u8" })
  local flipped = 0
  for _ = 1, 6 do
    local a, b = lf:next(), lu:next()
    assert(same_list(list(a.index), list(b.index)))
    T.assert_close(a.x, b.x:float(), { atol = 0 })
    for i = 1, 2 do
      local row = a.x:narrow(1, i, 1)
      local orig = x:narrow(1, list(a.index)[i], 1)
      if (row - orig):abs():max():item() > 0 then
        flipped = flipped + 1
        T.assert_close(row:narrow(4, 1, 1), orig:narrow(4, 4, 1))
      end
    end
  end
  assert(flipped > 0 and flipped < 12, "some but not all images flipped: " .. flipped)
end)

local function write_png(path, c, h, w, seed)
  local img = ad.randint(0, 256, { c, h, w }, { dtype = "u8", generator = ad.Generator(seed) })
  ad.image.save(path, img)
  return img
end

test("image folders: classes from sub-folders, resize + center crop, corrupt images skipped and counted", function()
  local root = TMP .. "/folder"
  os.execute("mkdir -p " .. root .. "/cat " .. root .. "/dog")
  write_png(root .. "/cat/a.png", 3, 12, 16, 1)
  write_png(root .. "/cat/b.png", 3, 8, 8, 2)
  write_png(root .. "/dog/c.png", 1, 10, 10, 3)
  write_png(root .. "/dog/d.png", 3, 16, 16, 4)
  local f = io.open(root .. "/dog/corrupt.png", "wb"); f:write("this is not a png at all"); f:close()
  local png = io.open(root .. "/cat/b.png", "rb"):read("a")
  f = io.open(root .. "/cat/truncated.png", "wb"); f:write(png:sub(1, #png // 2)); f:close()
  f = io.open(root .. "/dog/notes.txt", "w"); f:write("ignored"); f:close()
  local ds = data.ImageFolder(root)
  assert(#ds == 6 and ds.classes[1] == "cat" and ds.classes[2] == "dog")
  local loader = data.DataLoader(ds, { batch_size = 6, image_size = 8, shuffle = false, quiet = true })
  local b = loader:next()
  assert(same_list(b.x:shape(), { 4, 3, 8, 8 }), "the two bad images are skipped")
  assert(loader:bad_items() == 2)
  assert(same_list(list(b.y), { 0, 0, 1, 1 }))
  -- a second epoch does not count them again
  loader:next()
  assert(loader:bad_items() == 2)
  -- box halving: a 16x16 image becomes 2x2 means, rounded to 8 bits after the horizontal and
  -- after the vertical pass, as PIL's separable BOX resize
  local d = ad.image.load(root .. "/dog/d.png"):float()
  local rows = ((d:narrow(2, 1, 2):narrow(3, 1, 2):sum(3) / 2) + 0.5):floor()
  local want = ((rows:sum(2) / 2) + 0.5):floor()
  T.assert_close((b.x:narrow(1, 4, 1):narrow(3, 1, 1):narrow(4, 1, 1):reshape(3) + 1) * 127.5, want:reshape(3), { atol = 1e-3 })
  -- on_error = "error" names the file
  local strict = data.DataLoader(ds, { batch_size = 6, image_size = 8, shuffle = false, on_error = "error" })
  local ok, err = pcall(strict.next, strict)
  assert(not ok and (err:find("truncated.png") or err:find("corrupt.png")), err)
  -- mixed sizes without an output size are an error naming the image
  local nosize = data.DataLoader(ds, { batch_size = 6, shuffle = false, on_error = "error", quiet = true })
  ok, err = pcall(nosize.next, nosize)
  assert(not ok)
  -- class filter by label value
  assert(#data.ImageFolder(root, { classes = { 1 } }) == 3)
  local cats = data.ImageFolder(root, { classes = { "cat" }, max_per_class = 2 })
  assert(#cats == 2 and cats:label(1) == 0)
end)

test("image folders with a labels file", function()
  local root = TMP .. "/flat"
  os.execute("mkdir -p " .. root)
  write_png(root .. "/x.png", 3, 8, 8, 5)
  write_png(root .. "/y.png", 3, 8, 8, 6)
  local f = io.open(root .. "/labels.txt", "w")
  f:write("# path label\nx.png 207\ny.png,250\n")
  f:close()
  local ds = data.ImageFolder(root, { labels_file = root .. "/labels.txt" })
  assert(#ds == 2 and ds:label(1) == 207 and ds:label(2) == 250)
  local b = data.DataLoader(ds, { batch_size = 2, shuffle = false }):next()
  assert(same_list(list(b.y), { 207, 250 }))
  local unl = data.ImageFolder(root)
  assert(#unl == 2 and unl.labels == nil)
  assert(data.DataLoader(unl, { batch_size = 2 }):next().y == nil)
end)

test("npz reference batches: arr_0 NHWC u8 and arr_1 labels", function()
  local x = ad.randint(0, 256, { 6, 5, 5, 3 }, { dtype = "u8", generator = ad.Generator(9) })
  local y = ad.tensor({ 3, 1, 4, 1, 5, 9 }, { dtype = "i64" })
  local path = TMP .. "/ref.npz"
  ad.save(path, { arr_0 = x, arr_1 = y })
  local ds = data.NpzBatch(path, { classes = { 1, 9 } })
  assert(#ds == 3)
  local b = data.DataLoader(ds, { batch_size = 3, shuffle = false, drop_last = false }):next()
  assert(same_list(list(b.y), { 1, 1, 9 }))
  local want = x:narrow(1, 2, 1):permute(1, 4, 2, 3):float() / 127.5 - 1
  T.assert_close(b.x:narrow(1, 1, 1), want, { atol = 1e-6 })
end)

test("the device and dtype of batches, epoch iteration, bad arguments", function()
  local ds = data.TensorDataset(ad.zeros(7, 3, 4, 4, { dtype = "u8" }))
  local l = data.DataLoader(ds, { batch_size = 2, dtype = "f64" })
  assert(l:next().x:dtype() == "f64")
  local l2 = data.DataLoader(ds, { batch_size = 2, drop_last = false })
  local n = 0
  for _ in l2:epoch_iter() do n = n + 1 end
  assert(n == 4 and l2:batches_per_epoch() == 4)
  local function err(f, ...) local ok, e = pcall(f, ...); assert(not ok); return e end
  assert(err(data.DataLoader, ds, { batch_size = 8 }):find("no full batch"))
  assert(err(data.DataLoader, ds, { resize = "zoom" }):find("resize must be"))
  assert(err(data.DataLoader, {}, {}):find("expected a dataset"))
  assert(err(ds.subset, data.TensorDataset(ad.zeros(2, 3, 4, 4, { dtype = "u8" }), { 0, 1 }), { classes = { 5 } }):find("no item is left"))
  assert(err(ad._read_idx, TMP .. "/nonexistent.gz"):find("cannot open"))
  local f = io.open(TMP .. "/bad.idx", "wb"); f:write("\0\0\8\3\0\0\0\9"); f:close()
  assert(err(ad._read_idx, TMP .. "/bad.idx"):find("truncated"))
  f = io.open(TMP .. "/bad2.idx", "wb"); f:write("PK\3\4 not idx"); f:close()
  assert(err(ad._read_idx, TMP .. "/bad2.idx"):find("not an IDX file"))
end)

os.execute("rm -rf " .. TMP)
