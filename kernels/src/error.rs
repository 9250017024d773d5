/// Errors of the GGML boundary and of GGUF files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file that is truncated, inconsistent or hostile. `offset` is where reading stopped.
    #[error("invalid GGUF file at byte {offset}: {message}")]
    InvalidGguf { offset: u64, message: String },
    #[error("unknown or unsupported ggml type id {0}")]
    UnknownType(u32),
    #[error("cannot quantize to {ty}: {reason}")]
    Quantize { ty: GgmlTypeName, reason: String },
    #[error("GGUF writer misuse: {0}")]
    Writer(String),
    #[error("GGUF key `{key}`: {message}")]
    Metadata { key: String, message: String },
    #[error("ggml: {0}")]
    Ggml(String),
    /// The requested device or backend library is not available.
    #[error("{0}")]
    Device(String),
    #[error("llama.cpp: {0}")]
    Llama(String),
    /// A NaN or infinity where the model needs finite numbers (weights, scales, logits).
    #[error("{what} {index} is {value}: the model's numbers are not finite")]
    NonFinite {
        what: String,
        index: u64,
        value: f32,
    },
}

/// The printable name of a type, kept as a string so the error type stays `Send + Sync + 'static`.
pub type GgmlTypeName = &'static str;

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
