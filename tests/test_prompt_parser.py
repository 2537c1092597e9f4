"""A1111's prompt language (core/prompts): attention, editing, alternation, AND, extra networks.

Expected values are A1111's: its docstring examples (parse_prompt_attention and
get_learned_conditioning_prompt_schedules), and further edge cases whose expected output was
produced by running A1111's own parser (lark 1.1.2, as A1111 pins it) on them, under several
hash seeds, all agreeing.
"""
import doctest
import random
import subprocess
import sys

import pytest

import core.prompts.parser as parser_module
from core.prompts import (
    Alternation,
    Edit,
    ExtraNetworkTag,
    Fragment,
    ScheduledText,
    Text,
    WeightedPrompt,
    extract_extra_networks,
    get_schedules,
    parse_attention,
    parse_editing,
    parse_prompt,
    schedule_text_at,
    split_and,
)


def pairs(fragments):
    return [(f.text, f.weight) for f in fragments]


def sched(prompt, steps=10, **kw):
    return [(e.end_at_step, e.text) for e in get_schedules([prompt], steps, **kw)[0]]


def merged(entries):
    """A1111's schedule with consecutive equal texts merged (what minimal=True returns)."""
    out = []
    for end, text in entries:
        if out and out[-1][1] == text:
            out[-1] = (end, text)
        else:
            out.append((end, text))
    return out


# --- attention ------------------------------------------------------------------------------

# parse_prompt_attention's docstring examples in A1111.
ATTENTION_DOCSTRING = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
        ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
    ]),
]

# Edge cases, expected output from A1111's parse_prompt_attention.
ATTENTION_A1111 = [
    ('', [('', 1.0)]),
    ('normal text', [('normal text', 1.0)]),
    ('((word))', [('word', 1.2100000000000002)]),
    ('(((word)))', [('word', 1.3310000000000004)]),
    ('[word]', [('word', 0.9090909090909091)]),
    ('[[word]]', [('word', 0.8264462809917354)]),
    ('(word:1.3)', [('word', 1.3)]),
    ('(word: 1.3 )', [('word', 1.3)]),
    ('((word:1.3))', [('word', 1.4300000000000002)]),
    ('(a (b:2) c)', [('a ', 1.1), ('b', 2.2), (' c', 1.1)]),
    ('[a (b) c]', [('a ', 0.9090909090909091), ('b', 1.0), (' c', 0.9090909090909091)]),
    ('a:1.2) b', [('a:1.2) b', 1.0)]),
    ('a ) b ] c', [('a ) b ] c', 1.0)]),
    ('[unclosed (x', [('unclosed ', 0.9090909090909091), ('x', 1.0)]),
    ('(open [both', [('open ', 1.1), ('both', 1.0)]),
    ('\\\\ backslash', [('\\ backslash', 1.0)]),
    ('a\\b', [('ab', 1.0)]),
    ('a\\:b', [('a:b', 1.0)]),
    ('\\(a:1.5\\)', [('(a:1.5)', 1.0)]),
    ('a BREAK b', [('a', 1.0), ('BREAK', -1), ('b', 1.0)]),
    ('aBREAK b', [('aBREAK b', 1.0)]),
    ('BREAKfast', [('BREAKfast', 1.0)]),
    ('a break b', [('a break b', 1.0)]),
    ('BREAK', [('', 1.0), ('BREAK', -1), ('', 1.0)]),
    ('(a BREAK b)', [('a', 1.1), ('BREAK', -1.1), ('b', 1.1)]),
    ('a BREAK\nBREAK b', [('a', 1.0), ('BREAK', -1), ('', 1.0), ('BREAK', -1), ('b', 1.0)]),
    ('(a:b)', [('a:b', 1.1)]),
    ('(a:0)', [('a', 0.0)]),
    ('(a:-1)', [('a', -1.0)]),
    ('[a:1.2)', [('a:1.2)', 0.9090909090909091)]),
    ('a:BREAK', [('a:', 1.0), ('BREAK', -1), ('', 1.0)]),
    ('(a)BREAK(b)', [('a', 1.1), ('', 1.0), ('BREAK', -1), ('', 1.0), ('b', 1.1)]),
    ('(x)(y:1.1)', [('xy', 1.1)]),
    ('[(a:1.5)]', [('a', 1.3636363636363635)]),
]


