//! `ffi/install.sh` for a C developer: the installed libraries are stripped (a fraction of the
//! built size), `--debug-files` keeps the debug information beside them, the last lines say how
//! to make pkg-config find unmask.pc, and a program built with pkg-config's flags alone starts
//! without LD_LIBRARY_PATH (the rpath in unmask.pc).

mod common;

use common::{lib_dir, repo_root};
use std::path::Path;
use std::process::Command;

fn install(prefix: &Path, extra: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("ffi/install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .arg("--no-build")
        .arg("--from")
        .arg(lib_dir())
        .args(extra)
        .output()
        .expect("run ffi/install.sh");
    assert!(out.status.success(), "{}", common::describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sections(file: &Path) -> String {
    let out = Command::new("readelf")
        .args(["-S", "--wide"])
        .arg(file)
        .output()
        .expect("readelf (binutils)");
    assert!(out.status.success(), "{}", common::describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn installed_libraries_are_stripped_and_debug_files_are_optional() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    install(&prefix, &[]);
    let so = std::fs::canonicalize(prefix.join("lib/libunmask.so")).unwrap();
    let built_so = lib_dir().join("libunmask.so");
    assert!(
        !sections(&so).contains(".debug_info"),
        "the installed shared library has debug information"
    );
    assert!(
        size(&so) * 4 < size(&built_so),
        "installed {} bytes of a {} byte build",
        size(&so),
        size(&built_so)
    );
    let a = prefix.join("lib/libunmask.a");
    assert!(size(&a) * 2 < size(&lib_dir().join("libunmask.a")));
    assert!(!prefix.join("lib/debug").exists());

    let with_debug = dir.path().join("with-debug");
    install(&with_debug, &["--debug-files"]);
    let so = std::fs::canonicalize(with_debug.join("lib/libunmask.so")).unwrap();
    let name = so.file_name().unwrap().to_string_lossy().into_owned();
    let debug = with_debug.join("lib/debug").join(format!("{name}.debug"));
    assert!(sections(&debug).contains(".debug_info"));
    assert!(sections(&so).contains(".gnu_debuglink"));
    assert!(!sections(&so).contains(".debug_info"));
}

#[test]
fn pkg_config_flags_alone_give_a_program_that_starts() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    let message = install(&prefix, &[]);
    let pc_dir = prefix.join("lib/pkgconfig");
    // The message gives the exact line to run.
    assert!(
        message.contains(&format!("export PKG_CONFIG_PATH={}", pc_dir.display())),
        "{message}"
    );
    assert!(message.contains("rpath"), "{message}");
    let flags = Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", &pc_dir)
        .args(["--cflags", "--libs", "unmask"])
        .output()
        .expect("pkg-config");
    assert!(flags.status.success(), "{}", common::describe(&flags));
    let flags = String::from_utf8_lossy(&flags.stdout).into_owned();
    let exe = dir.path().join("generate");
    let cc = Command::new("cc")
        .arg(repo_root().join("ffi/examples/generate.c"))
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("cc");
    assert!(cc.status.success(), "{}", common::describe(&cc));
    let run = Command::new(&exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let all = common::describe(&run);
    assert!(
        !all.contains("error while loading shared libraries"),
        "{all}"
    );
    assert!(all.contains("usage:"), "{all}");
}
