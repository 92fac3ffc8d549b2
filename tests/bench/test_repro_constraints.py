"""The verifiable checkers of bench/repro (constraints.py's table), each with true and false cases,
and the deterministic train / held-out split (bench/repro/data.py)."""

from __future__ import annotations

import pytest

from bench.repro import constraints as c
from bench.repro.data import split

CASES = [
    # kind, arg, response, strict, loose
    ("lowercase", None, "all small here.", True, True),
    ("lowercase", None, "One capital.", False, False),
    ("lowercase", None, "123 !!", False, False),  # no letter at all is no lowercase answer
    ("max_words", 5, "one two three four", True, True),
    ("max_words", 5, "one two three four five", False, False),
    ("max_words", 3, "", True, True),
    ("no_commas", None, "no commas here.", True, True),
    ("no_commas", None, "a, b", False, False),
    ("no_commas", None, "a，b", False, False),
    ("ends_with", "That is all.", "Paris is the capital. That is all.", True, True),
    ("ends_with", "That is all.", "Paris is the capital. That is all.  \n", True, True),
    ("ends_with", "That is all.", "That is all. Paris.", False, False),
    ("ends_with", "That is all.", "Paris.\nThat is all.\n(Note: short.)", False, True),
    ("quoted", None, '"Hello there."', True, True),
    ("quoted", None, 'Hello "there"', False, False),
    ("quoted", None, '"', False, False),
    ("quoted", None, 'Sure:\n"Hello there."', False, True),
    ("bullets", 3, "* a\n* b\n- c", True, True),
    ("bullets", 3, "* a\n* b", False, False),
    ("bullets", 2, "* a\n* b\n* c", False, True),  # loose: the last line dropped leaves two
    ("bullets", 2, "**Bold** intro\n*not a bullet*", False, False),
    ("keyword", "time", "It takes Time to learn.", True, True),
    ("keyword", "time", "Timely answers sometimes help.", False, False),
    ("starts_with", "Sure", "Sure, here you go.", True, True),
    ("starts_with", "Sure", '"sure!" said I.', True, True),
    ("starts_with", "Sure", "Surely not.", False, False),
    ("starts_with", "Sure", "", False, False),
    ("starts_with", "Sure", "**Sure**, here it is.", True, True),
    ("starts_with", "Here", "Okay.\nHere is the list.", False, True),
]


@pytest.mark.parametrize("kind,arg,response,strict,loose", CASES)
def test_checker(kind, arg, response, strict, loose):
    constraint = c.Constraint(kind, arg)
    assert constraint.check(response) is strict
    assert constraint.check_loose(response) is loose


def test_every_kind_has_a_true_and_a_false_case():
    for kind in c.KINDS:
        results = {strict for k, _, _, strict, _ in CASES if k == kind}
        assert results == {True, False}, kind


def test_emphasis_is_removed_loosely_but_bullets_stay():
    assert not c.Constraint("no_commas").check_loose("a, b")
    assert c.Constraint("lowercase").check_loose("**note**: all small") is True
    assert c.Constraint("bullets", 2).check_loose("* **one**\n* _two_") is True


def test_reward_is_the_fraction_satisfied():
    cons = [c.Constraint("lowercase"), c.Constraint("no_commas"), c.Constraint("keyword", "time")]
    assert c.reward("no time, sorry", cons) == pytest.approx(2 / 3)
    assert c.reward("No time sorry", cons) == pytest.approx(2 / 3)
    assert c.reward("no time sorry", cons) == 1.0
    assert c.reward("NOPE, NOPE", cons) == 0.0
    with pytest.raises(ValueError):
        c.reward("x", [])


def test_attach_is_deterministic_compatible_and_varied():
    seen = set()
    for i in range(300):
        cons = c.attach(str(i))
        assert cons == c.attach(str(i))
        assert len(cons) == 2 and cons[0].kind != cons[1].kind
        assert frozenset(x.kind for x in cons) not in c.CONFLICTS
        for x in cons:
            x.sentence()  # every kind renders
        seen.update(x.kind for x in cons)
    assert seen == set(c.KINDS)
    text = c.with_constraints("Name a color.", c.attach("7"))
    assert text.startswith("Name a color.\n\n") and all(x.sentence() in text for x in c.attach("7"))


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_split_is_disjoint_deterministic_and_seeded(seed):
    train, held = split(805, held_out=100, seed=seed)
    assert len(held) == 100 and len(train) == 705
    assert not set(train) & set(held)
    assert sorted(train + held) == list(range(805))
    assert (train, held) == split(805, held_out=100, seed=seed)
    assert split(805, held_out=100, seed=seed + 1)[1] != held
