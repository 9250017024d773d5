//! A Dream model: its description ([`ModelSpec`]: hyper-parameters, the tokenizer, the special
//! tokens generation needs, sampling defaults) and the tensors the forward pass reads.
//!
//! [`Model::load`] reads both from one GGUF file (hyper-parameters from the metadata, never a
//! hard-coded shape; weights mapped zero-copy). [`Model::from_parts`] pairs a description with any
//! other [`TensorSource`], for example the trainer's f32 parameters with the description read from
//! the Hugging Face folder ([`ModelSpec::from_hf`]), so that the same denoising loop runs on them.

use crate::{Error, Result};
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use tokenizers::Tokenizer;
use unmask_dream::hf::HfCheckpoint;
use unmask_dream::layout::{self, keys};
use unmask_dream::tokenizer::{TokenizerSource, TokenizerSpec};
use unmask_dream::{DreamConfig, SpecialTokens};
use unmask_kernels::device::Placement;
pub use unmask_kernels::finite::Depth;
use unmask_kernels::gguf::{GgufFile, GgufValue};
use unmask_kernels::graph::TensorSource;
use unmask_kernels::weights::Weights;

/// Sampling defaults stored from `generation_config.json` (`unmask.generation.*`), as read:
/// `crate::settings` checks them and layers them over the built-in defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub steps: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub alg: Option<String>,
    pub alg_temp: Option<f32>,
    pub eps: Option<f32>,
    pub block_length: Option<usize>,
    /// Entries of these keys whose stored type does not fit (a negative or fractional count, a
    /// number for `alg`, ...): the full key and the stored value, left out of the fields above.
    pub unreadable: Vec<(String, String)>,
}

impl GenerationDefaults {
    /// Reads the defaults from `unmask.generation.*` entries, looked up by their full key.
    fn read<'a>(get: impl Fn(&str) -> Option<&'a GgufValue>) -> Self {
        let mut unreadable = Vec::new();
        // The entry `unmask.generation.<key>` converted, or None; one that is there but does not
        // convert is recorded as unreadable.
        macro_rules! field {
            ($key:literal, $convert:expr) => {{
                let key = format!("{}{}", keys::GENERATION_PREFIX, $key);
                get(&key).and_then(|stored| {
                    let value = $convert(stored);
                    if value.is_none() {
                        unreadable.push((key.clone(), stored.summary()));
                    }
                    value
                })
            }};
        }
        let float = |v: &GgufValue| v.as_f64().map(|v| v as f32);
        let int = |v: &GgufValue| v.as_u64().map(|v| v as usize);
        let text = |v: &GgufValue| v.as_str().map(str::to_string);
        GenerationDefaults {
            temperature: field!("temperature", float),
            top_p: field!("top_p", float),
            top_k: field!("top_k", int),
            steps: field!("steps", int),
            max_new_tokens: field!("max_new_tokens", int),
            alg: field!("alg", text),
            alg_temp: field!("alg_temp", float),
            eps: field!("eps", float),
            block_length: field!("block_length", int),
            unreadable,
        }
    }
}

/// Everything about a model except its tensors: the hyper-parameters, the tokenizer (built on
/// demand), the special tokens and the sampling defaults.
pub struct ModelSpec {
    pub config: DreamConfig,
    /// What the tokenizer is built from; see [`ModelSpec::tokenizer`].
    pub tokenizer_spec: Arc<TokenizerSpec>,
    tokenizer_cache: Mutex<Weak<Tokenizer>>,
    pub tokenizer_source: TokenizerSource,
    pub special: SpecialTokens,
    pub defaults: GenerationDefaults,
    /// Vocabulary rows of the output projection (may exceed the tokenizer's size: padding).
    pub n_vocab: usize,
}

impl Clone for ModelSpec {
    fn clone(&self) -> Self {
        let cached = self
            .tokenizer_cache
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        ModelSpec {
            config: self.config.clone(),
            tokenizer_spec: self.tokenizer_spec.clone(),
            tokenizer_cache: Mutex::new(cached),
            tokenizer_source: self.tokenizer_source,
            special: self.special.clone(),
            defaults: self.defaults.clone(),
            n_vocab: self.n_vocab,
        }
    }
}

impl std::fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSpec")
            .field("config", &self.config)
            .field("tokenizer_source", &self.tokenizer_source)
            .field("special", &self.special)
            .field("defaults", &self.defaults)
            .field("n_vocab", &self.n_vocab)
            .finish_non_exhaustive()
    }
}

