"""ClickHouse's HTTP interface over an embedded chDB, so that several processes can share one.

chDB (the ClickHouse engine in-process) admits one process per data path, but two workers sharing a
topic must write to the same ClickHouse, and the CLI wants to query while `dev` runs. This server owns
the chDB session and answers the subset of ClickHouse's HTTP protocol that clickhouse-connect's ordinary
HTTP client uses, so the workers connect with `KERN_CLICKHOUSE_DSN=http://127.0.0.1:PORT`, the same code
path as against a production server:

- the statement is the `query` URL parameter followed by the request body (ClickHouse's rule), with
  `param_<name>` values bound by chDB; an INSERT's data follows its `FORMAT <name>` line;
- request bodies may be lz4/zstd/gzip encoded (`Content-Encoding`); responses are sent uncompressed;
- for an INSERT, the other URL parameters are ClickHouse settings (`insert_deduplication_token`, ...)
  applied to that statement only; errors answer 500 with ClickHouse's message and exception code.

Development and test tool only: no authentication, loopback by default.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from devstack.processes import ensure_port_free, free_port, kill, stop  # stdlib only: also runs under chDB 3.7

_TRAILING_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_INSERT = re.compile(r"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n|$)", re.IGNORECASE | re.DOTALL)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)")
# URL parameters that are protocol, not settings.
_PROTOCOL_PARAMS = {
    "query",
    "database",
    "session_id",
    "session_timeout",
    "session_check",
    "query_id",
    "default_format",
    "compress",
    "decompress",
    "enable_http_compression",
    "wait_end_of_query",
    "client_protocol_version",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "user",
    "password",
    "quota_key",
    "buffer_size",
    "http_zlib_compression_level",
}


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if not encoding or not body:
        return body
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(body)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _setting_value(value: str) -> str:
    return (
        value if re.fullmatch(r"-?\d+(\.\d+)?", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    )


class ChdbHttpServer:
    def __init__(
        self,
        path: str,
        host: str = "127.0.0.1",
        port: int = 0,
        insert_delay_s: float = 0.0,
        certfile: str | None = None,
    ):
        import chdb.session

        self.insert_delay_s = insert_delay_s  # a slow ClickHouse, for tests of the workers' behaviour

        self.session = chdb.session.Session(path)
        self.lock = threading.Lock()  # one chDB session: one statement at a time
        self.spool = tempfile.mkdtemp(prefix="chdb-http-")
        self.host = host
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.scheme = "http"
        if certfile:  # HTTPS, as a ClickHouse server with TLS (certificate and key in one PEM file)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> ChdbHttpServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.session.close()

    def execute(self, params: dict[str, str], body: bytes) -> tuple[bytes, str]:
        """Run one request's statement; returns (output, format)."""
        query = params.get("query", "").encode()
        text = query + (b"\n" if query and body else b"") + body
        bind = {name[6:]: value for name, value in params.items() if name.startswith("param_")}
        insert = _INSERT.match(text[:65536].decode("utf-8", "replace"))
        if insert and self.insert_delay_s:
            time.sleep(self.insert_delay_s)
        with self.lock:
            if insert:
                statement, fmt = insert.groups()
                data = text[len(insert.group(0).encode()) :]
                settings = ", ".join(
                    f"{k} = {_setting_value(v)}"
                    for k, v in params.items()
                    if k not in _PROTOCOL_PARAMS and not k.startswith("param_")
                )
                spool = os.path.join(self.spool, f"insert-{threading.get_ident()}")
                with open(spool, "wb") as out:
                    out.write(data)
                self.session.query(
                    f"{statement} FROM INFILE '{spool}'{' SETTINGS ' + settings if settings else ''} FORMAT {fmt}"
                )
                return b"", fmt
            sql = text.decode()
            match = _TRAILING_FORMAT.search(sql)
            fmt = match.group(1) if match else params.get("default_format", "TabSeparated")
            if match:
                sql = sql[: match.start()]
            result = self.session.query(sql, fmt, params=bind) if bind else self.session.query(sql, fmt)
            return (result.bytes() if result is not None else b""), fmt

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_request(self, *args) -> None:  # no access log; errors still go to stderr
                pass

            def do_GET(self) -> None:
                if urlsplit(self.path).path == "/ping":
                    return self._reply(200, b"Ok.\n", {})
                self._handle(b"")

            def do_POST(self) -> None:
                body = (
                    self._read_chunked()
                    if self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                    else self.rfile.read(int(self.headers.get("Content-Length") or 0))
                )
                try:
                    body = _decode_body(body, self.headers.get("Content-Encoding"))
                except ValueError as exc:
                    return self._reply(400, str(exc).encode(), {})
                self._handle(body)

            def _read_chunked(self) -> bytes:
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)

            def _handle(self, body: bytes) -> None:
                params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
                try:
                    output, fmt = server.execute(params, body)
                except Exception as exc:  # noqa: BLE001 - every engine error goes back to the client
                    message = str(exc)
                    code = _ERROR_CODE.search(message)
                    return self._reply(
                        500, message.encode(), {"X-ClickHouse-Exception-Code": code.group(1) if code else "1000"}
                    )
                self._reply(
                    200,
                    output,
                    {
                        "X-ClickHouse-Format": fmt,
                        "X-ClickHouse-Timezone": "UTC",
                        "X-ClickHouse-Summary": json.dumps({"read_rows": "0", "written_rows": "0"}),
                    },
                )

            def _reply(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@dataclass
class ChdbServerProcess:
    """`python -m devstack.chdb_server` on a free loopback port, stopped by the process id we started."""

    path: str
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: str | None = None
    insert_delay_s: float = 0.0
    certfile: str | None = None  # serve HTTPS with this PEM (certificate and key)
    python: str = sys.executable  # an interpreter with another chDB build (the bench's Kafka engine)

    @property
    def url(self) -> str:
        return f"{'https' if self.certfile else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ChdbServerProcess:
        self.port = self.port or free_port()
        ensure_port_free("127.0.0.1", self.port)
        with open(self.log_path or os.devnull, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "devstack.chdb_server",
                    "--path",
                    self.path,
                    "--port",
                    str(self.port),
                    "--insert-delay",
                    str(self.insert_delay_s),
                    *(["--certfile", self.certfile] if self.certfile else []),
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                start_new_session=True,  # a terminal's Ctrl-C is for our parent, which stops the workers first
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                context = ssl.create_default_context(cafile=self.certfile) if self.certfile else None
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1, context=context) as response:
                    if response.read() == b"Ok.\n":
                        return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"chDB server on port {self.port} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop(self.process)

    def kill(self) -> None:
        kill(self.process)

    def __enter__(self) -> ChdbServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="ClickHouse HTTP interface over an embedded chDB")
    parser.add_argument("--path", required=True, help="chDB data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--insert-delay", type=float, default=0.0, help="seconds to hold every INSERT (tests)")
    parser.add_argument("--certfile", help="PEM with certificate and key: serve HTTPS")
    args = parser.parse_args()
    server = ChdbHttpServer(os.path.abspath(args.path), args.host, args.port, args.insert_delay, args.certfile)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server.start()
    print(f"listening on {server.url}", flush=True)
    stopping.wait()
    server.stop()


if __name__ == "__main__":
    main()
