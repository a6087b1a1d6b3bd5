"""``run.run_headless`` in a thread, so that something else can happen while Locust runs (a fault, a probe).

The Locust process is started by a runner that keeps its ``Popen``, so ``stop`` can end it early (an error or
Ctrl-C in the caller) instead of waiting out its run time. ``started`` is the moment Locust opened its
per-request CSV, which is when its users begin: timing a fault from there does not count Locust's start-up.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from typing import Any

from loadtests.run import LoadTestOptions, RunResult, run_headless


class BackgroundLocust:
    def __init__(self, options: LoadTestOptions) -> None:
        self.options = options
        self._process: subprocess.Popen[bytes] | None = None
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fault-drill-locust", daemon=True)

    def _runner(self, command: list[str], *, timeout: float, check: bool, **kwargs: Any) -> Any:
        self._process = subprocess.Popen(command, **kwargs)
        try:
            returncode = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise
        return subprocess.CompletedProcess(command, returncode)

    def _main(self) -> None:
        try:
            self._result = run_headless(self.options, quiet=True, runner=self._runner)
        except BaseException as error:  # handed to the caller by result()
            self._error = error

    def start(self) -> None:
        self.options.requests_csv.unlink(missing_ok=True)
        self._thread.start()

    def wait_started(self, timeout_s: float = 120) -> float:
        """Wait until Locust has opened its per-request CSV (its users start then); returns the Unix time."""
        deadline = time.monotonic() + timeout_s
        while not self.options.requests_csv.exists():
            if not self._thread.is_alive():
                raise RuntimeError(f"Locust ended before it started: {self._error!r}; see {self.options.log_file}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Locust did not start within {timeout_s:g} s; see {self.options.log_file}")
            time.sleep(0.1)
        return time.time()

    def result(self) -> RunResult:
        """Wait for the run to end by itself and return its records; raises what the run raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def stop(self) -> None:
        """End Locust now if it still runs (SIGTERM, then SIGKILL), and wait for the thread."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(15)
            if process.poll() is None:
                process.kill()
        if self._thread.is_alive():
            self._thread.join(30)
