"""Reading plan files: a restricted YAML loader plus the checks on the file itself.

Plan files are small, flat documents, so the loader refuses what only hostile or broken files need:

* anchors and aliases (``&a`` / ``*a``), which let a few lines expand into gigabytes ("billion laughs");
* nesting deeper than :data:`~surgery.plan.limits.MAX_YAML_DEPTH`;
* explicit tags (``!!set``, ``!!binary``, ``!!python/...``): plans are plain strings, numbers, lists, mappings;
* duplicate mapping keys (YAML would silently keep the last one);
* files over :data:`~surgery.plan.limits.MAX_PLAN_BYTES`, directories, and files that are not UTF-8 text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node

from surgery.errors import SurgeryError
from surgery.plan.limits import MAX_PLAN_BYTES, MAX_YAML_DEPTH

ALIAS_MESSAGE = "plan YAML may not use anchors or aliases (&/*)"


def _line(node_or_event: Any) -> str:
    mark = getattr(node_or_event, "start_mark", None)
    return f" (line {mark.line + 1})" if mark is not None else ""


class PlanLoader(yaml.SafeLoader):
    """A :class:`yaml.SafeLoader` that refuses anchors, aliases, explicit tags, deep nesting and duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        """Refuse aliases, anchors, explicit tags and over-deep nesting before the node (and its children) is built."""
        event = self.peek_event()
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise SurgeryError(ALIAS_MESSAGE + _line(event))
        if getattr(event, "tag", None) is not None:  # !!set, !!binary, !!python/...: plans need none of them
            raise SurgeryError(f"plan YAML may not use explicit tags (got {event.tag[:40]!r}){_line(event)}")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise SurgeryError(f"plan YAML nests deeper than the limit of {MAX_YAML_DEPTH} levels{_line(event)}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build a mapping, refusing a key that appears twice."""
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' (only usable without aliases here); flatten_mapping handles it
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: let the base constructor report it
                    break
                if duplicate:
                    raise SurgeryError(f"duplicate key {key!r} in plan YAML{_line(key_node)}")
        return super().construct_mapping(node, deep=deep)


def parse_yaml_text(text: str, source: str) -> Any:
    """Parse plan YAML with :class:`PlanLoader`; any failure is one :class:`SurgeryError` line naming ``source``."""
    if len(text) > MAX_PLAN_BYTES:
        raise SurgeryError(f"plan YAML {source} is longer than the limit of {MAX_PLAN_BYTES} characters")
    try:
        return yaml.load(text, Loader=PlanLoader)  # noqa: S506 - PlanLoader is a SafeLoader
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise SurgeryError(f"malformed plan YAML {source}: {first}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer with more digits than Python will convert
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SurgeryError(f"malformed plan YAML {source}: {first[:200]}") from None


def read_plan_file(plan: str) -> str:
    """Read a plan file as UTF-8 text, refusing directories, oversized files and binary content."""
    path = Path(plan)
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a symlink loop, ...
        raise SurgeryError(f"cannot read plan file {plan[:200]!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if is_dir:
        raise SurgeryError(f"plan path {plan} is a directory, not a plan file")
    if not is_file:
        raise SurgeryError(f"plan file not found: {plan}")
    try:
        size = path.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise SurgeryError(f"plan file {plan} is {size} bytes; the limit is {MAX_PLAN_BYTES} bytes")
        with path.open("rb") as handle:
            data = handle.read(MAX_PLAN_BYTES + 1)  # bounded even if the file grows meanwhile
    except OSError as exc:
        raise SurgeryError(f"cannot read plan file {plan}: {exc.strerror or exc}") from None
    if len(data) > MAX_PLAN_BYTES:
        raise SurgeryError(f"plan file {plan} is larger than the limit of {MAX_PLAN_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SurgeryError(
            f"plan file {plan} is not UTF-8 text (undecodable byte at offset {exc.start}); is it a binary file?"
        ) from None
