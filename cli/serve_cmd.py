"""`enclip-qdrant serve`: shape the flags into `ServeOptions` and run the query service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import ApiKey, Device, EngineOpt, GrpcPort, Home, PreferGrpc, Timeout, Url, conn_for


def serve_command(
    collection: Annotated[str | None, typer.Option("--collection", help="Default: the last indexed.")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Default: the collection's own.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; beyond 127.0.0.1 set --key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8080,
    key: Annotated[str | None, typer.Option("--key", envvar="ENCLIP_API_KEY", show_default=False,
                                            help="API key clients must send (Authorization: Bearer or "
                                                 "X-API-Key) on every /v1 call.")] = None,
    home: Home = None, url: Url = None, api_key: ApiKey = None, prefer_grpc: PreferGrpc = False,
    grpc_port: GrpcPort = 6334,
    timeout: Timeout = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Queries encoded in one forward pass.")]
    = 32,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="Under load, how long a round of "
                                               "queries waits for more to batch with (an idle service encodes a "
                                               "query at once).")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Queries waiting to be encoded before "
                                           "new ones get 503.")] = 64,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.01, help="Largest upload.")] = 10.0,
    request_timeout: Annotated[float, typer.Option("--request-timeout", min=0.1, help="Seconds per request "
                                                   "before 504.")] = 30.0,
    max_connections: Annotated[int, typer.Option("--max-connections", min=0, help="Open connections before new "
                                                 "ones get 503 (0: max(256, 8 x --max-queue)).")] = 0,
    header_timeout: Annotated[float, typer.Option("--header-timeout", min=0.1, help="Seconds for a request's "
                                                  "head to arrive before the connection is closed.")] = 10.0,
    engine: EngineOpt = "auto",
    device: Device = "auto",
) -> None:
    """Serve search over HTTP: JSON API under /v1, a search page at /, API docs at /docs."""
    from enclip_qdrant import ServeOptions, serve

    conn = conn_for(home, url, api_key, prefer_grpc, timeout, grpc_port)
    serve(ServeOptions(collection=collection, bundle=bundle, home=home, url=url, api_key=api_key,
                       store_options=conn.options, host=host, port=port, key=key, max_batch=max_batch,
                       max_wait_ms=max_wait_ms, max_queue=max_queue,
                       max_upload_bytes=int(max_upload_mb * 1024 * 1024), request_timeout=request_timeout,
                       engine=engine, max_connections=max_connections, header_timeout=header_timeout,
                       device=device))
