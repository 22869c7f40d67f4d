"""Issue 5: the connection life cycle. Idle connections cost no thread,
timeouts end with GOAWAY, graceful restarts finish what is in flight,
vanished clients abort their handlers, flow control and priorities,
bounded memory, fair use of the workers."""
import os
import pathlib
import re
import socket
import subprocess
import threading
import time

import h2.errors
import h2.events
import h2.settings
import pytest

import rawh2
from conftest import MODDIR, WORKER_MPM, curl, free_port, sha256, wait_for
from h2client import H2Client, Stream, tls_socket, upgraded_client

ONE_CHILD = f"""LoadModule mpm_event_module {MODDIR}/mod_mpm_event.so
ServerLimit 1
StartServers 1
ThreadLimit 25
ThreadsPerChild 25
MaxRequestWorkers 25
MinSpareThreads 1
MaxSpareThreads 25
AsyncRequestWorkerFactor 40
MaxConnectionsPerChild 0"""


def status_field(srv, name):
    r = curl("--http1.1", srv.url("/server-status?auto"))
    m = re.search(name.encode() + rb": (\d+)", r.stdout)
    return int(m[1]) if m else None


def busy_workers(srv):
    return status_field(srv, "BusyWorkers")


def wait_connections_gone(srv, timeout=15):
    """Waits until the MPM has closed the client connections (besides the
    status request itself). The event MPM's hard stop races with workers
    finishing lingering closes (close_worker_sockets() may touch a socket
    whose pool is gone: a SIGSEGV in apr_os_sock_get, seen with the stock
    module too), so tests that close many connections let them settle
    before the fixture stops the server."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        conns = status_field(srv, "ConnsTotal")
        if conns is None or conns <= 1:
            return
        time.sleep(0.1)


def test_a_session_waiting_on_its_worker_shows_as_writing(make_server):
    """An HTTP/2 connection whose stream runs on a worker shows as "W" in
    mod_status's scoreboard, as an HTTP/1.1 connection sending its
    response does, and as "R" again once it only waits for its client. It
    was "R" (reading a request) whatever it did."""
    srv = make_server(extra=ONE_CHILD).start()

    def scoreboard():
        m = re.search(rb"Scoreboard: (\S+)", curl("--http1.1", srv.url("/server-status?auto")).stdout)
        return m[1].decode()

    c = H2Client(srv.port)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    sid = c.request("/cgi/slow.cgi?3")
    time.sleep(1)
    # The status request itself is one "W".
    busy = scoreboard()
    assert (busy.count("W"), busy.count("R")) == (2, 0), busy
    assert c.wait_stream(sid, timeout=10).status == 200
    c.close()


def test_idle_connections_hold_no_thread(make_server):
    """500 idle h2 connections on one child of 25 threads: all answered,
    almost no busy MPM worker while they idle, a fresh client served at
    once, every idle connection answers again."""
    srv = make_server(mpm=ONE_CHILD, extra="KeepAliveTimeout 30").start()
    conns = []
    for _ in range(500):
        c = H2Client(srv.port)
        c.request("/index.html")
        conns.append(c)
    for c in conns:
        assert c.wait_stream(1, timeout=30).status == 200
    time.sleep(1)
    assert busy_workers(srv) <= 3
    t0 = time.time()
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"200"
    assert time.time() - t0 < 5
    for c in conns:
        sid = c.request("/index.html")
        assert c.wait_stream(sid, timeout=30).status == 200
    for c in conns:
        c.close()
    wait_connections_gone(srv)


def test_idle_upgraded_connections_hold_no_thread(make_server):
    """Sessions that came by h2c Upgrade go back to the MPM when idle, as
    any session does: the first time through the end of the upgrading
    HTTP/1.1 request, after which httpd's core would close the connection.
    40 of them idle on one child of 25 threads; a fresh client is served
    at once, and every one answers again on its connection."""
    srv = make_server(mpm=ONE_CHILD, extra="KeepAliveTimeout 30").start()
    conns = []
    for _ in range(40):
        c = upgraded_client(srv.port, "/index.html")
        assert c.wait_stream(1, timeout=15).status == 200
        conns.append(c)
    time.sleep(1)
    assert busy_workers(srv) <= 3
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"200"
    for c in conns:
        sid = c.request("/index.html")
        assert c.wait_stream(sid, timeout=15).status == 200
    # The upgrading requests ended (and were logged) when their sessions
    # first went idle, not when the connections close.
    assert sum(" 101 " in line for line in srv.read_access_log()) == 40
    for c in conns:
        c.close()
    wait_connections_gone(srv)


@pytest.mark.parametrize("upgraded", [False, True], ids=["direct", "upgraded"])
def test_idle_timeout_sends_goaway_with_last_stream(make_server, upgraded):
    """`upgraded`: idle right after the h2c Upgrade's request, which is
    where the session waits in the MPM's keep-alive queue (whose timeout
    closes it, our pre_close_connection sending the GOAWAY)."""
    srv = make_server(extra="KeepAliveTimeout 1").start()
    if upgraded:
        c = upgraded_client(srv.port)
        c.wait_stream(1)
        last = 1
    else:
        c = H2Client(srv.port)
        for _ in range(3):
            c.wait_stream(c.request("/1k.bin"))
        last = 5
    t0 = time.time()
    c.wait(lambda: c.goaway is not None, timeout=10)
    waited = time.time() - t0
    assert c.goaway == (h2.errors.ErrorCodes.NO_ERROR, last), c.goaway
    assert 0.8 < waited < 5, waited
    # Then the server closes the connection (even though we stay silent).
    c.sock.settimeout(5)
    assert c.sock.recv(100) == b""
    c.close()


def test_a_request_crossing_the_idle_goaway_meets_no_reset(make_server):
    """After its idle GOAWAY and FIN the server still reads, as httpd's
    lingering close does: a request that crossed them (sent before the
    client read them) meets a clean close. The connection was shut for
    reading too, and the kernel answered such a request with a TCP reset,
    which can lose the GOAWAY that tells the client its request was not
    processed."""
    srv = make_server(extra="KeepAliveTimeout 1").start()
    c = rawh2.Conn(srv.port)
    assert c.response(c.request("/1k.bin")).status == 200
    c.wait(lambda: c.goaway is not None, timeout=10, what="the idle GOAWAY")
    time.sleep(0.2)  # the FIN is in too
    c.sock.sendall(rawh2.headers(3, rawh2.encode(c.fields("/1k.bin"))))
    time.sleep(0.3)
    assert c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0, "the server reset the connection"
    c.sock.sendall(rawh2.ping(b"12345678"))  # still read (and dropped), not reset
    time.sleep(0.3)
    assert c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0, "the server reset the connection"
    c.close()


@pytest.mark.parametrize("mpm", ["event", "worker"])
def test_a_new_connection_waits_for_its_first_request_about_timeout(make_server, mpm):
    """Before its first request a connection waits about `Timeout` (a
    browser opens connections before it knows its requests), as HTTP/1.1
    and the stock module do; after it, `KeepAliveTimeout` applies. Also
    under the worker MPM, where c1's thread waits itself."""
    srv = make_server(extra="Timeout 4\nKeepAliveTimeout 1", **({"mpm": WORKER_MPM} if mpm == "worker" else {})).start()
    early, silent = H2Client(srv.port), H2Client(srv.port)
    t0 = time.time()
    time.sleep(2.2)
    with pytest.raises(TimeoutError):  # reads what came: no GOAWAY
        early.wait(lambda: early.goaway is not None, timeout=0.3)
    assert early.goaway is None, "a connection without a request was cut at KeepAliveTimeout"
    assert early.wait_stream(early.request("/1k.bin")).status == 200
    t1 = time.time()
    early.wait(lambda: early.goaway is not None, timeout=10)
    assert early.goaway == (h2.errors.ErrorCodes.NO_ERROR, 1), early.goaway
    assert time.time() - t1 < 2.5, "after a request, KeepAliveTimeout applies"
    # The one that never asks: GOAWAY (last stream 0) a second before
    # Timeout, before the MPM closes it silently.
    silent.wait(lambda: silent.goaway is not None, timeout=10)
    assert silent.goaway == (h2.errors.ErrorCodes.NO_ERROR, 0), silent.goaway
    assert 2.5 < time.time() - t0 < 4.5, time.time() - t0
    early.close()
    silent.close()


