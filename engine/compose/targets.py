"""What a config's ``_target_`` may name: the object its whole dotted path resolves to, checked before it is called.

Config files are trusted input like code (docs/reliability.md), but the ordinary path stays safe: a
``_target_`` is resolved to the object it names (importing only modules inside the allowed packages,
calling nothing with config data) and that object must be

1. a class or a plain Python function (no builtins, bound methods, modules or instances),
2. *defined* in an allowed package — Gauntlet (``engine``, ``kernels``), ``torchvision``, ``timm``,
   ``robustbench`` or a package in ``target_packages`` — so a re-export such as
   ``engine.models.convert.torch.load`` (really ``torch.serialization.load``) is refused,
3. not a known loader: anything that unpickles, reads or writes files, downloads, or runs commands
   (:data:`DENIED`) is refused whatever path reaches it, even inside an allowed package,
4. of the kind its place needs (a model, a dataset, a perturbation, a runner): a class by its bases;
   a function by its return annotation (Gauntlet's own and your packages') or, for torchvision and
   timm, by being a registered model builder;
5. called without arguments that load files (``pretrained=True``, ``checkpoint_path=…``, ``weights=…``, …).

``allow_any_target: true`` lifts all of this: the config may then call any importable callable, the
loaders included — an explicit statement that the config is trusted like a script. The opt-ins count
only on the command line: a config file that sets them, or that hands Hydra code to call before any
of these checks can run (``hydra.callbacks``, logging factories), is refused (``config_dir_problems``,
``opt_ins_from_files``); a claim file cannot set them at all (engine/claims/schema.py).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

ALLOWED_MODULES = ("engine", "kernels", "torchvision", "timm", "robustbench")
OWN_MODULES = ("engine", "kernels")

# Known ways to run code, unpickle, touch files or the network, refused whatever dotted path reaches
# them (prefixes of a module or of ``module.qualname``); the positive rule above refuses most of them
# anyway, this list names the loaders that live inside allowed packages and gives the reason.
_UNPICKLE = "loads a pickle (a file that can run code)"
_FILES = "reads or writes files"
_NET = "downloads"
_CODE = "runs code or commands"
DENIED: dict[str, str] = {
    **dict.fromkeys(("pickle", "_pickle", "copyreg", "shelve", "marshal", "dill", "cloudpickle", "joblib",
                     "torch.load", "torch.serialization", "torch.jit.load", "torch.jit._serialization",
                     "torch.package", "torch.utils.model_zoo", "torch.export", "numpy.load",
                     "numpy.lib.npyio", "numpy.lib._npyio_impl", "numpy.lib.format", "numpy.lib._format_impl",
                     "pandas.read_pickle", "timm.models._helpers", "timm.models.load_checkpoint",
                     "timm.models.load_state_dict", "timm.models._builder", "timm.models.load_pretrained",
                     "robustbench.utils", "robustbench.loaders", "engine.models.convert"), _UNPICKLE),
    **dict.fromkeys(("builtins", "io", "_io", "os", "posix", "nt", "pathlib", "shutil", "tempfile", "glob",
                     "fileinput", "zipfile", "tarfile", "gzip", "bz2", "lzma", "sqlite3", "numpy.save",
                     "numpy.fromfile", "numpy.memmap", "numpy.loadtxt", "numpy.genfromtxt", "torch.save",
                     "safetensors", "PIL", "torchvision.io", "torchvision.utils",
                     "timm.data", "timm.utils", "robustbench.data", "robustbench.eval", "robustbench.leaderboard",
                     "engine.models.checkpoint", "engine.models.loader", "engine.models.training",
                     "engine.data.restricted_pickle", "engine.store", "engine.sinks"), _FILES),
    "torchvision.datasets": "unpickles (CIFAR), downloads or extracts files; Gauntlet's loaders in engine.data "
                            "read the same datasets as data only",
    **dict.fromkeys(("socket", "ssl", "urllib", "http", "requests", "ftplib", "smtplib", "webbrowser",
                     "huggingface_hub", "torch.hub", "torchvision.models._api", "torchvision.models._utils",
                     "torchvision._internally_replaced_utils", "timm.models._hub", "timm.models._pretrained",
                     "timm.models._registry", "robustbench.zenodo_download"), _NET),
    **dict.fromkeys(("subprocess", "pty", "runpy", "code", "codeop", "importlib", "ctypes", "sys", "signal",
                     "multiprocessing", "concurrent", "threading", "asyncio", "yaml", "hydra", "omegaconf",
                     "engine.sweep", "engine.cli", "engine.claims.cli", "engine.claims.run"), _CODE),
}

# Arguments that make an otherwise harmless builder load a file or download (timm, torchvision).
LOADING_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "weights",
                "weights_backbone", "pretrained_backbone", "download", "model_dir", "cache_dir", "file", "url",
                "hf_hub_id", "hf_hub_filename")

# Third-party functions that build a model and are not in a model registry.
THIRD_PARTY_BUILDERS = ("timm.models._factory.create_model",)

POLICY_KEYS = ("target_packages", "allow_any_target")  # the opt-ins: the user's, on the command line only
DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
OPT_IN = ("allow_any_target=true lets a config call any importable callable, loaders and shell commands "
          "included: use it only for a config you would run as a script")


@dataclass(frozen=True)
class TargetPolicy:
    """The user's choice: packages trusted beyond the defaults, or every importable callable."""

    packages: tuple[str, ...] = ()
    allow_any: bool = False

    @classmethod
    def of(cls, cfg: Mapping[str, Any]) -> TargetPolicy:
        """The policy of a composed sweep config (``target_packages``, ``allow_any_target``)."""
        packages = tuple(str(p) for p in cfg.get("target_packages") or ())
        for p in packages:
            if not DOTTED_NAME.fullmatch(p):
                raise ConfigError(f"target_packages entry {p!r} is not a package name (e.g. mypkg)")
        return cls(packages, bool(cfg.get("allow_any_target", False)))

    @property
    def allowed(self) -> tuple[str, ...]:
        return (*ALLOWED_MODULES, *self.packages)


