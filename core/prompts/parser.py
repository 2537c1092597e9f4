"""AUTOMATIC1111's prompt language, parsed into plain dataclasses (pure Python, no torch).

A1111 handles a prompt in this order, and so does :func:`parse_prompt`:

1. extra-network tags ``<kind:name:args...>`` are taken out (:func:`extract_extra_networks`);
2. the rest is split into composable-diffusion subprompts at ``AND``, each with an optional
   trailing ``:weight`` (:func:`split_and`);
3. each subprompt gets its prompt-editing / alternation schedule: which text is active up to
   which sampling step (:func:`get_schedules`);
4. each scheduled text is later turned into weighted fragments by the conditioning code
   (:func:`parse_attention`): ``(x)``, ``[x]``, ``(x:1.3)``, escapes and ``BREAK``.

Worked example (10 steps):

>>> parsed = parse_prompt("a <lora:film:0.6>photo of a [cat:dog:0.5] AND (sunset:1.2) :0.7", steps=10)
>>> parsed.extra_networks
[ExtraNetworkTag(kind='lora', name='film', args=['0.6'])]
>>> parsed.text
'a photo of a [cat:dog:0.5] AND (sunset:1.2) :0.7'
>>> for sub in parsed.subprompts:
...     print(sub.weight, [(s.end_at_step, s.text) for s in sub.schedule])
1.0 [(5, 'a photo of a cat'), (10, 'a photo of a dog')]
0.7 [(10, ' (sunset:1.2)')]
>>> parse_attention(" (sunset:1.2)")
[Fragment(text=' ', weight=1.0), Fragment(text='sunset', weight=1.2)]
>>> parsed.texts_at(7)  # 0-based sampler step, as A1111 counts it
[('a photo of a dog', 1.0), (' (sunset:1.2)', 0.7)]

Where A1111 itself is ill-defined, this module picks one documented answer:

* A1111 parses editing syntax with a lark Earley grammar whose ambiguity resolution depends on
  Python's per-process string hashing. For a few inputs (an edit directly followed, outside any
  construct, by stray ``]``/``:``/``(``/``[``; e.g. ``[a:1]:2]`` or ``[a:1]]``) two runs of
  A1111 can disagree on whether the edit is applied or kept as literal text. Here a bracket
  group that is a valid edit/alternation is always applied (the reading A1111 gives for most
  hash seeds, and the one every unambiguous input gets).
* The docstring example ``a [{b|d{:.5] c`` in A1111 is stale: its current grammar rejects the
  stray ``|`` and uses that prompt verbatim, as this module does.
* ``(x:1.2.3)`` (a weight that is not a number) raises ``ValueError`` inside A1111; here the
  ``:`` is taken as text and the ``)`` closes the group with the usual 1.1.
* ``[x:1e999]`` overflows inside A1111; here an infinite step count means "all steps".
* Nesting deeper than Python's recursion allows makes the prompt literal text (no editing).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = [
    "Alternation",
    "Edit",
    "ExtraNetworkTag",
    "Fragment",
    "ParsedPrompt",
    "ScheduledText",
    "SubPrompt",
    "Text",
    "WeightedPrompt",
    "WeightedText",
    "extract_extra_networks",
    "get_schedules",
    "parse_attention",
    "parse_editing",
    "parse_prompt",
    "schedule_text_at",
    "split_and",
]

# --------------------------------------------------------------------------------------------
# Attention: (x) (x:1.3) [x] escapes BREAK
# --------------------------------------------------------------------------------------------

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1  # A1111 multiplies by this, it does not divide by 1.1
BREAK_WEIGHT = -1.0

_ESCAPABLE = "()[]\\"
_ATTENTION_SPECIAL = "\\()[]:"
# ":<weight>)" closing an explicit weight; whitespace allowed on both sides of the number.
_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?[\d.]+)\s*\)")
# BREAK as its own word, eating the whitespace around it.
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
# The multiplier of each kind of bracket group, and which opening bracket each closing one ends.
_GROUP_MULTIPLIER = {"(": ROUND_MULTIPLIER, "[": SQUARE_MULTIPLIER}
_OPENING_BRACKET = {")": "(", "]": "["}


@dataclass(frozen=True)
class WeightedText:
    """Text with a weight: what attention brackets and ``AND`` both produce (subclassed per
    meaning, so that a Fragment never compares equal to a WeightedPrompt)."""

    text: str
    weight: float


@dataclass(frozen=True)
class Fragment(WeightedText):
    """A piece of prompt text and its attention weight. BREAK is ``Fragment("BREAK", -1.0)``."""

    @property
    def is_break(self) -> bool:
        return self.text == "BREAK" and self.weight == BREAK_WEIGHT


def parse_attention(text: str) -> list[Fragment]:
    """Split ``text`` into fragments with attention weights, as A1111's parse_prompt_attention.

    ``(x)`` multiplies by 1.1, ``[x]`` by 1/1.1, ``(x:w)`` by ``w``; brackets nest and multiply.
    ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; any other backslash is dropped.
    A bracket left open applies its multiplier to everything after it; a closing bracket with
    nothing open is literal text. ``BREAK`` (a separate uppercase word) becomes its own fragment
    with weight -1 (a BREAK inside brackets gets multiplied too, as in A1111). Adjacent
    fragments of equal weight are merged. ``""`` gives ``[Fragment("", 1.0)]``.
    """
    pieces: list[list] = []  # [text, weight], weights multiplied in place as groups close
    # Per kind of bracket, where each group still open starts (an index into pieces).
    open_groups: dict[str, list[int]] = {bracket: [] for bracket in _GROUP_MULTIPLIER}
    open_round = open_groups["("]  # the ones an explicit ":weight)" can close

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    def add_text(chunk: str) -> None:
        # BREAK is looked for inside each run of ordinary text, as A1111 does.
        for n, part in enumerate(_BREAK.split(chunk)):
            if n:
                pieces.append(["BREAK", BREAK_WEIGHT])
            pieces.append([part, 1.0])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPABLE:
                pieces.append([text[i + 1], 1.0])
                i += 2
            else:
                pieces.append(["", 1.0])  # a lone backslash vanishes
                i += 1
        elif c in open_groups:
            open_groups[c].append(len(pieces))
            i += 1
        elif c == ":":
            m = _EXPLICIT_WEIGHT.match(text, i)
            if m is None:
                add_text(":")
                i += 1
            elif not open_round:
                add_text(m.group(0))  # nothing to close: the whole ":1.2)" is text
                i = m.end()
            else:
                try:
                    factor = float(m.group(1))
                except ValueError:  # "(x:1.2.3)": A1111 raises here
                    add_text(":")
                    i += 1
                    continue
                scale(open_round.pop(), factor)
                i = m.end()
        elif c in _OPENING_BRACKET:
            opening = _OPENING_BRACKET[c]
            if open_groups[opening]:
                scale(open_groups[opening].pop(), _GROUP_MULTIPLIER[opening])
            else:
                add_text(c)
            i += 1
        else:
            j = i + 1
            while j < n and text[j] not in _ATTENTION_SPECIAL:
                j += 1
            add_text(text[i:j])
            i = j

    for opening, starts in open_groups.items():  # round groups first, as A1111
        for start in starts:
            scale(start, _GROUP_MULTIPLIER[opening])

    if not pieces:
        return [Fragment("", 1.0)]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [Fragment(t, float(w)) for t, w in merged]


# --------------------------------------------------------------------------------------------
# Prompt editing [from:to:when] and alternation [a|b]
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """Literal text, kept exactly as written (escapes and emphasis brackets included)."""

    text: str


@dataclass(frozen=True)
class Edit:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``. ``when`` as written."""

    before: tuple | None
    after: tuple
    when: str


