"""The typed workspace configuration.

One :class:`WorkspaceConfig` holds every setting, grouped by concern (``data``,
``train``, ``tune``, ``registry``, ``serve``, ``cluster``). Defaults are built in;
a YAML file (``--config rayspace.yaml``) and ``--set section.field=value``
overrides are layered on top. Every invalid value fails here, before Ray starts,
with a message naming the field, the value and the rule::

    Got -0.1 for train.lr: must be greater than 0

The models use ``extra="forbid"`` so a typo in a key is an error, not a silently
ignored setting.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workloads.exceptions import ConfigError

logger = logging.getLogger(__name__)

#: Environment variable naming a default config file (used by job entrypoints).
CONFIG_ENV = "RAYSPACE_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _storage_location(value: str) -> str:
    # One rule for every setting that names where the workspace writes (see workloads/storage.py).
    from workloads.storage import check

    return check(value)


#: A setting that takes a local path or a storage URI (``s3://bucket/prefix``, ``file:///abs``, ...).
StorageLocation = Annotated[str, AfterValidator(_storage_location)]


# --------------------------------------------------------------------------- data


class DataConfig(_Section):
    """Where the lake lives and how it is split."""

    lake: StorageLocation = Field("./lake", min_length=1, description="Lake root: a local dir or any pyarrow/fsspec URI.")
    source: str | None = Field(
        None, description="CSV/Parquet file or folder to ingest; None ingests the built-in WDBC dataset."
    )
    val_fraction: float = Field(0.15, gt=0, lt=1, description="Share of patients in the validation split.")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="Share of patients in the test split.")
    split_salt: str = Field("rayspace-v1", min_length=1, description="Salt of the patient-id hash that splits.")
    missing: Literal["drop", "flag"] = Field(
        "drop", description="Rows with missing measurements: drop them, or keep them (flagged has_missing=1) "
        "with the gaps imputed by the training mean"
    )
    synth_chunk_rows: int = Field(100_000, ge=1_000, description="Rows per chunk when writing a synthetic cohort.")
    materialize: bool = Field(
        True,
        description="Keep processed splits in Ray's object store before training starts. Training workers may hold "
        "every CPU, leaving none for Ray Data tasks; false streams from the lake (give Ray Data spare CPUs).",
    )
    snapshot: int | None = Field(
        None, ge=1, description="Read this lake snapshot (see `rayspace data list`) instead of the current one; "
        "None: the current one, resolved once per run.",
    )
    keep_snapshots: int = Field(
        5, ge=1, description="`rayspace data gc` keeps this many newest lake snapshots, plus any a running job "
        "holds a lease on.",
    )
    lease_ttl_hours: float = Field(
        24.0, gt=0, description="A reading run's lease on a snapshot counts as stale after this many hours (or at "
        "once when its process is gone, on the same host); `data gc` also sweeps debris of killed ingests older "
        "than this.",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:.3f}: "
                "must be < 0.9 so the training split keeps at least 10% of patients"
            )
        return self


# -------------------------------------------------------------------------- train


class TrainConfig(_Section):
    """Data-parallel PyTorch training with Ray Train."""

    num_workers: int | None = Field(
        None, ge=1, description="Ray Train workers; None: what the cluster's CPUs allow (at most 4)"
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each training worker reserves.")
    use_gpu: bool = Field(False, description="Give each worker one GPU.")
    epochs: int = Field(40, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536, description="Per-worker batch size.")
    lr: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    hidden: int = Field(64, ge=1, le=8192, description="Width of each hidden layer.")
    depth: int = Field(2, ge=1, le=16, description="Number of hidden layers.")
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    storage_path: StorageLocation = Field("./results", min_length=1, description="Checkpoints and results: local dir or URI.")
    name: str = Field("wdbc-mlp", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name under storage_path.")
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts from the latest checkpoint (-1: forever).")
    checkpoints_to_keep: int = Field(2, ge=1)
    checkpoint_metric: str = Field("val_roc_auc", description="Metric that ranks checkpoints.")
    checkpoint_mode: Literal["max", "min"] = "max"
    # Test hook: a worker raises once at this epoch so resume-from-checkpoint can be exercised.
    fail_at_epoch: int | None = Field(
        None, ge=2, description="Testing only: one worker fails once at this epoch (>= 2, so a checkpoint exists)."
    )


# --------------------------------------------------------------------------- tune


class LogUniform(_Section):
    kind: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "LogUniform":
        if self.low >= self.high:
            raise ValueError(f"low={self.low} must be < high={self.high}")
        return self


class Uniform(_Section):
    kind: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> "Uniform":
        if self.low >= self.high:
            raise ValueError(f"low={self.low} must be < high={self.high}")
        return self


class RandInt(_Section):
    kind: Literal["randint"]
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> "RandInt":
        if self.low >= self.high:
            raise ValueError(f"low={self.low} must be < high={self.high} (high is exclusive)")
        return self


class Choice(_Section):
    kind: Literal["choice"]
    values: list[Any] = Field(min_length=1)


ParamSpec = Annotated[Union[LogUniform, Uniform, RandInt, Choice], Field(discriminator="kind")]

#: Train fields a sweep may search over.
TUNABLE_FIELDS = ("lr", "weight_decay", "hidden", "depth", "dropout", "batch_size", "epochs", "fail_at_epoch")


def _default_search_space() -> dict[str, Any]:
    return {
        "lr": LogUniform(kind="loguniform", low=1e-4, high=3e-2),
        "weight_decay": LogUniform(kind="loguniform", low=1e-6, high=1e-2),
        "hidden": Choice(kind="choice", values=[16, 32, 64, 128]),
        "depth": Choice(kind="choice", values=[1, 2, 3]),
        "dropout": Uniform(kind="uniform", low=0.0, high=0.4),
        "batch_size": Choice(kind="choice", values=[16, 32, 64]),
    }


class TuneConfig(_Section):
    """A Ray Tune sweep over the training."""

    num_samples: int = Field(8, ge=1, le=10_000)
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: what the cluster's CPUs allow.")
    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers of each trial.")
    trial_driver_cpus: float = Field(
        0.0, ge=0, description="CPUs each trial's driver reserves (it only waits on its TorchTrainer)."
    )
    time_budget_s: float | None = Field(
        900, gt=0,
        description="After this many seconds Tune stops every running trial and starts no new one (None: no limit).",
    )
    metric: str = Field("val_roc_auc", description="Validation metric the scheduler and selection use.")
    mode: Literal["max", "min"] = "max"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(3, ge=1, description="ASHA: epochs every trial gets before it may be stopped.")
    reduction_factor: float = Field(2, gt=1)
    seed: int = Field(0, ge=0)
    storage_path: StorageLocation = Field("./results", min_length=1)
    name: str = Field("wdbc-sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    search_space: dict[str, ParamSpec] = Field(default_factory=_default_search_space)

    @field_validator("search_space")
    @classmethod
    def _known_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(TUNABLE_FIELDS))
        if unknown:
            raise ValueError(f"unknown parameters {unknown}: must be among {list(TUNABLE_FIELDS)}")
        return v


# ----------------------------------------------------------------------- registry


class RegistryConfig(_Section):
    """The model registry that promotion writes and Serve reads."""

    path: StorageLocation = Field("./models", min_length=1, description="Registry root: a local dir or URI.")
    model_name: str = Field("wdbc", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=63)
    gate_metric: str = Field("test_roc_auc", description="Metric the promotion gate compares.")
    gate_mode: Literal["max", "min"] = "max"
    gate_tolerance: float = Field(0.0, ge=0, description="How much worse than current a new version may be.")


# -------------------------------------------------------------------------- serve


class ServeConfig(_Section):
    """The Ray Serve application."""

    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds; 0.0.0.0 only inside a pod.")
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16, gt=0)
    max_ongoing_requests: int = Field(64, ge=1)
    replica_cpus: float = Field(0.5, gt=0)
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="Cap on replicas per Ray node (1: one per node, so losing a node keeps the others)."
    )
    max_batch_size: int = Field(64, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    max_instances: int = Field(1024, ge=1, description="Largest batch one request may carry.")
    reload_poll_s: float = Field(5.0, ge=0, description="Poll `current` this often; 0 disables polling.")
    ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description="HTTP ingress when rayspace starts Ray itself: Serve's HAProxy ingress, or its Python proxy.",
    )

    @model_validator(mode="after")
    def _replicas_ordered(self) -> "ServeConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} must be <= max_replicas={self.max_replicas}")
        return self


# ------------------------------------------------------------------------ cluster


class ClusterConfig(_Section):
    """Which KubeRay objects the client manages."""

    name: str = Field("rayspace", pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=47)
    namespace: str | None = Field(None, description="None: from the kubeconfig context or in-cluster config.")
    overlay: str = Field("dev", min_length=1)
    image: str | None = Field(None, description="Override the Ray image (default: the pinned one in cluster/base).")
    context: str | None = Field(None, description="kubeconfig context; None: the current one.")


# ---------------------------------------------------------------------- workspace


class WorkspaceConfig(_Section):
    """Every setting of the workspace."""

    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)


#: A configuration small enough that the whole pipeline runs in well under a minute after Ray starts.
SMOKE_OVERRIDES: dict[str, Any] = {
    "train.epochs": 3,
    "train.hidden": 16,
    "train.depth": 1,
    "train.num_workers": 1,
    "tune.num_samples": 2,
    "tune.grace_period": 1,
    "tune.max_concurrent_trials": 2,
    "tune.search_space": {
        "lr": {"kind": "loguniform", "low": 1e-3, "high": 1e-2},
        "epochs": {"kind": "choice", "values": [2]},
    },
    "serve.max_replicas": 1,
    "serve.reload_poll_s": 0,
}


# ------------------------------------------------------------------ loading


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _rule(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if msg.startswith("Input should be"):
        msg = "must be" + msg[len("Input should be"):]
    elif msg.startswith("String should"):
        msg = "must" + msg[len("String should"):]
    elif msg.startswith("Extra inputs are not permitted"):
        msg = "unknown field (not a setting of this section; check the spelling)"
    return msg[:1].lower() + msg[1:]


def config_error_from(exc: ValidationError, prefix: str = "") -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a :class:`ConfigError` naming field, value and rule."""
    problems: list[tuple[str, Any, str]] = []
    lines = []
    for err in exc.errors():
        # Drop the discriminator tag pydantic adds for tagged unions, e.g. ("search_space", "lr", "loguniform", "low").
        loc = [str(p) for p in err.get("loc", ()) if p not in ("loguniform", "uniform", "randint", "choice")]
        field = ".".join(([prefix] if prefix else []) + loc) or "config"
        value = err.get("input")
        rule = _rule(err)
        problems.append((field, value, rule))
        if isinstance(value, dict) and err.get("type") in ("value_error", "assertion_error"):
            lines.append(f"Invalid {field}: {rule}")
        else:
            lines.append(f"Got {_describe(value)} for {field}: {rule}")
    return ConfigError("\n".join(lines), problems)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f'Got "{dotted}" for an override key: must be section.field, e.g. train.lr', [])
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _field_annotation(dotted: str) -> Any:
    """The type annotation of the setting ``dotted`` (``data.split_salt`` -> ``str``); ``None`` if unknown."""
    model: Any = WorkspaceConfig
    annotation: Any = None
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def _takes_text(annotation: Any) -> bool:
    """Whether a setting of this type is text (``str``, ``str | None``, a ``Literal`` of strings)."""
    if annotation is str:
        return True
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in args)
    return get_origin(annotation) in (Union, UnionType) and any(_takes_text(a) for a in args if a is not type(None))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``section.field=value`` override.

    The value is read as YAML (so ``1e-3``, ``true``, ``[1, 2]`` work), except that a
    text setting keeps the text: ``data.split_salt=2e5`` is the salt ``"2e5"``, not
    the number 200000.0 (``null`` still clears an optional one).
    """
    if "=" not in text:
        raise ConfigError(f'Got "{text}" for --set: must be section.field=value, e.g. train.lr=0.001', [])
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f'Got "{raw}" for {key}: not a valid YAML value ({e})', []) from e
    if _takes_text(_field_annotation(key)):
        # YAML would make 2e5, 0123 or yes a number or a bool; a text setting means the text as typed.
        return key, value if value is None or isinstance(value, str) else raw.strip()
    # YAML 1.1 reads "1e-3" as a string; numbers are what people mean here.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return key, value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> WorkspaceConfig:
    """Build the workspace config from defaults, an optional YAML file and overrides.

    Args:
        path: YAML file whose top-level keys are sections (``data``, ``train``, ...).
            ``None`` also looks at the ``RAYSPACE_CONFIG`` environment variable.
        overrides: ``{"train.lr": 0.01}`` or ``["train.lr=0.01"]``; applied after the file.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: The file is missing or not YAML, or any value breaks a rule.
    """
    tree: dict[str, Any] = {}
    path = path or os.environ.get(CONFIG_ENV) or None
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f'Got "{path}" for --config: cannot read it ({e.strerror})', []) from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f'Got "{path}" for --config: not valid YAML ({e})', []) from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"Got {_describe(loaded)} for the top level of {path}: must be a mapping of sections "
                "(data, train, tune, registry, serve, cluster)",
                [],
            )
        tree = loaded
    items: list[tuple[str, Any]]
    if overrides is None:
        items = []
    elif isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [parse_override(o) for o in overrides]
    for key, value in items:
        _set_dotted(tree, key, value)
    try:
        cfg = WorkspaceConfig.model_validate(tree)
    except ValidationError as e:
        raise config_error_from(e) from None
    # As a Ray job's entrypoint, relative storage would land in the job's temporary working dir.
    from workloads.jobs import check_job_storage

    check_job_storage(cfg)
    return cfg


def with_overrides(cfg: WorkspaceConfig, overrides: dict[str, Any]) -> WorkspaceConfig:
    """Return a copy of ``cfg`` with dotted overrides applied and re-validated."""
    tree = cfg.model_dump(mode="python")
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    try:
        return WorkspaceConfig.model_validate(tree)
    except ValidationError as e:
        raise config_error_from(e) from None


def dump_config(cfg: WorkspaceConfig) -> str:
    """Render a config as YAML (the inverse of :func:`load_config`)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


