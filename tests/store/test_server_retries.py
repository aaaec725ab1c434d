"""ServerStore against flaky servers on loopback: transient failures are retried, the rest never are.

The fake speaks Qdrant's REST API for the few endpoints a test needs, backed by qdrant-client's local
mode so its answers parse exactly as a real server's would. Every server here binds 127.0.0.1 on a
free port and is shut down when its test ends.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from enclip_qdrant.errors import CollectionNotFound, StoreError
from enclip_qdrant.store import CollectionSpec, ServerOptions, ServerStore
from enclip_qdrant.store.base import CollectionOptions
from enclip_qdrant.store.server import is_transient

FAST = 0.01  # backoff for tests: retries cost milliseconds
QUICK = ServerOptions(backoff=FAST)


@dataclass
class Fault:
    """What the fake does to one request instead of (or besides) answering it.

    kind: "ok" answers normally; "fail" answers `status` without doing anything; "lost" does the work
    and then answers `status` (a reply lost behind a gateway); "drop" closes the connection without a
    reply; "slow" waits `seconds` before answering normally (past the client's timeout).
    """

    kind: str = "fail"
    status: int = 503
    seconds: float = 0.0


@dataclass
class FakeQdrant:
    plan: list[Fault] = field(default_factory=list)  # consumed one per request, then normal answers
    always: Fault | None = None  # every request, forever
    requests: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path, JSON body)
    local: QdrantClient = field(default_factory=lambda: QdrantClient(":memory:"))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> Fault | None:
        with self.lock:
            if self.always is not None:
                return self.always
            return self.plan.pop(0) if self.plan else None

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """Qdrant's REST shapes for the endpoints ServerStore.create/list/exists/info/drop use."""
        if method == "GET" and path == "/collections":
            return 200, self.local.get_collections().model_dump(mode="json")
        if method == "GET" and path == "/aliases":
            return 200, self.local.get_aliases().model_dump(mode="json")
        match = re.fullmatch(r"/collections/([^/]+)(/exists|/index)?", path)
        if not match:
            return 404, {"status": {"error": f"Not found: {path}"}}
        name, tail = match.groups()
        if tail == "/exists":
            return 200, {"exists": self.local.collection_exists(name)}
        if tail == "/index":
            return 200, {"operation_id": 1, "status": "completed"}
        if method == "PUT":
            if self.local.collection_exists(name):
                return 409, {"status": {"error": f"Wrong input: Collection `{name}` already exists!"}}
            spec = models.CreateCollection.model_validate(body)
            self.local.create_collection(name, vectors_config=spec.vectors, metadata=spec.metadata)
            return 200, True
        if not self.local.collection_exists(name):
            return 404, {"status": {"error": f"Not found: Collection `{name}` doesn't exist!"}}
        if method == "DELETE":
            return 200, self.local.delete_collection(name)
        return 200, self.local.get_collection(name).model_dump(mode="json")


def _handler(fake: FakeQdrant) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = urlsplit(self.path).path
            body = json.loads(raw) if raw else None
            fake.requests.append((self.command, path, body))
            fault = fake.next_fault()
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                return
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind == "fail":
                self._send(fault.status, {"status": {"error": f"fake failure {fault.status}"}})
                return
            status, result = fake.answer(self.command, path, body)
            if fault is not None and fault.kind == "lost":
                status, result = fault.status, {"status": {"error": "upstream timed out"}}
            if status == 200:
                result = {"result": result, "status": "ok", "time": 0.0}
            self._send(status, result)

        def _send(self, status: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout) before we answered
                pass

        do_GET = do_PUT = do_POST = do_DELETE = _serve  # noqa: N815 - http.server's naming

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def fake() -> Iterator[tuple[FakeQdrant, str]]:
    state = FakeQdrant()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        state.local.close()


# -- transient failures are retried ------------------------------------------------------------


@pytest.mark.parametrize("failures", [1, 2, 3])
def test_503s_then_success(fake: tuple[FakeQdrant, str], failures: int) -> None:
    state, url = fake
    state.plan = [Fault("fail", 503)] * failures
    with ServerStore(url, options=QUICK) as store:
        assert store.list_collections() == []
        assert store.retried == failures
    assert len(state.requests) == failures + 1


@pytest.mark.parametrize("status", [502, 503, 504, 429])
def test_every_transient_status_is_retried(fake: tuple[FakeQdrant, str], status: int) -> None:
    state, url = fake
    state.plan = [Fault("fail", status)]
    with ServerStore(url, options=QUICK) as store:
        assert store.list_collections() == []
        assert store.retried == 1


def test_dropped_connection_is_retried(fake: tuple[FakeQdrant, str]) -> None:
    state, url = fake
    state.plan = [Fault("drop"), Fault("drop")]
    with ServerStore(url, options=QUICK) as store:
        assert store.list_collections() == []
        assert store.retried == 2


def test_timeout_is_retried(fake: tuple[FakeQdrant, str]) -> None:
    state, url = fake
    state.plan = [Fault("slow", seconds=1.6)]  # qdrant-client's timeout is whole seconds: 1 s is its least
    start = time.monotonic()
    with ServerStore(url, options=ServerOptions(timeout=1, backoff=FAST)) as store:
        assert store.list_collections() == []
        assert store.retried == 1
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_always_503_gives_up_after_retries(fake: tuple[FakeQdrant, str], retries: int) -> None:
    state, url = fake
    state.always = Fault("fail", 503)
    start = time.monotonic()
    options = ServerOptions(retries=retries, backoff=FAST)
    with ServerStore(url, options=options) as store, pytest.raises(StoreError) as err:
        store.list_collections()
    message = str(err.value)
    assert "HTTP 503" in message and "\n" not in message
    assert ("gave up after" in message) == (retries > 0)
    assert len(state.requests) == retries + 1
    assert store.retried == retries
    assert time.monotonic() - start < 3


def test_unreachable_counts_attempts() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ServerOptions(retries=2, backoff=FAST)
    with ServerStore(f"http://127.0.0.1:{port}", options=options) as store, pytest.raises(
        StoreError, match="cannot reach Qdrant.*gave up after 3 attempts"
    ):
        store.list_collections()
    assert store.retried == 2


# -- non-transient failures are not --------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_are_not_retried(fake: tuple[FakeQdrant, str], status: int) -> None:
    state, url = fake
    state.always = Fault("fail", status)
    with ServerStore(url, options=QUICK) as store, pytest.raises(StoreError, match="API key"):
        store.list_collections()
    assert len(state.requests) == 1
    assert store.retried == 0


def test_missing_collection_is_not_retried(fake: tuple[FakeQdrant, str]) -> None:
    state, url = fake
    with ServerStore(url, options=QUICK) as store, pytest.raises(CollectionNotFound):
        store.info("nowhere")
    assert [p for _, p, _ in state.requests] == ["/aliases", "/collections/nowhere"]  # each sent once
    assert store.retried == 0


@pytest.mark.parametrize("status", [400, 500])
def test_bad_request_and_server_bug_are_not_retried(fake: tuple[FakeQdrant, str], status: int) -> None:
    state, url = fake
    state.always = Fault("fail", status)
    with ServerStore(url, options=QUICK) as store, pytest.raises(StoreError, match=f"HTTP {status}"):
        store.list_collections()
    assert len(state.requests) == 1


# -- writes stay correct when retried ------------------------------------------------------------

SPEC = CollectionSpec(vectors={"clip_a": 4, "clip_b": 4}, metadata={"bundle_fingerprint": "abc", "created": "now"})


def test_create_sends_options_over_the_wire(fake: tuple[FakeQdrant, str]) -> None:
    """What a real server receives: the JSON qdrant-client puts in PUT /collections/{name}."""
    state, url = fake
    options = CollectionOptions(
        on_disk_vectors=True,
        quantization="int8",
        hnsw_m=32,
        hnsw_ef_construct=200,
        hnsw_full_scan_kb=5000,
        shard_number=3,
        replication_factor=2,
        payload_indexes={"baseColour": "keyword", "year": "integer"},
    )
    with ServerStore(url, options=QUICK) as store:
        store.create("shop", CollectionSpec(vectors=SPEC.vectors, metadata=SPEC.metadata, options=options))
    (body,) = [b for m, p, b in state.requests if m == "PUT" and p == "/collections/shop"]
    assert body["vectors"] == {
        "clip_a": {"size": 4, "distance": "Cosine", "on_disk": True},
        "clip_b": {"size": 4, "distance": "Cosine", "on_disk": True},
    }
    assert body["quantization_config"] == {"scalar": {"type": "int8", "always_ram": True}}
    assert body["hnsw_config"] == {"m": 32, "ef_construct": 200, "full_scan_threshold": 5000}
    assert body["shard_number"] == 3 and body["replication_factor"] == 2
    indexes = {b["field_name"]: b["field_schema"] for m, p, b in state.requests if p == "/collections/shop/index"}
    assert indexes == {"cluster": "integer", "baseColour": "keyword", "year": "integer"}


def test_create_without_options_sends_no_layout(fake: tuple[FakeQdrant, str]) -> None:
    state, url = fake
    with ServerStore(url, options=QUICK) as store:
        store.create("shop", SPEC)
    (body,) = [b for m, p, b in state.requests if m == "PUT" and p == "/collections/shop"]
    assert set(body) == {"vectors", "metadata"}  # the server's defaults decide everything else


def test_create_whose_reply_was_lost_is_not_an_error(fake: tuple[FakeQdrant, str]) -> None:
    """The first PUT created the collection but its reply was a 504; the retry's 409 is our own doing."""
    state, url = fake
    state.plan = [Fault("ok"), Fault("ok"), Fault("lost", 504)]  # the alias and exists checks, the create
    with ServerStore(url, options=QUICK) as store:
        store.create("shop", SPEC)
        assert store.retried == 1
        assert store.list_collections() == ["shop"]  # marked as ours, indexes made
    puts = [p for m, p, _ in state.requests if m == "PUT" and p == "/collections/shop"]
    assert len(puts) == 2  # the lost one and the retry that found it


def test_create_that_collides_after_a_retry_with_someone_else_errors(fake: tuple[FakeQdrant, str]) -> None:
    """A 409 after a retry is only ours if the collection holds our metadata; otherwise it is a real clash."""
    state, url = fake
    state.plan = [Fault("ok"), Fault("fail", 503)]
    original = state.answer

    def racing(method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "PUT" and path == "/collections/shop" and not state.local.collection_exists("shop"):
            vectors = {"v": models.VectorParams(size=2, distance=models.Distance.DOT)}
            state.local.create_collection("shop", vectors_config=vectors, metadata={"owner": "someone else"})
        return original(method, path, body)

    state.answer = racing  # type: ignore[method-assign]
    with ServerStore(url, options=QUICK) as store, pytest.raises(StoreError, match="already exists"):
        store.create("shop", SPEC)


def test_drop_whose_reply_was_lost_is_done(fake: tuple[FakeQdrant, str]) -> None:
    state, url = fake
    with ServerStore(url, options=QUICK) as store:
        store.create("shop", SPEC)
        state.plan = [Fault("ok"), Fault("ok"), Fault("lost", 503)]  # aliases, describe, the lost DELETE
        store.drop("shop")
        assert store.retried == 1
        assert not store.exists("shop")


# -- gRPC ---------------------------------------------------------------------------------------


def test_grpc_unavailable_is_retried_and_permission_is_not() -> None:
    from qdrant_client import grpc as qgrpc

    codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    seen: list[str] = []

    def list_collections(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append("List")
        if codes:
            context.abort(codes.pop(0), "node restarting")
        return qgrpc.ListCollectionsResponse(collections=[], time=0.0).SerializeToString()

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            if details.method == "/qdrant.Collections/List":
                return grpc.unary_unary_rpc_method_handler(list_collections)
            return None

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((Handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = QdrantClient(host="127.0.0.1", grpc_port=port, prefer_grpc=True, timeout=2,
                              check_compatibility=False)
        with ServerStore(client=client, options=QUICK) as store:
            assert store.list_collections() == []
            assert store.retried == 2 and len(seen) == 3
            codes.append(grpc.StatusCode.PERMISSION_DENIED)
            with pytest.raises(StoreError, match="API key"):
                store.list_collections()
            assert store.retried == 2 and len(seen) == 4
        client.close()
    finally:
        server.stop(grace=None).wait(timeout=5)


# -- the pieces ------------------------------------------------------------------------------------


class _Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def _response(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "", b"", httpx.Headers())


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_response(503), True),
        (_response(502), True),
        (_response(504), True),
        (_response(429), True),
        (_response(400), False),
        (_response(401), False),
        (_response(403), False),
        (_response(404), False),
        (_response(409), False),
        (_response(500), False),
        (ResponseHandlingException(httpx.ConnectError("refused")), True),
        (ResponseHandlingException(httpx.ReadTimeout("slow")), True),
        (ResponseHandlingException(httpx.RemoteProtocolError("reset")), True),
        (ResponseHandlingException(ValueError("response did not parse")), False),
        (ConnectionResetError(), True),
        (_Rpc(grpc.StatusCode.UNAVAILABLE), True),
        (_Rpc(grpc.StatusCode.DEADLINE_EXCEEDED), True),
        (_Rpc(grpc.StatusCode.UNAUTHENTICATED), False),
        (_Rpc(grpc.StatusCode.NOT_FOUND), False),
        (_Rpc(grpc.StatusCode.INVALID_ARGUMENT), False),
        (ValueError("Collection x not found"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_tls_failure_is_not_transient() -> None:
    import ssl

    inner = ssl.SSLCertVerificationError("certificate verify failed")
    outer = httpx.ConnectError("handshake")
    outer.__cause__ = inner
    assert not is_transient(ResponseHandlingException(outer))


def test_backoff_grows_is_jittered_and_capped() -> None:
    store = ServerStore(":memory:", options=ServerOptions(backoff=1.0, max_backoff=4.0))
    plain = ValueError()
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (2, 4), (2, 4)], start=1):
        delays = [store._delay(attempt, plain) for _ in range(200)]
        assert low <= min(delays) and max(delays) <= high
        assert len(set(delays)) > 1  # jitter
    retry_after = type("Exhausted", (Exception,), {"retry_after_s": 3})()
    assert store._delay(1, retry_after) >= 3  # the server's Retry-After wins, within the cap
    assert store._delay(1, type("Long", (Exception,), {"retry_after_s": 60})()) <= 4


@pytest.mark.parametrize(
    "kwargs", [{"retries": -1}, {"retries": 1.5}, {"backoff": -1}, {"timeout": 0}, {"max_backoff": -2}]
)
def test_bad_retry_settings_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(StoreError):
        ServerOptions(**kwargs)


def test_connection_accepts_readme_mapping() -> None:
    from enclip_qdrant import api

    conn = api.Connection(url=":memory:", options={"prefer_grpc": True, "retries": 5})
    assert conn.options == ServerOptions(prefer_grpc=True, retries=5)
    with pytest.raises(StoreError, match="unknown server option"):
        api.Connection(options={"retry": 5})


def test_https_and_grpc_are_passed_on() -> None:
    store = ServerStore("qdrant.example:6333", options=ServerOptions(https=True, prefer_grpc=True, timeout=7))
    assert (store.https, store.prefer_grpc, store.timeout) == (True, True, 7)
    remote = store.client._client  # type: ignore[attr-defined]  # no request is made: nothing to reach
    assert remote._https is True and remote._prefer_grpc is True
    store.close()
    scheme_wins = ServerStore("http://qdrant.example:6333", options=ServerOptions(https=True))
    assert scheme_wins.client._client._https is False  # type: ignore[attr-defined]


def test_invalid_url_is_one_line() -> None:
    with pytest.raises(StoreError, match="invalid Qdrant URL"):
        ServerStore("ftp://qdrant.example")


# -- the CLI's deployment flags reach the store ------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ENCLIP_HOME", str(tmp_path / "home"))
    for var in ("QDRANT_URL", "QDRANT_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _capture_index(monkeypatch: pytest.MonkeyPatch, created: bool = True) -> dict[str, Any]:
    from enclip_qdrant import api
    from enclip_qdrant.indexing.run import IndexReport

    seen: dict[str, Any] = {}

    def fake_index(catalog: Any, **kwargs: Any) -> IndexReport:
        seen.update(kwargs)
        return IndexReport("shop", "http://127.0.0.1:9", "abc", created=created)

    monkeypatch.setattr(api, "index", fake_index)
    return seen


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_cli_index_flags_become_options(cli_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from enclip_qdrant.cli.app import app

    seen = _capture_index(monkeypatch)
    result = CliRunner().invoke(app, [
        "index", str(cli_home / "shop"), "--url", "http://127.0.0.1:9", "--api-key", "k", "--prefer-grpc",
        "--timeout", "5", "--on-disk", "--quantization", "int8", "--shards", "3", "--replicas", "2",
        "--index-field", "baseColour", "--index-field", "year:integer", "--json",
    ])
    assert result.exit_code == 0, result.output
    assert seen["options"] == CollectionOptions(
        on_disk_vectors=True, quantization="int8", shard_number=3, replication_factor=2,
        payload_indexes={"baseColour": "keyword", "year": "integer"},
    )
    conn = seen["conn"]
    assert (conn.url, conn.api_key, conn.options) == ("http://127.0.0.1:9", "k",
                                                      ServerOptions(prefer_grpc=True, timeout=5.0))
    store = conn.open()  # the options reach ServerStore
    assert isinstance(store, ServerStore) and store.prefer_grpc is True and store.timeout == 5.0
    store.close()


def test_cli_index_without_flags_passes_no_options(cli_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from enclip_qdrant.cli.app import app

    seen = _capture_index(monkeypatch)
    result = CliRunner().invoke(app, ["index", str(cli_home / "shop"), "--json"])
    assert result.exit_code == 0, result.output
    assert seen["options"] is None and seen["conn"].options == ServerOptions()


def test_cli_says_options_skip_an_existing_collection(cli_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from enclip_qdrant.cli.app import app

    _capture_index(monkeypatch, created=False)
    result = CliRunner().invoke(app, ["index", str(cli_home / "shop"), "--on-disk", "--json"])
    assert result.exit_code == 0
    assert "already existed" in result.output


def test_cli_rejects_unknown_quantization(cli_home: Any) -> None:
    from typer.testing import CliRunner

    from enclip_qdrant.cli.app import app

    result = CliRunner().invoke(app, ["index", str(cli_home / "shop"), "--quantization", "int4"])
    assert result.exit_code == 2 and "int4" in result.output


def test_cli_info_retries_through_a_503(cli_home: Any, fake: tuple[FakeQdrant, str]) -> None:
    from typer.testing import CliRunner

    from enclip_qdrant.cli.app import app

    state, url = fake
    state.plan = [Fault("fail", 503)]
    result = CliRunner().invoke(app, ["info", "--url", url, "--timeout", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["collections"] == []
    assert [p for _, p, _ in state.requests] == ["/collections", "/collections", "/aliases"]  # the 503, its retry
