"""The Serve application: one deployment per heavy model, the MLLM engine's when the backend needs one, and the
FastAPI ingress that runs the graph.

The ingress runs `run_job` (engine/drivers/local.py, the driver `personavlog generate` uses) in worker threads; its
model handles call the model deployments through Serve `DeploymentHandle`s. Stages never see Serve: a handle is the
same `(**kw) -> (result, RanOn)` callable the local driver passes, and a dead or unreachable replica becomes a
`TransientError`, which the driver retries on another (or a restarted) replica.

Each model deployment wraps `ModelHost` (actors/base.py), the class the local and batch drivers host as a Ray actor:
weights load once per replica; replicas scale between the model's `resources.min_replicas` and `max_replicas`;
Serve's health check calls the model's own `check_health`; a stopping replica lets calls in flight finish
(`serve.models.graceful_shutdown_timeout_s`) and then frees its model.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, fields
from typing import Any, Optional

from omegaconf import OmegaConf
from ray import serve

from personavlog.actors.base import RanOn, ray_options
from personavlog.engine.config import fingerprint, load_config
from personavlog.engine.errors import ConfigError, PersonaVlogError, StageError, TransientError
from personavlog.engine.mllm.actor_client import ActorMLLMClient
from personavlog.engine.pipeline import VLOG_GRAPH

log = logging.getLogger("ray.serve")

INGRESS = "ingress"
MLLM = "mllm"


# -- calling deployments from the ingress (worker threads, never the event loop) -------------------------------------
def _transient_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex
    import ray.serve.exceptions as sex

    names = [(rex, "RayActorError"), (rex, "ActorDiedError"), (rex, "ActorUnavailableError"),
             (rex, "RaySystemError"), (rex, "ObjectLostError"), (rex, "NodeDiedError"), (rex, "WorkerCrashedError"),
             (sex, "BackPressureError"), (sex, "DeploymentUnavailableError"), (sex, "ReplicaUnavailableError"),
             (sex, "RequestCancelledError")]
    return tuple(getattr(m, n) for m, n in names if hasattr(m, n))


def call_deployment(label: str, response: Any, timeout_s: float) -> Any:
    """`response.result()` with Ray and Serve failures mapped to our error classes.

    A replica that died, is restarting, or is shedding load → TransientError (the driver retries the unit; Serve's
    router has already dropped a dead replica, so the retry lands on a live one or waits for its replacement).
    An error raised by the model itself arrives as the project error it raised, or as a StageError.
    """
    from ray.exceptions import RayTaskError, UnserializableException

    try:
        return response.result(timeout_s=timeout_s)
    except UnserializableException as exc:
        # The model raised an error its replica could not pickle; its last line still names class and message.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise StageError(f"{label}: {lines[-1][:500] if lines else type(exc).__name__}") from None
    except RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if isinstance(cause, _transient_errors()):
            raise TransientError(f"{label}: model replica unavailable ({type(cause).__name__})") from None
        if isinstance(cause, (PersonaVlogError, ValueError)):
            raise cause from None
        raise StageError(f"{label}: {type(cause).__name__}: {_first_line(cause)}") from None
    except TimeoutError:
        response.cancel()
        raise TransientError(f"{label}: no answer within {timeout_s:g} s") from None
    except _transient_errors() as exc:
        raise TransientError(f"{label}: model replica unavailable ({type(exc).__name__})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@dataclass
class ServedRanOn(RanOn):
    """RanOn plus the call's round trip as the ingress saw it: `call_seconds - seconds` is the time spent routing
    and waiting for a free replica (the manifest keeps both)."""

    call_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "call_seconds": round(self.call_seconds, 4)}


class ServeModelHandle:
    """What stages hold (`handle(**kw) -> (result, RanOn)`), backed by a model deployment."""

    def __init__(self, role: str, handle: Any, timeout_s: float):
        self.role = role
        self.handle = handle
        self.timeout_s = timeout_s

    def __call__(self, **kwargs: Any) -> tuple[Any, RanOn]:
        t0 = time.perf_counter()
        result, ran_on = call_deployment(self.role, self.handle.call.remote(**kwargs), self.timeout_s)
        served = ServedRanOn(**{f.name: getattr(ran_on, f.name) for f in fields(RanOn)},
                             call_seconds=time.perf_counter() - t0)
        return result, served


class ServeMLLMClient(ActorMLLMClient):
    """The MLLM client agents use, with its engine in the MLLM deployment instead of a bare actor: schema building,
    validation and retries of unusable output are the shared client's; only the transport differs."""

    def _call(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], seed: Optional[int],
              temperature: float, max_tokens: int) -> tuple[str, Any]:
        response = self.handle.chat.remote(messages, json_schema, seed=seed, temperature=temperature,
                                           max_tokens=max_tokens)
        text, usage = call_deployment(f"mllm ({self.model})", response, float(self.conf.timeout_s))
        return str(text), usage


