"""The sandbox's child side: run by ``python -I -S -B -c`` (see :mod:`rlkit.sandbox`) before the program.

It reads the program, sets the resource limits, removes what the audit hook cannot see, installs
the hook and runs the program. Everything the hook uses is bound in closures at install time,
because the program can rebind module globals and builtins. Only the standard library is used:
the child runs without site-packages.
"""

import os, sys

def _limits(cpu_s, wall_s, memory, file_bytes, open_files, no_processes):
    import resource as r, _signal
    def lower(which, soft, hard=None):
        ceiling = r.getrlimit(which)[1]
        cap = (lambda v: v) if ceiling == r.RLIM_INFINITY else (lambda v: min(v, ceiling))
        r.setrlimit(which, (cap(soft), cap(soft if hard is None else hard)))
    lower(r.RLIMIT_CORE, 0)
    lower(r.RLIMIT_AS, memory)
    lower(r.RLIMIT_FSIZE, file_bytes)
    lower(r.RLIMIT_NOFILE, open_files)
    lower(r.RLIMIT_CPU, cpu_s, cpu_s + 1)  # SIGXCPU at cpu_s, SIGKILL a second later if it is caught
    if no_processes:
        r.setrlimit(r.RLIMIT_NPROC, (0, 0))
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # an oversized write raises OSError instead
    _signal.alarm(wall_s)  # the parent kills it before this; the alarm covers a parent that died

def _no_fork_exec(*args, _audit=sys.audit, **kwargs):
    _audit("subprocess.Popen", "fork_exec", None, None, None)  # the guard refuses it
    raise PermissionError("process creation is not allowed in the sandbox")

def _strip_unaudited():
    # _posixsubprocess stays importable (asyncio and subprocess import it) but its fork_exec, which
    # raises no audit event, is replaced; loading the module afresh raises "import", which is refused.
    import _posixsubprocess, _signal, posix
    _posixsubprocess.fork_exec = _no_fork_exec
    for module, names in ((posix, ("mknod", "mkfifo", "setpriority", "sched_setaffinity", "sched_setparam",
                                    "sched_setscheduler", "pidfd_open")), (_signal, ("pidfd_send_signal",))):
        for name in names:
            for holder in (module, os):
                if name in holder.__dict__:
                    delattr(holder, name)

_DENIED = {"os.fork": "process creation", "os.forkpty": "process creation", "os.exec": "process creation",
           "os.posix_spawn": "process creation", "os.spawn": "process creation", "os.system": "process creation",
           "subprocess.Popen": "process creation", "pty.spawn": "process creation",
           "os.killpg": "signal to another process", "os.link": "links", "os.symlink": "links",
           "resource.setrlimit": "changing limits", "resource.prlimit": "changing limits",
           "sys.settrace": "introspection", "sys.setprofile": "introspection", "gc.get_objects": "introspection",
           "gc.get_referrers": "introspection", "gc.get_referents": "introspection",
           "sys._current_frames": "introspection", "setopencode": "introspection",
           "sqlite3.enable_load_extension": "native code", "sqlite3.load_extension": "native code"}
_PREFIXES = (("socket.", "network"), ("ctypes.", "native code"), ("syslog.", "network"))
_MODULES = {"_ctypes": "native code", "_posixsubprocess": "process creation", "_dbm": "file access (dbm)",
            "_gdbm": "file access (dbm)"}
# event -> ((index of a path argument, index of its dir_fd argument or None), ...)
_PATH_EVENTS = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
                "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.rename": ((0, 2), (1, 3)),
                "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
                "shutil.rmtree": ((0, 1),), "sqlite3.connect": ((0, None),)}

def _resolvers(deny):
    """absolute(path, base) and directory_of(dir_fd), using nothing the program can rebind."""
    getcwd, readlink, str_, bytes_, type_, list_ = os.getcwd, os.readlink, str, bytes, type, list

    def absolute(path, base=None):
        """Lexically normalised absolute path: no symlink can exist in the workdir (links are denied)."""
        if type_(path) is bytes_:
            path = bytes_.decode(path, "utf-8", "surrogateescape")
        if type_(path) is not str_:
            return None
        if not str_.startswith(path, "/"):
            path = (getcwd() if base is None else base) + "/" + path
        parts = []
        for part in str_.split(path, "/"):
            if part == ".." and parts:
                list_.pop(parts)
            elif part not in ("", ".", ".."):
                list_.append(parts, part)
        return "/" + str_.join("/", parts)

    def directory_of(dir_fd):
        """The directory an fd refers to, as the kernel names it (shutil.rmtree works through dir_fds)."""
        if dir_fd is None or dir_fd == -1:
            return None
        try:
            return readlink("/proc/self/fd/" + str_(dir_fd))
        except OSError:
            deny("write outside work dir", "unresolvable dir_fd")

    return absolute, directory_of

