"""The minimal init every sandbox runs as its PID 1, on both backends, written in perl (perl-base is essential
on Debian, so it is on every host and in every runtime image; it starts in about 2 ms).

Why an init at all: a program that is PID 1 of its namespace does not get signals it has no handler for
(SIGTERM to itself, SIGXFSZ at the file-size limit), does not reap orphans, and a POSIX shell's ``$?`` cannot
tell "exit 137" from "killed by signal 9". The init forks the program, waits for it, reports its raw wait
status on a channel the program cannot write to, and kills every process the program left behind, so nothing
outlives it.

``report`` channel:
  nsjail: a pipe inherited from the server (its fd number is the first argument), made close-on-exec before
          the program starts.
  docker: the container's stdout. The program's stdout and stderr go through pipes that the init relays in
          frames (b"\\x01" for stdout or b"\\x03" for stderr, + 4-byte big-endian length + data), in the order
          it read them; the status is frame b"\\x02" + b"<code> <signal>\\n", followed by a tar of /work (the
          container's tmpfs dies with it). The program never writes the container's stdout itself, so it
          cannot forge either. Its stderr is relayed too, not left on the container's: Docker copies the
          container's two streams independently, so what a program wrote to stderr just before it ended could
          arrive after the archive's end, when the server has stopped reading.
"""

from __future__ import annotations

import platform

FRAME_DATA = 1  # the program's stdout
FRAME_STATUS = 2
FRAME_STDERR = 3
# Set by Docker or by the bootstrap shell, not by us: removed so both backends give the same environment.
HIDDEN_ENV = ("HOSTNAME", "PWD")
INIT_PIDS = 1  # the init's own process: added to the pids limit so the program gets the number it asked for


def _prctl_number() -> int:
    """prctl(2)'s system call number on this machine (the sandboxes run the host's architecture)."""
    machine = platform.machine()
    try:
        return PRCTL_SYSCALLS[machine]
    except KeyError:
        raise RuntimeError(f"no prctl syscall number known for {machine}: the sandbox init cannot harden itself")\
            from None


PRCTL_SYSCALLS = {"x86_64": 157, "aarch64": 167, "riscv64": 167, "ppc64le": 171, "s390x": 172, "armv7l": 172}
PR_SET_DUMPABLE = 4

_COMMON = (
    # No modules: loading POSIX alone costs about 6 ms per execution. Linux values: F_SETFD 2, FD_CLOEXEC 1,
    # WNOHANG 1.
    # First of all, not dumpable: the program runs as the same user, and would otherwise be allowed to ptrace the
    # init or open /proc/1/fd/* and write the init's report channel (forging its status, files and output).
    f" syscall({_prctl_number()}, {PR_SET_DUMPABLE}, 0, 0, 0, 0) == 0 or exit 125;"
    " delete $ENV{$_} for qw(" + " ".join(HIDDEN_ENV) + ");"
    # pip's --target directory, on PYTHONPATH: made before Python starts, or Python caches it as missing and
    # a package installed there does not import in the same program.
    " mkdir($ENV{PIP_TARGET}, 0755) if defined $ENV{PIP_TARGET};"
    ' sub report_status { my ($st) = @_;'
    ' return sprintf("%d %d\\n", ($st & 127) ? -1 : ($st >> 8), $st & 127); }'
)

# Args: the status pipe's fd number, the "go" pipe's fd number or "-", then the program's argv. With a go pipe
# the program starts only once the server has written a byte to it (its proxy is listening in the sandbox's
# network namespace by then); a go pipe closed without one means the set-up failed, and nothing runs.
NSJAIL_INIT = _COMMON + (
    " my $fdn = shift @ARGV; open(my $rep, '>&=', $fdn) or exit 125;"
    " fcntl($rep, 2, 1) or exit 125;"
    " my $gon = shift @ARGV; if ($gon ne '-') { open(my $go, '<&=', $gon) or exit 125;"
    " sysread($go, my $gb, 1) == 1 or exit 125; close $go; }"
    " my $pid = fork(); exit 125 unless defined $pid;"
    " if ($pid == 0) { exec { $ARGV[0] } @ARGV; exit 127 }"
    " my $st;"
    " while (1) { my $w = waitpid(-1, 0); last if $w < 0; if ($w == $pid) { $st = $?; last } }"
    " kill 'KILL', -1;"
    " while (waitpid(-1, 0) > 0) {}"
    " syswrite($rep, report_status($st)); exit 0;"
)

