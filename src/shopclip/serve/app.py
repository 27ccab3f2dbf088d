"""The HTTP API and web page: `create_app(workdir)` returns a FastAPI app ready for uvicorn.

Routes are plain `def` functions: FastAPI runs them in its thread pool, so searches run
concurrently (faiss and torch release the GIL) while writes queue on the state's lock.
Every error a client can cause is an `ApiError` with a 4xx status and one JSON shape,
and each route documents the codes it sends, so generated clients and schemathesis
know them.
"""


import gc
import hmac
import json
import logging
import mimetypes
import os
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
import numpy as np
from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from shopclip.index.base import StoreUnavailableError
from shopclip.serve.errors import ApiError, responses
from shopclip.serve.fetch import fetch_image
from shopclip.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from shopclip.serve.metrics import Metrics
from shopclip.serve.state import ServeState, public_product

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
View = Literal["image", "text", "fused"]
Mode = Literal["vector", "lexical", "hybrid"]
Fusion = Literal["rrf", "weighted"]
Lang = Literal["auto", "en", "hi", "es", "fr", "de", "xx"]
FacetName = Literal["brand", "color", "gender", "type", "price"]
ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

# ---------------------------------------------------------------------- response models


class Hit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity to the query")
    title: str
    category: str
    image_url: str
    interest: int | None = Field(default=None, description="recommendations: which interest it serves")


class SearchResponse(BaseModel):
    view: str = Field(description="which product vectors were searched: image, text or fused")
    took_ms: float
    results: list[Hit]


class UnderstoodFilter(BaseModel):
    facet: str = Field(description="brand, color, gender, type or price; pass it in `drop` to remove this filter")
    values: list[str]
    words: str = Field(description="the query words it came from")
    label: str = Field(description='what to show, e.g. "colour = red" or "price < 1500"')


class Understood(BaseModel):
    text: str = Field(description="the query the rankers saw (price phrases taken out)")
    filters: list[UnderstoodFilter]
    shown: str = Field(description='"showing: colour = red, price < 1500", empty without filters')
    ignored: list[dict[str, str]] = Field(description="phrases not used as filters, with the reason")


class TextSearchResponse(SearchResponse):
    mode: str = Field(description="vector, lexical or hybrid")
    fusion: str | None = Field(default=None, description="rrf or weighted (hybrid only)")
    lang: str = Field(description="the query's language, detected or as given")
    encoder: str = Field(description="shopclip (English text tower), multilingual, or empty (lexical)")
    understood: Understood | None = None
    notes: list[str] = Field(default_factory=list)


class Product(BaseModel):
    id: str
    title: str
    category: str
    description: str
    attributes: dict[str, str]
    group: str | None
    labels: dict[str, Any]
    url: str | None
    price: float | None
    split: str | None
    image_url: str


class UpsertResponse(BaseModel):
    created: bool
    product: Product


class DeleteResponse(BaseModel):
    id: str
    deleted: bool


class Category(BaseModel):
    path: str
    depth: int
    count: int


class CategoriesResponse(BaseModel):
    categories: list[Category]


class Interest(BaseModel):
    members: list[str]
    share: float = Field(description="fraction of the history's weight in this interest")


class RecommendResponse(SearchResponse):
    threshold: float = Field(description="cosine above which history items were grouped")
    interests: list[Interest]
    unknown: list[str] = Field(description="history ids not in the catalog (skipped)")


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when a dependency is down (see `dependencies`)")
    products: int
    index: dict[str, int]
    model_loaded: bool
    aligned: bool
    version: int
    writes_enabled: bool
    dependencies: dict[str, str] = Field(default_factory=dict,
                                         description="each dependency (vector store per view, embedding log): "
                                                     "ok or why it is down")


