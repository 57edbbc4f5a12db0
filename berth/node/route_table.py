"""Every deployment's route on this node, in one file of the folder Traefik watches.

Traefik's file provider rebuilds its whole configuration from every file in the folder at each
event it sees there. Measured with 700 deployments (two routers each), one route change cost
Traefik 619 ms of CPU and took 0.69 s to go live when each route was a file of its own, 353 ms and
0.39 s when all of them were in one file (and a burst of deployments is then written in a few
events, not one each: berth.node.route_publisher).

The file is JSON (which YAML, and so Traefik, reads), written whole by a rename from the staging
subfolder (one event; Traefik does not watch subfolders) and only when its content changes. Writers
in several processes (the worker; a test or a tool by hand) take the folder's lock around each
read-modify-write. Names keep the deployments apart: a deployment `x` owns the service and router
`berth-x` and the router and middleware `berth-x_<part>`; `_` never occurs in a deployment name.
"""

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from berth.common.atomic_write import write_atomically

log = logging.getLogger(__name__)

ROUTES_FILE = "_berth-routes.yml"
STAGING_DIR = ".staging"  # files are written here, then renamed into the watched folder
LOCK_FILE = "routes.lock"  # in the staging folder: taking it makes no event for Traefik
OWNED_PREFIX = "berth-"
PART_SEPARATOR = "_"
SECTIONS = ("routers", "middlewares", "services")

Route = dict  # one deployment's part of Traefik's dynamic configuration: {"http": {section: {name: ...}}}


def owner(name: str) -> str | None:
    """The deployment a router, middleware or service of this file belongs to."""
    if not name.startswith(OWNED_PREFIX):
        return None
    return name[len(OWNED_PREFIX):].split(PART_SEPARATOR, 1)[0] or None


def merge(routes: Mapping[str, Route]) -> dict:
    """One dynamic configuration holding every route, in a stable order."""
    http: dict = {section: {} for section in SECTIONS}
    for deployment in sorted(routes):
        for section in SECTIONS:
            http[section].update(routes[deployment].get("http", {}).get(section, {}))
    return {"http": {section: entries for section, entries in http.items() if entries}}


def split(config: Mapping) -> dict[str, Route]:
    """The routes of a merged configuration, by deployment (what `merge` joined)."""
    routes: dict[str, Route] = {}
    for section in SECTIONS:
        for name, entry in (config.get("http") or {}).get(section, {}).items():
            deployment = owner(name)
            if deployment is None:
                log.warning("route table: %s %r belongs to no deployment; dropped", section, name)
                continue
            routes.setdefault(deployment, {"http": {}})["http"].setdefault(section, {})[name] = entry
    return routes


class RouteTableError(RuntimeError):
    pass


class RouteTable:
    """The routes file of one routes folder. Cheap to make; reads are cached by the file's identity."""

    def __init__(self, routes_dir: Path):
        self.routes_dir = routes_dir
        self.path = routes_dir / ROUTES_FILE
        self._seen: tuple[int, int, int] | None = None
        self._routes: dict[str, Route] = {}

    def deployments(self) -> set[str]:
        return set(self._read())

    def route(self, deployment: str) -> Route | None:
        return self._read().get(deployment)

    def apply(self, changes: Mapping[str, Route | None]) -> int:
        """Put each route given (a dict) or remove it (None), in one write, and only if that
        changes the file. Returns how many routes the file then holds."""
        with self._locked():
            routes = dict(self._read())
            for deployment, route in changes.items():
                if route is None:
                    routes.pop(deployment, None)
                else:
                    routes[deployment] = route
            if routes != self._routes:
                if routes:
                    text = json.dumps(merge(routes), indent=1)
                    write_atomically(self.path, text, tmp_dir=self.routes_dir / STAGING_DIR)
                else:  # Traefik refuses an empty `http` section: no routes, no file
                    self.path.unlink(missing_ok=True)
                self._routes, self._seen = routes, self._identity()
            return len(routes)

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _read(self) -> dict[str, Route]:
        identity = self._identity()
        if identity is None:
            self._routes, self._seen = {}, None
        elif identity != self._seen:
            try:
                config = json.loads(self.path.read_text())
            except FileNotFoundError:  # replaced between the stat and the read: look again
                return self._read()
            except ValueError as error:
                raise RouteTableError(
                    f"{self.path} is not valid JSON ({error}): fix it, or move it aside and restart the "
                    "deployments whose routes it held (`berth` writes a new one; a deployment's route is "
                    "written when its engine starts)"
                ) from error
            self._routes, self._seen = split(config), identity
        return self._routes

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        staging = self.routes_dir / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        with open(staging / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