@dataclass(frozen=True)
class Kind:
    """What a ``_target_`` must build at its place: a name for messages and a test on a class."""

    what: str
    accepts: Callable[[type], bool]
    models: bool = False  # whether a registered third-party model builder is of this kind


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def denied_reason(dotted: str) -> str | None:
    """Why ``dotted`` (a path or ``module.qualname``) is a known loader, or None."""
    for prefix, why in DENIED.items():
        if dotted == prefix or dotted.startswith(prefix + "."):
            return why
    return None


def iter_targets(node: Any, key: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every (config key, node holding a ``_target_``) inside ``node``, nested ones included."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield key, node
        for k, v in node.items():
            if k != "_target_":
                yield from iter_targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from iter_targets(v, f"{key}[{i}]")


def resolve(target: str) -> Any:
    """The object ``target`` names: import the module part, then walk attributes (nothing is called)."""
    parts = target.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i in range(1, len(parts)):
        try:
            obj = getattr(obj, parts[i])
        except AttributeError:
            if not inspect.ismodule(obj):
                raise ImportError(f"{'.'.join(parts[:i])} has no attribute {parts[i]!r}") from None
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def _defined_in(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None) or '?'}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _return_class(fn: Callable[..., Any]) -> type | None:
    """The class a function's return annotation names, or None (no annotation, or not a class)."""
    try:
        ann = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that cannot be evaluated counts as none
        return None
    return ann if isinstance(ann, type) else None


def _registered_model_builder(obj: Any) -> bool:
    """A torchvision or timm model builder from the library's own registry (or ``timm.create_model``)."""
    if _defined_in(obj) in THIRD_PARTY_BUILDERS:
        return True
    name, module = getattr(obj, "__name__", ""), str(getattr(obj, "__module__", ""))
    try:
        if module.startswith("torchvision.models"):
            tv = sys.modules.get("torchvision.models")
            return tv is not None and tv.get_model_builder(name) is obj
        if module.startswith("timm.models"):
            tm = sys.modules.get("timm.models")
            return tm is not None and tm.is_model(name) and tm.model_entrypoint(name) is obj
    except Exception:  # not registered under that name
        return False
    return False


def _refuse(key: str, target: str, why: str) -> ConfigError:
    return ConfigError(f"{key}._target_={target!r} {why}. ({OPT_IN})")


def _unwrap_cache(obj: Any) -> Any:
    """``functools.lru_cache``/``cache`` around a function: the function it caches (a wrapper that only memoises)."""
    while isinstance(obj, functools._lru_cache_wrapper):
        obj = obj.__wrapped__
    return obj


