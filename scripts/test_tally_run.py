#!/usr/bin/env python3
"""`make demo` (scripts/tally_run.py) stopped the ways a user stops it; run by `make test-run`.

- Ctrl-C in a terminal, through `make -s demo` in a pseudo-terminal of its own: make and the
  script exit 0, say "stopped", and no process of theirs is left.
- SIGINT to the script's whole process group without a terminal (while the demo traffic is still
  being sent): exit 0, "stopped", nothing left.
- A child that dies on its own (the mock, SIGKILL) is reported, the others are stopped by PID,
  and the script exits 1.

Each run has its own data and run folders (TALLY_DATA_DIR, TALLY_RUN_DIR, removed afterwards) and
free ports (TALLY_*_PORT), so this runs beside a `make run`. Needs what `make build` makes (it does
not build: `make demo` runs here with `-o build`). Standard library only.
"""

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "tally_run.py")
BUILT = ["target/release/tally-collector", "target/release/tally-mock", ".venv/bin/envoy",
         "target/wasm32-wasip1/release/tally.wasm"]
CHILDREN = {"tally-collector", "tally-mock", "envoy"}
UP_SECONDS = 30
DOWN_SECONDS = 15


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session(sid):
    """The processes of session SID (zombies included): {pid: command name}."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            found[int(name)] = stat[stat.index("(") + 1:stat.rindex(")")]
    return found


def kill_session(sid):
    """SIGKILL, by PID, whatever a failed test left of the processes it started."""
    for pid in session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Output:
    """What a process writes to FD, read as it comes."""

    def __init__(self, fd):
        self.fd = fd
        self.text = ""
        self.closed = False

    def read(self, timeout):
        if self.closed or not select.select([self.fd], [], [], timeout)[0]:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: a pseudo-terminal's other side is closed
            data = b""
        if not data:
            self.closed = True
        self.text += data.decode(errors="replace")

    def wait_for(self, what, seconds=UP_SECONDS):
        deadline = time.monotonic() + seconds
        while what not in self.text:
            if self.closed:
                raise AssertionError(f"the output ended before {what!r}:\n{self.text[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what!r} not seen within {seconds}s:\n{self.text[-3000:]}")
            self.read(0.2)

    def wait_closed(self, seconds=DOWN_SECONDS):
        deadline = time.monotonic() + seconds
        while not self.closed:
            if time.monotonic() > deadline:
                raise AssertionError(f"output still open after {seconds}s:\n{self.text[-3000:]}")
            self.read(0.2)


class StopTallyRun(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        missing = [p for p in BUILT if not os.path.exists(os.path.join(ROOT, p))]
        if missing:
            raise unittest.SkipTest(f"not built: {', '.join(missing)} (make build)")

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="tally-run-test-")
        self.addCleanup(tmp.cleanup)
        collector, listener, admin, mock = free_ports(4)
        self.env = dict(os.environ, TALLY_DATA_DIR=os.path.join(tmp.name, "data"),
                        TALLY_RUN_DIR=os.path.join(tmp.name, "run"),
                        TALLY_COLLECTOR_PORT=str(collector), TALLY_LISTENER_PORT=str(listener),
                        TALLY_ADMIN_PORT=str(admin), TALLY_MOCK_PORT=str(mock))
        # The make that runs this test must not lend its jobserver to the make started here.
        for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
            self.env.pop(var, None)

    def start_script(self):
        """The script alone, in a session of its own (no terminal)."""
        p = subprocess.Popen([sys.executable, SCRIPT, "--demo"], cwd=ROOT, env=self.env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)

        def cleanup():
            kill_session(p.pid)
            p.wait(DOWN_SECONDS)
            p.stdout.close()
        self.addCleanup(cleanup)
        return p, Output(p.stdout.fileno())

    def assert_all_stopped(self, sid, started):
        left = session(sid)
        self.assertEqual(left, {}, "processes left running")
        for pid, name in started.items():
            try:
                os.kill(pid, 0)
                self.fail(f"{name} ({pid}) still exists")
            except ProcessLookupError:
                pass

    def assert_clean_stop(self, text):
        self.assertIn("tally: stopped.", text)
        for bad in ("exited with status", "was killed by", "Traceback", "make: ***"):
            self.assertNotIn(bad, text)

    def test_ctrl_c_in_a_terminal_stops_make_demo_with_status_0(self):
        # A pseudo-terminal whose foreground process group make leads, as in a shell.
        pid, master = pty.fork()
        if pid == 0:
            try:
                os.chdir(ROOT)
                os.execvpe("make", ["make", "-s", "-o", "build", "demo"], self.env)
            finally:
                os._exit(127)

        def cleanup():
            kill_session(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # already waited for
            os.close(master)
        self.addCleanup(cleanup)
        out = Output(master)
        out.wait_for("demo: sent")
        started = session(pid)
        self.assertTrue(CHILDREN | {"make"} <= set(started.values()), started)
        os.write(master, b"\x03")  # what the terminal's Ctrl-C sends: SIGINT to its foreground
        out.wait_closed()
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, out.text[-2000:])
        self.assert_clean_stop(out.text)
        self.assert_all_stopped(pid, started)

    def test_sigint_to_the_process_group_stops_everything_with_status_0(self):
        p, out = self.start_script()
        out.wait_for("Tally is running")  # the demo traffic is being sent
        started = session(p.pid)
        self.assertTrue(CHILDREN <= set(started.values()), started)
        os.killpg(p.pid, signal.SIGINT)
        out.wait_closed()
        self.assertEqual(p.wait(DOWN_SECONDS), 0, out.text[-2000:])
        self.assert_clean_stop(out.text)
        self.assert_all_stopped(p.pid, started)

    def test_a_child_that_dies_on_its_own_is_reported(self):
        p, out = self.start_script()
        out.wait_for("demo: sent")
        started = session(p.pid)
        mock = next(pid for pid, name in started.items() if name == "tally-mock")
        os.kill(mock, signal.SIGKILL)
        out.wait_closed()
        self.assertEqual(p.wait(DOWN_SECONDS), 1, out.text[-2000:])
        self.assertIn("tally: mock was killed by SIGKILL; see ", out.text)
        self.assertNotIn("stopped.", out.text)
        self.assert_all_stopped(p.pid, started)


if __name__ == "__main__":
    unittest.main()
