import Foundation

/// How much memory a run may plan to use, and the check made before a large allocation whose size follows from the
/// input (batch × sequence length, an evaluation chunk, a prompt): a request that cannot fit is refused with an error
/// naming the setting and both sizes, instead of a trap in the allocator or the kernel's OOM killer.
public enum MemoryBudget {
    /// Physical memory, or the cgroup (v2 or v1) limit or the address-space / data-segment rlimit (`ulimit -v`,
    /// `ulimit -d`) when that is lower.
    public static var available: Int {
        var total = Int(sysconf(Int32(_SC_PHYS_PAGES))).multipliedReportingOverflow(by: Int(sysconf(Int32(_SC_PAGESIZE))))
        if total.overflow || total.partialValue <= 0 { total = (Int.max, false) }
        var limit = total.partialValue
        for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let s = try? String(contentsOfFile: path, encoding: .utf8),
               let v = Int(s.trimmingCharacters(in: .whitespacesAndNewlines)), v > 0 {
                limit = min(limit, v)
            }
        }
        for resource in [RLIMIT_AS, RLIMIT_DATA] {
            var rl = rlimit()
            if getrlimit(__rlimit_resource_t(resource.rawValue), &rl) == 0, rl.rlim_cur != rlim_t.max,
               rl.rlim_cur < UInt64(Int.max) {
                limit = min(limit, Int(rl.rlim_cur))
            }
        }
        return limit
    }

    /// Throws unless `bytes` is at most 90 % of `available`. `what` names the request ("training at batch 8 × 512
    /// tokens"), `hint` says which setting to lower, `location` where the setting came from.
    public static func check(bytes: Int, _ what: String, hint: String, at location: String? = nil) throws {
        let limit = available / 10 * 9
        guard bytes <= limit else {
            throw MambaKitError(.usage, "\(what) needs about \(format(bytes)) of memory, more than the \(format(limit)) available (\(hint))",
                                at: location)
        }
    }

    public static func format(_ bytes: Int) -> String {
        let b = Double(bytes)
        if b >= 1e12 { return String(format: "%.1f TB", b / 1e12) }
        if b >= 1e9 { return String(format: "%.1f GB", b / 1e9) }
        return String(format: "%.0f MB", b / 1e6)
    }

    /// a + b·n, or `Int.max` when that overflows: a size to compare, never to allocate.
    public static func affine(_ a: Int, _ b: Int, _ n: Int) -> Int {
        let (p, o1) = b.multipliedReportingOverflow(by: n)
        let (s, o2) = a.addingReportingOverflow(p)
        return o1 || o2 ? Int.max : s
    }

    /// x·y, or `Int.max` when that overflows.
    public static func product(_ x: Int, _ y: Int) -> Int {
        let (p, o) = x.multipliedReportingOverflow(by: y)
        return o ? Int.max : p
    }
}
