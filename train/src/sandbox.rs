//! Local, contained execution of untrusted generated Python (docs/training.md §3).
//!
//! Each run is one child process, `python3 -I -B -c PROGRAM [ARGS...]`, with: a fresh private
//! working directory (removed afterwards; `HOME`, `TMPDIR` and the cwd point at it), a cleared
//! environment, stdin on `/dev/null`, stdout/stderr captured up to a cap, a wall-clock timeout,
//! its own process group (`Command::process_group(0)`) that is SIGKILLed when the run ends, and
//! rlimits: CPU seconds, address space, file size, process count, open files, no core dumps.
//! On top of that, where the machine allows it: a per-run cgroup ([`crate::cgroup`], v2 or v1)
//! bounding the memory of all the run's processes together (shared memory, `memfd` and tmpfs
//! pages included) and its task count; and a seccomp filter ([`crate::seccomp`]) refusing new
//! namespaces (user namespaces included), ptrace, keyrings, bpf, io_uring, mounts and similar,
//! plus `memfd_create` when no cgroup bounds memory. [`Sandbox::describe`] says which apply.
//! Tests run through a harness ([`Sandbox::run_test`], `test_harness.py`) that counts a pass only
//! when the test provably ran to its end.
//!
//! # Why no `pre_exec`
//!
//! The crate has `#![forbid(unsafe_code)]` (the project keeps `unsafe` in `kernels/` and `ffi/`),
//! and `CommandExt::pre_exec` is `unsafe`. Everything that must happen between fork and exec is
//! therefore done by exec'ing through util-linux tools, each of which does one step and execs the
//! next: `unshare` (namespaces), a tiny `/bin/sh` script (private mounts), `setpriv` (uid, groups,
//! capabilities, no_new_privs) and `prlimit` (rlimits). Killing uses `rustix`'s safe `kill`
//! wrappers. The isolation actually achieved is probed once by [`Sandbox::new`] and reported by
//! [`Sandbox::isolation`], from strongest to weakest:
//!
//! - [`Isolation::RootNamespaces`] (running as root, e.g. in a container): new network, pid, mount,
//!   IPC and UTS namespaces; the code runs as a *unique unprivileged uid per concurrent run*
//!   (`uid_base + slot`, not in `/etc/passwd`), with no capabilities and no_new_privs.
//!   RLIMIT_NPROC is counted per real uid and is not enforced for root, which is why the uid
//!   change matters: with a private uid the limit really bounds a fork bomb, and concurrent runs do
//!   not share the budget. When the run ends every process of that uid is killed (found by scanning
//!   `/proc`), on top of the pid namespace teardown.
//! - [`Isolation::UserNamespaces`] (not root, unprivileged user namespaces allowed): the same
//!   namespaces inside a new user namespace (`unshare --user --map-root-user`), the code as the
//!   namespace's root with an empty capability bounding set (so it cannot undo the mounts), rlimits
//!   by `prlimit`. RLIMIT_NPROC is counted per (user namespace, uid) and checked up the chain, so it
//!   bounds the sandbox's processes for a non-root caller; it is never enforced for real uid 0, so
//!   this mode must not be used by root (root gets [`Isolation::RootNamespaces`]).
//! - [`Isolation::RlimitsOnly`] (fallback): no namespaces. A Python prelude sets the rlimits
//!   (hard = soft, so the code cannot raise them) and installs a `sys.addaudithook` hook that
//!   refuses socket, fork/exec/spawn/subprocess, ctypes, writes outside the working directory, and
//!   reads or listings outside it and the interpreter's own installation.
//!   Audit hooks are not a security boundary (PEP 578); this mode is best effort and is reported.
//!
//! In both namespace modes, a root-owned `/bin/sh` is the pid namespace's init and waits for the
//! code: when it exits or is killed (the process group kill at the end), the kernel SIGKILLs every
//! process left in the namespace, including double-forked `setsid` daemons. Inside the mount
//! namespace `/tmp` is a fresh tmpfs of [`Limits::tmp_size`] bytes, 1 MiB tmpfs cover `/var/tmp`,
//! `/dev/shm`, `/run/lock` and `/dev/mqueue`, every other mount is remounted read-only, and `/proc`
//! is the new pid namespace's. The network namespace has only a down loopback: connecting anywhere,
//! 127.0.0.1 included, fails.
//!
//! Residual risks: without a cgroup each process may use up to the address-space limit, so the
//! worst-case memory is `processes x address_space` (16 GiB with the defaults) plus what tmpfs
//! mounts hold; a fork bomb keeps up to `processes` processes busy until the wall-clock timeout,
//! which slows concurrent runs (the code runs at nice 10 so the rest of the machine keeps
//! priority). In [`Isolation::RlimitsOnly`] the working directory is on the host's disk, so only
//! the wall-clock timeout bounds how much a run writes there. See `docs/reliability.md`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::cgroup::{CgroupSetup, CgroupVersion, RunCgroup};
use crate::{Error, Result};