def _check_object(obj: Any, target: str, key: str, policy: TargetPolicy, kind: Kind) -> None:
    """Rules 1-4 on the resolved object."""
    obj = _unwrap_cache(obj)
    defined = _defined_in(obj)
    module = str(getattr(obj, "__module__", "") or "")
    why = denied_reason(defined) or denied_reason(target)
    if why:
        raise _refuse(key, target, f"is refused: it is {defined}, which {why}")
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        raise _refuse(key, target, f"names a {type(obj).__name__}, not a class or a function; configs may call "
                                   f"only classes and functions that build {kind.what}")
    if not _under(module, policy.allowed):
        raise _refuse(key, target, f"is {defined}, defined outside the modules configs may call "
                                   f"({', '.join(policy.allowed)}); if you trust that package, list it: "
                                   f"target_packages=[{module.split('.')[0]}]")
    if inspect.isclass(obj):
        if not kind.accepts(obj):
            raise ConfigError(f"{key}._target_={target!r} is a {obj.__name__}, not {kind.what}")
        return
    if _under(module, (*OWN_MODULES, *policy.packages)):
        returns = _return_class(obj)
        if returns is not None and not kind.accepts(returns):
            raise ConfigError(f"{key}._target_={target!r} returns a {returns.__name__}, not {kind.what}")
        if returns is None and _under(module, OWN_MODULES):
            raise _refuse(key, target, f"is a function with no return annotation naming {kind.what}")
        return  # an unannotated function of your package: what it builds is checked before use
    if not (kind.models and _registered_model_builder(obj)):
        raise _refuse(key, target, f"is {defined}, which is not a model builder of that library (its registered "
                                   f"architectures, timm.create_model) and not a class of {kind.what}")


