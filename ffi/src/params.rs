//! The parameter structs of unmask.h (`#[repr(C)]`, field for field), their defaults (the
//! runtime's one definition, `unmask_runtime::settings`: built-in, and built-in < model file for
//! `unmask_model_default_params`), and their conversion to the runtime's parameters with every
//! value checked.

use crate::error::{entry, status_entry, FfiError, FfiResult};
use crate::model::{unmask_model, MODELS};
use crate::status::{self, Status};
use unmask_runtime::settings::{FileSettings, Settings, Source, Steps};
use unmask_runtime::{Algorithm, CacheMode, GenerateParams, ModelSpec};

/// The most worker threads a context may ask for.
pub const MAX_THREADS: i32 = 512;

/// `unmask_context_params`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct unmask_context_params {
    pub n_threads: i32,
}

/// `unmask_generate_params`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct unmask_generate_params {
    pub seed: u64,
    pub max_new_tokens: i32,
    pub steps: i32,
    pub alg: i32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: i32,
    pub alg_temp: f32,
    pub eps: f32,
    pub block_length: i32,
    pub chat: i32,
    pub n_threads: i32,
    pub cache: i32,
    pub threshold: f32,
}

pub const ALG_ORIGIN: i32 = 0;
pub const ALG_MASKGIT_PLUS: i32 = 1;
pub const ALG_TOPK_MARGIN: i32 = 2;
pub const ALG_ENTROPY: i32 = 3;

pub const CACHE_NONE: i32 = 0;
pub const CACHE_PREFIX: i32 = 1;
pub const CACHE_DUAL: i32 = 2;

/// Whether `unmask_generate_text` applies the Instruct template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chat {
    Auto,
    Off,
    On,
}

/// A checked `unmask_generate_params`.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub params: GenerateParams,
    pub chat: Chat,
    /// `None`: the context's thread count.
    pub threads: Option<usize>,
}

impl Default for unmask_generate_params {
    /// The built-in defaults (`unmask generate` on a model file without generation settings).
    fn default() -> Self {
        unmask_generate_params::from_params(&GenerateParams::default())
    }
}

impl unmask_generate_params {
    /// The C struct of `p`, with steps 0: the steps follow the length (see [`Self::check_for`]).
    pub fn from_params(p: &GenerateParams) -> Self {
        let int = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        unmask_generate_params {
            seed: p.seed,
            max_new_tokens: int(p.max_new_tokens),
            steps: 0,
            alg: match p.alg {
                Algorithm::Origin => ALG_ORIGIN,
                Algorithm::MaskgitPlus => ALG_MASKGIT_PLUS,
                Algorithm::TopkMargin => ALG_TOPK_MARGIN,
                Algorithm::Entropy => ALG_ENTROPY,
            },
            temperature: p.temperature,
            top_p: p.top_p.unwrap_or(1.0),
            top_k: p.top_k.map_or(0, int),
            alg_temp: p.alg_temp,
            eps: p.eps,
            block_length: p.block_length.map_or(0, int),
            chat: -1,
            n_threads: 0,
            cache: match p.cache {
                CacheMode::None => CACHE_NONE,
                CacheMode::Prefix => CACHE_PREFIX,
                CacheMode::Dual => CACHE_DUAL,
            },
            threshold: p.threshold.unwrap_or(0.0),
        }
    }

    /// The built-in defaults with the model file's valid generation settings over them: what
    /// `unmask generate` runs with on that model when no flag is given.
    pub fn for_model(spec: &ModelSpec) -> Self {
        let file = FileSettings::of(spec);
        Self::from_params(
            &Settings::builtin()
                .with(Source::ModelFile, &file.layer)
                .params(),
        )
    }
}

fn invalid<T>(message: String) -> FfiResult<T> {
    Err(FfiError::InvalidArgument(format!(
        "invalid generation parameter: {message}"
    )))
}

impl unmask_generate_params {
    /// [`Self::check_for`] without a model: steps 0 is the built-in rule, one per new token.
    pub fn check(&self) -> FfiResult<Checked> {
        self.check_with(Steps::builtin())
    }

    /// Converts to the runtime's parameters for a generation on `model`, exactly as
    /// `unmask generate` does with the same options, refusing anything out of range with a
    /// message naming the field. Steps 0 follow the length as `unmask generate` without
    /// `--steps` does: the steps per token that the model file stores, else one per new token.
    pub fn check_for(&self, model: &ModelSpec) -> FfiResult<Checked> {
        let rule = FileSettings::of(model).layer.steps;
        self.check_with(rule.unwrap_or_else(Steps::builtin))
    }

