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
  docker: the container's stdout. The program's stdout goes through a pipe that the init relays in frames
          (b"\\x01" + 4-byte big-endian length + data); the status is frame b"\\x02" + b"<code> <signal>\\n",
          followed by a tar of /work (the container's tmpfs dies with it). The program never writes the
          container's stdout itself, so it cannot forge either.
"""

from __future__ import annotations

import platform

FRAME_DATA = 1
FRAME_STATUS = 2
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

# Args: the program's argv. Relays the program's stdout in frames, then the status frame and a tar of /work.
DOCKER_INIT = _COMMON + (
    " pipe(my $r, my $w) or exit 125;"
    " my $pid = fork(); exit 125 unless defined $pid;"
    " if ($pid == 0) { close $r; open(STDOUT, '>&', $w) or exit 125; close $w;"
    " exec { $ARGV[0] } @ARGV; exit 127 }"
    " close $w; binmode STDOUT; my ($buf, $st, $rin);"
    " while (1) {"
    "  $rin = ''; vec($rin, fileno($r), 1) = 1;"
    "  my $ready = select(my $rout = $rin, undef, undef, defined $st ? undef : 0.05);"
    "  if ($ready > 0) { my $n = sysread($r, $buf, 65536); last unless $n;"
    "   my $out = pack('CN', 1, $n) . $buf; while (length $out) {"
    "    my $k = syswrite(STDOUT, $out); exit 124 unless defined $k; substr($out, 0, $k) = '' } }"
    "  if (!defined $st && waitpid($pid, 1) == $pid) { $st = $?; kill 'KILL', -1 }"
    " }"
    " if (!defined $st) { waitpid($pid, 0); $st = $?; }"
    " kill 'KILL', -1;"
    " syswrite(STDOUT, pack('C', 2) . report_status($st));"
    " exec 'tar', '-c', '-f', '-', '-C', '/work', '.';"
)


def parse_status(line: bytes) -> tuple[int | None, int | None] | None:
    """(exit code, signal) from the init's report, or None when it is not a well-formed report."""
    try:
        code, sig = (int(x) for x in line.split())
    except ValueError:
        return None
    return (None, sig) if sig else (code, None)
