//! Which CPU code runs on this machine: the instruction sets the linked ggml CPU backend was
//! compiled for (fixed at build time: `.cargo/config.toml` asks for the AVX2 generation so that
//! one binary runs on every x86-64 machine since 2013), those the processor offers (detected at
//! run time), the ones it offers that the build leaves unused, and what computes q8_0 products
//! (unmask's own int8 GEMM where the processor has AVX2, chosen at run time). `unmask devices` prints it.

use llama_cpp_sys_2 as sys;

/// The instruction sets [`CpuCode`] reports, in the order printed.
const FEATURES: [&str; 11] = [
    "sse3",
    "ssse3",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx_vnni",
    "avx512",
    "avx512_vnni",
    "avx512_bf16",
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
    /// What computes q8_0 products on the CPU: `avx2` (unmask's int8 GEMM) or `ggml` (ggml's
    /// product, where the processor lacks AVX2, FMA or F16C).
    pub int8_gemm: &'static str,
}

/// Whether the linked ggml CPU backend was compiled to use `feature` (one of [`FEATURES`]).
fn ggml_built(feature: &str) -> bool {
    // SAFETY: ggml's `ggml_cpu_has_*` take no arguments and return a compile-time constant; they
    // touch no state.
    let has = unsafe {
        match feature {
            "sse3" => sys::ggml_cpu_has_sse3(),
            "ssse3" => sys::ggml_cpu_has_ssse3(),
            "avx" => sys::ggml_cpu_has_avx(),
            "avx2" => sys::ggml_cpu_has_avx2(),
            "fma" => sys::ggml_cpu_has_fma(),
            "f16c" => sys::ggml_cpu_has_f16c(),
            "bmi2" => sys::ggml_cpu_has_bmi2(),
            "avx_vnni" => sys::ggml_cpu_has_avx_vnni(),
            "avx512" => sys::ggml_cpu_has_avx512(),
            "avx512_vnni" => sys::ggml_cpu_has_avx512_vnni(),
            "avx512_bf16" => sys::ggml_cpu_has_avx512_bf16(),
            _ => 0,
        }
    };
    has != 0
}

/// Whether the processor offers `feature` (one of [`FEATURES`]; ggml's "avx512" is AVX-512F).
#[cfg(target_arch = "x86_64")]
fn machine_has(feature: &str) -> bool {
    use std::arch::is_x86_feature_detected as has;
    match feature {
        "sse3" => has!("sse3"),
        "ssse3" => has!("ssse3"),
        "avx" => has!("avx"),
        "avx2" => has!("avx2"),
        "fma" => has!("fma"),
        "f16c" => has!("f16c"),
        "bmi2" => has!("bmi2"),
        "avx_vnni" => has!("avxvnni"),
        "avx512" => has!("avx512f"),
        "avx512_vnni" => has!("avx512vnni"),
        "avx512_bf16" => has!("avx512bf16"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn machine_has(_feature: &str) -> bool {
    false
}

/// The CPU code of this build on this machine.
pub fn cpu_code() -> CpuCode {
    let ggml_built: Vec<&'static str> = FEATURES.into_iter().filter(|f| ggml_built(f)).collect();
    let machine: Vec<&'static str> = FEATURES.into_iter().filter(|f| machine_has(f)).collect();
    let unused = machine
        .iter()
        .copied()
        .filter(|f| !ggml_built.contains(f))
        .collect();
    CpuCode {
        ggml_built,
        machine,
        unused,
        int8_gemm: crate::simd::qgemm::kernel_name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