def _path_checks(workdir, read_roots, read_files, deny):
    """check_open(args) and check_paths(event, args, spec); types are checked before any other use,
    so no object of the program's (a str subclass, an __fspath__) ever runs inside the hook."""
    str_, bytes_, int_, type_ = str, bytes, int, type
    absolute, directory_of = _resolvers(deny)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    inside = (workdir + "/",)
    readable = tuple(r + "/" for r in read_roots) + inside
    read_files = frozenset(read_files) | frozenset(read_roots) | {workdir}

    def check_open(args):
        path, mode, flags = args[0], args[1], args[2]
        if type_(path) is int_:
            return  # wrapping an fd that is already open: its access mode was checked when it was opened
        writing = type_(flags) is int_ and flags & write_flags
        if writing and mode is None and not (type_(path) in (str_, bytes_) and path[:1] in ("/", b"/")):
            # os.open may carry a dir_fd that its event does not show: only absolute paths are checkable
            deny("write outside work dir", "os.open for writing with a relative path")
        where = absolute(path)
        if where is None:
            deny("write outside work dir", "open of something that is not a path")
        # the work dir itself: a directory opens for writing only as O_TMPFILE, an unnamed file in it
        # (tempfile.TemporaryFile; its io.open event shows mode "w+b", not the opener's flags)
        if writing and not (str_.startswith(where, inside) or where == workdir):
            deny("write outside work dir", "open " + where)
        if not writing and not (where in read_files or str_.startswith(where, readable)):
            deny("read outside allowed dirs", "open " + where)

    def check_paths(event, args, spec):
        for path_index, fd_index in spec:
            path = args[path_index]
            if (type_(path) is int_ and event == "os.truncate") or (
                    event == "sqlite3.connect" and type_(path) is str_ and path == ":memory:"):
                continue  # a file already open for writing; sqlite's in-memory database
            where = absolute(path, None if fd_index is None else directory_of(args[fd_index]))
            if where is None or not str_.startswith(where, inside):
                deny("write outside work dir", event + " " + (where or "?"))

    return check_open, check_paths

def _guard(report_fd, workdir, read_roots, read_files):
    write, exit_, getpid, str_, int_, type_ = os.write, os._exit, os.getpid, str, int, type
    denied, prefixes, modules, path_events = dict(_DENIED), _PREFIXES, dict(_MODULES), dict(_PATH_EVENTS)

    def deny(what, detail):
        write(report_fd, ("blocked: " + what + " (" + detail + ")\n").encode())
        exit_(113)

    check_open, check_paths = _path_checks(workdir, read_roots, read_files, deny)

    def hook(event, args):
        if event == "open":
            return check_open(args)
        if event in denied:
            deny(denied[event], event)
        if event == "socket.__new__" and type_(args[1]) is int_ and args[1] == 1:
            return  # an AF_UNIX socket (asyncio's socketpair); connect/bind/sendto stay refused
        for prefix, what in prefixes:
            if str_.startswith(event, prefix):
                deny(what, event)
        if event in path_events:
            return check_paths(event, args, path_events[event])
        if event == "import" and args[0] in modules:
            deny(modules[args[0]], "import " + args[0])
        if event == "os.kill" and not (type_(args[0]) is int_ and args[0] == getpid()):
            deny("signal to another process", "os.kill")

    sys.addaudithook(hook)

def _relay():
    """PID-namespace init: run the program as its child, so signals behave normally, and pass on its status."""
    pid = os.fork()
    if pid == 0:
        return
    report_fd = int(sys.argv[1])
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        os.write(report_fd, b"status signal %d\n" % os.WTERMSIG(status))
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))

def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)

def _install_seccomp(fd):
    """Install the parent's system-call filter (classic BPF read from fd) on this process."""
    import ctypes
    program = _read_all(fd)
    class _Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _Program(len(program) // 8, ctypes.cast(code, ctypes.c_char_p))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    for name in [n for n in sys.modules if n == "ctypes" or n.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]  # the program imports them afresh, which the audit hook sees

def _main():
    (report_fd, workdir, program_fd, cpu_s, wall_s, memory, file_bytes, open_files, no_processes, relay,
     seccomp_fd, audit_hook) = sys.argv[1:13]
    if relay == "1":
        _relay()
    source = _read_all(int(program_fd)).decode("utf-8", "surrogateescape")
    _limits(int(cpu_s), int(wall_s), int(memory), int(file_bytes), int(open_files), no_processes == "1")
    _strip_unaudited()
    if seccomp_fd != "-1":
        _install_seccomp(int(seccomp_fd))
    roots = [p for p in sys.path if p.startswith("/")] + ["/usr/share/zoneinfo"]
    files = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/etc/localtime"]
    sys.argv = ["solution.py"]
    try:
        code = compile(source, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        os.write(int(report_fd), f"syntax error: {getattr(exc, 'msg', exc)}{where}\n".encode())
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    if audit_hook == "1":
        _guard(int(report_fd), workdir, roots, files)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except MemoryError:
        os.write(int(report_fd), b"memory limit\n")
        raise


if __name__ == "__main__":
    _main()
