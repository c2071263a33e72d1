#!/usr/bin/env bash
# The Free Spoken Digit Dataset (FSDD; Zohar Jackson and contributors, github.com/Jakobovski/free-spoken-digit-dataset,
# CC BY-SA 4.0): real recordings of the digits 0-9, 8 kHz mono 16-bit WAV, named {digit}_{speaker}_{index}.wav.
#
#   bash scripts/fsdd.sh fetch [DIR]          git clone the whole dataset (3,000 recordings, 6 speakers) into DIR
#                                             (default data/fsdd, git-ignored) and lay it out as below
#   bash scripts/fsdd.sh layout RECORDINGS OUT
#                                             lay out any folder of FSDD-named recordings (e.g. ../shared/data/fsdd)
#
# The layout is what classify train/eval read (one folder per class), by speaker, with symbolic links:
#   OUT/by-speaker/<speaker>/<digit>/*.wav        each speaker alone
#   OUT/loso/<speaker>/train/<digit>/*.wav        every other speaker      (leave one speaker out: the test voice is
#   OUT/loso/<speaker>/test/<digit>/*.wav         this speaker only         never heard in training)
# so that, for example:
#   mambakit classify train --train OUT/loso/george/train --out runs/fsdd-george
#   mambakit classify eval --model runs/fsdd-george --data OUT/loso/george/test
#   mambakit classify baseline --train OUT/loso/george/train --data OUT/loso/george/test
set -euo pipefail

layout() {
  local rec=$1 out=$2
  [ -d "$rec" ] || { echo "fsdd.sh: $rec is not a directory" >&2; exit 2; }
  rec=$(cd "$rec" && pwd)
  local files
  files=$(cd "$rec" && ls | grep -E '^[0-9]_[A-Za-z]+_[0-9]+\.wav$' || true)
  [ -n "$files" ] || { echo "fsdd.sh: no {digit}_{speaker}_{index}.wav files in $rec" >&2; exit 2; }
  local speakers
  speakers=$(echo "$files" | cut -d_ -f2 | sort -u)
  rm -rf "$out/by-speaker" "$out/loso"
  for f in $files; do
    local d=${f%%_*} s
    s=$(echo "$f" | cut -d_ -f2)
    mkdir -p "$out/by-speaker/$s/$d"
    ln -s "$rec/$f" "$out/by-speaker/$s/$d/$f"
    for held in $speakers; do
      local split=train
      [ "$held" = "$s" ] && split=test
      mkdir -p "$out/loso/$held/$split/$d"
      ln -s "$rec/$f" "$out/loso/$held/$split/$d/$f"
    done
  done
  echo "$(echo "$files" | wc -l) recordings of $(echo "$speakers" | wc -l) speakers ($(echo $speakers)) laid out in $out"
}

case "${1:-}" in
  fetch)
    dir=${2:-data/fsdd}
    if [ ! -d "$dir/repo/.git" ]; then
      command -v git >/dev/null || { echo "fsdd.sh: git is needed (apt-get install git)" >&2; exit 2; }
      git clone --depth 1 https://github.com/Jakobovski/free-spoken-digit-dataset "$dir/repo"
    fi
    echo "FSDD at commit $(git -C "$dir/repo" rev-parse HEAD)"
    layout "$dir/repo/recordings" "$dir"
    ;;
  layout)
    [ $# -eq 3 ] || { echo "usage: fsdd.sh layout RECORDINGS OUT" >&2; exit 2; }
    layout "$2" "$3"
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    [ "${1:-}" = -h ] || [ "${1:-}" = --help ] || exit 2
    ;;
esac
