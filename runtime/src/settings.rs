//! Generation settings, defined once, and where each effective value comes from.
//!
//! Every setting of a generation is a field of [`GenerateParams`], and its built-in default is
//! `GenerateParams::default()`: DiffuCoder-Instruct's recommended settings (docs/model.md §4).
//! Front ends never copy those values; they stack [`Layer`]s over them, each replacing what it
//! sets, lowest first:
//!
//! 1. built-in ([`Settings::builtin`]);
//! 2. a tool's own overlay where it has one (`unmask bench`'s measurement settings, the trainer's
//!    published coupled-GRPO rollouts);
//! 3. the model file's `unmask.generation.*` values, written by unmask-quantize from the
//!    checkpoint's `generation_config.json` ([`FileSettings`]); a value outside its range is
//!    left out with the reason ([`Ignored`]), never an error;
//! 4. what the caller asked for (command-line flags, the fields a C program sets).
//!
//! `unmask generate` stacks 1 < 3 < 4, `unmask bench` 1 < 3 < 2 < 4 (its measurement settings win
//! over the file), the trainer's rollouts 1 < 2 < 4.
//!
//! **Steps follow the length.** A layer gives steps as a rule ([`Steps`]) that is applied to the
//! number of new tokens actually asked for: built-in, one step per new token; a model file that
//! stores `steps` and `max_new_tokens`, its steps per token (16 per 32 tokens gives 32 steps for
//! 64 tokens), rounded to the nearest and kept between 1 and the number of tokens; a file that
//! stores `steps` alone, that many, or one per token when the length is shorter. The count is
//! rounded to what the block layout admits (a multiple of the number of blocks, at least 2 per
//! block for the fixed-step cached modes, a divisor of the length for the no-cache threshold
//! mode), so a rule never makes a generation fail that one step per token would run.

use crate::model::{GenerationDefaults, ModelSpec};
use crate::params::{check, Algorithm, CacheMode, GenerateParams, DEFAULT_CACHE_BLOCK};
use serde_json::{json, Value};
use unmask_dream::layout::keys::GENERATION_PREFIX;

/// One generation setting: a field of [`GenerateParams`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    MaxNewTokens,
    Steps,
    Alg,
    Temperature,
    TopP,
    TopK,
    AlgTemp,
    Eps,
    BlockLength,
    Seed,
    Cache,
    Threshold,
}

impl Setting {
    /// Every setting, in the order reports list them.
    pub const ALL: [Setting; 12] = [
        Setting::MaxNewTokens,
        Setting::Steps,
        Setting::Alg,
        Setting::Temperature,
        Setting::TopP,
        Setting::TopK,
        Setting::AlgTemp,
        Setting::Eps,
        Setting::BlockLength,
        Setting::Seed,
        Setting::Cache,
        Setting::Threshold,
    ];

