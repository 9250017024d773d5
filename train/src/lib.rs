//! `unmask-train`: the training companion of unmask (coupled-GRPO, docs/training.md).
//!
//! This first part is the self-contained reward side, which needs no model:
//! - [`tasks`]: AceCode-style JSONL tasks and the prompt text (§3);
//! - [`format`](mod@format): the format reward (§3);
//! - [`sandbox`]: local, contained execution of untrusted generated Python;
//! - [`reward`]: `2.0 * pass_rate + 0.5 * format`, in parallel over completions (§3);
//! - [`advantage`]: group advantages (§2);
//! - [`masks`]: the coupled mask sampling of §4, drawn from the runtime's seeded generator (`unmask_runtime::rng`).
//!
//! The model side, up to gradient parity with the PyTorch reference:
//! - [`policy`]: the HF checkpoint as f32 ggml parameters and the runtime's model definition
//!   (`unmask_dream::forward::build_body`) over them, with ggml's automatic differentiation;
//! - [`objective`]: host (f64) loss arithmetic and per-token weights (§5);
//! - [`batch`]: sequences through the policy's graphs in batches, log-probabilities and
//!   gradients from one forward pass;
//! - [`grad`]: coupled-GRPO and SFT loss + parameter gradients for fixed inputs
//!   (`unmask-train grad`), in the reference's file format ([`tensor_file`]).
//!
//! Training:
//! - [`optim`]: AdamW (PyTorch semantics) run by ggml, gradient clipping and accumulation;
//! - [`lr_schedule`]: cosine learning rate with warm-up and floor;
//! - [`checkpoint`]: atomic Hugging Face checkpoints with resumable training state;
//! - [`sft`]: masked-diffusion SFT (`unmask-train sft`), configured by [`run_config`], logged by
//!   [`metrics`];
//! - [`grpo`]: coupled-GRPO (`unmask-train grpo`): rollouts on the current policy, rewards,
//!   advantages, coupled masks, `mu` updates per round, reference policy with periodic sync;
//! - [`corpus`]: a reproducible, deduplicated code corpus split by file (`unmask-train corpus`);
//! - [`function_pairs`]: signature + docstring -> body pairs cut from Python files (`unmask-train
//!   pairs`);
//! - [`tokenizer_train`]: a byte-level BPE tokenizer trained on a corpus (`unmask-train
//!   tokenizer`);
//! - [`init`]: a fresh model folder of a chosen shape, initialised as Qwen2 (`unmask-train
//!   init`).
//!
//! The crate forbids `unsafe` (the project keeps `unsafe` in `kernels/` and `ffi/`). Everything the
//! sandbox needs before `exec` (namespaces, rlimits, a different uid) is therefore done by exec'ing
//! through util-linux's `unshare`, `setpriv` and `prlimit`, never with `pre_exec`; see [`sandbox`].
#![forbid(unsafe_code)]

pub mod advantage;
pub mod batch;
pub mod cgroup;
pub mod checkpoint;
pub mod corpus;
pub mod device;
pub mod format;
pub mod function_pairs;
pub mod grad;
pub mod grpo;
pub mod init;
pub mod lr_schedule;
pub mod masks;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod policy;
pub mod reward;
pub mod rollout;
pub mod run_config;
pub mod sandbox;
pub mod seccomp;
pub mod sft;
pub mod sft_data;
pub mod tasks;
pub mod tensor_file;
pub mod tokenizer_train;

use std::path::PathBuf;

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON-lines file has a bad line (1-based line number).
    #[error("{path}:{line}: {msg}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// The sandbox could not be set up or a child could not be started.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A caller passed an argument outside its domain.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// GGML (graphs, parameters, gradients).
    #[error(transparent)]
    Kernels(#[from] unmask_kernels::Error),
    /// The model definition.
    #[error(transparent)]
    Runtime(#[from] unmask_runtime::Error),
    /// Checkpoint and tensor files.
    #[error(transparent)]
    Format(#[from] unmask_dream::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