# -- deployments ---------------------------------------------------------------------------------------------------
class ModelDeployment:
    """One replica of one heavy model (a `ModelHost`)."""

    def __init__(self, role: str, conf: dict[str, Any]):
        from personavlog.actors.base import ModelHost

        self.role = role
        self.host = ModelHost(role, conf)

    def call(self, **kwargs: Any) -> tuple[Any, RanOn]:
        return self.host.call(**kwargs)

    def info(self) -> dict[str, Any]:
        return self.host.info()

    def check_health(self) -> None:
        if not self.host.check_health():
            raise RuntimeError(f"{self.role}: the model reports itself unhealthy")

    def __del__(self) -> None:
        _free_model(getattr(self, "host", None))


class MLLMDeployment:
    """The MLLM engine (local toy VLM or vLLM) behind the agents."""

    def __init__(self, conf: dict[str, Any]):
        from personavlog.engine.mllm.actor_client import MLLMEngineActor

        self.engine = MLLMEngineActor(conf)

    def chat(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], *, seed: Optional[int],
             temperature: float, max_tokens: int) -> tuple[str, Any]:
        return self.engine.chat(messages, json_schema, seed=seed, temperature=temperature, max_tokens=max_tokens)

    def check_health(self) -> None:
        if not self.engine.check_health():
            raise RuntimeError("mllm: the engine reports itself unhealthy")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - the replica is going away either way
                pass


def _free_model(host: Any) -> None:
    """Drop the model and hand its GPU memory back before the replica process exits (a replacement may be
    starting on the same GPU)."""
    if host is None:
        return
    host.model = None
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Ingress:
    """The HTTP API and the jobs behind it. One replica: the event log of running jobs lives in its memory."""

    def __init__(self, overrides: list[str], expected_fingerprint: str, models: dict[str, Any],
                 mllm: Optional[Any], route_prefix: str = "/"):
        from personavlog.engine.mllm.factory import make_client
        from personavlog.serve.app import build_api
        from personavlog.serve.auth import TokenAuth, load_tokens
        from personavlog.serve.jobs import JobManager

        cfg = load_config(overrides)
        if fingerprint(cfg) != expected_fingerprint:
            raise ConfigError("serve: the ingress composed a different config than the driver (check that both "
                              "run the same personavlog version and conf/)")
        # The token is read here, in the replica, so it never travels through Ray (deployment arguments are stored
        # by the Serve controller).
        auth = TokenAuth(load_tokens(cfg.serve))
        timeout = float(cfg.serve.model_call_timeout_s)
        handles = {role: ServeModelHandle(role, h, timeout) for role, h in models.items()}
        client = None
        if MLLM in VLOG_GRAPH.model_roles(cfg):
            retries = int(cfg.macf.parse_retries)
            client = (ServeMLLMClient(mllm, cfg.mllm, parse_retries=retries) if mllm is not None
                      else make_client(cfg.mllm, parse_retries=retries))
        prefix = "" if route_prefix in ("", "/") else route_prefix.rstrip("/")
        self.jobs = JobManager(cfg, models=handles, mllm=client, url_prefix=prefix)
        self.api = build_api(cfg, self.jobs, auth)

    def __serve_build_asgi_app__(self) -> Any:
        return self.api

    def check_health(self) -> None:
        if not self.jobs.healthy:
            raise RuntimeError("ingress: shutting down")

    def __del__(self) -> None:
        jobs = getattr(self, "jobs", None)
        if jobs is not None:
            jobs.shutdown()


