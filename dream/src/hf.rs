//! A Hugging Face checkpoint folder: `config.json`, safetensors weights (sharded with
//! `model.safetensors.index.json`, or a single `model.safetensors`), tokenizer files and the
//! optional `generation_config.json`.

use crate::config::DreamConfig;
use crate::safetensors::{Entry, SafetensorsFile};
use crate::{tokenizer_meta, Error, Result};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use unmask_kernels::gguf::GgufValue;

/// Sampling defaults we carry from `generation_config.json` into GGUF metadata (Dream's keys, and
/// unmask's `block_length`: a model trained to answer in blocks can say so).
const GENERATION_KEYS: [&str; 10] = [
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "steps",
    "alg",
    "alg_temp",
    "eps",
    "max_length",
    "block_length",
];

pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: DreamConfig,
    shards: Vec<SafetensorsFile>,
    /// Tensor name -> index into `shards`.
    locations: BTreeMap<String, usize>,
    /// The tokenizer as a `tokenizer.json` document (verbatim when the folder has one).
    pub tokenizer_json: String,
    pub chat_template: Option<String>,
    /// `unmask.generation.*` values.
    pub generation: Vec<(String, GgufValue)>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl HfCheckpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let mut config = DreamConfig::from_hf_json(&config_path, &read_text(&config_path)?)?;
        let (shards, locations) = open_weights(dir)?;
        let generation_path = dir.join("generation_config.json");
        let generation_json = if generation_path.exists() {
            Some(read_json(&generation_path)?)
        } else {
            None
        };
        // Special ids may live only in generation_config.json; config.json wins when both have one.
        if let Some(g) = &generation_json {
            let id = |k: &str| {
                g.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
            };
            config.bos_token_id = config.bos_token_id.or(id("bos_token_id"));
            config.eos_token_id = config.eos_token_id.or(id("eos_token_id"));
            config.pad_token_id = config.pad_token_id.or(id("pad_token_id"));
            config.mask_token_id = config.mask_token_id.or(id("mask_token_id"));
            config.validate().map_err(|message| Error::Config {
                path: generation_path.clone(),
                message,
            })?;
        }
        let tokenizer_json = load_tokenizer_json(dir)?;
        let chat_template = load_chat_template(dir)?;
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            config,
            shards,
            locations,
            tokenizer_json,
            chat_template,
            generation: generation_json
                .as_ref()
                .map(generation_metadata)
                .unwrap_or_default(),
        })
    }

    /// The shard and entry of a tensor, if the checkpoint has it.
    pub fn find(&self, name: &str) -> Option<(&SafetensorsFile, &Entry)> {
        let shard = &self.shards[*self.locations.get(name)?];
        shard.entries().get(name).map(|e| (shard, e))
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.locations.keys()
    }
}

fn open_weights(dir: &Path) -> Result<(Vec<SafetensorsFile>, BTreeMap<String, usize>)> {
    let index_path = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let mut shards = Vec::new();
    let mut locations = BTreeMap::new();
    if index_path.exists() {
        let index = read_json(&index_path)?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::Json {
                path: index_path.clone(),
                message: "`weight_map` object is missing".into(),
            })?;
        let mut shard_ids: HashMap<String, usize> = HashMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| Error::Json {
                path: index_path.clone(),
                message: format!("shard of `{tensor}` is not a string"),
            })?;
            // The index names files inside the folder; anything else (a path, "..") is refused.
            if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') {
                return Err(Error::Json {
                    path: index_path.clone(),
                    message: format!("shard name {file:?} is not a plain file name"),
                });
            }
            let id = match shard_ids.get(file) {
                Some(&id) => id,
                None => {
                    shards.push(SafetensorsFile::open(&dir.join(file))?);
                    shard_ids.insert(file.to_string(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            if !shards[id].entries().contains_key(tensor) {
                return Err(Error::Safetensors {
                    path: dir.join(file),
                    message: format!("the index places `{tensor}` here but the shard lacks it"),
                });
            }
            locations.insert(tensor.clone(), id);
        }
    } else if single.exists() {
        let file = SafetensorsFile::open(&single)?;
        for name in file.entries().keys() {
            locations.insert(name.clone(), 0);
        }
        shards.push(file);
    } else {
        return Err(Error::io(
            dir.join("model.safetensors.index.json"),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no model.safetensors.index.json or model.safetensors in the folder",
            ),
        ));
    }
    Ok((shards, locations))
}

/// `tokenizer.json` verbatim; otherwise one assembled from `vocab.json` + `merges.txt`
/// (+ `added_tokens.json`), the older Qwen2 layout.
fn load_tokenizer_json(dir: &Path) -> Result<String> {
    let path = dir.join("tokenizer.json");
    if path.exists() {
        let text = read_text(&path)?;
        tokenizers::Tokenizer::from_str(&text)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        return Ok(text);
    }
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    if !(vocab_path.exists() && merges_path.exists()) {
        return Err(Error::Tokenizer(format!(
            "{} has neither tokenizer.json nor vocab.json + merges.txt",
            dir.display()
        )));
    }
    let vocab = read_json(&vocab_path)?;
    let mut by_id: BTreeMap<u64, (String, i32)> = BTreeMap::new();
    let entries = vocab
        .as_object()
        .ok_or_else(|| Error::Tokenizer("vocab.json is not an object".into()))?;
    for (token, id) in entries {
        let id = id.as_u64().ok_or_else(|| {
            Error::Tokenizer(format!("vocab.json: id of {token:?} is not an integer"))
        })?;
        by_id.insert(id, (token.clone(), 1));
    }
    let added_path = dir.join("added_tokens.json");
    if added_path.exists() {
        if let Some(added) = read_json(&added_path)?.as_object() {
            for (token, id) in added {
                if let Some(id) = id.as_u64() {
                    by_id.insert(id, (token.clone(), 3));
                }
            }
        }
    }
    let n = by_id.keys().next_back().map_or(0, |&k| k + 1);
    if n != by_id.len() as u64 {
        return Err(Error::Tokenizer(
            "vocab.json + added_tokens.json ids are not contiguous".into(),
        ));
    }
    let (tokens, types): (Vec<String>, Vec<i32>) = by_id.into_values().unzip();
    let merges: Vec<String> = read_text(&merges_path)?
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let tokenizer = tokenizer_meta::tokenizer_from_vocab(&tokens, &types, &merges)?;
    tokenizer
        .to_string(false)
        .map_err(|e| Error::Tokenizer(format!("serialising the assembled tokenizer: {e}")))
}

fn load_chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let json = read_json(&path)?;
    Ok(match json.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        // Newer tokenizers store a list of named templates; the "default" one is the chat format.
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    })
}

pub fn generation_metadata(json: &Value) -> Vec<(String, GgufValue)> {
    let mut out = Vec::new();
    for key in GENERATION_KEYS {
        let value = match json.get(key) {
            Some(Value::Number(n)) if n.is_u64() => n
                .as_u64()
                .map(|v| GgufValue::U32(v.min(u32::MAX as u64) as u32)),
            Some(Value::Number(n)) => n.as_f64().map(|v| GgufValue::F32(v as f32)),
            Some(Value::String(s)) => Some(GgufValue::String(s.clone())),
            _ => None,
        };
        if let Some(value) = value {
            out.push((
                format!("{}{key}", crate::layout::keys::GENERATION_PREFIX),
                value,
            ));
        }
    }
    out
}
