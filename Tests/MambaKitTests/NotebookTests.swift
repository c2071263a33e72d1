import Foundation
import MambaKit
import Testing

/// Executes the notebooks in notebooks/ with Jupyter's nbconvert, as CI does, against the release build of the CLI.
/// Jupyter, the Python kernel, matplotlib and numpy come from scripts/install-deps.sh; without them the test fails.
/// One notebook at a time: each trains models on all cores.
@Suite(.serialized)
struct NotebookTests {
    static let installHint = "run scripts/install-deps.sh (it installs jupyter-nbconvert, python3-ipykernel, python3-matplotlib, python3-numpy)"

    /// `name` on PATH, as the shell would find it.
    static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = String(dir) + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs a process to completion (SIGKILL after `timeout` seconds), reading stdout and stderr concurrently.
    static func run(_ executable: String, _ args: [String], environment: [String: String] = [:],
                    timeout: Double) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: CLI.root)
        p.environment = testProcessEnvironment.merging(environment) { $1 }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        killAfter(p, seconds: timeout)
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errBox.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errBox.data, as: UTF8.self))
    }

    /// Executes `notebook` (relative to the repository root) with nbconvert into a temporary directory, with
    /// $MAMBAKIT_RUNS_DIR pointing at a temporary runs directory, and checks that no cell raised, that at least
    /// `minImages` figures came out, that the last cell printed "all checks passed", that every path of `runFiles`
    /// (relative to the runs directory) exists, and that the repository's own runs/<name> of `runNames` were left
    /// alone.
    /// Fails (does not skip) when Jupyter or the release CLI is missing.
    static func executeNotebook(_ notebook: String, runNames: [String], minImages: Int, runFiles: [String]) throws {
        guard let jupyter = which("jupyter") else {
            Issue.record("jupyter is not on PATH: \(installHint)")
            return
        }
        let version = try run(jupyter, ["nbconvert", "--version"], timeout: 120)
        guard version.status == 0 else {
            Issue.record("`jupyter nbconvert --version` failed (status \(version.status)): \(installHint)\n\(version.stderr)")
            return
        }
        guard FileManager.default.isExecutableFile(atPath: CLI.binary) else {
            Issue.record("the CLI is not built: run `swift build -c release` first (\(CLI.binary))")
            return
        }

        // The notebook writes its runs under $MAMBAKIT_RUNS_DIR; the repository's runs/ is left alone.
        let tmp = TempDir()
        let runs = tmp.file("runs")
        func repoSummaryDates() -> [Date?] {
            runNames.map {
                try? FileManager.default.attributesOfItem(atPath: CLI.root + "/runs/" + $0 + "/summary.json")[.modificationDate] as? Date
            }
        }
        let before = repoSummaryDates()
        let r = try run(
            jupyter,
            ["nbconvert", "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=1800",
             "--output-dir", tmp.path, "--output", "executed", notebook],
            environment: ["MAMBAKIT_RUNS_DIR": runs, "PYDEVD_DISABLE_FILE_VALIDATION": "1"],
            timeout: 2400)
        #expect(r.status == 0, "nbconvert failed (status \(r.status)); if the kernel or a Python module is missing, \(installHint):\n\(r.stderr.suffix(6000))")
        guard r.status == 0 else { return }

        let executed = try Data(contentsOf: URL(fileURLWithPath: tmp.file("executed.ipynb")))
        let nb = try #require(try JSONSerialization.jsonObject(with: executed) as? [String: Any])
        let cells = try #require(nb["cells"] as? [[String: Any]])
        var images = 0, errors: [String] = [], text = ""
        for cell in cells where cell["cell_type"] as? String == "code" {
            for o in cell["outputs"] as? [[String: Any]] ?? [] {
                switch o["output_type"] as? String {
                case "error":
                    errors.append("\(o["ename"] ?? ""): \(o["evalue"] ?? "")")
                case "stream":
                    text += (o["text"] as? String) ?? ((o["text"] as? [String])?.joined() ?? "")
                default:
                    if let data = o["data"] as? [String: Any], data["image/png"] != nil { images += 1 }
                }
            }
        }
        #expect(errors.isEmpty, "error outputs: \(errors)")
        #expect(images >= minImages, "expected at least \(minImages) figures, found \(images)")
        #expect(text.contains("all checks passed"), "the notebook's last cell did not run to the end")
        for f in runFiles {
            #expect(FileManager.default.fileExists(atPath: runs + "/" + f), "missing \(f) in the runs directory")
        }
        #expect(repoSummaryDates() == before, "the notebook wrote into the repository's runs/")
    }

    @Test func dnaClassificationNotebookExecutes() throws {
        // Learning curves, confusion matrix, and one explanation figure per explained fragment.
        try Self.executeNotebook("notebooks/dna-classification.ipynb", runNames: ["dna-notebook"], minImages: 4,
                                 runFiles: ["dna-notebook/L256/eval.json"])
    }

    @Test func audioNotebookExecutes() throws {
        // Waveforms and spectrograms, learning curves, confusion matrix.
        try Self.executeNotebook("notebooks/audio.ipynb", runNames: ["audio-notebook-lm", "audio-notebook-classify"], minImages: 3,
                                 runFiles: ["audio-notebook-lm/generated.wav", "audio-notebook-lm/continuation.wav",
                                            "audio-notebook-lm/eval.json", "audio-notebook-classify/eval.json"])
    }
}