/// Tasks a run's cgroup allows beyond [`Limits::processes`]: `unshare`, the pid namespace's init
/// shell and the interpreter itself.
const TASKS_OVERHEAD: u64 = 3;

/// A fresh 128-bit random secret, as hex.
fn run_secret() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| io_err(Path::new("/dev/urandom"), e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// How a run is isolated (strongest first); see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    RootNamespaces,
    UserNamespaces,
    RlimitsOnly,
}

impl Isolation {
    /// A one-line description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Isolation::RootNamespaces => {
                "root: unshare net/pid/mount/ipc/uts namespaces, setpriv to a private uid without capabilities, prlimit rlimits, read-only mounts, /tmp = private dir"
            }
            Isolation::UserNamespaces => {
                "user namespace: unshare --user net/pid/mount/ipc/uts namespaces, no capabilities, prlimit rlimits, read-only mounts, /tmp = private dir"
            }
            Isolation::RlimitsOnly => {
                "fallback: rlimits and a Python audit hook refusing sockets/fork/exec/ctypes and file access outside the private dir (best effort, not a security boundary)"
            }
        }
    }

    /// A short name (`root-namespaces`, `user-namespaces`, `rlimits-only`).
    pub fn name(self) -> &'static str {
        match self {
            Isolation::RootNamespaces => "root-namespaces",
            Isolation::UserNamespaces => "user-namespaces",
            Isolation::RlimitsOnly => "rlimits-only",
        }
    }
}

/// Resource limits of one run.
#[derive(Clone, Debug)]
pub struct Limits {
    /// RLIMIT_CPU, seconds.
    pub cpu_seconds: u64,
    /// RLIMIT_AS, bytes.
    pub address_space: u64,
    /// RLIMIT_FSIZE, bytes.
    pub file_size: u64,
    /// RLIMIT_NPROC (namespace modes).
    pub processes: u64,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// Wall-clock timeout of the whole run.
    pub wall: Duration,
    /// Bytes of stdout and of stderr kept (the rest is read and dropped).
    pub output_cap: usize,
    /// Memory of the whole run (all its processes, page cache and shared memory included),
    /// enforced by a cgroup where one is available ([`Sandbox::cgroup`]).
    pub memory: u64,
    /// Size of the private `/tmp` tmpfs (namespace modes); `/var/tmp`, `/dev/shm`, `/run/lock`
    /// and `/dev/mqueue` get 1 MiB each.
    pub tmp_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_seconds: 5,
            address_space: 1 << 30,
            file_size: 16 << 20,
            processes: 16,
            open_files: 256,
            wall: Duration::from_secs(5),
            output_cap: 64 << 10,
            memory: 1 << 30,
            tmp_size: 64 << 20,
        }
    }
}

/// How to build a [`Sandbox`].
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The interpreter; default: the first of `/usr/bin/python3`, `/usr/local/bin/python3` and the
    /// `python3` on `PATH` (resolved to its real executable) that runs inside the sandbox.
    pub python: Option<PathBuf>,
    pub limits: Limits,
    /// Force one isolation mode instead of the strongest that works.
    pub isolation: Option<Isolation>,
    /// First uid of the private uids ([`Isolation::RootNamespaces`]).
    pub uid_base: u32,
    /// Bound each run by a cgroup when the machine allows it (else rlimits alone).
    pub cgroups: bool,
    /// Load the seccomp filter ([`crate::seccomp`]) into every run; when the kernel refuses it,
    /// the sandbox runs without and [`Sandbox::seccomp`] says so.
    pub seccomp: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: None,
            limits: Limits::default(),
            isolation: None,
            uid_base: 1_600_000_000,
            cgroups: true,
            seccomp: true,
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status of the program.
    Exited(i32),
    /// Killed by this signal (e.g. SIGXCPU at the CPU limit).
    Signaled(i32),
    /// Killed at the wall-clock timeout.
    TimedOut,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond [`Limits::output_cap`] was dropped.
    pub truncated: bool,
    pub wall: Duration,
}

