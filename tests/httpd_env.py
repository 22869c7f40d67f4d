"""Where the system's httpd is (through apxs) and free loopback ports:
shared by the test harness (conftest.py) and the benchmarks (scripts/)."""
import os
import pathlib
import socket
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
APXS = os.environ.get("APXS", "apxs")


def apxs(var):
    return subprocess.check_output([APXS, "-q", var], text=True).strip()


HTTPD = os.path.join(apxs("SBINDIR"), apxs("TARGET"))
MODDIR = apxs("LIBEXECDIR")
MODULE = ROOT / "build" / "mod_h2rs.so"
STOCK_MODULE = pathlib.Path(MODDIR) / "mod_http2.so"


# Ports this process handed out: the kernel may give the same free port
# again at the next bind, and a server with two listeners (cleartext and
# TLS) then fails to start ("Cannot define multiple Listeners").
_ports_given = set()


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
