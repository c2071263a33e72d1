#!/usr/bin/env python3
"""Predicted data-parallel scaling efficiency of `mpirun -np N mambakit train` (BENCHMARKS.md, "Training across
processes"), from a measured gradient size and per-rank speed and a stated network.

Per step, each rank sends (N-1)/N of the parameter bytes S in the reduce-scatter (one MPI_Alltoallv per bucket:
a bucket per layer, then the embedding/norm/head bucket) and (N-1)/N·S in the parameter all-gather, and each
collective costs (N-1) messages of latency alpha. With overlap, the layer buckets go out during backward and are
hidden (they were 64 % of the exchange on the 2-rank run measured here, where both ranks share the cores with
backward itself); what stays exposed is the all-gather, the last bucket and their latencies. Efficiency is
t_compute / (t_compute + t_exposed) for a per-rank batch of whole sequences.

Usage: scripts/mpi_scaling_model.py [--params 1.82e6] [--tokens-per-s 7168] [--seq-len 2048] [--layers 4]
"""
import argparse

p = argparse.ArgumentParser()
p.add_argument("--params", type=float, default=1.82e6, help="floats in the parameter arena (measured: 7.27 MB sent per step at N=2)")
p.add_argument("--tokens-per-s", type=float, default=7168, help="training tokens/s of one rank (measured: 1 process x 2 threads)")
p.add_argument("--seq-len", type=int, default=2048)
p.add_argument("--layers", type=int, default=4)
p.add_argument("--rest-fraction", type=float, default=0.037, help="share of parameters outside the layers (embedding, norms)")
a = p.parse_args()

S = a.params * 4
collectives = a.layers + 2  # reduce-scatter buckets: one per layer, the embedding and the final norm
nets = [("25 Gb/s Ethernet, alpha 25 us", 25e9 / 8, 25e-6), ("200 Gb/s InfiniBand, alpha 2 us", 200e9 / 8, 2e-6)]
print(f"S = {S / 1e6:.2f} MB of Float32 gradients; one rank trains {a.tokens_per_s:.0f} tokens/s; sequences of {a.seq_len}")
print("| network | ranks | exposed comm, no overlap | with overlap | efficiency at 1 seq/rank (no overlap / overlap) | global batch for >= 90 % (sequences, no overlap / overlap) |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name, bw, alpha in nets:
    for n in (8, 64, 512):
        share = (n - 1) / n * S / bw
        off = 2 * share + (collectives + 1) * (n - 1) * alpha
        on = share + a.rest_fraction * share + 2 * (n - 1) * alpha
        tc = a.seq_len / a.tokens_per_s

        def eff(t, seqs):
            return seqs * tc / (seqs * tc + t)

        def need(t):
            s = 1
            while eff(t, s) < 0.9:
                s += 1
            return s

        print(f"| {name} | {n} | {off * 1e3:.1f} ms | {on * 1e3:.1f} ms | {eff(off, 1):.3f} / {eff(on, 1):.3f} | {n * need(off)} / {n * need(on)} |")