# -- the application -------------------------------------------------------------------------------------------------
def model_roles(cfg: Any) -> list[str]:
    """Model deployments the graph needs under this config (the MLLM is separate)."""
    return [r for r in VLOG_GRAPH.model_roles(cfg) if r != MLLM]


def request_router_config(dconf: Any) -> dict[str, Any]:
    if dconf.router not in ("free_replica", "power_of_two"):
        raise ConfigError(f"serve.*.router: expected free_replica or power_of_two, got {dconf.router!r}")
    out: dict[str, Any] = {"initial_backoff_s": min(0.025, float(dconf.router_max_backoff_s)),
                           "max_backoff_s": float(dconf.router_max_backoff_s)}
    if dconf.router == "free_replica":
        from personavlog.serve.routing import FreeReplicaRouter

        out["request_router_class"] = FreeReplicaRouter
        out["request_router_kwargs"] = {"probe_deadline_s": float(dconf.probe_deadline_s)}
    return out


def deployment_options(name: str, resources: Any, runtime_env: Optional[dict[str, Any]], dconf: Any) -> dict:
    lo = max(1, int(resources.min_replicas))
    hi = max(lo, int(resources.max_replicas))
    return {
        "request_router_config": request_router_config(dconf),
        "name": name,
        "ray_actor_options": ray_options(resources, runtime_env),
        "autoscaling_config": {"min_replicas": lo, "initial_replicas": lo, "max_replicas": hi,
                               "target_ongoing_requests": float(dconf.target_ongoing_requests),
                               "upscale_delay_s": float(dconf.upscale_delay_s),
                               "downscale_delay_s": float(dconf.downscale_delay_s)},
        "max_ongoing_requests": int(dconf.max_ongoing_requests),
        "max_queued_requests": int(dconf.max_queued_requests),
        "health_check_period_s": float(dconf.health_check_period_s),
        "health_check_timeout_s": float(dconf.health_check_timeout_s),
        "graceful_shutdown_wait_loop_s": float(dconf.graceful_shutdown_wait_loop_s),
        "graceful_shutdown_timeout_s": float(dconf.graceful_shutdown_timeout_s),
        "max_constructor_retry_count": int(dconf.max_constructor_retry_count),
    }


def build_application(cfg: Any, overrides: list[str], route_prefix: str = "/") -> Any:
    """The bound Serve application for this config (deploy with `deploy` or `serve.run`)."""
    from personavlog.engine.mllm.factory import needs_actor

    if cfg.serve is None:
        raise ConfigError("serve: missing config group (add `- serve: default` to the defaults)")
    models: dict[str, Any] = {}
    for role in model_roles(cfg):
        conf = cfg.scorers if role == "scorer" else cfg.models.get(role)
        if conf is None:
            raise ConfigError(f"models.{role}: missing from the config")
        conf_dict = OmegaConf.to_container(conf, resolve=True)
        opts = deployment_options(role, conf.resources, conf_dict.get("runtime_env"),  # type: ignore[union-attr]
                                  cfg.serve.models)
        models[role] = serve.deployment(ModelDeployment).options(**opts).bind(role, conf_dict)
    mllm = None
    if MLLM in VLOG_GRAPH.model_roles(cfg) and needs_actor(cfg.mllm):
        opts = deployment_options(MLLM, cfg.mllm.resources, None, cfg.serve.mllm)
        mllm = serve.deployment(MLLMDeployment).options(**opts).bind(OmegaConf.to_container(cfg.mllm, resolve=True))
    ingress_cls = serve.deployment(serve.ingress()(Ingress))
    ingress = ingress_cls.options(
        name=INGRESS, num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=int(cfg.serve.ingress_max_ongoing_requests),
        graceful_shutdown_timeout_s=float(cfg.serve.models.graceful_shutdown_timeout_s),
    )
    return ingress.bind(list(overrides), fingerprint(cfg), models, mllm, route_prefix)


