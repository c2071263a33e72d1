import COpenBLAS
import Foundation

/// OpenBLAS picks its kernels from the CPU model when the library loads. Debian 12's OpenBLAS (0.3.21) does not
/// know recent Intel server models and falls back to its generic "Prescott" SSE3 kernels, which run sgemm ~2×
/// slower than its AVX-512 ("SkylakeX") or AVX2 ("Haswell") ones on the same CPU. The choice can only be made
/// through `OPENBLAS_CORETYPE` before the library loads, so the CLI re-executes itself once with it set (see
/// `preferredCoreType`). A user's own `OPENBLAS_CORETYPE` is always respected.
///
/// The same exec sets `OPENBLAS_THREAD_TIMEOUT=4` (unless the user set it): after each threaded call OpenBLAS's
/// workers otherwise poll with `sched_yield` for 2²⁸ cycles (~0.1 s), competing with MambaKit's own threads for
/// the cores between BLAS calls. Measured on 2 cores: training +10–25 % (5,359–5,945 → 6,320–7,054 tokens/s,
/// reference config), and generation right after a training run 3,678 → 11,975 tokens/s.
public enum BLASCore {
    /// Environment variables the CLI sets (by re-executing itself) before OpenBLAS loads; empty when none is needed.
    public static func preferredEnvironment() -> [(String, String)] {
        var env: [(String, String)] = []
        if let core = preferredCoreType() { env.append(("OPENBLAS_CORETYPE", core)) }
        if ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"] == nil { env.append(("OPENBLAS_THREAD_TIMEOUT", "4")) }
        return env
    }

    /// The kernel set OpenBLAS chose in this process.
    public static var name: String { String(cString: openblas_get_corename()) }

    /// The core type to ask for, or nil when OpenBLAS already uses a vector kernel set or the user chose one.
    public static func preferredCoreType() -> String? {
        if ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] != nil { return nil }
        guard name.lowercased() == "prescott" else { return nil }
        let flags = cpuFlags()
        if flags.contains("avx512f") && flags.contains("avx512bw") && flags.contains("avx512vl") { return "SkylakeX" }
        if flags.contains("avx2") && flags.contains("fma") { return "Haswell" }
        return nil
    }

    static func cpuFlags() -> Set<String> {
        guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return [] }
        for line in s.split(separator: "\n") where line.hasPrefix("flags") {
            return Set(line.split(separator: ":", maxSplits: 1).last?.split(separator: " ").map(String.init) ?? [])
        }
        return []
    }
}
