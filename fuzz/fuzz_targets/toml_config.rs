//! The trainer's TOML settings files (`unmask-train sft --config FILE`): any text is read into
//! settings or refused with an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let _ = unmask_train::run_config::SftConfig::from_toml_file(file.path());
});
