//! `-m/--model` of the commands that run a model, and the model they use without it: the small
//! Python model that ships in the repository (models/unmask-python-7m, its model card says how
//! it was trained), so that `unmask generate -p "..."` works on a fresh clone with no other step.
//!
//! Without `-m`, the path is `$UNMASK_MODEL` when that is set, else the shipped model's place in
//! the source tree this binary was built from. A missing default is an error naming both ways to
//! give a model.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The shipped model, in the source tree this binary was built from.
pub const SHIPPED_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/unmask-python-7m/model.gguf"
);

/// The environment variable that names the model when `-m` is not given.
pub const MODEL_ENV: &str = "UNMASK_MODEL";

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArg {
    /// The model (GGUF made by unmask-quantize or llama.cpp's converter) [default:
    /// $UNMASK_MODEL, else the small Python model shipped in the repository,
    /// models/unmask-python-7m/model.gguf].
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    pub given: Option<PathBuf>,
}

impl ModelArg {
    /// The model file to load (module documentation).
    pub fn path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.given {
            return Ok(p.clone());
        }
        if let Some(p) = std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let shipped = PathBuf::from(SHIPPED_MODEL);
        if !shipped.is_file() {
            bail!(
                "no model given: pass -m FILE (a GGUF) or set {MODEL_ENV}; the default, the \
                 model shipped in the repository, is not at {}",
                shipped.display()
            );
        }
        Ok(shipped)
    }
}
