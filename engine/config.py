"""Typed configuration schemas (Hydra structured configs) and the one place that composes them.

Every YAML under conf/ is validated against these dataclasses when composed, so a typo in a key or a wrong type fails
at start-up with the key's name instead of deep inside a stage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from personavlog.engine.errors import ConfigError


@dataclass
class ResourcesConf:
    """What one replica of a model actor holds. Ray schedules on these; nothing else reads them."""

    num_gpus: float = 0.0  # GPUs per replica (fractions let small models share one GPU)
    num_cpus: float = 0.0  # CPU slots per replica; 0 so toy actors never starve a 2-core laptop
    accelerator_type: Optional[str] = None  # Ray accelerator type, e.g. "H20", "H100"; None = any
    memory_gb: float = 0.0  # host memory reserved per replica (Ray `memory`), 0 = no reservation
    replicas: int = 1  # replicas started by `generate` (batch and serve use min/max below)
    # batch: min_replicas start first and must fit (or, with ray.autoscaling, appear); more join up to max_replicas
    # while the cluster has room, never more than the batch has units for. serve: the autoscaling bounds.
    min_replicas: int = 1
    max_replicas: int = 1


@dataclass
class ModelConf:
    """One heavy model behind one actor class."""

    kind: str = "???"  # implementation key, see personavlog.actors.registry
    source: str = "tiny"  # "tiny" = random weights built from a toy config, else a hub id or a local path
    revision: Optional[str] = None  # hub revision (commit, tag or branch) pinned for reproducibility
    dtype: str = "float32"  # torch dtype name used to load the weights
    device: str = "auto"  # "auto" = cuda when available, else cpu
    params: dict[str, Any] = field(default_factory=dict)  # call defaults (steps, guidance, size, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # loader options specific to one kind
    resources: ResourcesConf = field(default_factory=ResourcesConf)
    runtime_env: Optional[dict[str, Any]] = None  # Ray runtime_env for models that need their own Python env
    # A call still running after this long is taken as a hung replica: the replica is restarted and the call fails
    # as transient (the unit is retried). Set it well above the model's slowest honest call; None = no limit.
    call_timeout_s: Optional[float] = None


@dataclass
class ModelsConf:
    image_edit: ModelConf = field(default_factory=ModelConf)  # Flux-Kontext: stylize, keyframes, FRM edits
    image_to_video: ModelConf = field(default_factory=ModelConf)  # Wan2.1 I2V
    music: ModelConf = field(default_factory=ModelConf)  # AudioX / Stable Audio Open
    speech: ModelConf = field(default_factory=ModelConf)  # CosyVoice2 / transformers TTS


@dataclass
class MLLMConf:
    """The multimodal LLM every agent talks to."""

    backend: str = "local"  # local | openai | vllm
    model: str = "tiny"  # model name sent to the endpoint (openai) or loaded (vllm, local: "tiny" or a path)
    revision: Optional[str] = None
    base_url: Optional[str] = None  # openai backend: endpoint; None = the openai package's default
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (never the key)
    timeout_s: float = 120.0  # per request
    max_retries: int = 4  # on 429/5xx/timeouts, with exponential backoff
    backoff_s: float = 1.0  # first backoff; doubles each retry, honours Retry-After
    temperature: float = 0.7
    max_tokens: int = 2048  # upper bound of generated tokens per call
    max_image_side: int = 1024  # images are downscaled to this before being sent
    params: dict[str, Any] = field(default_factory=dict)  # backend-specific (vllm engine args, local sizes)
    resources: ResourcesConf = field(default_factory=ResourcesConf)


@dataclass
class MACFConf:
    multi_agent: bool = True  # False = one MLLM call writes the whole plan, no reviewers (paper Table 2 ablation)
    max_rounds: int = 2  # generator+reviewer rounds per agent; the last draft is kept if no round passes
    parse_retries: int = 2  # extra calls when the MLLM output does not fit the schema


@dataclass
class FRMStageConf:
    enabled: bool = False
    rounds: int = 1  # review-regenerate-compare rounds per shot (paper: 1)
    # Scores that must ALL be strictly higher for a regeneration to replace the kept result (paper: every score).
    # Empty = every score the scorer reports for this kind (image: m_i2i, m_i2t; video: the six VBench scores).
    required_scores: list[str] = field(default_factory=list)
    review_frames: int = 4  # video FRM: frames sampled from a clip for the video quality agent


@dataclass
class FRMConf:
    image: FRMStageConf = field(default_factory=FRMStageConf)
    video: FRMStageConf = field(default_factory=FRMStageConf)


@dataclass
class LimitsConf:
    """Input limits; every one is checked before the input is decoded or a model sees it."""

    theme_max_chars: int = 500
    style_max_chars: int = 100
    image_max_bytes: int = 20 * 1024 * 1024
    image_max_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding
    image_min_side: int = 16
    voice_max_bytes: int = 10 * 1024 * 1024
    voice_max_seconds: float = 30.0
    shots_min: int = 3
    shots_max: int = 12


@dataclass
class AssemblyConf:
    fps: int = 16  # output frame rate; clips are resampled to it
    height: int = 480  # output height; clips are scaled (aspect kept, even width)
    music_volume: float = 0.35  # background music gain before ducking
    duck_ratio: float = 8.0  # sidechain compression ratio applied to music under speech
    speech_gap_s: float = 0.3  # silence kept after a monologue before the next shot may start
    crf: int = 23  # H.264 quality
    audio_bitrate: str = "160k"
    subtitle_language: str = "eng"  # ISO 639-2 tag of the subtitle track; the assemble stage sets it from the job


@dataclass
class RayConf:
    address: Optional[str] = None  # None = start a local Ray instance; "auto" or "ray://..." = join a cluster
    namespace: str = "personavlog"
    include_dashboard: bool = False  # the dashboard is an RCE surface on an untrusted network
    dashboard_host: str = "127.0.0.1"
    # The cluster adds nodes on demand (Ray autoscaler, KubeRay). `batch` then asks for model replicas up to
    # max_replicas even when they do not fit yet (pending replicas are what makes the autoscaler add GPU nodes) and
    # waits for the nodes its min_replicas need instead of failing at once.
    autoscaling: bool = False
    autoscaling_wait_s: float = 900.0  # with autoscaling: how long `batch` waits for the nodes of its min_replicas


@dataclass
class VlogConfig:
    models: ModelsConf = field(default_factory=ModelsConf)
    mllm: MLLMConf = field(default_factory=MLLMConf)
    shots: int = 4  # default k when a job does not say
    language: str = "en"  # default language of story, monologue and subtitles
    seed: int = 0  # default seed
    out: str = "outputs"  # run store root
    macf: MACFConf = field(default_factory=MACFConf)
    frm: FRMConf = field(default_factory=FRMConf)
    scorers: Any = None  # FRM quality scorers; schema: personavlog.actors.scorers.ScorerConf (conf/scorers/)
    sim: Any = None  # GPU profile of the calibrated simulation (models=sim); schema: personavlog.actors.sim.SimConf
    limits: LimitsConf = field(default_factory=LimitsConf)
    assembly: AssemblyConf = field(default_factory=AssemblyConf)
    ray: RayConf = field(default_factory=RayConf)
    serve: Any = None  # online endpoint; schema: personavlog.serve.config.ServeConf (conf/serve/)


_REGISTERED = False


def register_schemas() -> None:
    """Register the schemas with Hydra's ConfigStore so YAML groups are validated against them."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="vlog_schema", node=VlogConfig)
    cs.store(group="models", name="models_schema", node=ModelsConf)
    cs.store(group="mllm", name="mllm_schema", node=MLLMConf)
    from personavlog.actors.scorers import ScorerConf  # here, not at import: actors import this module

    cs.store(group="scorers", name="scorers_schema", node=ScorerConf)
    from personavlog.actors.sim import SimConf

    cs.store(group="sim", name="sim_schema", node=SimConf)
    from personavlog.serve.config import ServeConf

    cs.store(group="serve", name="serve_schema", node=ServeConf)
    _REGISTERED = True


def load_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """Compose conf/<config_name>.yaml with `key=value` overrides (Hydra syntax) into a typed, read-only config."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_schemas()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="personavlog.conf", version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"config: {str(exc).splitlines()[0]}") from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


# Keys that say where or how a job runs, not what it produces: they stay out of the fingerprint so that moving a
# job to other hardware or another endpoint timeout does not change its id. `sim` (the simulation's GPU profile, at
# the root and copied into models=sim / mllm=sim) only sets how long stand-ins sleep.
_NOT_IN_FINGERPRINT = {"resources", "runtime_env", "api_key_env", "timeout_s", "call_timeout_s", "max_retries",
                       "backoff_s", "base_url", "device", "sim"}


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in sorted(node.items()) if k not in _NOT_IN_FINGERPRINT}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def fingerprint(cfg: DictConfig) -> str:
    """A stable hash of everything in the config that can change a job's outputs."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data = {k: v for k, v in data.items() if k not in ("ray", "out", "limits", "serve")}
    blob = json.dumps(_strip(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
