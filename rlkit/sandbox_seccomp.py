"""The sandbox's system-call filter: an allow-list of what CPython programs need, compiled once.

The filter is built with libseccomp (through ``pyseccomp``) in the trusted parent and exported as
classic BPF; the sandboxed child installs it on itself (``prctl(PR_SET_SECCOMP)``,
``rlkit/sandbox_child.py``) just before the program runs, after its own set-up has forked the PID-namespace relay. From then on the
kernel refuses, with ``EPERM``, every system call not listed here, whatever the program does in
Python, in crafted bytecode or in native code:

* no new processes (``clone`` only with ``CLONE_THREAD``: threads; ``clone3``, whose flags a
  filter cannot read, answers ``ENOSYS`` so the C library falls back to ``clone``), no ``exec``;
* sockets of the ``AF_UNIX`` family only (asyncio's self-pipe), and no ``connect``/``bind``;
* no ``ptrace``, ``mount``, ``bpf``, ``kexec_*``, modules, namespaces, keyrings, ``perf_event_open``,
  ``io_uring``, ``userfaultfd``, ``open_by_handle_at``, ``process_vm_*``, ``setns``/``unshare``;
* signals (``kill``, ``tgkill``) reach only the sandbox's own PID namespace: no process outside
  it is visible; limits can be read, not changed; ``ioctl`` only for the terminal and
  fd queries the standard library makes; ``prctl`` only to name a thread.

Calls of another architecture's ABI (32-bit ``int 0x80`` on x86-64) kill the process: libseccomp
adds that check to every filter.
"""

from __future__ import annotations

import errno
import functools
import tempfile

# what CPython and its standard library use; anything else is refused
ALLOWED = (
    # files and descriptors (what is visible is the mount namespace's business)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "open", "openat", "openat2", "creat", "close", "close_range", "lseek", "dup", "dup2", "dup3", "fcntl", "flock",
    "fsync", "fdatasync", "ftruncate", "truncate", "fallocate", "fadvise64", "readahead", "sendfile",
    "copy_file_range", "splice", "tee",
    "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
    "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
    "rename", "renameat", "renameat2", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "umask",
    "utime", "utimes", "utimensat", "futimesat", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr", "pipe", "pipe2", "select", "pselect6", "poll", "ppoll", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "inotify_init", "inotify_init1",
    "inotify_add_watch", "inotify_rm_watch",
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore", "membarrier",
    "get_mempolicy",
    # threads, signals and time
    "futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq", "arch_prctl",
    "sched_yield", "sched_getaffinity", "sched_getparam", "sched_getscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "sched_rr_get_interval", "getcpu", "rt_sigaction", "rt_sigprocmask",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigpending", "rt_sigtimedwait", "sigaltstack", "kill", "tgkill",
    "restart_syscall", "pause", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres",
    "gettimeofday", "time", "alarm", "setitimer", "getitimer", "timer_create", "timer_settime",
    "timer_gettime", "timer_getoverrun", "timer_delete", "exit", "exit_group", "wait4", "waitid",
    # identity and facts about the process
    "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid",
    "getresgid", "getpgrp", "getpgid", "getsid", "getpriority", "getrlimit", "getrusage", "times",
    "sysinfo", "uname", "capget", "getrandom",
    # AF_UNIX sockets that already exist (socket() itself is checked below)
    "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockname",
    "getpeername", "getsockopt", "setsockopt",
)

CLONE_THREAD = 0x00010000
AF_UNIX = 1
PR_SET_NAME, PR_GET_NAME = 15, 16
# ioctl requests the standard library makes: isatty, the terminal size, bytes waiting, (non)blocking, close-on-exec
IOCTLS = (0x5401, 0x5413, 0x541B, 0x5421, 0x5451, 0x5450)


def available() -> bool:
    """Whether libseccomp can be loaded here (``pyseccomp`` installed and ``libseccomp.so.2`` present)."""
    try:
        import pyseccomp  # noqa: F401  (loads libseccomp.so.2)
    except (ImportError, OSError):
        return False
    return True


@functools.lru_cache(maxsize=None)
def filter_program() -> bytes:
    """The filter as classic BPF (``struct sock_filter`` records, 8 bytes each)."""
    import pyseccomp as sc

    refused = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(refused)
    for name in ALLOWED:
        try:
            rules.add_rule(sc.ALLOW, name)
        except (OSError, RuntimeError, ValueError):
            pass  # not a system call of this architecture (e.g. "open" on arm64)
    rules.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    rules.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, AF_UNIX))
    rules.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, AF_UNIX))
    for request in IOCTLS:
        rules.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.EQ, request))
    for option in (PR_SET_NAME, PR_GET_NAME):
        rules.add_rule(sc.ALLOW, "prctl", sc.Arg(0, sc.EQ, option))
    rules.add_rule(sc.ALLOW, "prlimit64", sc.Arg(2, sc.EQ, 0))  # reading a limit (no new value given)
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()
