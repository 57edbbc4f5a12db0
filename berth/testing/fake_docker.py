"""A fake Docker Engine: a real HTTP server on 127.0.0.1 that answers the part of the Docker Engine
API that berth's container runtime uses, so that tests drive the real `docker` SDK against it and
assert the exact requests it sends. Point the SDK at it with DOCKER_HOST=tcp://127.0.0.1:PORT.

    with FakeDocker() as fake:
        ...                                   # code under test talks to fake.url
        fake.requests_to("POST", "/containers/create")[0].body
        fake.exit(container_id, 137, oom_killed=True, logs=["..."])

Answered: GET /_ping, GET /version, POST /containers/create, POST /containers/{id}/start,
GET /containers/{id}/json, GET /containers/json (all, label filters), GET /containers/{id}/logs
(multiplexed, as for a container without a TTY), POST /containers/{id}/stop, DELETE
/containers/{id}. Paths may carry the API version prefix (/v1.45/...).
"""

import json
import re
import secrets
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API_VERSION = "1.45"


@dataclass
class SeenRequest:
    method: str
    path: str  # without the /vX.Y prefix and the query
    query: dict[str, list[str]]
    body: dict | None


@dataclass
class FakeContainer:
    id: str
    name: str
    config: dict
    host_config: dict
    state: dict = field(
        default_factory=lambda: {
            "Status": "created", "Running": False, "Restarting": False, "Paused": False,
            "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
        }
    )
    logs: list[tuple[int, str]] = field(default_factory=list)  # (1 stdout | 2 stderr, line)

    def inspect(self) -> dict:
        return {
            "Id": self.id, "Name": "/" + self.name, "Image": "sha256:" + "0" * 64,
            "Config": self.config, "HostConfig": self.host_config, "State": self.state,
        }

    def summary(self) -> dict:
        return {
            "Id": self.id, "Names": ["/" + self.name], "Image": self.config.get("Image"),
            "Command": " ".join(self.config.get("Cmd") or []), "Labels": self.config.get("Labels") or {},
            "State": self.state["Status"], "Status": self.state["Status"],
        }