def test_keepalivetimeout_applies_after_a_late_first_request(make_server):
    """A connection whose first request comes after its idle caches were
    released (2 s) gets its GOAWAY `KeepAliveTimeout` after that request,
    within the client's 10 s wait: before, the timer armed for the first
    request's long wait (about `Timeout`, 30 s here) stayed the only one."""
    srv = make_server(extra="Timeout 30\nKeepAliveTimeout 1").start()
    c = H2Client(srv.port)
    with pytest.raises(TimeoutError):  # reads what comes meanwhile: no GOAWAY
        c.wait(lambda: c.goaway is not None, timeout=2.5)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.wait(lambda: c.goaway is not None, timeout=10)
    assert c.goaway == (h2.errors.ErrorCodes.NO_ERROR, 1), c.goaway
    c.close()


def test_a_long_idle_connection_releases_its_caches_and_serves_again(make_server, docroot):
    """After 2 s parked, a session drops its cached stream connections and
    gives back the page of nghttp2's frame buffer (memory of idle clients);
    the next streams get fresh connections, and their frames are written
    into a fresh page. Four sessions: their frame buffers sit at each of
    the three places a slab has for them."""
    srv = make_server(extra="KeepAliveTimeout 30", loglevel="warn http2:debug").start()
    clients = [H2Client(srv.port) for _ in range(4)]
    for c in clients:
        for _ in range(3):
            assert c.wait_stream(c.request("/1k.bin")).status == 200
    time.sleep(2.8)
    log = srv.read_error_log()
    assert log.count("released cached stream connections and the frame buffer's pages") >= 4, log[-2000:]
    for c in clients:
        sts = [c.wait_stream(c.request(f"/1k.bin?{i}")) for i in range(5)]
        assert [st.status for st in sts] == [200] * 5 and c.goaway is None
        assert all(sha256(bytes(st.data)) == docroot.sha("1k.bin") for st in sts)
        assert all(st.header("content-length") == "1024" for st in sts)
        c.close()


def test_busy_connection_is_not_cut_by_keepalive_timeout(make_server):
    srv = make_server(extra="KeepAliveTimeout 1").start()
    c = H2Client(srv.port)
    st = c.wait_stream(c.request("/cgi/slow.cgi?2"), timeout=10)
    assert st.status == 200 and c.goaway is None
    c.close()


def start_in_flight(srv, workdir):
    """A 100 MiB download (30 MB/s) and a 2 s CGI under way on `srv`, by curl
    (python-h2 would end them at the first GOAWAY); returns what
    `assert_delivered_whole` checks."""
    out = workdir / "in-flight-100m.bin"
    dl = subprocess.Popen(["curl", "-s", "--http2-prior-knowledge", "--limit-rate", "30M", "-o", str(out),
                           srv.url("/100m.bin")])
    slow = subprocess.Popen(["curl", "-s", "--http2-prior-knowledge", srv.url("/cgi/slow.cgi?2")],
                            stdout=subprocess.PIPE)
    time.sleep(0.5)
    return dl, out, slow


def assert_delivered_whole(in_flight, docroot):
    dl, out, slow = in_flight
    assert slow.communicate(timeout=20)[0] == b"slow done\n"
    assert dl.wait(timeout=60) == 0
    assert sha256(out.read_bytes()) == docroot.sha("100m.bin")
    out.unlink()


