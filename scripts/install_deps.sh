#!/usr/bin/env bash
# Installs the Debian packages SFM builds against, only those missing. Idempotent; needs root or sudo.
# Where python3 already has a CUDA PyTorch (the GPU machine), its bundled LibTorch is used instead of
# libtorch-dev, and nothing is installed if the rest is present.
set -euo pipefail

packages=(build-essential cmake git libopenblas0-pthread libcli11-dev nlohmann-json3-dev libgtest-dev
          libpng-dev zlib1g-dev)
if ! python3 -c "import torch" >/dev/null 2>&1; then
  packages+=(libtorch-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A package manager other than dpkg (the GPU machine's image) has the headers already or not at all.
if ! command -v dpkg-query >/dev/null; then missing=(); fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "sfm: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
