import Foundation
import MambaKit

// libFuzzer's entry points. The target is chosen once, in LLVMFuzzerInitialize, from MAMBAKIT_FUZZ_TARGET; every
// input is then written to one file of this process's work directory (in /dev/shm) and handed to the target, which
// calls the public MambaKit API as the CLI does. A thrown error is a normal outcome; libFuzzer and AddressSanitizer
// report the findings (traps, crashes, timeouts, leaks, memory beyond -rss_limit_mb / -malloc_limit_mb).
//
// Environment:
//   MAMBAKIT_FUZZ_TARGET   the target (see `FuzzTarget.all`); required
//   MAMBAKIT_FUZZ_WORKDIR  parent of the work directory (default /dev/shm, else the temporary directory); the
//                          directory is `mambakit-fuzz-<pid>`, removed at exit
//   MAMBAKIT_FUZZ_SEEDS    if set: write the derived seed inputs of every target under this directory and exit
//   MAMBAKIT_FUZZ_LIST     if set: print each target's name and -max_len, one target a line, and exit
//   MAMBAKIT_FUZZ_OUTCOMES if set: print at exit how many inputs parsed and which errors the others threw
//   MAMBAKIT_FUZZ_VERBOSE  if set: print every input's outcome (to see why a reproducer or seed is refused)

/// The target this process runs, set once by `LLVMFuzzerInitialize`.
nonisolated(unsafe) var activeTarget: FuzzTarget! = nil
/// The file every input is written to.
nonisolated(unsafe) var inputPath = ""
nonisolated(unsafe) var workDirectory = ""
nonisolated(unsafe) var fixtures: FuzzFixtures! = nil
/// Outcome counts ("ok", "MambaKitError.format", "DecodingError", ...), printed at exit with MAMBAKIT_FUZZ_OUTCOMES.
nonisolated(unsafe) var outcomes: [String: Int] = [:]
nonisolated(unsafe) var verbose = false

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<Int32>?,
                             _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?)
    -> Int32
{
    let env = ProcessInfo.processInfo.environment
    if env["MAMBAKIT_FUZZ_LIST"] != nil {
        for target in FuzzTarget.all { print(target.name, target.maxLength) }
        exit(0)
    }
    let parent = env["MAMBAKIT_FUZZ_WORKDIR"]
        ?? (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : NSTemporaryDirectory())
    workDirectory = parent + "/mambakit-fuzz-\(getpid())"
    do {
        try FileManager.default.createDirectory(atPath: workDirectory, withIntermediateDirectories: true)
        fixtures = try FuzzFixtures(directory: workDirectory)
        if let seeds = env["MAMBAKIT_FUZZ_SEEDS"] {
            try writeSeeds(to: seeds, fixtures: fixtures)
            removeWorkDirectory()
            exit(0)
        }
    } catch {
        fail("cannot prepare the work directory \(workDirectory): \(error)")
    }
    let names = FuzzTarget.all.map(\.name).joined(separator: ", ")
    guard let name = env["MAMBAKIT_FUZZ_TARGET"] else { fail("set MAMBAKIT_FUZZ_TARGET to one of: \(names)") }
    guard let target = FuzzTarget.all.first(where: { $0.name == name }) else {
        fail("unknown MAMBAKIT_FUZZ_TARGET '\(name)' (expected one of: \(names))")
    }
    activeTarget = target
    verbose = env["MAMBAKIT_FUZZ_VERBOSE"] != nil
    inputPath = workDirectory + "/input." + target.fileExtension
    atexit {
        removeWorkDirectory()
        guard ProcessInfo.processInfo.environment["MAMBAKIT_FUZZ_OUTCOMES"] != nil else { return }
        for (outcome, count) in outcomes.sorted(by: { $0.value > $1.value }) {
            fputs("outcome: \(count) \(outcome)\n", stderr)
        }
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    writeInput(data, size)
    let outcome: String
    do {
        try activeTarget.run(inputPath, data.map { Data(bytes: $0, count: size) } ?? Data())
        outcome = "ok"
        if verbose { fputs("ok\n", stderr) }
    } catch let error as MambaKitError {
        outcome = "MambaKitError.\(error.kind.rawValue)"
        if verbose { fputs("\(outcome): \(error)\n", stderr) }
    } catch {
        outcome = "\(type(of: error))"
        if verbose { fputs("\(outcome): \(error)\n", stderr) }
    }
    outcomes[outcome, default: 0] += 1
    return 0
}

/// Replaces the input file's contents with `size` bytes at `data`.
func writeInput(_ data: UnsafePointer<UInt8>?, _ size: Int) {
    let fd = open(inputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { fail("cannot open \(inputPath): \(String(cString: strerror(errno)))") }
    var done = 0
    while done < size, let data {
        let n = write(fd, data + done, size - done)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { fail("cannot write \(inputPath): \(String(cString: strerror(errno)))") }
        done += n
    }
    close(fd)
}

func removeWorkDirectory() {
    if !workDirectory.isEmpty { try? FileManager.default.removeItem(atPath: workDirectory) }
}

/// A harness failure (not a finding): says why on stderr and exits with status 2.
func fail(_ message: String) -> Never {
    fputs("MambaKitFuzz: \(message)\n", stderr)
    exit(2)
}
