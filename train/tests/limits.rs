//! The sandbox's resource bounds that rlimits alone did not give: shared memory (`memfd`), the
//! disk (the private `/tmp`) and new user namespaces. Each probe tries to take far more than the
//! bound; the test checks it got no more than the bound. Where the machine lacks a mechanism
//! (no usable cgroup), the test says so and checks the fallback instead.

use std::time::Duration;

use unmask_train::sandbox::{Isolation, Limits, RunResult, Sandbox, SandboxConfig};

/// Runs one probe at a time: the probes use real memory.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn limits() -> Limits {
    Limits {
        wall: Duration::from_secs(10),
        cpu_seconds: 10,
        memory: 256 << 20,
        tmp_size: 32 << 20,
        ..Limits::default()
    }
}

fn sandbox(cfg: SandboxConfig) -> Sandbox {
    let sb = Sandbox::new(cfg).expect("sandbox");
    eprintln!("sandbox: {}", sb.describe());
    sb
}

fn run(sb: &Sandbox, code: &str) -> RunResult {
    let r = sb.run_python(code, &[]).unwrap();
    eprintln!(
        "[{}] {:?} in {:?}\nstdout: {}\nstderr: {}",
        sb.isolation().name(),
        r.outcome,
        r.wall,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    r
}

/// The last `TAG n` line's `n` (0 when none).
fn last_count(r: &RunResult, tag: &str) -> u64 {
    String::from_utf8_lossy(&r.stdout)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(tag)?.trim().parse().ok())
        .unwrap_or(0)
}

/// 16 MiB memfds (the file-size rlimit) until 2 GiB are held, printing the MiB held so far.
const MEMFD_PROBE: &str = r#"import os, sys
chunk = b"x" * (16 << 20)
fds = []
try:
    while len(fds) < 128:
        fd = os.memfd_create("probe")
        os.write(fd, chunk)
        fds.append(fd)
        print("HELD", 16 * len(fds), flush=True)
except OSError as e:
    print("REFUSED", e.errno, flush=True)
"#;

#[test]
fn memfd_memory_is_bounded() {
    let _s = serial();
    let sb = sandbox(SandboxConfig {
        limits: limits(),
        ..Default::default()
    });
    let memory_mib = sb.limits().memory >> 20;
    match sb.cgroup() {
        Some(v) => {
            let r = run(&sb, MEMFD_PROBE);
            let held = last_count(&r, "HELD ");
            eprintln!(
                "{}: held {held} MiB of memfd (bound {memory_mib} MiB)",
                v.name()
            );
            assert!(held <= memory_mib, "held {held} MiB > {memory_mib} MiB");
            assert!(!r.success() || String::from_utf8_lossy(&r.stdout).contains("REFUSED"));
        }
        None => eprintln!("no usable cgroup on this machine: checking the fallback only"),
    }
    // Without a cgroup (forced here, or the machine's own case), memfd_create is refused.
    let fallback = sandbox(SandboxConfig {
        limits: limits(),
        cgroups: false,
        ..Default::default()
    });
    assert!(fallback.cgroup().is_none());
    assert!(fallback.seccomp(), "{}", fallback.describe());
    let r = run(&fallback, MEMFD_PROBE);
    assert_eq!(last_count(&r, "HELD "), 0);
    assert_eq!(
        last_count(&r, "REFUSED "),
        1,
        "memfd_create must fail with EPERM"
    );
}

/// Writes 16 MiB files in `dir` until 1 GiB is written, printing the MiB written so far.
fn disk_probe(dir: &str) -> String {
    format!(
        r#"import os
chunk = b"y" * (16 << 20)
n = 0
try:
    while n < 64:
        with open(os.path.join({dir:?}, "f%d" % n), "wb") as f:
            f.write(chunk)
        n += 1
        print("WROTE", 16 * n, flush=True)
except OSError as e:
    print("REFUSED", e.errno, flush=True)
"#
    )
}

