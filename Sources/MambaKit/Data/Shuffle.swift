// Shuffles that keep a sequence's composition, for negative examples: a dinucleotide-shuffled promoter keeps its base
// composition, GC content and CpG frequency but loses its motifs. The dinucleotide shuffle is the Euler-path method of
// Altschul & Erickson (1985) and Kandel et al. (1996), with the random arborescence drawn by Wilson's loop-erased
// random walk as uShuffle does (Jiang et al. 2008, BMC Bioinformatics 9:192). Letters are bytes: 'a' and 'A' are
// different letters, N is a letter like any other. Both shuffles draw only from the `RNG` passed in, so the same seed
// gives the same output.

/// Random permutations of a byte sequence that keep its 1-let or 2-let counts, each drawn uniformly.
///
/// ```swift
/// var rng = RNG(seed: 1)
/// let negative = SequenceShuffle.dinucleotide(Array("ACGCGTTACG".utf8), rng: &rng)
/// ```
public enum SequenceShuffle {
    /// Uniformly random permutation of `seq` that preserves every k-let count for k = 1 (mononucleotide shuffle).
    ///
    /// Fisher–Yates: n − 1 draws, O(n).
    public static func mononucleotide(_ seq: [UInt8], rng: inout RNG) -> [UInt8] {
        var out = seq
        var i = out.count - 1
        while i > 0 {
            out.swapAt(i, rng.int(below: i + 1))
            i -= 1
        }
        return out
    }

    /// A random sequence with exactly the same dinucleotide (2-let) counts as `seq`, the same first and last byte,
    /// drawn uniformly among all such sequences (Altschul & Erickson 1985; the Euler-path method with a random
    /// arborescence, Kandel et al. 1996 / uShuffle, Jiang et al. 2008). Works on any byte alphabet (case-sensitive:
    /// 'a' and 'A' are different letters).
    ///
    /// Make each letter a vertex and each adjacent pair `seq[i] seq[i+1]` an edge: `seq` is an Euler path from its
    /// first letter to its last letter `e`, and the sequences with the same pair counts are exactly the other Euler
    /// paths of this multigraph. An Euler path is fixed by (a) the last edge leaving each vertex other than `e`,
    /// which together form a spanning tree directed towards `e`, and (b) the order of the remaining edges leaving
    /// each vertex; every such tree with any orders gives an Euler path (the BEST theorem). So:
    ///
    /// 1. draw the tree with probability proportional to the product of its edges' multiplicities — Wilson's
    ///    algorithm, a loop-erased random walk from each vertex until it meets the tree, each step taking one of the
    ///    vertex's out-edges uniformly (self-loops skipped: they never belong to a tree);
    /// 2. put one copy of each vertex's tree edge last and shuffle the others uniformly;
    /// 3. walk from the first letter, taking each vertex's edges in that order.
    ///
    /// With parallel edges told apart, every Euler path is then equally likely; each sequence is the same number
    /// (∏ over pairs of multiplicity!) of such paths, so every sequence is equally likely.
    ///
    /// Cost: O(n + σ) memory and time besides the walk of step 1, whose expected length is at most 2n(σ − 1) for σ
    /// distinct letters (closing the path with an edge e → first letter makes the graph Eulerian; there the expected
    /// time to cross an edge u → w starting from u is at most n, and Wilson's expected running time is a mean commute
    /// time to `e`). For DNA it is short next to n; "ABAB…ABC" is a slow case with about n steps. Sequences
    /// of length ≤ 2, one repeated letter or two alternating letters have one arrangement and come back unchanged.
    public static func dinucleotide(_ seq: [UInt8], rng: inout RNG) -> [UInt8] {
        let n = seq.count
        if n <= 2 { return seq }
        let last = Int(seq[n - 1])

        // The pair graph: the out-edges of letter v are targets[start[v]..<start[v + 1]] (a counting sort of the
        // n − 1 pairs by first letter), with its `loops[v]` self-loops at the end of the range.
        var start = [Int](repeating: 0, count: 257)
        var loops = [Int](repeating: 0, count: 256)
        for i in 0..<(n - 1) {
            start[Int(seq[i]) + 1] += 1
            if seq[i] == seq[i + 1] { loops[Int(seq[i])] += 1 }
        }
        for v in 0..<256 { start[v + 1] += start[v] }
        var targets = [UInt8](repeating: 0, count: n - 1)
        var front = Array(start[0..<256])
        var back = Array(start[1...256])
        for i in 0..<(n - 1) {
            let v = Int(seq[i])
            if seq[i + 1] == seq[i] {
                back[v] -= 1
                targets[back[v]] = seq[i + 1]
            } else {
                targets[front[v]] = seq[i + 1]
                front[v] += 1
            }
        }

        // 1. Wilson's algorithm rooted at the last letter. Every other letter has an out-edge that is not a self-loop
        // (it occurs before the end, and a letter whose edges all loop would be the end), so each walk ends.
        var inTree = [Bool](repeating: false, count: 256)
        var treeNext = [Int](repeating: -1, count: 256)
        inTree[last] = true
        for v in 0..<256 where start[v + 1] > start[v] && !inTree[v] {
            var u = v
            while !inTree[u] {
                let choices = start[u + 1] - start[u] - loops[u]
                treeNext[u] = Int(targets[start[u] + rng.int(below: choices)])
                u = treeNext[u]
            }
            u = v
            while !inTree[u] {
                inTree[u] = true
                u = treeNext[u]
            }
        }

        // 2. Each letter's tree edge last, the rest in uniform order (the last letter has no tree edge).
        for v in 0..<256 where start[v + 1] > start[v] {
            var end = start[v + 1]
            if v != last {
                let t = UInt8(treeNext[v])
                var j = start[v]
                while targets[j] != t { j += 1 }
                targets.swapAt(j, end - 1)
                end -= 1
            }
            var i = end - 1
            while i > start[v] {
                targets.swapAt(i, start[v] + rng.int(below: i - start[v] + 1))
                i -= 1
            }
        }

        // 3. The Euler path those orders define.
        var next = Array(start[0..<256])
        var out = [UInt8](repeating: 0, count: n)
        out[0] = seq[0]
        var cur = Int(seq[0])
        for i in 1..<n {
            precondition(next[cur] < start[cur + 1], "dinucleotide shuffle: Euler walk stuck at letter \(cur)")
            out[i] = targets[next[cur]]
            next[cur] += 1
            cur = Int(out[i])
        }
        return out
    }
}
