import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A team of threads for work that comes in many small pieces back to back: a generation step is ~20 parallel
/// loops of 2–50 µs each, where waking a thread through the kernel (what `Parallel.forRanges` does via Dispatch)
/// costs as much as the loop. The helpers spin on an atomic counter between loops, so a hand-off costs well under a
/// microsecond; after `spinLimit` fruitless polls (a few ms with nothing to do, e.g. once generation has ended) they
/// sleep on a condition variable and the next `run` wakes them.
///
/// Work is split statically like `Parallel`: member `w` of `T` always gets the same part, so results never depend
/// on timing. `run` must be called from one thread at a time (the owner's).
public final class SpinTeam: @unchecked Sendable {
    /// Members including the calling thread.
    public let size: Int
    private let epoch = Atomic<Int>(0)
    private let finished = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// The current loop body; written by the owner before `epoch` is bumped (release) and read by the helpers after
    /// they see the bump (acquire).
    private nonisolated(unsafe) var body: ((Int) -> Void)?
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private nonisolated(unsafe) var sleepers = 0
    private var threads: [pthread_t] = []
    private let spinLimit: Int

    /// A team of `size` members (the caller and `size − 1` helper threads). The default `spinLimit` keeps helpers
    /// awake across the gaps of a generation loop (sampling, writing the token) without holding a core for long
    /// after it.
    public init(size: Int, spinLimit: Int = 4_000_000) {
        self.size = max(1, size)
        self.spinLimit = max(1, spinLimit)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
        for w in 1..<self.size {
            let box = Unmanaged.passRetained(Helper(team: self, index: w))
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, { arg in
                let helper = Unmanaged<Helper>.fromOpaque(arg!).takeRetainedValue()
                helper.team.loop(helper.index)
                return nil
            }, box.toOpaque())
            precondition(rc == 0, "pthread_create failed (\(rc))")
            threads.append(tid)
        }
    }

    private final class Helper {
        unowned let team: SpinTeam
        let index: Int
        init(team: SpinTeam, index: Int) { self.team = team; self.index = index }
    }

    deinit {
        stopping.store(true, ordering: .releasing)
        epoch.add(1, ordering: .releasing)
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
        for t in threads { pthread_join(t, nil) }
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// Runs `body(w)` for every member w (0 on the calling thread) and returns when all have finished.
    public func run(_ body: (Int) -> Void) {
        if size == 1 { body(0); return }
        withoutActuallyEscaping(body) { body in
            self.body = body
            finished.store(0, ordering: .relaxed)
            epoch.add(1, ordering: .releasing)
            pthread_mutex_lock(mutex)
            if sleepers > 0 { pthread_cond_broadcast(cond) }
            pthread_mutex_unlock(mutex)
            body(0)
            var polls = 0
            while finished.load(ordering: .acquiring) < size - 1 {
                polls += 1
                if polls & 16383 == 0 { sched_yield() }  // a helper lost its core: let it have ours
            }
            self.body = nil
        }
    }

    /// Runs `body(lo, hi)` on a static split of `0..<count` into `size` contiguous ranges (some may be empty).
    @inline(__always)
    public func forRanges(_ count: Int, _ body: (_ lo: Int, _ hi: Int) -> Void) {
        let t = size
        run { w in
            let lo = count * w / t, hi = count * (w + 1) / t
            if lo < hi { body(lo, hi) }
        }
    }

    private func loop(_ index: Int) {
        var seen = 0
        while true {
            var polls = 0
            while epoch.load(ordering: .acquiring) == seen {
                polls += 1
                // On a busy machine the owner may be waiting for this core: give it up now and then.
                if polls & 16383 == 0 { sched_yield() }
                if polls >= spinLimit {
                    pthread_mutex_lock(mutex)
                    sleepers += 1
                    while epoch.load(ordering: .acquiring) == seen { pthread_cond_wait(cond, mutex) }
                    sleepers -= 1
                    pthread_mutex_unlock(mutex)
                    polls = 0
                }
            }
            seen = epoch.load(ordering: .acquiring)
            if stopping.load(ordering: .acquiring) { return }
            body!(index)
            finished.add(1, ordering: .releasing)
        }
    }
}
