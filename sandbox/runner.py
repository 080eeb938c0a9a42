"""The taskray sandbox worker: PID 1 of a warm container, running one untrusted program per job.

Protocol (host <-> runner, over the container's attached stdin/stdout): frames of a 4-byte big-endian
length and UTF-8 JSON. The runner says {"ready": ...} once, then answers each job frame with one result
frame. It exits when stdin closes, so a container whose owner died stops on its own.

A job is {"id", "sources": [str, ...], "nonce": hex, "timeout": s, "output_cap": bytes}. Each job runs in
a fresh child forked from this (already warm) interpreter, so per-job cost is milliseconds. The child
compiles every source separately (a string opened in the candidate cannot swallow the tests), runs them
in one namespace and, only if the last statement returned normally, writes the job's nonce to fd 3.

Threat model -- what the candidate can and cannot do:
- It runs as uid 10001 with no capabilities, no network, a read-only root, capped memory/pids/CPU and a
  small tmpfs; the host kills the container from outside if this runner ever stops answering.
- Verdict forgery: a pass is only the exact per-job nonce arriving on fd 3, checked by the *host*. Exit
  codes, stdout ("passed"), sys.exit(0)/os._exit(0)/SystemExit (caught by the harness's own trap, or
  the process ends before writing), closing stdout, signals, or killing the parent never produce it.
- The candidate cannot reach this runner: fds 0/1 (the host channel) are replaced in the child, and
  the runner is non-dumpable, so /proc/1/fd and /proc/1/mem are closed to it; as a namespace's init it
  ignores every signal sent from inside the container, so it cannot be killed to fake an infra error.
- Not defended: code that deliberately digs the nonce out of its own interpreter (gc, frames) can forge
  a pass. That needs knowledge of this harness and still gains nothing outside the container.
- Leftovers: after each job the whole process group is SIGKILLed, then every other process (kill -1);
  processes that escaped the group, files outside the job folder, a timeout or an OOM are reported as
  "tainted" and the host replaces the container.
"""

import ctypes
import gc
import json
import os
import resource
import selectors
import shutil
import signal
import struct
import sys
import time
import traceback

WORK = "/work"
JOB_DIR = "/work/job"
SCRATCH = ("/work", "/tmp", "/dev/shm")  # the only writable places; must be empty between jobs
VERDICT_FD = 3
PR_SET_DUMPABLE = 4

# Modules HumanEval-style programs import; loaded once here so every forked child gets them for free.
WARM_MODULES = (
    "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "typing", "string",
    "random", "statistics", "hashlib", "fractions", "decimal", "operator", "copy", "datetime", "traceback",
)


# -- framing -------------------------------------------------------------------------------------------
def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd=0):
    head = read_exact(fd, 4)
    if head is None:
        return None
    body = read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def write_frame(obj, fd=1):
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


# -- the child: trusted harness around untrusted sources -------------------------------------------------
def child(job, out_w, err_w, verdict_w):
    """Never returns. Everything before exec() is the harness; nothing after it trusts the namespace."""
    os.setsid()  # own session and process group: killed whole at the end
    try:  # make the child, not the runner, the OOM killer's first choice (raising is unprivileged)
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    devnull = os.open("/dev/null", os.O_RDONLY)
    # Replacing fds 0/1/2 cuts the child off the host channel; everything else is closed.
    for src, dst in ((devnull, 0), (out_w, 1), (err_w, 2), (verdict_w, VERDICT_FD)):
        os.dup2(src, dst)
    # Bounded by the fd limit: without close_range (seccomp) closerange is one syscall per number.
    os.closerange(VERDICT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.chdir(JOB_DIR)
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=JOB_DIR, TMPDIR=JOB_DIR, LANG="C.UTF-8")
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    nonce, write, _exit = job["nonce"].encode(), os.write, os._exit  # bound before candidate code runs
    try:
        codes = [compile(src, f"<source {i}>", "exec") for i, src in enumerate(job["sources"])]
    except Exception:
        traceback.print_exc()
        write(VERDICT_FD, b"compile-error")
        _exit(1)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    del job
    try:
        for code in codes:
            exec(code, namespace)
    except BaseException:  # SystemExit and KeyboardInterrupt too: leaving early is failing
        try:
            traceback.print_exc()
        except BaseException:
            pass
        _exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    write(VERDICT_FD, nonce)
    _exit(0)


# -- the runner side --------------------------------------------------------------------------------------
class Tail:
    """Keeps the last `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap):
        self.cap, self.buf, self.total = cap, bytearray(), 0

    def add(self, chunk):
        self.total += len(chunk)
        self.buf += chunk
        if len(self.buf) > self.cap:
            del self.buf[: len(self.buf) - self.cap]

    def text(self):
        return self.buf.decode("utf-8", "replace")


def oom_kills():
    """The container's OOM-kill counter (cgroup v1 or v2), or None when not readable."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return None