def deploy(cfg: Any, overrides: list[str], *, host: Optional[str] = None, port: Optional[int] = None,
           route_prefix: str = "/") -> str:
    """Start Serve's HTTP proxy on host:port (Ray must be connected) and deploy the application; blocks until every
    deployment is running. Returns the base URL."""
    host = host or cfg.serve.host
    port = int(port if port is not None else cfg.serve.port)
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    t0 = time.perf_counter()
    try:
        serve.run(build_application(cfg, overrides, route_prefix), name=cfg.serve.app_name,
                  route_prefix=route_prefix, blocking=False)
    except RuntimeError as exc:  # Serve reports a deployment that failed to start as a RuntimeError
        raise ConfigError(f"serve: the application failed to start: {_first_line(exc)}"
                          f"{_deployment_failures(cfg.serve.app_name)}") from None
    log.info("personavlog serve: deployed in %.1f s", time.perf_counter() - t0)
    return f"http://{host}:{port}{'' if route_prefix == '/' else route_prefix}"


def _deployment_failures(app_name: str) -> str:
    """The last error line Serve recorded for each unhealthy deployment (the replica's own exception)."""
    try:
        app = serve.status().applications.get(app_name)
        deployments = app.deployments.items() if app is not None else []
    except Exception:  # noqa: BLE001 - this only decorates an error that is already being raised
        return ""
    parts = []
    for name, d in deployments:
        if str(getattr(d, "status", "")).endswith("HEALTHY"):
            continue
        lines = [ln.strip() for ln in str(getattr(d, "message", "")).splitlines() if "Error" in ln]
        if lines:
            parts.append(f"{name}: {lines[-1][:300]}")
    return ("; " + "; ".join(parts)) if parts else ""


def replica_actor_names(app_name: str, deployment: str) -> list[str]:
    """Names of the Ray actors of a deployment's replicas (for operators and fault-injection tests)."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def serve_forever(cfg: Any, overrides: list[str]) -> int:
    """`personavlog serve`: connect Ray (a private local instance unless `ray.address` says otherwise; dashboard off
    or on 127.0.0.1), deploy, and serve until SIGINT/SIGTERM; then stop Serve (replicas drain) and Ray."""
    import signal
    import sys
    import threading

    import ray

    from personavlog.engine.drivers.ray_models import connect_ray

    started_here = not ray.is_initialized()
    connect_ray(cfg)
    stop = threading.Event()
    try:
        url = deploy(cfg, overrides)
        sys.stderr.write(f"personavlog: serving on {url}  (docs: {url}/docs, health: {url}/healthz; "
                         f"token from ${cfg.serve.token_env}{' or serve.token_file' if cfg.serve.token_file else ''})"
                         "\n")
        if cfg.serve.host not in ("127.0.0.1", "localhost", "::1"):
            sys.stderr.write("personavlog: warning: listening beyond this machine over plain HTTP; put a TLS "
                             "proxy in front and keep Ray's own ports firewalled\n")
        sys.stderr.flush()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        sys.stderr.write("personavlog: stopping (jobs in flight finish their current units)\n")
    finally:
        try:
            serve.shutdown()
        finally:
            if started_here:
                ray.shutdown()
    return 0
