#!/usr/bin/env bash
# Regenerates samples/dna/ from five Debian packages, pinned to the versions in Debian 12 (bookworm). Nothing is
# installed: each .deb is fetched (`apt-get download`, or deb.debian.org's pool if apt does not know the version),
# checked against its SHA-256, unpacked with `dpkg-deb -x` into a temporary directory, and cut with awk and gzip.
# The selections are fixed rules (named records, fixed base ranges, every k-th record), so the output is the same
# every time; samples/dna/SHA256SUMS holds the SHA-256 of each file's *uncompressed* content and is checked at the end
# (the .gz bytes themselves depend on the gzip version; bookworm's gzip 1.12 gives the committed ones).
# Sources, subsets and licences: samples/README.md.
# scripts/fetch-dna-data.sh sources this file for `debs` and `fetch_debs`.
set -euo pipefail
export LC_ALL=C

# package  version  pool path  sha256
debs=(
  "bowtie2-examples 2.5.0-3 b/bowtie2/bowtie2-examples_2.5.0-3_all.deb 9f9f580954187e501102b13484bdecdc2725155e0b8020e7a056a48a06642118"
  "htslib-test 1.16+ds-3 h/htslib/htslib-test_1.16+ds-3_all.deb f1889968d03a7205e72b2a021efc20d54c7028a24579720276aee5fd31b1e17b"
  "sibelia-examples 3.0.7+dfsg-3 s/sibelia/sibelia-examples_3.0.7+dfsg-3_all.deb ed55a9283215883a68a97db2a0bafbe66469dc7c04efcdd058f5fdd8bf3f552d"
  "python-pyfaidx-examples 0.7.1-2 p/python-pyfaidx/python-pyfaidx-examples_0.7.1-2_all.deb dee24dac569e8acccc3edc820fc3916036656c035045fd4e7baaf9cb6860179a"
  "r-bioc-biostrings 2.66.0-1 r/r-bioc-biostrings/r-bioc-biostrings_2.66.0-1_amd64.deb 94ba289411284aaf42501357cac6f50b559d23d5f9c1300fa1e4f2e91cd4fa12"
)

# fetch_debs DIR: downloads and unpacks every package into DIR/<package>/ (shared with scripts/fetch-dna-data.sh).
fetch_debs() {
  local dir=$1 pkg ver pool sum deb
  mkdir -p "$dir"
  for entry in "${debs[@]}"; do
    read -r pkg ver pool sum <<<"$entry"
    deb="$dir/$(basename "$pool")"
    if [ ! -s "$deb" ] || ! echo "$sum  $deb" | sha256sum -c --status; then
      (cd "$dir" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1) ||
        curl -fsSL --retry 3 -o "$deb" "https://deb.debian.org/debian/pool/main/$pool" ||
        { echo "cannot fetch $pkg $ver (apt-get download and deb.debian.org failed; older versions stay on" \
               "snapshot.debian.org)" >&2; exit 1; }
    fi
    echo "$sum  $deb" | sha256sum -c --status || { echo "SHA-256 mismatch: $deb" >&2; exit 1; }
    rm -rf "${dir:?}/$pkg"
    dpkg-deb -x "$deb" "$dir/$pkg"
  done
}

# region NAME START END WIDTH HEADER < FASTA: bases START..END (1-based, inclusive) of the record whose first word is
# NAME, wrapped at WIDTH, under the header line HEADER. Streams (memory stays at one line) and reads its input to
# the end (no SIGPIPE upstream under pipefail); fails if the record is missing or too short.
region() {
  awk -v want="$1" -v s="$2" -v e="$3" -v w="$4" -v hdr="$5" '
    /^>/ { if (inrec) finished = 1; inrec = !finished && substr($1, 2) == want; if (inrec) print ">" hdr; next }
    inrec && !finished {
      sub(/\r$/, "")
      n = length($0)
      lo = (s > pos) ? s - pos : 1                # overlap of this line (bases pos+1..pos+n) with s..e
      hi = (e < pos + n) ? e - pos : n
      if (hi >= lo) { buf = buf substr($0, lo, hi - lo + 1); done += hi - lo + 1 }
      while (length(buf) >= w) { print substr(buf, 1, w); buf = substr(buf, w + 1) }
      pos += n
      if (pos >= e) finished = 1
    }
    END {
      if (length(buf) > 0) print buf
      if (done != e - s + 1) { print "region: " want " has no bases " s "-" e > "/dev/stderr"; exit 1 }
    }'
}

# rewrap WIDTH HEADER < FASTA with one record: the same bases under a new header, wrapped at WIDTH.
rewrap() {
  awk -v w="$1" -v hdr="$2" '
    /^>/ { next }
    { sub(/\r$/, ""); seq = seq $0 }
    END { print ">" hdr; for (i = 1; i <= length(seq); i += w) print substr(seq, i, w) }'
}