# Args: the mode, then the program's argv. The container's stdin carries "<n>\\n", n bytes of tar (the code and
# input files, extracted into /work by tar, which the init feeds exactly n bytes: never a byte of the program's
# stdin), then the program's stdin. The program's stdout is relayed in frames, then come the status frame and a
# tar of /work. Modes, by what the pids limit leaves room for (the init, tar and the program: three processes):
#   stub  tar and the program are started before the request arrives; the program (DOCKER_PYTHON_STUB) gets the
#         read end of a "go" pipe as its last argument and waits on it for /work to be complete;
#   exec  tar and a fork that execs the program at "go" are started before the request arrives;
#   late  nothing ahead: tar, then the program, one after the other (a pids limit of two).
DOCKER_INIT = _COMMON + (
    " my $mode = shift @ARGV; $mode =~ /^(stub|exec|late)$/ or exit 125;"
    " pipe(my $r, my $w) or exit 125; pipe(my $er, my $ew) or exit 125;"
    " my ($tar, $tw, $pid, $gw);"
    " sub spawn_tar { pipe(my $tr, $tw) or exit 125; $tar = fork(); exit 125 unless defined $tar;"
    "  if ($tar == 0) { open(STDIN, '<&', $tr) or exit 125;"
    "   exec 'tar', '-x', '-C', '/work', '--no-same-owner', '--no-same-permissions', '-f', '-'; exit 125 }"
    "  close $tr }"
    " sub spawn_program { my $gr; if ($mode ne 'late') { pipe($gr, $gw) or exit 125 }"
    "  $pid = fork(); exit 125 unless defined $pid;"
    "  if ($pid == 0) { close $r; close $er; close $tw if $tw; close $gw if $gw;"
    "   open(STDOUT, '>&', $w) or exit 125; open(STDERR, '>&', $ew) or exit 125; close $w; close $ew;"
    "   if ($mode eq 'stub') { fcntl($gr, 2, 0) or exit 125; exec { $ARGV[0] } @ARGV, fileno($gr); exit 127 }"
    "   if ($mode eq 'exec') { sysread($gr, my $gb, 1) == 1 or exit 125; close $gr }"
    "   exec { $ARGV[0] } @ARGV; exit 127 }"
    "  close $gr if $gr }"
    " if ($mode ne 'late') { spawn_tar(); spawn_program() }"
    " my $hdr = ''; while (1) { sysread(STDIN, my $c, 1) == 1 or exit 125; last if $c eq \"\\n\";"
    "  $hdr .= $c; length($hdr) <= 20 or exit 125 }"
    " $hdr =~ /^[0-9]+$/ or exit 125;"
    " spawn_tar() if $mode eq 'late';"
    " my $left = $hdr; while ($left > 0) {"
    "  my $k = sysread(STDIN, my $buf, $left < 65536 ? $left : 65536); exit 125 unless $k; $left -= $k;"
    "  my $o = 0; while ($o < $k) { my $m = syswrite($tw, $buf, $k - $o, $o); exit 125 unless $m; $o += $m } }"
    " close $tw; waitpid($tar, 0) == $tar && $? == 0 or exit 125;"
    " if ($mode eq 'late') { spawn_program() } else { syswrite($gw, 'G') == 1 or exit 125; close $gw }"
    " close $w; close $ew; binmode STDOUT; my ($buf, $st, $rin, $rout);"
    " my %open = (fileno($r) => [$r, 1], fileno($er) => [$er, 3]);"
    " while (%open) {"
    "  $rin = ''; vec($rin, $_, 1) = 1 for keys %open;"
    "  my $ready = select($rout = $rin, undef, undef, defined $st ? undef : 0.05);"
    "  if ($ready > 0) { for my $f (keys %open) { next unless vec($rout, $f, 1);"
    "   my ($h, $kind) = @{$open{$f}}; my $n = sysread($h, $buf, 65536);"
    "   if (!$n) { delete $open{$f}; next }"
    "   my $out = pack('CN', $kind, $n) . $buf; while (length $out) {"
    "    my $k = syswrite(STDOUT, $out); exit 124 unless defined $k; substr($out, 0, $k) = '' } } }"
    "  if (!defined $st && waitpid($pid, 1) == $pid) { $st = $?; kill 'KILL', -1 }"
    " }"
    " if (!defined $st) { waitpid($pid, 0); $st = $?; }"
    " kill 'KILL', -1;"
    " syswrite(STDOUT, pack('C', 2) . report_status($st));"
    " exec 'tar', '-c', '-f', '-', '-C', '/work', '.';"
)

# The Python program of a Docker sandbox in "stub" mode: ``python3 -B -s -c STUB <go fd>``, started with its
# container, before any request. The interpreter's start-up (most of a hello world's time) is so done ahead;
# at "go" /work is complete and the stub runs main.py as ``python3 -B -s main.py`` would: argv, sys.path[0],
# a clean ``__main__`` with the script's __file__ and loader, an uncaught exception's traceback with no frame
# of the stub's, and the interpreter's own SystemExit handling and finalization. What still shows the stub is
# /proc/self/cmdline (rewriting it needs CAP_SYS_RESOURCE, which a container does not have).
DOCKER_PYTHON_STUB = """\
def _stub():
    import sys, os
    fd = int(sys.argv[1])
    if os.read(fd, 1) != b"G":
        os._exit(125)
    os.close(fd)
    path = "/work/main.py"
    sys.argv, sys.path[0] = ["main.py"], "/work"
    sys.orig_argv = [sys.executable, "-B", "-s", "main.py"]
    g = sys.modules["__main__"].__dict__
    builtins = g["__builtins__"]
    g.clear()
    g.update(__name__="__main__", __doc__=None, __package__=None, __spec__=None, __annotations__={},
             __builtins__=builtins, __file__=path, __cached__=None,
             __loader__=sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path))
    try:
        with open(path, "rb") as f:
            source = f.read()
        exec(compile(source, path, "exec", dont_inherit=True), g)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__.tb_next
        exc = exc.with_traceback(tb)
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        sys.excepthook(type(exc), exc, tb)
        if isinstance(exc, KeyboardInterrupt):
            import signal, threading, atexit
            threading._shutdown()
            atexit._run_exitfuncs()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:
                    pass
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1) from None
_stub()
"""


def parse_status(line: bytes) -> tuple[int | None, int | None] | None:
    """(exit code, signal) from the init's report, or None when it is not a well-formed report."""
    try:
        code, sig = (int(x) for x in line.split())
    except ValueError:
        return None
    return (None, sig) if sig else (code, None)
