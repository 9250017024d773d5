//! Per-run control groups: one memory + pids bound for all the processes of a sandboxed run.
//!
//! rlimits bound each process alone (RLIMIT_AS does not count pages of `memfd`/tmpfs files that
//! are not mapped), so a run could hold `processes x open files x file size` of shared memory.
//! A cgroup charges every page the run's processes touch, page cache and shmem included, to one
//! counter. [`CgroupSetup::detect`] finds, in this order:
//!
//! - **v2**: the unified hierarchy with the `memory` and `pids` controllers available for child
//!   groups of this process's cgroup, or of the hierarchy's root (the root is exempt from the
//!   "no internal processes" rule); limits `memory.max`, `memory.swap.max = 0`, `pids.max`, and
//!   `memory.oom.group = 1`;
//! - **v1**: separate `memory` and `pids` hierarchies (hybrid hosts); limits
//!   `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (when swap accounting exists),
//!   `pids.max`;
//! - nothing (not root, no delegation): the caller falls back to rlimits and says so.
//!
//! A run's group is created by [`CgroupSetup::create`] before the run and removed when the
//! [`RunCgroup`] is dropped (after its processes are killed). The run joins it by having the first
//! exec'd process (a shell) write `0` ("myself") to each `cgroup.procs` before it execs the rest,
//! so that nothing of the run ever executes outside the group.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which cgroup version bounds the runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V2,
    V1,
}

impl CgroupVersion {
    pub fn name(self) -> &'static str {
        match self {
            CgroupVersion::V2 => "cgroup-v2",
            CgroupVersion::V1 => "cgroup-v1",
        }
    }
}

/// Where per-run groups are created.
#[derive(Clone, Debug)]
pub struct CgroupSetup {
    version: CgroupVersion,
    /// v2: one parent; v1: the memory parent, then the pids parent.
    parents: Vec<PathBuf>,
}

/// One run's group (v2: one directory; v1: one per hierarchy). Dropping it kills what is left in
/// it and removes the directories.
#[derive(Debug)]
pub struct RunCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
}

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    superopts: String,
}

fn mounts() -> Vec<Mount> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            Some(Mount {
                root: unescape(pre.get(3)?),
                point: PathBuf::from(unescape(pre.get(4)?)),
                fstype: post.next()?.to_string(),
                superopts: post.nth(1).unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup path in the hierarchy whose `/proc/self/cgroup` controller field
/// satisfies `pick`.
fn own_path(pick: impl Fn(&str) -> bool) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
        pick(ctl).then(|| path.to_string())
    })
}

/// The directory of cgroup `path` under mount `m` (whose own root may be a sub-path).
fn dir_of(m: &Mount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(m.root.trim_end_matches('/'))
        .unwrap_or(path);
    m.point.join(rel.trim_start_matches('/'))
}

impl CgroupSetup {
    /// The cgroup support usable for runs, or why there is none.
    pub fn detect() -> std::result::Result<CgroupSetup, String> {
        let ms = mounts();
        let mut why = Vec::new();
        match Self::detect_v2(&ms) {
            Ok(s) => return Ok(s),
            Err(e) => why.push(format!("v2: {e}")),
        }
        match Self::detect_v1(&ms) {
            Ok(s) => return Ok(s),
            Err(e) => why.push(format!("v1: {e}")),
        }
        Err(why.join("; "))
    }