gz() { gzip -n -9 -c > "$1"; }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cd "$(dirname "$0")"
  out=dna
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  fetch_debs "$work"
  bt=$work/bowtie2-examples/usr/share/doc/bowtie2/examples
  hts=$work/htslib-test/usr/share/htslib-test/test
  sib=$work/sibelia-examples/usr/share/doc/sibelia/examples
  pyf=$work/python-pyfaidx-examples/usr/share/doc/python-pyfaidx-examples/examples
  bios=$work/r-bioc-biostrings/usr/lib/R/site-library/Biostrings/extdata
  rm -rf "$out/origin" "$out/genome" "$out/promoters" "$out/bgzf"
  mkdir -p "$out/origin" "$out/genome" "$out/promoters" "$out/bgzf"

  # (1) Origin classification: one file per organism, the class being the file stem.
  # Enterobacteria phage lambda, the whole 48,502-bp genome, unchanged (recompressed).
  gzip -dc "$bt/reference/lambda_virus.fa.gz" | gz "$out/origin/lambda_phage.fa.gz"
  # Staphylococcus aureus NCTC 8325 chromosome, bases 1,000,001-1,200,000.
  gzip -dc "$sib/C-Sibelia/Staphylococcus_aureus/NCTC8325.fasta.gz" |
    region "gi|88193823|ref|NC_007795.1|" 1000001 1200000 70 \
      "NC_007795.1:1000001-1200000 Staphylococcus aureus subsp. aureus NCTC 8325 chromosome, bases 1000001-1200000" |
    gz "$out/origin/s_aureus.fa.gz"
  # Helicobacter pylori Gambia94/24 chromosome, bases 1,000,001-1,200,000.
  gzip -dc "$sib/Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz" |
    region "gi|385218266|ref|NC_017371.1|" 1000001 1200000 70 \
      "NC_017371.1:1000001-1200000 Helicobacter pylori Gambia94/24 chromosome, bases 1000001-1200000" |
    gz "$out/origin/h_pylori.fa.gz"
  # Caenorhabditis elegans chromosome I, bases 500,001-700,000 of htslib's test copy (its first 1,009,800 bases).
  region CHROMOSOME_I 500001 700000 50 "CHROMOSOME_I:500001-700000 Caenorhabditis elegans chromosome I, bases 500001-700000" \
    < "$hts/ce.fa" | gz "$out/origin/c_elegans.fa.gz"
  # Homo sapiens chromosome 17 (hg19), the 40,000-base piece of pyfaidx's tests, soft-masked; one line there, 60 here.
  rewrap 60 "chr17 Homo sapiens chromosome 17 (hg19), 40000-base piece from pyfaidx's test data, soft-masked" \
    < "$pyf/chr17.hg19.part.fa" | gz "$out/origin/h_sapiens.fa.gz"

  # (2) Genome pretraining: Helicobacter pylori F32, the complete 1,578,824-bp genome (the other strain than above).
  gzip -dc "$sib/Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz" |
    region "gi|385215269|ref|NC_017366.1|" 1 1578824 70 "NC_017366.1 Helicobacter pylori F32, complete genome" |
    gz "$out/genome/h_pylori_f32.fa.gz"

  # (3) Promoters: D. melanogaster (dm3) 2-kbp upstream regions of RefSeq genes, records unchanged. Several transcripts
  # share a start: keep the first record per coordinate, main chromosome arms only (2L 2R 3L 3R 4 X), then every
  # 17th of those (the 1st, 18th, ...), 1000 records in all, in the file's order.
  gzip -dc "$bios/dm3_upstream2000.fa.gz" | awk '
    /^>/ {
      keep = 0
      split($2, loc, ":")
      if (!seen[$2]++ && loc[1] ~ /^chr(2L|2R|3L|3R|4|X)$/) { if (n % 17 == 0 && kept < 1000) { keep = 1; kept++ }; n++ }
    }
    keep' | gz "$out/promoters/dm3_upstream2000_subset.fa.gz"

  # A real BGZF file (blocks with the BC extra field and the empty end block): pyfaidx's genes.fasta.gz, human RefSeq
  # mRNAs, copied byte for byte.
  cp "$pyf/genes.fasta.gz" "$out/bgzf/genes.fasta.gz"

  # Check the content against the committed checksums (uncompressed SHA-256, so the gzip version does not matter).
  status=0
  while read -r sum file; do
    got=$(gzip -dc "$out/$file" | sha256sum | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then echo "content differs: $out/$file" >&2; status=1; fi
  done < "$out/SHA256SUMS"
  [ $status -eq 0 ] && echo "samples/dna: $(find "$out" -name "*.gz" | wc -l) files, content matches SHA256SUMS" >&2
  exit $status
fi