def processes():
    """{pid: pgid} of every live (non-zombie) process here except this runner."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == str(os.getpid()):
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            found[int(name)] = int(fields[2])
    return found


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_all(pgid):
    """SIGKILL the job's group, then anything else. Returns the pids that had escaped the group."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 1.0
    while True:  # SIGKILL is asynchronous: give the group a moment to die before calling anyone a stray
        reap()
        left = processes()
        if not any(g == pgid for g in left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    strays = sorted(p for p, g in left.items() if g != pgid)
    for _ in range(100):  # a fork bomb may still be forking: repeat until the namespace is empty
        if not processes():
            break
        os.kill(-1, signal.SIGKILL)  # every process we may signal, except ourselves (init)
        time.sleep(0.005)
        reap()
    return strays


def leftover_files():
    left = []
    for d in SCRATCH:
        try:
            left += [os.path.join(d, n) for n in os.listdir(d)]
        except OSError:
            pass
    return left


def remove_job_dir():
    def make_writable(func, path, _exc):  # the candidate may have chmod'ed things away
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(JOB_DIR, onerror=make_writable)


def drain(fd, tail):
    """Read what is left in a pipe without waiting on writers that escaped (they are dead by now)."""
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 1 << 16):
            tail.add(chunk)
    except (BlockingIOError, OSError):
        pass


def run_job(job):
    cap = int(job.get("output_cap", 16384))
    timeout = float(job["timeout"])
    os.mkdir(JOB_DIR, 0o700)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ver_r, ver_w = os.pipe()
    oom_before = oom_kills()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            child(job, out_w, err_w, ver_w)
        finally:
            os._exit(70)
    for fd in (out_w, err_w, ver_w):
        os.close(fd)
    out, err, verdict = Tail(cap), Tail(cap), Tail(256)
    sel = selectors.DefaultSelector()
    for fd, tail in ((out_r, out), (err_r, err), (ver_r, verdict)):
        sel.register(fd, selectors.EVENT_READ, tail)
    try:  # a pidfd becomes readable when the child exits; without one we poll
        pidfd = os.pidfd_open(pid)
        sel.register(pidfd, selectors.EVENT_READ, None)
    except (AttributeError, OSError):
        pidfd = None
    timed_out, status, usage = False, None, None
    while status is None:
        left = start + timeout - time.monotonic()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)  # the group may not exist yet if the child never ran setsid
            _, status, usage = os.wait4(pid, 0)
            break
        for key, _ in sel.select(min(left, 0.01) if pidfd is None else left):
            if key.data is None:
                continue
            chunk = os.read(key.fd, 1 << 16)
            if chunk:
                key.data.add(chunk)
            else:
                sel.unregister(key.fd)
        done, st, ru = os.wait4(pid, os.WNOHANG)
        if done:
            status, usage = st, ru
    wall = time.monotonic() - start
    strays = kill_all(pid)
    sel.close()
    for fd, tail in ((out_r, out), (err_r, err), (ver_r, verdict)):
        drain(fd, tail)
        os.close(fd)
    if pidfd is not None:
        os.close(pidfd)
    oom_after = oom_kills()
    remove_job_dir()
    tainted = []
    if strays:
        tainted.append(f"processes outlived the job: {strays[:10]}")
    files = leftover_files()
    if files:
        tainted.append(f"files left outside the job folder: {files[:10]}")
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    oom = oom_before is not None and oom_after is not None and oom_after > oom_before
    if oom_before is None and killed_by == signal.SIGKILL and not timed_out:
        oom = True  # no counter to read: an unexplained SIGKILL is the OOM killer's signature
    return {
        "id": job.get("id"),
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": killed_by,
        "timed_out": timed_out,
        "oom": oom,
        "verdict": verdict.text(),
        "stdout": out.text(), "stdout_truncated": out.total > cap, "stdout_bytes": out.total,
        "stderr": err.text(), "stderr_truncated": err.total > cap, "stderr_bytes": err.total,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "tainted": tainted,
    }


def main():
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # closes /proc/1/{fd,mem,environ} to the jobs
    for name in WARM_MODULES:
        __import__(name)
    # Move everything loaded so far out of the collector's sight: a collection in a forked child would
    # otherwise touch every object, copy every page (copy-on-write) and cost ~5 ms per job.
    gc.collect()
    gc.freeze()
    write_frame({"ready": True, "python": sys.version.split()[0], "pid": os.getpid(), "oom": oom_kills()})
    while (job := read_frame()) is not None:
        try:
            result = run_job(job)
        except Exception:
            result = {"id": job.get("id"), "runner_error": traceback.format_exc()[-4000:]}
        write_frame(result)


if __name__ == "__main__":
    main()
