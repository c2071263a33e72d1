import CFuzzSupport
import Foundation

// libFuzzer's driver (from -sanitize=fuzzer) runs everything; see Harness.swift.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzerTestOneInput))
