/// Everything that can go wrong while loading a model or generating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Model(String),
    /// The path given as a model names something else: a folder (`folder`), or a file that is
    /// not GGUF; the message says what it is and how to convert it.
    #[error("{message}")]
    NotAModelFile { message: String, folder: bool },
    #[error("invalid generation parameter: {0}")]
    Params(String),
    #[error("prompt ({prompt} tokens) plus {new} new tokens exceeds the model's context of {context} tokens")]
    ContextOverflow {
        prompt: usize,
        new: usize,
        context: usize,
    },
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Kernels(#[from] unmask_kernels::Error),
    #[error(transparent)]
    Format(#[from] unmask_dream::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