_SECTION_TITLES = {
    "data": "The Parquet lake and how patients are split.",
    "train": "Data-parallel PyTorch training (Ray Train TorchTrainer).",
    "tune": "Ray Tune sweeps over the training.",
    "registry": "Model registry: where promotion writes versions and the gate that guards `current`.",
    "serve": "Ray Serve HTTP application (KServe V1 inference protocol).",
    "cluster": "KubeRay objects the cluster client manages.",
}


def _rules(field_info: Any) -> str:
    names = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length", "max_length": "max length",
             "pattern": "matches"}
    parts = []
    for meta in field_info.metadata:
        for attr, label in names.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{label} {value}")
    return ", ".join(parts)


def example_yaml() -> str:
    """The annotated example config: every field with its default, description and rule.

    ``rayspace.yaml`` at the repository root is this text (a test keeps them equal);
    ``rayspace config example`` prints it.
    """
    defaults = WorkspaceConfig()
    lines = [
        "# rayspace workspace configuration: every setting, with its built-in default.",
        "# Use: rayspace <command> --config rayspace.yaml   (one value: --set section.field=value)",
        "# Invalid values fail before Ray starts, naming the field, the value and the rule.",
        "# Regenerate after changing workloads/config.py: rayspace config example > rayspace.yaml",
    ]
    for section in WorkspaceConfig.model_fields:
        model = getattr(defaults, section)
        dumped = model.model_dump(mode="json")
        lines += ["", f"# {_SECTION_TITLES.get(section, section)}", f"{section}:"]
        for name, info in type(model).model_fields.items():
            note = "; ".join(p for p in ((info.description or "").rstrip("."), _rules(info)) if p)
            if note:
                lines.append(f"  # {note}")
            value = dumped[name]
            if isinstance(value, dict) and value:
                lines.append(f"  {name}:")
                body = yaml.safe_dump(value, sort_keys=False, default_flow_style=None).rstrip().splitlines()
                lines += [f"    {line}" for line in body]
            else:
                text = yaml.safe_dump(value, default_flow_style=True).strip()
                text = text.removesuffix("\n...").removesuffix("...").strip()
                lines.append(f"  {name}: {text}")
    return "\n".join(lines) + "\n"
