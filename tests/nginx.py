"""A real nginx in front of fusion-mcp replicas, running the documented config (``docs/nginx/fusion-mcp.conf``).

Only the addresses change: the public port and the replicas' ports, so tests and benchmarks can pick free
ones. nginx runs from a scratch directory (its configuration, pid file, logs and temporary files), as
its own daemon, until :func:`stop`.

``.ci/run`` starts one for the test run and stops it at the end::

    python -m tests.nginx start DIR     # prints FUSION_TEST_NGINX(_DIR)=... and FUSION_TEST_REPLICAS=...
    python -m tests.nginx stop DIR
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "docs" / "nginx" / "fusion-mcp.conf"
DOCUMENTED = {"listen": 8080, "a": 8001, "b": 8002}
"""The addresses the documented config uses."""
MAIN = """\
worker_processes 1;
daemon on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    include {dir}/fusion-mcp.conf;
}}
"""


@dataclass(frozen=True)
class Nginx:
    directory: Path
    port: int
    replicas: dict[str, int]
    """Replica name -> the port nginx expects it on."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The master and its workers (whose CPU time is the proxy's)."""
        master = int((self.directory / "nginx.pid").read_text())
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [master, *map(int, children)]


def binary() -> str | None:
    """``FUSION_NGINX``, else nginx on the PATH or where Debian puts it."""
    found = os.environ.get("FUSION_NGINX") or shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


QUIET_PORTS = range(20000, 30000)
"""Below the kernel's ephemeral range (32768 and up): a port chosen now and listened on later (the replicas'
ports, chosen when nginx starts) cannot be handed to another test's server in between."""


def free_port() -> int:
    """A port nobody listens on, from :data:`QUIET_PORTS`."""
    for port in random.sample(QUIET_PORTS, 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {QUIET_PORTS}")


def site(port: int, replicas: dict[str, int]) -> str:
    """The documented config with these addresses; it must still contain every documented one."""
    text = SITE.read_text()
    listen = f"listen {DOCUMENTED['listen']};"
    assert listen in text, f"{SITE} no longer has '{listen}'"
    text = text.replace(listen, f"listen 127.0.0.1:{port};")
    for name, documented in DOCUMENTED.items():
        if name != "listen":
            assert f"127.0.0.1:{documented}" in text, f"{SITE} no longer names replica {name} at {documented}"
            text = re.sub(rf"127\.0\.0\.1:{documented}\b", f"127.0.0.1:{replicas[name]}", text)
    return text


def start(directory: Path, port: int | None = None, replicas: dict[str, int] | None = None) -> Nginx:
    """nginx on ``port`` in front of ``replicas`` (free ports by default), running when this returns."""
    found = binary()
    if found is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx), and FUSION_NGINX is not set")
    port = port or free_port()
    replicas = replicas or {name: free_port() for name in DOCUMENTED if name != "listen"}
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    # Run as root, nginx's workers drop to an unprivileged user that must write request bodies here.
    for path in (directory, directory / "tmp", *(directory / "tmp").iterdir()):
        path.chmod(0o777)
    (directory / "fusion-mcp.conf").write_text(site(port, replicas))
    (directory / "nginx.conf").write_text(MAIN.format(dir=directory))
    done = subprocess.run(
        [found, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(directory / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"nginx did not start: {done.stderr.strip()}")
    end = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > end:
                log = (directory / "error.log").read_text()
                raise RuntimeError(f"nginx is not listening on {port}: {log}") from None
            time.sleep(0.05)
    return Nginx(directory, port, replicas)


def stop(directory: Path) -> None:
    """Stop the nginx running from ``directory`` (quickly: open streams are cut), and wait until it is gone."""
    pid_file = directory / "nginx.pid"
    if not pid_file.exists():
        return
    master = int(pid_file.read_text())
    try:
        os.kill(master, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + 10
    while Path(f"/proc/{master}").exists() and time.monotonic() < end:
        time.sleep(0.05)


def from_environment() -> Nginx | None:
    """The nginx ``.ci/run`` started (``FUSION_TEST_NGINX``, ``FUSION_TEST_REPLICAS``, ``FUSION_TEST_NGINX_DIR``),
    if any."""
    url = os.environ.get("FUSION_TEST_NGINX")
    if not url:
        return None
    replicas = dict(item.split(":") for item in os.environ["FUSION_TEST_REPLICAS"].split(","))
    return Nginx(
        Path(os.environ["FUSION_TEST_NGINX_DIR"]),
        int(url.rsplit(":", 1)[1]),
        {name: int(port) for name, port in replicas.items()},
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.nginx start|stop DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1]).resolve()
    if argv[0] == "stop":
        stop(directory)
        return 0
    running = start(directory)
    print(f"FUSION_TEST_NGINX_DIR={directory}")
    print(f"FUSION_TEST_NGINX={running.url}")
    print("FUSION_TEST_REPLICAS=" + ",".join(f"{name}:{port}" for name, port in running.replicas.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
