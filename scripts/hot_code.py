#!/usr/bin/env python3
"""Writes link/hot-code.ld: the functions of mod_h2rs.so that httpd runs,
grouped at the front of the code, so that each httpd process maps fewer
of the module's pages.

Why: the kernel maps a shared library's cached pages around each page a
process touches (fault-around, whole large folios), so a few hot functions
scattered through 700 KiB of code made every child map nearly all of it.
With the functions httpd runs packed together, the cold rest (the reverse
proxy, WebSockets, std's backtrace printer, error paths) stays unmapped
until something uses it.

How: httpd runs in the foreground under callgrind (which follows the
fork of each child and writes one profile per process) with the module
built by `make`, through a mixed load: paced and multiplexed 1 KiB GETs,
100 KiB files, CGI, a 404, an h2c upgrade, and the GETs and files again
over TLS (a vhost with mod_ssl). Every function of the module
that ran is listed: those only the parent ran (configuration), those both
ran, then those only the children ran, each group most instructions
first, as input-section patterns of a file that the Makefile includes at
the top of .text in GNU ld's default script (a separate output section
would hide these functions from valgrind, which reads symbols of .text
only). Patterns end in `17h*` in place of the symbol hash, so the list
outlives rebuilds, unless that would also take in instances of a generic
function that did not run; a function renamed since simply lands in
.text again.

Run it through `scripts/hot-code` after changes that move code around;
`tests/test_build.py` fails when too few of the listed functions are
still found at the front of .text.
"""
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench import OURS, ROOT, Server, h2load, make_docroot, make_tls_cert  # noqa: E402
from bench_callgrind import annotated, under_callgrind  # noqa: E402

SCRIPT = ROOT / "link" / "hot-code.ld"


def profile(base, doc):
    """Runs the mixed load against httpd under callgrind; returns
    (parent's {function: instructions}, the children's)."""
    # With a TLS vhost too: most clients reach HTTP/2 over TLS, and c1's
    # reads through mod_ssl, its TLS record sizing and the environment
    # mod_ssl has filled run only there (without them in the list a TLS
    # child mapped 28 more pages of the module's code).
    tls = make_tls_cert(base)
    srv = Server(base, "hot", f"LoadModule http2_module {OURS}\nH2Direct on", doc, tls)
    out_dir = base / "callgrind"
    out_dir.mkdir()
    os.chmod(out_dir, 0o777)  # children write as httpd's User
    callgrind_args = ["--demangle=no", f"--callgrind-out-file={out_dir}/out.%p",
                      # a child inherits the parent's counts with the fork:
                      # out.PID.1 holds those, out.PID the child's own
                      "--dump-before=h2rs_child_init", "--fair-sched=yes"]
    with under_callgrind(srv, callgrind_args, base / "valgrind.log", ("-DFOREGROUND",)) as proc:
        url = f"http://127.0.0.1:{srv.port}"
        loads = [["-n", "300", "-c", "20", "-m", "1", "--rps", "10", url + "/1k.bin"],
                 ["-n", "3000", "-c", "100", "-m", "10", url + "/1k.bin"],
                 ["-n", "200", "-c", "4", "-m", "4", url + "/100k.bin"],
                 ["-n", "20", "-c", "2", "-m", "2", url + "/cgi/hello.cgi"]]
        if tls:
            tls_url = f"https://127.0.0.1:{srv.tls_port}"
            loads += [["-n", "300", "-c", "20", "-m", "1", "--rps", "10", tls_url + "/1k.bin"],
                      ["-n", "3000", "-c", "50", "-m", "10", tls_url + "/1k.bin"],
                      ["-n", "200", "-c", "4", "-m", "4", tls_url + "/100k.bin"]]
        for args in loads:
            r = h2load(srv, args, False, 600)
            if r["done"] == 0:
                raise RuntimeError(f"h2load {' '.join(args)} answered nothing")
        for flag, path in (("--http2", "/nonexistent"), ("--http2-prior-knowledge", "/")):
            subprocess.run(["curl", "-s", "-o", "/dev/null", flag, url + path], check=True)
    parent, children = collections.Counter(), collections.Counter()
    outs = {p.name for p in out_dir.iterdir()}
    for name in outs:
        is_child = name != f"out.{proc.pid}" and f"{name}.1" in outs
        (children if is_child else parent).update(module_costs(out_dir / name))
    return parent, children