@pytest.mark.parametrize("text, expected", ATTENTION_DOCSTRING + ATTENTION_A1111)
def test_attention_matches_a1111(text, expected):
    assert pairs(parse_attention(text)) == expected  # exact floats: same multiplication order


def test_attention_fragments_and_break():
    assert parse_attention("") == [Fragment("", 1.0)]
    frags = parse_attention("a BREAK b")
    assert [f.is_break for f in frags] == [False, True, False]
    assert frags[1] == Fragment("BREAK", -1)
    assert not parse_attention("(a BREAK b)")[1].is_break  # scaled by the brackets, as in A1111


def test_attention_bad_weight_does_not_raise():
    # A1111 raises ValueError on float("1.2.3"); here ":" is text and ")" closes with 1.1.
    assert pairs(parse_attention("(a:1.2.3)")) == [("a:1.2.3", 1.1)]
    assert pairs(parse_attention("x (a:.) y")) == [("x ", 1.0), ("a:.", 1.1), (" y", 1.0)]


# --- prompt editing and alternation ---------------------------------------------------------

# get_learned_conditioning_prompt_schedules' docstring examples (10 steps), as A1111 returns
# them (minimal=False keeps A1111's repeated entries).
SCHEDULE_DOCSTRING = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
    ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
    # Stale in A1111's docstring ([[5, 'a  c'], [10, 'a {b|d{ c']]): its current grammar
    # rejects the stray "|", so the prompt is used as written.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
]

