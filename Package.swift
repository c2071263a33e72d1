// swift-tools-version:6.0
import PackageDescription

// Kernels are written for AVX2/FMA (x86-64-v3): at the baseline target SIMD16 `addingProduct` lowers to a call per
// lane and the selective scan is ~15x slower. `-Xcc -march` also steers Swift's own code generation.
let simdFlags: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-march=x86-64-v3"])]

let package = Package(
    name: "MambaKit",
    products: [
        .library(name: "MambaKit", targets: ["MambaKit"]),
        .executable(name: "mambakit", targets: ["mambakit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CSndfile", path: "Sources/CSndfile", providers: [.apt(["libsndfile1-dev"])]),
        .systemLibrary(name: "CSoxr", path: "Sources/CSoxr", providers: [.apt(["libsoxr-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", providers: [.apt(["libopenblas-dev"])]),
        // MPI through dlopen at run time (Distributed/ProcessGroup.swift): no build dependency on an MPI.
        .target(name: "CMPI", path: "Sources/CMPI", linkerSettings: [.linkedLibrary("dl")]),
        .target(
            name: "MambaKit",
            dependencies: ["CZlib", "CSndfile", "CSoxr", "COpenBLAS", "CMPI", .product(name: "Yams", package: "Yams")],
            swiftSettings: simdFlags + [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "mambakit",
            dependencies: ["MambaKit", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: simdFlags + [.swiftLanguageMode(.v5)]
        ),
        .testTarget(
            name: "MambaKitTests",
            // CSndfile: audio tests write their own stereo and FLAC inputs.
            dependencies: ["MambaKit", "CSndfile"],
            exclude: ["Fixtures"],
            swiftSettings: simdFlags + [.swiftLanguageMode(.v5)]
        ),
    ]
)
