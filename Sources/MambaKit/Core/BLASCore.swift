import COpenBLAS
import Foundation

/// OpenBLAS picks its kernels from the CPU model when the library loads. Debian 12's OpenBLAS (0.3.21) does not
/// know recent Intel server models and falls back to its generic "Prescott" SSE3 kernels, which run sgemm ~2×
/// slower than its AVX-512 ("SkylakeX") or AVX2 ("Haswell") ones on the same CPU. The choice can only be made
/// through `OPENBLAS_CORETYPE` before the library loads, so the CLI re-executes itself once with it set (see
/// `preferredCoreType`). A user's own `OPENBLAS_CORETYPE` is always respected.
public enum BLASCore {
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
