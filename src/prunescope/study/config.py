"""The study's configuration: a YAML file mapped onto dataclasses, checked key by key.

Every error names the offending key (``recovery.max_steps``) and, for a misspelt key, suggests the
nearest valid one. The packaged configs live in ``prunescope/study/configs/`` and are addressed by
their bare name (``default``, ``paper``) or by a path to any YAML file.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.io import read_yaml

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass
class RecoveryPlan:
    """Which cells are recovered, how, and what is kept."""
    methods: list[str] = field(default_factory=list)   # grid axis: lora | partial | full; [] = no recovery
    # grid axis: sft | kd | mix | onpolicy, each a cell recovery-<method>-<loss>; [] = settings.loss, recovery-<method>
    losses: list[str] = field(default_factory=list)
    # with several losses and no settings.token_budget: every loss after the first trains on exactly the
    # response tokens the first one trained on (its recover.json), so the comparison is at equal budget
    equal_tokens: bool = True
    criteria: list[str] | None = None                   # criteria whose cells are recovered (None = all)
    ratios: list[float] | None = None                   # ratios whose cells are recovered (None = all)
    keep_merged: bool = False                           # keep recovery's merged checkpoint on disk
    settings: dict[str, Any] = field(default_factory=dict)  # passed as RecoverConfig(method=m, **settings)


@dataclass
class EfficiencySettings:
    """How base and pruned models are timed (see prunescope.study.efficiency)."""
    enabled: bool = True
    prompt_tokens: int = 128
    new_tokens: int = 32
    repeats: int = 5
    warmup: int = 1
    batch_size: int = 1


@dataclass
class AblationSettings:
    """Single-layer ablation: every layer skipped alone and the tasks evaluated on a small limit."""
    enabled: bool = True
    limit: int = 20
    tasks: list[str] | None = None  # None = the study's tasks


@dataclass
class ReportSettings:
    """What the report recommends."""
    retention_target: float = 0.9


@dataclass
class StudyConfig:
    """One study: a model, tasks, and the grid criteria x ratios x recovery methods."""
    name: str = "default"
    model: str = "smollm2-135m"
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["arith_add_1d_gen", "arith_add_2d_mc"])
    limit: int | None = None
    data: str | None = None  # dataset file or folder for tasks that read one (GSM8K)
    batch_size: int | str = "auto"
    criteria: list[str] = field(default_factory=lambda: ["reverse", "block_influence"])
    ratios: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])
    scoring: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for score_layers
    save_checkpoints: bool = False
    methods: list[Any] = field(default_factory=list)  # compression methods beside depth pruning (study/methods_axis.py)
    recovery: RecoveryPlan = field(default_factory=RecoveryPlan)
    efficiency: EfficiencySettings = field(default_factory=EfficiencySettings)
    ablation: AblationSettings = field(default_factory=AblationSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    out: str | None = None  # default: runs/<name>

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check values that need no registry (ratios, limits, lists); raise UsageError naming the key."""
        _need(isinstance(self.name, str) and self.name.strip() and "/" not in self.name,
              f"name: {self.name!r} must be a non-empty folder name without '/'")
        _need(self.tasks, "tasks: give at least one task (see `prunescope tasks`)")
        _need(self.criteria, "criteria: give at least one criterion, e.g. [reverse, block_influence]")
        _need(self.ratios, "ratios: give at least one fraction of layers to remove, e.g. [0.1, 0.2, 0.3]")
        _no_duplicates(self.tasks, "tasks")
        _no_duplicates(self.criteria, "criteria")
        _no_duplicates(self.ratios, "ratios")
        for r in self.ratios:
            _check_ratio(r, "ratios")
        _need(self.limit is None or self.limit >= 1, f"limit: {self.limit} must be at least 1 (or null for all items)")
        _need(self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1),
              f"batch_size: {self.batch_size!r} must be 'auto' or a positive integer")
        if self.methods:
            from prunescope.study.methods_axis import method_specs
            method_specs(self.methods, self.ratios)  # raises a UsageError naming the bad entry
        plan = self.recovery
        _no_duplicates(plan.methods, "recovery.methods")
        for c in plan.criteria or []:
            _need(c in self.criteria, f"recovery.criteria: {c!r} is not among criteria {self.criteria}")
        for r in plan.ratios or []:
            _check_ratio(r, "recovery.ratios")
            _need(r in self.ratios, f"recovery.ratios: {r} is not among ratios {self.ratios}")
        _need("method" not in plan.settings,
              "recovery.settings.method: list methods in recovery.methods instead (each is one grid axis value)")
        _no_duplicates(plan.losses, "recovery.losses")
        _need(not plan.losses or "loss" not in plan.settings,
              "recovery.settings.loss: with recovery.losses set, list the losses there instead (one grid axis value "
              "each)")
        eff = self.efficiency
        for key in ("prompt_tokens", "new_tokens", "repeats", "batch_size"):
            _need(getattr(eff, key) >= 1, f"efficiency.{key}: {getattr(eff, key)} must be at least 1")
        _need(eff.warmup >= 0, f"efficiency.warmup: {eff.warmup} must be 0 or more")
        _need(self.ablation.limit >= 1, f"ablation.limit: {self.ablation.limit} must be at least 1")
        _need(0.0 < self.report.retention_target <= 1.5,
              f"report.retention_target: {self.report.retention_target} must be a fraction such as 0.9")

    @property
    def out_dir(self) -> Path:
        """The run folder: ``out`` if set, else ``runs/<name>``."""
        return Path(self.out) if self.out else Path("runs") / self.name

    def recovered_cells(self) -> list[tuple[str, float]]:
        """(criterion, ratio) pairs that get each recovery method."""
        plan = self.recovery
        if not plan.methods:
            return []
        crits = plan.criteria if plan.criteria is not None else self.criteria
        ratios = plan.ratios if plan.ratios is not None else self.ratios
        return [(c, r) for c in self.criteria if c in crits for r in self.ratios if r in ratios]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recovery_variants(plan: RecoveryPlan | dict) -> list[tuple[str, str, str | None]]:
    """(label, method, loss) of every recovery a recovered cell gets, in config order: the label names its
    folder ``recovery-<label>`` and its ``recovery`` value in results.csv (``lora``, or ``lora-kd`` when the
    study has a ``recovery.losses`` axis). ``loss`` None: the loss of ``recovery.settings``."""
    plan = dataclasses.asdict(plan) if dataclasses.is_dataclass(plan) else dict(plan or {})
    losses = list(plan.get("losses") or [])
    return [(f"{m}-{loss}" if loss else m, m, loss) for m in plan.get("methods") or [] for loss in (losses or [None])]


