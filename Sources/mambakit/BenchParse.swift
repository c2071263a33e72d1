import Foundation
import MambaKit

/// `mambakit bench --only parse`: FASTA.gz parsing throughput of `SequenceReader` against reference tools on the same
/// file in the same run. The input is a gzipped FASTA of tens of MB generated deterministically from samples/dna/
/// (every record of every file, repeated under new names), plus data/dna/promoters/dm3_upstream2000.fa.gz when
/// scripts/fetch-dna-data.sh has fetched it. Throughput is reported per uncompressed and per compressed byte, best of
/// five runs (two with `--quick`), with the CPU time of the best run. The reference tools (`gzip -dc`, `seqkit stats`,
/// `seqkit fx2tab -n -l`, `samtools dict`) run as child processes with their output sent to /dev/null, and are
/// reported as "not installed" when absent (`apt-get install seqkit samtools`).
func benchParse(quick: Bool) throws -> [[String: Any]] {
    let repeats = quick ? 2 : 5
    let samples = "samples/dna"
    guard FileManager.default.fileExists(atPath: samples) else {
        throw MambaKitError(.usage, "the parse benchmark reads \(samples)/; run mambakit bench from the repository root",
                            at: FileManager.default.currentDirectoryPath)
    }
    let dir = (NSTemporaryDirectory() as NSString).appendingPathComponent("mambakit-bench-parse-\(getpid())")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }

    let target = quick ? 8 << 20 : 64 << 20
    let generated = dir + "/samples-repeated.fa.gz"
    let (uncompressed, passes) = try writeRepeatedFasta(from: samples, to: generated, targetBytes: target)
    printErr(String(format: "parse: generated %@ (%.1f MB, %d passes over %@)", generated, Double(uncompressed) / 1e6,
                    passes, samples))
    var results = [try benchParseFile(generated, uncompressedBytes: uncompressed, repeats: repeats,
                                      source: "samples/dna/*/*.gz, every record, \(passes) passes, 60-column lines, "
                                          + "one gzip member (zlib level 6)")]
    let full = "data/dna/promoters/dm3_upstream2000.fa.gz"
    if !quick, FileManager.default.fileExists(atPath: full), let size = decodedSize(full) {
        results.append(try benchParseFile(full, uncompressedBytes: size, repeats: repeats,
                                          source: "r-bioc-biostrings dm3_upstream2000.fa.gz as shipped"))
    }
    return results
}

/// Writes every record of the sample files (sorted by path), again and again with `_rN` appended to the names, until
/// at least `targetBytes` of FASTA text are written; gzip-compressed. Returns the uncompressed size and the passes.
private func writeRepeatedFasta(from dir: String, to path: String, targetBytes: Int) throws -> (Int, Int) {
    let files = (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String] ?? [])
        .filter { $0.hasSuffix(".gz") }.sorted()
    var records: [SequenceRecord] = []
    for f in files {
        let reader = try SequenceReader(path: dir + "/" + f)
        while let r = try reader.next() { records.append(r) }
    }
    guard !records.isEmpty else { throw MambaKitError(.usage, "no FASTA records", at: dir) }
    var text: [UInt8] = []
    text.reserveCapacity(targetBytes + (4 << 20))
    var pass = 0
    while text.count < targetBytes {
        for r in records {
            text += Array(">\(r.name)_r\(pass)".utf8)
            if !r.description.isEmpty { text += Array(" \(r.description)".utf8) }
            text.append(10)
            var i = 0
            while i < r.sequence.count {
                let j = min(i + 60, r.sequence.count)
                text += r.sequence[i..<j]
                text.append(10)
                i = j
            }
        }
        pass += 1
    }
    let gz = try Gzip.compress(text, level: 6)
    try Data(gz).write(to: URL(fileURLWithPath: path))
    return (text.count, pass)
}