impl RunResult {
    /// The program exited with status 0.
    pub fn success(&self) -> bool {
        self.outcome == Outcome::Exited(0)
    }
}

/// Slots of private uids in use in this process (index = slot).
static SLOTS: Mutex<Vec<bool>> = Mutex::new(Vec::new());
const MAX_SLOTS: usize = 1024;

struct Slot(usize);

impl Slot {
    fn acquire() -> Result<Slot> {
        let mut s = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        if s.is_empty() {
            s.resize(MAX_SLOTS, false);
        }
        let i = s
            .iter()
            .position(|used| !used)
            .ok_or_else(|| Error::Sandbox(format!("more than {MAX_SLOTS} concurrent runs")))?;
        s[i] = true;
        Ok(Slot(i))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        s[self.0] = false;
    }
}

/// Script run by `/bin/sh` as the pid namespace's init, inside the new mount namespace:
/// `$1` = the size of the private `/tmp` in bytes, `$2` = the uid that owns it, the rest = the
/// command to run (not exec'd: this shell stays the init and waits, so the namespace dies with
/// it). `/tmp` is a fresh size-limited tmpfs, not a host directory, so nothing the code writes
/// reaches the host's disk and it all goes away with the mount namespace.
const INNER_SCRIPT: &str = r#"size="$1"; owner="$2"; shift 2
mount -t tmpfs -o "size=$size,nr_inodes=4096,mode=0700,uid=$owner,gid=$owner,nosuid,nodev" tmpfs /tmp || exit 120
for d in /var/tmp /dev/shm /run/lock /dev/mqueue; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then
    mount -t tmpfs -o size=1m,mode=1777,nosuid,nodev,noexec tmpfs "$d" || exit 121
  fi
