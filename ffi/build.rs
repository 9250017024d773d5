//! Gives the shared library an ABI-versioned SONAME on Linux (`libunmask.so.1`), so installed
//! programs keep working across compatible upgrades, as shared libraries conventionally do.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        // Keep in sync with UNMASK_ABI_VERSION in include/unmask.h.
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libunmask.so.1");
    }
}