    /// The name: the field of [`GenerateParams`], the key of reports, and the model file's key
    /// after `unmask.generation.` where it has one.
    pub fn name(self) -> &'static str {
        match self {
            Setting::MaxNewTokens => "max_new_tokens",
            Setting::Steps => "steps",
            Setting::Alg => "alg",
            Setting::Temperature => "temperature",
            Setting::TopP => "top_p",
            Setting::TopK => "top_k",
            Setting::AlgTemp => "alg_temp",
            Setting::Eps => "eps",
            Setting::BlockLength => "block_length",
            Setting::Seed => "seed",
            Setting::Cache => "cache",
            Setting::Threshold => "threshold",
        }
    }

    /// Whether a model file can store it (`generation_config.json` has the sampling settings and
    /// the length, not the fast-decoding modes or a seed).
    pub fn in_model_file(self) -> bool {
        !matches!(self, Setting::Seed | Setting::Cache | Setting::Threshold)
    }

    /// The model file's key (`unmask.generation.<name>`), for the settings it can store.
    pub fn file_key(self) -> Option<String> {
        self.in_model_file()
            .then(|| format!("{GENERATION_PREFIX}{}", self.name()))
    }

    /// What the setting does, for a flag's help line.
    pub fn about(self) -> &'static str {
        match self {
            Setting::MaxNewTokens => {
                "Length of the canvas to fill, in tokens (the answer is cut at the first end token)"
            }
            Setting::Steps => {
                "Denoising steps, at most the number of new tokens (fewer steps commit several \
                 tokens per step)"
            }
            Setting::Alg => {
                "Which positions to commit: origin, maskgit_plus, topk_margin or entropy"
            }
            Setting::Temperature => "Sampling temperature; 0 takes the most likely token",
            Setting::TopP => "Nucleus filter, in (0, 1]; 1 turns it off",
            Setting::TopK => {
                "Keep only the k most likely tokens (after the nucleus filter); 0 turns it off. \
                 The built-in 50 is what Dream's published code applies when the caller passes \
                 none (docs/model.md §4)"
            }
            Setting::AlgTemp => {
                "Temperature of the choice of positions, >= 0 (0: the most confident ones)"
            }
            Setting::Eps => "Final time of the schedule linspace(1, eps, steps + 1), in (0, 1)",
            Setting::BlockLength => "Denoise in blocks of this many new tokens, left to right",
            Setting::Seed => {
                "Seed of unmask's own random generator (PyTorch's stream cannot be reproduced)"
            }
            Setting::Cache => "Key/value cache of the fast-decoding modes: none, prefix or dual",
            Setting::Threshold => "Confidence threshold of parallel decoding, in (0, 1]",
        }
    }

    /// The bracket of a flag's help line: `[default: …]` with the value this setting takes when
    /// the flag is not given, under `overlay` (a tool's own settings, above the model file) when
    /// there is one.
    pub fn default_help(self, overlay: Option<&Layer>) -> String {
        let builtin = Settings::builtin();
        if let Some(shown) = overlay.and_then(|o| o.describe(self)) {
            return if self.in_model_file() {
                format!("[default: {shown}; the model file's value is not used]")
            } else {
                format!("[default: {shown}]")
            };
        }
        let shown = builtin.describe(self);
        if self.in_model_file() {
            format!("[default: the model file's value, else {shown}]")
        } else {
            format!("[default: {shown}]")
        }
    }

    /// A flag's help line: what it does and its default.
    pub fn help(self, overlay: Option<&Layer>) -> String {
        format!("{} {}", self.about(), self.default_help(overlay))
    }
}

/// Where an effective value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `GenerateParams::default()`.
    BuiltIn,
    /// A tool's own settings, by name (`"bench"`, `"coupled-GRPO run"`).
    Overlay(&'static str),
    /// The model file's `unmask.generation.*` value.
    ModelFile,
    /// What the caller passed (a command-line flag).
    Flag,
}

impl Source {
    /// As reports write it: "built-in", "model file", "flag", or the overlay's name.
    pub fn name(self) -> &'static str {
        match self {
            Source::BuiltIn => "built-in",
            Source::Overlay(name) => name,
            Source::ModelFile => "model file",
            Source::Flag => "flag",
        }
    }
}

/// How many denoising steps a layer asks for, applied to the number of new tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Steps {
    /// Exactly this many (checked against the length like any value the caller gives).
    Exactly(usize),
    /// This many, or one per new token when the length is shorter.
    AtMost(usize),
    /// `steps` per `tokens` new tokens, scaled to the length asked for.
    PerTokens { steps: usize, tokens: usize },
}

impl Steps {
    /// The built-in rule: `GenerateParams::default()`'s steps per new token (one per token).
    pub fn builtin() -> Steps {
        let d = GenerateParams::default();
        Steps::PerTokens {
            steps: d.steps,
            tokens: d.max_new_tokens,
        }
    }

