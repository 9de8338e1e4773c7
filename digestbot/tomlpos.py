"""Where keys and array elements sit in a TOML text: tomllib gives values, not positions.

`LineMap.scan(text)` walks a text that tomllib already accepted with just enough of a TOML
lexer (`Lexer`) to find the line of each top-level key, each key of `[defaults]`, each
`[[subscribers]]` and `[[sources]]` block, its keys and the elements of its arrays. Error messages of the
subscribers file use it to name a line.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from array import array
from dataclasses import dataclass, field

__all__ = ["Block", "Lexer", "LineMap"]


@dataclass(slots=True)
class Block:
    line: int
    keys: dict[str, int] = field(default_factory=dict)
    items: dict[str, list[int]] = field(default_factory=dict)  # line of each array element


@dataclass
class LineMap:
    """Lines of keys in a TOML text tomllib accepted: top level, [defaults], [[subscribers]], [[sources]].

    Only standard forms are tracked; a subscriber written as an inline table falls back to the
    line of `subscribers =`, a key in a form not tracked falls back to its block's header.
    A `[[subscribers]]` block's keys are looked up only when asked (error messages): the scan
    keeps each block's offset and header line, so a 100,000-subscriber file costs a few MB.
    """

    top: dict[str, int] = field(default_factory=dict)
    defaults_keys: dict[str, int] = field(default_factory=dict)
    defaults_line: int | None = None
    source_blocks: list[Block] = field(default_factory=list)
    text: str = field(default="", repr=False)
    _starts: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _lines: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _ends: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _read: dict[int, Block] = field(default_factory=dict, repr=False)
    _extra: dict[int, dict[str, int]] = field(default_factory=dict, repr=False)  # [subscribers.x]

    def _extra_key(self, key: str, line: int) -> None:
        """A `[subscribers.key]` table: a key of the last `[[subscribers]]` block."""
        self._extra.setdefault(self.block_count - 1, {}).setdefault(key, line)

    @property
    def block_count(self) -> int:
        """How many `[[subscribers]]` blocks the text has."""
        return len(self._starts)

    def block(self, index: int) -> Block:
        """The `index`-th `[[subscribers]]` block with its keys and array elements."""
        found = self._read.get(index)
        if found is None:
            found = Block(self._lines[index])
            lexer = Lexer(self.text)
            lexer.pos = self._starts[index]
            lexer.skip_line_rest()  # past the header
            _statements(self, lexer, found.keys, found, until=self._ends[index])
            for key, line in self._extra.get(index, {}).items():
                found.keys.setdefault(key, line)
            self._read[index] = found
        return found

    def default(self, key: str) -> int | None:
        return self.defaults_keys.get(key) or self.defaults_line or self.top.get("defaults")

    def sub(self, index: int, key: str | None = None) -> int | None:
        if index < self.block_count:
            if not key:
                return self._lines[index]
            block = self.block(index)
            return block.keys.get(key, block.line)
        return self.top.get("subscribers")

    def item(self, index: int, key: str, position: int) -> int | None:
        """Line of the `position`-th (0-based) element of array `key`, else the key's line."""
        if index < self.block_count:
            items = self.block(index).items.get(key, [])
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
        result = cls(text=text)
        _statements(result, Lexer(text), result.top, None, until=len(text))
        if len(result._ends) < len(result._starts):
            result._ends.append(len(text))
        return result


def _statements(
    result: LineMap,
    lexer: Lexer,
    context: dict[str, int] | None,
    block: Block | None,
    *,
    until: int,
) -> None:
    """Record the lines of the statements from the lexer's position up to offset `until`.

    On a whole-text scan (`block` None at the start) a `[[subscribers]]` header only notes where
    its block starts; reading one block (`block` given) records its keys and array elements.
    """
    text = lexer.text
    whole = block is None
    skipping = False  # inside a [[subscribers]] block of a whole-text scan: keys read later
    while True:
        lexer.skip_blank()
        if lexer.at_end() or lexer.pos >= until:
            break
        pos = lexer.pos
        line = lexer.line
        char = text[pos]
        if char == "#":
            lexer.skip_comment()
            continue
        if char == "[":
            if not whole:
                break  # the next table: the block ends here
            is_array = text.startswith("[[", pos)
            header = _HEADER.match(text, pos)
            if header:  # the common `[[subscribers]]`: one bare key
                path = [header.group(1) or header.group(2)]
            else:
                lexer.advance(2 if is_array else 1)
                path = lexer.key_path()
                lexer.advance(2 if is_array else 1)
            head = path[0] if path else ""
            result.top.setdefault(head, line)
            if skipping and len(result._ends) < len(result._starts):
                result._ends.append(pos)
            context, block, skipping = None, None, False
            if path == ["defaults"] and not is_array:
                result.defaults_line = line
                context = result.defaults_keys
            elif path == ["subscribers"] and is_array:
                result._starts.append(pos)
                result._lines.append(line)
                skipping = True
            elif path == ["sources"] and is_array:
                block = Block(line)
                result.source_blocks.append(block)
                context = block.keys
            elif head == "defaults" and len(path) > 1:
                result.defaults_keys.setdefault(path[1], line)
            elif head == "subscribers" and len(path) > 1 and result.block_count:
                # `[subscribers.x]`: a key of the block before, which ends here
                if len(result._ends) < len(result._starts):
                    result._ends.append(pos)
                result._extra_key(path[1], line)
            elif head == "sources" and len(path) > 1 and result.source_blocks:
                result.source_blocks[-1].keys.setdefault(path[1], line)
            lexer.skip_line_rest()
            continue
        simple = _SIMPLE_PAIR.match(text, pos)
        if simple:  # the common one-line `key = value`: no lexing needed
            path = [simple.group(1)]
            lexer.pos = simple.end()
            if skipping:
                continue
            strings = simple.group(2)
            items = [line] * len(_STRINGS.findall(strings)) if strings else []
        else:
            path = lexer.key_path()
            lexer.expect("=")
            items = lexer.skip_value()
            if skipping:
                continue
        if context is not None and path:
            context.setdefault(path[0], line)
            if context is result.top and path[0] == "defaults" and len(path) > 1:
                result.defaults_keys.setdefault(path[1], line)
        if block is not None and len(path) == 1:
            block.items.setdefault(path[0], items)


