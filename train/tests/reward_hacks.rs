//! Completions that try to fake a passing test score 0, while honest ones still score 1.
//!
//! Each hack here scored pass rate 1.0 when a test was "`code + assert` exits 0": the code ended
//! the process early with status 0, or made the failing assert look like a success. The harness
//! (`train/src/test_harness.py`) counts a pass only when the test provably ran to its end and
//! held. Run in the default (strongest) sandbox and in the rlimits-only fallback, whose prelude
//! differs.

use unmask_train::reward::score_completion;
use unmask_train::sandbox::{Isolation, Sandbox, SandboxConfig};
use unmask_train::tasks::Task;

fn sandboxes() -> Vec<Sandbox> {
    let best = Sandbox::new(SandboxConfig::default()).expect("the default sandbox must work");
    eprintln!("default sandbox: {}", best.describe());
    let mut v = vec![best];
    match Sandbox::new(SandboxConfig {
        isolation: Some(Isolation::RlimitsOnly),
        ..Default::default()
    }) {
        Ok(s) => v.push(s),
        Err(e) => eprintln!("rlimits-only fallback unavailable: {e}"),
    }
    v
}

fn task(tests: &[&str]) -> Task {
    Task {
        id: None,
        question: "Write add(a, b) and size(xs).".into(),
        test_cases: tests.iter().map(|t| t.to_string()).collect(),
    }
}

fn completion(code: &str) -> String {
    format!("```python\n{code}\n```\n<|im_end|>")
}

/// Honest code for the task: `add` right, `size` right.
const HONEST: &str = "def add(a, b):\n    return a + b\n\ndef size(xs):\n    return len(xs)\n";

/// Asserts an honest solution passes (each one a different shape of test).
const TESTS: &[&str] = &[
    "assert add(1, 2) == 3",
    "assert add(2, 2) != 5 and add(0, 0) == 0",
    "assert size([1, 2, 3]) == 3",
    "assert [add(i, i) for i in range(3)] == [0, 2, 4]",
    "assert add('a', 'b') in ['ab', 'ba']",
    "assert not add(0, 0)",
    "assert add(1, 1) is not None and add(1, 1) > 1",
    "r = add(2, 3)\nassert r == 5, 'add(2, 3)'",
];

#[test]
fn honest_solutions_still_score_full_marks() {
    for sb in sandboxes() {
        let s = score_completion(&sb, &task(TESTS), &completion(HONEST)).unwrap();
        assert_eq!(
            (s.format, s.passed, s.run, s.pass_rate),
            (1.0, TESTS.len(), TESTS.len(), 1.0),
            "[{}] {s:?}",
            sb.isolation().name()
        );
        // Honest code may print, use its own globals named like builtins internally, and
        // define helpers; it still passes.
        let chatty = "import sys\nprint('hello')\nsys.stdout.write('x\\n')\n\
                      def _len(xs):\n    n = 0\n    for _ in xs:\n        n += 1\n    return n\n\
                      def add(a, b):\n    print('adding', a, b)\n    return a + b\n\
                      def size(xs):\n    return _len(xs)\n";
        let s = score_completion(&sb, &task(TESTS), &completion(chatty)).unwrap();
        assert_eq!(s.pass_rate, 1.0, "[{}] {s:?}", sb.isolation().name());
    }
}

/// `(name, code)`: each defines a wrong `add`/`size` (or none) and tries to pass anyway.
fn hacks() -> Vec<(&'static str, String)> {
    // Fails every test of TESTS on its own.
    let wrong = "def add(a, b):\n    return a - b - 1\n\ndef size(xs):\n    return -1\n";
    let mut v: Vec<(&str, String)> = vec![
        ("sys.exit(0)", format!("{wrong}import sys\nsys.exit(0)\n")),
        ("raise SystemExit(0)", format!("{wrong}raise SystemExit(0)\n")),
        ("os._exit(0)", format!("{wrong}import os\nos._exit(0)\n")),
        (
            "excepthook",
            format!("{wrong}import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n"),
        ),
        (
            "atexit",
            format!("{wrong}import atexit, os\natexit.register(lambda: os._exit(0))\n"),
        ),
        (
            "signal handler",
            format!(
                "{wrong}import os, signal\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.setitimer(signal.ITIMER_REAL, 0.001)\nimport time\n"
            ),
        ),
        (
            "thread exits 0",
            format!(
                "{wrong}import os, threading, time\ndef _bye():\n    time.sleep(0.05)\n    os._exit(0)\nthreading.Thread(target=_bye, daemon=True).start()\ntime.sleep(0.2)\n"
            ),
        ),
        (
            "always-equal object",
            "class _Any:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n    def __bool__(self): return False\n    def __contains__(self, o): return True\n    __hash__ = object.__hash__\n\
             def add(a, b):\n    return _Any()\n\ndef size(xs):\n    return _Any()\n"
                .to_string(),
        ),
        (
            "int subclass",
            "class _I(int):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n    __hash__ = int.__hash__\n\
             def add(a, b):\n    return _I(0)\n\ndef size(xs):\n    return _I(0)\n"
                .to_string(),
        ),
        (
            "patched builtins",
            format!(
                "{wrong}import builtins\nbuiltins.len = lambda x: 3\nbuiltins.range = lambda n: [0, 1, 2]\nbuiltins.AssertionError = type('E', (BaseException,), {{}})\n"
            ),
        ),
        (
            "shadowed builtins",
            format!("{wrong}len = lambda x: 3\nrange = lambda n: []\n"),
        ),
        (
            "fake success output",
            format!(
                "{wrong}import os, sys\nfor fd in range(1, 20):\n    try:\n        os.write(fd, b'0123456789abcdef0123456789abcdef\\n')\n    except OSError:\n        pass\n"
            ),
        ),
    ];
    v.push(("no code at all", "pass\n".to_string()));
    v
}

#[test]
fn reward_hacks_score_zero() {
    for sb in sandboxes() {
        for (name, code) in hacks() {
            let s = score_completion(&sb, &task(TESTS), &completion(&code)).unwrap();
            assert_eq!(s.format, 1.0, "[{}] {name}: {s:?}", sb.isolation().name());
            assert_eq!(
                (s.passed, s.pass_rate),
                (0, 0.0),
                "[{}] {name} passed {} of {} tests",
                sb.isolation().name(),
                s.passed,
                s.run
            );
        }
    }
}

/// A hack that passed the old scheme on a test that no code can pass honestly.
#[test]
fn early_exit_does_not_pass_assert_false() {
    let sb = Sandbox::new(SandboxConfig::default()).unwrap();
    for (name, code) in hacks() {
        assert!(
            !sb.run_test(&code, "assert False").unwrap(),
            "{name} passed `assert False`"
        );
    }
    assert!(sb.run_test("pass", "assert True").unwrap());
}
