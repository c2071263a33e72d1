// swift-tools-version:6.0
import PackageDescription

// libFuzzer harness for MambaKit's input parsers (RELIABILITY.md; run it with scripts/fuzz.sh).
//
// A package of its own, so the sanitizer flags never reach the main package, its tests or CI's build of it. Nothing
// here sets them: scripts/fuzz.sh passes `-sanitize=fuzzer,address` for every Swift module and
// `-fsanitize=fuzzer-no-link,address` for C (Yams' libyaml), so MambaKit and Yams are instrumented along with the
// harness. Built without those flags the executable does not link (main.swift calls libFuzzer's driver).
let package = Package(
    name: "MambaKitFuzz",
    dependencies: [
        // Named so the product reference below does not depend on the name of the checkout directory.
        .package(name: "MambaKit", path: ".."),
    ],
    targets: [
        // libsndfile, for the FLAC, OGG, AIFF, ... seeds of the audio target (MambaKit itself only writes WAV), and the
        // declaration of libFuzzer's driver.
        .systemLibrary(name: "CFuzzSupport", path: "Sources/CFuzzSupport", providers: [.apt(["libsndfile1-dev"])]),
        .executableTarget(
            name: "MambaKitFuzz",
            dependencies: [.product(name: "MambaKit", package: "MambaKit"), "CFuzzSupport"],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
    ]
)