HistoryId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _whole_number(value: Any) -> Any:
    """JSON Schema's integer includes 10.0; strings and booleans stay errors (no silent coercion)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class HistoryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    id: HistoryId
    weight: float = Field(default=1.0, ge=0, le=1e6, description="e.g. 1 for a view, 3 for a purchase")
    timestamp: float | None = Field(default=None, ge=0, le=1e11, description="unix seconds")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    history: list[HistoryEvent | HistoryId] = Field(
        min_length=1, max_length=200, description="viewed/bought products, oldest first: ids or events"
    )
    k: WholeNumber = Field(default=10, ge=1, le=100)
    category: str | None = Field(default=None, min_length=1, max_length=256)
    view: View | None = None
    threshold: float | None = Field(default=None, ge=-1, le=1, description="override the interest split")
    max_interests: WholeNumber = Field(default=4, ge=1, le=10)
    half_life_s: float = Field(default=1800.0, gt=0, le=1e9, description="recency half-life with timestamps")


# ---------------------------------------------------------------------- JSON bodies

# No request this API documents nests deeper than 4; 32 leaves room and stays far below
# where json.loads (about 1,000) or pydantic's serialiser (about 255) give up with an error.
MAX_JSON_DEPTH = 32
# A string token, closed or not: the optional closing quote keeps the match linear on any input.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def json_depth(data: bytes | str) -> int:
    """How deeply `data` nests arrays and objects, without parsing it (so without recursion)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max(initial=0))


async def _depth(body: bytes) -> int:
    """json_depth off the event loop for big bodies (about 60 ms per MB), inline for small ones."""
    if len(body) < 64 * 1024:
        return json_depth(body)
    import anyio.to_thread

    return await anyio.to_thread.run_sync(json_depth, body)


def _is_json(headers: dict[bytes, bytes]) -> bool:
    kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or kind.endswith(b"+json")


