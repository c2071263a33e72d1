import Foundation
import MambaKit
import Testing

/// Executes the notebooks in notebooks/ with Jupyter's nbconvert, as CI does, against the release build of the CLI.
/// Jupyter, the Python kernel, matplotlib and numpy come from scripts/install-deps.sh; without them the test fails.
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
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
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

    @Test func dnaClassificationNotebookExecutes() throws {
        guard let jupyter = Self.which("jupyter") else {
            Issue.record("jupyter is not on PATH: \(Self.installHint)")
            return
        }
        let version = try Self.run(jupyter, ["nbconvert", "--version"], timeout: 120)
        guard version.status == 0 else {
            Issue.record("`jupyter nbconvert --version` failed (status \(version.status)): \(Self.installHint)\n\(version.stderr)")
            return
        }
        guard FileManager.default.isExecutableFile(atPath: CLI.binary) else {
            Issue.record("the CLI is not built: run `swift build -c release` first (\(CLI.binary))")
            return
        }

        // The notebook writes its run under $MAMBAKIT_RUNS_DIR; the repository's runs/ is left alone.
        let tmp = TempDir()
        let runs = tmp.file("runs")
        let repoSummary = CLI.root + "/runs/dna-notebook/summary.json"
        let repoSummaryDate = try? FileManager.default.attributesOfItem(atPath: repoSummary)[.modificationDate] as? Date
        let r = try Self.run(
            jupyter,
            ["nbconvert", "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=1800",
             "--output-dir", tmp.path, "--output", "executed", "notebooks/dna-classification.ipynb"],
            environment: ["MAMBAKIT_RUNS_DIR": runs, "PYDEVD_DISABLE_FILE_VALIDATION": "1"],
            timeout: 2400)
        #expect(r.status == 0, "nbconvert failed (status \(r.status)); if the kernel or a Python module is missing, \(Self.installHint):\n\(r.stderr.suffix(6000))")
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
        // Learning curves, confusion matrix, and one explanation figure per explained fragment.
        #expect(images >= 4, "expected at least 4 figures, found \(images)")
        #expect(text.contains("all checks passed"), "the notebook's last cell did not run to the end")
        #expect(FileManager.default.fileExists(atPath: runs + "/dna-notebook/L256/eval.json"))
        let after = try? FileManager.default.attributesOfItem(atPath: repoSummary)[.modificationDate] as? Date
        #expect(after == repoSummaryDate, "the notebook wrote into the repository's runs/")
    }
}
