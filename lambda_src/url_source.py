"""{"url": ...}: an image fetched over http(s) from an allow-listed host (ALLOWED_URL_HOSTS), safely:
only public addresses, pinned between the check and the connection (no DNS rebinding), redirects
only to the same host and port and never down to http, a deadline over the whole fetch."""
import http.client
import ipaddress
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from payload import MAX_BYTES, SAFETY_MARGIN_MS, RequestError, check_size, image_type

URL_TIMEOUT_S = 5.0  # each socket operation of a {"url": ...} fetch
URL_DEADLINE_S = 10.0  # the whole fetch (connect, redirects, headers, body), or less when the function has less
MAX_URL_CHARS = 2048


def resolve_public(host, port):
    """Resolve ``host``; refuse it unless every address it resolves to is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RequestError(400, "UrlUnresolvable", f"cannot resolve host {host!r}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        addr = getattr(addr, "ipv4_mapped", None) or addr
        if (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved
                or addr.is_multicast or addr.is_unspecified or not addr.is_global):
            raise RequestError(400, "UrlAddressNotAllowed", f"host {host!r} resolves to a non-public address")
    return infos


class _Deadline:
    """The whole fetch's time limit. Per-operation timeouts do not bound a server that trickles a byte
    now and then, so when the limit passes a watchdog shuts the fetch's sockets down, which wakes any
    read blocked on them. (Name resolution is bounded by the resolver's own timeouts.)"""
    def __init__(self, seconds):
        self.at, self.expired = time.monotonic() + seconds, False
        self._sockets, self._lock = [], threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining_s(self):
        return self.at - time.monotonic()

    def watch(self, sock):
        with self._lock:
            if self.expired:
                sock.close()
                raise TimeoutError("url fetch deadline passed")
            self._sockets.append(sock.dup())  # a duplicate outlives TLS wrapping, which detaches ``sock``

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc_info):
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _pinned_connection(address, source_address, deadline):
    """Connect only to vetted addresses: no DNS-rebinding gap between the check and the use. Each socket
    operation waits URL_TIMEOUT_S at most, and never past the deadline."""
    last_error = OSError("no address to connect to")
    for *_, sockaddr in resolve_public(*address):
        budget_s = deadline.remaining_s()
        if budget_s <= 0:
            raise TimeoutError("url fetch deadline passed")
        try:
            sock = socket.create_connection(sockaddr[:2], min(URL_TIMEOUT_S, budget_s), source_address)
        except OSError as err:
            last_error = err
            continue
        deadline.watch(sock)
        return sock
    raise last_error


class _PinnedHandler(urllib.request.HTTPSHandler, urllib.request.HTTPHandler):
    """Replaces urllib's http and https handlers: every connection goes through _pinned_connection."""
    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline

    def _pinned(self, connection_class):
        def make(*args, **kwargs):
            connection = connection_class(*args, **kwargs)
            connection._create_connection = lambda address, timeout=None, source_address=None: _pinned_connection(
                address, source_address, self.deadline)
            return connection
        return make

    def http_open(self, req):
        return self.do_open(self._pinned(http.client.HTTPConnection), req)

    def https_open(self, req):
        return self.do_open(self._pinned(http.client.HTTPSConnection), req, context=self._context)


def _effective_port(parsed):
    return parsed.port or (443 if parsed.scheme == "https" else 80)


class SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same host and port, and never from https to http."""
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlparse(req.full_url), urllib.parse.urlparse(newurl)
        if new.scheme not in ("http", "https") or new.hostname != old.hostname:
            raise RequestError(400, "UrlRedirectNotAllowed", "redirects to other hosts are not followed")
        if old.scheme == "https" and new.scheme == "http":
            raise RequestError(400, "UrlRedirectNotAllowed", "redirects from https to http are not followed")
        try:
            ports = _effective_port(old), _effective_port(new)
        except ValueError:
            raise RequestError(400, "UrlRedirectNotAllowed", "the redirect's port is not valid") from None
        if ports[0] != ports[1]:
            raise RequestError(400, "UrlRedirectNotAllowed",
                               f"redirects to another port ({ports[0]} -> {ports[1]}) are not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _is_timeout(err):
    return isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError)


def fetch_url(url, remaining_ms):
    """(body bytes, its image content type), within URL_DEADLINE_S and the ``remaining_ms`` the function has."""
    parsed = urllib.parse.urlparse(url if isinstance(url, str) and len(url) <= MAX_URL_CHARS else "")
    host = (parsed.hostname or "").rstrip(".").lower()
    if parsed.scheme not in ("http", "https") or not host:
        raise RequestError(400, "InvalidUrl", f"url must be an http(s) URL with a host, at most {MAX_URL_CHARS} "
                                              "characters")
    allowed = {h.strip().rstrip(".").lower() for h in os.environ.get("ALLOWED_URL_HOSTS", "").split(",")}
    if host not in allowed - {""}:
        raise RequestError(400, "UrlHostNotAllowed", f"host {host!r} is not in the allow-list")
    # 504, not 408: the caller's request arrived in time; the image host it named (upstream of this
    # function) did not answer in time, which is what API Gateway itself answers 504 for.
    too_slow = RequestError(504, "UrlFetchTimeout", "the url's host did not answer in time")
    budget_s = min(URL_DEADLINE_S, (remaining_ms - SAFETY_MARGIN_MS) / 1000)
    if budget_s <= 0:
        raise too_slow
    with _Deadline(budget_s) as deadline:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _PinnedHandler(deadline),
                                             SameHostRedirects)
        try:
            with opener.open(urllib.request.Request(url, headers={"Accept": "image/*"}),
                             timeout=URL_TIMEOUT_S) as resp:
                data, content_type = resp.read(MAX_BYTES + 1), resp.headers.get("Content-Type")
        except urllib.error.HTTPError as err:
            raise RequestError(400, "UrlFetchFailed", f"url answered HTTP {err.code}") from None
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
            if deadline.expired or _is_timeout(err):
                raise too_slow from None
            raise RequestError(400, "UrlFetchFailed", "could not fetch url") from None
        if deadline.expired:  # a body without Content-Length ends where the watchdog cut it
            raise too_slow
    return check_size(data, "url content"), image_type(content_type)
