#!/usr/bin/env bash
# Run HERE (the development machine) before a GPU call: fills the git-ignored .gpu/ folder with what the GPU
# machine cannot fetch (header-only libraries from apt, WikiText-2). Name ".gpu" in the device call's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${STUDIO_DATA:-../shared/data}"
rm -rf .gpu && mkdir -p .gpu/include .gpu/data
cp -r /usr/include/nlohmann /usr/include/CLI .gpu/include/
cp -r "$data/wikitext-2" .gpu/data/
du -sh .gpu