@dataclass(frozen=True)
class Alternation:
    """``[a|b|c]``: option ``(step - 1) % len(options)`` is used at each step."""

    options: tuple


@dataclass(frozen=True)
class ScheduledText:
    """``text`` is the prompt for every step up to and including ``end_at_step``."""

    end_at_step: int
    text: str


# The number in an edit: lark's SIGNED_NUMBER, ASCII digits only, first matching form wins.
_EDIT_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
)
_WHITESPACE = re.compile(r"\s*")
_STOPS = "[]():|\\"  # characters that end a run of plain text


class _EditingParser:
    """Recursive descent over A1111's editing grammar.

    Inside a bracket group everything must be well formed: brackets balanced, ``:`` and ``|``
    only as separators of the innermost group. Outside any group, stray ``[ ] ( ) :`` are
    literal text; a stray ``|`` or a backslash at the end (or before a newline) makes the
    whole prompt unparseable, and A1111 then uses it verbatim.
    """

    def __init__(self, text: str):
        self.s = text
        self.n = len(text)
        self.groups: dict[int, tuple[list, int] | None] = {}

    def parse(self) -> tuple | None:
        s, n = self.s, self.n
        out: list = []
        i = 0
        while i < n:
            c = s[i]
            if c == "[":
                group = self.group(i)
                if group is not None:
                    out.extend(group[0])
                    i = group[1]
                    continue
                out.append(Text(c))
                i += 1
            elif c in "]():":
                # Stray at top level: literal. A "(" group would print verbatim anyway, and
                # any edit inside it is found by carrying on from here.
                out.append(Text(c))
                i += 1
            elif c == "|":
                return None
            else:
                run = self.plain(i)
                if run is None:
                    return None
                out.extend(run[0])
                i = run[1]
        return _join_text(out)

    def plain(self, start: int) -> tuple[list, int] | None:
        """The plain text (escapes included) from ``start``, as ``group`` gives a group: its
        items and the index after it. None on a bad escape."""
        s, n = self.s, self.n
        i = start
        while i < n:
            c = s[i]
            if c == "\\":
                if i + 1 >= n or s[i + 1] == "\n":
                    return None
                i += 2
            elif c in _STOPS:
                break
            else:
                i += 1
        return [Text(s[start:i])], i

    def sequence(self, i: int) -> tuple[list, int] | None:
        """Items of a well-formed prompt from ``i`` up to a ``] ) : |`` or the end."""
        s, n = self.s, self.n
        out: list = []
        while i < n:
            c = s[i]
            if c in "]):|":
                break
            item = self.group(i) if c == "[" or c == "(" else self.plain(i)
            if item is None:
                return None
            out.extend(item[0])
            i = item[1]
        return out, i

    def group(self, i: int) -> tuple[list, int] | None:
        if i not in self.groups:
            self.groups[i] = self._group(i)
        return self.groups[i]

    def _group(self, i: int) -> tuple[list, int] | None:
        s, n = self.s, self.n
        opener = s[i]
        first = self.sequence(i + 1)
        if first is None:
            return None
        items, j = first
        stop = s[j] if j < n else ""

        if opener == "(":
            if stop == ")":
                return [Text("("), *items, Text(")")], j + 1
            if stop != ":":
                return None
            second = self.sequence(j + 1)
            if second is None or second[1] >= n or s[second[1]] != ")":
                return None
            return [Text("("), *items, Text(":"), *second[0], Text(")")], second[1] + 1

        if stop == "]":
            return [Text("["), *items, Text("]")], j + 1
        if stop == "|":
            options = [items]
            while stop == "|":
                nxt = self.sequence(j + 1)
                if nxt is None:
                    return None
                option, j = nxt
                options.append(option)
                stop = s[j] if j < n else ""
            if stop != "]":
                return None
            return [Alternation(tuple(_join_text(o) for o in options))], j + 1
        if stop != ":":
            return None
        when = self.when(j + 1)
        if when is not None:  # [after:when]
            return [Edit(None, _join_text(items), when[0])], when[1]
        second = self.sequence(j + 1)
        if second is None:
            return None
        after, k = second
        if k >= n or s[k] != ":":
            return None
        when = self.when(k + 1)
        if when is None:
            return None
        return [Edit(_join_text(items), _join_text(after), when[0])], when[1]

    def when(self, i: int) -> tuple[str, int] | None:
        """``[whitespace] number [whitespace] ]`` at ``i``: (the number, index after ``]``)."""
        s = self.s
        i = _WHITESPACE.match(s, i).end()
        m = _EDIT_NUMBER.match(s, i)
        if m is None:
            return None
        j = _WHITESPACE.match(s, m.end()).end()
        if j >= self.n or s[j] != "]":
            return None
        return m.group(0), j + 1


