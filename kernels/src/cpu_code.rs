//! Which CPU code runs on this machine: the instruction sets the linked ggml CPU backend was
//! compiled for (fixed at build time: `.cargo/config.toml` asks for the AVX2 generation so that
//! one binary runs on every x86-64 machine since 2013), those the processor offers (detected at
//! run time), the ones it offers that the build leaves unused, and what computes q8_0 products
//! (unmask's own int8 GEMM where the processor has AVX2, chosen at run time). `unmask devices`
//! prints it. [`check_processor`] refuses, with a clear error, a processor that lacks an
//! instruction set the build uses, where ggml would otherwise die of an illegal instruction.

use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::os::raw::c_int;

/// Whether the processor offers an instruction set (`false` off x86-64).
macro_rules! detected {
    ($feature:tt) => {{
        #[cfg(target_arch = "x86_64")]
        fn offered() -> bool {
            std::arch::is_x86_feature_detected!($feature)
        }
        #[cfg(not(target_arch = "x86_64"))]
        fn offered() -> bool {
            false
        }
        offered
    }};
}

/// One instruction set: the name reports use (ggml's), ggml's compile-time query, the
/// processor's run-time detection.
type Feature = (&'static str, unsafe extern "C" fn() -> c_int, fn() -> bool);

/// The instruction sets [`CpuCode`] reports, in the order printed (ggml's "avx512" is AVX-512F).
const FEATURES: [Feature; 11] = [
    ("sse3", sys::ggml_cpu_has_sse3, detected!("sse3")),
    ("ssse3", sys::ggml_cpu_has_ssse3, detected!("ssse3")),
    ("avx", sys::ggml_cpu_has_avx, detected!("avx")),
    ("avx2", sys::ggml_cpu_has_avx2, detected!("avx2")),
    ("fma", sys::ggml_cpu_has_fma, detected!("fma")),
    ("f16c", sys::ggml_cpu_has_f16c, detected!("f16c")),
    ("bmi2", sys::ggml_cpu_has_bmi2, detected!("bmi2")),
    ("avx_vnni", sys::ggml_cpu_has_avx_vnni, detected!("avxvnni")),
    ("avx512", sys::ggml_cpu_has_avx512, detected!("avx512f")),
    (
        "avx512_vnni",
        sys::ggml_cpu_has_avx512_vnni,
        detected!("avx512vnni"),
    ),
    (
        "avx512_bf16",
        sys::ggml_cpu_has_avx512_bf16,
        detected!("avx512bf16"),
    ),
];

/// What CPU code runs, and what the processor would allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuCode {
    /// Instruction sets the linked ggml CPU backend was compiled to use (ggml's
    /// `ggml_cpu_has_*`, which report the build's flags, not the processor).
    pub ggml_built: Vec<&'static str>,
    /// Instruction sets the processor offers (empty on other architectures).
    pub machine: Vec<&'static str>,
    /// Those the processor offers that the ggml build does not use.
    pub unused: Vec<&'static str>,
    /// What computes q8_0 products on the CPU (see [`crate::simd::qgemm::kernel_name`]).
    pub q8_0_products: &'static str,
}

/// The CPU code of this build on this machine.
pub fn cpu_code() -> CpuCode {
    let mut code = CpuCode {
        ggml_built: Vec::new(),
        machine: Vec::new(),
        unused: Vec::new(),
        q8_0_products: crate::simd::qgemm::kernel_name(),
    };
    for (name, ggml_has, offered) in FEATURES {
        // SAFETY: ggml's `ggml_cpu_has_*` take no arguments and return a compile-time constant;
        // they touch no state.
        let built = unsafe { ggml_has() } != 0;
        let offered = offered();
        if built {
            code.ggml_built.push(name);
        }
        if offered {
            code.machine.push(name);
        }
        if offered && !built {
            code.unused.push(name);
        }
    }
    code
}

/// The instruction sets of `built` that `offered` lacks, in `built`'s order.
fn lacking(built: &[&'static str], offered: &[&'static str]) -> Vec<&'static str> {
    built
        .iter()
        .copied()
        .filter(|f| !offered.contains(f))
        .collect()
}

/// An error when the processor lacks an instruction set the linked ggml was compiled to use (on
/// x86-64; elsewhere nothing is detected and nothing is refused). The programs call it before
/// any ggml computation, and the runtime before it loads a model. ggml's `ggml_cpu_has_*`
/// queries only return constants, so asking them is safe on any processor.
pub fn check_processor() -> Result<()> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(());
    }
    let code = cpu_code();
    let missing = lacking(&code.ggml_built, &code.machine);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::ProcessorLacks {
            missing: missing.join(" "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_processor_without_the_built_sets_is_refused() {
        assert_eq!(lacking(&["avx", "avx2", "fma"], &["avx", "fma"]), ["avx2"]);
        assert!(lacking(&["avx2"], &["avx2", "avx512"]).is_empty());
        // This machine runs the tests, so it has what the build uses.
        check_processor().unwrap();
        let text = Error::ProcessorLacks {
            missing: "avx2 fma".into(),
        }
        .to_string();
        assert!(
            text.contains("lacks avx2 fma") && text.contains("GGML_AVX2=OFF"),
            "{text}"
        );
    }

    #[test]
    fn the_build_uses_only_what_the_machine_offers_on_x86() {
        let c = cpu_code();
        if cfg!(target_arch = "x86_64") {
            // The binary runs here, so every instruction set it was compiled for exists here.
            for f in &c.ggml_built {
                assert!(c.machine.contains(f), "{f} built but not offered: {c:?}");
            }
            assert!(c.unused.iter().all(|f| !c.ggml_built.contains(f)));
        }
    }
}