    fn detect_v2(ms: &[Mount]) -> std::result::Result<CgroupSetup, String> {
        let m = ms
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or("no cgroup2 mount")?;
        let own = own_path(|c| c.is_empty()).ok_or("no v2 entry in /proc/self/cgroup")?;
        let mut tried = Vec::new();
        for base in [dir_of(m, &own), m.point.clone()] {
            let controllers =
                std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if !(has("memory") && has("pids")) {
                tried.push(format!(
                    "{}: controllers {:?}",
                    base.display(),
                    controllers.trim()
                ));
                continue;
            }
            let sub = base.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&sub).unwrap_or_default();
            let on = |c: &str| enabled.split_whitespace().any(|x| x == c);
            if !(on("memory") && on("pids")) {
                if let Err(e) = std::fs::write(&sub, "+memory +pids") {
                    tried.push(format!("{}: enabling memory/pids: {e}", sub.display()));
                    continue;
                }
            }
            let s = CgroupSetup {
                version: CgroupVersion::V2,
                parents: vec![base.clone()],
            };
            match s.probe() {
                Ok(()) => return Ok(s),
                Err(e) => tried.push(format!("{}: {e}", base.display())),
            }
        }
        Err(tried.join(", "))
    }

    fn detect_v1(ms: &[Mount]) -> std::result::Result<CgroupSetup, String> {
        let mut parents = Vec::new();
        for ctl in ["memory", "pids"] {
            let m = ms
                .iter()
                .find(|m| m.fstype == "cgroup" && m.superopts.split(',').any(|o| o == ctl))
                .ok_or_else(|| format!("no {ctl} hierarchy"))?;
            let own = own_path(|c| c.split(',').any(|x| x == ctl))
                .ok_or_else(|| format!("no {ctl} entry in /proc/self/cgroup"))?;
            let base = dir_of(m, &own);
            parents.push(base);
        }
        let s = CgroupSetup {
            version: CgroupVersion::V1,
            parents,
        };
        s.probe()?;
        Ok(s)
    }

    /// Creates and removes one group with limits, to know runs will get theirs.
    fn probe(&self) -> std::result::Result<(), String> {
        let name = format!("unmask-probe-{}", std::process::id());
        let g = self.create(&name, 64 << 20, 4).map_err(|e| e.to_string())?;
        drop(g);
        Ok(())
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// A new group `name` with the given bounds on memory (bytes, swap excluded) and tasks.
    pub fn create(&self, name: &str, memory: u64, tasks: u64) -> std::io::Result<RunCgroup> {
        let mut g = RunCgroup {
            version: self.version,
            dirs: Vec::new(),
        };
        for p in &self.parents {
            let d = p.join(name);
            match std::fs::create_dir(&d) {
                Ok(()) => {}
                // A leftover of a killed process with the same pid: reuse it if empty.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(annotate(&d, e)),
            }
            g.dirs.push(d);
        }
        let set = |d: &Path, file: &str, v: &str| {
            std::fs::write(d.join(file), v).map_err(|e| annotate(&d.join(file), e))
        };
        let optional = |d: &Path, file: &str, v: &str| {
            if d.join(file).exists() {
                set(d, file, v)
            } else {
                Ok(())
            }
        };
        match self.version {
            CgroupVersion::V2 => {
                let d = &g.dirs[0];
                set(d, "memory.max", &memory.to_string())?;
                optional(d, "memory.swap.max", "0")?;
                optional(d, "memory.oom.group", "1")?;
                set(d, "pids.max", &tasks.to_string())?;
            }
            CgroupVersion::V1 => {
                let (mem, pids) = (&g.dirs[0], &g.dirs[1]);
                set(mem, "memory.limit_in_bytes", &memory.to_string())?;
                optional(mem, "memory.memsw.limit_in_bytes", &memory.to_string())?;
                set(pids, "pids.max", &tasks.to_string())?;
            }
        }
        Ok(g)
    }
}

fn annotate(p: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

impl RunCgroup {
    /// The `cgroup.procs` files a process writes `0` to, to join the group.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Pids in the group (in this process's pid namespace).
    pub fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .procs_files()
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The group's peak memory, where the kernel reports it (v2 `memory.peak`, v1
    /// `memory.max_usage_in_bytes`).
    pub fn peak_memory(&self) -> Option<u64> {
        let f = match self.version {
            CgroupVersion::V2 => "memory.peak",
            CgroupVersion::V1 => "memory.max_usage_in_bytes",
        };
        std::fs::read_to_string(self.dirs[0].join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs everything in the group until it is empty (bounded, about 2 s).
    pub fn kill_all(&self) {
        let kill_file = self.dirs[0].join("cgroup.kill");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            if self.version == CgroupVersion::V2 && kill_file.exists() {
                let _ = std::fs::write(&kill_file, "1");
            }
            for pid in pids {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for d in &self.dirs {
            // Exiting tasks leave the group asynchronously: retry briefly.
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\"), r"/end\");
    }
}