# ---------------------------------------------------------------------- middleware


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 before any parser buffers them, and
    JSON bodies nested deeper than MAX_JSON_DEPTH with 400 before any parser recurses into them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:  # buffer (bounded by limit): a chunked upload has no length to check up front
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if _is_json(headers) and await _depth(body) > MAX_JSON_DEPTH:
            err = ApiError(400, "json_too_deep", f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
            await JSONResponse(err.body(), status_code=400)(scope, receive, send)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        err = ApiError(413, "payload_too_large", f"request body over {self.limit} bytes")
        await JSONResponse(err.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)


class Observe:
    """Count and time every request by route template, for /metrics.

    `label(scope)` names requests the router never tagged with an API route: the docs,
    static files and bodies refused before routing (413) still count under their route.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, label: Callable[[dict[str, Any]], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.label = label

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        # Routing rewrites root_path for mounts; match later against the request as it came in.
        probe = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", ""),
                 "method": scope["method"]}

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or self.label(probe)
            self.metrics.observe(scope["method"], name, status, time.perf_counter() - t0)


# ---------------------------------------------------------------------- the app

# Fillers that render as blank but are letters or symbols to Unicode, so no category test catches them.
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def visible(text: str) -> str:
    """`text` without controls, format characters (zero-width space, joiners, BOM, soft hyphen),
    unpaired surrogates or blank fillers: a query of only those says nothing."""
    return "".join(c for c in text if c not in _BLANKS and unicodedata.category(c) not in ("Cc", "Cf", "Cs"))


def _count(index: Any) -> int:
    """Rows in an index, or -1 when its store cannot be asked (health must answer anyway)."""
    try:
        return len(index)
    except StoreUnavailableError:
        return -1


def route_label(app: FastAPI, scope: dict[str, Any]) -> str:
    """The route template a request belongs to, found by matching it against the app's routes.

    A mount (the static files) is one label, `/static/{path}`, never one per file; a
    path no route knows stays `<unmatched>`, so scanners cannot multiply the series.
    """
    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return _template(route)
        if match == Match.PARTIAL and partial is None:
            partial = route  # right path, wrong method: a 405 of that route
    return _template(partial) if partial is not None else "<unmatched>"


def _template(route: Any) -> str:
    path = str(getattr(route, "path", "") or "")
    return f"{path}/{{path}}" if isinstance(route, Mount) else path or "<unmatched>"


def create_app(
    workdir: str | Path,
    *,
    api_key: str | None = None,
    protect_reads: bool | None = None,
    max_upload_bytes: int = 10 * 1024 * 1024,
    max_image_pixels: int = 40_000_000,
    allow_url_fetch: bool = False,
    url_fetch_hosts: tuple[str, ...] | None = None,
    max_k: int = 100,
    max_query_chars: int = 512,
    preload_model: bool = False,
    batch_queries: bool = True,
    model: Any = None,
    state: ServeState | None = None,
    failpoint: Callable[[str], None] | None = None,
    store: str | None = None,
    uri: str | None = None,
    snapshot_every: int = 1000,
    snapshot_seconds: float = 60.0,
    heads_dir: str | Path | None = None,
    freeze_gc: bool = False,
    worker_threads: int | None = None,
) -> FastAPI:
    """Build the app over a built work folder.

    `api_key` (default: env SHOPCLIP_API_KEY) guards PUT/DELETE; without one, writes are
    refused. `protect_reads` (env SHOPCLIP_PROTECT_READS=1) puts reads behind it too.
    `allow_url_fetch` lets /search/image fetch `url=`: only from `url_fetch_hosts` when
    given, else from any host at a public address (never loopback, private or link-local).
    `batch_queries` embeds concurrent text queries in one tower call (serve/batching.py).
    `model` / `state` let tests share one loaded model; `failpoint` is for crash tests.
    `store`/`uri` open the vector store elsewhere than the work folder recorded;
    in-process indexes are snapshotted every `snapshot_every` writes or `snapshot_seconds`
    after the first unsaved one, and at shutdown.
    `heads_dir` (default WORKDIR/heads) holds the task heads behind POST /tag and /dedupe/check.
    `freeze_gc` (for a process the server owns, as `shopclip serve`): once loaded, everything
    then alive is moved out of the cyclic collector's sight (`gc.freeze`). Over the full sample
    a full collection walks ~430k loaded objects for ~180 ms, stalling every request in
    flight; that was the server's worst latency. Objects created later are collected as usual.
    `worker_threads` bounds the requests computed at once (anyio's thread pool, 40 by default).
    Requests are CPU-bound: 8 in flight on 2 cores time-share the cores and the GIL, stretching
    every text search behind the cheap similar-item lookups; with cores + 1 threads they queue
    instead (bench/serve.py: p99 52 → 31-36 ms at the same throughput).
    """
    key = (api_key if api_key is not None else os.environ.get("SHOPCLIP_API_KEY")) or None  # "" = no key
    if protect_reads is None:
        protect_reads = os.environ.get("SHOPCLIP_PROTECT_READS", "") in ("1", "true", "yes")
    st = state or ServeState(workdir, model=model, max_image_pixels=max_image_pixels, failpoint=failpoint,
                             store=store, uri=uri, snapshot_every=snapshot_every,
                             snapshot_seconds=snapshot_seconds, batch_queries=batch_queries)
    metrics = Metrics()
    st.batch_listeners.append(metrics.observe_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if preload_model:
            st.warm()  # load before taking traffic: the first query should not pay ~10 s
        if freeze_gc:
            gc.collect()
            gc.freeze()
        if worker_threads:
            anyio.to_thread.current_default_thread_limiter().total_tokens = int(worker_threads)
        yield
        if state is None:  # ours to close: stop the snapshot thread, save what is unsaved
            st.close()

    app = FastAPI(
        title="shopclip",
        version="0.1.0",
        summary="Product search, similar items and session recommendations over image-text embeddings.",
        lifespan=lifespan,
    )
    app.state.shopclip = st
    app.state.metrics = metrics

    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's SHOPCLIP_API_KEY")

    def check_key(given: str | None) -> None:
        if key is None:
            raise ApiError(403, "writes_disabled", "catalog updates are off: start the server with "
                           "SHOPCLIP_API_KEY set and send it as the X-API-Key header")
        if given is None or not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")

    def writer(given: Annotated[str | None, Depends(header)]) -> None:
        check_key(given)

    def reader(given: Annotated[str | None, Depends(header)]) -> None:
        if protect_reads:
            check_key(given)

    read_errors = (401, 403) if protect_reads else ()
    # Reads declare the key only when they need it, so the spec says exactly what a client must send.
    read_deps = [Depends(reader)] if protect_reads else []
    validation = responses(422, 503)  # 503: a server-backed vector store is down

    # ------------------------------------------------------------------ errors

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StoreUnavailableError)
    async def store_down(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        err = ApiError(503, "store_unavailable", str(exc))
        return JSONResponse(err.body(), status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "reason": e.get("msg", "")}
            for e in exc.errors()
        ]
        message = "; ".join(f"{d['field']}: {d['reason']}" for d in details[:5]) or "invalid request"
        return JSONResponse(ApiError(422, "invalid_request", message, details).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette lists one route's methods; a path has several routes
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(ApiError(exc.status_code, code, str(exc.detail)).body(), status_code=exc.status_code,
                            headers=headers or None)

    def allowed_methods(request: Request) -> list[str]:
        methods: set[str] = set()
        for route in app.router.routes:
            match, _ = route.matches({**request.scope, "method": "GET"})
            if match != Match.NONE:
                methods |= set(getattr(route, "methods", None) or ())
        return sorted(methods - {"HEAD"})

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "message": "internal error; see the server log"}, status_code=500)

    # ------------------------------------------------------------------ helpers

    def parse_product(text: str) -> dict[str, Any]:
        """The `product` form field as a dict that can always be written back out as JSON."""
        if json_depth(text) > MAX_JSON_DEPTH:
            raise ApiError(422, "invalid_product", f"field 'product' nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            fields = json.loads(text)
        except (ValueError, RecursionError):  # JSONDecodeError, huge ints; recursion as a last guard
            raise ApiError(422, "invalid_product", "field 'product' must be a JSON object") from None
        if not isinstance(fields, dict):
            raise ApiError(422, "invalid_product", "field 'product' must be a JSON object")
        try:  # NaN / Infinity / 1e999 parse but cannot be sent back; nor can lone surrogates (\ud800)
            json.dumps(fields, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (ValueError, RecursionError):
            raise ApiError(422, "invalid_product", "field 'product' holds a value JSON cannot carry "
                           "(NaN, Infinity or an unpaired surrogate)") from None
        return fields

    def query_text(q: str) -> str:
        text = " ".join(visible(q).split())
        if not text:
            raise ApiError(422, "empty_query", "the query is empty (only whitespace or invisible characters)")
        return text

    def read_upload(upload: UploadFile) -> bytes:
        data = upload.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise ApiError(413, "upload_too_large", f"the image is over {max_upload_bytes} bytes")
        return data

    def fetch(url: str) -> bytes:
        if not allow_url_fetch:
            raise ApiError(403, "url_fetch_disabled", "fetching images by URL is off on this server; upload the file")
        return fetch_image(url, hosts=url_fetch_hosts, max_bytes=max_upload_bytes)

    def timed(view: str, t0: float, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"view": view, "took_ms": round((time.perf_counter() - t0) * 1000, 3), "results": results}

    Category_q = Annotated[str | None, Query(min_length=1, max_length=256,
                                             description="category prefix, e.g. 'Footwear' or 'Footwear > Shoes'")]
    K = Annotated[int, Query(ge=1, le=max_k, description="number of results")]
    # A real id as the documented example: the docs' "try it" and schemathesis' examples phase hit real products.
    example_id = next(iter(st.snapshot.products), "product-1")
    ProductId = Annotated[str, PathParam(min_length=1, max_length=256, description="product id", examples=[example_id])]

    # ------------------------------------------------------------------ reads

    @app.get("/healthz", response_model=Health, tags=["ops"], responses={503: {
        "model": Health, "description": "a dependency is down: `dependencies` names it"}})
    def healthz() -> JSONResponse:
        snap = st.snapshot
        deps = st.health()
        ok = all(v == "ok" for v in deps.values())
        body = {"status": "ok" if ok else "degraded", "products": len(snap.products),
                "index": {v: _count(i) for v, i in snap.indexes.items()},
                "model_loaded": st.model_loaded, "aligned": st.aligned, "version": snap.version,
                "writes_enabled": key is not None, "dependencies": deps}
        return JSONResponse(body, status_code=200 if ok else 503)

    metrics_doc: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"], responses=metrics_doc)
    def prometheus() -> PlainTextResponse:
        def gauges() -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
            snap = st.snapshot
            return {
                "shopclip_products": ("Products served.", [({}, len(snap.products))]),
                "shopclip_index_vectors": ("Vectors in each ANN index, by view.",
                                           [({"view": v}, _count(i)) for v, i in snap.indexes.items()]),
                "shopclip_model_loaded": ("1 once the model is loaded.", [({}, float(st.model_loaded))]),
                "shopclip_state_version": ("Snapshot version: 1 at start, +1 per acknowledged write.",
                                           [({}, snap.version)]),
            }

        return PlainTextResponse(metrics.render(gauges), media_type=METRICS_CONTENT_TYPE)

    # HEAD too (its own operation id): probes check reachability without pulling the whole text.
    app.add_api_route("/metrics", prometheus, methods=["HEAD"], response_class=PlainTextResponse, tags=["ops"],
                      responses=metrics_doc, operation_id="prometheus_head", summary="Prometheus (HEAD)")

    @app.get("/categories", response_model=CategoriesResponse, tags=["catalog"],
             dependencies=read_deps, responses=responses(*read_errors))
    def categories() -> dict[str, Any]:
        """Every category path and its prefixes with product counts: what `category=` accepts."""
        return {"categories": st.categories()}

    @app.get("/search", response_model=TextSearchResponse, response_model_exclude_none=True, tags=["search"],
             dependencies=read_deps, responses={**validation, **responses(*read_errors)})
    def search(
        q: Annotated[str, Query(min_length=1, max_length=max_query_chars, description="search text",
                                examples=["white running shoes"])],
        k: K = 10,
        category: Category_q = None,
        view: Annotated[View | None, Query(description="default: fused if the model is trained, else text")] = None,
        mode: Annotated[Mode | None, Query(description="vector, lexical (BM25) or hybrid (both, fused); "
                                                       "default: hybrid where the lexical index exists")] = None,
        fusion: Annotated[Fusion | None, Query(description="hybrid only: rrf (k=60) or weighted")] = None,
        lang: Annotated[Lang | None, Query(description="query language; default auto (detected)")] = None,
        understand: Annotated[bool, Query(description="turn brand/colour/gender/type/price words into filters")] = True,
        drop: Annotated[list[FacetName] | None, Query(description="understood filters to remove")] = None,
    ) -> dict[str, Any]:
        """Text search: products whose image or text best match the query, with the filters it names."""
        t0 = time.perf_counter()
        text = query_text(q)
        if not any(c.isalnum() for c in text):
            raise ApiError(422, "no_words", "the query has no letters or digits to search for")
        v = view or st.default_view("text")
        hits, how = st.search_query(text, k, category, v, mode=mode, fusion=fusion, lang=lang, understand=understand,
                                    drop=tuple(drop or ()))
        return timed(v, t0, hits) | how.to_dict()

    @app.post("/search/image", response_model=SearchResponse, response_model_exclude_none=True, tags=["search"],
              dependencies=read_deps, responses={**responses(400, 403, 413, 415), **validation,
                                                          **responses(*read_errors)})
    def search_image(
        image: Annotated[UploadFile | None, File(description="JPEG/PNG/WebP/GIF photo")] = None,
        url: Annotated[str | None, Form(max_length=2048, description="fetch the image from here "
                                                                      "(only where the server allows it)")] = None,
        k: K = 10,
        category: Category_q = None,
        view: Annotated[View | None, Query(description="default: image")] = None,
    ) -> dict[str, Any]:
        """Image search: upload a photo (multipart field `image`), get the closest products."""
        t0 = time.perf_counter()
        if image is not None and url:
            raise ApiError(422, "invalid_request", "send either an image file or a url, not both")
        if image is None and not url:
            raise ApiError(422, "missing_image", "send an image file in the multipart field 'image'")
        data = read_upload(image) if image is not None else fetch(url or "")
        img, _ = st.read_image(data)
        v = view or st.default_view("image")
        return timed(v, t0, st.search_image(img, k, category, v))

    @app.get("/products/{product_id}", response_model=Product, tags=["catalog"],
             dependencies=read_deps, responses={**responses(404), **validation, **responses(*read_errors)})
    def get_product(product_id: ProductId) -> dict[str, Any]:
        return public_product(st.product(product_id))

    @app.get("/products/{product_id}/image", tags=["catalog"], response_class=FileResponse,
             dependencies=read_deps,
             responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}, "image/gif": {}},
                              "description": "the product photo"},
                        **responses(404), **validation, **responses(*read_errors)})
    def get_image(product_id: ProductId) -> FileResponse:
        path = Path(st.product(product_id)["image"])  # from our own metadata, never from the request
        try:  # read now: a delete acknowledged meanwhile removes an uploaded file (old snapshot, same path)
            data = path.read_bytes()
        except OSError:
            raise ApiError(404, "image_missing", f"the image file of {product_id!r} is missing on the server") from None
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=60"})

    @app.get("/products/{product_id}/similar", response_model=SearchResponse, response_model_exclude_none=True,
             tags=["search"], dependencies=read_deps,
             responses={**responses(404), **validation, **responses(*read_errors)})
    def similar(
        product_id: ProductId,
        k: K = 10,
        category: Category_q = None,
        view: Annotated[View | None, Query(description="default: fused (image + text)")] = None,
    ) -> dict[str, Any]:
        """Products most like this one (itself excluded)."""
        t0 = time.perf_counter()
        v = view or st.default_view("product")
        return timed(v, t0, st.similar(product_id, k, category, v))

    example_history = list(st.snapshot.products)[:3] or ["product-1"]

    @app.post("/recommend", response_model=RecommendResponse, tags=["search"], dependencies=read_deps,
              responses={**responses(400, 404), **validation, **responses(*read_errors)})
    def recommend(
        body: Annotated[RecommendRequest, Body(examples=[{"history": example_history, "k": 8}])],
    ) -> dict[str, Any]:
        """Recommendations from a session history, each interest searched apart and interleaved.

        History items that are close (average cosine above `threshold`, calibrated on the
        catalog unless given) form one interest; each interest gets a share of the k slots in
        proportion to its weight (event weight × recency). The history itself is excluded.
        """
        t0 = time.perf_counter()
        events = [(e, None, None) if isinstance(e, str) else (e.id, e.weight, e.timestamp) for e in body.history]
        out = st.recommend(events, body.k, category=body.category, view=body.view, threshold=body.threshold,
                           max_interests=body.max_interests, half_life_s=body.half_life_s)
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return out

    # ------------------------------------------------------------------ understanding (tag, dedupe check)

    from shopclip.serve.understand import register_understanding

    register_understanding(app, st, heads_dir=Path(heads_dir) if heads_dir else st.workdir.root / "heads",
                           dependencies=read_deps, read_errors=read_errors, read_upload=read_upload,
                           clean_text=lambda t: " ".join(visible(t).split()))

    # ------------------------------------------------------------------ writes

    @app.put("/products/{product_id}", response_model=UpsertResponse, tags=["catalog"],
             dependencies=[Depends(writer)],
             responses={201: {"model": UpsertResponse, "description": "created"},
                        **responses(400, 401, 403, 409, 413, 415), **validation})
    def put_product(
        product_id: ProductId,
        response: Response,
        product: Annotated[str, Form(max_length=200_000, description=(
            'JSON object with catalog fields: {"title": ..., "category": "A > B" or [...], "description", '
            '"attributes", "price", "url", "group", "labels", "split"}; the id comes from the URL'))],
        image: Annotated[UploadFile | None, File(description="product photo; optional when replacing")] = None,
    ) -> dict[str, Any]:
        """Create or replace a product: validated like a catalog row, embedded, persisted, then served.

        Answers only after the change is durable: a restart serves it.
        """
        fields = parse_product(product)
        data = read_upload(image) if image is not None else None
        meta, created = st.upsert(product_id, fields, data)
        metrics.count_write("upsert")
        response.status_code = 201 if created else 200
        return {"created": created, "product": public_product(meta)}

    @app.delete("/products/{product_id}", response_model=DeleteResponse, tags=["catalog"],
                dependencies=[Depends(writer)], responses={**responses(401, 403, 404), **validation})
    def delete_product(product_id: ProductId) -> dict[str, Any]:
        """Remove a product from search, similar items and recommendations; durable when answered."""
        st.delete(product_id)
        metrics.count_write("delete")
        return {"id": product_id, "deleted": True}

    # ------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "object-src 'none'; frame-ancestors 'none'",
            "Cache-Control": "no-cache",
        })

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=max_upload_bytes + 1024 * 1024)
    app.add_middleware(Observe, metrics=metrics, label=lambda scope: route_label(app, scope))
    return app
