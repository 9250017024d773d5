//! The converter's errors: its own (output files, type choice, tensor data) and, wrapped, those of
//! reading the model's files (`unmask_dream::Error`) and of GGUF/GGML (`unmask_kernels::Error`).

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
    #[error("tensor `{0}` is missing from the checkpoint")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<u64>,
        actual: Vec<u64>,
    },
    #[error("tensor `{name}` contains a non-finite value (NaN or infinity) at element {index}")]
    NonFinite { name: String, index: usize },
    #[error("{0} already exists (pass --force to overwrite)")]
    OutputExists(PathBuf),
    #[error("{} is not a GGUF file: it is {kind}. {hint}", path.display())]
    NotGguf {
        path: PathBuf,
        kind: &'static str,
        hint: String,
    },
    #[error("{} is a folder: give the output a file name, e.g. {}", .0.display(), .0.join("model.gguf").display())]
    OutputIsFolder(PathBuf),
    #[error(
        "{} is already quantized ({types}): converting it to {target} quantizes the rounding \
         error of the first format again, so the result is worse than {target} made from the \
         original f16/bf16/f32 weights (llama.cpp measures this as a higher perplexity). Convert \
         the original checkpoint, or pass --allow-requantize to accept the loss",
        path.display()
    )]
    Requantize {
        path: PathBuf,
        types: String,
        target: String,
    },
    #[error("unknown quantization type `{0}`")]
    UnknownType(String),
    /// The model's files: checkpoint folder, safetensors, configuration, tokenizer.
    #[error(transparent)]
    Format(#[from] unmask_dream::Error),
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
