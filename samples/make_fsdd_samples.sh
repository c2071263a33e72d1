#!/usr/bin/env bash
# Copies a small subset of the Free Spoken Digit Dataset into samples/audio/fsdd/ (real speech, 8 kHz, mono, 16-bit
# WAV), laid out for classify train/eval with one speaker left out:
#   fsdd/train/<digit>/<digit>_<speaker>_<n>.wav   george, jackson, lucas: recordings 0-4 of every digit (150 files)
#   fsdd/test/<digit>/<digit>_nicolas_<n>.wav      nicolas: recordings 0-4 of every digit (50 files), never heard in
#                                                  training
# Files are copied byte for byte from RECORDINGS (default ../shared/data/fsdd, else data/fsdd/repo/recordings from
# scripts/fsdd.sh fetch) and checked against samples/audio/fsdd/SHA256SUMS (`--write-sums` rewrites it).
# FSDD: Zohar Jackson and contributors, github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0 (samples/README.md).
set -euo pipefail
cd "$(dirname "$0")"
write_sums=0
rec=""
for a in "$@"; do
  case "$a" in
    --write-sums) write_sums=1 ;;
    *) rec=$a ;;
  esac
done
if [ -z "$rec" ]; then
  for c in ../../shared/data/fsdd ../data/fsdd/repo/recordings; do [ -d "$c" ] && { rec=$c; break; }; done
fi
[ -n "$rec" ] && [ -d "$rec" ] || { echo "make_fsdd_samples.sh: no FSDD recordings (give the folder, or run scripts/fsdd.sh fetch)" >&2; exit 2; }
out=audio/fsdd
rm -rf "$out/train" "$out/test"
for d in 0 1 2 3 4 5 6 7 8 9; do
  mkdir -p "$out/train/$d" "$out/test/$d"
  for n in 0 1 2 3 4; do
    for s in george jackson lucas; do cp "$rec/${d}_${s}_${n}.wav" "$out/train/$d/"; done
    cp "$rec/${d}_nicolas_${n}.wav" "$out/test/$d/"
  done
done
cd "$out"
if [ "$write_sums" = 1 ]; then
  find train test -name '*.wav' | sort | xargs sha256sum > SHA256SUMS
  echo "wrote $out/SHA256SUMS"
else
  sha256sum --quiet -c SHA256SUMS
  echo "samples/$out: $(find train test -name '*.wav' | wc -l) files, checksums match"
fi