# Edge cases: (prompt, A1111 at 10 steps, A1111 with use_old_scheduling at 10 steps).
SCHEDULES_A1111 = [
    ('a [b:c:0.25] d', [(2, 'a b d'), (10, 'a c d')], [(2, 'a b d'), (10, 'a c d')]),
    ('[a:b:1.0]', [(10, 'a')], [(1, 'a'), (10, 'b')]),
    ('[a:b:1.5]', [(10, 'a')], [(1, 'a'), (10, 'b')]),
    ('[a:b:20]', [(10, 'a')], [(10, 'a')]),
    ('[a:b:0]', [(10, 'b')], [(10, 'b')]),
    ('[a:b:-1]', [(10, 'b')], [(10, 'b')]),
    ('[a:b:1e1]', [(10, 'a')], [(10, 'a')]),
    ('[a:b:2.]', [(10, 'a')], [(2, 'a'), (10, 'b')]),
    ('(a [b:c:2]:1.3)', [(2, '(a b:1.3)'), (10, '(a c:1.3)')], [(2, '(a b:1.3)'), (10, '(a c:1.3)')]),
    ('([a:b:2])', [(2, '(a)'), (10, '(b)')], [(2, '(a)'), (10, '(b)')]),
    ('[[a:b:2]:c:5]', [(2, 'a'), (5, 'b'), (10, 'c')], [(2, 'a'), (5, 'b'), (10, 'c')]),
    ('[a:[b|c]:3]', [(1, 'a'), (2, 'a'), (3, 'a'), (4, 'c'), (5, 'b'), (6, 'c'), (7, 'b'), (8, 'c'), (9, 'b'), (10, 'c')], [(1, 'a'), (2, 'a'), (3, 'a'), (4, 'c'), (5, 'b'), (6, 'c'), (7, 'b'), (8, 'c'), (9, 'b'), (10, 'c')]),
    ('[[a|b]:c:3]', [(1, 'a'), (2, 'b'), (3, 'a'), (4, 'c'), (5, 'c'), (6, 'c'), (7, 'c'), (8, 'c'), (9, 'c'), (10, 'c')], [(1, 'a'), (2, 'b'), (3, 'a'), (4, 'c'), (5, 'c'), (6, 'c'), (7, 'c'), (8, 'c'), (9, 'c'), (10, 'c')]),
    ('a | b [c:2]', [(10, 'a | b [c:2]')], [(10, 'a | b [c:2]')]),
    ('a [b:2] \\', [(10, 'a [b:2] \\')], [(10, 'a [b:2] \\')]),
    ('[\\[a\\]:b:2]', [(2, '\\[a\\]'), (10, 'b')], [(2, '\\[a\\]'), (10, 'b')]),
    ('[a:b:c:3]', [(10, '[a:b:c:3]')], [(10, '[a:b:c:3]')]),
    ('[a: 3 ]', [(3, ''), (10, 'a')], [(3, ''), (10, 'a')]),
    ('[a:b:3x]', [(10, '[a:b:3x]')], [(10, '[a:b:3x]')]),
    ('[a::4]', [(4, 'a'), (10, '')], [(4, 'a'), (10, '')]),
    ('[:b:4]', [(4, ''), (10, 'b')], [(4, ''), (10, 'b')]),
    ('[a|[b:c:3]|d]', [(1, 'a'), (2, 'b'), (3, 'd'), (4, 'a'), (5, 'c'), (6, 'd'), (7, 'a'), (8, 'c'), (9, 'd'), (10, 'a')], [(1, 'a'), (2, 'b'), (3, 'd'), (4, 'a'), (5, 'c'), (6, 'd'), (7, 'a'), (8, 'c'), (9, 'd'), (10, 'a')]),
    ('[a|]', [(1, 'a'), (2, ''), (3, 'a'), (4, ''), (5, 'a'), (6, ''), (7, 'a'), (8, ''), (9, 'a'), (10, '')], [(1, 'a'), (2, ''), (3, 'a'), (4, ''), (5, 'a'), (6, ''), (7, 'a'), (8, ''), (9, 'a'), (10, '')]),
    ('[|]', [(1, ''), (2, ''), (3, ''), (4, ''), (5, ''), (6, ''), (7, ''), (8, ''), (9, ''), (10, '')], [(1, ''), (2, ''), (3, ''), (4, ''), (5, ''), (6, ''), (7, ''), (8, ''), (9, ''), (10, '')]),
    ('(a:[b:c:5])', [(5, '(a:b)'), (10, '(a:c)')], [(5, '(a:b)'), (10, '(a:c)')]),
    ('[a:b:+3]', [(3, 'a'), (10, 'b')], [(3, 'a'), (10, 'b')]),
    ('[(a:b:2)]', [(10, '[(a:b:2)]')], [(10, '[(a:b:2)]')]),
    ('[[a:b:2]]', [(2, '[a]'), (10, '[b]')], [(2, '[a]'), (10, '[b]')]),
    ('[a:b\n:3]', [(3, 'a'), (10, 'b\n')], [(3, 'a'), (10, 'b\n')]),
    ('[a\\|b:c:2]', [(2, 'a\\|b'), (10, 'c')], [(2, 'a\\|b'), (10, 'c')]),
    ('[a:b:2][c:d:3]', [(2, 'ac'), (3, 'bc'), (10, 'bd')], [(2, 'ac'), (3, 'bc'), (10, 'bd')]),
]

FANTASY = (
    "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
    "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
)


@pytest.mark.parametrize("prompt, expected", SCHEDULE_DOCSTRING)
def test_schedule_docstring_examples(prompt, expected):
    assert sched(prompt, minimal=False) == expected
    assert sched(prompt) == merged(expected)


@pytest.mark.parametrize("prompt, expected, expected_old", SCHEDULES_A1111)
def test_schedule_edge_cases(prompt, expected, expected_old):
    assert sched(prompt, minimal=False) == expected
    assert sched(prompt, minimal=False, use_old_scheduling=True) == expected_old
    assert sched(prompt) == merged(expected)