    /// The steps for the other settings of `p`: its length, blocks and fast mode (see the
    /// module's documentation). `Exactly` is returned as it is; the rest are rounded to the
    /// nearest count the layout admits, between 1 and the number of new tokens.
    pub fn resolve(self, p: &GenerateParams) -> usize {
        let n = p.max_new_tokens;
        let target = match self {
            Steps::Exactly(s) => return s,
            Steps::AtMost(s) => s.min(n) as f64,
            Steps::PerTokens { steps, tokens } => n as f64 * steps as f64 / tokens.max(1) as f64,
        };
        if n == 0 {
            return 1; // refused by validate, with max_new_tokens named
        }
        if p.cache == CacheMode::None && p.threshold.is_some() {
            // No-cache parallel decoding: the steps must divide the length. The nearest divisor,
            // the larger one on a tie (more steps, closer to exact decoding).
            return (1..=n)
                .filter(|d| n.is_multiple_of(*d))
                .min_by(|a, b| {
                    let (da, db) = ((*a as f64 - target).abs(), (*b as f64 - target).abs());
                    da.total_cmp(&db).then(b.cmp(a))
                })
                .unwrap_or(n);
        }
        let block = match p.cache {
            CacheMode::None => p.block_length,
            _ => Some(p.cache_block()),
        };
        // A block length that does not divide the length is refused by validate: one block then.
        let blocks = block
            .filter(|&b| b > 0 && n.is_multiple_of(b))
            .map_or(1, |b| n / b);
        let per_block_tokens = n / blocks;
        let fixed_step_cache = p.cache != CacheMode::None && p.threshold.is_none();
        let least = if fixed_step_cache { 2 } else { 1 }.min(per_block_tokens);
        let per_block = ((target / blocks as f64).round() as usize).clamp(least, per_block_tokens);
        per_block * blocks
    }

    /// As `--help` and reports describe it.
    pub fn describe(self) -> String {
        match self {
            Steps::Exactly(s) => s.to_string(),
            Steps::AtMost(s) => format!("{s}, at most one per new token"),
            Steps::PerTokens { steps, tokens } if steps == tokens => "one per new token".into(),
            Steps::PerTokens { steps, tokens } => format!("{steps} per {tokens} new tokens"),
        }
    }
}

/// One layer of settings: each `Some` replaces the value of the layers below. For the optional
/// settings, `Some(None)` turns them off (no nucleus filter, no top-k, no blocks, no threshold).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layer {
    pub max_new_tokens: Option<usize>,
    pub steps: Option<Steps>,
    pub alg: Option<Algorithm>,
    pub temperature: Option<f32>,
    pub top_p: Option<Option<f32>>,
    pub top_k: Option<Option<usize>>,
    pub alg_temp: Option<f32>,
    pub eps: Option<f32>,
    pub block_length: Option<Option<usize>>,
    pub seed: Option<u64>,
    pub cache: Option<CacheMode>,
    pub threshold: Option<Option<f32>>,
}

impl Layer {
    /// Whether the layer sets `setting`.
    pub fn sets(&self, setting: Setting) -> bool {
        match setting {
            Setting::MaxNewTokens => self.max_new_tokens.is_some(),
            Setting::Steps => self.steps.is_some(),
            Setting::Alg => self.alg.is_some(),
            Setting::Temperature => self.temperature.is_some(),
            Setting::TopP => self.top_p.is_some(),
            Setting::TopK => self.top_k.is_some(),
            Setting::AlgTemp => self.alg_temp.is_some(),
            Setting::Eps => self.eps.is_some(),
            Setting::BlockLength => self.block_length.is_some(),
            Setting::Seed => self.seed.is_some(),
            Setting::Cache => self.cache.is_some(),
            Setting::Threshold => self.threshold.is_some(),
        }
    }

    /// The value the layer gives `setting`, as `--help` shows it, when it sets it.
    pub fn describe(&self, setting: Setting) -> Option<String> {
        self.sets(setting).then(|| {
            Settings::builtin()
                .with(Source::BuiltIn, self)
                .describe(setting)
        })
    }

