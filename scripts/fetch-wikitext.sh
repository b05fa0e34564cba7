#!/usr/bin/env bash
# Downloads WikiText (CC BY-SA 3.0, Merity et al. 2016) into ./data/<name>/ on a machine with internet.
#   scripts/fetch-wikitext.sh wikitext-2      (~4 MB)
#   scripts/fetch-wikitext.sh wikitext-103    (~180 MB)
# Then point studio at it: data.dir in the config, or STUDIO_DATA=$PWD/data (./data is the default).
set -euo pipefail
name="${1:-wikitext-2}"
case "$name" in
  wikitext-2|wikitext-103) inner="$name" ;;
  *) echo "usage: $0 wikitext-2|wikitext-103" >&2; exit 2 ;;
esac
dest="${STUDIO_DATA:-data}"
mkdir -p "$dest"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
# The original host first, then the S3 bucket it was published in.
for url in "https://wikitext.smerity.com/$name-v1.zip" "https://s3.amazonaws.com/research.metamind.io/wikitext/$name-v1.zip"; do
  echo "downloading $url"
  if curl -fL --retry 3 -o "$tmp/$name.zip" "$url"; then break; fi
done
[ -s "$tmp/$name.zip" ] || { echo "download failed: fetch $name-v1.zip by hand and unzip its wiki.*.tokens into $dest/$name" >&2; exit 1; }
unzip -q "$tmp/$name.zip" -d "$tmp"
mkdir -p "$dest/$name"
cp "$tmp/$inner"/wiki.{train,valid,test}.tokens "$dest/$name/"
wc -l "$dest/$name"/wiki.*.tokens
echo "WikiText is in $dest/$name (studio reads it as data.dataset \"$name\")"
