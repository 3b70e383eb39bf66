"""The program `ramwatchd run` starts: behind a gate, so tracing begins before
its first instruction. Its output is read line by line to be shown on the
timeline, or, when the timeline is not shown, left to go where ours goes."""
import collections
import os
import shutil
import signal
import subprocess
import threading


class TargetError(Exception):
    """The pid or command to capture cannot be used; the message says why."""


def check_command(argv):
    if shutil.which(argv[0]) is None:
        raise TargetError(f"command not found: {argv[0]}")


EXITING_S = 10.0   # how long an exited program may take to give back its memory


class Program:
    """The command under capture, in a session of its own. The gate is a shell
    waiting to read one byte on fd 3; the capture traces it, then opens the
    gate and the shell execs."""

    def __init__(self, argv, environ, read_output=True):
        check_command(argv)
        gate_r, self._gate = os.pipe()
        piped = subprocess.PIPE if read_output else None
        try:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", 'read -r _ <&3; exec 3<&-; exec "$@"', "ramwatchd-gate"] + list(argv),
                stdout=piped, stderr=subprocess.STDOUT if read_output else None,
                env=dict(environ, PYTHONUNBUFFERED="1"), pass_fds=(3,), start_new_session=True,
                preexec_fn=lambda: os.dup2(gate_r, 3))
        finally:
            os.close(gate_r)
        self.pid = self.proc.pid
        self.lines = collections.deque()   # filled by the reader thread (append and popleft are atomic)
        self._reader = None

    def output_targets(self):
        """The (device, inode) of where the program's stdout and stderr go: our
        pipe, or (when its output is not read) where ours go."""
        fds = [self.proc.stdout.fileno()] if self.proc.stdout is not None else [1, 2]
        targets = set()
        for fd in fds:
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            targets.add((st.st_dev, st.st_ino))
        return targets

    def go(self, clock):
        """Open the gate, and read the program's lines from now on, each with
        the moment it was read."""
        os.write(self._gate, b"g\n")
        os.close(self._gate)
        if self.proc.stdout is None:
            return

        def read():
            for raw in self.proc.stdout:
                self.lines.append((clock.now(), raw.decode(errors="replace").rstrip("\n")))
        self._reader = threading.Thread(target=read, name="output", daemon=True)
        self._reader.start()

    def take_lines(self):
        """[(read time, line)] read so far."""
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        return out

    def stop_group(self, sig):
        """Signal every process still in the program's session: it was started
        in one of its own, so that what it forks while the capture ends goes
        too. Its root is not reaped before end(), so the group's id is still
        its own."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def end(self, exited=False):
        """Stop the program if it still runs; its exit code if it ended on its
        own. exited: the kernel saw it exit, so it ended on its own, though a
        large one may still be giving its memory back: it is waited for."""
        if exited:
            try:
                self.proc.wait(timeout=EXITING_S)
            except subprocess.TimeoutExpired:
                pass
        ended_by_us = self.proc.poll() is None
        self.stop_group(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.stop_group(signal.SIGKILL)
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        return None if ended_by_us else code

    @property
    def running(self):
        return self.proc.poll() is None
