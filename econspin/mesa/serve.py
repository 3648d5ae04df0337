"""Serve the dashboard (:mod:`econspin.mesa.dashboard`) with solara's server, offline.

A Solara page loads its JavaScript and styles (Vue, Vuetify, require.js, fonts, the grid
layout) from a CDN unless they are installed locally. The ``solara-assets`` package (in the
``viz`` extra) installs them under ``<prefix>/share/solara/cdn``, which is solara's asset
proxy cache: with the proxy on, the page asks this server for every file and the server
answers from that folder. To make sure that nothing leaves the machine, the server runs with

- ``SOLARA_ASSETS_PROXY=true``: the browser fetches every asset from this server;
- ``SOLARA_ASSETS_CDN`` set to a local address that answers nothing, so that an asset
  missing from the cache fails here instead of being fetched from the internet;
- ``SOLARA_TELEMETRY_MIXPANEL_ENABLE=false``: no usage statistics;
- ``SOLARA_MODE=production``: no "check" iframe calling solara.dev, no auto-reload.

Each is a default: a variable already set in the environment wins (e.g. a CDN mirror).
The server is uvicorn over ``solara.server.starlette:app`` with ``SOLARA_APP`` naming the
page, solara's documented way to self-host; the socket is bound here first, so that a busy
port or a bad host is one clear error before anything starts.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import sys
import warnings
from pathlib import Path

from econspin.scenario import Scenario, ScenarioError

APP = "econspin.mesa.dashboard:Page"
UNREACHABLE_CDN = "http://127.0.0.1:9/no-cdn-offline/"  # the discard port: refused at once, never leaves the host
OFFLINE_ENVIRONMENT = {
    "SOLARA_ASSETS_PROXY": "true",
    "SOLARA_ASSETS_CDN": UNREACHABLE_CDN,
    "SOLARA_TELEMETRY_MIXPANEL_ENABLE": "false",
    "SOLARA_MODE": "production",
}
VIZ_PACKAGES = {"solara": "solara", "solara_assets": "solara-assets", "mesa.visualization": "mesa"}


class DashboardError(ScenarioError):
    """Why the dashboard cannot start (one line)."""


def check_viz_installed() -> None:
    """The viz extra is installed (solara, its local assets, Mesa's visualisation)."""
    missing = []
    for module, package in VIZ_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(package)
    if missing:
        raise DashboardError(f"the dashboard needs {', '.join(missing)}: pip install 'econspin[viz]'")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a DashboardError saying why not."""
    if not 1 <= port <= 65535:
        raise DashboardError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError):
        raise DashboardError(f"--host {host}: not a host name or address that resolves") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise DashboardError(f"--port {port}: already in use on {host}; choose another port") from None
        if error.errno == errno.EACCES:
            raise DashboardError(f"--port {port}: not allowed for this user (ports below 1024 need root)") from None
        raise DashboardError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None
    sock.set_inheritable(True)
    return sock


def offline_environment() -> dict[str, str]:
    """Set solara's settings for a server that fetches nothing from outside (existing values win)."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in OFFLINE_ENVIRONMENT}


def serve(scenario: Path, host: str = "127.0.0.1", port: int = 8765, announce=print) -> None:
    """Validate, bind, and serve the dashboard of ``scenario`` until interrupted."""
    check_viz_installed()
    Scenario.from_yaml(scenario)  # a bad file is a one-line error before the server starts
    sock = bind(host, port)
    if "solara" in sys.modules:
        sock.close()
        raise DashboardError("the dashboard must be served from a fresh process: solara reads its settings at import")
    offline_environment()
    from econspin.mesa.dashboard import SCENARIO_VARIABLE

    os.environ[SCENARIO_VARIABLE] = str(Path(scenario).resolve())
    os.environ["SOLARA_APP"] = APP
    import uvicorn

    config = uvicorn.Config("solara.server.starlette:app", log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    announce(f"econspin viz: {scenario} at http://{shown}:{port}/ (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        announce(f"econspin viz: listening on {host}: anyone who can reach this machine can open the page")
    # solara warns, on every page load from any host but "localhost", that its session cookie
    # falls back to SameSite=Lax over http: what a page that is not embedded in an iframe wants
    warnings.filterwarnings("ignore", message="Cookies with samesite=none require https")
    server.run(sockets=[sock])