def _join_text(items: list) -> tuple:
    out: list = []
    for item in items:
        if isinstance(item, Text):
            if not item.text:
                continue
            if out and isinstance(out[-1], Text):
                out[-1] = Text(out[-1].text + item.text)
                continue
        out.append(item)
    return tuple(out)


def parse_editing(prompt: str) -> tuple | None:
    """The prompt as a tuple of :class:`Text`, :class:`Edit` and :class:`Alternation` nodes.

    None where A1111's grammar rejects the prompt (a ``|`` outside ``[a|b]``, a dangling
    backslash): such a prompt is used verbatim for every step.
    """
    try:
        return _EditingParser(prompt).parse()
    except RecursionError:
        return None


def _step_of(when: str, steps: int, base_steps: int, hires: bool, use_old_scheduling: bool) -> int:
    value = float(when)
    if use_old_scheduling:
        if value < 1:
            value *= steps
    elif "." in when:  # written with a decimal point: a fraction of the steps
        value = (value - (1.0 if hires else 0.0)) * steps
    else:
        value -= base_steps if hires else 0
    if math.isinf(value):
        return steps if value > 0 else -1
    return min(steps, int(value))


def _walk(nodes, visit) -> None:
    for node in nodes:
        visit(node)
        if isinstance(node, Edit):
            _walk(node.before or (), visit)
            _walk(node.after, visit)
        elif isinstance(node, Alternation):
            for option in node.options:
                _walk(option, visit)