    /// The top-p of a flag or a stored value: 1 turns the filter off; anything else is checked
    /// when the settings are.
    pub fn top_p_value(p: f32) -> Option<f32> {
        (p != 1.0).then_some(p)
    }

    /// The top-k of a flag or a stored value: 0 turns the filter off.
    pub fn top_k_value(k: usize) -> Option<usize> {
        (k != 0).then_some(k)
    }
}

/// The effective settings and the source of each.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Every value but the steps, which [`Settings::params`] computes from `steps`.
    values: GenerateParams,
    steps: Steps,
    sources: [Source; Setting::ALL.len()],
}

impl Settings {
    /// The built-in defaults, `GenerateParams::default()`.
    pub fn builtin() -> Self {
        Settings {
            values: GenerateParams::default(),
            steps: Steps::builtin(),
            sources: [Source::BuiltIn; Setting::ALL.len()],
        }
    }

    /// These settings with `layer` on top: what it sets replaces the value and its source.
    pub fn with(mut self, source: Source, layer: &Layer) -> Self {
        let v = &mut self.values;
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(x) = layer.$field { v.$field = x; } )* };
        }
        take!(
            max_new_tokens,
            alg,
            temperature,
            top_p,
            top_k,
            alg_temp,
            eps,
            block_length,
            seed
        );
        take!(cache, threshold);
        if let Some(s) = layer.steps {
            self.steps = s;
        }
        for (i, setting) in Setting::ALL.iter().enumerate() {
            if layer.sets(*setting) {
                self.sources[i] = source;
            }
        }
        self
    }

    /// The parameters of a generation, the steps computed for the length (not yet validated:
    /// [`GenerateParams::validate`] names what is out of range).
    pub fn params(&self) -> GenerateParams {
        let mut p = self.values.clone();
        // A model file's block length is a default for the modes that have blocks and lengths it
        // divides: the no-cache parallel mode has none, and another length runs without blocks
        // (or with the cached modes' own default) rather than failing.
        if self.source(Setting::BlockLength) == Source::ModelFile {
            let no_blocks = p.cache == CacheMode::None && p.threshold.is_some();
            if no_blocks
                || p.block_length
                    .is_some_and(|b| !p.max_new_tokens.is_multiple_of(b))
            {
                p.block_length = None;
            }
        }
        p.steps = self.steps.resolve(&p);
        p
    }

    /// The steps rule in effect.
    pub fn steps_rule(&self) -> Steps {
        self.steps
    }

    /// Where the value of `setting` comes from.
    pub fn source(&self, setting: Setting) -> Source {
        // The variants are declared in the order of `Setting::ALL`.
        self.sources[setting as usize]
    }

    /// The value of `setting` as `--help` shows it (the steps as their rule).
    pub fn describe(&self, setting: Setting) -> String {
        let v = &self.values;
        let off = |what: &str| format!("{what} (off)");
        match setting {
            Setting::MaxNewTokens => v.max_new_tokens.to_string(),
            Setting::Steps => self.steps.describe(),
            Setting::Alg => v.alg.name().into(),
            Setting::Temperature => v.temperature.to_string(),
            Setting::TopP => v.top_p.map_or_else(|| off("1"), |p| p.to_string()),
            Setting::TopK => v.top_k.map_or_else(|| off("0"), |k| k.to_string()),
            Setting::AlgTemp => v.alg_temp.to_string(),
            Setting::Eps => v.eps.to_string(),
            Setting::BlockLength => v.block_length.map_or_else(
                || format!("no blocks, {DEFAULT_CACHE_BLOCK} with a cache"),
                |b| b.to_string(),
            ),
            Setting::Seed => v.seed.to_string(),
            Setting::Cache => v.cache.name().into(),
            Setting::Threshold => v.threshold.map_or_else(|| "off".into(), |t| t.to_string()),
        }
    }

    /// Every effective setting as `{"<name>": {"value": …, "source": "built-in" | "model file" |
    /// "flag" | <overlay>}}`, the values those of `params` (the steps counted, the block length
    /// the cached modes use, `null` for a filter or mode that is off).
    pub fn report(&self) -> Value {
        let p = self.params();
        let mut out = serde_json::Map::new();
        for setting in Setting::ALL {
            let value = match setting {
                Setting::MaxNewTokens => json!(p.max_new_tokens),
                Setting::Steps => json!(p.steps),
                Setting::Alg => json!(p.alg.name()),
                Setting::Temperature => float(p.temperature),
                Setting::TopP => p.top_p.map_or(Value::Null, float),
                Setting::TopK => json!(p.top_k),
                Setting::AlgTemp => float(p.alg_temp),
                Setting::Eps => float(p.eps),
                Setting::BlockLength => match p.cache {
                    CacheMode::None => json!(p.block_length),
                    _ => json!(p.cache_block()),
                },
                Setting::Seed => json!(p.seed),
                Setting::Cache => json!(p.cache.name()),
                Setting::Threshold => p.threshold.map_or(Value::Null, float),
            };
            out.insert(
                setting.name().into(),
                json!({"value": value, "source": self.source(setting).name()}),
            );
        }
        Value::Object(out)
    }

    /// The values taken from the model file that differ from the built-in defaults, as
    /// `name value` (for error messages: a refused combination may come from the file).
    pub fn from_model_file(&self) -> Vec<String> {
        let builtin = Settings::builtin();
        Setting::ALL
            .into_iter()
            .filter(|s| self.source(*s) == Source::ModelFile)
            .filter(|s| self.describe(*s) != builtin.describe(*s))
            .map(|s| format!("{} {}", s.name(), self.describe(s)))
            .collect()
    }
}

