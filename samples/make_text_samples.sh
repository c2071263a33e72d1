#!/usr/bin/env bash
# Regenerates samples/text/ from Debian's King James Version (public domain: the 1611 translation's copyright has
# long expired; Debian package bible-kjv-text, read through the `bible` program of package bible-kjv).
# The committed files are the output of this script; running it needs `apt-get install bible-kjv`.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p text
# `bible -f` prints one verse per line as "Ge1:1 text"; drop the reference so the file is plain prose.
extract() { bible -f "$1" | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' | fold -s -w 100 | sed 's/ *$//'; }
extract "Genesis 1:1-50:26" > text/genesis.txt
extract "Exodus 1:1-40:38" > text/exodus.txt
extract "Ruth 1:1-4:22" > text/ruth.txt
