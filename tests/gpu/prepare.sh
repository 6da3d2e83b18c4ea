#!/bin/sh
# prepare.sh: run HERE (the development machine, with network) before sending
# the tree to a GPU machine. The GPU machines reach no network and their image
# may lack the CPU build dependencies, and the golden fixtures live outside the
# repository (../shared/fixtures), so this puts both inside the checkout, in
# folders that git ignores (.git/info/exclude) and the device tool carries:
#   .gpu-deps/      Debian packages: Lua 5.4, OpenBLAS, readline, stb, zlib, pkgconf
#                   (run.sh unpacks them only for what the GPU machine lacks)
#   .gpu-fixtures/  adm_tiny, resnet18, diffusion (about 45 MB of the 64 MB a run may carry)
# Then:  run(command="bash tests/gpu/run.sh", carry=[".gpu-deps", ".gpu-fixtures"], timeout_s=600)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
fixtures=${ADVDIFF_FIXTURES:-$root/../shared/fixtures}

exclude="$root/.git/info/exclude"
for d in /.gpu-deps/ /.gpu-fixtures/ /build-gpu/ /gpu-out/; do
  grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >> "$exclude"
done

mkdir -p .gpu-deps
(cd .gpu-deps && apt-get download \
  liblua5.4-0 liblua5.4-dev \
  libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0 \
  libreadline8 libreadline-dev \
  libstb0 libstb-dev \
  zlib1g zlib1g-dev \
  pkgconf pkgconf-bin libpkgconf3 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
ls .gpu-deps/*.deb >/dev/null

rm -rf .gpu-fixtures
mkdir -p .gpu-fixtures
for d in adm_tiny resnet18 diffusion; do
  cp -r "$fixtures/$d" .gpu-fixtures/
done
cp "$fixtures/README.md" .gpu-fixtures/ 2>/dev/null || true
chmod -R u+w .gpu-fixtures
du -sh .gpu-deps .gpu-fixtures
