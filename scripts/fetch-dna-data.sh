#!/usr/bin/env bash
# Fetches the full-size versions of samples/dna/ into data/dna/ (git-ignored) for bigger pipelines: the same five
# Debian packages as samples/make_dna_samples.sh (same pinned versions and SHA-256 checks, nothing installed), whole
# genomes instead of 200-kb pieces and all dm3 upstream regions instead of 1000. About 32 MB of packages are
# downloaded once (kept in data/dna/.debs/); the output is about 27 MB.
#
#   data/dna/origin/lambda_phage.fa.gz     Enterobacteria phage lambda, complete genome (48,502 bp)
#   data/dna/origin/s_aureus.fa.gz         S. aureus NCTC 8325 chromosome, complete (2,821,361 bp)
#   data/dna/origin/h_pylori.fa.gz         H. pylori Gambia94/24 chromosome, complete (1,709,911 bp)
#   data/dna/origin/c_elegans.fa.gz        C. elegans: first 1,009,800 bp of chr I + 5 kb of II-V, X, MtDNA (htslib's ce.fa)
#   data/dna/origin/h_sapiens.fa.gz        human hg19 chr17 piece (40,000 bp; the only human genomic DNA in these packages)
#   data/dna/genome/h_pylori_f32.fa.gz     H. pylori F32, complete genome (1,578,824 bp; as in samples/)
#   data/dna/genome/s_aureus_4strains.fa.gz  S. aureus JH1, N315, TW20, MSSA476 chromosomes (11.6 Mbp)
#   data/dna/promoters/dm3_upstream2000.fa.gz         all 26,454 records, as shipped
#   data/dna/promoters/dm3_upstream2000_unique.fa.gz  first record per coordinate, chr 2L 2R 3L 3R 4 X (17,167)
#
# Larger human or other genomes (UCSC, NCBI) are not in Debian; download them by hand into data/ if needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../samples/make_dna_samples.sh
source "$root/samples/make_dna_samples.sh"
out=$root/data/dna
debdir=$out/.debs
fetch_debs "$debdir"
bt=$debdir/bowtie2-examples/usr/share/doc/bowtie2/examples
hts=$debdir/htslib-test/usr/share/htslib-test/test
sib=$debdir/sibelia-examples/usr/share/doc/sibelia/examples
pyf=$debdir/python-pyfaidx-examples/usr/share/doc/python-pyfaidx-examples/examples
bios=$debdir/r-bioc-biostrings/usr/lib/R/site-library/Biostrings/extdata
mkdir -p "$out/origin" "$out/genome" "$out/promoters"

# record NAME < FASTA: the record whose first word is NAME, unchanged; fails if it is missing.
record() {
  awk -v want="$1" '
    /^>/ { inrec = substr($1, 2) == want; if (inrec) found = 1 }
    inrec
    END { if (!found) { print "record: no " want > "/dev/stderr"; exit 1 } }'
}

cp "$bt/reference/lambda_virus.fa.gz" "$out/origin/lambda_phage.fa.gz"
cp "$sib/C-Sibelia/Staphylococcus_aureus/NCTC8325.fasta.gz" "$out/origin/s_aureus.fa.gz"
gzip -dc "$sib/Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz" | record "gi|385218266|ref|NC_017371.1|" |
  gz "$out/origin/h_pylori.fa.gz"
gz "$out/origin/c_elegans.fa.gz" < "$hts/ce.fa"
gz "$out/origin/h_sapiens.fa.gz" < "$pyf/chr17.hg19.part.fa"
gzip -dc "$sib/Sibelia/Helicobacter_pylori/Helicobacter_pylori.fasta.gz" | record "gi|385215269|ref|NC_017366.1|" |
  gz "$out/genome/h_pylori_f32.fa.gz"
cp "$sib/Sibelia/Staphylococcus_aureus/Staphylococcus.fasta.gz" "$out/genome/s_aureus_4strains.fa.gz"
cp "$bios/dm3_upstream2000.fa.gz" "$out/promoters/dm3_upstream2000.fa.gz"
gzip -dc "$bios/dm3_upstream2000.fa.gz" | awk '
  /^>/ { split($2, loc, ":"); keep = !seen[$2]++ && loc[1] ~ /^chr(2L|2R|3L|3R|4|X)$/ }
  keep' | gz "$out/promoters/dm3_upstream2000_unique.fa.gz"

du -sh "$out"/origin "$out"/genome "$out"/promoters >&2
