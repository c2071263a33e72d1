import Foundation
import MambaKit

/// Renders training events on stderr: a redrawn progress bar on a terminal, plain periodic lines otherwise
/// (logs, CI). Results never go here; they go to stdout or files.
final class ProgressRenderer {
    let tty = isatty(2) != 0
    var lastLine = ""

    func handle(_ e: Trainer.Event) {
        switch e {
        case let .started(step, total, params, train, val, unit):
            line("training \(formatCount(params)) parameters on \(formatCount(train)) \(unit) (\(formatCount(val)) held out), step \(step) of \(total)")
        case let .step(step, total, loss, lr, gnorm, tps, elapsed):
            let done = Double(step) / Double(max(total, 1))
            let eta = done > 0 ? elapsed / done - elapsed : 0
            let stats = String(format: "step %d/%d  loss %.4f  lr %.2e  |g| %.2f  %@ tok/s  ETA %@",
                               step, total, loss, lr, gnorm, formatCount(Int(tps)), formatDuration(eta))
            if tty {
                let width = 24
                let filled = Int(done * Double(width))
                let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
                redraw("[\(bar)] " + stats)
                if step == total { FileHandle.standardError.write(Data("\n".utf8)); lastLine = "" }
            } else {
                line(stats)
            }
        case let .validation(step, metrics):
            let loss = metrics["val_loss"] ?? .nan
            var s = String(format: "step %d  validation loss %.4f", step, loss)
            if let bits = metrics["val_bits_per_token"] { s += String(format: " (%.3f bits/token)", bits) }
            if let acc = metrics["val_accuracy"] { s += String(format: "  accuracy %.4f", acc) }
            if let f1 = metrics["val_macro_f1"] { s += String(format: "  macro-F1 %.4f", f1) }
            line(s)
        case let .earlyStop(step, bestStep, bestLoss):
            line(String(format: "step %d  early stop: no better validation loss since step %d (%.4f)", step, bestStep, bestLoss))
        case let .estimate(step, perStep, remaining, validations):
            var s = String(format: "step %d  time: %@ per step; about %@ left for the remaining steps", step,
                           perStep < 1 ? String(format: "%.3f s", perStep) : String(format: "%.2f s", perStep),
                           formatDuration(remaining))
            if validations > 0 { s += " and \(validations) validation\(validations == 1 ? "" : "s")" }
            line(s)
        case let .note(text):
            line(text)
        case let .checkpoint(step, path):
            line("step \(step)  checkpoint \(path)")
        }
    }

    private var tokenizingShown = (time: 0.0, tenth: -1)

    /// Progress of building a token store: redrawn on a terminal at most every 0.2 s, a line per tenth otherwise.
    func tokenizing(done: Int, total: Int) {
        let text = String(format: "tokenizing %.1f of %.1f MB", Double(done) / 1e6, Double(total) / 1e6)
        if tty {
            let now = Date().timeIntervalSince1970
            guard now - tokenizingShown.time >= 0.2 || done == total else { return }
            tokenizingShown.time = now
            redraw(text)
            if done == total { FileHandle.standardError.write(Data("\n".utf8)); lastLine = "" }
        } else {
            let tenth = total > 0 ? min(10, done * 10 / total) : 10
            guard tenth > tokenizingShown.tenth else { return }
            tokenizingShown.tenth = tenth
            line(text)
        }
    }

    private func redraw(_ s: String) {
        if quietRank { return }
        FileHandle.standardError.write(Data(("\r\u{1B}[2K" + s).utf8))
        lastLine = s
    }

    func line(_ s: String) {
        if quietRank { return }
        if tty && !lastLine.isEmpty {
            FileHandle.standardError.write(Data(("\r\u{1B}[2K" + s + "\n" + lastLine).utf8))
        } else {
            FileHandle.standardError.write(Data((s + "\n").utf8))
        }
    }

    func finish() {
        if tty && !lastLine.isEmpty { FileHandle.standardError.write(Data("\n".utf8)); lastLine = "" }
    }
}

func formatCount(_ n: Int) -> String {
    let d = Double(n)
    if d >= 1e9 { return String(format: "%.2fG", d / 1e9) }
    if d >= 1e6 { return String(format: "%.2fM", d / 1e6) }
    if d >= 1e4 { return String(format: "%.1fk", d / 1e3) }
    return String(n)
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
}