    fn check_with(&self, steps_rule: Steps) -> FfiResult<Checked> {
        let positive = |v: i32, name: &str| -> FfiResult<usize> {
            if v < 1 {
                return invalid(format!("{name} must be at least 1 (got {v})"));
            }
            Ok(v as usize)
        };
        let alg = match self.alg {
            ALG_ORIGIN => Algorithm::Origin,
            ALG_MASKGIT_PLUS => Algorithm::MaskgitPlus,
            ALG_TOPK_MARGIN => Algorithm::TopkMargin,
            ALG_ENTROPY => Algorithm::Entropy,
            other => return invalid(format!("alg {other} is not one of UNMASK_ALG_* (0..=3)")),
        };
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        let top_k = match self.top_k {
            0 => None,
            k if k > 0 => Some(k as usize),
            k => return invalid(format!("top_k {k} must be >= 0 (0 disables it)")),
        };
        let block_length = match self.block_length {
            0 => None,
            b if b > 0 => Some(b as usize),
            b => {
                return invalid(format!(
                    "block_length {b} must be >= 0 (0: one block, or 32 with a cache)"
                ))
            }
        };
        let cache = match self.cache {
            CACHE_NONE => CacheMode::None,
            CACHE_PREFIX => CacheMode::Prefix,
            CACHE_DUAL => CacheMode::Dual,
            other => {
                return invalid(format!(
                    "cache {other} is not one of UNMASK_CACHE_* (0..=2)"
                ))
            }
        };
        // 0 disables; anything else is checked by the runtime ((0, 1]).
        let threshold = (self.threshold != 0.0).then_some(self.threshold);
        let chat = match self.chat {
            -1 => Chat::Auto,
            0 => Chat::Off,
            1 => Chat::On,
            c => return invalid(format!("chat {c} must be -1 (automatic), 0 or 1")),
        };
        let threads = match self.n_threads {
            0 => None,
            n if (1..=MAX_THREADS).contains(&n) => Some(n as usize),
            n => return invalid(format!("n_threads {n} must be in 0..={MAX_THREADS}")),
        };
        let mut params = GenerateParams {
            max_new_tokens: positive(self.max_new_tokens, "max_new_tokens")?,
            steps: 0,
            alg,
            temperature: self.temperature,
            // As the CLI: 1 disables the nucleus filter.
            top_p: Some(self.top_p).filter(|&p| p < 1.0),
            top_k,
            alg_temp: self.alg_temp,
            eps: self.eps,
            block_length,
            seed: self.seed,
            cache,
            threshold,
        };
        params.steps = match self.steps {
            0 => steps_rule.resolve(&params),
            s => positive(s, "steps")?,
        };
        params.validate()?;
        Ok(Checked {
            params,
            chat,
            threads,
        })
    }
}

impl unmask_context_params {
    /// The thread count asked for (0: the number of CPUs).
    pub fn threads(&self) -> FfiResult<usize> {
        match self.n_threads {
            0 => Ok(unmask_kernels::backend::default_threads()),
            n if (1..=MAX_THREADS).contains(&n) => Ok(n as usize),
            n => Err(FfiError::InvalidArgument(format!(
                "n_threads {n} must be in 0..={MAX_THREADS}"
            ))),
        }
    }
}

/// `unmask_context_default_params`.
#[no_mangle]
pub extern "C" fn unmask_context_default_params() -> unmask_context_params {
    let default = unmask_context_params { n_threads: 0 };
    entry(|_| default, || Ok(default))
}

/// `unmask_generate_default_params`.
#[no_mangle]
pub extern "C" fn unmask_generate_default_params() -> unmask_generate_params {
    entry(
        |_| unmask_generate_params::default(),
        || Ok(unmask_generate_params::default()),
    )
}

