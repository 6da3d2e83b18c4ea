#!/usr/bin/env python3
"""test_repl.py: drives the advdiff REPL through a pseudo-terminal.

    python3 tests/cli/test_repl.py path/to/advdiff

Checks expression printing, multi-line input, Ctrl-C (interrupting a running
loop, clearing a typed line, dropping a half-typed chunk), tab completion of
globals, of `ad.ze` -> `ad.zeros`, of tensor methods and of field chains,
the history file (written under $HOME, read back by the next session), and
that an unwritable HOME is ignored. Only the Python standard library is used.
"""
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import tempfile
import termios
import time

TIMEOUT = 10.0


class Term:
    """One advdiff process on a pty; expect() consumes output up to a match."""

    def __init__(self, exe, home):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUA_INIT")}
        env.update(TERM="dumb", INPUTRC="/dev/null", HOME=home)
        pid, fd = pty.fork()
        if pid == 0:
            # wide enough that readline never wraps a line
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
            os.execve(exe, [exe], env)
        self.pid, self.fd, self.buf, self.log = pid, fd, b"", b""

    def send(self, s):
        os.write(self.fd, s.encode())

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return None
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the pty
            data = b""
        self.log += data
        return data

    def expect(self, pattern, what=None):
        rx = re.compile(pattern.encode())
        deadline = time.time() + TIMEOUT
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.time()
            data = self._read(max(left, 0)) if left > 0 else None
            if not data:
                why = "timeout" if data is None else "end of output"
                raise AssertionError("%s waiting for %s (%r); unread output: %r"
                                     % (why, what or "output", pattern, self.buf))
            self.buf += data

    def run(self, line, result):
        """send a line, expect `result` printed on a line of its own, then the prompt"""
        self.send(line + "\r")
        self.expect(r"\n" + re.escape(result) + r"\r?\n", "result of %r" % line)
        self.expect(r"(^|\n)> $", "prompt after %r" % line)

    def stmt(self, line):
        """send a statement that prints nothing; expect the next prompt"""
        self.send(line + "\r")
        self.expect(r"(^|\n)> $", "prompt after %r" % line)

    def finish(self):
        """Ctrl-D at the prompt; returns the exit status"""
        self.send("\x04")
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
            self._read(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError("advdiff did not exit on Ctrl-D; output: %r" % self.log)


def check(name, fn):
    t0 = time.time()
    fn()
    print("ok    %s (%.2fs)" % (name, time.time() - t0))


def session_one(exe, home):
    t = Term(exe, home)
    t.expect(r"advdiff \d+\.\d+", "banner")
    t.expect(r"> $", "first prompt")

    check("expression results are printed", lambda: (
        t.run("1+1", "2"),
        t.run("return 1, 'a', nil", "1\ta\tnil"),
        t.run("type(ad)", "table"),
    ))

    def multiline():
        t.send("function f(a)\r")
        t.expect(r"\n>> $", "continuation prompt")
        t.send("return a * 2\r")
        t.expect(r"\n>> $", "continuation prompt")
        t.send("end\r")
        t.expect(r"(^|\n)> $", "prompt after the chunk")
        t.run("f(21)", "42")
    check("multi-line input continues with >>", multiline)

    def interrupt_loop():
        t.send("print('spin' .. 'ning'); while true do end\r")
        t.expect(r"\nspinning\r?\n", "the loop to start")
        time.sleep(0.1)
        t.send("\x03")
        t.expect(r"interrupted!", "the interrupt error")
        t.expect(r"(^|\n)> $", "prompt after the interrupt")
        t.run("1+2", "3")
    check("Ctrl-C interrupts a running loop and the REPL goes on", interrupt_loop)

    def interrupt_line():
        t.send("abc")
        t.expect(r"abc", "echo")
        t.send("\x03")
        t.expect(r"(^|\n)> $", "fresh prompt")
        t.run("4+4", "8")  # had "abc" been kept, this would be a syntax error
        t.send("for i = 1, 2 do\r")
        t.expect(r"\n>> $", "continuation prompt")
        t.send("\x03")
        t.expect(r"(^|\n)> $", "fresh prompt")
        t.run("5+5", "10")
    check("Ctrl-C at the prompt discards the typed line or chunk", interrupt_line)

    # The echo of a completion is not checked (readline may ring the bell and
    # redraw in pieces); the completed line is, by what it evaluates to.
    def complete():
        t.send("ad.ze\t")
        t.send("(7):numel() * 6\r")
        t.expect(r"\n42\r?\n", "ad.zeros(7):numel() * 6")
        t.expect(r"(^|\n)> $")
        t.send("pri\t")
        t.send("('ok' .. 7)\r")
        t.expect(r"\nok7\r?\n", "print('ok' .. 7)")
        t.expect(r"(^|\n)> $")
        t.stmt("tt = ad.zeros(9); cfg = {opt = {lrate = 0.25}}")
    check("tab completes globals and ad.ze -> ad.zeros", complete)

    def complete_members():
        t.send("tt:nu\t")
        t.send("() + 100\r")
        t.expect(r"\n109\r?\n", "tt:numel() + 100")
        t.expect(r"(^|\n)> $")
        t.send("cfg.opt.lr\t")
        t.send("\r")
        t.expect(r"\n0\.25\r?\n", "cfg.opt.lrate")
        t.expect(r"(^|\n)> $")
        t.run("'hist' .. 'ory'", "history")
    check("tab completes tensor methods and a.b.c chains", complete_members)

    status = t.finish()
    assert status == 0, "exit status %d after Ctrl-D" % status


def main():
    exe = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as home:
        session_one(exe, home)

        def history_written():
            with open(os.path.join(home, ".advdiff_history")) as f:
                hist = f.read()
            for entry in ("1+1", "function f(a)", "f(21)", "'hist' .. 'ory'"):
                assert entry in hist, "%r missing from the history file: %r" % (entry, hist)
        check("history is written to $HOME/.advdiff_history", history_written)

        def history_read():
            t = Term(exe, home)
            t.expect(r"> $", "first prompt")
            t.send("\x10\r")  # Ctrl-P: previous line, from the last session
            t.expect(r"\nhistory\r?\n", "the last entry of the previous session")
            t.expect(r"(^|\n)> $")
            assert t.finish() == 0
        check("the next session reads the history back", history_read)

    def unwritable_home():
        t = Term(exe, "/nonexistent/advdiff-test-home")
        t.expect(r"> $", "first prompt")
        t.run("6*7", "42")
        assert t.finish() == 0
        assert b"history" not in t.log.lower(), "history complaint: %r" % t.log
    check("an unwritable HOME is ignored", unwritable_home)


if __name__ == "__main__":
    main()
