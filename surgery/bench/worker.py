"""The parent's side of one measurement process (:mod:`surgery.bench.measure`): start it, ask it for rounds.

A :class:`Worker` keeps one model loaded for one backend, warm between its rounds, so the rounds of several
models can interleave. Every answer is awaited against the row's time budget (``timeout_s``: the process's own
time, loading and rounds together, not the other models' turns); a process that dies, answers garbage or runs
out of time is killed and its row reported as ``failed: ...``.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from surgery.bench.measure import MARK, SKIP


class Worker:
    """One ``python -m surgery.bench.measure`` process; :meth:`start`, then :meth:`round` and :meth:`finish`."""

    def __init__(self, settings: dict[str, Any], *, threads: int, timeout_s: float):
        self.settings = settings
        self.timeout_s = timeout_s
        self.budget = float(timeout_s)
        self.failed: str | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "surgery.bench.measure", json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            if line.startswith(MARK):
                self._lines.put(line[len(MARK) :])
        self._lines.put(None)  # end of output

    def _answer(self, command: str | None) -> dict[str, Any]:
        """Send ``command`` (None: only wait for the first answer) and return the answer, or the failure."""
        if self.failed is not None:
            return {SKIP: self.failed}
        started = time.monotonic()
        try:
            if command is not None:
                self._process.stdin.write(command + "\n")
                self._process.stdin.flush()
            line = self._lines.get(timeout=max(self.budget, 0.001))
        except queue.Empty:
            return self._fail(f"failed: no result within {self.timeout_s} s", kill=True)
        except OSError:
            line = None
        finally:
            self.budget -= time.monotonic() - started
        if line is None:
            return self._fail(f"failed: {self._last_error()}")
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return self._fail(f"failed: unreadable answer {line.strip()[:80]!r}", kill=True)
        if SKIP in answer:
            self.close()
            self.failed = answer[SKIP]
        return answer

    def _fail(self, reason: str, *, kill: bool = False) -> dict[str, Any]:
        if kill and self._process.poll() is None:
            self._process.kill()
        self.close()
        self.failed = reason
        return {SKIP: reason}

    def _last_error(self) -> str:
        self._process.wait(timeout=10)
        self._stderr.seek(0)
        lines = self._stderr.read().strip().splitlines()
        return lines[-1] if lines else "no output"

    def start(self) -> dict[str, Any]:
        """Wait until the model is loaded: ``{"ready": True}``, or ``{"skipped": why}``."""
        return self._answer(None)

    def round(self) -> dict[str, Any]:
        """One timed generation: ``{"prefill_ms", "decode_ms_per_token", "tokens_per_s"}``, or ``skipped``."""
        return self._answer("round")

    def finish(self) -> dict[str, Any]:
        """The row's once-only record (peak memory, decode loop, ...); the process then exits."""
        answer = self._answer("finish")
        self.close()
        return answer

    def close(self) -> None:
        """End the process (politely if it is done, else killed) and release its files."""
        if self._process.poll() is None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._stderr.close()