def _bound_args(obj: Any, node: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Config arguments by parameter name (``_args_`` bound to the signature) and the explicit parameter names."""
    kwargs = {str(k): v for k, v in node.items() if not (str(k).startswith("_") and str(k).endswith("_"))}
    args = list(node.get("_args_") or ())
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return kwargs, set()
    explicit = {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if args:
        try:
            bound = sig.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"arguments do not fit {_defined_in(obj)}: {exc}") from None
        named = {n: v for n, v in bound.arguments.items() if sig.parameters[n].kind != inspect.Parameter.VAR_KEYWORD}
        extra: dict[str, Any] = next((v for n, v in bound.arguments.items()
                                      if sig.parameters[n].kind == inspect.Parameter.VAR_KEYWORD), {})
        return {**named, **extra}, explicit
    return kwargs, explicit


def _check_arguments(obj: Any, target: str, key: str, node: Mapping[str, Any], policy: TargetPolicy) -> None:
    """Rule 5: no argument that loads a file or downloads, unless our own (or your) code declares it."""
    try:
        given, explicit = _bound_args(obj, node)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    own = _under(str(getattr(obj, "__module__", "")), (*OWN_MODULES, *policy.packages))
    for name in LOADING_ARGS:
        value = given.get(name)
        if value in (None, False, "", "none", "None", 0) or (own and name in explicit):
            continue
        raise _refuse(key, target, f"is given {name}={value!r}, which would load a file or download weights; "
                                   f"Gauntlet reads weights only from model.<name>.checkpoint (safetensors or "
                                   f"weights-only torch files). Remove {key}.{name}")


def check_target(node: Mapping[str, Any], key: str, policy: TargetPolicy, kind: Kind) -> None:
    """Refuse ``node``'s ``_target_`` unless the policy allows the object it names at a place of ``kind``."""
    target = str(node.get("_target_"))
    if policy.allow_any:
        return
    if not DOTTED_NAME.fullmatch(target):
        raise ConfigError(f"{key}._target_={target!r} is not a dotted Python name (e.g. engine.models.cnn.SmallCNN)")
    root = target.split(".")[0]
    if root not in policy.allowed:
        why = denied_reason(target)
        stays = (f"; it {why}, so it stays refused even with target_packages=[{root}]" if why else
                 f". If you trust it, add its package: target_packages=[{root}]")
        raise ConfigError(f"{key}._target_={target!r} is outside the modules configs may call "
                          f"({', '.join(policy.allowed)}){stays}. ({OPT_IN})")
    why = denied_reason(target)
    if why:  # refused on the string: the module is never imported
        raise _refuse(key, target, f"is refused: it {why}")
    try:
        obj = resolve(target)
    except Exception as exc:
        raise ConfigError(f"{key}._target_={target!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    _check_object(obj, target, key, policy, kind)
    _check_arguments(_unwrap_cache(obj), target, key, node, policy)


# --- config files: the opt-ins and Hydra's own ``hydra.*`` code hooks -----------------------------------

_HYDRA_CODE_KEYS = ("_target_", "()", "class")  # what Hydra (callbacks) and logging.dictConfig call


def opted_in_on_command_line(argv: Sequence[str]) -> bool:
    """Whether ``allow_any_target=true`` (or ``+allow_any_target=true``) is on the command line."""
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+") == "allow_any_target" and value.strip("'\"").lower() in ("true", "yes", "on", "1"):
            return True
    return False


def _file_package(path: Path, root: Path, header: str | None) -> str:
    """Where Hydra places a config file's content: its ``# @package`` header, else its group path."""
    group = ".".join(path.parent.relative_to(root).parts)
    if header is None:
        return group  # a group file goes under its group; a top-level file is global ("")
    package = header.replace("_group_", group).replace("_name_", path.stem)
    return package.removeprefix("_global_").lstrip(".")


def _hydra_code(node: Any, path: str) -> Iterator[str]:
    """Paths under ``hydra`` that Hydra or logging would call (callbacks, ``_target_``, ``()``, ``class``) or
    that would add config folders nobody checked (``hydra.searchpath``)."""
    if path in ("hydra.callbacks", "hydra.searchpath") or path.startswith("hydra.callbacks."):
        yield path  # callbacks are called; a search path would bring in folders nobody checked
        return
    if isinstance(node, Mapping):
        for k, v in node.items():
            sub = f"{path}.{k}" if path else str(k)
            if str(k) in _HYDRA_CODE_KEYS and (sub == "hydra" or sub.startswith("hydra.")):
                yield sub
            else:
                yield from _hydra_code(v, sub)


def config_file_problems(path: Path, root: Path, doc: Any, header: str | None) -> list[str]:
    """A user's config file may not grant itself the opt-ins, nor hand Hydra code to call before Gauntlet checks it.

    ``target_packages`` / ``allow_any_target`` count only on the command line; ``hydra.callbacks`` and
    ``_target_`` / ``()`` / ``class`` under ``hydra`` (Hydra's callbacks, ``logging.dictConfig``
    factories) are called by Hydra itself, before any ``_target_`` check can run. The file is read both
    where its header puts it and as if at the top level (a defaults list can move it there).
    """
    if not isinstance(doc, Mapping):
        return []
    problems: list[str] = []
    for place in dict.fromkeys((_file_package(path, root, header), "")):
        node: Any = doc
        for part in reversed(place.split(".") if place else []):
            node = {part: node}
        for key in POLICY_KEYS:
            if key in node:
                problems.append(f"{path} sets {key}: the _target_ opt-ins count only when you give them on the "
                                f"command line ({key}=…); remove it from the file")
        for where in dict.fromkeys(_hydra_code(node, "")):
            problems.append(f"{path} sets {where}: Hydra would call it before Gauntlet checks any _target_. Remove "
                            f"it, or pass allow_any_target=true on the command line if you trust this file as code")
    for entry in doc.get("defaults") or ():
        name = next(iter(entry), "") if isinstance(entry, Mapping) else str(entry)
        package = str(name).partition("@")[2]
        if package and ("hydra" in package.split(".") or package in POLICY_KEYS):
            problems.append(f"{path}: defaults entry {name!r} places a config under {package}, which Hydra would "
                            "call before Gauntlet checks any _target_; remove it")
    return sorted(set(problems), key=problems.index)


def config_dir_problems(config_dirs: Sequence[Path]) -> list[str]:
    """:func:`config_file_problems` for every ``*.yaml`` of the user's config folders (at most two levels down)."""
    import yaml

    from engine.compose.config import _declared_package

    problems: list[str] = []
    for root in config_dirs:
        if not root.is_dir():
            continue
        for path in sorted({*root.glob("*.yaml"), *root.glob("*/*.yaml"), *root.glob("hydra/*/*.yaml")}):
            try:
                doc = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # reported by engine.compose.config.yaml_problems
            problems += config_file_problems(path, root, doc, _declared_package(path))
    return problems


def opt_ins_from_files(cfg: Mapping[str, Any], argv: Sequence[str]) -> list[str]:
    """The opt-ins a composed config holds that the command line did not give (a config file set them).

    The static check of the user's folders (:func:`config_dir_problems`) cannot follow every way Hydra
    can place a file's keys; this one looks at the result.
    """
    given = {arg.partition("=")[0].lstrip("+~") for arg in argv if "=" in arg and not arg.startswith("-")}
    problems = []
    for key, default in (("allow_any_target", False), ("target_packages", [])):
        value = cfg.get(key, default)
        if key not in given and value not in (default, None):
            problems.append(f"{key}={value!r} comes from a config file, not from your command line; the _target_ "
                            f"opt-ins count only when you give them there ({key}=…). Remove it from the file")
    return problems
