"""Typed run configuration: ``configs/<dataset>.yaml`` fills the dataclass sections of
:mod:`pipeline.run.config_sections`, then ``--smoke`` (the file's ``smoke:`` overrides) and ``--set section.key=value``
apply. Unknown keys, wrong types and impossible values are errors naming key and file, so a typo never falls back
to a default. ``python -m pipeline.run.config`` lists every key."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.dataclasses import dataclass

from pipeline.run.config_fields import RECORDED, STRICT, FieldError, Section, describe_bounds, key, require
from pipeline.run.config_sections import (IDENTIFIER, INTERPOLANT_PRESETS, AutoencoderConfig, ConvertConfig, DataConfig,
                                          DemoConfig, EncodeConfig, EvalConfig, ForecastConfig, InterpolantConfig,
                                          LoaderConfig, ModelConfig, SamplingConfig, TrainConfig, VQVAEConfig)

__all__ = ["IDENTIFIER", "INTERPOLANT_PRESETS", "AutoencoderConfig", "Config", "ConfigError", "ConvertConfig", "DataConfig",
           "DemoConfig", "EncodeConfig", "EvalConfig", "ForecastConfig", "InterpolantConfig", "LoaderConfig", "ModelConfig",
           "SamplingConfig", "TrainConfig", "VQVAEConfig", "absolute_paths", "apply_override", "config_from_dict",
           "key_listing", "load_config", "read_yaml", "recorded_config", "unknown_key"]
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # relative paths in a config file resolve against this
PATH_KEYS = ("data.root", "vqvae.ckpt", "eval.i3d", "autoencoder.out_dir", "autoencoder.export",
             "train.init_from")  # file-system paths
PATH_WORDS = {"eval.i3d": ("builtin", "none")}  # values of a path key that name something else than a file
RUN_NAME_KEYS = ("train.init_from",)  # path keys whose plain-identifier values name a run, not a file
SMOKE_SUFFIX = "-smoke"  # --smoke renames data.name and data.root: smoke outputs and data live apart from real ones


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key and the source."""


def _section(cls: type) -> Any:
    return dataclasses.field(default_factory=cls, metadata={"description": cls.__doc__.split("\n")[0], "bounds": {}})


