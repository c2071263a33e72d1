import Foundation

/// A small JSON writer for files other tools parse with strict types: a `Double` is always written with a decimal
/// point or exponent (transformers' config dataclasses refuse `1` where a float is declared, and Foundation writes
/// 1.0 as `1`), keys are sorted, output is indented by two spaces.
public enum JSONWriter {
    public static func string(_ value: Any) -> String {
        var out = ""
        write(value, into: &out, indent: 0)
        return out + "\n"
    }

    static func write(_ v: Any, into out: inout String, indent: Int) {
        let pad = String(repeating: "  ", count: indent)
        switch v {
        case is NSNull:
            out += "null"
        case let b as Bool where jsonIsBool(b as NSNumber) || type(of: v) == Bool.self:
            out += b ? "true" : "false"
        case let i as Int:
            out += String(i)
        case let d as Double:
            out += formatDouble(d)
        case let f as Float:
            out += formatDouble(Double(f))
        case let s as String:
            out += quote(s)
        case let a as [Any]:
            if a.isEmpty { out += "[]"; return }
            out += "[\n"
            for (i, e) in a.enumerated() {
                out += pad + "  "
                write(e, into: &out, indent: indent + 1)
                out += i + 1 < a.count ? ",\n" : "\n"
            }
            out += pad + "]"
        case let o as [String: Any]:
            if o.isEmpty { out += "{}"; return }
            out += "{\n"
            let keys = o.keys.sorted()
            for (i, k) in keys.enumerated() {
                out += pad + "  " + quote(k) + ": "
                write(o[k]!, into: &out, indent: indent + 1)
                out += i + 1 < keys.count ? ",\n" : "\n"
            }
            out += pad + "}"
        case let n as NSNumber:
            out += jsonIsBool(n) ? (n.boolValue ? "true" : "false") : formatDouble(n.doubleValue)
        default:
            out += quote("\(v)")
        }
    }

    static func formatDouble(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        var s = "\(d)"  // shortest round-trip form
        if !s.contains(".") && !s.contains("e") && !s.contains("E") { s += ".0" }
        return s
    }

    static func quote(_ s: String) -> String {
        var r = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": r += "\\\""
            case "\\": r += "\\\\"
            case "\n": r += "\\n"
            case "\r": r += "\\r"
            case "\t": r += "\\t"
            default:
                if u.value < 0x20 { r += String(format: "\\u%04x", u.value) } else { r.unicodeScalars.append(u) }
            }
        }
        return r + "\""
    }
}
