"""The Docker sandbox for real: container settings, statuses, the warm pool, leaks and infra failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import psutil
import pytest

from taskray.sandbox.client import ContainerLimits, InfraError, Sandbox, run_once
from taskray.sandbox.daemon import LABEL, SESSION_LABEL, SandboxUnavailable, docker_client
from taskray.sandbox.pool import SandboxPool


@pytest.fixture(scope="module")
def client():
    return docker_client()


@pytest.fixture(scope="module")
def pool(client):
    with SandboxPool(size=2, client=client) as p:
        yield p


def session_containers(client, session: str) -> list[str]:
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": f"{SESSION_LABEL}={session}"})]


def host_processes_with(marker: str) -> list:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


def test_container_has_every_isolation_setting(client):
    box = Sandbox(client, ContainerLimits(memory_mb=256, pids=32, cpus=0.5, tmpfs_mb=8))
    try:
        hc = client.api.inspect_container(box.container.id)["HostConfig"]
        cfg = client.api.inspect_container(box.container.id)["Config"]
        assert hc["NetworkMode"] == "none"
        assert hc["Memory"] == hc["MemorySwap"] == 256 * 2**20
        assert hc["PidsLimit"] == 32 and hc["NanoCpus"] == 5 * 10**8
        assert hc["ReadonlyRootfs"] is True and hc["Privileged"] is False
        assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
        assert not hc.get("Binds") and not client.api.inspect_container(box.container.id)["Mounts"]
        assert "size=8m" in hc["Tmpfs"]["/work"]
        assert cfg["User"] == "10001:10001" and cfg["Labels"][LABEL] == "1"
        # and from the inside, as the program sees it
        r = box.run(
            textwrap.dedent("""
            import os
            status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
            assert os.getuid() == 10001 and os.getgid() == 10001, os.getuid()
            assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1", status
            print(os.getcwd())
        """)
        )
        assert r.status == "passed", r.stderr
        assert r.stdout.strip() == "/work/job"
    finally:
        box.destroy()


def test_statuses_and_output(pool):
    ok = pool.run("print('hello'); import sys; print('warn', file=sys.stderr)")
    assert (ok.status, ok.exit_code, ok.stdout, ok.stderr) == ("passed", 0, "hello\n", "warn\n")
    assert ok.wall_time > 0 and ok.cpu_time >= 0
    bad = pool.run("assert 1 + 1 == 3, 'arithmetic'")
    assert bad.status == "failed" and "AssertionError: arithmetic" in bad.stderr
    syntax = pool.run("def f(:\n    pass")
    assert syntax.status == "error" and "SyntaxError" in syntax.stderr
    # sources compile separately: a string opened in the candidate cannot swallow the tests
    swallow = pool.run(["x = '''", "assert False\n'''"])
    assert swallow.status == "error"


# -- the evil-program suite: each case checks the status and that the host is unharmed ------------------
def assert_host_unharmed(pool, client, marker: str | None = None) -> None:
    assert pool.run("print(1)").status == "passed"  # the pool still works
    deadline = time.monotonic() + 15  # retired containers go, replacements come, in the background

    def settled() -> bool:
        live = set(pool.containers())
        return len(live) == pool.size and set(session_containers(client, pool.session)) == live

    while not settled() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert settled()  # exactly the pool's containers exist: nothing piled up
    if marker:
        while host_processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not host_processes_with(marker)


@pytest.mark.parametrize(
    "name, program",
    [
        ("infinite loop", "while True:\n    pass"),
        # a C-level loop never reaches a bytecode boundary, so SIGALRM-based timeouts miss it
        ("C-level hang", "import itertools\nany(itertools.repeat(False))"),
        ("sleeps past the timeout", "import time\ntime.sleep(60)\nassert False"),
    ],
)
def test_hangs_time_out(pool, client, name, program):
    start = time.monotonic()
    r = pool.run(program, timeout=1.5)
    assert r.status == "timeout", (name, r)
    assert time.monotonic() - start < 1.5 + 3.0
    assert_host_unharmed(pool, client)


def test_fork_bomb_is_contained(pool, client):
    runners = len(host_processes_with("/opt/taskray/runner.py"))
    r = pool.run(
        "import os, time\nwhile True:\n    try:\n        os.fork()\n"
        "    except OSError:\n        time.sleep(0.01)",
        timeout=2,
    )
    assert r.status == "timeout"
    assert_host_unharmed(pool, client)
    # every copy of the bomb was a copy of a runner; only as many runners as before remain on the host
    deadline = time.monotonic() + 10
    while len(host_processes_with("/opt/taskray/runner.py")) > runners and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(host_processes_with("/opt/taskray/runner.py")) <= runners


def test_memory_bomb_is_oom(pool, client):
    r = pool.run("x = b'x' * (2 * 1024**3)\nprint(len(x))", timeout=10)
    assert r.status == "oom", r
    assert_host_unharmed(pool, client)
    # the limit is the container's 512 MiB: a bit under it is fine, a bit over it is not
    assert pool.run("x = b'x' * (350 * 1024**2)", timeout=10).status == "passed"
    assert pool.run("x = b'x' * (600 * 1024**2)", timeout=10).status == "oom"
    assert_host_unharmed(pool, client)


def test_gigabyte_of_stdout_is_capped(pool, client):
    rss = psutil.Process().memory_info().rss
    r = pool.run(
        "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
        "assert False, 'wrong answer after the flood'",
        timeout=30,
    )
    assert r.status == "failed", r.detail
    assert r.stdout_truncated and len(r.stdout) <= pool.limits.output_cap
    assert psutil.Process().memory_info().rss < rss + 100 * 2**20
    assert_host_unharmed(pool, client)


def test_no_network(pool, client):
    r = pool.run(
        textwrap.dedent("""
        import socket
        try:
            socket.getaddrinfo("deb.debian.org", 80)
            print("dns works")
        except OSError as e:
            print("dns:", e)
        socket.create_connection(("1.1.1.1", 53), timeout=3)  # succeeds only with a network
    """)
    )
    assert r.status == "failed" and "dns works" not in r.stdout, r
    assert_host_unharmed(pool, client)


def test_cannot_write_outside_the_work_dir(pool, client, tmp_path):
    target = tmp_path / "escaped"
    r = pool.run(
        textwrap.dedent(f"""
        import os
        for path in ("{target}", "/etc/evil", "/opt/taskray/runner.py", "/usr/lib/evil"):
            try:
                open(path, "w").write("pwned")
                print("wrote", path)
            except OSError as e:
                print("refused", path, e.errno)
        assert False
    """)
    )
    assert r.status == "failed" and "wrote" not in r.stdout, r.stdout
    assert not target.exists()
    assert_host_unharmed(pool, client)


def test_files_left_in_tmp_retire_the_container(pool, client):
    before = set(pool.containers())
    r = pool.run("open('/tmp/left-behind', 'w').write('x')")
    assert r.status == "passed" and "files left" in r.detail
    time.sleep(1.5)  # the replacement starts in the background
    assert set(pool.containers()) != before
    assert_host_unharmed(pool, client)


def test_cannot_read_host_files(pool, client, tmp_path):
    secret = tmp_path / f"secret-{uuid.uuid4().hex}"
    secret.write_text("host secret")
    r = pool.run(f"print(open('{secret}').read())\nprint(open('/etc/shadow').read())")
    assert r.status == "failed" and "host secret" not in r.stdout
    assert "No such file" in r.stderr
    assert_host_unharmed(pool, client)


def test_background_process_is_killed_and_container_replaced(pool, client):
    marker = f"outlive-{uuid.uuid4().hex}"
    before = set(pool.containers())
    r = pool.run(
        textwrap.dedent(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", "{marker}"],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    """)
    )
    assert r.status == "passed" and "processes outlived the job" in r.detail, r
    time.sleep(1.5)
    assert set(pool.containers()) != before
    assert_host_unharmed(pool, client, marker)


