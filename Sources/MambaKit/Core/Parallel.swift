import CMPI
import COpenBLAS
import Dispatch

/// The one thread setting of MambaKit: our own parallel loops and OpenBLAS share it, and BLAS is called from outside
/// our parallel regions, so the two never oversubscribe the cores. The one exception is the SSD scan's 64³ chunk
/// products (`SSD.blasProducts`), which OpenBLAS runs on the calling thread (its small-matrix path).
///
/// Work is split statically (worker `w` of `T` always takes the same index range), so results depend on the thread
/// count but never on scheduling: the same seed, data and thread count give the same bits.
public enum Parallel {
    nonisolated(unsafe) private static var _threads: Int = defaultThreads

    public static var defaultThreads: Int {
        #if canImport(Glibc)
        let n = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
        let n = 1
        #endif
        return max(1, n)
    }

    /// The CPUs this process may run on (its affinity mask, which `mpirun --bind-to` and `taskset` set), or nil
    /// when it cannot be read.
    public static var affinityCount: Int? {
        let n = Int(mk_cpu_affinity_count())
        return n > 0 ? n : nil
    }

    /// The number of threads used by `forEach` and by OpenBLAS.
    public static var threads: Int { _threads }

    /// Sets the thread count for MambaKit's loops and OpenBLAS (call once, before work starts).
    public static func setThreads(_ n: Int) {
        _threads = max(1, n)
        openblas_set_num_threads(Int32(_threads))
    }

    /// Runs `body(lo, hi)` over a static partition of `0..<count` into at most `threads` contiguous ranges.
    /// `body` must only write memory that belongs to its range (or to its worker index).
    /// `grain` is the least number of items worth a thread of their own: below `2·grain` items the loop runs on
    /// the calling thread (waking a worker costs microseconds, more than a generation step's small loops).
    @inline(__always)
    public static func forRanges(_ count: Int, grain: Int = 1, _ body: (_ worker: Int, _ lo: Int, _ hi: Int) -> Void) {
        let t = min(_threads, count / max(grain, 1))
        if t <= 1 {
            if count > 0 { body(0, 0, count) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: t) { w in
            let lo = count * w / t
            let hi = count * (w + 1) / t
            body(w, lo, hi)
        }
    }

    /// The number of workers `forRanges(count)` will use.
    public static func workers(for count: Int, grain: Int = 1) -> Int { max(1, min(_threads, count / max(grain, 1))) }
}

#if canImport(Glibc)
import Glibc
#endif
