"""Where keys and array elements sit in a TOML text: tomllib gives values, not positions.

`LineMap.scan(text)` walks a text that tomllib already accepted with just enough of a TOML
lexer (`Lexer`) to find the line of each top-level key, each key of `[defaults]`, each
`[[subscribers]]` and `[[sources]]` block, its keys and the elements of its arrays. Error messages of the
subscribers file use it to name a line.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

__all__ = ["Block", "Lexer", "LineMap"]


@dataclass
class Block:
    line: int
    keys: dict[str, int] = field(default_factory=dict)
    items: dict[str, list[int]] = field(default_factory=dict)  # line of each array element


@dataclass
class LineMap:
    """Lines of keys in a TOML text tomllib accepted: top level, [defaults], [[subscribers]], [[sources]].

    Only standard forms are tracked; a subscriber written as an inline table falls back to the
    line of `subscribers =`, a key in a form not tracked falls back to its block's header.
    """

    top: dict[str, int] = field(default_factory=dict)
    defaults_keys: dict[str, int] = field(default_factory=dict)
    defaults_line: int | None = None
    blocks: list[Block] = field(default_factory=list)
    source_blocks: list[Block] = field(default_factory=list)

    def default(self, key: str) -> int | None:
        return self.defaults_keys.get(key) or self.defaults_line or self.top.get("defaults")

    def sub(self, index: int, key: str | None = None) -> int | None:
        if index < len(self.blocks):
            block = self.blocks[index]
            return block.keys.get(key, block.line) if key else block.line
        return self.top.get("subscribers")

    def item(self, index: int, key: str, position: int) -> int | None:
        """Line of the `position`-th (0-based) element of array `key`, else the key's line."""
        if index < len(self.blocks):
            items = self.blocks[index].items.get(key, [])
            if position < len(items):
                return items[position]
        return self.sub(index, key)

    def source(self, index: int, key: str | None = None) -> int | None:
        """Line of the `index`-th `[[sources]]` block (or of its `key`)."""
        if index < len(self.source_blocks):
            block = self.source_blocks[index]
            return block.keys.get(key, block.line) if key else block.line
        return self.top.get("sources")

    def source_item(self, index: int, key: str, position: int) -> int | None:
        """Line of the `position`-th (0-based) element of array `key` of a `[[sources]]` block."""
        if index < len(self.source_blocks):
            items = self.source_blocks[index].items.get(key, [])
            if position < len(items):
                return items[position]
        return self.source(index, key)

    @classmethod
    def scan(cls, text: str) -> LineMap:
        result = cls()
        lexer = Lexer(text)
        context: dict[str, int] | None = result.top  # where key lines are recorded
        block: Block | None = None
        while not lexer.at_end():
            lexer.skip_blank()
            if lexer.at_end():
                break
            line = lexer.line
            char = lexer.peek()
            if char == "#":
                lexer.skip_comment()
                continue
            if char == "[":
                is_array = lexer.peek(2) == "[["
                lexer.advance(2 if is_array else 1)
                path = lexer.key_path()
                lexer.advance(2 if is_array else 1)
                head = path[0] if path else ""
                result.top.setdefault(head, line)
                context, block = None, None
                if path == ["defaults"] and not is_array:
                    result.defaults_line = line
                    context = result.defaults_keys
                elif path == ["subscribers"] and is_array:
                    block = Block(line)
                    result.blocks.append(block)
                    context = block.keys
                elif path == ["sources"] and is_array:
                    block = Block(line)
                    result.source_blocks.append(block)
                    context = block.keys
                elif head == "defaults" and len(path) > 1:
                    result.defaults_keys.setdefault(path[1], line)
                elif head == "subscribers" and len(path) > 1 and result.blocks:
                    result.blocks[-1].keys.setdefault(path[1], line)
                elif head == "sources" and len(path) > 1 and result.source_blocks:
                    result.source_blocks[-1].keys.setdefault(path[1], line)
                lexer.skip_line_rest()
                continue
            path = lexer.key_path()
            if context is not None and path:
                context.setdefault(path[0], line)
                if context is result.top and path[0] == "defaults" and len(path) > 1:
                    result.defaults_keys.setdefault(path[1], line)
            lexer.expect("=")
            items = lexer.skip_value()
            if block is not None and len(path) == 1:
                block.items.setdefault(path[0], items)
        return result


