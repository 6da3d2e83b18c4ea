"""advdiff_kernel.py: a Jupyter kernel for advdiff (Lua 5.4 with advdiff built in).

A wrapper kernel (ipykernel.kernelbase.Kernel) that drives ONE persistent
`advdiff` process, so globals, tensors and models live on from cell to cell.
The advdiff side is lua/advdiff/jupyter.lua; the protocol:

  request  -> child's stdin:     b"<n>\\n" + n bytes of Lua code
  reply    <- a dedicated pipe:  b"<n>\\n" + n bytes of JSON
              {status, values[], displays[{path, temp}], ename, evalue, traceback[]}

The child's stdout and stderr are separate pipes, streamed to the notebook as
they arrive; the child flushes stdout before it replies, and this side reads
whatever stdout/stderr holds before it handles a reply, so a cell's output is
never shown after its result. Images a cell passes to display() arrive as PNG
paths and are sent as image/png display_data.

Interrupt: Jupyter's SIGINT reaches this process as KeyboardInterrupt while a
cell waits; it is forwarded to the child (its own session, so nothing else
sends it one), whose Lua hook ends the cell with "interrupted!". Restart:
the child is stopped and a new one started. The executable is $ADVDIFF_EXE,
else `advdiff` on PATH, else the build/advdiff of the source tree this file
sits in.
"""
import base64
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys

from ipykernel.kernelbase import Kernel

__version__ = "0.1.0"


def find_advdiff():
    exe = os.environ.get("ADVDIFF_EXE")
    if exe:
        return exe
    exe = shutil.which("advdiff")
    if exe:
        return exe
    here = os.path.dirname(os.path.abspath(__file__))
    cand = os.path.join(os.path.dirname(here), "build", "advdiff")
    if os.access(cand, os.X_OK):
        return cand
    raise RuntimeError("advdiff kernel: no advdiff executable (set ADVDIFF_EXE, or put advdiff on PATH)")


class ChildDied(Exception):
    pass


class AdvdiffKernel(Kernel):
    implementation = "advdiff"
    implementation_version = __version__
    language = "lua"
    language_version = "5.4"
    language_info = {
        "name": "lua",
        "mimetype": "text/x-lua",
        "file_extension": ".lua",
        "codemirror_mode": "lua",
        "pygments_lexer": "lua",
    }
    banner = "advdiff: tensors, autograd and diffusion in Lua 5.4 (`ad` is loaded; display(x) shows an image)"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.child = None
        self._start()

    # ---- the child process -------------------------------------------------

    def _start(self):
        exe = find_advdiff()
        r, w = os.pipe()
        try:
            self.child = subprocess.Popen(
                [exe, "-e", "require('advdiff.jupyter').serve(%d)" % w],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(w,),
                start_new_session=True,
            )
        finally:
            os.close(w)
        self.reply_fd = r
        for fd in (self.child.stdout.fileno(), self.child.stderr.fileno(), r):
            os.set_blocking(fd, False)

    def _stop(self):
        child, self.child = self.child, None
        if child is None:
            return
        try:
            child.stdin.close()
        except OSError:
            pass
        try:
            child.wait(timeout=2)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        for f in (child.stdout, child.stderr):
            f.close()
        os.close(self.reply_fd)

    # ---- running a cell ----------------------------------------------------

    def _stream(self, name, data, silent):
        if data and not silent:
            text = data.decode("utf-8", errors="replace")
            self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def _run(self, code, silent):
        """Sends code, streams output, returns the reply dict."""
        data = code.encode("utf-8")
        try:
            self.child.stdin.write(b"%d\n" % len(data) + data)
            self.child.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ChildDied()
        out_fd, err_fd = self.child.stdout.fileno(), self.child.stderr.fileno()
        sel = selectors.DefaultSelector()
        for fd in (out_fd, err_fd, self.reply_fd):
            sel.register(fd, selectors.EVENT_READ)
        buf = b""
        interrupts = 0
        try:
            while True:
                try:
                    events = sel.select(timeout=1.0)
                    # the output first: what the cell printed came before its reply
                    for fd, name in ((out_fd, "stdout"), (err_fd, "stderr")):
                        self._stream(name, self._drain(fd), silent)
                    if any(key.fd == self.reply_fd for key, _ in events):
                        chunk = self._drain(self.reply_fd)
                        if chunk == b"" and not buf:
                            if self.child.poll() is not None:
                                raise ChildDied()
                        buf += chunk
                        nl = buf.find(b"\n")
                        if nl >= 0:
                            n = int(buf[:nl])
                            if len(buf) - nl - 1 >= n:
                                return json.loads(buf[nl + 1 : nl + 1 + n].decode("utf-8"))
                    if not events and self.child.poll() is not None:
                        raise ChildDied()
                except KeyboardInterrupt:
                    interrupts += 1
                    if self.child.poll() is None:
                        os.kill(self.child.pid, signal.SIGINT)
        finally:
            sel.close()

    @staticmethod
    def _drain(fd):
        chunks = []
        while True:
            try:
                b = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)

    def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False, **kwargs):
        ok = {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}
        if not code.strip():
            return ok
        if self.child is None or self.child.poll() is not None:
            if self.child is not None:
                self._stream("stderr", b"advdiff exited; starting a new session (globals are lost)\n", silent)
                self._stop()
            self._start()
        try:
            reply = self._run(code, silent)
        except ChildDied:
            status = self.child.wait()
            self._stream("stdout", self._drain(self.child.stdout.fileno()), silent)
            self._stream("stderr", self._drain(self.child.stderr.fileno()), silent)
            self._stop()
            self._start()
            reply = {
                "status": "error",
                "ename": "AdvdiffExited",
                "evalue": "advdiff exited with status %s; a new session was started" % status,
                "traceback": ["advdiff exited with status %s (a crash or os.exit); a new session was started" % status],
            }
        for d in reply.get("displays") or []:
            path = d.get("path")
            try:
                with open(path, "rb") as f:
                    png = f.read()
                if d.get("temp"):
                    os.remove(path)
            except OSError as e:
                self._stream("stderr", ("display: %s\n" % e).encode(), silent)
                continue
            if not silent:
                self.send_response(
                    self.iopub_socket,
                    "display_data",
                    {"data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": "<image %s>" % os.path.basename(path)}, "metadata": {}},
                )
        if reply.get("status") == "error":
            content = {
                "ename": reply.get("ename", "LuaError"),
                "evalue": reply.get("evalue", ""),
                "traceback": reply.get("traceback") or [reply.get("evalue", "")],
            }
            if not silent:
                self.send_response(self.iopub_socket, "error", content)
            content.update({"status": "error", "execution_count": self.execution_count})
            return content
        values = reply.get("values") or []
        if values and not silent:
            self.send_response(
                self.iopub_socket,
                "execute_result",
                {"execution_count": self.execution_count, "data": {"text/plain": "\t".join(values)}, "metadata": {}},
            )
        return ok

    def do_is_complete(self, code):
        return {"status": "unknown"}

    def do_shutdown(self, restart):
        self._stop()
        if restart:
            self._start()
        return {"status": "ok", "restart": restart}


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=AdvdiffKernel)