def _render(nodes, step: int, resolve, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Edit):
            _render((node.before or ()) if step <= resolve(node.when) else node.after, step, resolve, out)
        else:
            _render(node.options[(step - 1) % len(node.options)], step, resolve, out)


def _schedule(prompt: str, steps: int, base_steps: int, hires: bool, old: bool, minimal: bool) -> list[ScheduledText]:
    tree = parse_editing(prompt)
    if tree is None:
        return [ScheduledText(steps, prompt)]

    def resolve(when: str) -> int:
        return _step_of(when, steps, base_steps, hires, old)

    ends = {steps}

    def collect(node) -> None:
        if isinstance(node, Edit):
            at = resolve(node.when)
            if at >= 1:
                ends.add(at)
        elif isinstance(node, Alternation):
            ends.update(range(1, steps + 1))

    _walk(tree, collect)
    result: list[ScheduledText] = []
    for end in sorted(ends):
        parts: list[str] = []
        _render(tree, end, resolve, parts)
        text = "".join(parts)
        if minimal and result and result[-1].text == text:
            result[-1] = ScheduledText(end, text)
        else:
            result.append(ScheduledText(end, text))
    return result


def get_schedules(
    prompts: list[str],
    steps: int,
    *,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
    minimal: bool = True,
) -> list[list[ScheduledText]]:
    """Per prompt, the texts to encode and the last step each is used for (A1111's
    get_learned_conditioning_prompt_schedules).

    ``[from:to:when]`` uses ``from`` up to step ``when`` and ``to`` after it; ``[to:when]`` and
    ``[from::when]`` leave out one side. ``when`` written with a decimal point (``0.25``,
    ``.5``, ``1.0``) is a fraction of ``steps``; without one it is a step count; either is
    capped at ``steps``. ``[a|b|c]`` switches option every step. Edits nest.

    ``use_old_scheduling`` is A1111's compatibility setting: values below 1 are fractions,
    others step counts. ``hires_steps`` gives the schedule for the hires pass (fractions run
    from 1 to 2 and step counts from ``steps`` on). With ``minimal`` (the default) consecutive
    entries with the same text are merged (A1111 keeps them; the text at each step is the
    same either way). The last entry always ends at the number of steps of the pass.
    """
    if hires_steps is None or use_old_scheduling:
        pass_steps, hires = steps, False
    else:
        pass_steps, hires = hires_steps, True
    cache: dict[str, list[ScheduledText]] = {}
    out = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = _schedule(prompt, pass_steps, steps, hires, use_old_scheduling, minimal)
        out.append(list(cache[prompt]))
    return out


def schedule_text_at(schedule: list[ScheduledText], step: int) -> str:
    """The text used at sampler step ``step`` (0-based, as A1111 counts it): the first entry
    with ``step <= end_at_step``; past the last entry A1111 falls back to the first one."""
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.text
    return schedule[0].text


