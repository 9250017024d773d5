//! Loading a model file, as `unmask generate -m FILE` does: the bytes are written to a file and
//! loaded with the shape and finiteness checks; a file that loads must describe a usable model.
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
    if let Ok(model) = unmask_runtime::Model::load(file.path()) {
        assert!(model.n_vocab > 0);
        assert!(model.context_length() > 0);
    }
});
