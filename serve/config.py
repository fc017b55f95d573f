"""Typed schema of the `serve` config group (conf/serve/*.yaml): the online endpoint's security, queue and
deployment settings. Plain dataclasses, no Ray or web imports, so `load_config` can register them anywhere.

Model sizes and replica bounds stay with each model (`models.<role>.resources.min_replicas/max_replicas`); this group
only holds what every deployment of the endpoint shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class DeploymentConf:
    """Ray Serve settings shared by the model deployments (or by the MLLM engine's)."""

    max_ongoing_requests: int = 1  # calls one replica runs at once; 1 = one GPU job at a time, others wait in line
    target_ongoing_requests: float = 1.0  # autoscaling aims at this many calls per replica
    max_queued_requests: int = -1  # calls waiting for a replica, per caller; -1 = no bound (the vlog queue bounds it)
    upscale_delay_s: float = 5.0  # how long demand must persist before a replica is added
    downscale_delay_s: float = 600.0  # idle time before a replica is removed (GPU models load slowly)
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_wait_loop_s: float = 2.0  # how often a stopping replica checks for calls still running
    graceful_shutdown_timeout_s: float = 120.0  # calls in flight get this long to finish before the replica is killed
    max_constructor_retry_count: int = 3  # a model that fails to load fails the deployment after this many tries
    # free_replica = every replica is a candidate, least loaded wins (personavlog.serve.routing); power_of_two =
    # Serve's default (two random replicas per attempt), which often misses the one free GPU replica.
    router: str = "free_replica"
    router_max_backoff_s: float = 0.1  # longest wait between routing attempts while every replica is busy
    probe_deadline_s: float = 0.5  # how long a replica may take to report its queue length (Serve default 0.1)


@dataclass
class RateLimitConf:
    """Token bucket per API token: `burst` requests at once, refilled at `requests_per_s`."""

    requests_per_s: float = 5.0
    burst: int = 60


@dataclass
class ServeConf:
    host: str = "127.0.0.1"  # the HTTP proxy's address; 0.0.0.0 exposes it (put a TLS proxy in front)
    port: int = 8000
    app_name: str = "personavlog"
    # Bearer tokens: the variable named here (never the token itself), and/or a secrets file with one token per line.
    token_env: str = "PERSONAVLOG_API_TOKEN"
    token_file: Optional[str] = None
    min_token_chars: int = 16  # shorter tokens are refused at start-up
    public_docs: bool = False  # True = /docs and /openapi.json need no token (everything else still does)
    max_body_bytes: int = 0  # request body limit; 0 = image + voice limits plus 1 MiB for the form fields
    queue_size: int = 8  # vlogs and plans accepted but not finished (running + waiting); beyond: 429 + Retry-After
    max_concurrent_jobs: int = 2  # jobs running at once; each runs its own shots in parallel on free replicas
    retry_after_s: int = 30  # Retry-After when there is no finished job to estimate from
    max_parallel_units: int = 32  # units of one job in flight at once (they wait on model replicas, not CPUs)
    unit_retries: int = 3  # retries of a unit whose model replica died or was unreachable
    model_call_timeout_s: float = 3600.0  # one model call, waiting in line included
    plan_wait_s: float = 120.0  # POST /v1/plans answers with the plan if it is ready within this, else 202
    sse_keepalive_s: float = 15.0  # comment line sent on an idle event stream so proxies keep it open
    keep_finished: int = 1000  # finished jobs kept in memory for events; older ones are read from the run store
    ingress_max_ongoing_requests: int = 256  # HTTP requests (event streams included) the ingress holds at once
    rate_limit: RateLimitConf = field(default_factory=RateLimitConf)
    models: DeploymentConf = field(default_factory=DeploymentConf)
    mllm: DeploymentConf = field(default_factory=DeploymentConf)