/// `unmask_model_default_params`: the built-in defaults with the model file's generation
/// settings over them. On failure `*out` (when not NULL) holds the built-in defaults.
///
/// # Safety
/// `out` is NULL or valid for one `unmask_generate_params` write.
#[no_mangle]
pub unsafe extern "C" fn unmask_model_default_params(
    model: *const unmask_model,
    out: *mut unmask_generate_params,
) -> Status {
    status_entry(|| {
        if out.is_null() {
            return Err(FfiError::Null("out"));
        }
        // SAFETY: out is non-NULL and valid for a write by the caller's contract.
        unsafe { out.write(unmask_generate_params::default()) };
        let entry = MODELS.get(model)?;
        let filled = unmask_generate_params::for_model(&entry.model);
        // SAFETY: as above.
        unsafe { out.write(filled) };
        Ok(status::OK)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_clis() {
        let c = unmask_generate_default_params().check().unwrap();
        assert_eq!(c.params, GenerateParams::default());
        assert_eq!(c.chat, Chat::Auto);
        assert_eq!(c.threads, None);
    }

    #[test]
    fn steps_zero_follow_the_length_by_the_rule_given() {
        let d = unmask_generate_params {
            max_new_tokens: 64,
            ..Default::default()
        };
        assert_eq!(d.check().unwrap().params.steps, 64);
        let half = Steps::PerTokens {
            steps: 16,
            tokens: 32,
        };
        assert_eq!(d.check_with(half).unwrap().params.steps, 32);
        // An explicit count is kept.
        let s = unmask_generate_params { steps: 8, ..d };
        assert_eq!(s.check_with(half).unwrap().params.steps, 8);
    }

    #[test]
    fn model_defaults_refuse_null_pointers() {
        let mut out = unmask_generate_params {
            max_new_tokens: 5,
            ..Default::default()
        };
        // SAFETY: `out` is valid for a write; NULL pointers are what is checked.
        let status = unsafe { unmask_model_default_params(std::ptr::null(), &mut out) };
        assert_eq!(status, crate::status::ERR_NULL_ARGUMENT);
        assert_eq!(out, unmask_generate_params::default());
        let bogus = 0x10 as *const unmask_model;
        // SAFETY: as above; the handle is looked up, never dereferenced.
        let status = unsafe { unmask_model_default_params(bogus, &mut out) };
        assert_eq!(status, crate::status::ERR_INVALID_HANDLE);
        // SAFETY: NULL out is refused before any write.
        let status = unsafe { unmask_model_default_params(bogus, std::ptr::null_mut()) };
        assert_eq!(status, crate::status::ERR_NULL_ARGUMENT);
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let d = unmask_generate_params::default();
        let cases = [
            (
                unmask_generate_params {
                    max_new_tokens: -3,
                    ..d
                },
                "max_new_tokens",
            ),
            (unmask_generate_params { steps: -2, ..d }, "steps"),
            (unmask_generate_params { alg: 4, ..d }, "alg 4"),
            (
                unmask_generate_params {
                    top_p: f32::NAN,
                    ..d
                },
                "top_p",
            ),
            (unmask_generate_params { top_p: 1.5, ..d }, "top_p"),
            (unmask_generate_params { top_k: -1, ..d }, "top_k"),
            (
                unmask_generate_params {
                    block_length: -8,
                    ..d
                },
                "block_length",
            ),
            (
                unmask_generate_params {
                    block_length: 3,
                    ..d
                },
                "block_length 3",
            ),
            (unmask_generate_params { chat: 2, ..d }, "chat"),
            (unmask_generate_params { n_threads: -1, ..d }, "n_threads"),
            (
                unmask_generate_params {
                    temperature: f32::NAN,
                    ..d
                },
                "temperature",
            ),
            (
                unmask_generate_params {
                    alg_temp: -1.0,
                    ..d
                },
                "alg_temp",
            ),
            (unmask_generate_params { eps: 0.0, ..d }, "eps"),
            (unmask_generate_params { steps: 300, ..d }, "cannot exceed"),
            (unmask_generate_params { cache: 3, ..d }, "cache 3"),
            (
                unmask_generate_params {
                    threshold: 1.5,
                    ..d
                },
                "threshold",
            ),
            (
                unmask_generate_params {
                    threshold: f32::NAN,
                    ..d
                },
                "threshold",
            ),
            (
                unmask_generate_params {
                    cache: CACHE_DUAL,
                    max_new_tokens: 48,
                    steps: 48,
                    ..d
                },
                "block_length",
            ),
            (
                unmask_generate_params {
                    cache: CACHE_DUAL,
                    max_new_tokens: 64,
                    steps: 2,
                    ..d
                },
                "step per block",
            ),
        ];
        for (p, needle) in cases {
            let e = p.check().unwrap_err();
            assert!(matches!(
                e,
                FfiError::InvalidArgument(_) | FfiError::Runtime(_)
            ));
            assert_eq!(e.status(), crate::status::ERR_INVALID_ARGUMENT);
            assert!(e.to_string().contains(needle), "{e}");
        }
        let top_p_one = unmask_generate_params { top_p: 1.0, ..d }.check().unwrap();
        assert_eq!(top_p_one.params.top_p, None);
    }
}