def test_graceful_restart_finishes_in_flight_streams(make_server, docroot, workdir):
    srv = make_server().start()
    idle = H2Client(srv.port)
    idle.wait_stream(idle.request("/1k.bin"))
    in_flight = start_in_flight(srv, workdir)
    old = set(srv.mpm_children())
    srv.graceful()
    # The idle connection hears GOAWAY at once.
    idle.wait(lambda: idle.goaway is not None, timeout=5)
    assert idle.goaway[0] == h2.errors.ErrorCodes.NO_ERROR
    assert_delivered_whole(in_flight, docroot)
    # New connections go to the new generation.
    wait_children_gone(srv, old, 20)
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"200"


def test_graceful_stop_finishes_in_flight_streams_then_exits(make_server, docroot, workdir):
    """`-k graceful-stop`: the listener closes at once, an idle session gets
    the GOAWAY notice at once and, once it has answered the PING, the final
    GOAWAY and the close; a download and a slow CGI in flight are delivered
    whole; then httpd exits. A session idle right after its h2c Upgrade
    waits in the MPM's keep-alive queue, which the stopping MPM closes: it
    gets the final GOAWAY (pre_close_connection) and the close."""
    srv = make_server().start()
    idle = H2Client(srv.port, survive_goaway=True)
    idle.wait_stream(idle.request("/1k.bin"))
    upgraded = upgraded_client(srv.port, survive_goaway=True)
    upgraded.wait_stream(1)
    in_flight = start_in_flight(srv, workdir)
    srv.signal("graceful-stop")
    idle.wait(lambda: idle.goaway is not None, timeout=5)
    assert idle.goaway == (h2.errors.ErrorCodes.NO_ERROR, 2**31 - 1)
    idle.wait(lambda: idle.closed, timeout=10)
    assert idle.goaway == (h2.errors.ErrorCodes.NO_ERROR, 1)
    upgraded.wait(lambda: upgraded.closed, timeout=10)
    assert upgraded.goaway == (h2.errors.ErrorCodes.NO_ERROR, 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
    assert_delivered_whole(in_flight, docroot)
    assert srv.wait_exited(20), "httpd still running after its streams ended"


def graceful_notice(srv, c):
    """Restarts `srv` gracefully while `c` is busy; returns the payload of
    the PING the server sent behind its first GOAWAY (RFC 9113 6.8: last
    stream id 2^31-1, nothing refused yet)."""
    srv.graceful()
    c.wait(lambda: c.goaway is not None, timeout=10, what="the shutdown notice")
    assert (c.goaway.last_sid, c.goaway.error_code) == (2**31 - 1, 0)
    c.wait(lambda: any(f.type == rawh2.PING and not f.flags & rawh2.ACK for f in c.frames), what="the PING")
    return next(f.payload for f in c.frames if f.type == rawh2.PING and not f.flags & rawh2.ACK)


def goaways(c):
    return [(f.last_sid, f.error_code) for f in c.frames if f.type == rawh2.GOAWAY]


def assert_final_goaway_then_close(c):
    """After the shutdown notice on `c`: the final GOAWAY (NO_ERROR, last
    stream 1), stream 1's response delivered, then the close."""
    c.wait(lambda: len(goaways(c)) == 2, timeout=10, what="the final GOAWAY")
    assert goaways(c) == [(2**31 - 1, 0), (1, 0)]
    c.wait(lambda: c.resp(1).ended, timeout=10, what="the response")
    assert c.resp(1).status == 200
    c.drain(5)
    assert c.closed


def wait_children_gone(srv, old, timeout, what="old children still running"):
    """Waits up to `timeout` seconds for the MPM children `old` to exit."""
    deadline = time.time() + timeout
    while time.time() < deadline and set(srv.mpm_children()) & old:
        time.sleep(0.2)
    assert not (set(srv.mpm_children()) & old), what


def start_session(c, state):
    """Stream 1 on `c`, then the session is `busy` (stream 1 runs a slow
    CGI) or `parked` (stream 1 is done and the session is back in the
    MPM)."""
    c.send(rawh2.headers(1, rawh2.encode(rawh2.request_fields("/cgi/slow.cgi?1" if state == "busy" else "/1k.bin"))))
    if state == "parked":
        c.wait(lambda: c.resp(1).ended, what="the first response")
    time.sleep(0.3)


@pytest.mark.parametrize("state", ["busy", "parked"])
def test_graceful_restart_serves_a_request_sent_before_the_client_saw_goaway(make_server, docroot, state):
    """A request on the wire when the restart comes is served, not refused:
    the final GOAWAY waits for the client's answer to the PING."""
    srv = make_server().start()
    c = rawh2.Conn(srv.port)
    start_session(c, state)
    opaque = graceful_notice(srv, c)
    # Sent as if before the client read the notice, then the PING's ACK.
    c.send(rawh2.headers(3, rawh2.encode(rawh2.request_fields("/1k.bin"))), rawh2.ping(opaque, ack=True))
    c.wait(lambda: len(goaways(c)) == 2, what="the final GOAWAY")
    assert goaways(c) == [(2**31 - 1, 0), (3, 0)]
    c.wait(lambda: c.resp(1).ended and c.resp(3).ended, timeout=10, what="both responses")
    if state == "busy":
        assert (c.resp(1).status, bytes(c.resp(1).body)) == (200, b"slow done\n")
    assert c.resp(3).status == 200 and sha256(bytes(c.resp(3).body)) == docroot.sha("1k.bin")
    c.drain(5)
    assert c.closed


@pytest.mark.parametrize("state", ["busy", "parked"])
def test_graceful_restart_goes_on_without_the_pings_answer(make_server, state):
    """A client that never answers the PING gets the final GOAWAY anyway
    (after STOP_NOTICE_GRACE): from the session's own loop once its stream
    has finished, or from the clock while it is parked; then the
    connection closes."""
    srv = make_server().start()
    c = rawh2.Conn(srv.port)
    start_session(c, state)
    graceful_notice(srv, c)
    assert_final_goaway_then_close(c)


def test_graceful_restart_on_the_worker_mpm_ends_idle_and_busy_sessions(make_server):
    """The worker MPM: a session waits in its own thread between requests
    (no parking), and must hear the restart there too, not only at its
    KeepAliveTimeout."""
    srv = make_server(mpm=WORKER_MPM, extra="KeepAliveTimeout 30").start()
    idle = rawh2.Conn(srv.port)
    idle.send(rawh2.headers(1, rawh2.encode(rawh2.request_fields("/1k.bin"))))
    idle.wait(lambda: idle.resp(1).ended, what="the response")
    busy = rawh2.Conn(srv.port)
    busy.send(rawh2.headers(1, rawh2.encode(rawh2.request_fields("/cgi/slow.cgi?2"))))
    time.sleep(0.3)
    old = set(srv.mpm_children())
    opaque = graceful_notice(srv, busy)
    busy.send(rawh2.ping(opaque, ack=True))
    idle.wait(lambda: idle.goaway is not None and idle.goaway.last_sid == 1, timeout=5, what="the final GOAWAY")
    idle.drain(5)
    assert idle.closed
    busy.wait(lambda: busy.resp(1).ended, timeout=10, what="the slow response")
    assert goaways(busy) == [(2**31 - 1, 0), (1, 0)] and bytes(busy.resp(1).body) == b"slow done\n"
    wait_children_gone(srv, old, 10)


RECYCLING_CHILDREN = ONE_CHILD.replace("ServerLimit 1", "ServerLimit 2").replace(
    "MaxConnectionsPerChild 0", "MaxConnectionsPerChild 3")


@pytest.mark.parametrize("state", ["busy", "parked"])
def test_a_child_at_max_connections_per_child_ends_its_sessions_gracefully(make_server, state):
    """MaxConnectionsPerChild: the child that accepts its last connection
    stops gracefully, as on a restart but for itself only. Its sessions get
    the shutdown notice and then GOAWAY NO_ERROR naming their last stream,
    the stream in flight is delivered, and new connections go to the next
    child."""
    srv = make_server(mpm=RECYCLING_CHILDREN, extra="KeepAliveTimeout 30").start()
    old = set(srv.mpm_children())
    c = rawh2.Conn(srv.port)
    start_session(c, state)

    def get_on_a_new_connection():
        r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                 srv.url("/1k.bin"), timeout=20)
        return r.stdout

    codes = []
    for _ in range(6):  # until the child has had its connections
        codes.append(get_on_a_new_connection())
        try:
            c.wait(lambda: c.goaway is not None, timeout=0.5, what="the shutdown notice")
            break
        except rawh2.ProtocolFailure:
            pass
    assert c.goaway is not None, "no GOAWAY after the child's last connection"
    assert_final_goaway_then_close(c)
    # The next child serves; the old one exits once its sessions are done.
    codes += [get_on_a_new_connection() for _ in range(3)]
    assert set(codes) == {b"200 2"}, codes
    wait_children_gone(srv, old, 10, "the recycled child still runs")


