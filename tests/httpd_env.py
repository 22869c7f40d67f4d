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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