/// An f32 as JSON, written as its shortest decimal (0.4, not 0.4000000059604645).
fn float(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(|x| serde_json::Number::from_f64(x).map(Value::Number))
        .unwrap_or(Value::Null)
}

/// A value of the model file that is not used, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Ignored {
    /// The full key, `unmask.generation.<name>`.
    pub key: String,
    /// The stored value as written.
    pub value: String,
    pub reason: String,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the model file's {} = {} is ignored: {}",
            self.key, self.value, self.reason
        )
    }
}

impl Ignored {
    /// As reports write it: `{"key", "value", "reason"}`.
    pub fn to_json(&self) -> Value {
        json!({"key": self.key, "value": self.value, "reason": self.reason})
    }
}

/// The settings a model file stores: its valid `unmask.generation.*` values as a layer, and the
/// values left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileSettings {
    pub layer: Layer,
    pub ignored: Vec<Ignored>,
}

impl FileSettings {
    /// The settings stored in the file `spec` was read from.
    pub fn of(spec: &ModelSpec) -> Self {
        Self::read(&spec.defaults, spec.context_length())
    }

    /// Checks the stored `defaults` of a model with a context of `context` tokens: each value
    /// outside its setting's range is left out with the reason, as is a length that leaves no
    /// room for a prompt, and steps above the stored length.
    pub fn read(defaults: &GenerationDefaults, context: usize) -> Self {
        let mut out = FileSettings::default();
        for (key, value) in &defaults.unreadable {
            let expected = match key.strip_prefix(GENERATION_PREFIX) {
                Some("alg") => "a name (origin, maskgit_plus, topk_margin, entropy)",
                Some("steps" | "max_new_tokens" | "top_k") => "a whole number >= 0",
                _ => "a number",
            };
            out.ignore(key.clone(), value.clone(), format!("expected {expected}"));
        }
        let key = |s: Setting| s.file_key().unwrap_or_default();
        // The stored value when `check` accepts it; else it is recorded as ignored.
        macro_rules! checked {
            ($setting:expr, $value:expr, $check:expr) => {{
                let check = $check;
                $value.and_then(|v| match check(v) {
                    Ok(()) => Some(v),
                    Err(e) => {
                        out.ignore(key($setting), v.to_string(), e.to_string());
                        None
                    }
                })
            }};
        }
        let mut l = Layer::default();
        let tokens = checked!(
            Setting::MaxNewTokens,
            defaults.max_new_tokens,
            check::max_new_tokens
        );
        l.max_new_tokens = checked!(Setting::MaxNewTokens, tokens, |n: usize| {
            if n >= context {
                Err(format!(
                    "it leaves no room for a prompt in the model's context of {context} tokens"
                ))
            } else {
                Ok(())
            }
        });
        let steps = checked!(Setting::Steps, defaults.steps, check::steps);
        l.steps = match (steps, tokens) {
            (Some(s), Some(t)) if s > t => {
                out.ignore(
                    key(Setting::Steps),
                    s.to_string(),
                    format!("it exceeds the file's max_new_tokens ({t})"),
                );
                None
            }
            (Some(steps), Some(tokens)) => Some(Steps::PerTokens { steps, tokens }),
            (Some(s), None) => Some(Steps::AtMost(s)),
            (None, _) => None,
        };
        l.alg = defaults
            .alg
            .as_deref()
            .and_then(|name| match name.parse::<Algorithm>() {
                Ok(a) => Some(a),
                Err(e) => {
                    out.ignore(key(Setting::Alg), format!("{name:?}"), e.to_string());
                    None
                }
            });
        l.temperature = checked!(
            Setting::Temperature,
            defaults.temperature,
            check::temperature
        );
        l.top_p = defaults.top_p.and_then(|p| {
            let value = Layer::top_p_value(p);
            match value.map_or(Ok(()), check::top_p) {
                Ok(()) => Some(value),
                Err(e) => {
                    out.ignore(key(Setting::TopP), p.to_string(), e.to_string());
                    None
                }
            }
        });
        l.top_k = defaults.top_k.map(Layer::top_k_value);
        l.alg_temp = checked!(Setting::AlgTemp, defaults.alg_temp, check::alg_temp);
        l.eps = checked!(Setting::Eps, defaults.eps, check::eps);
        l.block_length = checked!(
            Setting::BlockLength,
            defaults.block_length,
            check::block_length
        )
        .map(Some);
        out.layer = l;
        out
    }

