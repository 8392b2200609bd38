"""Ending a process this package (or a test) started: by its own handle, never by name."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM: a clean shutdown), then SIGKILL after ``timeout`` seconds; the
    process is reaped either way. Nothing happens to one that has already ended."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
