#!/usr/bin/env python3
"""A/B of module builds: two or more copies of mod_h2rs.so (the build
before a change and after it), each in an httpd of its own with the
benchmark's MPM settings and docroot, the chosen workloads of
scripts/bench.py run on them interleaved (A B A B ...) for several rounds.
Prints each run and the medians of req/s, the server's CPU per request,
peak RSS and p99. Writes nothing: A/B figures go in commit messages and
docs/INTERNALS.md.

A difference smaller than the spread of the rounds is noise on this kind
of machine (req/s moves ~10% between runs); for instruction counts use
`scripts/bench --callgrind`.

    cp build/mod_h2rs.so /tmp/before.so   # ... change, make ...
    scripts/bench --ab /tmp/before.so build/mod_h2rs.so --only "100 KiB"
"""
import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench import WORKLOADS, Server, make_docroot, measured_run  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="+", help="module files to compare (two or more)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--only", default="1 KiB, c100 m10",
                    help="workloads of scripts/bench.py whose name contains this (cleartext only)")
    args = ap.parse_args()
    modules = [pathlib.Path(m).resolve() for m in args.modules]
    missing = [str(m) for m in modules if not m.is_file()]
    if len(modules) < 2 or missing:
        sys.exit(f"need two or more module files{': missing ' + ', '.join(missing) if missing else ''}")
    workloads = [w for w in WORKLOADS if args.only in w[0] and not w[5]]
    if not workloads:
        sys.exit(f"no cleartext workload matches {args.only!r}")

    base = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-ab-"))
    os.chmod(base, 0o755)
    doc = make_docroot(base)
    # Labels by position: two builds often share a file name.
    servers = {f"{chr(ord('A') + i)} {m.name}": Server(base, f"ab{i}", f"LoadModule http2_module {m}\nH2Direct on", doc)
               for i, m in enumerate(modules)}
    results = {(name, label): [] for name, *_ in workloads for label in servers}
    try:
        for srv in servers.values():
            srv.start()
        for rnd in range(args.rounds):
            for name, path, h2args, _, timeout, _ in workloads:
                for label, srv in servers.items():
                    r = measured_run(srv, h2args + [f"http://127.0.0.1:{srv.port}{path}"], False, timeout)
                    results[(name, label)].append((r["rps"], r["cpu_us_per_req"], r["peak_rss_mib"], r["p99_ms"]))
                    print(f"round {rnd + 1} {name:18} {label:24} {r['rps']:9.0f} req/s  "
                          f"CPU {r['cpu_us_per_req']:6.1f} us/req  peak RSS {r['peak_rss_mib']:5.1f} MiB  "
                          f"p99 {r['p99_ms']:7.1f} ms  failed {r['failed']}", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
        crashed = [label for label, srv in servers.items() if (srv.dir / "error.log").exists() and srv.crashed()]
    print()
    for name, *_ in workloads:
        for label in servers:
            runs = results[(name, label)]
            if runs:
                print(f"median {name:18} {label:24} " + "  ".join(
                    f"{what} {statistics.median(r[i] for r in runs):.1f}"
                    for i, what in enumerate(("req/s", "CPU us/req", "peak RSS MiB", "p99 ms"))))
    shutil.rmtree(base, ignore_errors=True)
    if crashed:
        sys.exit(f"crash or panic in the error log of: {', '.join(crashed)}")


if __name__ == "__main__":
    main()
