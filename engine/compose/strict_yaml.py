"""A strict, bounded YAML reader for files Gauntlet does not trust (claim files), and duplicate-key checks for configs.

Every bound is checked before anything expands: the file's size before it is read, its nesting depth
and alias count on the parser's event stream (no tree yet), the size the aliases would expand to on
the composed node graph (still no Python objects), then duplicate keys; only then is the document
constructed, with PyYAML's safe constructor (plain data, no tags that run code). Each failure is one
``ConfigError`` naming the file, the line and the limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import ConfigError

MAX_BYTES = 256 * 1024  # a claim file is a few hundred bytes; 256 KiB leaves room for long notes
MAX_DEPTH = 32  # a claim file nests about 5 deep
MAX_ALIASES = 64
MAX_NODES = 20_000  # values after every alias is expanded (a claim file has well under 200)
MERGE_TAG = "tag:yaml.org,2002:merge"


def _line(node_or_event: Any) -> int:
    return int(node_or_event.start_mark.line) + 1


def _place(node: Node, other: Node) -> str:
    """``line N``, with the column when ``other`` is on the same line (a flow mapping)."""
    if _line(node) == _line(other):
        return f"line {_line(node)}, column {node.start_mark.column + 1}"
    return f"line {_line(node)}"


def _yaml_problem(where: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if "another document" in str(problem):
        return ConfigError(f"{where}: holds more than one YAML document (---{at}); it must hold exactly one")
    return ConfigError(f"{where}: not valid YAML ({problem}{at})")


def _refuse(where: str, why: str) -> NoReturn:
    raise ConfigError(f"{where}: {why}")


def decode(where: str, data: bytes) -> str:
    """UTF-8 text of ``data``, or one message for a binary or otherwise non-UTF-8 file."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        _refuse(where, "is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        _refuse(where, "is a binary file, not YAML text (it contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _refuse(where, f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                       "save it as UTF-8")


def _check_events(where: str, text: str, max_depth: int, max_aliases: int, max_nodes: int) -> None:
    """Depth, alias and value counts on the event stream: nothing is composed or constructed yet."""
    depth = aliases = values = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > max_depth:
                _refuse(where, f"nests deeper than {max_depth} levels (line {_line(event)})")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > max_aliases:
                _refuse(where, f"uses more than {max_aliases} YAML aliases (*name; line {_line(event)}); "
                               "write the values out instead")
        if isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            values += 1
            if values > max_nodes:
                _refuse(where, f"holds more than {max_nodes} values (line {_line(event)})")


def _expanded_size(where: str, root: Node, max_nodes: int) -> None:
    """How many values the node graph holds once every alias is expanded (shared nodes counted each time)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            _refuse(where, f"has an alias inside the value it names (line {_line(node)}): a recursive structure")
        open_nodes.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if total > max_nodes:
            _refuse(where, f"its aliases would expand to more than {max_nodes} values (line {_line(node)}); "
                           "write the values out instead")
        sizes[key] = total
        return total

    size(root)


def duplicate_keys(where: str, root: Node, constructor: yaml.constructor.SafeConstructor) -> list[str]:
    """One message per key given twice in a mapping (as YAML would read it: ``1`` and ``0x1`` are one key)."""
    problems: list[str] = []
    seen_nodes: set[int] = set()
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, MappingNode):
            first: dict[Any, Node] = {}
            for key_node, value_node in node.value:
                stack.append(value_node)
                if key_node.tag == MERGE_TAG:
                    continue
                if not isinstance(key_node, ScalarNode):
                    problems.append(f"{where}: line {_line(key_node)}: a key must be a plain value, "
                                    "not a list or a mapping")
                    continue
                key = constructor.construct_object(key_node)
                try:
                    earlier = first.get(key)
                except TypeError:  # an unhashable key (cannot happen for a scalar, kept for safety)
                    continue
                if earlier is not None:
                    problems.append(f"{where}: key {key_node.value!r} is given twice, at {_place(earlier, key_node)} "
                                    f"and {_place(key_node, earlier)}; YAML would keep only the last one. Remove or "
                                    "merge one of them")
                else:
                    first[key] = key_node
    return problems


def loads(where: str, text: str, *, max_depth: int = MAX_DEPTH, max_aliases: int = MAX_ALIASES,
          max_nodes: int = MAX_NODES) -> Any:
    """Parse one YAML document strictly (bounds, then duplicate keys, then safe construction)."""
    try:
        _check_events(where, text, max_depth, max_aliases, max_nodes)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                _refuse(where, "is empty: it holds no YAML document (only blank lines or comments)")
            _expanded_size(where, root, max_nodes)
            problems = duplicate_keys(where, root, loader)
            if problems:
                raise ConfigError("; ".join(problems))
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_problem(where, exc) from None
    except RecursionError:  # unreachable within MAX_DEPTH; one message rather than a traceback regardless
        raise ConfigError(f"{where}: nests too deeply to read") from None


def load_file(path: str | Path, *, max_bytes: int = MAX_BYTES, what: str = "file") -> Any:
    """Read ``path`` with every bound of :func:`loads`, its size checked before it is read."""
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise ConfigError(f"{what} {where!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"{what} {where!r} is not a regular file")
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise ConfigError(f"{where}: {size:,} bytes is more than a {what} may hold ({max_bytes:,} bytes)")
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {where!r} cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{where}: more than {max_bytes:,} bytes is more than a {what} may hold")
    if not data.strip():
        raise ConfigError(f"{where}: the {what} is empty")
    return loads(where, decode(where, data))


def config_yaml_problems(path: Path) -> list[str]:
    """Duplicate keys and YAML syntax errors of a Hydra config file, as messages (no bounds: configs are code)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot be read as UTF-8 text ({exc})"]
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        loader = loader_cls(text)
        try:
            root = loader.get_single_node()
            return [] if root is None else duplicate_keys(str(path), root, loader)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return [str(_yaml_problem(str(path), exc))]