@dataclass(config=STRICT)
class Config(Section):
    """The whole run configuration; one YAML file fills it."""

    data: DataConfig = _section(DataConfig)
    convert: ConvertConfig = _section(ConvertConfig)
    demo: DemoConfig = _section(DemoConfig)
    vqvae: VQVAEConfig = _section(VQVAEConfig)
    autoencoder: AutoencoderConfig = _section(AutoencoderConfig)
    interpolant: InterpolantConfig = _section(InterpolantConfig)
    model: ModelConfig = _section(ModelConfig)
    encode: EncodeConfig = _section(EncodeConfig)
    loader: LoaderConfig = _section(LoaderConfig)
    train: TrainConfig = _section(TrainConfig)
    sample: SamplingConfig = _section(SamplingConfig)
    forecast: ForecastConfig = _section(ForecastConfig)
    eval: EvalConfig = _section(EvalConfig)
    seed: int = key(0, "global seed; every stage derives its own streams from it", ge=0)
    smoke: dict[str, Any] = key({}, "dotted overrides (section.key: value) applied by --smoke")

    def _check(self) -> None:
        """Cross-section checks: the network's state is the VQVAE's latent; every split a stage reads is produced."""
        factor = 8 if self.vqvae.arch == "river" else 2 ** (len(self.vqvae.ch_mult) - 1)
        channels = 4 if self.vqvae.arch == "river" else self.vqvae.embed_dim
        side = self.data.image_size // factor
        require(self.data.image_size % factor == 0, "data.image_size", f"must be a multiple of the VQVAE's factor {factor}")
        require(self.model.state_size == channels, "model.state_size", f"must equal the VQVAE latent channels ({channels})")
        require(list(self.model.state_res) == [side, side], "model.state_res",
                f"must be [{side}, {side}]: the latent of {self.data.image_size} px frames under the {self.vqvae.arch} VQVAE")
        produced, rule = self.produced_splits()
        for name, split in self.splits_read().items():
            require(split in produced, name, f"reads split '{split}', which {rule} does not produce "
                    f"(it produces: {', '.join(sorted(produced)) or 'nothing'})")

    def produced_splits(self) -> tuple[set[str], str]:
        """(splits the data and encode settings produce, the settings that decide it) — for load-time checks."""
        listed = set(self.data.splits)
        if self.data.source == "demo":
            return listed & {s for s, n in self.demo.videos.items() if n > 0}, "data.splits with demo.videos"
        c = self.convert
        if c.source == "kth" and c.kth_split == "person":
            persons = {"train": c.kth_train_persons, "val": c.kth_val_persons, "test": c.kth_test_persons}
            return listed & {s for s, ids in persons.items() if ids}, "data.splits with convert.kth_*_persons"
        if c.source == "clevrer":
            return listed & set(c.clevrer_ranges), "data.splits with convert.clevrer_ranges"
        return listed, "data.splits"

    def splits_read(self) -> dict[str, str]:
        """{config key: split} for every split a stage reads with these settings."""
        reads = {"train.split": self.train.split, "forecast.split": self.forecast.split}
        if self.train.sample_every:
            reads["train.sample_split"] = self.train.sample_split
        if self.train.val_every:
            reads["train.val_split"] = self.train.val_split
        if self.data.source == "demo":
            reads["autoencoder.eval_split"] = self.autoencoder.eval_split
        return reads

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable): the record written beside every output."""
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: list[str] | None = None, smoke: bool = False) -> Config:
    """Read ``path``, apply its smoke overrides (if ``smoke``), then ``--set`` overrides (``a.b=value``); raises
    ConfigError naming the key and its source."""
    path = Path(path)
    if not (raw := read_yaml(path)):  # defaults alone are no run's settings: encode would fail on vqvae.ckpt ''
        raise ConfigError(f"{path} is empty: a config file holds the sections of a run's settings (configs/demo.yaml)")
    cfg = _build(Config, raw, prefix="", source=str(path))
    origins: dict[str, str] = {}  # dotted key -> what set it last (a value's error names it, not the file)
    smoked = cfg
    for dotted, value in dict(cfg.smoke).items():  # checked (keys, types) also when not applied: no typo waits there
        smoked = _set_dotted(smoked, dotted, value, source=f"{path} (smoke)")
        origins[dotted] = f"{path} (smoke: {dotted})"
    if smoke:  # first, so that explicit --set overrides win over the smoke settings
        cfg = smoked
        cfg.data.name += SMOKE_SUFFIX
        cfg.data.root += SMOKE_SUFFIX
    else:
        origins.clear()
    cfg = _resolve_paths(cfg, PROJECT_ROOT)  # the file's relative paths: against the project, not the caller's cwd
    for item in overrides or []:
        cfg = apply_override(cfg, item, source="--set")
        dotted = item.partition("=")[0].strip()
        origins.pop(dotted, None)
        origins[dotted] = f"--set {item!r}"
    _validate_tree(cfg, source=str(path), origins=origins)
    return cfg


def config_from_dict(data: Any, source: str = "<dict>") -> Config:
    """A Config from a mapping of sections, validated exactly as a config file is (ConfigError naming ``source``)."""
    cfg = _build(Config, data, prefix="", source=source)
    _validate_tree(cfg, source=source)
    return cfg


def recorded_config(data: Any, source: str) -> Config:
    """The Config an output recorded (a checkpoint's, a forecasts store's, a run.json's ``to_dict()``), validated as
    a config file is, except that a kind of interpolant defined in code is not imported to check it: a record never
    decides which code runs. Every config rebuilt from a record comes through here."""
    token = RECORDED.set(True)
    try:
        return config_from_dict(data, source)
    finally:
        RECORDED.reset(token)


def apply_override(cfg: Config, item: str, source: str = "--set") -> Config:
    """Apply one ``section.key=value`` override, the value parsed as YAML; PATH_KEYS take the text as a path
    relative to the current directory (``off`` stays the path 'off')."""
    if "=" not in item:
        raise ConfigError(f"{source} {item!r}: expected section.key=value")
    dotted, text = (part.strip() for part in item.split("=", 1))
    if dotted in PATH_KEYS:
        return _set_dotted(cfg, dotted, _path_value(dotted, text, Path.cwd()), source=source)
    try:
        value = _compact_mapping(_load_yaml(text), text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} {item!r}: value is not valid YAML: {_one_line(exc)}") from None
    return _set_dotted(cfg, dotted, value, source=source)


def _set_dotted(cfg: Config, dotted: str, value: Any, source: str) -> Config:
    """``cfg`` with the key ``section.key`` (or a top-level key) set to ``value``, retyped and rechecked."""
    tree = node = cfg.to_dict()
    *sections, name = dotted.split(".")
    for depth, part in enumerate(sections):
        if not isinstance(node.get(part), dict):
            known = [k for k, v in node.items() if isinstance(v, dict)]
            raise ConfigError(f"{source}: {unknown_key('.'.join(sections[: depth + 1]), known, f' in {dotted!r}')}")
        node = node[part]
    if name not in node:
        raise ConfigError(f"{source}: {unknown_key(dotted, list(node))}")
    node[name] = value
    return _build(Config, tree, prefix="", source=source)


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Instantiate ``cls`` from a mapping (sections from nested mappings); pydantic checks every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    kwargs = {str(k): _build(hints[k], v, f"{prefix}{k}.", source) if dataclasses.is_dataclass(hints.get(k)) else v
              for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc, prefix, [f.name for f in dataclasses.fields(cls)])}") from None


_hints = functools.cache(typing.get_type_hints)
_MUST_BE = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool", "list_type": "a list",
            "dict_type": "a mapping", "finite_number": "a finite number"}


def _explain(exc: ValidationError, prefix: str, known: list[str]) -> str:
    """The first of pydantic's errors as one line naming the full key; unknown keys first, with a suggestion."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "unexpected_keyword_argument")
    if unknown:
        return unknown_key(prefix + unknown[0], known, f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
    error = errors[0]
    name = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    must = f"one of {error['ctx']['expected']}" if error["type"] == "literal_error" else _MUST_BE.get(error["type"])
    if must is None:
        return f"'{name}': {error['msg']}"
    return f"'{name}' must be {must}, got {type(error['input']).__name__} {error['input']!r}"


def unknown_key(dotted: str, known: list[str], note: str = "") -> str:
    """'unknown key ...' with the closest valid key, or the valid keys when none is close."""
    close = difflib.get_close_matches(dotted.rsplit(".", 1)[-1], known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(sorted(known))}"
    return f"unknown key '{dotted}'{note}" + (f"; {hint}" if known else "")


def _validate_tree(cfg: Config, source: str, origins: dict[str, str] | None = None) -> None:
    """Every section's ``validate()``, then the cross-section checks, as ConfigErrors naming the full key and its
    source: the last of ``origins`` (dotted key -> source) that set the key or a section of it, else ``source``."""
    sections = [(f"{f.name}.", getattr(cfg, f.name)) for f in dataclasses.fields(cfg)]
    for prefix, node in [*(s for s in sections if isinstance(s[1], Section)), ("", cfg)]:
        try:
            node.validate()
        except FieldError as exc:
            name = prefix + exc.key
            setters = [origin for dotted, origin in (origins or {}).items() if f"{name}.".startswith(f"{dotted}.")]
            raise ConfigError(f"{(setters or [source])[-1]}: '{name}' {exc.problem}") from None


def absolute_paths(item: str) -> str:
    """A ``key=value`` override with a path value (PATH_KEYS) made absolute against the current directory."""
    dotted, sep, text = item.partition("=")
    if sep and dotted.strip() in PATH_KEYS:
        return f"{dotted.strip()}={_path_value(dotted.strip(), text.strip(), Path.cwd())}"
    return item


def _path_value(dotted: str, text: str, base: Path) -> str:
    """Path key ``dotted``'s value made absolute against ``base``; its PATH_WORDS, "" and URLs stay as they are."""
    if text in PATH_WORDS.get(dotted, ()) or not text or "://" in text or Path(text).is_absolute() \
            or (dotted in RUN_NAME_KEYS and IDENTIFIER.fullmatch(text)):
        return text
    return str(base / text)


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Every PATH_KEYS value made absolute against ``base``."""
    for dotted in PATH_KEYS:
        section, name = dotted.split(".")
        node = getattr(cfg, section)
        if isinstance(getattr(node, name), str):
            setattr(node, name, _path_value(dotted, getattr(node, name), base))
    return cfg


def _compact_mapping(value: Any, text: str) -> Any:
    """``{train:16,test:4}`` read as ``{train: 16, test: 4}`` (YAML parses it as null-valued keys ``'train:16'``)."""
    if isinstance(value, dict) and value and all(v is None and isinstance(k, str) and ":" in k for k, v in value.items()):
        return _load_yaml(re.sub(r"([{,]\s*[^:{},\s]+):(?=\S)", r"\1: ", text))
    return value


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two changes for configs: a key given twice in one mapping is an error (not a silent
    overwrite), and only true/false are booleans (YAML 1.2: ``in_memory: no`` is the string "no", not False)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            name = self.construct_object(key_node, deep=deep)
            if name in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {name!r} (first at line {seen[name].start_mark.line + 1})", key_node.start_mark)
            seen[name] = key_node
        return super().construct_mapping(node, deep=deep)


_BOOL = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)


def _one_line(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: where, then what."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping of a config file; a clear ConfigError for a missing file, a directory, bad YAML, duplicates."""
    try:
        raw = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file (configs/<dataset>.yaml)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (UTF-8) file: byte {exc.start} is {exc.object[exc.start]:#04x}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def key_listing() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type and bounds, default, doc) of every key, in the order of the sections and their fields."""
    rows = []
    for top in dataclasses.fields(Config):
        default = top.default_factory() if top.default is dataclasses.MISSING else top.default
        section = isinstance(default, Section)
        for f, name in [(f, f"{top.name}.{f.name}") for f in dataclasses.fields(default)] if section else [(top, top.name)]:
            value = getattr(default, f.name) if section else default
            kind = str(f.type).replace("Real", "float")
            bounds = describe_bounds(f.metadata["bounds"])
            rows.append((name, f"{kind} {bounds}" if bounds else kind, value, f.metadata["description"]))
    return rows


def main() -> None:
    """Print every key as ``key: type, default value  # doc``, one a line."""
    for name, kind, default, doc in key_listing():
        print(f"{name}: {kind}, default {default!r}  # {doc}")


if __name__ == "__main__":
    main()
