#!/usr/bin/env bash
# Fetches a large public byte corpus for pipelines/bytes-long.yaml into data/long/ (git-ignored): the Linux kernel
# source tree from Debian's linux-source package (GPL-2.0; downloaded with `apt-get download`, nothing installed),
# about 1.3 GB of C, headers, scripts and documentation.
#
#   data/long/linux/              the unpacked tree (linux-source-<version>/)
#   data/long/train/              symbolic links to every top-level directory and file of the tree except fs/
#   data/long/eval/               the held-out long documents: every fourth (in path order) of the files of fs/ of at
#                                 least 64 KiB, one file each (path separators turned into '__'); fs/ is never trained on
#
# Needs apt-get (any Debian or Ubuntu machine), xz-utils and about 1.6 GB of disk. Run it again to reuse what is there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/data/long
debdir=$out/.debs
mkdir -p "$debdir"
pkg=${LINUX_SOURCE_PACKAGE:-$(apt-cache search --names-only '^linux-source-[0-9.]+$' | awk '{print $1}' | sort -V | tail -1)}
[ -n "$pkg" ] || { echo "error: no linux-source-<version> package in the apt sources" >&2; exit 1; }
if ! ls "$debdir"/"$pkg"_*.deb >/dev/null 2>&1; then
    echo "downloading $pkg" >&2
    (cd "$debdir" && apt-get download "$pkg")
fi
deb=$(ls "$debdir"/"$pkg"_*.deb | head -1)
if [ ! -d "$out/linux" ]; then
    echo "unpacking $(basename "$deb")" >&2
    rm -rf "$debdir/x" "$out/linux.tmp"
    dpkg-deb -x "$deb" "$debdir/x"
    tarball=$(ls "$debdir"/x/usr/src/linux-source-*.tar.xz | head -1)
    mkdir -p "$out/linux.tmp"
    tar -xJf "$tarball" -C "$out/linux.tmp"
    rm -rf "$debdir/x"
    mv "$out/linux.tmp" "$out/linux"
fi
tree=$(ls -d "$out"/linux/linux-source-* | head -1)
rm -rf "$out/train" "$out/eval"
mkdir -p "$out/train" "$out/eval"
for entry in "$tree"/*; do
    name=$(basename "$entry")
    [ "$name" = fs ] && continue
    ln -s "$entry" "$out/train/$name"
done
(cd "$tree" && find fs -type f -size +64k | LC_ALL=C sort | awk 'NR % 4 == 1') | while read -r f; do
    cp "$tree/$f" "$out/eval/${f//\//__}"
done
echo "train: $(du -shL "$out/train" | cut -f1) in $(find -L "$out/train" -type f | wc -l) files; eval: $(ls "$out/eval" | wc -l) documents, $(du -sh "$out/eval" | cut -f1)" >&2
