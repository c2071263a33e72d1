/// Every error MambaKit throws: what went wrong, and where (file, line, record, byte offset, tensor name).
///
/// The CLI prints `error: <message>, <location>` and exits non-zero, so both parts should read well in that sentence:
/// `message` says what was expected or found, `location` names the place ("model.safetensors, header byte 17").
public struct MambaKitError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        /// The file system: missing file, a directory where a file belongs, permissions, short writes.
        case io
        /// Malformed content of a file: safetensors, JSON, FASTA, WAV, gzip, ...
        case format
        /// Tensor or argument shapes that disagree.
        case shape
        /// A configuration value that is missing, out of range or inconsistent.
        case config
        /// NaN/Inf or another numerical failure.
        case numeric
        /// A user-facing argument that makes no sense.
        case usage
        /// The run was interrupted (Ctrl-C); state was saved.
        case interrupted
        /// A run over several processes (MPI): a collective failed, or the ranks disagree.
        case distributed
    }

    public let kind: Kind
    public let message: String
    public let location: String?

    public init(_ kind: Kind, _ message: String, at location: String? = nil) {
        self.kind = kind
        self.message = message
        self.location = location
    }

    public var description: String {
        if let location { return "\(message), \(location)" }
        return message
    }
}
