//! Where a model runs: the built-in CPU backend, or a device offered by a GGML backend library
//! loaded at run time (`libggml-cuda.so`, built from the same vendored ggml by
//! `scripts/build-ggml-backend.sh`).
//!
//! unmask links ggml statically for the CPU, so it builds and runs on machines without a GPU or
//! a CUDA compiler. A GPU backend is a separate shared library that ggml's registry loads with
//! `ggml_backend_load`; it is looked for in `UNMASK_BACKEND_DIR` (a `:`-separated list), next to
//! the executable, and in `../lib/unmask` relative to it.

use crate::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A CUDA GPU when a CUDA backend library and a GPU are present, else the CPU.
    Auto,
    /// The built-in CPU backend (memory-mapped weights, host scoring).
    Cpu,
    /// A CUDA GPU (`cuda` = the first, `cuda:N` = the N-th); an error when there is none.
    Cuda(usize),
    /// The device pipeline (weights copied into device buffers, scoring in graph ops) on the CPU
    /// device of a loaded `libggml-cpu*.so`, or on the built-in one: a way to exercise the GPU
    /// code path on machines without a GPU.
    GgmlCpu,
}

impl std::str::FromStr for DeviceRequest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
            "ggml-cpu" => Ok(DeviceRequest::GgmlCpu),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceRequest::Cuda(n)),
                _ => Err(Error::Device(format!(
                    "unknown device `{s}`: expected auto, cpu, cuda, cuda:N or ggml-cpu"
                ))),
            },
        }
    }
}

impl std::fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceRequest::Auto => write!(f, "auto"),
            DeviceRequest::Cpu => write!(f, "cpu"),
            DeviceRequest::Cuda(0) => write!(f, "cuda"),
            DeviceRequest::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceRequest::GgmlCpu => write!(f, "ggml-cpu"),
        }
    }
}

/// Kind of a ggml device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    Other,
}

/// A device of ggml's registry (valid for the whole process: registered backends are never
/// unloaded).
#[derive(Clone, Debug)]
pub struct Device {
    raw: NonNull<sys::ggml_backend_device>,
    name: String,
    description: String,
    registry: String,
    kind: DeviceKind,
}

// SAFETY: device handles are immutable registry entries that live until process exit; ggml's
// device functions used here may be called from any thread.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl Device {
    pub(crate) fn raw(&self) -> *mut sys::ggml_backend_device {
        self.raw.as_ptr()
    }

    /// The buffer type of the device's own memory.
    pub(crate) fn buffer_type(&self) -> sys::ggml_backend_buffer_type_t {
        // SAFETY: live device handle.
        unsafe { sys::ggml_backend_dev_buffer_type(self.raw()) }
    }

    /// ggml's name for it (`CPU`, `CUDA0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Human description (the GPU model for CUDA).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Name of the backend library that offers it (`CPU`, `CUDA`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Free and total memory in bytes, as the device reports them.
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: live device; two out-pointers to locals.
        unsafe { sys::ggml_backend_dev_memory(self.raw(), &mut free, &mut total) };
        (free, total)
    }
}

/// Where to run, after resolving a [`DeviceRequest`].
#[derive(Clone, Debug)]
pub enum Placement {
    /// The built-in CPU backend.
    Cpu,
    /// A registry device, used through the device pipeline.
    Device(Device),
}

impl Placement {
    /// Short name for reports (`cpu`, `CUDA0 (NVIDIA H200)`).
    pub fn describe(&self) -> String {
        match self {
            Placement::Cpu => "cpu".into(),
            Placement::Device(d) if d.description().is_empty() => d.name().into(),
            Placement::Device(d) => format!("{} ({})", d.name(), d.description()),
        }
    }
}