def test_hard_stop_says_goaway_and_exits_promptly(make_server):
    """A hard stop sends the final GOAWAY at once (no shutdown notice: the
    streams are aborted anyway), also to a parked session."""
    srv = make_server().start()
    c = rawh2.Conn(srv.port)
    start_session(c, "parked")
    t0 = time.time()
    srv.stop()
    assert time.time() - t0 < 10
    c.drain(5)
    assert c.closed and goaways(c) == [(1, 0)]


def watched_stream(make_server, workdir, test_module, name):
    """A server whose /watch handler streams until it sees its connection
    aborted, then writes `marks/<name>`; a client with that stream running.
    Returns (server, client, stream id, marker path)."""
    marks = workdir / "marks"
    marks.mkdir(exist_ok=True)
    os.chmod(marks, 0o777)
    srv = make_server(extra=f"{test_module}\n<Location /watch>\n  SetHandler h2rs-abortwatch\n</Location>").start()
    marker = marks / name
    c = H2Client(srv.port)
    sid = c.request(f"/watch?{marker}")
    c.wait(lambda: len(c.streams[sid].data) > 20)
    return srv, c, sid, marker


def test_vanished_client_aborts_the_handler(make_server, workdir, test_module):
    srv, c, _, marker = watched_stream(make_server, workdir, test_module, "abort1")
    # The socket goes away without a word (RST).
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.sock.close()
    assert wait_for(marker.exists), "the handler never noticed the client was gone"
    assert "c->aborted=1" in marker.read_text()
    # Nothing stays stuck: the server serves on, workers back to the minimum.
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", srv.url("/1k.bin"))
    assert r.stdout == b"200"


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_a_vanished_clients_socket_is_not_held_for_its_handlers(make_server, certs, tls):
    """A client that closes its side of the connection (FIN) while a slow
    CGI runs for it: the server's side closes at once, not when the CGI
    ends (teardown waits for the handler; the socket stayed in CLOSE_WAIT
    for the CGI's whole run). Not after a connection error, where the
    client is still there: see the next test."""
    srv = make_server()
    if tls:
        srv.tls_config(certs, free_port())
    srv.start()
    port = srv.tls_port if tls else srv.port
    c = H2Client(port, sock=tls_socket(port) if tls else None)
    c.request("/cgi/slow.cgi?6")
    time.sleep(0.5)
    client_port = c.sock.getsockname()[1]
    # A FIN, not the RST that closing a socket with unread bytes sends
    # (over TLS without close_notify, as a client that just goes does).
    c.sock.shutdown(socket.SHUT_WR)

    def server_side_open():
        # /proc/net/tcp: local and remote "ip:port" in hex, then the state;
        # the server's socket is the one whose remote port is the client's.
        for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
                return state != "06"  # TIME_WAIT excepted; CLOSE_WAIT is 08
        return False
    assert wait_for(lambda: not server_side_open(), timeout=4), "the server kept the vanished client's socket"
    c.sock.close()


