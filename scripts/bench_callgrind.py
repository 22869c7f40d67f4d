#!/usr/bin/env python3
"""User-space instructions per request, counted by callgrind: mod_h2rs, the
stock mod_http2 and HTTP/1.1 in the same httpd, one process (`httpd -X`).

A count does not depend on what else the machine does (repeated runs
differ by about 1%, from timers and wake-ups), so it shows a change of a
few percent that req/s and CPU time hide in their noise. Each
server runs twice under callgrind with paced 1 KiB GETs (h2load, 20
clients, one request at a time, 10/s each: every request wakes the
connection, as on a real site), once with --small and once with --large
requests; the difference of the two totals, per request, leaves out
start-up and shutdown. Kernel time is not counted (see scripts/bench for
CPU time).

Run it through `scripts/bench --callgrind` (sets up the venv). Prints the
totals and the functions that cost most per request; writes
docs/bench-callgrind.md.
"""
import argparse
import collections
import contextlib
import datetime
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench import OURS, STOCK, HTTPD, ROOT, Server, h2load, make_docroot, versions  # noqa: E402


def end_group(pgid, grace=10.0):
    """Ends what is left of the process group `pgid` (ours): mod_cgid's
    daemon, forked by httpd under valgrind, did not always exit with
    `httpd -X` and stayed behind, under valgrind, after a run. SIGTERM
    (valgrind then writes its profile), SIGKILL after `grace` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return  # the group is empty
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def under_valgrind(valgrind_args, conf, port, errlog, httpd_args=("-X",)):
    """Runs httpd (config `conf`) under valgrind with `valgrind_args` (the
    tool and its options) until the block ends (then SIGTERM); yields the
    process once the server accepts connections on `port`."""
    with open(errlog, "w") as err:  # the child keeps its own descriptor
        # A process group of its own: what httpd forks runs under valgrind
        # too, and is ended with it below.
        proc = subprocess.Popen(["valgrind", *valgrind_args, HTTPD, *httpd_args, "-f", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        for _ in range(900):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"httpd under valgrind exited: see {errlog}")
                time.sleep(0.2)
        else:
            raise RuntimeError(f"httpd under valgrind did not answer: see {errlog}")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        end_group(proc.pid)


@contextlib.contextmanager
def under_callgrind(srv, callgrind_args, errlog, httpd_args=("-X",)):
    """Runs `srv`'s httpd under callgrind until the block ends (then SIGTERM);
    yields the process once the server accepts connections."""
    with under_valgrind(["--tool=callgrind", *callgrind_args], srv.dir / "httpd.conf", srv.port, errlog,
                        httpd_args) as proc:
        yield proc
    if srv.crashed():
        raise RuntimeError(f"{srv.name}: the error log shows a crash ({srv.dir / 'error.log'})")


def count(base, doc, key, module_line, h1, requests):
    """Runs one server under callgrind for `requests` paced requests;
    returns (requests done, {function: instructions})."""
    srv = Server(base, f"{key}-{requests}", module_line, doc)
    out_dir = base / "callgrind"
    out_dir.mkdir(exist_ok=True)
    os.chmod(out_dir, 0o777)  # the child writes as httpd's User
    # One file per process (%p): mod_cgid's daemon, forked from httpd,
    # runs under callgrind too, and with one name for both whichever
    # process ended last overwrote the other's counts.
    pattern = out_dir / f"{key}-{requests}.%p.out"
    with under_callgrind(srv, [f"--callgrind-out-file={pattern}"], base / f"{key}-{requests}.valgrind.log") as proc:
        out = out_dir / f"{key}-{requests}.{proc.pid}.out"
        # valgrind creates its output file before httpd switches user.
        if out.exists() and os.geteuid() == 0:
            shutil.chown(out, user="www-data")
        url = f"http://127.0.0.1:{srv.port}/1k.bin"
        r = h2load(srv, ["-n", str(requests), "-c", "20", "-m", "1", "--rps", "10", url], h1, 600)
    return r["done"], self_costs(out)


def annotated(path):
    """(exclusive instructions, `file:function [object]`) for every function
    in a callgrind output file."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", "--auto=no", str(path)],
                          capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)", line)
        if m and ":" in m[2] and "PROGRAM TOTALS" not in m[2]:
            yield int(m[1].replace(",", "")), m[2]