# --------------------------------------------------------------------------------------------
# Composable diffusion: AND
# --------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_AND_WEIGHT = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")


@dataclass(frozen=True)
class WeightedPrompt(WeightedText):
    """One ``AND`` subprompt and its weight."""


def split_and(prompt: str) -> list[WeightedPrompt]:
    """Split at ``AND`` (uppercase, as a word: A1111's ``\\bAND\\b``, so ``a,AND,b`` splits too).

    A subprompt ending in ``:number`` (whitespace allowed around the ``:``) gets that weight;
    others weigh 1.0. Trailing whitespace is dropped, leading whitespace kept, as A1111 does.
    """
    out = []
    for sub in _AND.split(prompt):
        body = sub.rstrip()
        colon = body.rfind(":")
        if colon >= 0 and _AND_WEIGHT.fullmatch(body[colon + 1:].lstrip()):
            out.append(WeightedPrompt(body[:colon].rstrip(), float(body[colon + 1:])))
        else:
            out.append(WeightedPrompt(body, 1.0))
    return out


# --------------------------------------------------------------------------------------------
# Extra networks: <lora:name:0.8>
# --------------------------------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class ExtraNetworkTag:
    """``<kind:name:arg1:arg2...>``; everything after ``kind:`` is split at ``:``."""

    kind: str
    name: str
    args: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[str]:
        """A1111's ExtraNetworkParams.items: the name, then the arguments."""
        return [self.name, *self.args]

    @property
    def positional(self) -> list[str]:
        """Items that are not ``key=value`` (A1111's ExtraNetworkParams.positional)."""
        return [item for item in self.items if len(item.split("=", 2)) != 2]

    @property
    def named(self) -> dict[str, str]:
        """``key=value`` items (A1111's ExtraNetworkParams.named), e.g. ``te=0.5``."""
        pairs = (item.split("=", 2) for item in self.items)
        return {p[0]: p[1] for p in pairs if len(p) == 2}


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Remove every ``<kind:name[:args...]>`` tag; return the rest of the text and the tags in
    order. Nothing around a tag (spaces, commas) is touched."""
    tags: list[ExtraNetworkTag] = []

    def take(m: re.Match) -> str:
        name, *args = m.group(2).split(":")
        tags.append(ExtraNetworkTag(m.group(1), name, args))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tags


# --------------------------------------------------------------------------------------------
# All together
# --------------------------------------------------------------------------------------------


@dataclass
class SubPrompt:
    """One ``AND`` part: its text (weight removed), weight and schedule."""

    text: str
    weight: float
    schedule: list[ScheduledText]


@dataclass
class ParsedPrompt:
    prompt: str  # as given
    text: str  # extra-network tags removed
    extra_networks: list[ExtraNetworkTag]
    subprompts: list[SubPrompt]
    steps: int

    def texts_at(self, step: int) -> list[tuple[str, float]]:
        """(text, weight) of every subprompt at sampler step ``step`` (0-based, as A1111)."""
        return [(schedule_text_at(sub.schedule, step), sub.weight) for sub in self.subprompts]

    @property
    def unique_texts(self) -> list[str]:
        """Every text some step needs encoded, each once, in first-use order."""
        seen: dict[str, None] = {}
        for sub in self.subprompts:
            for entry in sub.schedule:
                seen.setdefault(entry.text, None)
        return list(seen)


def parse_prompt(
    prompt: str,
    steps: int,
    *,
    negative: bool = False,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> ParsedPrompt:
    """Extra networks, then AND, then a schedule per subprompt, in A1111's order.

    With ``negative=True`` the prompt is treated as A1111 treats a negative prompt: tags are
    not extracted and there is no AND splitting (one subprompt of weight 1).
    """
    if negative:
        text, tags = prompt, []
        parts = [WeightedPrompt(prompt, 1.0)]
    else:
        text, tags = extract_extra_networks(prompt)
        parts = split_and(text)
    schedules = get_schedules(
        [p.text for p in parts], steps, hires_steps=hires_steps, use_old_scheduling=use_old_scheduling
    )
    subprompts = [SubPrompt(p.text, p.weight, s) for p, s in zip(parts, schedules)]
    return ParsedPrompt(prompt, text, tags, subprompts, steps)