def test_a_connection_error_with_bytes_unread_still_delivers_its_goaway(make_server):
    """The shutdown above is only for a client whose FIN a read saw. After a
    connection error the client is still there, with bytes the server has
    not read: shut down, the socket would answer them with RST, and a
    client still sending gets the reset instead of the GOAWAY (the issue 6
    check's CONTINUATION flood showed it). Here the error, a header block
    in more CONTINUATION frames than allowed, begins a 4 MiB burst the
    client sends before it reads: the server drains the rest (httpd's
    lingering close), the burst goes out whole, and the GOAWAY
    ENHANCE_YOUR_CALM is there to read."""
    srv = make_server().start()
    c = rawh2.Conn(srv.port)
    block = rawh2.encode(rawh2.request_fields("/index.html"))
    flood = rawh2.headers(1, block, end_headers=False) + rawh2.continuation(1, b"", end_headers=False) * 20
    filler = rawh2.ping(b"unread!!") * ((4 << 20) // 17)
    send_errors = []

    def send_burst():
        try:
            c.sock.sendall(flood + filler)
        except OSError as e:
            send_errors.append(e)
    sender = threading.Thread(target=send_burst)
    sender.start()
    sender.join(timeout=15)
    assert not sender.is_alive() and not send_errors, send_errors
    c.expect_connection_error(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
    c.close()


def test_client_reset_aborts_the_handler(make_server, workdir, test_module):
    _, c, sid, marker = watched_stream(make_server, workdir, test_module, "abort2")
    c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    assert wait_for(marker.exists)
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    c.close()


def test_zero_window_client_gets_nothing_until_it_opens_the_window(server, docroot):
    c = H2Client(server.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}, auto_ack_data=False)
    sid = c.request("/100k.bin")
    c.wait(lambda: c.streams[sid].status is not None)
    time.sleep(0.5)
    c.read_some(timeout=0.5)
    assert len(c.streams[sid].data) == 0
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    c.flush()
    c.auto_ack_data = True
    st = c.wait_stream(sid)
    assert sha256(bytes(st.data)) == docroot.sha("100k.bin")
    c.close()


def test_slow_reader_costs_a_bounded_buffer(make_server, docroot):
    """A client that does not read a 100 MiB response: the handler blocks
    on the stream's buffer; the server's memory does not grow with the
    file. Then it reads everything, byte-exact."""
    srv = make_server(h2_conf="H2StreamMaxMemSize 65536").start()
    curl("--http2-prior-knowledge", "-o", "/dev/null", srv.url("/1m.bin"))
    base = srv.rss_kib()
    c = H2Client(srv.port, auto_ack_data=False)
    sid = c.request("/100m.bin")
    time.sleep(2)
    c.read_some(timeout=0.5)
    grown = srv.rss_kib() - base
    assert grown < 16 * 1024, f"RSS grew by {grown} KiB while the client did not read"
    c.auto_ack_data = True
    c.conn.increment_flow_control_window(1 << 30)
    c.conn.increment_flow_control_window(1 << 30, stream_id=sid)
    c.flush()
    st = c.wait_stream(sid, timeout=120)
    assert sha256(bytes(st.data)) == docroot.sha("100m.bin")
    c.close()


def test_urgent_small_request_overtakes_a_bulk_download(server):
    c = H2Client(server.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    c.conn.increment_flow_control_window(1 << 30)
    c.flush()
    bulk = c.request("/100m.bin", headers=[("priority", "u=5")])
    c.wait(lambda: len(c.streams[bulk].data) > (2 << 20))
    t0 = time.time()
    small = c.request("/1k.bin", headers=[("priority", "u=0")])
    c.wait(lambda: c.streams[small].done)
    latency = time.time() - t0
    assert c.streams[small].status == 200
    assert not c.streams[bulk].done, "the bulk download ended first"
    print(f"urgent request answered in {latency * 1000:.1f} ms during the bulk download")
    c.close()


def test_urgent_small_request_in_the_burst_of_a_large_file_is_not_held_behind_it(server, docroot):
    """A large static file and a small urgent request in one burst (a
    video and a page's CSS), both run on c1's fast path (each fetched once
    before, so they are known as static files): c1 runs the more urgent
    first, so the small response comes ahead of the large one (the client
    counts what came in the same read with it: less than one write). It
    came after as much of the large one as the client's window allowed,
    16 MiB here, 6 MiB in Chrome; then, while the streams c1 ran went in
    arrival order, after the first megabyte, which c1 writes whole."""
    c = H2Client(server.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
    c.conn.increment_flow_control_window(1 << 30)
    c.flush()
    assert c.wait_stream(c.request("/20m.bin"), timeout=60).status == 200
    assert c.wait_stream(c.request("/1k.bin")).status == 200
    # Both HEADERS in one write: one burst for the server.
    large = c.conn.get_next_available_stream_id()
    c.conn.send_headers(large, [(":method", "GET"), (":scheme", "http"), (":authority", f"127.0.0.1:{server.port}"),
                                (":path", "/20m.bin"), ("priority", "u=5")], end_stream=True)
    c.streams[large] = Stream(large)
    small = c.conn.get_next_available_stream_id()
    c.conn.send_headers(small, [(":method", "GET"), (":scheme", "http"), (":authority", f"127.0.0.1:{server.port}"),
                                (":path", "/1k.bin"), ("priority", "u=0")], end_stream=True)
    c.streams[small] = Stream(small)
    c.flush()
    c.wait(lambda: c.streams[small].done, timeout=60)
    before = len(c.streams[large].data)
    assert c.streams[small].status == 200
    assert before < 512 << 10, f"{before} bytes of the large file came before the small response"
    assert c.wait_stream(large, timeout=60).status == 200
    assert sha256(bytes(c.streams[large].data)) == docroot.sha("20m.bin")
    c.close()


@pytest.mark.parametrize("path", ["/1k.bin", "/cgi/env.cgi"], ids=["fast-path", "worker"])
def test_request_arriving_during_a_large_write_is_answered_within_it(server, path):
    """A request that comes while c1 writes a large window's worth of a
    file (a client with a 1 GiB window; Chrome's are 6 and 15 MiB) is
    read and answered after about a chunk of it, from the kernel's
    buffers on: c1 looks at the socket and at its workers (a CGI's
    response) between chunks.
    Before, the write went on until the window or the file was used up
    (here the whole 100 MiB came first)."""
    c = H2Client(server.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30})
    c.conn.increment_flow_control_window(1 << 30)
    c.flush()
    # Fetched once, the file is known as static: it runs on c1's fast path
    # and goes out from file mappings that never run dry.
    assert c.wait_stream(c.request("/100m.bin"), timeout=60).status == 200
    bulk = c.request("/100m.bin")
    c.wait(lambda: len(c.streams[bulk].data) > 0)
    at_request = len(c.streams[bulk].data)
    small = c.request(path)
    c.wait(lambda: c.streams[small].done, timeout=60)
    between = len(c.streams[bulk].data) - at_request
    print(f"{between} bytes of the large file between the request for {path} and its response")
    assert c.streams[small].status == 200
    assert between < 64 << 20, f"{between} bytes of the large file came between the small request and its response"
    assert c.wait_stream(bulk, timeout=60).status == 200
    c.close()


def test_streams_of_equal_priority_share_bandwidth(server):
    """A client that sends no priority signal (curl, h2load, this one):
    its responses share the connection, as with RFC 7540's default
    priorities. Also where nothing makes a stream pause: the file is
    fetched once first, on the same connection (the same child), so both
    run on c1's fast path and are sent from file mappings that never run
    dry; and with the default windows, where the connection's window
    runs out first (a stream waiting for it keeps its place in nghttp2's
    queue, unlike one waiting for its own). RFC 9218's default (not
    incremental) sent them one after the other there: 42 MB against 0."""
    c = H2Client(server.port)
    assert c.wait_stream(c.request("/100m.bin"), timeout=60).status == 200
    a = c.request("/100m.bin")
    b = c.request("/100m.bin")
    c.wait(lambda: len(c.streams[a].data) + len(c.streams[b].data) > (40 << 20), timeout=60)
    got_a, got_b = len(c.streams[a].data), len(c.streams[b].data)
    assert min(got_a, got_b) > 0.3 * max(got_a, got_b), (got_a, got_b)
    c.close()


def test_no_connection_takes_every_worker(make_server):
    """H2MaxWorkers 4: one connection with 12 slow requests does not keep
    a second connection's request waiting for all of them."""
    srv = make_server(h2_conf="H2MinWorkers 4\nH2MaxWorkers 4").start()
    greedy = H2Client(srv.port)
    sids = [greedy.request("/cgi/slow.cgi?2") for _ in range(12)]
    time.sleep(0.3)
    t0 = time.time()
    other = H2Client(srv.port)
    st = other.wait_stream(other.request("/1k.bin"), timeout=30)
    waited = time.time() - t0
    assert st.status == 200
    assert waited < 1.5, f"the second connection waited {waited:.1f}s"
    greedy.wait(lambda: all(greedy.streams[s].done for s in sids), timeout=60)
    assert all(greedy.streams[s].status == 200 for s in sids)
    other.close()
    greedy.close()


def test_max_session_streams_is_advertised_and_enforced(make_server):
    srv = make_server(h2_conf="H2MaxSessionStreams 3").start()
    c = H2Client(srv.port)
    c.wait(lambda: h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS in c.remote_settings)
    assert c.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 3
    sids = [c.request("/cgi/slow.cgi?1") for _ in range(3)]
    # The fourth, beyond the limit (sent without the library's check).
    from hyperframe import frame as hf
    import hpack
    block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")])
    c.send_frame(hf.HeadersFrame(9, data=block, flags=["END_STREAM", "END_HEADERS"]))
    c.wait(lambda: c.goaway is not None or c.closed, timeout=10)
    # RFC 9113 5.1.2: PROTOCOL_ERROR or REFUSED_STREAM; nghttp2 makes it a
    # connection error once our SETTINGS are acknowledged.
    assert c.goaway is not None and c.goaway[0] == h2.errors.ErrorCodes.PROTOCOL_ERROR
    c.close()


def test_late_frames_on_a_stream_refused_in_the_first_flight_are_ignored(make_server):
    """A client's first flight, before it acknowledged our SETTINGS, opens
    more streams than H2MaxSessionStreams: nghttp2 refuses the excess
    (RST_STREAM REFUSED_STREAM). The client may still send frames on such
    a stream, here its trailers after a later stream opened: RFC 9113
    5.4.2 and 5.1 want them ignored, not taken for a new stream below
    the highest one (a connection error)."""
    srv = make_server(h2_conf="H2MaxSessionStreams 3").start()
    c = rawh2.Conn(srv.port, handshake=False)
    slow = rawh2.encode(c.fields("/cgi/slow.cgi?2", "POST"))
    c.send(rawh2.PREFACE + rawh2.settings(),
           rawh2.headers(1, rawh2.encode(c.fields())),
           *(rawh2.headers(sid, slow, end_stream=False) for sid in (3, 5, 7)))
    c.wait(lambda: c.resp(7).reset is not None and c.resp(1).done, what="stream 7 refused, stream 1 answered")
    assert c.resp(7).reset == h2.errors.ErrorCodes.REFUSED_STREAM
    assert c.resp(1).status == 200
    c.send(rawh2.headers(9, rawh2.encode(c.fields())))
    c.wait(lambda: c.resp(9).done, what="stream 9 answered")
    c.send(rawh2.headers(7, rawh2.encode([("x-checksum", "1")])))
    c.next_sid = 11
    c.expect_ok()
    assert c.goaway is None
    c.close()


def test_learned_static_file_is_served_while_every_worker_is_busy(make_server, docroot):
    """A small static file, once served, runs on the connection's own
    thread (fastpath.rs): it does not wait for the one worker, which a slow
    CGI holds. A file not served before still waits for a worker, and so
    does a small file under a filter that may wait, however often it was
    served."""
    # The same file under an output filter that may wait (mod_ratelimit,
    # fast enough here): never run inline.
    srv = make_server(h2_conf="H2MinWorkers 1\nH2MaxWorkers 1", extra=f"""
LoadModule ratelimit_module {MODDIR}/mod_ratelimit.so
LoadModule env_module {MODDIR}/mod_env.so
Alias /limited "{docroot.path}"
<Location /limited>
  SetOutputFilter RATE_LIMIT
  SetEnv rate-limit 100000
</Location>
""").start()
    small = (docroot.path / "1k.bin").read_bytes()
    c = H2Client(srv.port)
    for _ in range(3):
        for path in ("/1k.bin", "/limited/1k.bin"):
            st = c.wait_stream(c.request(path), timeout=30)
            assert (st.status, bytes(st.data)) == (200, small)
    busy = H2Client(srv.port)
    cgi = busy.request("/cgi/slow.cgi?3")
    time.sleep(0.5)
    t0 = time.time()
    waiting = {path: c.request(path) for path in ("/100k.bin", "/limited/1k.bin")}
    st = c.wait_stream(c.request("/1k.bin"), timeout=30)
    learned_after = time.time() - t0
    assert (st.status, bytes(st.data)) == (200, small)
    assert learned_after < 1.5, f"the learned file waited {learned_after:.1f}s for the busy worker"
    for path, sid in waiting.items():
        st = c.wait_stream(sid, timeout=30)
        after = time.time() - t0
        assert (st.status, bytes(st.data)) == (200, (docroot.path / path.split("/")[-1]).read_bytes())
        assert after > 1.5, f"{path} did not wait for the worker ({after:.1f}s)"
    busy_st = busy.wait_stream(cgi, timeout=30)
    assert busy_st.status == 200 and bytes(busy_st.data) == b"slow done\n"
    c.close()
    busy.close()


def test_a_filter_that_leaves_for_some_clients_keeps_its_url_off_the_fast_path(make_server, docroot):
    """mod_ratelimit takes itself out of the chain at its first call when
    the request has no `rate-limit` variable (here set for some clients
    only): the URL is not learned from those clients' requests, as the
    filter was there when their handler started. Before, it was learned,
    and a rate-limited client's request then ran on c1's thread, which
    slept in the filter: the connection's other streams waited for the
    whole transfer."""
    srv = make_server(extra=f"""
LoadModule ratelimit_module {MODDIR}/mod_ratelimit.so
LoadModule setenvif_module {MODDIR}/mod_setenvif.so
Alias /cond "{docroot.path}"
<Location /cond>
  SetOutputFilter RATE_LIMIT
  SetEnvIf X-Slow "^yes$" rate-limit=40
</Location>
""").start()
    big = (docroot.path / "100k.bin").read_bytes()
    # Windows that hold the whole file: a response made goes out at once.
    c = H2Client(srv.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    c.conn.increment_flow_control_window(1 << 24)
    c.flush()
    for _ in range(3):
        for path in ("/1k.bin", "/cond/100k.bin"):
            st = c.wait_stream(c.request(path), timeout=30)
            assert (st.status, len(st.data)) == (200, len((docroot.path / path.split("/")[-1]).read_bytes()))
    slow = c.request("/cond/100k.bin", headers=[("x-slow", "yes")])
    small = c.request("/1k.bin")
    c.wait(lambda: c.streams[small].done, timeout=30)
    assert c.streams[small].status == 200
    assert not c.streams[slow].done, "the small request waited for the rate-limited one"
    st = c.wait_stream(slow, timeout=30)
    assert (st.status, bytes(st.data)) == (200, big)
    c.close()


def test_a_burst_of_learned_static_files_shares_one_secondary_connection(make_server, docroot):
    """Streams run on c1's thread go one at a time, each one's frames
    serialized before the next starts: its request ends and its secondary
    connection serves the next. Twenty requests for a learned static file,
    sent in one write, so read together, are answered by the one c2 the
    connection already has, instead of a few held at once."""
    srv = make_server(loglevel="warn http2:debug").start()
    small = (docroot.path / "1k.bin").read_bytes()
    c = H2Client(srv.port)
    try:
        for _ in range(3):
            st = c.wait_stream(c.request("/1k.bin"), timeout=30)
            assert (st.status, bytes(st.data)) == (200, small)
        before = srv.read_error_log().count("new secondary connection")
        assert before >= 1
        send_now = c.flush
        c.flush = lambda: None  # queue the HEADERS frames, then send them at once
        sids = [c.request("/1k.bin") for _ in range(20)]
        c.flush = send_now
        c.flush()
        for sid in sids:
            st = c.wait_stream(sid, timeout=30)
            assert (st.status, bytes(st.data)) == (200, small)
    finally:
        c.close()
    made = srv.read_error_log().count("new secondary connection") - before
    assert made == 0, f"the burst made {made} more secondary connections"


def occupy_the_only_worker(srv):
    """A 3 s CGI, on a connection of its own, holds a server's only worker
    (H2MaxWorkers 1): a stream that waits for a worker meanwhile is late,
    one run on c1's thread is not. Returns (its client, its stream)."""
    busy = H2Client(srv.port)
    cgi = busy.request("/cgi/slow.cgi?3")
    time.sleep(0.5)
    return busy, cgi


def test_streams_waiting_for_a_worker_start_most_urgent_first(make_server):
    """With the only worker busy, four requests of urgency 6 and then one
    of urgency 0 wait on one connection: the first goes to the worker's
    queue at once (a connection always has one stream under way), and of
    the others the urgent one starts next, before the earlier ones (it
    started last: arrival order)."""
    srv = make_server(h2_conf="H2MinWorkers 1\nH2MaxWorkers 1").start()
    busy, _ = occupy_the_only_worker(srv)
    c = H2Client(srv.port)
    try:
        low = [c.request(f"/cgi/env.cgi?{i}", headers=[("priority", "u=6")]) for i in range(4)]
        urgent = c.request("/cgi/env.cgi?urgent", headers=[("priority", "u=0")])
        for sid in low + [urgent]:
            assert c.wait_stream(sid, timeout=30).status == 200
        assert c.ended_order == [low[0], urgent, *low[1:]], (c.ended_order, low, urgent)
    finally:
        c.close()
        busy.close()


def test_url_that_stops_being_a_static_file_goes_back_to_workers(make_server, docroot):
    """A learned URL whose next run is not a static file any more (here the
    file became a directory: mod_dir redirects) is answered correctly on
    c1's thread, and from then on waits for a worker again."""
    srv = make_server(h2_conf="H2MinWorkers 1\nH2MaxWorkers 1").start()
    flip = docroot.path / "flip-static"
    flip.write_bytes(b"static\n")
    flip.chmod(0o644)
    c = H2Client(srv.port)
    try:
        for _ in range(3):
            st = c.wait_stream(c.request("/flip-static"), timeout=30)
            assert (st.status, bytes(st.data)) == (200, b"static\n")
        flip.unlink()
        flip.mkdir()
        flip.chmod(0o755)
        busy, cgi = occupy_the_only_worker(srv)
        t0 = time.time()
        st = c.wait_stream(c.request("/flip-static"), timeout=30)
        first = time.time() - t0
        assert st.status == 301 and (st.header("location") or "").endswith("/flip-static/")
        st = c.wait_stream(c.request("/flip-static"), timeout=30)
        second = time.time() - t0
        assert st.status == 301
        assert first < 1.5, f"the learned URL waited {first:.1f}s for the busy worker"
        assert second > 1.5, f"the unlearned URL did not wait for the worker ({second:.1f}s)"
        assert busy.wait_stream(cgi, timeout=30).status == 200
        busy.close()
    finally:
        c.close()
        if flip.is_dir():
            flip.rmdir()
        else:
            flip.unlink(missing_ok=True)


def test_url_whose_handler_depends_on_a_cookie_stays_on_workers(make_server, docroot):
    """A URL that a RewriteCond on a cookie sends to a CGI for logged-in
    users and to a static file for everyone else: once a logged-in
    user's request ran on c1's thread (the URL was learned as a static
    file), the anonymous requests after it, run on workers, do not teach
    c1 the URL again (each logged-in request after them ran the CGI on
    c1's thread, holding up its connection)."""
    srv = make_server(h2_conf="H2MinWorkers 1\nH2MaxWorkers 1", extra="""
RewriteCond %{HTTP_COOKIE} logged_in
RewriteRule ^/mixed$ /cgi/env.cgi [PT,L]
RewriteRule ^/mixed$ /1k.bin [PT,L]""").start()
    small = docroot.file("1k.bin").read_bytes()
    c = H2Client(srv.port)
    try:
        for _ in range(3):
            st = c.wait_stream(c.request("/mixed"), timeout=30)
            assert (st.status, bytes(st.data)) == (200, small)
        st = c.wait_stream(c.request("/mixed", headers=[("cookie", "logged_in=1")]), timeout=30)
        assert st.status == 200 and bytes(st.data).startswith(b"HTTP2=on"), bytes(st.data)
        for _ in range(3):
            st = c.wait_stream(c.request("/mixed"), timeout=30)
            assert (st.status, bytes(st.data)) == (200, small)
        busy, cgi = occupy_the_only_worker(srv)
        t0 = time.time()
        st = c.wait_stream(c.request("/mixed"), timeout=30)
        waited = time.time() - t0
        assert (st.status, bytes(st.data)) == (200, small)
        assert waited > 1.5, f"the mixed URL ran on c1's thread again ({waited:.1f}s)"
        assert busy.wait_stream(cgi, timeout=30).status == 200
        busy.close()
    finally:
        c.close()


def slab_region_rss_kib(pid):
    """RSS of the module's slab region in a process (src/alloc.rs: an
    anonymous mapping of 256 MiB and two 64 KiB slabs; nothing else in an
    httpd process maps that much at once, and should the kernel merge it
    with a neighbour it only grows), None when absent."""
    size = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) rw-p \S+ \S+ 0\s*(\[anon:mod_h2rs slabs\])?\s*$", line)
            if m:
                size = int(m[2], 16) - int(m[1], 16)
            elif re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                size = None
            elif line.startswith("Rss:") and size is not None and size >= (256 << 20):
                return int(line.split()[1])
    return None


def test_children_allocate_from_the_module_slabs_and_the_parent_does_not(server):
    """The module's small objects come from its own slabs in the children
    (so RSS does not climb with the requests served, see INTERNALS), never
    in the parent, which unloads the module on a restart."""
    for _ in range(3):
        r = curl("--http2-prior-knowledge", server.url("/index.html"))
        assert r.returncode == 0
    in_children = [slab_region_rss_kib(pid) for pid in server.mpm_children()]
    assert in_children and all(kib is not None for kib in in_children), in_children
    assert any(kib > 0 for kib in in_children), in_children
    assert slab_region_rss_kib(server.pid) is None


def test_a_burst_whose_tail_waits_in_the_tls_filters_is_read_at_once(make_server, certs):
    """A turn reads at most READ_BUDGET of the client's input; what it
    leaves may already be out of the socket, in mod_ssl or the core's input
    filter, where polling the socket does not see it. A session idle after
    such a turn then went back to the MPM, and the request at the burst's
    tail waited for the client's next bytes (here: for ever). Bursts of
    WINDOW_UPDATE frames just beyond the budget, of several sizes so that
    some end in the filters, each followed by a request."""
    srv = make_server().tls_config(certs, free_port()).start()
    request = rawh2.headers(1, rawh2.encode(rawh2.request_fields("/1k.bin", scheme="https")))
    for frames in range(20200, 21400, 100):  # 13 bytes each: 256 KiB is 20,165
        c = rawh2.Conn(srv.tls_port, tls=True)
        c.send(rawh2.window_update(0, 1) * frames + request)
        c.wait(lambda: c.resp(1).done, timeout=5, what=f"the response after {frames} WINDOW_UPDATEs")
        assert c.resp(1).status == 200
        c.sock.close()