# A wrong solution wrapped in every trick that fools exit-code-based harnesses. The tests after it fail.
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = "assert add(2, 2) == 4, 'wrong answer'"


@pytest.mark.parametrize(
    "name, trick",
    [
        ("sys.exit(0)", "import sys\nsys.exit(0)"),
        ("os._exit(0)", "import os\nos._exit(0)"),
        ("raise SystemExit", "raise SystemExit"),
        ("closes stdout", "import os, sys\nsys.stdout.close()\nos.close(1)\nos.close(2)"),
        ("prints a fake passed", "print('passed')\nprint('{\"status\": \"passed\"}')"),
        (
            "forges the verdict pipe",
            "import os\nfor fd in range(3, 10):\n    try:\n"
            "        os.write(fd, b'0' * 64)\n    except OSError:\n        pass",
        ),
        ("kills its parent", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"),
        (
            "kills the worker",
            "import os, signal\nfor sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):\n"
            "    os.kill(1, sig)\nos.kill(-1, signal.SIGKILL)",
        ),
        ("atexit success", "import atexit, os\natexit.register(lambda: os._exit(0))"),
    ],
)
def test_forged_success_never_passes(pool, client, name, trick):
    r = pool.run([WRONG + trick, TESTS], timeout=5)
    assert r.status == "failed", (name, r)
    assert_host_unharmed(pool, client)


def test_right_answer_passes_even_with_noise(pool):
    r = pool.run(["def add(a, b):\n    return a + b\nprint('failed')\nimport os\nos.close(1)", TESTS])
    assert r.status == "passed", r


def test_200_jobs_leave_nothing_behind(client):
    with SandboxPool(size=2, client=client) as p:
        ids = set(p.containers())
        program = textwrap.dedent("""
            import os, subprocess, sys
            open("scratch.txt", "w").write("x" * 1000)   # inside the job folder: cleaned up, not a taint
            os.makedirs("deep/er", exist_ok=True)
            subprocess.run([sys.executable, "-c", "print(2)"], check=True)   # children that finish are fine
            print(sorted(os.listdir(".")))
        """)
        results = list(p.map((program, 10.0) for _ in range(200)))
        assert [r.status for r in results] == ["passed"] * 200
        assert all(r.detail == "" for r in results)  # no stray process or file after any job
        assert p.replaced == 0 and set(p.containers()) == ids
        probe = p.run(
            textwrap.dedent("""
            import os
            assert os.listdir("/tmp") == [] and os.listdir("/dev/shm") == [], "leftover files"
            assert os.listdir("/work") == ["job"] and os.listdir(".") == [], os.listdir("/work")
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            assert sorted(pids) == [1, os.getpid()], pids
        """)
        )
        assert probe.status == "passed", probe.stderr
        session = p.session
    assert session_containers(client, session) == []


def test_a_job_that_spoils_its_container_ends_the_batch_and_the_rest_run_elsewhere(client):
    """Jobs go to a container in one frame; after a job that leaves files behind or times out, the runner
    runs none of the rest there: each goes to a fresh container, no attempt spent."""
    with SandboxPool(size=1, client=client) as p:
        jobs = [
            ("print(1)", 10.0),
            ("open('/tmp/spoiled', 'w').write('x')", 10.0),
            ("import time\ntime.sleep(30)", 1.0),
            ("import os\nprint(os.listdir('/tmp'))", 10.0),
        ]
        results = p.run_many(jobs)
        assert [r.status for r in results] == ["passed", "passed", "timeout", "passed"], results
        assert "files left" in results[1].detail and results[3].stdout == "[]\n"
        assert p.replaced == 2 and [r.attempts for r in results] == [1, 1, 1, 1]


def test_container_killed_from_outside_is_infra_error_and_retried(client):
    with SandboxPool(size=1, client=client) as p:
        victim = p.containers()[0]
        threading.Timer(1.0, lambda: client.containers.get(victim).kill()).start()
        r = p.run("import time\ntime.sleep(3)", timeout=10)
        assert r.status == "passed" and r.attempts == 2, r
        assert victim not in p.containers()
    with SandboxPool(size=1, client=client, retries=0) as p:
        victim = p.containers()[0]
        threading.Timer(1.0, lambda: client.containers.get(victim).kill()).start()
        r = p.run("import time\ntime.sleep(3)", timeout=10)
        assert r.status == "infra_error" and r.attempts == 1 and "failed mid-job" in r.detail


def test_stuck_container_is_killed_from_outside(client):
    box = Sandbox(client)
    try:
        threading.Timer(0.3, box.container.pause).start()  # the runner freezes: no signal could end it
        start = time.monotonic()
        with pytest.raises(InfraError, match="killed from outside"):
            box.run("import time\ntime.sleep(0.5)", timeout=1)
        assert time.monotonic() - start < 1 + 3 + 2
        box.container.reload()
        assert box.container.status != "running"
    finally:
        box.destroy()


def test_client_raises_infra_error_when_the_container_dies(client):
    box = Sandbox(client)
    try:
        threading.Timer(0.5, box.container.kill).start()
        with pytest.raises(InfraError, match="failed mid-job"):
            box.run("import time\ntime.sleep(5)")
        assert not box.usable
    finally:
        box.destroy()


def test_fresh_container_mode_uses_one_container_per_job(client):
    with SandboxPool(size=1, client=client, fresh=True) as p:
        seen = set()
        for _ in range(3):
            r = p.run("import socket\nprint(open('/proc/self/cgroup').read())")
            assert r.status == "passed"
            seen.add(r.stdout)
        assert len(seen) == 3 and p.replaced == 3
    assert run_once("print(6 * 7)").stdout == "42\n"


def test_gc_removes_containers_of_a_crashed_owner(client):
    session = uuid.uuid4().hex[:8]
    code = (
        "import os\nfrom taskray.sandbox.client import Sandbox\n"
        "from taskray.sandbox.daemon import docker_client\n"
        f"b = Sandbox(docker_client(), session='{session}')\nprint('up', flush=True)\nos._exit(0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "up" in proc.stdout, proc.stderr
    assert len(session_containers(client, session)) == 1  # the owner died without cleaning up
    out = subprocess.run(["taskray", "sandbox", "gc"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "removed" in out.stdout
    assert session_containers(client, session) == []


def test_build_is_a_fast_no_op_when_up_to_date_and_doctor_is_happy():
    start = time.monotonic()
    out = subprocess.run(["taskray", "sandbox", "build"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "up to date" in out.stderr, out.stderr
    assert time.monotonic() - start < 30
    doc = subprocess.run(["taskray", "sandbox", "doctor"], capture_output=True, text=True, timeout=300)
    assert doc.returncode == 0 and "sandbox ready" in doc.stdout, doc.stdout


def test_pool_refuses_a_missing_image(client):
    with pytest.raises(SandboxUnavailable, match="taskray sandbox build"):
        SandboxPool(size=1, client=client, image=f"taskray-sandbox:missing-{os.getpid()}")
