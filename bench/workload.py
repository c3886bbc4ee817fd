"""A realistic evaluation workload: a few hundred small Python programs with test assertions, the shape of a
code-eval benchmark (a function, then asserts on it), generated deterministically from a seed.

Each program prints ``ok`` when its assertions hold; ``programs(n)`` returns (name, code) pairs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

EXPECTED_STDOUT = "ok\n"


def _fib(r: random.Random) -> str:
    n = r.randint(10, 25)
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return f"""
from functools import lru_cache

@lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

assert fib({n}) == {a}
assert [fib(i) for i in range(6)] == [0, 1, 1, 2, 3, 5]
print("ok")
"""


def _primes(r: random.Random) -> str:
    limit = r.randint(200, 3000)
    count = sum(1 for k in range(2, limit) if all(k % d for d in range(2, int(k**0.5) + 1)))
    return f"""
def primes_below(n):
    sieve = [True] * n
    sieve[0:2] = [False, False]
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = [False] * len(sieve[i * i::i])
    return [i for i, p in enumerate(sieve) if p]

assert len(primes_below({limit})) == {count}
assert primes_below(20) == [2, 3, 5, 7, 11, 13, 17, 19]
print("ok")
"""


def _strings(r: random.Random) -> str:
    words = ["".join(r.choice("abcdefghij") for _ in range(r.randint(3, 8))) for _ in range(r.randint(5, 20))]
    text = " ".join(words)
    return f"""
def word_stats(text):
    counts = {{}}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    longest = max(text.split(), key=len)
    return counts, longest, text[::-1]

counts, longest, backwards = word_stats({text!r})
assert sum(counts.values()) == {len(words)}
assert len(longest) == {max(len(w) for w in words)}
assert backwards[::-1] == {text!r}
assert "{words[0]}".upper().lower() == "{words[0]}"
print("ok")
"""


def _sorting(r: random.Random) -> str:
    values = [r.randint(-1000, 1000) for _ in range(r.randint(10, 200))]
    return f"""
def merge_sort(xs):
    if len(xs) <= 1:
        return xs
    mid = len(xs) // 2
    left, right = merge_sort(xs[:mid]), merge_sort(xs[mid:])
    out = []
    while left and right:
        out.append(left.pop(0) if left[0] <= right[0] else right.pop(0))
    return out + left + right

data = {values!r}
assert merge_sort(data) == sorted(data)
assert merge_sort([]) == []
print("ok")
"""


def _json(r: random.Random) -> str:
    record = {"id": r.randint(1, 10**6), "tags": [f"t{i}" for i in range(r.randint(0, 5))],
              "score": round(r.random() * 100, 3), "nested": {"ok": r.random() < 0.5}}
    return f"""
import json

record = {record!r}
text = json.dumps(record, sort_keys=True)
assert json.loads(text) == record
assert text.startswith("{{")
print("ok")
"""


def _regex(r: random.Random) -> str:
    n = r.randint(1, 30)
    emails = [f"user{i}@example.org" for i in range(n)]
    text = "; ".join(emails)
    return f"""
import re

found = re.findall(r"[a-z0-9]+@[a-z]+\\.org", {text!r})
assert len(found) == {n}
assert re.sub(r"\\d", "#", "a1b22") == "a#b##"
print("ok")
"""


def _classes(r: random.Random) -> str:
    pushes = [r.randint(0, 99) for _ in range(r.randint(1, 50))]
    return f"""
from dataclasses import dataclass, field

@dataclass
class Stack:
    items: list = field(default_factory=list)

    def push(self, x):
        self.items.append(x)

    def pop(self):
        return self.items.pop()

s = Stack()
for x in {pushes!r}:
    s.push(x)
assert s.pop() == {pushes[-1]}
assert len(s.items) == {len(pushes) - 1}
print("ok")
"""


def _math(r: random.Random) -> str:
    a, b = r.randint(1, 10**6), r.randint(1, 10**6)
    import math

    return f"""
import math
from fractions import Fraction

assert math.gcd({a}, {b}) == {math.gcd(a, b)}
assert Fraction({a}, {b}) * {b} == {a}
assert abs(math.sqrt({a}) ** 2 - {a}) < 1e-6
print("ok")
"""


GENERATORS: tuple[Callable[[random.Random], str], ...] = (
    _fib, _primes, _strings, _sorting, _json, _regex, _classes, _math)


def programs(n: int, seed: int = 7) -> list[tuple[str, str]]:
    """``n`` programs, cycling through the kinds, each with its own random parameters."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        make = GENERATORS[i % len(GENERATORS)]
        out.append((f"{make.__name__.strip('_')}-{i}", make(r).lstrip()))
    return out