def module_costs(path):
    """{mangled function of mod_h2rs.so: exclusive instructions}."""
    costs = collections.Counter()
    for instructions, fn in annotated(path):
        m = re.match(r"(?:.*?:)?(\S+) \[(.*)\]$", fn)
        if m and m[2].endswith("mod_h2rs.so") and not m[1].startswith("0x"):
            costs[re.sub(r"'\d+$", "", m[1])] += instructions
    return costs


def pattern(symbol):
    """A symbol as a pattern that survives a rebuild and another toolchain:
    legacy-mangled Rust names lose their hash; std's (v0-mangled,
    precompiled) names lose their crates' disambiguators (`Cs<hash>_`,
    which change with every Rust release) and the back-references into
    the name (`B<offset>_`, which move when a hash changes length)."""
    if symbol.startswith("_R"):
        return re.sub(r"B[0-9A-Za-z]*_", "B*_", re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", symbol))
    return re.sub(r"17h[0-9a-f]{16}E(\.llvm\.\d+)?$", "17h*", symbol)


def module_symbols():
    """The names of the functions in the built module."""
    out = subprocess.run(["nm", "--defined-only", str(OURS)], capture_output=True, text=True, check=True).stdout
    return [f[2] for f in (line.split() for line in out.splitlines()) if len(f) == 3 and f[1] in "tT"]


def patterns_for(functions, symbols):
    """The patterns of `functions`, in order. A pattern that would also take
    in functions that did not run keeps the symbol's own name instead
    (LTO's `.llvm.<n>` suffix left open where the function that ran had
    one; where it had none, the name is exact, since another copy with the
    same name and a suffix can come from another object and never run, and
    the pattern then named it too): the instances of a generic
    function differ only in their hash, and one pattern for all of them
    put every instance, such as std's backtrace symbolizer behind
    `OnceCell::try_init`, among the hot code. With exact names for those
    and the parent's share apart, the list went from 440 to 360 KiB and
    the server's four processes mapped 140 KiB less of the module's code
    after a 1 KiB and a 100 KiB load (221-224 pages against 256-259, two
    runs each, 2026-12-05)."""
    ran = set(functions)
    by_pattern = {}
    for sym in symbols:
        by_pattern.setdefault(pattern(sym), []).append(sym)
    out = []
    for f in functions:
        p = pattern(f)
        if any(other not in ran for other in by_pattern.get(p, ())):
            p = re.sub(r"\.llvm\.\d+$", "", f) + "*" if re.search(r"\.llvm\.\d+$", f) else f
        out.append(p)
    return list(dict.fromkeys(out))


def write_script(parent, children):
    # The functions only the parent ran (configuration, start-up) first,
    # then those both ran, then the children's own: the parent maps the
    # front of the list and the children the rest. (The parent's functions
    # had come first with those both ran mixed in among them, so every
    # child mapped the parent's share too.)
    order = [f for f, _ in parent.most_common() if f not in children]
    order += [f for f, _ in children.most_common() if f in parent]
    order += [f for f, _ in children.most_common() if f not in parent]
    patterns = patterns_for(order, module_symbols())
    lines = ["/* Generated by scripts/hot-code (scripts/hot_code.py): the functions of",
             "   mod_h2rs.so that httpd ran under a mixed load: those only the parent",
             "   ran, those both ran, then the children's own (most instructions first).",
             "   The Makefile includes this at the top of .text in ld's default script,",
             "   so they sit together and a process maps fewer of the module's pages.",
             "   #[cold] functions are in .text.unlikely.*. */"]
    lines += [f"    *(.text.{p} .text.unlikely.{p})" for p in patterns]
    lines.append("")
    SCRIPT.parent.mkdir(exist_ok=True)
    SCRIPT.write_text("\n".join(lines))
    return len(patterns)


def main():
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    base = pathlib.Path(tempfile.mkdtemp(prefix="h2rs-hot-code-"))
    os.chmod(base, 0o755)
    parent, children = profile(base, make_docroot(base))
    n = write_script(parent, children)
    print(f"wrote {SCRIPT}: {n} functions ({len(children)} run by children, "
          f"{len(set(parent) - set(children))} by the parent only)")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