def _need(condition: Any, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _check_ratio(r: Any, key: str) -> None:
    _need(isinstance(r, (int, float)) and not isinstance(r, bool) and 0.0 < r < 1.0,
          f"{key}: {r!r} is not a fraction of layers strictly between 0 and 1 (e.g. 0.25)")


def _no_duplicates(values: list, key: str) -> None:
    seen = set()
    for v in values:
        _need(v not in seen, f"{key}: {v!r} is listed twice")
        seen.add(v)


# ---- YAML -> dataclasses -------------------------------------------------------------------------

def resolve_config_path(spec: str | Path) -> Path:
    """A packaged config name (``default``, ``paper``) or a path to a YAML file."""
    text = str(spec)
    packaged = CONFIG_DIR / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and packaged.is_file():
        return packaged
    path = Path(text).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise UsageError(f"--config {text}: no such file; pass a YAML file or a packaged config ({names})")
    return path


def load_study_config(spec: str | Path = "default", **overrides: Any) -> StudyConfig:
    """Read a study YAML (path or packaged name), apply non-None ``overrides`` (model, tasks, out, ...),
    and return a validated StudyConfig. Errors name the key and the file."""
    path = resolve_config_path(spec)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the top level must be a mapping of keys such as model, tasks, criteria, ratios")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return from_mapping(StudyConfig, data)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def from_mapping(cls: type, data: dict[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from ``data``, refusing unknown keys (with did-you-mean) and wrong types."""
    if not isinstance(data, dict):
        raise UsageError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"did you mean {prefix}{near[0]!r}?" if near else f"valid keys: {', '.join(names)}"
            raise UsageError(f"unknown key {prefix}{key!r}; {hint}")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def _convert(value: Any, tp: Any, key: str):
    """Coerce a YAML value to the annotated type, or raise a UsageError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value or {}, prefix=f"{key}.")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, key)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[-1] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [v.strip() for v in value.split(",")] if isinstance(value, str) else [value]
        if not isinstance(value, list):
            raise UsageError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UsageError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise UsageError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UsageError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value
