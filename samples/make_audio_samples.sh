#!/usr/bin/env bash
# Regenerates samples/audio/ with Debian 12 (bookworm) tools, deterministically:
#   digits/<digit>/<voice>_<pitch>_<speed>.wav  spoken digits "zero" ... "nine" synthesised by espeak-ng, resampled,
#                                               trimmed, peak-normalised and centred in exactly 1 s by sox
#                                               (16 kHz, mono, 16-bit PCM; one folder per class)
#   music/melody.wav                            a few seconds of a melody with harmonics, synthesised by sox
#   asterisk-digits/<digit>/allison.wav         real recordings (one speaker, 8 kHz) copied byte for byte from the
#                                               asterisk-core-sounds-en-wav package, fetched and unpacked without
#                                               installing it (apt-get download, dpkg-deb -x)
# The output is checked against samples/audio/SHA256SUMS at the end; `--write-sums` rewrites that file instead.
# Needs espeak-ng and sox (apt-get install --no-install-recommends espeak-ng sox); the committed checksums were made
# with the versions in `tools` below. The WAV bytes are compared, so another version may give other files.
# Sources, sizes and licences: samples/README.md.
set -euo pipefail
export LC_ALL=C

# package  version the committed files were made with
tools=(
  "espeak-ng 1.51+dfsg-10+deb12u2"
  "espeak-ng-data 1.51+dfsg-10+deb12u2"
  "sox 14.4.2+git20190427-3.5"
  "libsox3 14.4.2+git20190427-3.5"
)

# package  version  pool path  sha256
asterisk_deb="asterisk-core-sounds-en-wav 1.6.1-1 a/asterisk-core-sounds/asterisk-core-sounds-en-wav_1.6.1-1_all.deb 2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d"

digits=(zero one two three four five six seven eight nine)

# Six espeak-ng voices (language + variant: m = male, f = female), each spoken at two (pitch, speed) settings. Every
# voice gets both pitches and both speeds, and every (pitch, speed) pair occurs with three voices:
#   voice  pitch(0-99) speed(words/min)
clips=(
  "en+m1      35 140" "en+m1      65 190"
  "en+m3      35 190" "en+m3      65 140"
  "en-us+m7   35 140" "en-us+m7   65 190"
  "en+f2      35 190" "en+f2      65 140"
  "en-us+f3   35 140" "en-us+f3   65 190"
  "en-us+f4   35 190" "en-us+f4   65 140"
)

rate=16000      # samples per second of the synthesised clips
length=16000    # samples per digit clip: exactly 1 s

# Every sox call: -R seeds sox's random generators with a fixed value, -D turns dithering off (dither is noise).
sx() { sox -R -D "$@"; }

check_tools() {
  local pkg want got
  for entry in "${tools[@]}"; do
    read -r pkg want <<<"$entry"
    got=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
    if [ -z "$got" ]; then
      echo "$pkg is not installed (apt-get install --no-install-recommends espeak-ng sox)" >&2; exit 1
    fi
    if [ "$got" != "$want" ]; then
      echo "warning: $pkg is $got, the committed samples were made with $want; the bytes may differ" >&2
    fi
  done
}

# digit_clip WORD VOICE PITCH SPEED OUT: espeak-ng's 22,050 Hz speech, resampled to 16 kHz (sox's high-quality
# `rate -h`), leading and trailing silence below -60 dBFS (0.1 %) cut, peak-normalised to -1 dBFS, then padded with
# zeros on both sides (the odd sample at the end) to exactly $length samples.
digit_clip() {
  local word=$1 voice=$2 pitch=$3 speed=$4 out=$5 tmp=$work/clip n pre post
  espeak-ng -v "$voice" -p "$pitch" -s "$speed" -w "$tmp.raw.wav" "$word"
  sx "$tmp.raw.wav" -r "$rate" -c 1 -b 16 "$tmp.trim.wav" rate -h \
    silence 1 1s 0.1% reverse silence 1 1s 0.1% reverse norm -1
  n=$(soxi -s "$tmp.trim.wav")
  if [ "$n" -gt "$length" ]; then
    echo "'$word' by $voice (pitch $pitch, speed $speed) is $n samples, longer than $length" >&2; exit 1
  fi
  pre=$(( (length - n) / 2 ))
  post=$(( length - n - pre ))
  sx "$tmp.trim.wav" "$out" pad "${pre}s" "${post}s"
  [ "$(soxi -s "$out")" -eq "$length" ] || { echo "$out is not $length samples" >&2; exit 1; }
}

