"""A real Prometheus server (Debian's `prometheus` package; `make test` installs it) for tests and
benchmarks: started on a free port with a config berth wrote, and asked through its HTTP API."""

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from berth.testing.harness import free_port


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class RunningPrometheus:
    def __init__(self, config: Path, data_dir: Path):
        self.config, self.data_dir = config, data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir / "prometheus.log"

    def start(self, timeout_s: float = 30) -> "RunningPrometheus":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    prometheus_binary() or "prometheus",
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("prometheus did not become ready:\n" + self.log_path.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def _api(self, path: str, **params) -> dict:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self._api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that answers one series (a sum), None when it answers none."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict]:
        return self._api("targets", state="active")["activeTargets"]

    def metric_names(self) -> set[str]:
        return set(self._api("label/__name__/values"))

    def wait_for(self, what: str, check, timeout_s: float = 60, every_s: float = 0.5):
        """Until check() answers something truthy; it, or an AssertionError naming `what`."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(every_s)
        raise AssertionError(f"Prometheus never showed {what} (last: {last!r})")
