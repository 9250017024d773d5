//! The seccomp-bpf filter of sandboxed runs, as the bytes of a `struct sock_filter` array.
//!
//! The filter is built here (syscall numbers from the `libc` crate's constants for the target) and
//! loaded by the sandbox's Python prelude with `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)` after
//! `PR_SET_NO_NEW_PRIVS`, before any untrusted code runs; filters are inherited by every child.
//! It returns `EPERM` for: new namespaces (`unshare`, `setns`, `clone` with any `CLONE_NEW*` flag;
//! `clone3`, whose flags live in memory a filter cannot read, gets `ENOSYS` so that libc falls
//! back to `clone`), tracing and other processes' memory (`ptrace`, `process_vm_*`), kernel keyrings,
//! `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`, module and kexec loading, mounting and
//! the new mount API, `chroot`, `pivot_root`, swap, reboot, clock setting, `syslog`, `acct`,
//! `quotactl` and file handles. With `deny_memfd` (no cgroup bounds the run's memory) it also
//! refuses `memfd_create` and `memfd_secret`, whose pages no rlimit counts.
//!
//! The architecture is checked first (a foreign one, e.g. the i386 ABI of an x86-64 process, kills
//! the process) and, on x86-64, every x32 syscall number (bit 30 set) is refused, so that no
//! second syscall table slips past the list. seccompiler (rust-vmm) was the crate to reach for,
//! but it has one action per filter and cannot express the x32 range check, so the ~20 BPF
//! instructions are assembled here.

/// `struct seccomp_data` offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of `args[0]` (little-endian).
const OFF_ARG0_LO: u32 = 16;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xC000_00F3;

/// `__X32_SYSCALL_BIT`.
#[cfg(target_arch = "x86_64")]
const X32_BIT: Option<u32> = Some(0x4000_0000);
#[cfg(not(target_arch = "x86_64"))]
const X32_BIT: Option<u32> = None;

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME.
const CLONE_NEW_ANY: u32 = 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000
    | 0x80;

/// Syscalls refused with EPERM in every run.
const DENIED: &[libc::c_long] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_quotactl,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_syslog,
    libc::SYS_vhangup,
];

/// Refused with EPERM when no cgroup bounds memory.
const DENIED_WITHOUT_CGROUP: &[libc::c_long] = &[libc::SYS_memfd_create, libc::SYS_memfd_secret];

/// A jump target of the small assembler below.
#[derive(Clone, Copy)]
enum Label {
    Eperm,
    Enosys,
    Allow,
    CloneFlags,
}

enum Ins {
    Load(u32),
    /// Jump to the label when the accumulator equals (`JEQ`) / is >= (`JGE`) / has a bit of
    /// (`JSET`) `k`; else fall through.
    Jump(u16, u32, Label),
    Ret(u32),
    Mark(Label),
}

/// The filter as the native-endian bytes of its `sock_filter` instructions (8 bytes each).
pub fn filter(deny_memfd: bool) -> Vec<u8> {
    // The architecture check is prepended by `assemble`.
    let mut p = Vec::new();
    p.push(Ins::Load(OFF_NR));
    if let Some(bit) = X32_BIT {
        p.push(Ins::Jump(BPF_JGE_K, bit, Label::Eperm));
    }
    let extra: &[libc::c_long] = if deny_memfd {
        DENIED_WITHOUT_CGROUP
    } else {
        &[]
    };
    for &nr in DENIED.iter().chain(extra) {
        p.push(Ins::Jump(BPF_JEQ_K, nr as u32, Label::Eperm));
    }
    p.push(Ins::Jump(BPF_JEQ_K, libc::SYS_clone3 as u32, Label::Enosys));
    p.push(Ins::Jump(
        BPF_JEQ_K,
        libc::SYS_clone as u32,
        Label::CloneFlags,
    ));
    p.push(Ins::Ret(RET_ALLOW));
    p.push(Ins::Mark(Label::CloneFlags));
    p.push(Ins::Load(OFF_ARG0_LO));
    p.push(Ins::Jump(BPF_JSET_K, CLONE_NEW_ANY, Label::Eperm));
    p.push(Ins::Mark(Label::Allow));
    p.push(Ins::Ret(RET_ALLOW));
    p.push(Ins::Mark(Label::Eperm));
    p.push(Ins::Ret(RET_ERRNO | libc::EPERM as u32));
    p.push(Ins::Mark(Label::Enosys));
    p.push(Ins::Ret(RET_ERRNO | libc::ENOSYS as u32));
    assemble(&p)
}