fn c_string(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: ggml returns NUL-terminated names that live as long as the registry.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Every device in ggml's registry (the built-in CPU and whatever loaded libraries added).
pub fn devices() -> Vec<Device> {
    // SAFETY: registry queries; indices are below the count; handles are checked for NULL.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .filter_map(|i| {
            let raw = NonNull::new(unsafe { sys::ggml_backend_dev_get(i) })?;
            // SAFETY: live device handle.
            let (name, description, kind, reg) = unsafe {
                (
                    c_string(sys::ggml_backend_dev_name(raw.as_ptr())),
                    c_string(sys::ggml_backend_dev_description(raw.as_ptr())),
                    sys::ggml_backend_dev_type(raw.as_ptr()),
                    sys::ggml_backend_dev_backend_reg(raw.as_ptr()),
                )
            };
            let registry = if reg.is_null() {
                String::new()
            } else {
                // SAFETY: live registry handle.
                c_string(unsafe { sys::ggml_backend_reg_name(reg) })
            };
            let kind = match kind {
                sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
                sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU => {
                    DeviceKind::Gpu
                }
                _ => DeviceKind::Other,
            };
            Some(Device {
                raw,
                name,
                description,
                registry,
                kind,
            })
        })
        .collect()
}

/// Directories searched for backend libraries, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("UNMASK_BACKEND_DIR")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("../lib/unmask"));
        dirs.push(exe_dir);
    }
    dirs
}

/// Outcome of looking for one family of backend libraries.
#[derive(Clone, Debug, Default)]
struct LoadRecord {
    tried: Vec<PathBuf>,
    loaded: Vec<PathBuf>,
    failed: Vec<PathBuf>,
}

static LOADED: Mutex<Vec<(String, LoadRecord)>> = Mutex::new(Vec::new());

/// Library file names of a backend family: `libggml-cuda.so`; `libggml-cpu.so` or the
/// CPU-variant names ggml's dynamic build uses (`libggml-cpu-haswell.so`, ...).
fn matches_family(file_name: &str, family: &str) -> bool {
    let Some(stem) = file_name
        .strip_prefix("libggml-")
        .and_then(|s| s.strip_suffix(".so"))
    else {
        return false;
    };
    stem == family || stem.starts_with(&format!("{family}-"))
}

/// Loads the backend libraries of `family` (`cuda`, `cpu`) found in [`search_dirs`], once per
/// process. Returns a description of what was tried, for error messages.
pub fn load_family(family: &str) -> String {
    let mut loaded = match LOADED.lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    };
    if let Some((_, rec)) = loaded.iter().find(|(f, _)| f == family) {
        return describe(family, rec);
    }
    let mut rec = LoadRecord::default();
    for dir in search_dirs() {
        rec.tried.push(dir.clone());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| matches_family(n, family))
            })
            .collect();
        files.sort();
        for file in files {
            if rec.loaded.iter().any(|l| l.file_name() == file.file_name()) {
                continue; // the same library found through a second directory
            }
            let Ok(c_path) = CString::new(file.to_string_lossy().as_bytes()) else {
                rec.failed.push(file);
                continue;
            };
            // SAFETY: a NUL-terminated path; ggml dlopens it, checks its ABI entry points and
            // registers it, or returns NULL (and logs why).
            let reg = unsafe { sys::ggml_backend_load(c_path.as_ptr()) };
            if reg.is_null() {
                rec.failed.push(file);
            } else {
                rec.loaded.push(file);
            }
        }
    }
    let text = describe(family, &rec);
    loaded.push((family.to_string(), rec));
    text
}

fn describe(family: &str, rec: &LoadRecord) -> String {
    let list = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !rec.loaded.is_empty() {
        format!("loaded {}", list(&rec.loaded))
    } else if !rec.failed.is_empty() {
        format!(
            "found {} but it failed to load (a missing CUDA driver or runtime library? \
             see ggml's message above)",
            list(&rec.failed)
        )
    } else {
        format!(
            "no libggml-{family}.so in {} (set UNMASK_BACKEND_DIR to the directory that holds \
             it; scripts/build-ggml-backend.sh {family} builds it from the vendored ggml)",
            if rec.tried.is_empty() {
                "any search directory".to_string()
            } else {
                list(&rec.tried)
            }
        )
    }
}