class FakeDocker:
    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.requests: list[SeenRequest] = []
        self.missing_images: set[str] = set()
        self.start_error: str | None = None  # answer container starts with this 500 error
        self.lock = threading.Lock()
        self.gone = False
        self._next_pid = 40000
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeDocker":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering (connection refused from now on), as a Docker engine that went away."""
        self.gone = True  # and hang up on kept-alive connections
        self.server.shutdown()
        self.server.server_close()

    # --- what tests look at and do ---------------------------------------------------------------

    def requests_to(self, method: str, pattern: str) -> list[SeenRequest]:
        """Requests whose method matches and whose path fully matches the regex `pattern`."""
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    def container(self, id_or_name: str) -> FakeContainer | None:
        for container in self.containers.values():
            if container.id.startswith(id_or_name) or container.name == id_or_name.lstrip("/"):
                return container
        return None

    def log(self, container_id: str, *lines: str, stream: int = 2) -> None:
        self.container(container_id).logs.extend((stream, line) for line in lines)

    def exit(self, container_id: str, exit_code: int, oom_killed: bool = False, logs: list[str] = (), error: str = "") -> None:
        """The container's process ends (as if it crashed, or the kernel killed it)."""
        container = self.container(container_id)
        self.log(container_id, *logs)
        container.state.update(
            Status="exited", Running=False, Pid=0, ExitCode=exit_code, OOMKilled=oom_killed, Error=error
        )

    # --- the API ----------------------------------------------------------------------------------

    def answer(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, object]:
        if path == "/_ping":
            return 200, "OK"
        if path == "/version":
            return 200, {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24", "Version": "27.0.0-fake", "Os": "linux", "Arch": "amd64"}
        if method == "POST" and path == "/containers/create":
            return self._create(query.get("name", [""])[0], body or {})
        if method == "GET" and path == "/containers/json":
            return 200, self._list(query)
        found = re.fullmatch(r"/containers/([^/]+)(?:/(\w+))?", path)
        if not found:
            return 404, {"message": f"page not found: {method} {path}"}
        container = self.container(found.group(1))
        if container is None:
            return 404, {"message": f"No such container: {found.group(1)}"}
        action = found.group(2)
        if method == "GET" and action == "json":
            return 200, container.inspect()
        if method == "POST" and action == "start":
            return self._start(container)
        if method == "POST" and action == "stop":
            if not container.state["Running"]:
                return 304, None
            container.state.update(Status="exited", Running=False, Pid=0, ExitCode=0)
            return 204, None
        if method == "GET" and action == "logs":
            return 200, self._logs(container, query)
        if method == "DELETE" and action is None:
            if container.state["Running"] and query.get("force", ["0"])[0] not in ("1", "true", "True"):
                return 409, {"message": f"cannot remove container {container.name}: it is running"}
            del self.containers[container.id]
            return 204, None
        return 404, {"message": f"page not found: {method} {path}"}

    def _create(self, name: str, body: dict) -> tuple[int, object]:
        image = body.get("Image", "")
        if image in self.missing_images:
            return 404, {"message": f"No such image: {image}"}
        if name and self.container(name) is not None:
            return 409, {"message": f'Conflict. The container name "/{name}" is already in use'}
        container_id = secrets.token_hex(32)
        config = {key: value for key, value in body.items() if key not in ("HostConfig", "NetworkingConfig")}
        config.setdefault("Tty", False)
        name = name or f"fake_{container_id[:12]}"
        self.containers[container_id] = FakeContainer(container_id, name, config, body.get("HostConfig") or {})
        return 201, {"Id": container_id, "Warnings": []}

    def _start(self, container: FakeContainer) -> tuple[int, object]:
        if self.start_error is not None:
            container.state.update(Status="created", Error=self.start_error, ExitCode=128)
            return 500, {"message": self.start_error}
        if container.state["Running"]:
            return 304, None
        self._next_pid += 1
        container.state.update(Status="running", Running=True, Pid=self._next_pid, ExitCode=0, Error="")
        return 204, None

    def _list(self, query: dict) -> list[dict]:
        filters = json.loads(query.get("filters", ["{}"])[0] or "{}")
        labels = filters.get("label", [])
        if isinstance(labels, dict):
            labels = [key for key, wanted in labels.items() if wanted]
        everything = query.get("all", ["0"])[0] in ("1", "true", "True")
        found = []
        for container in self.containers.values():
            if not everything and not container.state["Running"]:
                continue
            have = container.config.get("Labels") or {}
            if all(_label_matches(have, wanted) for wanted in labels):
                found.append(container.summary())
        return found

    def _logs(self, container: FakeContainer, query: dict) -> bytes:
        wanted = {1} if query.get("stdout", ["0"])[0] == "1" else set()
        wanted |= {2} if query.get("stderr", ["0"])[0] == "1" else set()
        lines = [(stream, line) for stream, line in container.logs if stream in wanted]
        tail = query.get("tail", ["all"])[0]
        if tail != "all":
            lines = lines[-int(tail):] if int(tail) > 0 else []
        frames = b""
        for stream, line in lines:
            payload = (line + "\n").encode()
            frames += struct.pack(">BxxxL", stream, len(payload)) + payload
        return frames


def _label_matches(have: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in have and (not sep or have[key] == value)


def _handler(fake: FakeDocker) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _serve(self) -> None:
            if fake.gone:
                self.close_connection = True
                return
            parts = urlsplit(self.path)
            path = re.sub(r"^/v[\d.]+(?=/)", "", parts.path)
            query = parse_qs(parts.query)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw.strip() else None
            with fake.lock:
                fake.requests.append(SeenRequest(self.command, path, query, body))
                status, payload = fake.answer(self.command, path, query, body)
            if isinstance(payload, bytes):
                data, kind = payload, "application/vnd.docker.multiplexed-stream"
            elif isinstance(payload, str):
                data, kind = payload.encode(), "text/plain; charset=utf-8"
            elif payload is None:
                data, kind = b"", "text/plain"
            else:
                data, kind = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Api-Version", API_VERSION)
            self.end_headers()
            if data and status not in (204, 304):
                self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_HEAD = _serve

    return Handler
