//! Temporary outputs that must not outlive the process: files and folders written under a
//! temporary name and renamed onto their final name once complete (GGUF conversions, training
//! checkpoints).
//!
//! A [`TempPath`] registers its path in a process-wide list. Dropped before
//! [`TempPath::rename_to`] (an error, a panic that unwinds), it removes what is there.
//! Destructors do not run when a signal kills the process, so a binary that writes such outputs
//! calls [`remove_on_signal`] once at start: on SIGINT, SIGTERM or SIGHUP every registered path
//! is removed and the process then dies of that signal (its default action), so the exit status
//! still tells the shell what happened.
//!
//! Renames and the signal-time removal take the same lock: an output is either renamed complete
//! or removed, never removed after it was renamed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves a list that is still valid: keep using it.
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner())
}

fn remove_path(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        // Nothing more can be done about a file that cannot be removed while cleaning up.
        let _ = std::fs::remove_file(path);
        return;
    }
    // Another thread may still be creating files in the folder (a checkpoint being written when
    // the signal came): `remove_dir_all` could then find it non-empty at the end. Renaming it
    // first makes every later creation by its old path fail; then it is removed under its new
    // name.
    let mut doomed = path.as_os_str().to_os_string();
    doomed.push(".removing");
    let doomed = PathBuf::from(doomed);
    let target = if std::fs::rename(path, &doomed).is_ok() {
        doomed
    } else {
        path.to_path_buf()
    };
    for _ in 0..100 {
        if std::fs::remove_dir_all(&target).is_ok() || !target.exists() {
            return;
        }
    }
}

/// A registered temporary file or folder (see the module documentation).
#[derive(Debug)]
pub struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    /// Registers `path` (which need not exist yet) for removal.
    pub fn new(path: impl Into<PathBuf>) -> TempPath {
        let path = path.into();
        registry().push(path.clone());
        TempPath { path, armed: true }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the temporary onto `dest` and forgets it. On failure the temporary is removed.
    pub fn rename_to(mut self, dest: &Path) -> io::Result<()> {
        let mut list = registry();
        let result = std::fs::rename(&self.path, dest);
        if result.is_ok() {
            list.retain(|p| p != &self.path);
            self.armed = false;
        }
        // The lock is released before `self` drops (and, on failure, removes the temporary).
        drop(list);
        result
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            let mut list = registry();
            remove_path(&self.path);
            list.retain(|p| p != &self.path);
        }
    }
}

/// A registered temporary next to `dest` (same folder, so the final rename stays on one file
/// system): `dest`'s folder joined with `.tmp-<process id>-<dest's name>`.
pub fn next_to(dest: &Path) -> TempPath {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    TempPath::new(dir.join(format!(".tmp-{}-{name}", std::process::id())))
}

/// A new, empty registered temporary folder next to `dest` (whose parent folders are created):
/// fill it, then [`TempPath::rename_to`] `dest`.
pub fn folder_next_to(dest: &Path) -> io::Result<TempPath> {
    let tmp = next_to(dest);
    if let Some(parent) = tmp.path().parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::create_dir(tmp.path())?;
    Ok(tmp)
}

/// Writes `bytes` to `dest` through a registered temporary next to it, synced and then renamed:
/// `dest` is either its old self or complete, never partly written.
pub fn write_file(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = next_to(dest);
    let mut file = std::fs::File::create(tmp.path())?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    tmp.rename_to(dest)
}

/// Removes every registered temporary now (what the signal handler does).
pub fn remove_all() {
    let mut list = registry();
    for path in list.drain(..) {
        remove_path(&path);
    }
}

/// Installs the handler of SIGINT, SIGTERM and SIGHUP described in the module documentation.
/// Call once, early in `main` of a binary; a second call installs a second, harmless handler.
pub fn remove_on_signal() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("temp-cleanup".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Hold the lock until the process is gone: no rename may follow the removal.
                let mut list = registry();
                for path in list.drain(..) {
                    remove_path(&path);
                }
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                // The default action of these signals ends the process; should it not have:
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_replace_their_destination_and_leave_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.json");
        write_file(&dest, b"first").unwrap();
        write_file(&dest, b"second").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
        // A destination whose folder does not exist: an error, and nothing left behind.
        assert!(write_file(&dir.path().join("no/such/out.json"), b"x").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_temporaries_are_removed_and_renamed_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".a.tmp");
        let folder = dir.path().join(".b.tmp");
        {
            let _f = TempPath::new(&file);
            let _d = TempPath::new(&folder);
            std::fs::write(&file, b"x").unwrap();
            std::fs::create_dir(&folder).unwrap();
            std::fs::write(folder.join("inner"), b"y").unwrap();
        }
        assert!(!file.exists() && !folder.exists());
        let kept = TempPath::new(&file);
        std::fs::write(&file, b"x").unwrap();
        kept.rename_to(&dir.path().join("a")).unwrap();
        assert!(dir.path().join("a").exists());
        assert!(!registry().iter().any(|p| p == &file));
        // A failed rename (onto a folder that is not empty) leaves the temporary to its drop.
        let busy = dir.path().join("busy");
        std::fs::create_dir(&busy).unwrap();
        std::fs::write(busy.join("f"), b"z").unwrap();
        let t = TempPath::new(&file);
        std::fs::write(&file, b"x").unwrap();
        assert!(t.rename_to(&busy).is_err());
        assert!(!file.exists(), "a failed rename removes the temporary");
        assert!(!registry().iter().any(|p| p == &file));
    }
}
