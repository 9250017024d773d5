//! The one error type of the GGML boundary and of GGUF files. Each variant says what a caller
//! can act on (a shape to fix, a name that is missing, memory that ran out, a graph used in the
//! wrong order); its `Display` text is the message users see, so it names the operation and the
//! values involved.

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
    /// Operands an operation does not accept (shapes, types, layout, memory placement), refused
    /// before ggml would abort on them. `op` names the refusing method (`mul_mat`, `input`, ...).
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// Data whose length is not its tensor's: `what` (a parameter, a gradient, a tensor's data)
    /// needs `expected` `unit`s (`values`, `bytes`) and was given `got`.
    #[error("{what}: expected {expected} {unit}, got {got}")]
    LengthMismatch {
        what: String,
        unit: &'static str,
        expected: usize,
        got: usize,
    },
    /// A tensor looked up by name where there is none: `kind` is `weight`, `parameter`, ...;
    /// `place` is where it was looked for (`the model file`, `the store`).
    #[error("{kind} `{name}` is not in {place}")]
    UnknownTensor {
        kind: &'static str,
        name: String,
        place: &'static str,
    },
    /// A [`TensorId`](crate::graph::TensorId) that does not belong to the graph it was used with.
    #[error("unknown tensor handle {index}")]
    UnknownHandle { index: usize },
    /// A graph method that needs an allocated graph ([`Graph::allocate`](crate::graph::Graph::allocate))
    /// called before allocation; `op` says what was attempted.
    #[error("graph is not allocated (allocate it before {op})")]
    NotAllocated { op: &'static str },
    /// A graph method that builds the graph called after allocation fixed it.
    #[error("graph is already allocated (when {op})")]
    AlreadyAllocated { op: &'static str },
    /// More tensors than the graph was made for ([`Graph::new`](crate::graph::Graph::new)).
    #[error("graph capacity of {capacity} tensors exceeded")]
    GraphFull { capacity: usize },
    /// An operation that cannot run in this setting (a CPU-only operation on device memory, an
    /// operation without a backward pass in a graph with gradients); `hint` names the way out.
    #[error("{op} cannot run {context}: {hint}")]
    UnsupportedOp {
        op: &'static str,
        context: &'static str,
        hint: &'static str,
    },
    /// Misuse of automatic differentiation (no parameters, no gradient graph, ...).
    #[error("gradients: {0}")]
    Gradients(&'static str),
    /// An argument outside its domain (optimizer hyper-parameters, an empty parameter list, ...).
    #[error("invalid {what}: {detail}")]
    InvalidArgument { what: &'static str, detail: String },
    /// A buffer ggml could not allocate (out of host or device memory); `bytes` when known.
    #[error("cannot allocate {what}{}: out of memory", size_suffix(.bytes))]
    Alloc { what: String, bytes: Option<u64> },
    /// A ggml object (context, tensor, graph, allocator, backend, thread pool) whose constructor
    /// returned NULL.
    #[error("ggml could not create {0}")]
    Init(String),
    /// A tensor ggml could not place in existing memory (a memory map, another graph's buffer).
    #[error("cannot bind {what} to {memory}")]
    Bind { what: String, memory: &'static str },
    /// A computation the backend ran and reported failed (ggml's `ggml_status`).
    #[error("{what} failed with ggml status {status} ({})", status_name(*.status))]
    Compute { what: &'static str, status: i32 },
    /// A computation stopped early because its backend's abort flag was set
    /// ([`crate::backend::Backend::set_abort_flag`]): a cancellation, not a failure.
    #[error("the computation was cancelled")]
    Aborted,
    /// The requested device or backend library is not available.
    #[error("{0}")]
    Device(String),
    /// The processor lacks instruction sets (`missing`, ggml's names) that the linked ggml was
    /// compiled to use: running would end in an illegal-instruction crash.
    #[error(
        "this processor lacks {missing}, which this build of unmask was compiled to use (running \
         would crash with an illegal instruction); build unmask on this machine with them switched \
         off (GGML_AVX2=OFF GGML_FMA=OFF GGML_F16C=OFF GGML_BMI2=OFF and the like, see \
         .cargo/config.toml)"
    )]
    ProcessorLacks { missing: String },
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

/// ` (12.5 MiB)` for a known size, nothing otherwise.
fn size_suffix(bytes: &Option<u64>) -> String {
    bytes.map_or_else(String::new, |b| {
        format!(" ({:.1} MiB)", b as f64 / (1u64 << 20) as f64)
    })
}

/// ggml's name for a `ggml_status` value.
fn status_name(status: i32) -> &'static str {
    use llama_cpp_sys_2 as sys;
    match status {
        sys::GGML_STATUS_ALLOC_FAILED => "allocation failed",
        sys::GGML_STATUS_FAILED => "failed",
        sys::GGML_STATUS_SUCCESS => "success",
        sys::GGML_STATUS_ABORTED => "aborted",
        _ => "unknown status",
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