fn gpus() -> Vec<Device> {
    devices()
        .into_iter()
        .filter(|d| d.kind() == DeviceKind::Gpu && d.registry().eq_ignore_ascii_case("cuda"))
        .collect()
}

/// Resolves a request to a placement, loading backend libraries as needed. `cuda` without a
/// loadable CUDA backend or without a GPU is an error that says what was looked for.
pub fn resolve(request: &DeviceRequest) -> Result<Placement> {
    match request {
        DeviceRequest::Cpu => Ok(Placement::Cpu),
        DeviceRequest::Auto => {
            load_family("cuda");
            Ok(gpus()
                .into_iter()
                .next()
                .map_or(Placement::Cpu, Placement::Device))
        }
        DeviceRequest::Cuda(n) => {
            let found = load_family("cuda");
            let gpus = gpus();
            match gpus.get(*n) {
                Some(d) => Ok(Placement::Device(d.clone())),
                None if gpus.is_empty() => Err(Error::Device(format!(
                    "CUDA was requested but no CUDA device is available: {found}. Use \
                     --device cpu (or auto) to run on the CPU."
                ))),
                None => Err(Error::Device(format!(
                    "CUDA device {n} was requested but only {} CUDA device(s) exist",
                    gpus.len()
                ))),
            }
        }
        DeviceRequest::GgmlCpu => {
            load_family("cpu");
            // The last CPU device: a loaded library's registers after the built-in one.
            devices()
                .into_iter()
                .rfind(|d| d.kind() == DeviceKind::Cpu)
                .map(Placement::Device)
                .ok_or_else(|| Error::Device("ggml reports no CPU device".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print() {
        for (text, want) in [
            ("auto", DeviceRequest::Auto),
            ("CPU", DeviceRequest::Cpu),
            ("cuda", DeviceRequest::Cuda(0)),
            ("cuda:1", DeviceRequest::Cuda(1)),
            ("ggml-cpu", DeviceRequest::GgmlCpu),
        ] {
            let got: DeviceRequest = text.parse().unwrap();
            assert_eq!(got, want);
            assert_eq!(got.to_string().parse::<DeviceRequest>().unwrap(), want);
        }
        for bad in ["", "cuda:", "cuda:x", "metal", "cuda:-1"] {
            let err = bad.parse::<DeviceRequest>().unwrap_err().to_string();
            assert!(err.contains("expected auto, cpu, cuda"), "{bad}: {err}");
        }
    }

    #[test]
    fn family_names() {
        assert!(matches_family("libggml-cuda.so", "cuda"));
        assert!(matches_family("libggml-cpu-haswell.so", "cpu"));
        assert!(!matches_family("libggml-cpu.so", "cuda"));
        assert!(!matches_family("libggml-base.so", "cpu"));
        assert!(!matches_family("libggml-cudart.so.12", "cuda"));
    }

    #[test]
    fn cpu_and_auto_without_a_gpu_library() {
        assert!(matches!(
            resolve(&DeviceRequest::Cpu).unwrap(),
            Placement::Cpu
        ));
        // No libggml-cuda.so is next to the test binary: auto falls back to the CPU and cuda is
        // an error that says what was looked for.
        if gpus().is_empty() {
            assert!(matches!(
                resolve(&DeviceRequest::Auto).unwrap(),
                Placement::Cpu
            ));
            let err = resolve(&DeviceRequest::Cuda(0)).unwrap_err().to_string();
            assert!(err.contains("no CUDA device"), "{err}");
            assert!(err.contains("libggml-cuda.so"), "{err}");
        }
        assert!(matches!(
            resolve(&DeviceRequest::GgmlCpu).unwrap(),
            Placement::Device(_)
        ));
    }
}
