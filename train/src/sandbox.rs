//! Local, contained execution of untrusted generated Python (COUPLED_GRPO.md §3).
//!
//! Each run is one child process, `python3 -I -B -c PROGRAM [ARGS...]`, with: a fresh private
//! working directory (removed afterwards; `HOME`, `TMPDIR` and the cwd point at it), a cleared
//! environment, stdin on `/dev/null`, stdout/stderr captured up to a cap, a wall-clock timeout,
//! its own process group (`Command::process_group(0)`) that is SIGKILLed when the run ends, and
//! rlimits: CPU seconds, address space, file size, process count, open files, no core dumps.
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
//! namespace the working directory is bind-mounted over `/tmp`, fresh tmpfs cover `/var/tmp`,
//! `/dev/shm`, `/run/lock` and `/dev/mqueue`, every other mount is remounted read-only, and `/proc`
//! is the new pid namespace's. The network namespace has only a down loopback: connecting anywhere,
//! 127.0.0.1 included, fails.
//!
//! Residual risks: each process may use up to the address-space limit, so the worst-case memory is
//! `processes x address_space` (16 GiB with the defaults) if every allowed process touches all of
//! it; and a fork bomb keeps up to `processes` processes busy until the wall-clock timeout, which
//! slows concurrent runs (the code runs at nice 10 so the rest of the machine keeps priority).
//! A cgroup (memory.max, cpu.max) would bound both but is not portable enough to rely on here.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::{Error, Result};

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
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: None,
            limits: Limits::default(),
            isolation: None,
            uid_base: 1_600_000_000,
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
/// `$1` = the private directory, the rest = the command to run (not exec'd: this shell stays the
/// init and waits, so the namespace dies with it).
const INNER_SCRIPT: &str = r#"work="$1"; shift
mount --bind "$work" /tmp || exit 120
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

/// Prelude of [`Isolation::RlimitsOnly`]: `python -c PRELUDE PROGRAM ARGS...`.
/// `{CPU}` etc. are substituted.
const FALLBACK_PRELUDE: &str = r#"import os as _os, resource as _r, sys as _sys
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
_src = _sys.argv[1]
_sys.argv = ["-c"] + _sys.argv[2:]
_g = {"__name__": "__main__", "__builtins__": __builtins__, "__doc__": None}
exec(compile(_src, "<string>", "exec"), _g)
"#;

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
}

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
        let mut tried = Vec::new();
        for &mode in &modes {
            if mode == Isolation::RootNamespaces && !is_root {
                tried.push(format!("{}: not root", mode.name()));
                continue;
            }
            for py in &pythons {
                let sb = Sandbox {
                    python: py.clone(),
                    isolation: mode,
                    limits: cfg.limits.clone(),
                    uid_base: cfg.uid_base,
                    root,
                    counter: AtomicU64::new(0),
                };
                match sb.run_python("print('unmask-sandbox-ok')", &[]) {
                    Ok(r) if r.success() && r.stdout == b"unmask-sandbox-ok\n" => return Ok(sb),
                    Ok(r) => tried.push(format!(
                        "{} with {}: {:?}: {}",
                        mode.name(),
                        py.display(),
                        r.outcome,
                        String::from_utf8_lossy(&r.stderr).trim()
                    )),
                    Err(e) => tried.push(format!("{} with {}: {e}", mode.name(), py.display())),
                }
                root = sb.root;
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

    /// The parent directory of the private per-run directories.
    pub fn root_dir(&self) -> &Path {
        self.root.path()
    }

    /// Runs `python3 -I -B -c program args...` in a fresh private directory.
    pub fn run_python(&self, program: &str, args: &[&str]) -> Result<RunResult> {
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
            let marker = format!("{}-{}-{n}", std::process::id(), self.root_dir().display());
            let cmd = self.command(&work, uid, &marker, program, args);
            run_contained(cmd, &self.limits, uid, &marker)
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

    /// Runs one test case as the spec does, `python3 -c "<code>\n<assert>"`: true when it exits 0.
    pub fn run_test(&self, code: &str, test: &str) -> Result<bool> {
        let program = format!("{code}\n{test}");
        if program.len() > MAX_PROGRAM_BYTES || program.contains('\0') {
            return Ok(false);
        }
        Ok(self.run_python(&program, &[])?.success())
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
        program: &str,
        args: &[&str],
    ) -> Command {
        let l = &self.limits;
        let ns_mode = self.isolation != Isolation::RlimitsOnly;
        let mut cmd;
        if ns_mode {
            cmd = Command::new("unshare");
            if self.isolation == Isolation::UserNamespaces {
                cmd.args(["--user", "--map-root-user"]);
            }
            cmd.args([
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
            ]);
            cmd.arg(work);
            cmd.arg("setpriv");
            if let Some(uid) = uid {
                cmd.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_string(),
                ]);
            }
            cmd.args([
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
                "nice",
                "-n",
                "10",
                "prlimit",
            ]);
            cmd.args([
                format!("--cpu={}", l.cpu_seconds),
                format!("--as={}", l.address_space),
                format!("--fsize={}", l.file_size),
                format!("--nproc={}", l.processes),
                format!("--nofile={}", l.open_files),
                "--core=0".to_string(),
                "--".to_string(),
            ]);
            cmd.arg(&self.python).args(["-I", "-B", "-c", program]);
            cmd.current_dir("/");
        } else {
            let prelude = FALLBACK_PRELUDE
                .replace("{CPU}", &l.cpu_seconds.to_string())
                .replace("{AS}", &l.address_space.to_string())
                .replace("{FSIZE}", &l.file_size.to_string())
                .replace("{NOFILE}", &l.open_files.to_string());
            cmd = Command::new(&self.python);
            cmd.args(["-I", "-B", "-c", &prelude, program]);
            cmd.current_dir(work);
        }
        cmd.args(args);
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
) -> Result<RunResult> {
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Sandbox(format!("cannot start {:?}: {e}", cmd.get_program())))?;
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