class Lexer:
    """Just enough of a TOML lexer to find where statements start, for text tomllib accepted."""

    _BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def advance(self, n: int) -> None:
        chunk = self.text[self.pos : self.pos + n]
        self.line += chunk.count("\n")
        self.pos += len(chunk)

    def skip_blank(self) -> None:
        """Skip whitespace and newlines."""
        while not self.at_end() and self.text[self.pos] in " \t\r\n":
            self.advance(1)

    def skip_spaces(self) -> None:
        while not self.at_end() and self.text[self.pos] in " \t":
            self.pos += 1

    def skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def skip_line_rest(self) -> None:
        self.skip_comment()

    def expect(self, char: str) -> None:
        self.skip_spaces()
        if self.peek() == char:
            self.advance(1)

    def key_path(self) -> list[str]:
        """Read a possibly dotted, possibly quoted key; return its parts."""
        parts: list[str] = []
        while True:
            self.skip_spaces()
            char = self.peek()
            if char == '"':
                raw = self._basic_string()
                try:
                    parts.append(tomllib.loads(f"k = {raw}")["k"])
                except (tomllib.TOMLDecodeError, ValueError):
                    parts.append(raw[1:-1])
            elif char == "'":
                end = self.text.find("'", self.pos + 1)
                end = len(self.text) if end < 0 else end
                parts.append(self.text[self.pos + 1 : end])
                self.advance(end + 1 - self.pos)
            else:
                match = self._BARE.match(self.text, self.pos)
                if not match:
                    return parts
                parts.append(match.group())
                self.advance(match.end() - self.pos)
            self.skip_spaces()
            if self.peek() != ".":
                return parts
            self.advance(1)

    def _basic_string(self) -> str:
        start = self.pos
        self.advance(1)
        while not self.at_end():
            char = self.text[self.pos]
            if char == "\\":
                self.advance(2)
                continue
            self.advance(1)
            if char == '"':
                break
        return self.text[start : self.pos]

    def skip_value(self) -> list[int]:
        """Skip one value, across lines for arrays and multi-line strings, and the line's comment.

        Returns the line of each element when the value is an array.
        """
        depth = 0
        items: list[int] = []
        want_item = False
        while not self.at_end():
            char = self.text[self.pos]
            if char == "\n" and depth == 0:
                return items
            if char == "#":
                self.skip_comment()
                continue
            if depth == 1 and want_item and char not in " \t\r\n,]":
                items.append(self.line)
                want_item = False
            if depth == 1 and char == ",":
                want_item = True
            if self.text.startswith('"""', self.pos):
                self._skip_until('"""', escapes=True, start=3)
            elif self.text.startswith("'''", self.pos):
                self._skip_until("'''", escapes=False, start=3)
            elif char == '"':
                self._skip_until('"', escapes=True, start=1)
            elif char == "'":
                self._skip_until("'", escapes=False, start=1)
            elif char in "[{":
                depth += 1
                want_item = depth == 1
                self.advance(1)
            elif char in "]}":
                depth -= 1
                self.advance(1)
            else:
                self.advance(1)
        return items

    def _skip_until(self, closer: str, *, escapes: bool, start: int) -> None:
        self.advance(start)
        while not self.at_end():
            if escapes and self.text[self.pos] == "\\":
                self.advance(2)
                continue
            if self.text.startswith(closer, self.pos):
                self.advance(len(closer))
                # a multi-line string may end with up to two extra quotes: """a""""" is legal
                while len(closer) == 3 and self.peek() == closer[0]:
                    self.advance(1)
                return
            self.advance(1)