/// Times SequenceReader and the reference tools on one file.
private func benchParseFile(_ path: String, uncompressedBytes: Int, repeats: Int, source: String) throws -> [String: Any] {
    let compressed = try FileInput.checkFile(path)
    var records = 0, bases = 0
    var best = Double.infinity, bestCPU = 0.0
    for _ in 0..<repeats {
        let cpu0 = cpuSeconds(children: false)
        let t0 = ContinuousClock.now
        let reader = try SequenceReader(path: path)
        var n = 0, b = 0
        while let r = try reader.next() {
            n += 1
            b += r.sequence.count
        }
        let s = secs(ContinuousClock.now - t0)
        if s < best { best = s; bestCPU = cpuSeconds(children: false) - cpu0 }
        records = n
        bases = b
    }
    func rates(_ s: Double) -> [String: Any] {
        ["seconds": s, "mb_s_uncompressed": Double(uncompressedBytes) / s / 1e6,
         "mb_s_compressed": Double(compressed) / s / 1e6]
    }
    var mk = rates(best)
    mk["impl"] = "mambakit SequenceReader"
    mk["cpu_seconds"] = bestCPU
    mk["threads"] = 1
    printErr(String(format: "parse %@: SequenceReader %.1f MB/s uncompressed (%.1f MB/s compressed), %d records, %d bases",
                    (path as NSString).lastPathComponent, Double(uncompressedBytes) / best / 1e6,
                    Double(compressed) / best / 1e6, records, bases))

    var refs: [[String: Any]] = []
    let tools: [(String, [String], [String])] = [   // name, command, version command
        ("gzip -dc", ["gzip", "-dc", path], ["gzip", "--version"]),
        ("seqkit stats", ["seqkit", "stats", path], ["seqkit", "version"]),
        ("seqkit fx2tab -n -l", ["seqkit", "fx2tab", "-n", "-l", path], ["seqkit", "version"]),
        ("samtools dict", ["samtools", "dict", path], ["samtools", "--version"]),
    ]
    for (name, command, versionCommand) in tools {
        guard let exe = findExecutable(command[0]) else {
            refs.append(["impl": name, "status": "not installed", "install": "apt-get install \(command[0])"])
            printErr("parse: \(command[0]) not installed (apt-get install \(command[0]))")
            continue
        }
        var r: [String: Any] = ["impl": name, "command": ([exe] + command.dropFirst()).joined(separator: " ")]
        r["version"] = firstLine(run(exe, Array(versionCommand.dropFirst())).output)
        if let pkg = debianVersion(command[0]) { r["debian_package_version"] = pkg }
        var bestTool = Double.infinity, toolCPU = 0.0, failed: Int32 = 0
        for _ in 0..<repeats {
            let cpu0 = cpuSeconds(children: true)
            let t0 = ContinuousClock.now
            let status = runToDevNull(exe, Array(command.dropFirst()))
            let s = secs(ContinuousClock.now - t0)
            if status != 0 { failed = status; break }
            if s < bestTool { bestTool = s; toolCPU = cpuSeconds(children: true) - cpu0 }
        }
        if failed != 0 {
            r["status"] = "exit status \(failed)"
        } else {
            r.merge(rates(bestTool)) { a, _ in a }
            r["cpu_seconds"] = toolCPU
            r["mambakit_speedup"] = bestTool / best
            printErr(String(format: "parse: %@ %.1f MB/s uncompressed (SequenceReader is %.2fx its speed)", name,
                            Double(uncompressedBytes) / bestTool / 1e6, bestTool / best))
        }
        refs.append(r)
    }
    // seqkit's own counts, to check that both read the same records and bases.
    if let seqkit = findExecutable("seqkit") {
        let out = run(seqkit, ["stats", "-T", "-a", path]).output.split(separator: "\n")
        if out.count == 2 {
            let head = out[0].split(separator: "\t").map(String.init), row = out[1].split(separator: "\t").map(String.init)
            if let i = head.firstIndex(of: "num_seqs"), let j = head.firstIndex(of: "sum_len"), row.count == head.count {
                let agrees = Int(row[i]) == records && Int(row[j]) == bases
                refs.append(["impl": "seqkit stats -T (counts)", "records": Int(row[i]) ?? -1, "bases": Int(row[j]) ?? -1,
                             "agrees_with_mambakit": agrees])
                if !agrees { printErr("parse: seqkit counts \(row[i]) records, \(row[j]) bases; SequenceReader \(records), \(bases)") }
            }
        }
    }
    return ["task": "parse", "file": path, "source": source, "compressed_bytes": compressed,
            "uncompressed_bytes": uncompressedBytes, "records": records, "bases": bases, "repeats": repeats,
            "mambakit": mk, "reference": refs, "load_average": loadAverage()]
}

// MARK: - Child processes

private func findExecutable(_ name: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

private func run(_ exe: String, _ args: [String]) -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return (-1, "") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

private func runToDevNull(_ exe: String, _ args: [String]) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return -1 }
    p.waitUntilExit()
    return p.terminationStatus
}

/// The decoded size of a gzip file, counted from `gzip -dc` (nil if gzip is missing or fails).
private func decodedSize(_ path: String) -> Int? {
    guard let gzip = findExecutable("gzip") else { return nil }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: gzip)
    p.arguments = ["-dc", path]
    let pipe = Pipe()
    p.standardOutput = pipe
    do { try p.run() } catch { return nil }
    var total = 0
    while true {
        let chunk = pipe.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        total += chunk.count
    }
    p.waitUntilExit()
    return p.terminationStatus == 0 ? total : nil
}

private func debianVersion(_ package: String) -> String? {
    guard let dpkg = findExecutable("dpkg-query") else { return nil }
    let r = run(dpkg, ["-W", "-f", "${Version}", package])
    return r.status == 0 && !r.output.isEmpty ? r.output : nil
}

private func firstLine(_ s: String) -> String { s.split(separator: "\n").first.map(String.init) ?? "" }

private func cpuSeconds(children: Bool) -> Double {
    var u = rusage()
    getrusage((children ? RUSAGE_CHILDREN : RUSAGE_SELF).rawValue, &u)
    return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) * 1e-6
        + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) * 1e-6
}

private func loadAverage() -> String {
    (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? ""
}
