#!/usr/bin/env python3
"""Independent reference for MambaKit's interpolated Kneser-Ney n-gram baseline (Baselines/NGram.swift).

    python3 scripts/ngram_reference.py ORDER VOCABULARY < streams.json

Reads {"train": [[token, ...], ...], "test": [[...], ...]} and prints {"bits": mean -log2 P over the test tokens after
the first of each stream, "tokens": count}. Written from the definition with Python dictionaries: the highest order
counts occurrences of full-context n-grams; order n < N counts, for each n-gram, its distinct left extensions among the
(n+1)-gram types, plus one if it opens a stream; D_n = n1 / (n1 + 2 n2) of each order's counts (clamped to
[0.01, 0.99], 0.5 when there are none); the lowest order interpolates with the uniform distribution; a context never
seen falls back to the order below; the first tokens of a stream use the orders their context allows.
"""
import json
import math
import sys
from collections import Counter, defaultdict


def main():
    order, vocab = int(sys.argv[1]), int(sys.argv[2])
    data = json.load(sys.stdin)
    train, test = data["train"], data["test"]
    levels = [defaultdict(Counter) for _ in range(order)]  # levels[n-1][context tuple][token]
    for s in train:
        for t in range(order - 1, len(s)):
            levels[order - 1][tuple(s[t - order + 1:t])][s[t]] += 1
    for n in range(order - 1, 0, -1):
        for ctx, followers in list(levels[n].items()):
            for w in followers:
                levels[n - 1][ctx[1:]][w] += 1
        for g in {tuple(s[:n]) for s in train if len(s) >= n}:
            levels[n - 1][g[:-1]][g[-1]] += 1
    discounts = []
    for lv in levels:
        n1 = sum(1 for f in lv.values() for c in f.values() if c == 1)
        n2 = sum(1 for f in lv.values() for c in f.values() if c == 2)
        discounts.append(min(0.99, max(0.01, n1 / (n1 + 2 * n2))) if n1 + n2 else 0.5)

    def prob(w, ctx, n):
        lower = 1 / vocab if n == 1 else prob(w, ctx, n - 1)
        key = tuple(ctx[len(ctx) - (n - 1):]) if n > 1 else ()
        f = levels[n - 1].get(key)
        if not f:
            return lower
        total, distinct, d = sum(f.values()), len(f), discounts[n - 1]
        return max(f[w] - d, 0) / total + d * distinct / total * lower

    bits, count = 0.0, 0
    for s in test:
        for t in range(1, len(s)):
            ctx = s[max(0, t - order + 1):t]
            bits -= math.log2(prob(s[t], ctx, len(ctx) + 1))
            count += 1
    print(json.dumps({"bits": bits / count if count else None, "tokens": count, "discounts": discounts}))


if __name__ == "__main__":
    main()