impl ModelSpec {
    /// A description from its parts; the special tokens are found with the tokenizer, which is
    /// built once here and then dropped (see [`tokenizer`](Self::tokenizer)).
    pub fn new(
        config: DreamConfig,
        tokenizer_spec: TokenizerSpec,
        defaults: GenerationDefaults,
    ) -> Result<Self> {
        let tokenizer_spec = Arc::new(tokenizer_spec);
        let tokenizer = Arc::new(tokenizer_spec.build()?);
        let special = SpecialTokens::find(&config, &tokenizer)?;
        let n_vocab = config.vocab_size as usize;
        if special.mask as usize >= n_vocab {
            return Err(Error::Model(format!(
                "the mask token {} is outside the vocabulary of {n_vocab}",
                special.mask
            )));
        }
        Ok(ModelSpec {
            config,
            tokenizer_source: tokenizer_spec.source(),
            tokenizer_spec,
            tokenizer_cache: Mutex::new(Arc::downgrade(&tokenizer)),
            special,
            defaults,
            n_vocab,
        })
    }

    /// The description in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let config = layout::config_from_gguf(file)?;
        let tokenizer_spec = TokenizerSpec::from_gguf(file)?;
        let defaults = GenerationDefaults::read(|k| file.get(k));
        Self::new(config, tokenizer_spec, defaults)
    }

    /// The description of an opened Hugging Face checkpoint: `config.json` (completed by
    /// `generation_config.json`), `tokenizer.json` and the sampling defaults, exactly what
    /// `unmask-quantize` stores in a GGUF file converted from the folder.
    pub fn from_hf_checkpoint(ckpt: &HfCheckpoint) -> Result<Self> {
        let defaults = GenerationDefaults::read(|k| {
            ckpt.generation
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v)
        });
        Self::new(
            ckpt.config.clone(),
            TokenizerSpec::Json(ckpt.tokenizer_json.clone()),
            defaults,
        )
    }

    /// The description of a Hugging Face checkpoint folder (see
    /// [`from_hf_checkpoint`](Self::from_hf_checkpoint)).
    pub fn from_hf(dir: &Path) -> Result<Self> {
        Self::from_hf_checkpoint(&HfCheckpoint::open(dir)?)
    }

    /// The tokenizer, built on first use and shared while anyone holds it. A full vocabulary
    /// takes about 80 MiB: callers drop it while the model computes, so it does not add to the
    /// peak memory of generation.
    pub fn tokenizer(&self) -> Result<Arc<Tokenizer>> {
        let mut cache = self
            .tokenizer_cache
            .lock()
            .map_err(|_| Error::Tokenizer("tokenizer cache poisoned".into()))?;
        if let Some(t) = cache.upgrade() {
            return Ok(t);
        }
        let t = Arc::new(self.tokenizer_spec.build()?);
        *cache = Arc::downgrade(&t);
        Ok(t)
    }

    /// Token ids of `text` (see [`unmask_dream::chat::encode`]), with the model's tokenizer.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(unmask_dream::chat::encode(
            self.tokenizer()?.as_ref(),
            text,
        )?)
    }

    /// Whether the model's tokenizer knows the chat markers (so `--chat` defaults on).
    pub fn supports_chat(&self) -> bool {
        self.special.supports_chat()
    }

    pub fn n_layers(&self) -> usize {
        self.config.num_hidden_layers as usize
    }

    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings as usize
    }
}

/// A model: its description (reachable through `Deref`, so `model.config`, `model.special`,
/// `model.tokenizer()` read it) and the tensors `W` the forward graphs are built over, by GGUF
/// name: memory-mapped GGUF [`Weights`] by default, or any other [`TensorSource`] such as the
/// trainer's f32 parameters.
pub struct Model<W = Arc<Weights>> {
    pub spec: ModelSpec,
    pub weights: W,
    /// Where the weights live and graphs run (the built-in CPU unless loaded onto a device).
    pub placement: Placement,
}

impl<W> Deref for Model<W> {
    type Target = ModelSpec;

    fn deref(&self) -> &ModelSpec {
        &self.spec
    }
}

impl Model {
    /// Maps a GGUF file: description from its metadata, weights zero-copy from its data.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(path, &Placement::Cpu)
    }

    /// Loads a GGUF file for `placement`: on the CPU mapped zero-copy, on a device copied into
    /// the device's memory (graphs then run there; see [`crate::Generator`]).
    pub fn load_on(path: &Path, placement: &Placement) -> Result<Self> {
        Self::load_checked(path, placement, Depth::default())
    }

    /// [`Model::load_on`] with the finiteness check of the weights at `check` (the default,
    /// [`Depth::Scales`], reads every quantization scale and every norm; [`Depth::Full`] reads
    /// every value, about as long as one pass over the file). A NaN or infinite value fails the
    /// load with an error naming the tensor.
    pub fn load_checked(path: &Path, placement: &Placement, check: Depth) -> Result<Self> {
        // Library callers (the C API) reach ggml through here first.
        unmask_kernels::cpu_code::check_processor()?;
        check_model_path(path)?;
        let mut file = GgufFile::open(path)?;
        let spec = ModelSpec::from_gguf(&file)?;
        check_tensor_shapes(&file, &spec.config)?;
        check_finite(&file, check)
            .map_err(|e| Error::Model(format!("{}: refused: {e}", path.display())))?;
        // Everything needed from the metadata has been read: don't keep the vocabulary arrays
        // and the stored tokenizer.json alive next to the weights.
        file.drop_metadata();
        let file = Arc::new(file);
        let weights = Arc::new(match placement {
            Placement::Cpu => Weights::map_cpu(file)?,
            Placement::Device(device) => Weights::upload(file, device)?,
        });
        // Nobody holds the tokenizer now (the spec keeps a weak reference): it was freed, and is
        // rebuilt when next needed.
        unmask_kernels::heap::release_free_memory();
        Ok(Model {
            spec,
            weights,
            placement: placement.clone(),
        })
    }
}