#[test]
fn private_tmp_is_size_limited() {
    let _s = serial();
    let sb = sandbox(SandboxConfig {
        limits: limits(),
        ..Default::default()
    });
    assert_ne!(sb.isolation(), Isolation::RlimitsOnly, "{}", sb.describe());
    let tmp_mib = sb.limits().tmp_size >> 20;
    for (dir, bound) in [
        ("/tmp", tmp_mib),
        (".", tmp_mib),
        ("/var/tmp", 1),
        ("/dev/shm", 1),
    ] {
        let r = run(&sb, &disk_probe(dir));
        let wrote = last_count(&r, "WROTE ");
        eprintln!("{dir}: wrote {wrote} MiB (bound {bound} MiB)");
        assert!(wrote <= bound, "{dir}: wrote {wrote} MiB > {bound} MiB");
        // ENOSPC (28): the tmpfs is full, not some other refusal.
        assert_eq!(last_count(&r, "REFUSED "), 28, "{dir}");
    }
    // The host side of the run directory stays empty: nothing was written through to the disk.
    assert_eq!(std::fs::read_dir(sb.root_dir()).unwrap().count(), 0);
}

#[test]
fn new_namespaces_and_dangerous_syscalls_are_refused() {
    let _s = serial();
    let sb = sandbox(SandboxConfig {
        limits: limits(),
        ..Default::default()
    });
    assert!(
        sb.seccomp(),
        "the seccomp filter must load: {}",
        sb.describe()
    );
    // Syscall numbers of this architecture, from the same constants the filter uses.
    let code = format!(
        r#"import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
print("unshare-user", errno_of({unshare}, CLONE_NEWUSER))
print("unshare-mount", errno_of({unshare}, CLONE_NEWNS))
print("clone-user", errno_of({clone}, CLONE_NEWUSER | 17, 0, 0, 0, 0))
print("ptrace", errno_of({ptrace}, 0, 0, 0, 0))
print("keyctl", errno_of({keyctl}, 0, 0, 0, 0))
print("add_key", errno_of({add_key}, 0, 0, 0, 0, 0))
print("bpf", errno_of({bpf}, 0, 0, 0))
print("io_uring_setup", errno_of({io_uring}, 1, 0))
p = subprocess.run(["unshare", "--user", "--map-root-user", "id", "-u"], capture_output=True)
print("unshare-cli", p.returncode, p.stdout.decode().strip() or "-")
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitpid(pid, 0)[1] >> 8)
"#,
        unshare = libc::SYS_unshare,
        clone = libc::SYS_clone,
        ptrace = libc::SYS_ptrace,
        keyctl = libc::SYS_keyctl,
        add_key = libc::SYS_add_key,
        bpf = libc::SYS_bpf,
        io_uring = libc::SYS_io_uring_setup,
    );
    for sb in [
        sb,
        sandbox(SandboxConfig {
            limits: limits(),
            isolation: Some(Isolation::RlimitsOnly),
            ..Default::default()
        }),
    ] {
        if sb.isolation() == Isolation::RlimitsOnly {
            // The fallback's audit hook refuses ctypes and subprocess before the kernel could;
            // the filter still applies (checked through the hook-free path of the namespace
            // modes above), so only check the run fails without a namespace.
            let r = run(&sb, &code);
            assert!(!String::from_utf8_lossy(&r.stdout).contains("unshare-user 0"));
            continue;
        }
        let r = run(&sb, &code);
        assert!(r.success());
        let out = String::from_utf8_lossy(&r.stdout).to_string();
        for probe in [
            "unshare-user",
            "unshare-mount",
            "clone-user",
            "ptrace",
            "keyctl",
            "add_key",
            "bpf",
            "io_uring_setup",
        ] {
            assert!(
                out.lines().any(|l| l == format!("{probe} 1")),
                "[{}] {probe} not refused with EPERM: {out}",
                sb.isolation().name()
            );
        }
        let cli = out.lines().find(|l| l.starts_with("unshare-cli")).unwrap();
        assert!(
            !cli.starts_with("unshare-cli 0"),
            "unshare --user worked: {cli}"
        );
        // Ordinary process creation is untouched.
        assert!(out.lines().any(|l| l == "fork 7"), "{out}");
    }
}
