"""Node-local records of the engines this node launched: enough to find, re-adopt or reap each one.

One JSON file per instance under $BERTH_HOME/run/, written atomically (temp file + rename).
"""

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from berth.common.atomic_write import write_atomically


class EngineRecord(BaseModel):
    instance_id: str
    deployment: str
    engine: str
    port: int
    pid: int  # the engine process (a container's main process, as the host sees it)
    pid_create_time: float  # process runtime only (0 for a container)
    wrapper_pid: int  # process runtime: the group leader that records the exit status (0 for a container)
    log_path: str
    log_offset: int
    exit_file: str  # process runtime only ("" for a container: Docker keeps its exit status)
    started_at: float
    stopped_by_shutdown: bool = False  # `berth up` stopped it on its way down: relaunch, no failure
    runtime: Literal["process", "container"] = "process"
    container_id: str | None = None  # container runtime: the Docker container
    # the deployment workflow run that launched it ("" in records of an earlier berth): a run places
    # its instance once and keeps it, so while that run runs, the engine is its (reconcile)
    run_id: str = ""


class EngineRecords:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def _path(self, instance_id: str) -> Path:
        return self.run_dir / f"{instance_id}.json"

    def exit_file(self, instance_id: str) -> Path:
        return self.run_dir / f"{instance_id}.exit"

    def get(self, instance_id: str) -> EngineRecord | None:
        try:
            return EngineRecord.model_validate_json(self._path(instance_id).read_text())
        except FileNotFoundError:
            return None

    def put(self, record: EngineRecord) -> None:
        write_atomically(self._path(record.instance_id), record.model_dump_json(indent=1))

    def remove(self, instance_id: str) -> None:
        self._path(instance_id).unlink(missing_ok=True)
        self.exit_file(instance_id).unlink(missing_ok=True)

    def all(self) -> list[EngineRecord]:
        records = []
        for path in sorted(self.run_dir.glob("*.json")):
            try:
                records.append(EngineRecord.model_validate_json(path.read_text()))
            except (OSError, ValueError):
                continue
        return records

    def mark_stopped_by_shutdown(self, instance_id: str) -> None:
        record = self.get(instance_id)
        if record is not None:
            self.put(record.model_copy(update={"stopped_by_shutdown": True}))


def read_exit_status(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text().strip() or "null"))
    except (FileNotFoundError, ValueError, TypeError):
        return None
