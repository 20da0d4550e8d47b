#!/usr/bin/env bash
# Installs every Debian package the project needs, idempotently, with apt-get only.
# Versions tested: DEPENDENCIES.md. Run as root (or with sudo available).
set -euo pipefail
PKGS=(
  build-essential pkg-config
  libopenblas-dev          # sgemm for the CPU backend (headers)
  libopenblas0-openmp      # the OpenMP-threaded OpenBLAS we link (shares our OpenMP pool)
  libuv1-dev               # data loader event loop
  libsqlite3-dev sqlite3   # profiler reports
  libturbojpeg0-dev libjpeg62-turbo-dev  # JPEG decode (TurboJPEG API; jconfig.h for the version)
  libjansson-dev           # JSON (targets, COCO annotations)
  libspng-dev              # PNG decode
  libhttp-parser-dev       # HTTP request parsing (detr-prof serve)
  chromium                 # headless browser for the HTML report and dashboard tests
  python3-torch python3-scipy python3-numpy   # PyTorch reference for tests and benchmarks
  python3-torchvision python3-pil             # reference transforms / DataLoader benchmark
)
# Node.js and npm install the charting library embedded into detr-prof (package.json); Debian's
# packages unless a Node.js with npm is already installed (e.g. NodeSource's, which bundles npm).
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