    fn ignore(&mut self, key: String, value: String, reason: String) {
        self.ignored.push(Ignored { key, value, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(f: impl FnOnce(&mut GenerationDefaults)) -> FileSettings {
        let mut d = GenerationDefaults::default();
        f(&mut d);
        FileSettings::read(&d, 4096)
    }

    #[test]
    fn builtin_is_the_default_params() {
        let s = Settings::builtin();
        assert_eq!(s.params(), GenerateParams::default());
        assert!(Setting::ALL.iter().all(|&x| s.source(x) == Source::BuiltIn));
        // One step per token whatever the length.
        let short = s.with(
            Source::Flag,
            &Layer {
                max_new_tokens: Some(40),
                ..Default::default()
            },
        );
        assert_eq!(short.params().steps, 40);
        assert_eq!(short.source(Setting::MaxNewTokens), Source::Flag);
        assert_eq!(short.source(Setting::Steps), Source::BuiltIn);
    }

    #[test]
    fn the_files_steps_per_token_follow_the_length() {
        let file = stored(|d| {
            d.steps = Some(16);
            d.max_new_tokens = Some(32);
        });
        assert!(file.ignored.is_empty());
        let s = Settings::builtin().with(Source::ModelFile, &file.layer);
        assert_eq!((s.params().max_new_tokens, s.params().steps), (32, 16));
        let asked = |n: usize| {
            s.clone()
                .with(
                    Source::Flag,
                    &Layer {
                        max_new_tokens: Some(n),
                        ..Default::default()
                    },
                )
                .params()
                .steps
        };
        assert_eq!(asked(64), 32);
        assert_eq!(asked(7), 4); // 3.5 rounds up
        assert_eq!(asked(1), 1);
        // Steps alone: that many, at most one per token.
        let alone = stored(|d| d.steps = Some(64));
        let s = Settings::builtin().with(Source::ModelFile, &alone.layer);
        assert_eq!(s.params().steps, 64);
        let short = s.with(
            Source::Flag,
            &Layer {
                max_new_tokens: Some(20),
                ..Default::default()
            },
        );
        assert_eq!(short.params().steps, 20);
        assert_eq!(short.source(Setting::Steps), Source::ModelFile);
    }

    #[test]
    fn the_files_block_length_applies_where_blocks_fit() {
        let file = stored(|d| {
            d.max_new_tokens = Some(64);
            d.steps = Some(64);
            d.block_length = Some(8);
        });
        assert!(file.ignored.is_empty());
        let s = Settings::builtin().with(Source::ModelFile, &file.layer);
        assert_eq!(s.source(Setting::BlockLength), Source::ModelFile);
        let with = |l: Layer| s.clone().with(Source::Flag, &l).params();
        // Exact decoding and the cached modes use it.
        let p = s.params();
        assert_eq!((p.block_length, p.steps), (Some(8), 64));
        assert!(p.validate().is_ok());
        let dual = with(Layer {
            cache: Some(CacheMode::Dual),
            ..Default::default()
        });
        assert_eq!(dual.cache_block(), 8);
        assert!(dual.validate().is_ok());
        // The no-cache parallel mode has no blocks; a length it does not divide runs without.
        let parallel = with(Layer {
            threshold: Some(Some(0.9)),
            ..Default::default()
        });
        assert_eq!(parallel.block_length, None);
        assert!(parallel.validate().is_ok());
        let odd = with(Layer {
            max_new_tokens: Some(20),
            ..Default::default()
        });
        assert_eq!(odd.block_length, None);
        assert!(odd.validate().is_ok());
        // A flag's block length is the caller's and is checked as given.
        let flagged = with(Layer {
            max_new_tokens: Some(20),
            block_length: Some(Some(8)),
            ..Default::default()
        });
        assert_eq!(flagged.block_length, Some(8));
        assert!(flagged.validate().is_err());
        // 0 is out of range: ignored with the reason.
        let zero = stored(|d| d.block_length = Some(0));
        assert_eq!(zero.layer.block_length, None);
        assert_eq!(zero.ignored.len(), 1);
    }

    #[test]
    fn steps_fit_the_block_layout() {
        let rule = Steps::PerTokens {
            steps: 1,
            tokens: 3,
        };
        let p = |f: &dyn Fn(&mut GenerateParams)| {
            let mut p = GenerateParams {
                max_new_tokens: 96,
                ..Default::default()
            };
            f(&mut p);
            p.steps = rule.resolve(&p);
            p.validate().map(|_| p.steps)
        };
        assert_eq!(p(&|_| ()).unwrap(), 32);
        // 3 blocks of 32: 11 steps each (10.67 rounded).
        assert_eq!(p(&|p| p.block_length = Some(32)).unwrap(), 33);
        assert_eq!(p(&|p| p.cache = CacheMode::Dual).unwrap(), 33);
        // The no-cache threshold mode: a divisor of 96 nearest 32.
        assert_eq!(p(&|p| p.threshold = Some(0.9)).unwrap(), 32);
        let few = Steps::AtMost(1);
        let mut dual = GenerateParams {
            max_new_tokens: 64,
            cache: CacheMode::Dual,
            ..Default::default()
        };
        dual.steps = few.resolve(&dual);
        assert_eq!(dual.steps, 4); // at least 2 per block of 32
        assert!(dual.validate().is_ok());
    }

    #[test]
    fn invalid_stored_values_are_ignored_with_the_key() {
        let file = stored(|d| {
            d.top_p = Some(1.5);
            d.temperature = Some(f32::NAN);
            d.alg = Some("greedy".into());
            d.eps = Some(0.0);
            d.steps = Some(300);
            d.max_new_tokens = Some(256);
            d.top_k = Some(0);
            d.unreadable
                .push(("unmask.generation.alg_temp".into(), "\"x\"".into()));
        });
        let keys: Vec<&str> = file.ignored.iter().map(|i| i.key.as_str()).collect();
        for k in ["top_p", "temperature", "alg", "eps", "steps", "alg_temp"] {
            assert!(
                keys.contains(&format!("unmask.generation.{k}").as_str()),
                "{k}: {keys:?}"
            );
        }
        let top_p = file
            .ignored
            .iter()
            .find(|i| i.key.ends_with("top_p"))
            .unwrap();
        assert_eq!(top_p.value, "1.5");
        assert!(
            top_p.to_string().contains("top_p 1.5 must be in (0, 1]"),
            "{top_p}"
        );
        let s = Settings::builtin().with(Source::ModelFile, &file.layer);
        let p = s.params();
        assert!(p.validate().is_ok());
        assert_eq!(p.top_p, GenerateParams::default().top_p);
        assert_eq!(s.source(Setting::TopP), Source::BuiltIn);
        // top_k 0 turns the filter off; max_new_tokens stays.
        assert_eq!((p.top_k, p.max_new_tokens, p.steps), (None, 256, 256));
        assert_eq!(s.source(Setting::TopK), Source::ModelFile);
        // top_p 1 turns the nucleus filter off.
        let off = stored(|d| d.top_p = Some(1.0));
        assert_eq!(off.layer.top_p, Some(None));
        // A length beyond the context.
        let long = FileSettings::read(
            &GenerationDefaults {
                max_new_tokens: Some(4096),
                ..Default::default()
            },
            4096,
        );
        assert_eq!(long.layer.max_new_tokens, None);
        assert!(long.ignored[0].reason.contains("context of 4096"));
    }

    #[test]
    fn help_states_the_default_and_the_file() {
        assert_eq!(
            Setting::Temperature.default_help(None),
            "[default: the model file's value, else 0.4]"
        );
        assert_eq!(
            Setting::Steps.default_help(None),
            "[default: the model file's value, else one per new token]"
        );
        assert_eq!(Setting::Seed.default_help(None), "[default: 0]");
        let bench = Layer {
            temperature: Some(0.0),
            top_p: Some(None),
            steps: Some(Steps::AtMost(64)),
            ..Default::default()
        };
        assert_eq!(
            Setting::Temperature.default_help(Some(&bench)),
            "[default: 0; the model file's value is not used]"
        );
        assert_eq!(
            Setting::TopP.default_help(Some(&bench)),
            "[default: 1 (off); the model file's value is not used]"
        );
        assert_eq!(
            Setting::Steps.default_help(Some(&bench)),
            "[default: 64, at most one per new token; the model file's value is not used]"
        );
        assert_eq!(
            Setting::Eps.default_help(Some(&bench)),
            "[default: the model file's value, else 0.001]"
        );
    }

    #[test]
    fn the_report_names_every_setting_and_its_source() {
        let file = stored(|d| d.temperature = Some(0.2));
        let s = Settings::builtin()
            .with(Source::ModelFile, &file.layer)
            .with(
                Source::Flag,
                &Layer {
                    seed: Some(3),
                    ..Default::default()
                },
            );
        let r = s.report();
        assert_eq!(r.as_object().unwrap().len(), Setting::ALL.len());
        assert_eq!(
            r["temperature"],
            json!({"value": 0.2, "source": "model file"})
        );
        assert_eq!(r["seed"], json!({"value": 3, "source": "flag"}));
        assert_eq!(r["top_p"], json!({"value": 0.95, "source": "built-in"}));
        assert_eq!(r["threshold"], json!({"value": null, "source": "built-in"}));
        assert_eq!(s.from_model_file(), vec!["temperature 0.2".to_string()]);
    }
}
