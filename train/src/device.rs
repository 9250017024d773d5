//! `--device`: where a training run computes. The forward and backward graphs, the parameters,
//! the AdamW moments and (for coupled-GRPO) the rollouts all live on one backend:
//!
//! - `cpu` (the default): the built-in CPU backend, whose f32 products in gradient graphs are
//!   the blocked GEMM of `unmask_kernels` (the fastest CPU path);
//! - `cuda`, `cuda:N`: a CUDA GPU through the loadable CUDA backend
//!   (`scripts/build-ggml-backend.sh cuda`), every product and backward operation ggml's;
//! - `auto`: the first CUDA GPU when one is usable, else the CPU;
//! - `ggml-cpu`: the device pipeline (parameters in the backend's buffers, gradients and logits
//!   copied with ggml's tensor get/set, ggml's own products and AdamW reading device memory) on
//!   ggml's CPU device, so that machines without a GPU exercise and test the code a GPU runs.
//!
//! The loss, its `dLoss/dlogits` rows, gradient accumulation over micro-batches and clipping stay
//! on the host in f64/f32 as on the CPU (docs/training.md §5), so every device trains the same
//! objective; results agree to rounding (different product kernels sum in different orders).

use crate::{Error, Result};
use unmask_kernels::backend::Backend;
use unmask_kernels::device::{resolve, DeviceRequest, Placement};

/// Parses a `--device` value (`None`: the CPU).
pub fn parse(device: Option<&str>) -> Result<DeviceRequest> {
    match device {
        None => Ok(DeviceRequest::Cpu),
        Some(text) => text
            .parse()
            .map_err(|e: unmask_kernels::Error| Error::InvalidArgument(e.to_string())),
    }
}

/// The placement a `--device` value resolves to and a backend with `threads` workers on it.
/// `cuda` without a usable CUDA backend and GPU is an error that says what was looked for.
pub fn training_backend(device: Option<&str>, threads: usize) -> Result<(Placement, Backend)> {
    let request = parse(device)?;
    let placement = resolve(&request).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let backend = match &placement {
        Placement::Cpu => Backend::new(threads)?,
        Placement::Device(d) => Backend::on_device(d, threads)?,
    };
    Ok((placement, backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_resolve_to_their_backends() {
        let (placement, backend) = training_backend(None, 1).unwrap();
        assert!(matches!(placement, Placement::Cpu));
        assert!(backend.is_builtin_cpu());
        let (placement, backend) = training_backend(Some("ggml-cpu"), 1).unwrap();
        assert!(matches!(placement, Placement::Device(_)));
        assert!(
            !backend.is_builtin_cpu(),
            "the device pipeline, not the built-in CPU"
        );
        let Err(err) = training_backend(Some("metal"), 1) else {
            panic!("an unknown device must be refused");
        };
        let err = err.to_string();
        assert!(err.contains("expected auto, cpu, cuda"), "{err}");
    }
}
