//! The errors of reading a Dream model: its files (checkpoint folder, safetensors, GGUF
//! metadata), its tokenizer, and building its graph.

use std::path::PathBuf;

/// Everything that can go wrong while reading a model's files or building its graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: not a Dream/DiffuCoder checkpoint: {reason}")]
    NotDream { path: PathBuf, reason: String },
    #[error("{path}: bad config value: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{name}` has unsupported dtype `{dtype}` (expected BF16, F16 or F32)")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A conversation that the chat format cannot express (an unknown role, a system message
    /// after the first, no messages).
    #[error("chat: {0}")]
    Chat(String),
    /// The tokenizer and the metadata name no mask token, without which nothing can be generated.
    #[error("the model has no mask token (tokenizer.ggml.mask_token_id)")]
    NoMaskToken,
    /// A cached pass was built over a key/value cache with fewer layers than the model.
    #[error("the key/value cache has no layer {0}")]
    MissingCacheLayer(usize),
    /// A training batch of no sequences.
    #[error("a batch needs at least one sequence")]
    EmptyBatch,
    #[error(transparent)]
    Kernels(#[from] unmask_kernels::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
