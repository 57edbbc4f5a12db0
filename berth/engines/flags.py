"""The engine_args berth accepts for one engine: a table of flags, and the parser that holds a
spec's engine_args to it. Fail closed: a flag not in the table is refused, with the accepted ones
named; a flag that sets what berth owns (host, port, model, name, key, context size) is refused; a
flag that loads code or files from outside the model is refused unless the node's operator allows
it (BERTH_ALLOW_UNSAFE_ENGINE_ARGS=1), where the table says an operator may.

The parser returns the arguments in one canonical spelling (`--long-name value`), which is what
reaches the engine: berth's own flags come after them, so berth's win even where a check missed.

Pure and stdlib only: the API, the workflow and the xllamacpp launcher (a bare engine process)
import it.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["int", "float", "bool", "choice", "name", "floats"]
Risk = Literal["owned", "outside", "unsafe"]

NAME_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,127}$")  # a word: never a path, never a flag
FLOATS_VALUE = re.compile(r"^\d+(\.\d+)?([,/]\d+(\.\d+)?){0,63}$")
ALLOW_SWITCH = "BERTH_ALLOW_UNSAFE_ENGINE_ARGS"


class EngineArgsError(ValueError):
    """engine_args that berth refuses; the message names the flag. `position`: the index in the
    args where the check stopped (how far a table got, when several are tried)."""

    def __init__(self, message: str, position: float = 0):
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class Flag:
    """One flag berth accepts. `names[0]` is the spelling passed on; `target` is the engine's own
    option it sets (for the xllamacpp launcher: the CommonParams attribute path)."""

    names: tuple[str, ...]
    kind: Kind
    help: str
    target: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    negation: tuple[str, ...] = ()  # bool flags: the spellings that turn it off (--no-...)
    risk: Risk | None = None  # "unsafe": refused unless the operator allows it

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Refused:
    """Flags berth never passes on, and why: "owned" (berth sets it) or "outside" (it reads, writes or
    runs something outside the model)."""

    names: tuple[str, ...]
    risk: Risk
    why: str


@dataclass(frozen=True)
class Given:
    """One accepted flag as the user gave it: the value (None for a bool) and whether negated."""

    flag: Flag
    value: str | None = None
    negated: bool = False

    def argv(self) -> list[str]:
        if self.flag.kind == "bool":
            return [self.flag.negation[0] if self.negated else self.flag.name]
        return [self.flag.name, str(self.value)]


@dataclass(frozen=True)
class FlagTable:
    engine: str
    flags: tuple[Flag, ...]
    refused: tuple[Refused, ...] = ()
    _index: dict[str, tuple[Flag, bool]] = field(default_factory=dict, compare=False, repr=False)
    _refused: dict[str, Refused] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for flag in self.flags:
            for spelling in flag.names:
                self._add(spelling, (flag, False))
            for spelling in flag.negation:
                self._add(spelling, (flag, True))
        for entry in self.refused:
            for spelling in entry.names:
                if spelling in self._index or spelling in self._refused:
                    raise ValueError(f"{self.engine}: flag {spelling} is in the table twice")
                self._refused[spelling] = entry

    def _add(self, spelling: str, entry: tuple[Flag, bool]) -> None:
        if spelling in self._index:
            raise ValueError(f"{self.engine}: flag {spelling} is in the table twice")
        self._index[spelling] = entry

    def accepted(self, allow_unsafe: bool = False) -> list[str]:
        """The flags a user may give, their long spelling, sorted."""
        return sorted(f.name for f in self.flags if f.risk is None or allow_unsafe)

    def lookup(self, spelling: str) -> tuple[Flag, bool] | None:
        return self._index.get(spelling)

    def parse(self, args: list[str], allow_unsafe: bool = False) -> list[Given]:
        """The accepted flags in `args`, in order; EngineArgsError naming the first refused one."""
        given: list[Given] = []
        seen: dict[str, str] = {}
        i = 0
        while i < len(args):
            token = args[i]
            spelling, inline = (token.split("=", 1) + [None])[:2] if token.startswith("--") else (token, None)
            if not spelling.startswith("-") or spelling in ("-", "--"):
                raise _at(i, 
                    f"engine_args: {token!r} is not a flag; engine_args hold {self.engine} flags with their "
                    "values (the model is the spec's `model`)"
                )
            refused = self._refused.get(spelling)
            if refused is not None:
                raise _at(i + 0.5, f"engine_args: {spelling} is refused for {self.engine}: {refused.why}")
            found = self._index.get(spelling)
            if found is None:
                raise _at(i, 
                    f"engine_args: {spelling} is not a {self.engine} flag berth accepts; accepted: "
                    f"{', '.join(self.accepted(allow_unsafe))}"
                )
            flag, negated = found
            if flag.risk == "unsafe" and not allow_unsafe:
                raise _at(i + 0.5, 
                    f"engine_args: {spelling} is refused for {self.engine}: {flag.help}; the node's "
                    f"operator may allow it with {ALLOW_SWITCH}=1 (on the API and the node)"
                )
            if flag.name in seen:
                raise _at(i + 0.5, f"engine_args: {spelling} is given twice (also as {seen[flag.name]})")
            seen[flag.name] = spelling
            if flag.kind == "bool":
                if inline is not None:
                    raise _at(i + 0.5, f"engine_args: {spelling} takes no value (got {token!r})")
                given.append(Given(flag, None, negated))
                i += 1
                continue
            if inline is None:
                if i + 1 >= len(args):
                    raise _at(i + 0.5, f"engine_args: {spelling} needs a value ({flag.help})")
                inline, i = args[i + 1], i + 2
            else:
                i += 1
            try:
                value = check_value(self.engine, spelling, flag, inline)
            except EngineArgsError as bad:
                raise _at(i + 0.5, str(bad)) from None
            given.append(Given(flag, value))
        return given

    def canonical(self, args: list[str], allow_unsafe: bool = False) -> list[str]:
        """`args` checked and spelled canonically, ready to pass to the engine."""
        return [token for item in self.parse(args, allow_unsafe) for token in item.argv()]


def _at(position: float, message: str) -> EngineArgsError:
    return EngineArgsError(message, position)


def check_value(engine: str, spelling: str, flag: Flag, value: str) -> str:
    """The value, normalised, if it has the flag's shape; else EngineArgsError naming the flag."""
    def bad(expected: str) -> EngineArgsError:
        return EngineArgsError(f"engine_args: {spelling} {value!r}: {expected} ({flag.help})")

    bounds = ""
    if flag.minimum is not None or flag.maximum is not None:
        bounds = f" from {_num(flag.minimum, '-inf')} to {_num(flag.maximum, 'inf')}"
    if flag.kind == "int":
        if not re.fullmatch(r"-?\d{1,12}", value):
            raise bad(f"expected a whole number{bounds}")
        number: float = int(value)
    elif flag.kind == "float":
        try:
            number = float(value)
        except ValueError:
            raise bad(f"expected a number{bounds}") from None
        if not math.isfinite(number) or not re.fullmatch(r"-?[0-9.eE+-]{1,32}", value):
            raise bad(f"expected a number{bounds}")
    elif flag.kind == "choice":
        if value not in flag.choices:
            raise bad(f"expected one of {', '.join(flag.choices)}")
        return value
    elif flag.kind == "name":
        if not NAME_VALUE.match(value):
            raise bad("expected a name of letters, digits and _.:+- (no paths)")
        return value
    elif flag.kind == "floats":
        if not FLOATS_VALUE.match(value):
            raise bad("expected numbers separated by ',' such as 3,1")
        return value.replace("/", ",")
    else:
        raise bad(f"unknown kind {flag.kind}")
    if (flag.minimum is not None and number < flag.minimum) or (flag.maximum is not None and number > flag.maximum):
        raise bad(f"expected a number{bounds}")
    return value


def _num(value: float | None, default: str) -> str:
    if value is None:
        return default
    return str(int(value)) if float(value).is_integer() else str(value)
