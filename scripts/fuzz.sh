#!/usr/bin/env bash
# Fuzzes MambaKit's input parsers with libFuzzer and AddressSanitizer (the package in fuzz/; RELIABILITY.md).
#
#   bash scripts/fuzz.sh [--seconds N] [--seed S] [--no-build] [TARGET...]
#
# Builds fuzz/ (release, -sanitize=fuzzer,address for every Swift module and the C of Yams), writes the seed corpora
# (fixed inputs made by the harness, plus small copies of Tests/MambaKitTests/Fixtures, samples/ and pipelines/),
# then runs every target (or those named) for N seconds each (default 60), one after another at nice 19. Per target
# it prints the executions, exec/s, corpus size, peak memory and what was found; findings stay in
# fuzz/artifacts/TARGET/ and the log in fuzz/logs/TARGET.log. The corpus in fuzz/corpus/TARGET/ grows from run to
# run. --seed S is libFuzzer's seed (default 0: a random one); CI passes 1, so its smoke run repeats. Exits 1 if any
# target found a crash, a timeout, a leak or an out-of-memory input; 2 on a harness failure.
#
# Installs nothing but what scripts/install-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
seed=0
build=1
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --seed) seed="$2"; shift 2 ;;
    --seed=*) seed="${1#*=}"; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

fuzz=fuzz
bin=$fuzz/.build/release/MambaKitFuzz
if [ "$build" = 1 ]; then
  bash scripts/install-deps.sh
  # -sanitize=fuzzer: coverage instrumentation and libFuzzer; every Swift module of the build gets it (MambaKit and
  # Yams included), and -Xcc reaches the C targets (Yams' libyaml). Linked system libraries (zlib, libsndfile) are
  # not instrumented.
  nice -n 19 swift build --package-path $fuzz --scratch-path $fuzz/.build -c release \
    -Xswiftc -sanitize=fuzzer,address -Xcc -fsanitize=fuzzer-no-link,address
fi
[ -x "$bin" ] || { echo "fuzz.sh: $bin is missing (run without --no-build)" >&2; exit 2; }

declare -A maxlen
while read -r name len; do maxlen[$name]=$len; done < <(MAMBAKIT_FUZZ_LIST=1 "$bin")
if [ ${#targets[@]} -eq 0 ]; then
  while read -r name _; do targets+=("$name"); done < <(MAMBAKIT_FUZZ_LIST=1 "$bin")
fi
for t in "${targets[@]}"; do
  [ -n "${maxlen[$t]:-}" ] || { echo "fuzz.sh: unknown target $t (known: ${!maxlen[*]})" >&2; exit 2; }
done

# Seeds: rebuilt every run, never committed.
seeds=$fuzz/seeds
rm -rf "$seeds"
ASAN_OPTIONS=detect_leaks=0 MAMBAKIT_FUZZ_SEEDS=$seeds "$bin" >/dev/null
copy() {  # copy TARGET FILE...: the first maxlen[TARGET] bytes of each file, named after its path
  local t=$1; shift
  mkdir -p "$seeds/$t"
  for f in "$@"; do head -c "${maxlen[$t]}" "$f" > "$seeds/$t/repo-$(echo "$f" | tr '/' '_')"; done
}
fixtures=Tests/MambaKitTests/Fixtures
copy safetensors $(find $fixtures -name '*.safetensors' -size -600k | sort)
copy config $(find $fixtures -name config.json | sort)
copy fasta $(find samples/dna -name '*.gz' | sort)
copy faidx samples/dna/bgzf/genes.fasta.gz
copy pipeline pipelines/*.yaml
copy audio $(find samples/audio -name '*.wav' | sort | awk 'NR % 11 == 1')

mkdir -p $fuzz/corpus $fuzz/artifacts $fuzz/logs
# The harness writes each input to a file under this directory (in memory where /dev/shm exists); a crashed run
# cannot remove its own, so the script does.
work=$(mktemp -d "$( [ -w /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}" )/mambakit-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
found=()
printf '%-14s %10s %8s %7s %8s  %s\n' target executions exec/s corpus peak-MB result
for t in "${targets[@]}"; do
  mkdir -p "$fuzz/corpus/$t" "$fuzz/artifacts/$t"
  log=$fuzz/logs/$t.log
  before=$(ls "$fuzz/artifacts/$t" | wc -l)
  start=$(date +%s)
  set +e
  # SWIFT_BACKTRACE off: a Swift trap then aborts at once and libFuzzer reports it (the runtime's backtracer reads
  # freed memory while it works, which AddressSanitizer reported instead of the trap).
  SWIFT_BACKTRACE=enable=no MAMBAKIT_FUZZ_WORKDIR=$work MAMBAKIT_FUZZ_TARGET=$t MAMBAKIT_FUZZ_OUTCOMES=1 \
    nice -n 19 "$bin" -seed="$seed" \
    -max_len="${maxlen[$t]}" -rss_limit_mb=2048 -timeout=10 -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$fuzz/artifacts/$t/" "$fuzz/corpus/$t" "$seeds/$t" > "$log" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - start ))
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  # exec/s over the whole run, seed loading included (libFuzzer's own average reads 0 after a crash).
  runs=$(stat number_of_executed_units); rss=$(stat peak_rss_mb)
  rate=$(( ${runs:-0} / (elapsed > 0 ? elapsed : 1) ))
  corpus=$(ls "$fuzz/corpus/$t" | wc -l)
  after=$(ls "$fuzz/artifacts/$t" | wc -l)
  if [ $rc -eq 0 ] && [ "$after" -eq "$before" ]; then
    result="nothing found"
  elif grep -q '^MambaKitFuzz: ' "$log"; then
    echo "fuzz.sh: the harness failed on $t:" >&2; grep '^MambaKitFuzz: ' "$log" >&2; exit 2
  else
    kind=$(grep -o -m1 -E 'Swift runtime failure: [^/]*|Fatal error: [^/]*|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer): [a-z-]+|ALARM|out-of-memory' "$log" || true)
    result="FOUND (${kind:-exit $rc}): $(ls -t "$fuzz/artifacts/$t" | head -1 | sed "s|^|$fuzz/artifacts/$t/|")"
    found+=("$t")
  fi
  printf '%-14s %10s %8s %7s %8s  %s\n' "$t" "${runs:-?}" "${rate:-?}" "$corpus" "${rss:-?}" "$result"
done
if [ ${#found[@]} -gt 0 ]; then
  echo "findings in: ${found[*]} (logs in $fuzz/logs/)"
  exit 1
fi
