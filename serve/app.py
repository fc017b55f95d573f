"""The HTTP API (FastAPI): vlogs, plans, progress events, artifacts. OpenAPI at /docs and /openapi.json.

`build_api` wires routes to a `JobManager`; it imports no Ray, so the same app runs in the Serve ingress
deployment (serve/deployments.py) and under any ASGI server. Every request except GET /healthz passes `Guard`
first: bearer token, per-token rate limit and body-size limit are checked before a route runs or a body is read.

Errors have one shape: `{"error": {"code": ..., "message": ..., "field": ...}}`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
import warnings
from typing import Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from personavlog.engine.errors import InputError
from personavlog.engine.spec import JOB_ID_RE, JobSpec, sniff_audio_format, sniff_image_format
from personavlog.serve.auth import RateLimiter, TokenAuth
from personavlog.serve.jobs import TERMINAL, JobManager, QueueFull

log = logging.getLogger("ray.serve")

_MEDIA_TYPES = {".png": "image/png", ".mp4": "video/mp4", ".wav": "audio/wav", ".json": "application/json",
                ".srt": "application/x-subrip", ".jpg": "image/jpeg", ".webp": "image/webp"}


class ApiError(StarletteHTTPException):
    """An HTTP error with a machine-readable code and, for bad input, the field at fault."""

    def __init__(self, status: int, code: str, message: str, *, field: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None, **extra: Any):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code
        self.field = field
        self.extra = extra

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.detail}
        if self.field:
            err["field"] = self.field
        err.update(self.extra)
        return {"error": err}


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


class Guard:
    """ASGI middleware in front of every route: token, then rate limit, then body size (header and stream)."""

    def __init__(self, app: Any, *, auth: TokenAuth, limiter: RateLimiter, max_body_bytes: int,
                 public_paths: frozenset[str]):
        self.app = app
        self.auth = auth
        self.limiter = limiter
        self.max_body = max_body_bytes
        self.public = public_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path in self.public:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        who = self.auth.identify(headers.get("authorization"))
        if who is None:
            await _error_response(ApiError(401, "unauthorized", "missing or invalid bearer token",
                                           headers={"WWW-Authenticate": "Bearer"}))(scope, receive, send)
            return
        wait = self.limiter.take(who)
        if wait > 0:
            await _error_response(ApiError(429, "rate_limited", "too many requests for this token",
                                           headers={"Retry-After": str(max(1, math.ceil(wait)))}))(
                scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await _error_response(ApiError(400, "bad_request", "invalid Content-Length"))(scope, receive, send)
                return
            if declared > self.max_body:
                await _error_response(ApiError(413, "body_too_large", f"the request body is {declared} bytes; the "
                                               f"limit is {self.max_body} bytes"))(scope, receive, send)
                return
        scope.setdefault("state", {})["token_id"] = who
        received = 0
        limit = self.max_body

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a body without (or lying about) Content-Length
                    raise ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _with_security_headers(send: Any) -> Any:
    async def wrapped(message: Any) -> None:
        if message.get("type") == "http.response.start":
            headers = list(message.get("headers", []))
            names = {k.lower() for k, _ in headers}
            if b"x-content-type-options" not in names:
                headers.append((b"x-content-type-options", b"nosniff"))
            if b"cache-control" not in names:
                headers.append((b"cache-control", b"no-store"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


def _check_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id or ""):
        raise ApiError(400, "bad_id", "not a job id (20 lowercase hex characters)", field="id")
    return job_id


def _image_checks(data: bytes, limits: Any) -> None:
    """413/415 before the spec's full validation: size, then format by content, then pixels from the header."""
    from PIL import Image

    if len(data) > limits.image_max_bytes:
        raise ApiError(413, "too_large", f"is {len(data)} bytes; the limit is {limits.image_max_bytes} bytes",
                       field="image")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type", "is not a PNG, JPEG or WebP image (checked by content)",
                       field="image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:  # header only; nothing is decoded here
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "too_large", "has more pixels than the decompression-bomb limit", field="image") from None
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the spec's own check (400)
        return
    if width * height > limits.image_max_pixels:
        raise ApiError(413, "too_large", f"is {width}x{height} = {width * height} pixels; the limit is "
                                         f"{limits.image_max_pixels} pixels", field="image")