impl<W: TensorSource> Model<W> {
    /// Pairs a description with the tensors of the same model. Every tensor the graphs use must
    /// exist in `weights` (their shapes are the source's responsibility: a GGUF file's are
    /// checked by [`Model::load`], the trainer's by its checkpoint loader).
    pub fn from_parts(spec: ModelSpec, weights: W) -> Result<Self> {
        for t in layout::tensor_specs(&spec.config) {
            if !weights.contains(&t.gguf_name) {
                return Err(Error::Model(format!(
                    "tensor `{}` is missing from the model's tensors",
                    t.gguf_name
                )));
            }
        }
        Ok(Model {
            spec,
            weights,
            placement: Placement::Cpu,
        })
    }

    /// Name of the output projection (the embedding when tied).
    pub fn output_weight_name(&self) -> &'static str {
        unmask_dream::forward::output_weight_name(&self.weights)
    }
}

/// Every tensor's values, to `depth` (see [`unmask_kernels::finite`]).
fn check_finite(file: &GgufFile, depth: Depth) -> Result<()> {
    for info in file.tensors() {
        unmask_kernels::finite::check_tensor(&info.name, info.ty, file.tensor_data(info), depth)?;
    }
    Ok(())
}

/// A model path must name a GGUF file. A folder (a Hugging Face checkpoint, most often) or another
/// kind of file gets a message that says what it is and what to do, instead of the error of
/// mapping it ("No such device" for a folder, "bad magic" for a text file).
fn check_model_path(path: &Path) -> Result<()> {
    use unmask_dream::sniff::{sniff, FileKind};
    // A missing or unreadable path is reported by the GGUF reader with its own error.
    let Ok(kind) = sniff(path) else {
        return Ok(());
    };
    let convert = |dir: &Path| {
        format!(
            "convert it into one GGUF file first: unmask-quantize {} model.gguf --type q4_k_m",
            dir.display()
        )
    };
    let message = match kind {
        FileKind::Gguf => return Ok(()),
        FileKind::Folder => {
            let ggufs: Vec<String> = std::fs::read_dir(path)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".gguf"))
                        .collect()
                })
                .unwrap_or_default();
            if path.join("config.json").is_file() {
                format!(
                    "{} is a folder (a Hugging Face checkpoint), not a model file; {}",
                    path.display(),
                    convert(path)
                )
            } else if let Some(first) = ggufs.iter().min() {
                format!(
                    "{} is a folder, not a model file; it holds {}: pass -m {}",
                    path.display(),
                    ggufs.join(", "),
                    path.join(first).display()
                )
            } else {
                format!(
                    "{} is a folder, not a model file: pass a GGUF file, or, for a Hugging Face \
                     checkpoint folder, {}",
                    path.display(),
                    convert(path)
                )
            }
        }
        FileKind::Safetensors | FileKind::Json => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            format!(
                "{} is not a GGUF file: it is {}; for the Hugging Face checkpoint folder that \
                 holds it, {}",
                path.display(),
                kind.description(),
                convert(dir.unwrap_or(Path::new("CHECKPOINT_FOLDER")))
            )
        }
        _ => format!(
            "{} is not a GGUF file: it is {}",
            path.display(),
            kind.description()
        ),
    };
    Err(Error::NotAModelFile {
        message,
        folder: kind == FileKind::Folder,
    })
}

/// Every tensor the graph uses must exist with the shape the metadata implies, so that graph
/// construction never meets a surprise.
fn check_tensor_shapes(file: &GgufFile, c: &DreamConfig) -> Result<()> {
    for spec in layout::tensor_specs(c) {
        let info = file.tensor(&spec.gguf_name).ok_or_else(|| {
            Error::Model(format!(
                "tensor `{}` is missing from the file",
                spec.gguf_name
            ))
        })?;
        if info.shape != spec.gguf_shape() {
            return Err(Error::Model(format!(
                "tensor `{}` has shape {:?}, the metadata implies {:?}",
                spec.gguf_name,
                info.shape,
                spec.gguf_shape()
            )));
        }
    }
    Ok(())
}