# note FREQ SECONDS OUT: one note, the fundamental plus the 2nd and 3rd harmonics at half and a quarter of its
# amplitude (0.5, 0.25, 0.125: the sum stays below full scale), a 10-ms attack and a 60-ms release.
note() {
  local f=$1 d=$2 out=$3
  sx -n -r "$rate" -c 1 -b 16 "$out" \
    synth "$d" sine "$f" sine "$(awk -v f="$f" 'BEGIN { printf "%.4f", 2 * f }')" \
      sine "$(awk -v f="$f" 'BEGIN { printf "%.4f", 3 * f }')" \
    remix 1v0.5,2v0.25,3v0.125 fade q 0.01 "$d" 0.06
}

# melody OUT: the opening phrase of Beethoven's "Ode to Joy" (Symphony No. 9, public domain) in C major, equal
# temperament with A4 = 440 Hz: 15 notes, quarter notes of 0.3 s, 4.8 s in all. 16 kHz, mono, 16-bit.
melody() {
  local out=$1 i=0 parts=() semis dur f
  # semitones from A4 : duration in quarters (E4 = -5, F4 = -4, G4 = -2, D4 = -7, C4 = -9)
  local score="-5:1 -5:1 -4:1 -2:1 -2:1 -4:1 -5:1 -7:1 -9:1 -9:1 -7:1 -5:1 -5:1.5 -7:0.5 -7:2"
  for tok in $score; do
    semis=${tok%%:*}
    dur=$(awk -v q="${tok##*:}" 'BEGIN { printf "%.3f", 0.3 * q }')
    f=$(awk -v s="$semis" 'BEGIN { printf "%.4f", 440 * 2 ^ (s / 12) }')
    note "$f" "$dur" "$work/note$i.wav"
    parts+=("$work/note$i.wav")
    i=$((i + 1))
  done
  sx "${parts[@]}" "$out"
}

fetch_asterisk() {
  local dir=$1 pkg ver pool sum deb
  read -r pkg ver pool sum <<<"$asterisk_deb"
  deb="$dir/$(basename "$pool")"
  (cd "$dir" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1) ||
    curl -fsSL --retry 3 -o "$deb" "https://deb.debian.org/debian/pool/main/$pool" ||
    { echo "cannot fetch $pkg $ver (apt-get download and deb.debian.org failed)" >&2; exit 1; }
  echo "$sum  $deb" | sha256sum -c --status || { echo "SHA-256 mismatch: $deb" >&2; exit 1; }
  dpkg-deb -x "$deb" "$dir/$pkg"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cd "$(dirname "$0")"
  out=audio
  write_sums=0
  [ "${1:-}" = "--write-sums" ] && write_sums=1
  check_tools
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  rm -rf "$out/digits" "$out/music" "$out/asterisk-digits"
  mkdir -p "$out/music"

  # (1) Spoken digits: 10 words x 12 (voice, pitch, speed) settings = 120 clips of exactly 1 s.
  for word in "${digits[@]}"; do
    mkdir -p "$out/digits/$word"
    for c in "${clips[@]}"; do
      read -r voice pitch speed <<<"$c"
      digit_clip "$word" "$voice" "$pitch" "$speed" "$out/digits/$word/${voice}_${pitch}_${speed}.wav"
    done
  done

  # (2) Music-like audio: a synthesised melody.
  melody "$out/music/melody.wav"

  # (3) Real speech: Allison Smith's digit prompts for Asterisk (8 kHz, 16-bit PCM), copied unchanged and kept at
  # their native rate (MambaKit resamples to the model's rate when it reads them).
  fetch_asterisk "$work"
  src=$work/asterisk-core-sounds-en-wav/usr/share/asterisk/sounds/en_US_f_Allison/digits
  for i in "${!digits[@]}"; do
    mkdir -p "$out/asterisk-digits/${digits[$i]}"
    cp "$src/$i.wav" "$out/asterisk-digits/${digits[$i]}/allison.wav"
  done

  files=$(cd "$out" && find digits music asterisk-digits -name "*.wav" | sort)
  if [ $write_sums -eq 1 ]; then
    (cd "$out" && echo "$files" | xargs sha256sum > SHA256SUMS)
    echo "samples/audio: $(echo "$files" | wc -l) files, SHA256SUMS written" >&2
    exit 0
  fi
  # Check the files against the committed checksums, and that no file is missing from them.
  status=0
  (cd "$out" && sha256sum -c --quiet SHA256SUMS) || status=1
  listed=$(cut -c 67- "$out/SHA256SUMS" | sort)
  if [ "$listed" != "$files" ]; then echo "the files made differ from those in $out/SHA256SUMS" >&2; status=1; fi
  [ $status -eq 0 ] && echo "samples/audio: $(echo "$files" | wc -l) files, all match SHA256SUMS" >&2
  exit $status
fi
