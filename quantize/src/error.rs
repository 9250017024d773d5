use std::path::PathBuf;

/// Everything that can go wrong while reading a checkpoint or writing a GGUF file.
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
    #[error("tensor `{0}` is missing from the checkpoint")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<u64>,
        actual: Vec<u64>,
    },
    #[error("tensor `{name}` has unsupported dtype `{dtype}` (expected BF16, F16 or F32)")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tensor `{name}` contains a non-finite value (NaN or infinity) at element {index}")]
    NonFinite { name: String, index: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0} already exists (pass --force to overwrite)")]
    OutputExists(PathBuf),
    #[error("unknown quantization type `{0}`")]
    UnknownType(String),
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
