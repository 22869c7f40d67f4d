"""The built module's layout: the functions httpd runs (link/hot-code.ld,
written by scripts/hot-code) sit together at the front of .text."""
import fnmatch
import os
import re
import struct
import subprocess

import pytest

from conftest import h2load
from httpd_env import MODULE, ROOT

# The kernel maps a file's cached pages around each page fault, in windows
# of this size (fault-around), so a process shows the whole window.
FAULT_AROUND = 64 * 1024


def text_section():
    """(address, file offset, size) of the module's .text."""
    out = subprocess.run(["readelf", "-SW", str(MODULE)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.replace("[ ", "[").split()
        if len(fields) > 5 and fields[1] == ".text":
            return int(fields[3], 16), int(fields[4], 16), int(fields[5], 16)
    raise AssertionError(f"{MODULE} has no .text")


def code_symbols():
    out = subprocess.run(["nm", "-S", str(MODULE)], capture_output=True, text=True, check=True).stdout
    return [(f[3], int(f[0], 16), int(f[1], 16)) for f in map(str.split, out.splitlines())
            if len(f) == 4 and f[2] in "tT"]


def listed_functions():
    """The function patterns of link/hot-code.ld, without the section prefix."""
    return re.findall(r"\*\(\.text\.(\S+) \.text\.unlikely\.\S+\)", (ROOT / "link" / "hot-code.ld").read_text())


def hot_region():
    """(functions of the list found in the module, end of the last one).
    Of the functions a pattern names, the first counts: a pattern with an
    open LTO suffix can also name copies of the function in other objects
    whose sections carry other names and stay in the rest of .text (three
    copies of `drop_in_place<Vec<u8>>`, 2026-12-06)."""
    start, _, _ = text_section()
    symbols = code_symbols()
    found, hot_end = 0, start
    for p in listed_functions():
        matches = [(addr, length) for name, addr, length in symbols if fnmatch.fnmatchcase(name, p)]
        found += bool(matches)
        if matches:
            hot_end = max(hot_end, min(addr + length for addr, length in matches))
    return found, hot_end


def test_listed_functions_sit_together_at_the_front_of_text():
    start, _, size = text_section()
    patterns = listed_functions()
    assert len(patterns) > 200, "link/hot-code.ld lists too few functions"
    found, hot_end = hot_region()
    # Functions renamed or inlined since the list was made fall back to the
    # rest of .text; once many have, the list needs making again.
    assert found >= 0.85 * len(patterns), (
        f"only {found} of {len(patterns)} functions of link/hot-code.ld are in the module: "
        "run scripts/hot-code")
    # Linked without the list, these functions spread over all of .text.
    assert hot_end - start < 0.5 * size, (
        f"the listed functions span {hot_end - start} of {size} bytes of .text: "
        "was the module linked with build/module.ld?")


def glibc_version():
    out = subprocess.run(["getconf", "GNU_LIBC_VERSION"], capture_output=True, text=True).stdout.split()
    return tuple(int(x) for x in out[-1].split(".")[:2]) if out else (0, 0)


@pytest.mark.skipif(glibc_version() < (2, 36), reason="glibc older than 2.36 has no packed relocations")
def test_relative_relocations_are_packed():
    """Every process that looks a symbol up (dlsym, a library loaded later)
    reads the module's hash table, and the kernel maps the whole first
    segment around it: with ~1,500 relative relocations in it unpacked,
    52 KiB in each child; packed (DT_RELR), 16."""
    versions = subprocess.run(["readelf", "-V", str(MODULE)], capture_output=True, text=True, check=True).stdout
    assert "GLIBC_ABI_DT_RELR" in versions, "linked without -z pack-relative-relocs (see the Makefile's PACK_RELOCS)"
    out = subprocess.run(["readelf", "-lW", str(MODULE)], capture_output=True, text=True, check=True).stdout
    first_load = next(line.split() for line in out.splitlines() if line.split()[:1] == ["LOAD"])
    assert int(first_load[4], 16) <= 24 * 1024, first_load


def page_entry(pagemap, addr):
    """The process's page map entry for the page at `addr`."""
    pagemap.seek(addr // 4096 * 8)
    return struct.unpack("<Q", pagemap.read(8))[0]


def is_resident(pagemap, addr):
    """Whether the page at `addr` is present, by the process's page map."""
    return bool(page_entry(pagemap, addr) >> 63)


KPF_COMPOUND_TAIL = 16
# Pages in the largest folio the page cache makes (PMD size).
MAX_FOLIO_PAGES = 512


def pages_before_in_folio(kpageflags, pfn):
    """How many pages of its folio come before the page at `pfn` (0 for a
    small folio or a head): a large folio's tail pages follow its head in
    physical memory, as they follow it in the file."""
    back = 0
    while back < MAX_FOLIO_PAGES and pfn > back:
        kpageflags.seek((pfn - back) * 8)
        if not struct.unpack("<Q", kpageflags.read(8))[0] >> KPF_COMPOUND_TAIL & 1:
            break
        back += 1
    return back


def resident_code_pages(pid):
    """(offset in the module's file, offset of its page cache folio's first
    page) of each code page resident in `pid`."""
    pages = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap, \
            open("/proc/kpageflags", "rb") as kpageflags:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or fields[5] != str(MODULE) or "x" not in fields[1]:
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            for addr in range(lo, hi, 4096):
                entry = page_entry(pagemap, addr)
                if entry >> 63:
                    offset = int(fields[2], 16) + addr - lo
                    pfn = entry & ((1 << 55) - 1)
                    pages.append((offset, offset - 4096 * pages_before_in_folio(kpageflags, pfn)))
    return pages


def code_pages_past_the_list(srv):
    """Runs the load the list was made for against a fresh `srv`; returns
    {file offset of each code page a child maps past the listed functions
    (and the fault-around window after them)}."""
    srv.start()
    for args in (["-n", "200", "-c", "10", "-m", "1", "--rps", "50"], ["-n", "3000", "-c", "20", "-m", "10"]):
        r = h2load(*args, srv.url("/1k.bin"))
        assert r.get("succeeded") == int(args[1]), r["output"]
    r = h2load("-n", "40", "-c", "4", "-m", "4", srv.url("/100k.bin"))
    assert r.get("succeeded") == 40, r["output"]
    _, hot_end = hot_region()
    # The page map gives file offsets; the list's end is an address.
    text_addr, text_offset, _ = text_section()
    limit = hot_end - text_addr + text_offset + FAULT_AROUND
    children = srv.mpm_children()
    assert children
    # A large folio of the page cache is mapped whole when any of its pages
    # faults: one that begins within the tolerance and reaches past it was
    # mapped for listed code (seen in CI: a 32 KiB folio from 0x68000, the
    # limit at 0x6ac37, five pages past it in every child of two servers).
    past = {o for pid in children for o, folio in resident_code_pages(pid) if o >= limit and folio >= limit}
    srv.stop()
    return past


def functions_on_pages(offsets):
    """Names of the module's functions on the code pages at these file
    offsets, biggest first: where to look when the list misses one."""
    text_addr, text_offset, _ = text_section()
    pages = {o // 4096 for o in offsets}
    found = []
    for name, addr, length in code_symbols():
        start = addr - text_addr + text_offset
        if any(page in pages for page in range(start // 4096, (start + max(length, 1) - 1) // 4096 + 1)):
            found.append((length, name))
    return [name for _, name in sorted(found, reverse=True)]


@pytest.mark.skipif(os.geteuid() != 0, reason="reading the children's page maps needs root")
def test_a_child_serving_http2_maps_no_code_past_the_listed_functions(make_server):
    """A function on the request path that is missing from the list (added
    after the list was made) lands in the cold rest of .text, and every
    child that runs it maps the 64 KiB around it (or the whole large folio
    of the page cache that holds it): ~200 KiB per child once.
    A rare path that timing alone decides (a wait at a limit, a slow
    client) can map a folio in one run too; what a missing function maps,
    it maps again with fresh children, so only pages mapped in two runs
    fail the test."""
    first = code_pages_past_the_list(make_server())
    if not first:
        return
    again = first & code_pages_past_the_list(make_server())
    assert not again, (
        f"children of two servers map {len(again)} code pages past the listed functions (from file offset "
        f"{hex(min(again))}), with {functions_on_pages(again)[:12]}: a function httpd now runs is missing "
        "from link/hot-code.ld; run scripts/hot-code")


def thread_stack_top_pages(pid):
    """For each thread stack of `pid` (an anonymous mapping right above its
    guard page), how many pages from its top down are resident without a
    gap: the thread's descriptor and TLS, then the deepest its calls went.
    (A stack also has lone resident pages further down, the same with or
    without HTTP/2; they are not counted.)"""
    counts = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        rows = [line.split() for line in maps]
        for below, row in zip(rows, rows[1:]):
            if len(row) != 5 or row[1] != "rw-p" or len(below) != 5 or below[1] != "---p":
                continue
            guard_lo, guard_hi = (int(x, 16) for x in below[0].split("-"))
            lo, hi = (int(x, 16) for x in row[0].split("-"))
            if guard_hi != lo or guard_hi - guard_lo != 4096 or hi - lo < 256 * 1024:
                continue
            pages = 0
            for addr in range(hi - 4096, lo, -4096):
                if not is_resident(pagemap, addr):
                    break
                pages += 1
            counts.append(pages)
    return counts


def median_stack_top_pages(server):
    counts = [n for pid in server.mpm_children() for n in thread_stack_top_pages(pid)]
    assert len(counts) >= 16, counts
    return sorted(counts)[len(counts) // 2]


@pytest.mark.skipif(os.geteuid() != 0, reason="reading the children's page maps needs root")
def test_http2_requests_leave_thread_stacks_as_shallow_as_http1(make_server):
    """Each MPM thread keeps every stack page its deepest call touched. A
    request runs under c1's session loop and the dispatch to its c2, so
    frames on that path count for every thread that ever serves HTTP/2:
    with a 0.8 KiB frame under `h2rs_process_connection` and 2 KiB under
    nghttp2's header callback, most threads kept a page more than under
    HTTP/1.1 (0.4 MiB over two children; docs/INTERNALS.md "Thread
    stacks")."""
    h2 = make_server()
    h2.start()
    h1 = make_server(module="", protocols="http/1.1")
    h1.start()
    # Multiplexed, one request at a time, paced (each request finds its
    # connection parked in the MPM); HTTP/1.1 the same without -m.
    loads = (["-n", "3000", "-c", "16"], ["-n", "400", "-c", "16"], ["-n", "200", "-c", "16", "--rps", "50"])
    for srv, extra in ((h2, [["-m", "10"], ["-m", "1"], ["-m", "1"]]), (h1, [["--h1"]] * 3)):
        for args, more in zip(loads, extra):
            r = h2load(*args, *more, srv.url("/1k.bin"))
            assert r.get("succeeded") == int(args[1]), r["output"]
    ours, http1 = median_stack_top_pages(h2), median_stack_top_pages(h1)
    assert ours <= http1, f"median resident stack top: {ours} pages per thread, HTTP/1.1 {http1}"
