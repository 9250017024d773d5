//! Hostile programs in the sandbox: each fails (or is scored as failed), is contained, and leaves
//! no process behind. Every test runs in each isolation mode that works on this machine (the
//! strongest is required to work; the forced weaker ones are skipped with a note when unavailable).

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use unmask_train::reward::score_completion;
use unmask_train::sandbox::{Isolation, Limits, Outcome, RunResult, Sandbox, SandboxConfig};
use unmask_train::tasks::Task;

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "unmask-{tag}-{}-{}-{t}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The hostile programs run one test at a time, so that a fork bomb's CPU use does not make
/// another test's timing assertions flaky (and "the machine stays healthy" is measured alone).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn limits() -> Limits {
    Limits {
        wall: Duration::from_secs(3),
        cpu_seconds: 3,
        ..Limits::default()
    }
}

/// The sandboxes to test: the default (strongest working) one, plus each weaker mode that works.
fn sandboxes() -> Vec<Sandbox> {
    let best = Sandbox::new(SandboxConfig {
        limits: limits(),
        ..Default::default()
    })
    .expect("the default sandbox must work");
    eprintln!("default isolation: {}", best.isolation().describe());
    let mut v = vec![];
    for mode in [
        Isolation::RootNamespaces,
        Isolation::UserNamespaces,
        Isolation::RlimitsOnly,
    ] {
        if mode == best.isolation() {
            continue;
        }
        match Sandbox::new(SandboxConfig {
            limits: limits(),
            isolation: Some(mode),
            ..Default::default()
        }) {
            Ok(s) => v.push(s),
            Err(e) => eprintln!("skipping {}: {e}", mode.name()),
        }
    }
    v.insert(0, best);
    v
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                v.push((pid, cmd));
            }
        }
    }
    v
}

fn assert_no_survivors(marker: &str) {
    // The sandbox has already killed and waited; allow the kernel a moment to finish reaping.
    let t = Instant::now();
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "processes survived the run: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_machine_healthy() {
    let t = Instant::now();
    let ok = std::process::Command::new("true")
        .status()
        .unwrap()
        .success();
    assert!(
        ok && t.elapsed() < Duration::from_secs(2),
        "spawning `true` failed or was slow"
    );
}

fn run(sb: &Sandbox, marker: &str, code: &str) -> RunResult {
    let program = format!("# {marker}\n{code}");
    let r = sb.run_python(&program, &[]).unwrap();
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

fn task(test: &str) -> Task {
    Task {
        id: None,
        question: "q".into(),
        test_cases: vec![test.into()],
    }
}

fn completion(code: &str) -> String {
    format!("```python\n{code}\n```\n<|im_end|>")
}

#[test]
fn fork_bomb_is_contained() {
    let _serial = serial();
    for sb in sandboxes() {
        let marker = unique("forkbomb");
        let code = "import os\nn = 0\nwhile True:\n    try:\n        os.fork()\n        n += 1\n    except OSError:\n        pass\n";
        let t = Instant::now();
        let r = run(&sb, &marker, code);
        assert!(!r.success());
        assert!(
            // The wall-clock limit is 3 s; killing and reaping thousands of forks on a loaded
            // 2-core machine has taken up to 7 s. A hang would never end.
            t.elapsed() < Duration::from_secs(12),
            "took {:?}",
            t.elapsed()
        );
        assert_no_survivors(&marker);
        // Scored as a test: the assert never passes.
        let marker2 = unique("forkbomb-score");
        let s = score_completion(
            &sb,
            &task("assert True"),
            &completion(&format!("# {marker2}\n{code}")),
        )
        .unwrap();
        assert_eq!((s.format, s.pass_rate, s.reward), (1.0, 0.0, 0.5));
        assert_no_survivors(&marker2);
        assert_machine_healthy();
    }
}

#[test]
fn infinite_loop_is_killed_quickly() {
    let _serial = serial();
    for sb in sandboxes() {
        let marker = unique("loop");
        let t = Instant::now();
        let r = run(&sb, &marker, "while True:\n    pass\n");
        let took = t.elapsed();
        assert!(
            matches!(r.outcome, Outcome::TimedOut | Outcome::Signaled(_)),
            "{:?}",
            r.outcome
        );
        assert!(took < Duration::from_millis(4500), "took {took:?}");
        assert_no_survivors(&marker);
    }
    // With the defaults (5 s wall clock, 5 s CPU), as the spec asks.
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    let marker = unique("loop-default");
    let t = Instant::now();
    let r = run(&sb, &marker, "while True:\n    pass\n");
    assert!(!r.success());
    assert!(
        t.elapsed() < Duration::from_millis(6500),
        "took {:?}",
        t.elapsed()
    );
    assert_no_survivors(&marker);
}

#[test]
fn ten_gigabytes_are_refused() {
    let _serial = serial();
    for sb in sandboxes() {
        let marker = unique("alloc");
        let t = Instant::now();
        let r = run(
            &sb,
            &marker,
            "x = bytearray(10 * 1024 ** 3)\nprint('ALLOCATED', len(x))\n",
        );
        assert!(!r.success());
        assert!(!String::from_utf8_lossy(&r.stdout).contains("ALLOCATED"));
        assert!(String::from_utf8_lossy(&r.stderr).contains("MemoryError"));
        assert!(t.elapsed() < Duration::from_secs(3));
        // Many small allocations hit the same limit.
        let r = run(
            &sb,
            &marker,
            "xs = []\nwhile True:\n    xs.append(bytearray(64 * 1024 * 1024))\n",
        );
        assert!(!r.success());
        assert_no_survivors(&marker);
        assert_machine_healthy();
    }
}

#[test]
fn writes_outside_the_private_directory_do_not_land() {
    let _serial = serial();
    let repo_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for sb in sandboxes() {
        let name = unique("escape");
        let targets: Vec<PathBuf> = vec![
            Path::new("/tmp").join(&name),
            Path::new("/var/tmp").join(&name),
            Path::new("/dev/shm").join(&name),
            repo_dir.join(&name),
            sb.root_dir().join(&name),
            std::env::temp_dir().join(&name),
        ];
        let list = targets
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let code = format!(
            "import os\nopen('mine.txt', 'w').write('ok')\nassert open('mine.txt').read() == 'ok'\n\
             for p in [{list}]:\n    try:\n        open(p, 'w').write('escaped')\n        print('wrote', p)\n    except Exception as e:\n        print('blocked', p, e)\n"
        );
        let r = run(&sb, &name, &code);
        assert!(r.success(), "the code may write in its own directory");
        for p in &targets {
            assert!(!p.exists(), "{} was written from the sandbox", p.display());
        }
        // The private directory is gone afterwards.
        let left: Vec<_> = std::fs::read_dir(sb.root_dir())
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "leftover run directories: {left:?}");
    }
}

