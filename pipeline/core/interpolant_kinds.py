"""Kinds of interpolant (docs/interpolants.md): the config's own (``linear``, ``ours``, ``custom``: keys of the
``interpolant`` section), names in :data:`REGISTRY`, and ``module:Name``, a class or function in a file of the
researcher's own. Loading, checking, and the fingerprint of a kind defined in code (its source file's sha256)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Callable

from pipeline.core.interpolants import Interpolant, linear, ours
from pipeline.run.records import sha256_file

if TYPE_CHECKING:
    from pipeline.run.config import InterpolantConfig

CONFIG_KINDS = ("linear", "ours", "custom")  # defined by the config's keys; any other kind is defined in code
Factory = Callable[..., Interpolant]  # factory(t_min=..., t_max=...) -> Interpolant: a subclass, or a function
REGISTRY: dict[str, Factory] = {"linear": linear, "ours": ours}
KIND = re.compile(r"([A-Za-z_][\w.]*):([A-Za-z_]\w*)")  # module:Name


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: ``@register("trig")`` makes a factory selectable as ``interpolant.kind: trig`` once its module is
    imported (in a script or notebook; a config selects a file of its own by ``module:Name``)."""
    if name in CONFIG_KINDS or KIND.fullmatch(name) or not name.isidentifier():
        raise ValueError(f"cannot register {name!r}: choose an identifier other than {', '.join(CONFIG_KINDS)}")

    def add(factory: Factory) -> Factory:
        REGISTRY[name] = factory
        return factory

    return add


def load_factory(kind: str) -> Factory:
    """The factory of an interpolant ``kind``: a :data:`REGISTRY` name, or ``module:Name`` (a class or function in a
    module importable from the current directory or PYTHONPATH). ValueError saying why not."""
    if kind in REGISTRY:
        return REGISTRY[kind]
    match = KIND.fullmatch(kind)
    if match is None:
        raise ValueError(f"unknown interpolant {kind!r}: choose {', '.join([*REGISTRY, 'custom'])} or module:Name "
                         "(a class or function of yours, docs/interpolants.md)")
    module_name, attr = match.groups()
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # 'importable from the current directory' also under a script's sys.path
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported, with its cause
        raise ValueError(f"cannot import module {module_name!r} of {kind!r} ({type(exc).__name__}: {exc}); it must "
                         "be importable from the current directory or PYTHONPATH") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "is not defined" if factory is None else f"is a {type(factory).__name__}, not a class or function"
        raise ValueError(f"{attr!r} {what} in module {module_name} ({module.__file__})")
    return factory


def build(kind: str, t_min: float = 1e-4, t_max: float = 1 - 1e-4) -> Interpolant:
    """The interpolant ``kind`` names, made by ``factory(t_min=, t_max=)`` and checked (:meth:`Interpolant.check`)."""
    factory = load_factory(kind)
    try:
        made = factory(t_min=t_min, t_max=t_max)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{kind}(t_min={t_min}, t_max={t_max}) failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(made, Interpolant):
        raise ValueError(f"{kind} gave a {type(made).__name__}, not an interpolant (a pipeline.core.interpolants."
                         "Interpolant: subclass it, or return one)")
    made.check()
    return made


def check_config(cfg: "InterpolantConfig") -> None:
    """The config's rules for a kind defined in code: base, beta and eps unset, and the kind loads and checks; a
    :class:`pipeline.run.config_fields.FieldError` names the key."""
    from pipeline.run.config_fields import FieldError

    for key in ("base", "beta", "eps"):
        if getattr(cfg, key) is not None:
            raise FieldError(key, f"is fixed by the definition of kind={cfg.kind}; leave it unset")
    try:
        build(cfg.kind, cfg.t_min, cfg.t_max)
    except ValueError as exc:
        raise FieldError("kind", str(exc)) from None


def definition(kind: str) -> dict[str, Any]:
    """What a kind defined in code is, for fingerprints: the sha256 of the file that defines its factory, so editing
    that file makes runs and forecasts stale (helpers imported from other files are not followed)."""
    return {"source_sha256": sha256_file(inspect.getsourcefile(load_factory(kind)) or "")}