# A table header with one bare key, `[name]` or `[[name]]` (anything else goes through Lexer).
_HEADER = re.compile(r"\[\[[ \t]*([A-Za-z0-9_-]+)[ \t]*\]\]|\[(?!\[)[ \t]*([A-Za-z0-9_-]+)[ \t]*\]")
# A one-line `key = value` whose value is a one-line basic string, a bare scalar (number, boolean,
# date) or an array of one-line basic strings (group 2: its elements); then only a comment.
_PLAIN_STRING = r'"(?:[^"\\\n]|\\.)*"'
_SIMPLE_PAIR = re.compile(
    r"([A-Za-z0-9_-]+)[ \t]*=[ \t]*"
    rf"(?:{_PLAIN_STRING}|[A-Za-z0-9_:+.-]+"
    rf"|\[[ \t]*((?:{_PLAIN_STRING}[ \t]*,[ \t]*)*{_PLAIN_STRING}[ \t]*,?[ \t]*)?\])"
    r"[ \t\r]*(?:#[^\n]*)?(?=\n|\Z)"
)
_STRINGS = re.compile(_PLAIN_STRING)


class Lexer:
    """Just enough of a TOML lexer to find where statements start, for text tomllib accepted.

    Positions move by jumps (regular expressions, str.find), and the line of a position is looked
    up in the offsets of the text's newlines, so a 100,000-subscriber file scans in about a second.
    """

    _BARE = re.compile(r"[A-Za-z0-9_-]+")
    _BLANK = re.compile(r"[ \t\r\n]*")
    _SPACES = re.compile(r"[ \t]*")
    _NEWLINE = re.compile(r"\n")
    # Inside a value: a run of characters that mean nothing to skip_value (not a quote, bracket,
    # comma, comment or whitespace), and runs of whitespace (with or without newlines).
    _PLAIN = re.compile(r"[^ \t\r\n#\"'\[\]{},]+")
    _WHITE = re.compile(r"[ \t\r\n]+")
    _WHITE_INLINE = re.compile(r"[ \t\r]+")
    # The rest of a string after its opening quote(s), up to and including the closer.
    _BASIC_REST = re.compile(r'(?:[^"\\]|\\.)*"', re.DOTALL)
    _ML_BASIC_REST = re.compile(r'(?:[^"\\]|\\.|"(?!""))*"""', re.DOTALL)

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._end = len(text)
        self._newlines = [m.start() for m in self._NEWLINE.finditer(text)]

    @property
    def line(self) -> int:
        """1-based line of the current position."""
        return bisect.bisect_left(self._newlines, self.pos) + 1

    def at_end(self) -> bool:
        return self.pos >= self._end

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def advance(self, n: int) -> None:
        self.pos = min(self.pos + n, self._end)

    def _jump(self, pattern: re.Pattern[str]) -> None:
        match = pattern.match(self.text, self.pos)
        if match:
            self.pos = match.end()

    def skip_blank(self) -> None:
        """Skip whitespace and newlines."""
        self._jump(self._BLANK)

    def skip_spaces(self) -> None:
        self._jump(self._SPACES)

    def skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = self._end if end < 0 else end

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
                end = self._end if end < 0 else end
                parts.append(self.text[self.pos + 1 : end])
                self.advance(end + 1 - self.pos)
            else:
                match = self._BARE.match(self.text, self.pos)
                if not match:
                    return parts
                parts.append(match.group())
                self.pos = match.end()
            self.skip_spaces()
            if self.peek() != ".":
                return parts
            self.advance(1)

    def _basic_string(self) -> str:
        start = self.pos
        self._skip_until('"', escapes=True, start=1)
        return self.text[start : self.pos]

    def skip_value(self) -> list[int]:
        """Skip one value, across lines for arrays and multi-line strings, and the line's comment.

        Returns the line of each element when the value is an array.
        """
        depth = 0
        items: list[int] = []
        want_item = False
        text = self.text
        while self.pos < self._end:
            char = text[self.pos]
            if char == "\n" and depth == 0:
                return items
            if char == "#":
                self.skip_comment()
                continue
            if char in " \t\r\n":
                self._jump(self._WHITE if depth else self._WHITE_INLINE)
                continue
            if depth == 1 and want_item and char not in ",]":
                items.append(self.line)
                want_item = False
            if depth == 1 and char == ",":
                want_item = True
            if text.startswith('"""', self.pos):
                self._skip_until('"""', escapes=True, start=3)
            elif text.startswith("'''", self.pos):
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
            elif char == ",":
                self.advance(1)
            else:
                self._jump(self._PLAIN)
        return items

    def _skip_until(self, closer: str, *, escapes: bool, start: int) -> None:
        self.advance(start)
        if escapes:
            pattern = self._BASIC_REST if closer == '"' else self._ML_BASIC_REST
            match = pattern.match(self.text, self.pos)
            end = match.end() if match else -1
        else:
            found = self.text.find(closer, self.pos)
            end = found + len(closer) if found >= 0 else -1
        if end < 0:
            self.pos = self._end
            return
        self.pos = end
        # a multi-line string may end with up to two extra quotes: """a""""" is legal
        while len(closer) == 3 and self.peek() == closer[0]:
            self.advance(1)