def test_schedule_module_comment_example():
    # The example at the top of A1111's prompt_parser.py, at 100 steps.
    assert sched(FANTASY, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_fractions_versus_step_counts():
    # A decimal point makes a fraction (A1111's current rule); capped at the number of steps.
    assert sched("[a:b:0.25]", 20) == [(5, "a"), (20, "b")]
    assert sched("[a:b:.5]", 20) == [(10, "a"), (20, "b")]
    assert sched("[a:b:5]", 20) == [(5, "a"), (20, "b")]
    assert sched("[a:b:1.0]", 20) == [(20, "a")]  # 1.0 = all the steps
    assert sched("[a:b:50]", 20) == [(20, "a")]  # past the end: capped
    assert sched("[a:b:0]", 20) == [(20, "b")]
    # use_old_scheduling: below 1 is a fraction, 1 and above a step count.
    assert sched("[a:b:1.0]", 20, use_old_scheduling=True) == [(1, "a"), (20, "b")]
    assert sched("[a:b:0.5]", 20, use_old_scheduling=True) == [(10, "a"), (20, "b")]
    assert sched("[a:b:1e999]", 20) == [(20, "a")]  # A1111 overflows here


def test_hires_schedules():
    # A1111's docstring: base 10 steps, hires 10 steps.
    assert sched("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert sched("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert sched("a [b:13] c", 10, hires_steps=10) == [(3, "a  c"), (10, "a b c")]


def test_minimal_merges_only_equal_neighbours():
    assert sched("[a:[b|c]:3]") == [(3, "a")] + [(s, "c" if s % 2 == 0 else "b") for s in range(4, 11)]
    assert sched("[[a:b:5]:c:2]") == [(2, "a"), (10, "c")]
    assert sched("[[a:b:5]:c:2]", minimal=False) == [(2, "a"), (5, "c"), (10, "c")]


def test_several_prompts_and_types():
    out = get_schedules(["x [a:2]", "y", "x [a:2]"], 4)
    assert out == [
        [ScheduledText(2, "x "), ScheduledText(4, "x a")],
        [ScheduledText(4, "y")],
        [ScheduledText(2, "x "), ScheduledText(4, "x a")],
    ]
    assert out[0] is not out[2]  # callers may change one list without touching another


def test_editing_tree():
    assert parse_editing("a [b:c:2] (d [e|f])") == (
        Text("a "),
        Edit((Text("b"),), (Text("c"),), "2"),
        Text(" (d "),
        Alternation(((Text("e"),), (Text("f"),))),
        Text(")"),
    )
    assert parse_editing("[x:.5]") == (Edit(None, (Text("x"),), ".5"),)
    assert parse_editing("a | b") is None
    assert parse_editing("a \\") is None
    assert parse_editing("[" * 5000 + "a:1]") is None  # too deep: used as written, no crash


def test_ambiguous_inputs_take_the_edit():
    # A1111's lark parse of these depends on the process's hash seed; the edit is applied here.
    assert sched("[a:1]]", 4) == [(1, "]"), (4, "a]")]
    assert sched("[a:1]:2]", 4) == [(1, ":2]"), (4, "a:2]")]


def test_schedule_text_at_is_a1111_lookup():
    schedule = get_schedules(["[a:b:3]"], 10)[0]
    assert [schedule_text_at(schedule, s) for s in range(0, 12)] == ["a"] * 4 + ["b"] * 7 + ["a"]


def _random_prompt(rng, steps, depth=0):
    """A random well-formed prompt and the text A1111 renders for it at a given step."""
    parts = []
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if depth > 2 or r < 0.35:
            word = rng.choice(["cat", "a b", " ", "\\(x\\)", "é", "x, y", "1", "BREAK"])
            parts.append((word, lambda s, w=word: w))
        elif r < 0.5:
            inner, f = _random_prompt(rng, steps, depth + 1)
            weight = rng.choice(["", ":1.2", ": 0.5 "])
            parts.append((f"({inner}{weight})", lambda s, f=f, w=weight: f"({f(s)}{w})"))
        elif r < 0.6:
            inner, f = _random_prompt(rng, steps, depth + 1)
            parts.append((f"[{inner}]", lambda s, f=f: f"[{f(s)}]"))
        elif r < 0.85:
            (a, fa), (b, fb) = _random_prompt(rng, steps, depth + 1), _random_prompt(rng, steps, depth + 1)
            if rng.random() < 0.3:
                frac = rng.choice([0.1, 0.25, 0.5, 0.75, 0.9])
                text, before, at = f"[{a}:{b}:{frac}]", fa, int(frac * steps)
            else:
                when = rng.randint(0, steps + 2)
                at = min(steps, when)
                if rng.random() < 0.7:
                    text, before = f"[{a}:{b}:{when}]", fa
                else:
                    text, before = f"[{b}:{when}]", None
            parts.append((text, lambda s, fa=before, fb=fb, at=at: (fa(s) if fa else "") if s <= at else fb(s)))
        else:
            options = [_random_prompt(rng, steps, depth + 1) for _ in range(rng.randint(2, 3))]
            text = "[" + "|".join(o[0] for o in options) + "]"
            parts.append((text, lambda s, fs=[o[1] for o in options]: fs[(s - 1) % len(fs)](s)))
    return "".join(p[0] for p in parts), lambda s: "".join(p[1](s) for p in parts)


def test_random_well_formed_prompts():
    rng = random.Random(1234)
    for _ in range(400):
        steps = rng.choice([1, 2, 5, 12])
        prompt, text_at = _random_prompt(rng, steps)
        schedule = get_schedules([prompt], steps)[0]
        assert schedule[-1].end_at_step == steps
        ends = [e.end_at_step for e in schedule]
        assert ends == sorted(set(ends))
        assert all(x.text != y.text for x, y in zip(schedule, schedule[1:]))
        for s in range(1, steps + 1):
            assert schedule_text_at(schedule, s) == text_at(s), (prompt, s)
        full = get_schedules([prompt], steps, minimal=False)[0]
        assert [(e.end_at_step, e.text) for e in schedule] == merged([(e.end_at_step, e.text) for e in full])


# --- AND ------------------------------------------------------------------------------------

# Expected output from A1111 (get_multicond_prompt_list: \bAND\b split, ":weight" at the end).
AND_A1111 = [
    ('a AND b', [('a', 1.0), (' b', 1.0)]),
    ('a :1.5 AND b:0.5', [('a', 1.5), (' b', 0.5)]),
    ('a AND b : -0.5 ', [('a', 1.0), (' b', -0.5)]),
    ('a,AND,b', [('a,', 1.0), (',b', 1.0)]),
    ('a:x AND b', [('a:x', 1.0), (' b', 1.0)]),
    ('a\nb AND c:2', [('a\nb', 1.0), (' c', 2.0)]),
    ('AND', [('', 1.0), ('', 1.0)]),
    ('a:.5', [('a', 0.5)]),
    ('a:5.', [('a', 5.0)]),
    ('  a  :  2  ', [('  a', 2.0)]),
    ('a AND\nb:3\n', [('a', 1.0), ('\nb', 3.0)]),
    ('a:1:2', [('a:1', 2.0)]),
]


# Prompts A1111 leaves whole, at weight 1: no AND word, no ":number" at the end.
AND_A1111_WHOLE = ['aANDb', 'a and b', 'a: 1.2.3', '(x:1.2)']


@pytest.mark.parametrize("prompt, expected", AND_A1111 + [(p, [(p, 1.0)]) for p in AND_A1111_WHOLE])
def test_split_and(prompt, expected):
    assert pairs(split_and(prompt)) == expected


def test_split_and_types():
    assert split_and("a cat AND a dog :0.5") == [WeightedPrompt("a cat", 1.0), WeightedPrompt(" a dog", 0.5)]


# --- extra networks -------------------------------------------------------------------------

# (prompt, text left, [(kind, items)]) from A1111's extra_networks.parse_prompt.
EXTRA_A1111 = [
    ('a <lora:name:0.8> b', 'a  b', [('lora', ['name', '0.8'])]),
    ('<lora:name:0.8:0.5>', '', [('lora', ['name', '0.8', '0.5'])]),
    ('<hypernet:x:1>', '', [('hypernet', ['x', '1'])]),
    ('<lora:n:te=0.5:unet=1>', '', [('lora', ['n', 'te=0.5', 'unet=1'])]),
    ('<lora:a>', '', [('lora', ['a'])]),
    ('<lora:>', '<lora:>', []),
    ('<lo-ra:x>', '<lo-ra:x>', []),
    ('<lora:a:1><lora:b:2>', '', [('lora', ['a', '1']), ('lora', ['b', '2'])]),
    ('<lora:path/with space:1>', '', [('lora', ['path/with space', '1'])]),
    ('<a:<b:c>>', '>', [('a', ['<b', 'c'])]),
    ('x, <lora:a:1>, y', 'x, , y', [('lora', ['a', '1'])]),
]


@pytest.mark.parametrize("prompt, text, tags", EXTRA_A1111)
def test_extra_networks(prompt, text, tags):
    left, found = extract_extra_networks(prompt)
    assert left == text
    assert [(t.kind, t.items) for t in found] == tags


def test_extra_network_tag_fields():
    _, (tag,) = extract_extra_networks("<lora:name:0.8:te=0.5:unet=1>")
    assert tag == ExtraNetworkTag("lora", "name", ["0.8", "te=0.5", "unet=1"])
    assert tag.positional == ["name", "0.8"]
    assert tag.named == {"te": "0.5", "unet": "1"}


# --- all together ---------------------------------------------------------------------------


def test_parse_prompt_order():
    parsed = parse_prompt("<lora:x:0.5>a [cat:dog:2] AND b <hypernet:h:1>:0.3", 4)
    assert parsed.text == "a [cat:dog:2] AND b :0.3"
    assert [(t.kind, t.name, t.args) for t in parsed.extra_networks] == [("lora", "x", ["0.5"]), ("hypernet", "h", ["1"])]
    assert [(s.text, s.weight) for s in parsed.subprompts] == [("a [cat:dog:2]", 1.0), (" b", 0.3)]
    assert parsed.subprompts[0].schedule == [ScheduledText(2, "a cat"), ScheduledText(4, "a dog")]
    assert parsed.texts_at(0) == [("a cat", 1.0), (" b", 0.3)]
    assert parsed.texts_at(3) == [("a dog", 1.0), (" b", 0.3)]
    assert parsed.unique_texts == ["a cat", "a dog", " b"]


def test_parse_prompt_tag_colons_do_not_reach_the_editing_grammar():
    # A tag inside an edit: it is taken out first, so the edit still parses.
    parsed = parse_prompt("[a <lora:x:1>:b:2]", 4)
    assert parsed.subprompts[0].schedule == [ScheduledText(2, "a "), ScheduledText(4, "b")]


def test_parse_prompt_negative():
    parsed = parse_prompt("<lora:x:1> ugly AND bad:2", 4, negative=True)
    assert parsed.extra_networks == []
    assert [(s.text, s.weight) for s in parsed.subprompts] == [("<lora:x:1> ugly AND bad:2", 1.0)]


def test_module_docstring_example():
    result = doctest.testmod(parser_module)
    assert result.failed == 0 and result.attempted > 0


def test_no_torch():
    code = "import sys, core.prompts; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
