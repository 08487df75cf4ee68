"""One writer per directory: an exclusive lock file that names its holder.

Training locks its checkpoint directory, evaluation and decoding their output folder, so that
two runs never mix their files. The lock is the file `.lock` in the directory, holding the
holder's PID, host name, program and start time (JSON), and kept `flock`ed by the holder for
as long as it runs:

- a second process finds the flock taken and is refused with a LockError naming the holder;
- the holder removes the file on every exit path it sees (normal end, exception, SIGINT, and
  SIGTERM, which becomes a KeyboardInterrupt while the lock is held);
- after SIGKILL or a reboot the file stays but the kernel has dropped the flock: a lock of this
  host whose PID is gone is taken over with a message;
- a lock written by another host is never broken unless asked (`break_lock=True`, the
  `--break_lock` flag), since this host cannot tell whether that process still runs.

The name never collides with what the scripts list: stream folders are directories holding
`stream_*.tfci`, results are `results.json`, checkpoints are `ckpt-*` plus `checkpoint`.
"""

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time

LOCK_NAME = ".lock"
_BUSY_RETRIES = 30  # x 0.1 s: a holder that has the flock but has not written its name yet


class LockError(RuntimeError):
    """The directory is in use by another process, or cannot be locked (the message says why)."""


def _pid_running(pid):
    """Whether process `pid` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _process_start_time(pid):
    """Seconds since the epoch when process `pid` started (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holder_gone(info):
    """Whether the process named by a lock of this host has ended (a PID now reused counts)."""
    pid, since = info.get("pid"), info.get("time")
    if not isinstance(pid, int) or pid == os.getpid() or not _pid_running(pid):
        return True
    started = _process_start_time(pid)
    return (started is not None and isinstance(since, (int, float))
            and started > since + 1.0)


def _describe(info):
    if not isinstance(info.get("pid"), int):
        return "another process"
    program = f" ({info['program']})" if info.get("program") else ""
    return (f"PID {info.get('pid', '?')}{program} on host {info.get('host', '?')} "
            f"since {info.get('since', '?')}")


def _same_file(fd, path):
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _read_info(fd):
    """The holder described in an open lock file: a dict, {} when empty, None when unreadable."""
    data = os.pread(fd, 4096, 0)
    if not data.strip():
        return {}
    try:
        info = json.loads(data)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _flock(fd, path):
    """Try to take the flock of `fd` without waiting: True if taken, False if held elsewhere."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        raise LockError(f"cannot lock '{path}' ({error.strerror}): the file system does not "
                        "support file locks; use a directory on a local disk") from None


def _program():
    """The running script's file name ('' for python -c or an interactive session)."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "" if name.startswith("-") else name


def _write_info(fd):
    """Name this process as the holder in the open lock file `fd`."""
    now = time.time()
    info = dict(pid=os.getpid(), host=socket.gethostname(),
                program=_program(),
                since=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)), time=now)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)


def _make_dirs(path):
    """Create `path` and its missing parents; return the ones created, deepest first."""
    missing, current = [], os.path.abspath(path)
    while not os.path.exists(current):
        missing.append(current)
        current = os.path.dirname(current)
    os.makedirs(path, exist_ok=True)
    return missing


class DirectoryLock:
    """Context manager: hold `directory` exclusively for this process.

    purpose: what the holder does to it, for messages ("trained" -> "'runs/q' is being trained
    by PID ..."); flag: the option naming the directory, for the advice to use another one.
    The directory (and missing parents) is created when needed and removed again on release
    if it is still empty, so a run that fails before writing anything leaves nothing behind.
    break_lock=True takes over a lock even when it was written by another host (never one whose
    holder the file system reports as still holding it).
    chief=False (a non-chief worker of a distributed run): take no lock and create nothing;
    such a worker must not write into the directory.
    """

    def __init__(self, directory, purpose="written", flag="--output_folder", break_lock=False,
                 chief=True):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self.purpose, self.flag, self.break_lock, self.chief = purpose, flag, break_lock, chief
        self.held = False
        self._fd = None
        self._created = []
        self._previous_sigterm = None

    def __enter__(self):
        if not self.chief:
            return self
        try:
            self._created = _make_dirs(self.directory)
        except OSError as error:
            raise LockError(f"cannot use '{self.directory}' as {self.flag} "
                            f"({error.strerror}): give a directory that can be written") from None
        try:
            self._acquire()
        except BaseException:
            self._release()
            raise
        self.held = True
        self._catch_sigterm()
        return self

    def __exit__(self, *exc):
        self._release()
        return False

    # --- taking the lock ----------------------------------------------------------------------

    def _acquire(self):
        for _ in range(_BUSY_RETRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise LockError(f"cannot create the lock file '{self.path}' "
                                f"({error.strerror}): give a {self.flag} that can be "
                                "written") from None
            try:
                taken = _flock(fd, self.path)
                if taken and not _same_file(fd, self.path):
                    os.close(fd)  # its holder removed it just now: lock the new file
                    continue
                info = _read_info(fd)
                if taken:
                    self._check_takeover(info)
                    _write_info(fd)
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
            # The flock is held. Unless the file names its holder yet (it may be being
            # written, or taken over from a dead process just now), look again shortly.
            if info and not (info.get("host") == socket.gethostname() and _holder_gone(info)):
                raise LockError(self._in_use(info, sure=True))
            time.sleep(0.1)
        raise LockError(self._in_use(info or {}, sure=True))

    def _check_takeover(self, info):
        """With the flock taken: may the previous holder's file be replaced? LockError if not."""
        if not info:  # new, left empty, or unreadable: nobody to name
            if info is None:
                print(f"replacing the unreadable lock file '{self.path}'", flush=True)
            return
        if info.get("host") == socket.gethostname() and _holder_gone(info):
            print(f"taking over the lock of '{self.directory}': {_describe(info)} is no longer "
                  "running", flush=True)
        elif self.break_lock:
            print(f"breaking the lock of '{self.directory}' held by {_describe(info)} "
                  "(--break_lock)", flush=True)
        else:
            raise LockError(self._in_use(info, sure=False))

    def _in_use(self, info, sure):
        """The refusal: who holds the directory, and what to do."""
        message = (f"'{self.directory}' is being {self.purpose} by {_describe(info)}: wait for "
                   f"it to end or use another {self.flag}")
        if sure:
            return message
        if info.get("host") != socket.gethostname():
            return (message + f"; this host ({socket.gethostname()}) cannot tell whether it is "
                    "still running: if it is not, rerun with --break_lock")
        return message + f"; if PID {info.get('pid')} is not that run, rerun with --break_lock"

    # --- letting it go ------------------------------------------------------------------------

    def _catch_sigterm(self):
        """While held, SIGTERM (by default a silent death) unwinds like Ctrl-C, so the
        lock is released; only where nobody else handles SIGTERM."""
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)

    def _release(self):
        if self._previous_sigterm is not None:
            if signal.getsignal(signal.SIGTERM) is _raise_interrupt:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if self._fd is not None:
            try:
                if _same_file(self._fd, self.path):
                    os.unlink(self.path)  # before the flock goes: see _acquire's inode check
                else:
                    print(f"warning: the lock of '{self.directory}' was broken by another "
                          "process while this one held it", file=sys.stderr, flush=True)
            except OSError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None
        for directory in self._created:  # deepest first; stop at the first one not empty
            try:
                os.rmdir(directory)
            except OSError:
                break
        self._created = []
        self.held = False


def _raise_interrupt(number, frame):
    raise KeyboardInterrupt(f"{signal.Signals(number).name} received")
