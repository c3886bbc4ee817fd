"""The session's IPython kernel, as the agent starts it: ``python3 -c <this file's source> -f <connection file>``.

A program, not a module to import: it runs inside the sandbox with the sandbox's ``/usr/bin/python3``, patches
ipykernel and launches the kernel. The agent (agent.py, ``KERNEL_LAUNCHER``) passes this text as it is; it
imports nothing of the server, only the standard library and ipykernel.

- Blocks debugpy (ipykernel imports it when present: 30 MB and a debugger nobody can reach here).
- Gives stdout and stderr back-pressure: ipykernel buffers what a cell writes until its I/O thread flushes
  (every 0.2 s), so a tight printing loop would grow that buffer by hundreds of MB first; here a writer past
  1 MiB waits for the flush, and the output limit stops the call long before memory is at stake.
- Drains the file-descriptor capture before a call ends. What a cell writes to fd 1 or 2 itself (os.write, a
  subprocess) goes through a pipe that a thread of ipykernel reads and turns into output of whichever call is
  current when it gets to it: on a loaded host that was the next call (a call's output showing up in the next
  one). Here each call, once run, writes a random mark into both pipes and waits (2 s at most) until the
  reading thread has reached it, so everything before it is this call's; the thread also decodes UTF-8 split
  across reads, which ipykernel's own did not.
"""

import codecs
import os
import sys
import threading
from typing import Any

# None in sys.modules makes `import debugpy` fail, so ipykernel runs without it.
sys.modules["debugpy"] = None  # type: ignore[assignment]

from ipykernel import iostream, ipkernel  # type: ignore[import-not-found]  # noqa: E402 - after debugpy's block

_write = iostream.OutStream.write


def write(self: Any, string: str) -> int | None:
    n: int | None = _write(self, string)
    buffer = getattr(self, "_buffer", None)
    if buffer is not None and buffer.tell() > 1048576:
        self.flush()
    return n


iostream.OutStream.write = write
MARK = b"\0sandbox-drain-" + os.urandom(12).hex().encode() + b"\0"


def watch(self: Any) -> None:
    """ipykernel's reading thread of a captured fd, which stops at MARK and says so (``self._drained``)."""
    self._drained = threading.Event()
    decode = codecs.getincrementaldecoder("utf-8")("replace").decode
    held = b""

    def emit(data: bytes) -> None:
        if data:
            text = decode(data)
            if text:
                self.write(text)
            os.write(self._original_stdstream_copy, data)

    try:
        while self._should_watch:
            bts = os.read(self._fid, 65536)
            if not bts:
                break
            data = held + bts
            while MARK in data:
                before, data = data.split(MARK, 1)
                emit(before)
                self._drained.set()
            # Holds back a tail that could be the start of a MARK split across reads.
            keep = len(MARK) - 1
            cut = max(0, len(data) - keep)
            while cut < len(data) and not MARK.startswith(data[cut:]):
                cut += 1
            emit(data[:cut])
            held = data[cut:]
    except Exception:
        self._exc = sys.exc_info()


iostream.OutStream._watch_pipe_fd = watch
_do_execute = ipkernel.IPythonKernel.do_execute


async def do_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
    """ipykernel's, then the captured fds drained (MARK written, the reading thread waited for) and flushed."""
    reply = await _do_execute(self, *args, **kwargs)
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        drained = getattr(stream, "_drained", None)
        if drained is not None and getattr(stream, "_should_watch", False):
            drained.clear()
            os.write(fd, MARK)
            drained.wait(2.0)
        stream.flush()
    return reply


ipkernel.IPythonKernel.do_execute = do_execute
from ipykernel.kernelapp import IPKernelApp  # type: ignore[import-not-found]  # noqa: E402 - after the patches

IPKernelApp.launch_instance()