def _voice_checks(data: bytes, limits: Any) -> None:
    if len(data) > limits.voice_max_bytes:
        raise ApiError(413, "too_large", f"is {len(data)} bytes; the limit is {limits.voice_max_bytes} bytes",
                       field="voice")
    if sniff_audio_format(data) is None:
        raise ApiError(415, "unsupported_media_type", "is not a WAV or FLAC file (checked by content)",
                       field="voice")


async def _read_upload(upload: UploadFile, field: str, max_bytes: int) -> bytes:
    if upload.size is not None and upload.size > max_bytes:
        raise ApiError(413, "too_large", f"is {upload.size} bytes; the limit is {max_bytes} bytes", field=field)
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, "too_large", f"is larger than the limit of {max_bytes} bytes", field=field)
    return data


def _sse(event: dict[str, Any]) -> bytes:
    return (f"id: {event['seq']}\nevent: {event['type']}\n"
            f"data: {json.dumps(event, separators=(',', ':'), default=str)}\n\n").encode()


def build_api(cfg: Any, jobs: JobManager, auth: TokenAuth) -> FastAPI:
    """The FastAPI app of the endpoint, guarded by `auth` and the rate/body limits from `cfg.serve`."""
    conf = cfg.serve
    limits = cfg.limits
    max_body = int(conf.max_body_bytes) or int(limits.image_max_bytes + limits.voice_max_bytes + (1 << 20))
    bearer = HTTPBearer(auto_error=False, description="API token (serve.token_env or serve.token_file)")
    secured = [Depends(bearer)]  # documents the scheme in OpenAPI; Guard enforces it on every route
    app = FastAPI(title="PersonaVlog", version="1", docs_url="/docs", openapi_url="/openapi.json", redoc_url=None,
                  description="Personalized vlogs from a theme, a visual style and one reference photo. Every route "
                              "but /healthz needs `Authorization: Bearer <token>`.")
    public = {"/healthz"} | ({"/docs", "/openapi.json", "/docs/oauth2-redirect"} if conf.public_docs else set())
    app.add_middleware(Guard, auth=auth, limiter=RateLimiter(conf.rate_limit.requests_per_s, conf.rate_limit.burst),
                       max_body_bytes=max_body, public_paths=frozenset(public))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return _error_response(exc)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path", "header")]
        field = loc[0] if loc else None
        message = "is required" if first.get("type") == "missing" else str(first.get("msg", "is invalid"))
        return _error_response(ApiError(400, "bad_input", f"{field}: {message}" if field else message, field=field))

    # -- health --------------------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], summary="Liveness (no token needed)")
    async def healthz() -> JSONResponse:
        ok = jobs.healthy
        return JSONResponse({"status": "ok" if ok else "stopping"}, status_code=200 if ok else 503)

    # -- submit ----------------------------------------------------------------------------------------------------
    async def accept(kind: str, request: Request, theme: str, style: str, image: UploadFile,
                     voice: Optional[UploadFile], shots: Optional[str], seed: Optional[str],
                     language: Optional[str]) -> tuple[str, Any]:
        image_bytes = await _read_upload(image, "image", limits.image_max_bytes)
        voice_bytes = None
        if voice is not None and (voice.filename or voice.size):
            voice_bytes = await _read_upload(voice, "voice", limits.voice_max_bytes)

        def build_and_submit() -> tuple[str, Any]:
            _image_checks(image_bytes, limits)
            if voice_bytes is not None:
                _voice_checks(voice_bytes, limits)
            spec = JobSpec.create(theme=theme, style=style, image=image_bytes, voice=voice_bytes,
                                  shots=shots or None, seed=seed or None, language=language or None, cfg=cfg)
            return jobs.submit(kind, spec)

        try:  # decoding the image and hashing the run store are blocking: off the event loop
            job_id, job = await run_in_threadpool(build_and_submit)
        except InputError as exc:
            raise ApiError(400, "bad_input", str(exc), field=exc.field) from None
        except QueueFull as exc:
            raise ApiError(429, "queue_full", str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        who = request.scope.get("state", {}).get("token_id", "?")
        log.info("%s %s %s (token %s)", kind, job_id, "stored" if job is None else job.status, who)
        return job_id, job

    def accepted(kind: str, job_id: str, job: Any) -> JSONResponse:
        base = jobs.base_url(kind, job_id)
        body = {"id": job_id, "status": job.status, "url": base, "events_url": f"{base}/events"}
        if kind == "vlog":
            body["video_url"] = f"{base}/video"
        return JSONResponse(body, status_code=202, headers={"Location": base})

    @app.post("/v1/vlogs", status_code=202, tags=["vlogs"], dependencies=secured,
              summary="Start a vlog (202 + id); an identical finished request answers 200 at once",
              responses={200: {"description": "already made: the stored result"}, 400: {}, 401: {}, 413: {},
                         415: {}, 429: {"description": "rate limit or queue full; see Retry-After"}})
    async def create_vlog(request: Request, theme: str = Form(..., description="what the vlog is about"),
                          style: str = Form(..., description="visual style, e.g. 'Pixar style'"),
                          image: UploadFile = File(..., description="reference photo: PNG, JPEG or WebP"),
                          voice: Optional[UploadFile] = File(None, description="voice sample: WAV or FLAC"),
                          shots: Optional[str] = Form(None, description="number of shots k"),
                          seed: Optional[str] = Form(None), language: Optional[str] = Form(None)) -> JSONResponse:
        job_id, job = await accept("vlog", request, theme, style, image, voice, shots, seed, language)
        if job is None:
            return JSONResponse(jobs.view("vlog", job_id), status_code=200)
        return accepted("vlog", job_id, job)

    @app.post("/v1/plans", tags=["plans"], dependencies=secured,
              summary="MACF plan only (stylize + plan): 200 with the plan, or 202 if it takes longer than "
                      "serve.plan_wait_s", responses={202: {}, 400: {}, 401: {}, 413: {}, 415: {}, 429: {}})
    async def create_plan(request: Request, theme: str = Form(...), style: str = Form(...),
                          image: UploadFile = File(...), shots: Optional[str] = Form(None),
                          seed: Optional[str] = Form(None), language: Optional[str] = Form(None)) -> JSONResponse:
        job_id, job = await accept("plan", request, theme, style, image, None, shots, seed, language)
        if job is not None:
            deadline = time.monotonic() + float(conf.plan_wait_s)
            seq = 0
            while not job.terminal and time.monotonic() < deadline:
                seq = len(job.events)
                ev = job.watch(seq)
                if ev is not None:
                    try:
                        await asyncio.wait_for(ev.wait(), timeout=max(0.01, deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        break
            if not job.terminal:
                return accepted("plan", job_id, job)
        view = jobs.view("plan", job_id)
        assert view is not None
        _raise_for_failure(view)
        return JSONResponse(view, status_code=200)

    # -- read ------------------------------------------------------------------------------------------------------
    for kind, collection in (("vlog", "vlogs"), ("plan", "plans")):
        _add_read_routes(app, jobs, kind, collection, secured, float(conf.sse_keepalive_s))

    @app.get("/v1/vlogs/{job_id}/video", tags=["vlogs"], dependencies=secured, response_class=FileResponse,
             summary="The finished vlog (mp4)", responses={409: {"description": "not finished"},
                                                          500: {"description": "the job failed"}})
    async def video(job_id: str) -> FileResponse:
        view = jobs.view("vlog", _check_id(job_id))
        if view is None:
            raise ApiError(404, "not_found", "no such vlog", field="id")
        _raise_for_failure(view)
        if view["status"] != "succeeded":
            raise ApiError(409, "not_ready", f"the vlog is {view['status']}", headers={"Retry-After": "5"},
                           status=view["status"])
        path = jobs.file_path("vlog", job_id, "vlog.mp4")
        if path is None:
            raise ApiError(404, "not_found", "the vlog file is missing from the run store; send the request again")
        return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")

    @app.delete("/v1/vlogs/{job_id}", tags=["vlogs"], dependencies=secured,
                summary="Cancel: no further unit starts; units in flight finish")
    async def cancel(job_id: str) -> JSONResponse:
        view = jobs.cancel("vlog", _check_id(job_id))
        if view is None:
            raise ApiError(404, "not_found", "no such vlog", field="id")
        return JSONResponse(view, status_code=202 if view["status"] not in TERMINAL else 200)

    return app


def _raise_for_failure(view: dict[str, Any]) -> None:
    status = view["status"]
    if status == "failed":
        err = view.get("error") or {}
        transient = bool(err.get("transient"))
        where = f" in {err['unit']}" if err.get("unit") else ""
        raise ApiError(503 if transient else 500, "model_unavailable" if transient else "job_failed",
                       f"the job failed{where}: {err.get('class', 'Error')}: {err.get('message', '')}",
                       headers={"Retry-After": "30"} if transient else None, id=view["id"], unit=err.get("unit"))
    if status in ("cancelled", "interrupted"):
        raise ApiError(409, status, f"the job was {status}; send the same request again to resume it", id=view["id"])


def _add_read_routes(app: FastAPI, jobs: JobManager, kind: str, collection: str, secured: list[Any],
                     keepalive_s: float) -> None:
    base = f"/v1/{collection}/{{job_id}}"

    async def status(job_id: str) -> JSONResponse:
        view = jobs.view(kind, _check_id(job_id))
        if view is None:
            raise ApiError(404, "not_found", f"no such {kind}", field="id")
        return JSONResponse(view)

    async def events(request: Request, job_id: str) -> StreamingResponse:
        _check_id(job_id)
        job = jobs.job(kind, job_id)
        past = None if job is not None else jobs.past_events(kind, job_id)
        if job is None and past is None:
            raise ApiError(404, "not_found", f"no such {kind}", field="id")
        try:
            start = int(request.headers.get("last-event-id", "0"))
        except ValueError:
            start = 0

        async def stream() -> AsyncIterator[bytes]:
            if job is None:
                for ev in past[start:]:  # type: ignore[index]
                    yield _sse(ev)
                return
            seq = start
            while True:
                for ev in job.events_after(seq):
                    seq = ev["seq"]
                    yield _sse(ev)
                    if ev["type"] == "job" and ev["status"] in TERMINAL:
                        return
                waiter = job.watch(seq)
                if waiter is None:
                    continue
                try:
                    await asyncio.wait_for(waiter.wait(), timeout=keepalive_s)
                except asyncio.TimeoutError:
                    yield b": keepalive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def file(job_id: str, path: str) -> FileResponse:
        _check_id(job_id)
        found = jobs.file_path(kind, job_id, path)
        if found is None:  # only paths a finished unit recorded are served: nothing else can be named
            raise ApiError(404, "not_found", "no such artifact")
        return FileResponse(found, media_type=_MEDIA_TYPES.get(found.suffix.lower(), "application/octet-stream"))

    tag = [collection]
    app.add_api_route(base, status, methods=["GET"], tags=tag, dependencies=secured,
                      summary=f"Status of a {kind}: per-stage progress, plan and artifact URLs as they appear")
    app.add_api_route(f"{base}/events", events, methods=["GET"], tags=tag, dependencies=secured,
                      response_class=StreamingResponse,
                      summary="Server-sent events: one per unit transition, in order; past events are replayed "
                              "(resume with Last-Event-ID)")
    app.add_api_route(f"{base}/files/{{path:path}}", file, methods=["GET"], tags=tag, dependencies=secured,
                      response_class=FileResponse, summary="An artifact named in the status (keyframe, clip, ...)")
