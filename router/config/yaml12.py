"""YAML with the 1.2 core schema, on PyYAML's (C) parser.

PyYAML resolves plain scalars by YAML 1.1 rules, where ``off``/``no``/``yes`` are booleans,
``2026-09-02`` is a date and ``012`` is octal. Config files here follow YAML 1.2: only
``true``/``false`` are booleans, dates stay strings, and a duplicated key is an error rather
than a silent overwrite.

Aliases are capped: a document whose aliases would add more than ``MAX_EXPANDED_NODES``
values by expansion (an "alias bomb": 825 bytes can name 10^8 leaves), or an alias
inside its own anchor (a cycle), is refused before anything walks the tree.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_EXPANDED_NODES = 100_000  # values aliases may add to a document by expansion


class AliasError(yaml.YAMLError):
    """Aliases that expand without bound (a bomb) or refer to themselves (a cycle)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = None


class Loader(_Base):
    """SafeLoader with the YAML 1.2 core schema's implicit types."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        if text.startswith(("0o", "0x")):
            return int(text, 0)
        return int(text, 10)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.yaml_implicit_resolvers = {}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)


def expanded_size(root: yaml.Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """Values in a composed document as if every alias were copied.

    Aliased nodes are shared objects in the node graph, so each is sized once (memoized by
    identity): linear in the file, whatever the expansion. Raises ``AliasError`` on a cycle,
    or as soon as aliases push the expanded size past ``limit``.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = node.value
            total = 1 + sum(sizes[id(c)] for c in children)
            sizes[key] = total
            # A subtree without aliases holds at most every node sized so far: anything
            # beyond that was added by aliases.
            if total > len(sizes) + limit:
                raise AliasError(f"aliases expand this document by more than {limit} values "
                                 "(an alias bomb?); write the values out or use fewer aliases")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise AliasError("an alias refers to a value that contains it (a cycle)")
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        open_nodes.add(key)
        stack.append((node, True))
        children = [n for pair in node.value for n in pair] \
            if isinstance(node, yaml.MappingNode) else node.value
        for child in children:
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def loads(text: str | bytes) -> Any:
    """Parse one YAML document; raises ``yaml.YAMLError`` with a line and column.

    The document is composed first and sized (``expanded_size``) before any value is built,
    so an alias bomb or cycle costs time linear in the file and raises ``AliasError``.
    """
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