done
while read -r _ m _; do
  case "$m" in /tmp|/var/tmp|/dev/shm|/run/lock|/dev/mqueue|/proc|/proc/*) continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null
done < /proc/self/mounts
cd /tmp || exit 122
"$@"
exit $?
"#;

/// Exit codes of [`INNER_SCRIPT`] that mean the sandbox itself could not be set up.
const SETUP_FAILURE_CODES: [i32; 3] = [120, 121, 122];

/// First process of a run with a cgroup: `sh -c JOIN sh N FILE... COMMAND...` writes `0`
/// (itself) to each of the `N` `cgroup.procs` files, then execs the command, so that every later
/// process of the run is born inside the group.
const JOIN_CGROUP: &str = r#"n="$1"; shift
while [ "$n" -gt 0 ]; do
  echo 0 > "$1" || { echo "unmask: cannot join cgroup $1" >&2; exit 123; }
  shift; n=$((n - 1))
done
exec "$@"
"#;

/// Exit code of [`JOIN_CGROUP`] when joining fails.
const JOIN_FAILURE_CODE: i32 = 123;

/// Prelude of every run: `python -I -B -c PRELUDE FILTER PROGRAM ARGS...`. It loads the seccomp
/// filter `FILTER` (hex of the `sock_filter` array, empty for none) after setting
/// no_new_privs, then (`{FALLBACK}`, [`Isolation::RlimitsOnly`] only) the rlimits and the audit
/// hook of [`FALLBACK_SETUP`], then runs `PROGRAM` as `__main__` with `sys.argv = ["-c", ARGS...]`.
const PRELUDE: &str = r#"import sys as _sys
def _unmask_seccomp(hexprog):
    if not hexprog:
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    prog = bytes.fromhex(hexprog)
    buf = ctypes.create_string_buffer(prog, len(prog))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fp = Fprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    ul = ctypes.c_ulong
    if libc.prctl(38, ul(1), ul(0), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "unmask sandbox: prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(22, ul(2), ctypes.byref(fp), ul(0), ul(0)) != 0:
        raise OSError(ctypes.get_errno(), "unmask sandbox: prctl(PR_SET_SECCOMP) failed")
_unmask_seccomp(_sys.argv[1])
del _unmask_seccomp
{FALLBACK}
def _unmask_run():
    src = _sys.argv[2]
    _sys.argv = ["-c"] + _sys.argv[3:]
    mod = type(_sys)("__main__")
    mod.__builtins__ = __builtins__
    _sys.modules["__main__"] = mod
    return compile(src, "<string>", "exec"), mod.__dict__
_unmask_code, _unmask_globals = _unmask_run()
del _unmask_run, _sys
exec(_unmask_code, _unmask_globals)
"#;

/// The part of [`PRELUDE`] for [`Isolation::RlimitsOnly`]. `{CPU}` etc. are substituted.
const FALLBACK_SETUP: &str = r#"import os as _os, resource as _r
def _unmask_setup():
    for res, v in ((_r.RLIMIT_CPU, {CPU}), (_r.RLIMIT_AS, {AS}), (_r.RLIMIT_FSIZE, {FSIZE}),
                   (_r.RLIMIT_CORE, 0), (_r.RLIMIT_NOFILE, {NOFILE})):
        soft, hard = _r.getrlimit(res)
        v = v if hard == _r.RLIM_INFINITY else min(v, hard)
        _r.setrlimit(res, (v, v))
    home = _os.path.realpath(_os.getcwd())
    deny = ("socket.", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn",
            "os.system", "os.kill", "os.killpg", "subprocess.", "ctypes.", "pty.", "os.setuid",
            "os.putenv", "os.unsetenv", "webbrowser.", "urllib.", "ftplib.", "smtplib.",
            "http.", "os.chdir", "os.fchdir")
    path_events = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
                   "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.")
    def inside(p):
        try:
            p = _os.fsdecode(p) if not isinstance(p, int) else None
        except Exception:
            return False
        if p is None:
            return True
        rp = _os.path.realpath(_os.path.join(home, p))
        return rp == home or rp.startswith(home + _os.sep) or rp in ("/dev/null",)
    roots = tuple(_os.path.realpath(p) + _os.sep for p in {_sys.prefix, _sys.base_prefix,
                  _sys.exec_prefix, _sys.base_exec_prefix} if p)
    def readable(p):
        if isinstance(p, int) or p is None:
            return True
        try:
            rp = _os.path.realpath(_os.fsdecode(p))
        except Exception:
            return False
        return rp.startswith(roots) or rp in ("/dev/null", "/dev/urandom", "/etc/localtime")
    def hook(event, args):
        if event.startswith(deny):
            raise PermissionError("unmask sandbox: " + event + " refused")
        if event == "open":
            path, mode, flags = args
            if (flags & (_os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC)
                    or (mode and any(c in mode for c in "wax+"))):
                if not inside(path):
                    raise PermissionError("unmask sandbox: write outside the working directory")
            elif not (inside(path) or readable(path)):
                raise PermissionError("unmask sandbox: read outside the working directory")
        elif event in ("os.listdir", "os.scandir", "glob.glob") and args and not (
                inside(args[0]) or readable(args[0])):
            raise PermissionError("unmask sandbox: listing outside the working directory")
        elif event.startswith(path_events):
            for a in args:
                if isinstance(a, (str, bytes, _os.PathLike)) and not inside(a):
                    raise PermissionError("unmask sandbox: " + event + " outside the working directory")
    _sys.addaudithook(hook)
_unmask_setup()
del _unmask_setup
"#;

/// The test harness (see the file): `PROGRAM CODE TEST` with the run's secret on stdin.
const TEST_HARNESS: &str = include_str!("test_harness.py");

/// Program that checks syntax only: `ast.parse(argv[1])`.
const PARSE_PROGRAM: &str = "import ast, sys\nast.parse(sys.argv[1])\n";

/// Largest program text accepted (one argv string; Linux caps a single argument at 128 KiB).
pub const MAX_PROGRAM_BYTES: usize = 120 << 10;

/// A sandbox: configuration, the probed isolation and the parent of the private directories.
#[derive(Debug)]
pub struct Sandbox {
    python: PathBuf,
    isolation: Isolation,
    limits: Limits,
    uid_base: u32,
    root: tempfile::TempDir,
    counter: AtomicU64,
    /// Where per-run cgroups are made; `None` with the reason in `cgroup_note`.
    cgroup: Option<CgroupSetup>,
    cgroup_note: String,
    /// The seccomp filter as hex (empty: none), and why there is none.
    filter: String,
    seccomp_note: String,
}

/// Names of per-run cgroups, unique within this process (several sandboxes may coexist).
static CGROUP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Sandbox {
    /// Probes the strongest working isolation (or the forced one) and an interpreter that runs
    /// inside it.
    pub fn new(cfg: SandboxConfig) -> Result<Sandbox> {
        let mut root = tempfile::Builder::new()
            .prefix("unmask-sandbox-")
            .tempdir()
            .map_err(|e| Error::Sandbox(format!("cannot create the sandbox directory: {e}")))?;
        let is_root = rustix::process::geteuid().is_root();
        let modes: Vec<Isolation> = match cfg.isolation {
            Some(m) => vec![m],
            None if is_root => vec![
                Isolation::RootNamespaces,
                Isolation::UserNamespaces,
                Isolation::RlimitsOnly,
            ],
            None => vec![Isolation::UserNamespaces, Isolation::RlimitsOnly],
        };
        let pythons = match &cfg.python {
            Some(p) => vec![p.clone()],
            None => python_candidates(),
        };
        let (cgroup, cgroup_note) = if !cfg.cgroups {
            (None, "disabled by the configuration".to_string())
        } else {
            match CgroupSetup::detect() {
                Ok(c) => (Some(c), String::new()),
                Err(e) => (None, e),
            }
        };
        let filter: String = crate::seccomp::filter(cgroup.is_none())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let filters: Vec<String> = if cfg.seccomp {
            vec![filter, String::new()]
        } else {
            vec![String::new()]
        };
        let mut tried = Vec::new();
        let mut seccomp_note = if cfg.seccomp {
            String::new()
        } else {
            "disabled by the configuration".to_string()
        };
        for &mode in &modes {
            if mode == Isolation::RootNamespaces && !is_root {
                tried.push(format!("{}: not root", mode.name()));
                continue;
            }
            for py in &pythons {
                for filter in &filters {
                    let sb = Sandbox {
                        python: py.clone(),
                        isolation: mode,
                        limits: cfg.limits.clone(),
                        uid_base: cfg.uid_base,
                        root,
                        counter: AtomicU64::new(0),
                        cgroup: cgroup.clone(),
                        cgroup_note: cgroup_note.clone(),
                        filter: filter.clone(),
                        seccomp_note: seccomp_note.clone(),
                    };
                    let what = format!(
                        "{} with {}{}",
                        mode.name(),
                        py.display(),
                        if filter.is_empty() {
                            ""
                        } else {
                            " and seccomp"
                        }
                    );
                    match sb.run_python("print('unmask-sandbox-ok')", &[]) {
                        Ok(r) if r.success() && r.stdout == b"unmask-sandbox-ok\n" => {
                            return Ok(sb)
                        }
                        Ok(r) => tried.push(format!(
                            "{what}: {:?}: {}",
                            r.outcome,
                            String::from_utf8_lossy(&r.stderr).trim()
                        )),
                        Err(e) => tried.push(format!("{what}: {e}")),
                    }
                    if !filter.is_empty() {
                        seccomp_note = tried.last().cloned().unwrap_or_default();
                    }
                    root = sb.root;
                }
            }
        }
        Err(Error::Sandbox(format!(
            "no working sandbox: {}",
            tried.join("; ")
        )))
    }

    /// The isolation in use.
    pub fn isolation(&self) -> Isolation {
        self.isolation
    }

    /// The interpreter in use.
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// The limits in use.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The cgroup version bounding each run's memory and tasks; `None`: rlimits only.
    pub fn cgroup(&self) -> Option<CgroupVersion> {
        self.cgroup.as_ref().map(|c| c.version())
    }

    /// Whether every run gets the seccomp filter.
    pub fn seccomp(&self) -> bool {
        !self.filter.is_empty()
    }

    /// One line for logs: isolation, what bounds memory, seccomp, the private /tmp.
    pub fn describe(&self) -> String {
        let l = &self.limits;
        let memory = match &self.cgroup {
            Some(c) => format!(
                "memory: {} ({} MiB and {} tasks per run, rlimits too)",
                c.version().name(),
                l.memory >> 20,
                l.processes + TASKS_OVERHEAD
            ),
            None => format!(
                "memory: rlimits only ({} MiB address space per process; no cgroup: {})",
                l.address_space >> 20,
                self.cgroup_note
            ),
        };
        let seccomp = if self.seccomp() {
            if self.cgroup.is_some() {
                "seccomp: on".to_string()
            } else {
                "seccomp: on, memfd_create refused".to_string()
            }
        } else {
            format!("seccomp: off ({})", self.seccomp_note)
        };
        let tmp = if self.isolation == Isolation::RlimitsOnly {
            "/tmp: not private (host directory as the working directory)".to_string()
        } else {
            format!("/tmp: tmpfs of {} MiB", l.tmp_size >> 20)
        };
        format!(
            "{} ({}); {memory}; {seccomp}; {tmp}",
            self.isolation.name(),
            self.python.display()
        )
    }

    /// The parent directory of the private per-run directories.
    pub fn root_dir(&self) -> &Path {
        self.root.path()
    }

    /// Runs `python3 -I -B -c program args...` in a fresh private directory, stdin empty.
    pub fn run_python(&self, program: &str, args: &[&str]) -> Result<RunResult> {
        self.run_python_input(program, args, None)
    }

    /// [`Sandbox::run_python`] with `input` on stdin (then end of file).
    fn run_python_input(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<RunResult> {
        let total = program.len() + args.iter().map(|a| a.len()).sum::<usize>();
        if program.len() > MAX_PROGRAM_BYTES || total > 2 * MAX_PROGRAM_BYTES {
            return Err(Error::InvalidArgument(format!(
                "program of {total} bytes exceeds the sandbox's {MAX_PROGRAM_BYTES}-byte limit"
            )));
        }
        if program.contains('\0') || args.iter().any(|a| a.contains('\0')) {
            return Err(Error::InvalidArgument("program contains a NUL byte".into()));
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let work = self.root.path().join(format!("run-{n}"));
        std::fs::create_dir(&work).map_err(|e| io_err(&work, e))?;
        let slot = if self.isolation == Isolation::RootNamespaces {
            Some(Slot::acquire()?)
        } else {
            None
        };
        let uid = slot.as_ref().map(|s| self.private_uid(s.0));
        let result = self.prepare_dir(&work, uid).and_then(|()| {
            let group = match &self.cgroup {
                Some(c) => {
                    let name = format!(
                        "unmask-sandbox-{}-{}",
                        std::process::id(),
                        CGROUP_COUNTER.fetch_add(1, Ordering::Relaxed)
                    );
                    let tasks = self.limits.processes + TASKS_OVERHEAD;
                    Some(c.create(&name, self.limits.memory, tasks).map_err(|e| {
                        Error::Sandbox(format!("cannot create the run's cgroup: {e}"))
                    })?)
                }
                None => None,
            };
            let marker = format!("{}-{}-{n}", std::process::id(), self.root_dir().display());
            let cmd = self.command(&work, uid, &marker, group.as_ref(), program, args);
            let r = run_contained(cmd, &self.limits, uid, &marker, group.as_ref(), input);
            // Dropping the group kills anything left in it and removes it.
            drop(group);
            r
        });
        remove_dir(&work);
        drop(slot);
        result
    }

    /// Whether `code` parses as Python (`ast.parse`, nothing executed), checked in the sandbox.
    /// A crash or timeout of the parser counts as "does not parse".
    pub fn parses(&self, code: &str) -> Result<bool> {
        if code.len() > MAX_PROGRAM_BYTES || code.contains('\0') {
            return Ok(false);
        }
        Ok(self.run_python(PARSE_PROGRAM, &[code])?.success())
    }

    /// Runs one test case: `code`, then `test` (an assert), in one interpreter, through the test
    /// harness (`test_harness.py`). True only when the harness proves that the test ran to its
    /// end and held: stdout is exactly this run's fresh random secret (given on stdin, written
    /// by the harness after the test) and the exit status is 0. Early exits, exit hooks,
    /// printing, patched builtins and objects that fake comparisons all score false; see the
    /// harness for what it does not defend against.
    pub fn run_test(&self, code: &str, test: &str) -> Result<bool> {
        if code.len() + test.len() + 1 > MAX_PROGRAM_BYTES
            || code.contains('\0')
            || test.contains('\0')
        {
            return Ok(false);
        }
        let secret = run_secret()?;
        let mut line = secret.clone().into_bytes();
        line.push(b'\n');
        let r = self.run_python_input(TEST_HARNESS, &[code, test], Some(&line))?;
        Ok(r.success() && r.stdout == line)
    }

    fn private_uid(&self, slot: usize) -> u32 {
        self.uid_base + (std::process::id() % 100_000) * MAX_SLOTS as u32 + slot as u32
    }

    fn prepare_dir(&self, work: &Path, uid: Option<u32>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(uid) = uid {
            std::os::unix::fs::chown(work, Some(uid), Some(uid)).map_err(|e| io_err(work, e))?;
        }
        std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(work, e))
    }

    fn command(
        &self,
        work: &Path,
        uid: Option<u32>,
        marker: &str,
        group: Option<&RunCgroup>,
        program: &str,
        args: &[&str],
    ) -> Command {
        let l = &self.limits;
        let ns_mode = self.isolation != Isolation::RlimitsOnly;
        // argv of the whole chain, first element the program to exec.
        let mut argv: Vec<OsString> = Vec::new();
        let mut push = |xs: &[&str]| argv.extend(xs.iter().map(OsString::from));
        if let Some(g) = group {
            let files = g.procs_files();
            push(&["/bin/sh", "-c", JOIN_CGROUP, "sh", &files.len().to_string()]);
            for f in &files {
                argv.push(f.clone().into_os_string());
            }
        }
        if ns_mode {
            let mut push = |xs: &[&str]| argv.extend(xs.iter().map(OsString::from));
            push(&["unshare"]);
            if self.isolation == Isolation::UserNamespaces {
                push(&["--user", "--map-root-user"]);
            }
            push(&[
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
                "--ipc",
                "--uts",
                "--",
                "/bin/sh",
                "-c",
                INNER_SCRIPT,
                "sh",
                &l.tmp_size.to_string(),
                &uid.unwrap_or(0).to_string(),
                "setpriv",
            ]);
            if let Some(uid) = uid {
                push(&[
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                ]);
            }
            push(&[
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
                "nice",
                "-n",
                "10",
                "prlimit",
                &format!("--cpu={}", l.cpu_seconds),
                &format!("--as={}", l.address_space),
                &format!("--fsize={}", l.file_size),
                &format!("--nproc={}", l.processes),
                &format!("--nofile={}", l.open_files),
                "--core=0",
                "--",
            ]);
        }
        let prelude = if ns_mode {
            PRELUDE.replace("{FALLBACK}", "")
        } else {
            PRELUDE.replace(
                "{FALLBACK}",
                &FALLBACK_SETUP
                    .replace("{CPU}", &l.cpu_seconds.to_string())
                    .replace("{AS}", &l.address_space.to_string())
                    .replace("{FSIZE}", &l.file_size.to_string())
                    .replace("{NOFILE}", &l.open_files.to_string()),
            )
        };
        argv.push(self.python.clone().into_os_string());
        argv.extend(
            ["-I", "-B", "-c", &prelude, &self.filter, program]
                .iter()
                .chain(args)
                .map(OsString::from),
        );
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.current_dir(if ns_mode { Path::new("/") } else { work });
        let home: &Path = if ns_mode { Path::new("/tmp") } else { work };
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", home)
            .env("TMPDIR", home)
            .env("LANG", "C.UTF-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("UNMASK_SANDBOX", marker)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Interpreters to try, in order.
fn python_candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    // The python3 on PATH may be a shim (pyenv): ask it for its real executable.
    if let Ok(out) = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_absolute() && !v.contains(&p) {
            v.push(p);
        }
    }
    v
}

type Buffer = Arc<Mutex<(Vec<u8>, bool)>>;

/// Reads `r` to its end, keeping the first `cap` bytes.
fn spawn_reader<R: Read + Send + 'static>(mut r: R, cap: usize) -> (Buffer, JoinHandle<()>) {
    let buf: Buffer = Arc::new(Mutex::new((Vec::new(), false)));
    let b = Arc::clone(&buf);
    let h = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    let mut g = b.lock().unwrap_or_else(|p| p.into_inner());
                    let room = cap.saturating_sub(g.0.len());
                    g.0.extend_from_slice(&chunk[..k.min(room)]);
                    if k > room {
                        g.1 = true;
                    }
                }
            }
        }
    });
    (buf, h)
}

fn kill_group(child: &Child) {
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        // ESRCH (group already gone) is fine.
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}

/// Processes (other than this one) that belong to a run, as `(pid, is_zombie)`: real or
/// effective uid `uid`, or (no private uid) the `UNMASK_SANDBOX=marker` variable in their
/// environment.
pub fn find_run_processes(uid: Option<u32>, marker: &str) -> Vec<(i32, bool)> {
    let me = std::process::id() as i32;
    let needle = format!("UNMASK_SANDBOX={marker}");
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let hit = match uid {
            Some(uid) => std::fs::read_to_string(entry.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines().find(|l| l.starts_with("Uid:")).map(|l| {
                        l.split_whitespace()
                            .skip(1)
                            .take(2)
                            .any(|x| x.parse::<u32>() == Ok(uid))
                    })
                })
                .unwrap_or(false),
            None => std::fs::read(entry.path().join("environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false),
        };
        if hit {
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            found.push((pid, zombie));
        }
    }
    found
}

/// Spawns `cmd`, enforces the wall-clock limit, kills the process group and every other process
/// of the run, reaps, and collects the output.
fn run_contained(
    mut cmd: Command,
    limits: &Limits,
    uid: Option<u32>,
    marker: &str,
    group: Option<&RunCgroup>,
    input: Option<&[u8]>,
) -> Result<RunResult> {
    let start = Instant::now();
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Sandbox(format!("cannot start {:?}: {e}", cmd.get_program())))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // A few bytes: they fit in the pipe, so this never blocks on the child. A child that
        // exits first makes it fail with EPIPE, which only means the run fails.
        let _ = stdin.write_all(data);
    }
    let (out_buf, out_h) = spawn_reader(child.stdout.take().expect("piped"), limits.output_cap);
    let (err_buf, err_h) = spawn_reader(child.stderr.take().expect("piped"), limits.output_cap);
    let deadline = start + limits.wall;
    let mut sleep = Duration::from_millis(1);
    let status: Option<ExitStatus> = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => {
                kill_group(&child);
                let _ = child.wait();
                return Err(Error::Sandbox(format!("waiting for the child: {e}")));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break None;
        }
        std::thread::sleep(sleep.min(deadline - now));
        sleep = (sleep * 2).min(Duration::from_millis(20));
    };
    // Whatever happened, nothing of the run may survive it.
    kill_group(&child);
    let status = match status {
        Some(st) => Some(st),
        None => {
            let _ = child.wait();
            None
        }
    };
    let wall = start.elapsed();
    if let Some(g) = group {
        g.kill_all();
    }
    kill_stragglers(uid, marker);
    // The readers end when every holder of the pipes is dead; do not hang on one that is not.
    let grace = Instant::now() + Duration::from_secs(1);
    while (!out_h.is_finished() || !err_h.is_finished()) && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(2));
    }
    let take = |b: &Buffer| {
        let mut g = b.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut g.0), g.1)
    };
    let (stdout, t1) = take(&out_buf);
    let (stderr, t2) = take(&err_buf);
    let outcome = match status {
        None => Outcome::TimedOut,
        Some(st) => {
            use std::os::unix::process::ExitStatusExt;
            match (st.code(), st.signal()) {
                (Some(c), _) => Outcome::Exited(c),
                (None, Some(s)) => Outcome::Signaled(s),
                _ => Outcome::Exited(-1),
            }
        }
    };
    if outcome == Outcome::Exited(JOIN_FAILURE_CODE) && group.is_some() {
        let msg = String::from_utf8_lossy(&stderr);
        if msg.contains("unmask: cannot join cgroup") {
            return Err(Error::Sandbox(msg.trim().to_string()));
        }
    }
    if let Outcome::Exited(c) = outcome {
        if uid.is_some() && SETUP_FAILURE_CODES.contains(&c) && !stderr.is_empty() {
            let msg = String::from_utf8_lossy(&stderr);
            if msg.contains("mount") {
                return Err(Error::Sandbox(format!(
                    "namespace setup failed: {}",
                    msg.trim()
                )));
            }
        }
    }
    Ok(RunResult {
        outcome,
        stdout,
        stderr,
        truncated: t1 || t2,
        wall,
    })
}

/// Kills every remaining process of the run and waits (bounded, about 5 s) until none is left,
/// zombies included: a zombie still counts against RLIMIT_NPROC of the private uid, which the next
/// run of the same slot would otherwise inherit. Zombies cannot be killed; the pid namespace's
/// teardown (or their parent) reaps them.
fn kill_stragglers(uid: Option<u32>, marker: &str) {
    for _ in 0..1000 {
        let procs = find_run_processes(uid, marker);
        if procs.is_empty() {
            return;
        }
        for (pid, zombie) in procs {
            if let (false, Some(p)) = (zombie, Pid::from_raw(pid)) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes a private directory, restoring permissions the code may have taken away.
fn remove_dir(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    fn unlock(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(md) = std::fs::symlink_metadata(p) {
            if md.is_dir() {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                if let Ok(rd) = std::fs::read_dir(p) {
                    for e in rd.flatten() {
                        unlock(&e.path());
                    }
                }
            }
        }
    }
    unlock(dir);
    let _ = std::fs::remove_dir_all(dir);
}