fn encode(out: &mut Vec<u8>, code: u16, jt: u8, jf: u8, k: u32) {
    out.extend_from_slice(&code.to_ne_bytes());
    out.push(jt);
    out.push(jf);
    out.extend_from_slice(&k.to_ne_bytes());
}

/// Resolves labels (all forward) and prepends the architecture check.
fn assemble(p: &[Ins]) -> Vec<u8> {
    // Instruction index of each label (marks take no slot).
    let mut index = Vec::new();
    let mut n = 0usize;
    for ins in p {
        match ins {
            Ins::Mark(l) => index.push((*l as u8, n)),
            _ => n += 1,
        }
    }
    let target = |l: Label| {
        index
            .iter()
            .find(|(k, _)| *k == l as u8)
            .map(|&(_, i)| i)
            .expect("every label used is marked")
    };
    let mut out = Vec::with_capacity((n + 3) * 8);
    // ld arch; jeq AUDIT_ARCH ? skip 1 : 0; ret KILL.
    encode(&mut out, BPF_LD_W_ABS, 0, 0, OFF_ARCH);
    encode(&mut out, BPF_JEQ_K, 1, 0, AUDIT_ARCH);
    encode(&mut out, BPF_RET_K, 0, 0, RET_KILL_PROCESS);
    let mut i = 0usize;
    for ins in p {
        match *ins {
            Ins::Mark(_) => continue,
            Ins::Load(off) => encode(&mut out, BPF_LD_W_ABS, 0, 0, off),
            Ins::Ret(k) => encode(&mut out, BPF_RET_K, 0, 0, k),
            Ins::Jump(code, k, l) => {
                let off = target(l) - i - 1;
                let off = u8::try_from(off).expect("filter short enough for 8-bit jumps");
                encode(&mut out, code, off, 0, k);
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BPF interpreter for the subset used, run on synthetic `seccomp_data`.
    fn run(prog: &[u8], arch: u32, nr: u32, arg0: u32) -> u32 {
        let ins: Vec<(u16, u8, u8, u32)> = prog
            .chunks(8)
            .map(|c| {
                (
                    u16::from_ne_bytes([c[0], c[1]]),
                    c[2],
                    c[3],
                    u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
                )
            })
            .collect();
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = ins[pc];
            pc += 1;
            match code {
                BPF_LD_W_ABS => {
                    acc = match k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0_LO => arg0,
                        _ => panic!("load {k}"),
                    }
                }
                BPF_RET_K => return k,
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let hit = match code {
                        BPF_JEQ_K => acc == k,
                        BPF_JGE_K => acc >= k,
                        _ => acc & k != 0,
                    };
                    pc += if hit { jt } else { jf } as usize;
                }
                _ => panic!("opcode {code:#x}"),
            }
        }
    }

    #[test]
    fn denies_the_list_and_allows_the_rest() {
        let p = filter(true);
        let eperm = RET_ERRNO | libc::EPERM as u32;
        for &nr in DENIED.iter().chain(DENIED_WITHOUT_CGROUP) {
            assert_eq!(run(&p, AUDIT_ARCH, nr as u32, 0), eperm, "syscall {nr}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_mmap,
            libc::SYS_exit_group,
        ] {
            assert_eq!(run(&p, AUDIT_ARCH, nr as u32, 0), RET_ALLOW);
        }
        let clone = libc::SYS_clone as u32;
        assert_eq!(run(&p, AUDIT_ARCH, clone, 0x11 /* SIGCHLD */), RET_ALLOW);
        assert_eq!(run(&p, AUDIT_ARCH, clone, 0x1000_0011), eperm);
        assert_eq!(
            run(&p, AUDIT_ARCH, libc::SYS_clone3 as u32, 0),
            RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            run(&p, AUDIT_ARCH ^ 1, libc::SYS_read as u32, 0),
            RET_KILL_PROCESS
        );
        if let Some(bit) = X32_BIT {
            assert_eq!(run(&p, AUDIT_ARCH, bit | libc::SYS_read as u32, 0), eperm);
        }
        let lenient = filter(false);
        assert_eq!(
            run(&lenient, AUDIT_ARCH, libc::SYS_memfd_create as u32, 0),
            RET_ALLOW
        );
    }
}
