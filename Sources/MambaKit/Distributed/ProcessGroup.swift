import CMPI
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The processes of one run: rank `rank` of `size`. A process started by `mpirun` joins its MPI job
/// (`joinFromEnvironment`); any other process is the one rank of a group of one, and calls nothing of MPI.
///
/// MPI is loaded at run time (`CMPI`, dlopen of Open MPI's `libmpi.so.40`), only when the process was launched by
/// an MPI launcher: the ordinary binary starts, builds and tests on machines with no MPI at all, and one binary
/// serves both. (Linking libmpi would make every `mambakit` need Open MPI installed; a second executable would
/// make users pick between two programs for the same commands.)
///
/// Every collective here is deterministic for a given size: data moves with MPI (allgather, alltoall), and sums
/// are formed by MambaKit in rank order (`sumInRankOrder`), never by MPI's reduction operators, whose order
/// depends on the algorithm the library picks for the message size.
public final class ProcessGroup: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    /// This process's place among the ranks on its host, and how many run there (Open MPI's local rank and size).
    public let localRank: Int
    public let localSize: Int
    /// Whether MPI carries the collectives (false: a group of one).
    public let usesMPI: Bool
    /// The MPI library's version line, for the run's log.
    public let libraryVersion: String

    init() {
        rank = 0; size = 1; localRank = 0; localSize = 1; usesMPI = false; libraryVersion = ""
    }

    init(rank: Int, size: Int, localRank: Int, localSize: Int, libraryVersion: String) {
        self.rank = rank; self.size = size; self.localRank = localRank; self.localSize = localSize
        usesMPI = true
        self.libraryVersion = libraryVersion
    }

    /// A group of one process.
    public static let single = ProcessGroup()

    /// The group of this process: `single` until `joinFromEnvironment` finds an MPI launch.
    nonisolated(unsafe) public private(set) static var world = single

    public var isRoot: Bool { rank == 0 }

    /// Whether an MPI launcher started this process (Open MPI's `mpirun`/`mpiexec`, or a PMIx launcher such as
    /// Slurm's `srun --mpi=pmix`). `MAMBAKIT_MPI=0` ignores a launch, `MAMBAKIT_MPI=1` joins MPI regardless.
    public static func launchedByMPI(_ env: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        switch env["MAMBAKIT_MPI"] {
        case "0": return false
        case "1": return true
        default: return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil
        }
    }

    /// Joins the MPI job this process was launched into (loading Open MPI, `MPI_Init_thread`), or stays a group
    /// of one. Call once, early, from the main thread; `MAMBAKIT_MPI_LIBRARY` names another libmpi.
    @discardableResult
    public static func joinFromEnvironment() throws -> ProcessGroup {
        if world.usesMPI { return world }
        let env = ProcessInfo.processInfo.environment
        guard launchedByMPI(env) else { return world }
        var message = [CChar](repeating: 0, count: 512)
        guard mk_mpi_load(env["MAMBAKIT_MPI_LIBRARY"], &message, message.count) == 0 else {
            throw MambaKitError(.distributed, String(cString: message) + " (this process was started by an MPI launcher)")
        }
        var r: Int32 = 0, n: Int32 = 0
        let rc = mk_mpi_init(&r, &n)
        guard rc == 0 else { throw mpiError(rc, "MPI_Init_thread") }
        var version = [CChar](repeating: 0, count: 300)
        mk_mpi_library_version(&version, version.count)
        let line = String(cString: version).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        func int(_ k: String) -> Int? { env[k].flatMap { Int($0) } }
        world = ProcessGroup(rank: Int(r), size: Int(n), localRank: int("OMPI_COMM_WORLD_LOCAL_RANK") ?? 0,
                             localSize: max(1, int("OMPI_COMM_WORLD_LOCAL_SIZE") ?? 1), libraryVersion: line)
        return world
    }

    static func mpiError(_ rc: Int32, _ call: String) -> MambaKitError {
        var text = [CChar](repeating: 0, count: 300)
        mk_mpi_error_string(rc, &text, text.count)
        return MambaKitError(.distributed, "\(call) failed: \(String(cString: text))")
    }

    func check(_ rc: Int32, _ call: String) throws {
        guard rc == 0 else { throw Self.mpiError(rc, call) }
    }

    /// Ends this process's part in the MPI job (after every rank's last collective).
    public func finalize() {
        if usesMPI { _ = mk_mpi_finalize() }
    }

    /// Stops every rank of the job (a failed rank calls this after reporting its error).
    public func abort(code: Int32) -> Never {
        if usesMPI { _ = mk_mpi_abort(code) }
        exit(code)
    }

    // MARK: Partitions

    /// Rank r's share of `count` items (batch rows, validation streams): ⌊r·count/size⌋ ..< ⌊(r+1)·count/size⌋.
    public func share(of count: Int, rank r: Int? = nil) -> Range<Int> {
        Self.share(of: count, rank: r ?? rank, size: size)
    }

    /// Rank `r`'s share of `count` items among `n` ranks.
    public static func share(of count: Int, rank r: Int, size n: Int) -> Range<Int> {
        // ⌊r·count/n⌋ without forming r·count: count = q·n + m, so it is q·r + ⌊m·r/n⌋ (m, r < n).
        let q = count / n, m = count % n
        return (q * r + m * r / n)..<(q * (r + 1) + m * (r + 1) / n)
    }

    /// The default thread count of a rank: the cores it may run on (its affinity mask, which mpirun's binding
    /// sets), shared with the other ranks on its host when the mask does not separate them.
    public static func defaultThreads(online: Int, affinity: Int?, localSize: Int) -> Int {
        let cores = max(1, affinity ?? online)
        return localSize > 1 && cores >= online ? max(1, online / localSize) : cores
    }

    // MARK: Collectives (each rank calls the same ones in the same order)

    /// Every rank's `values` (the same count on all ranks), in rank order.
    public func allgather(_ values: [Double]) throws -> [[Double]] {
        guard usesMPI, size > 1 else { return [values] }
        var out = [Double](repeating: 0, count: values.count * size)
        try values.withUnsafeBufferPointer { s in
            try out.withUnsafeMutableBufferPointer { r in
                try check(mk_mpi_allgather(s.baseAddress, Int32(values.count), r.baseAddress, Int32(MK_MPI_DOUBLE)), "MPI_Allgather")
            }
        }
        return (0..<size).map { Array(out[$0 * values.count..<($0 + 1) * values.count]) }
    }

    /// The element-wise sum of every rank's `values`, added in rank order (((v₀ + v₁) + v₂) + …): the same bits on
    /// every rank and in every run of this size.
    public func sumInRankOrder(_ values: [Double]) throws -> [Double] {
        let all = try allgather(values)
        var sum = all[0]
        for r in 1..<all.count { for i in sum.indices { sum[i] += all[r][i] } }
        return sum
    }

    /// Every rank's `values` (any count per rank), concatenated in rank order.
    public func allgatherVariable(_ values: [Float]) throws -> [Float] {
        guard usesMPI, size > 1 else { return values }
        let counts = try allgather([Double(values.count)]).map { Int($0[0]) }
        let total = counts.reduce(0, +)
        guard total <= Int(Int32.max) else {
            throw MambaKitError(.distributed, "cannot gather \(total) values in one collective (at most \(Int32.max))")
        }
        var displs = [Int32](), at = 0
        for c in counts { displs.append(Int32(at)); at += c }
        var buffer = [Float](repeating: 0, count: max(total, 1))
        let mine = Int(displs[rank])
        for i in values.indices { buffer[mine + i] = values[i] }
        let c32 = counts.map { Int32($0) }
        try buffer.withUnsafeMutableBufferPointer { b in
            try check(mk_mpi_allgatherv_inplace(b.baseAddress, c32, displs, Int32(MK_MPI_FLOAT)), "MPI_Allgatherv")
        }
        return Array(buffer[0..<total])
    }

    /// Rank `root`'s bytes on every rank.
    public func broadcast(_ bytes: [UInt8], root: Int = 0) throws -> [UInt8] {
        guard usesMPI, size > 1 else { return bytes }
        var n = [Double(bytes.count)]
        try n.withUnsafeMutableBufferPointer { try check(mk_mpi_bcast($0.baseAddress, 1, Int32(MK_MPI_DOUBLE), Int32(root)), "MPI_Bcast") }
        guard n[0] >= 0, n[0] <= Double(Int32.max) else {
            throw MambaKitError(.distributed, "cannot broadcast \(n[0]) bytes in one collective")
        }
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(n[0]))
        if !out.isEmpty {
            try out.withUnsafeMutableBufferPointer {
                try check(mk_mpi_bcast($0.baseAddress, Int32($0.count), Int32(MK_MPI_BYTE), Int32(root)), "MPI_Bcast")
            }
        }
        return out
    }

    public func barrier() throws {
        guard usesMPI, size > 1 else { return }
        try check(mk_mpi_barrier(), "MPI_Barrier")
    }

    /// MPI's 32-bit counts and displacements of `ranges`, or an error when they do not fit.
    static func counts(_ ranges: [Range<Int>]) throws -> (counts: [Int32], displs: [Int32]) {
        guard let end = ranges.map(\.upperBound).max(), end <= Int(Int32.max) else {
            throw MambaKitError(.distributed, "cannot move \(ranges.map(\.upperBound).max() ?? 0) floats in one MPI collective (at most \(Int32.max))")
        }
        return (ranges.map { Int32($0.count) }, ranges.map { Int32($0.lowerBound) })
    }

    /// The floats of `ranges` (one per rank, ascending, together 0..<count) gathered from their owners onto
    /// `root`: rank r contributes `local` (ranges[r].count floats); root receives them at their offsets in `into`
    /// (count floats; ignored elsewhere).
    func gather(_ local: UnsafePointer<Float>, ranges: [Range<Int>], into: UnsafeMutablePointer<Float>?, root: Int = 0) throws {
        precondition(ranges.count == size)
        if !usesMPI || size == 1 {
            if let into { into.update(from: local, count: ranges[0].count) }
            return
        }
        let (counts, displs) = try Self.counts(ranges)
        try check(mk_mpi_gatherv(local, counts[rank], into, counts, displs, Int32(MK_MPI_FLOAT), Int32(root)), "MPI_Gatherv")
    }

    /// In place over `buffer`: rank r's floats at `ranges[r]` copied to every rank.
    func allgather(_ buffer: UnsafeMutablePointer<Float>, ranges: [Range<Int>]) throws {
        guard usesMPI, size > 1 else { return }
        let (counts, displs) = try Self.counts(ranges)
        try check(mk_mpi_allgatherv_inplace(buffer, counts, displs, Int32(MK_MPI_FLOAT)), "MPI_Allgatherv")
    }
}