def self_costs(path):
    """{function: exclusive instructions} from a callgrind output file."""
    costs = collections.Counter()
    objects = {}
    for instructions, fn in annotated(path):
        name, obj = split_name(fn)
        costs[name] += instructions
        objects[name] = obj or objects.get(name)
    # callgrind_annotate names the object on some lines of a function and
    # not on others: one entry per function, with its object where known.
    return collections.Counter({f"{name} ({objects[name]})" if objects[name] else name: c
                                for name, c in costs.items()})


def split_name(fn):
    """`file:function [object]` -> (`function`, object file name or None)."""
    m = re.match(r"(?:.*?:)?(.+?)(?: \[(.*)\])?$", fn.strip())
    name, obj = (m[1], m[2]) if m else (fn, None)
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    return name, os.path.basename(obj) if obj else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=400)
    ap.add_argument("--large", type=int, default=2400)
    ap.add_argument("--top", type=int, default=25, help="functions listed per server")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--keep", action="store_true",
                    help="keep the callgrind files (for callgrind_annotate --tree=caller) and say where")
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    base = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-callgrind-"))
    os.chmod(base, 0o755)
    doc = make_docroot(base)
    servers = {"mod_h2rs": (f"LoadModule http2_module {OURS}\nH2Direct on", False)}
    if STOCK.exists():
        servers["stock"] = (f"LoadModule http2_module {STOCK}\nH2Direct on", False)
    servers["HTTP/1.1"] = ("", True)
    per_request = {}
    for key, (module_line, h1) in servers.items():
        tag = re.sub(r"\W", "", key)
        n_small, small = count(base, doc, tag, module_line, h1, args.small)
        n_large, large = count(base, doc, tag, module_line, h1, args.large)
        if n_small != args.small or n_large != args.large:
            sys.exit(f"{key}: {n_small}/{args.small} and {n_large}/{args.large} requests answered")
        n = n_large - n_small
        per_request[key] = {f: (large[f] - small[f]) / n for f in set(small) | set(large)}
        total = sum(per_request[key].values())
        if total <= 0:
            # Seen once on a loaded host: one run's profile was cut short.
            sys.exit(f"{key}: the {args.large}-request run counted fewer instructions than the "
                     f"{args.small}-request one ({total:.0f} per request); run again")
        print(f"{key:9} {total:9.0f} instructions per request", flush=True)
    lines = [f"# User-space instructions per request ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             "; ".join(f"{k}: {v}" for k, v in versions().items()), "",
             "callgrind on `httpd -X` (event MPM), paced 1 KiB GETs (h2load, 20 clients x 10 req/s, one "
             f"request at a time), the difference of a {args.large}- and a {args.small}-request run per "
             "request. Kernel time is not counted. `scripts/bench --callgrind` writes this file.", "",
             "| server | instructions per request | / HTTP/1.1 |", "|---|---:|---:|"]
    h1_total = sum(per_request["HTTP/1.1"].values())
    for key, costs in per_request.items():
        total = sum(costs.values())
        lines.append(f"| {key} | {total:,.0f} | {total / h1_total:.2f} |")
    for key, costs in per_request.items():
        lines += ["", f"## {key}: the {args.top} costliest functions (exclusive)", "",
                  "| instructions per request | function |", "|---:|---|"]
        for fn, c in sorted(costs.items(), key=lambda x: -x[1])[:args.top]:
            lines.append(f"| {c:,.0f} | `{fn}` |")
    out = pathlib.Path(args.out) / "bench-callgrind.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    if args.keep:
        print(f"callgrind files kept in {base / 'callgrind'}")
    else:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