#[test]
fn other_runs_files_are_not_readable() {
    let _serial = serial();
    for sb in sandboxes() {
        let secret = unique("secret-value");
        // A file in a sibling run directory and one under the parent's temporary directory.
        let sibling = sb.root_dir().join("run-999999");
        std::fs::create_dir_all(&sibling).unwrap();
        let sibling_file = sibling.join("secret.txt");
        std::fs::write(&sibling_file, &secret).unwrap();
        let parent_file = std::env::temp_dir().join(unique("secret-file"));
        std::fs::write(&parent_file, &secret).unwrap();
        let code = format!(
            "import os\nfound = []\nfor p in [{:?}, {:?}]:\n    try:\n        found.append(open(p).read())\n    except Exception as e:\n        print('blocked', p, e)\n\
             for d in [{:?}, {:?}, '/tmp']:\n    try:\n        for root, dirs, files in os.walk(d):\n            for f in files:\n                try:\n                    found.append(open(os.path.join(root, f)).read())\n                except Exception:\n                    pass\n    except Exception as e:\n        print('blocked', d, e)\nprint('FOUND', found)\n",
            sibling_file.display().to_string(),
            parent_file.display().to_string(),
            sb.root_dir().display().to_string(),
            std::env::temp_dir().display().to_string(),
        );
        let r = run(&sb, &unique("reader"), &code);
        let out = String::from_utf8_lossy(&r.stdout);
        std::fs::remove_dir_all(&sibling).unwrap();
        std::fs::remove_file(&parent_file).unwrap();
        assert!(
            !out.contains(&secret),
            "[{}] read a secret",
            sb.isolation().name()
        );
    }
}

#[test]
fn network_is_unreachable() {
    let _serial = serial();
    for sb in sandboxes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let code = format!(
            "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\nprint('CONNECTED')\n"
        );
        let r = run(&sb, &unique("net"), &code);
        assert!(!r.success());
        assert!(!String::from_utf8_lossy(&r.stdout).contains("CONNECTED"));
        match listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!(
                "[{}] the listener saw a connection: {other:?}",
                sb.isolation().name()
            ),
        }
        // Control: without the sandbox the same connection works.
        let c = std::net::TcpStream::connect(("127.0.0.1", port));
        assert!(c.is_ok());
    }
}

#[test]
fn daemons_do_not_survive() {
    let _serial = serial();
    for sb in sandboxes() {
        let marker = unique("daemon");
        let code = "import os, time\n\
                    if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.closerange(0, 3)\n        time.sleep(1000)\n    os._exit(0)\n\
                    time.sleep(0.3)\nprint('parent done')\n";
        let t = Instant::now();
        let r = run(&sb, &marker, code);
        if sb.isolation() != Isolation::RlimitsOnly {
            assert!(r.success(), "the parent itself exits normally");
        }
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_no_survivors(&marker);
        // A daemon that keeps the output pipe open does not hang the run either.
        let marker = unique("daemon-pipe");
        let code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n    os._exit(0)\nprint('parent done')\n";
        let t = Instant::now();
        let _ = run(&sb, &marker, code);
        assert!(t.elapsed() < Duration::from_secs(3));
        assert_no_survivors(&marker);
    }
}

#[test]
fn output_is_capped_and_stdin_closed() {
    let _serial = serial();
    for sb in sandboxes() {
        let r = run(
            &sb,
            &unique("output"),
            "import sys\nassert sys.stdin.read() == ''\nsys.stdout.write('x' * (10 * 1024 * 1024))\n",
        );
        assert!(r.success());
        assert!(r.truncated);
        assert_eq!(r.stdout.len(), sb.limits().output_cap);
    }
}

#[test]
fn process_count_is_bounded() {
    let _serial = serial();
    for sb in sandboxes() {
        let marker = unique("nproc");
        let code = "import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\nprint('FORKED', n)\n";
        let r = run(&sb, &marker, code);
        let out = String::from_utf8_lossy(&r.stdout);
        let n: u64 = out
            .trim()
            .strip_prefix("FORKED ")
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        // RLIMIT_NPROC does not apply to real uid 0: a user namespace created by root maps its
        // root to uid 0, so that mode (meant for non-root callers) bounds nothing when forced
        // under root; the root mode's private uid is what bounds it there.
        if sb.isolation() == Isolation::UserNamespaces && running_as_root() {
            eprintln!("user-namespaces under root: forked {n}, not bounded by RLIMIT_NPROC");
        } else {
            assert!(
                n < sb.limits().processes,
                "[{}] forked {n} processes",
                sb.isolation().name()
            );
        }
        assert_no_survivors(&marker);
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        .unwrap()
}
