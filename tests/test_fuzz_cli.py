"""Mangled dumps (as customers paste them: cut, shuffled, garbled) never give a traceback or an internal error:
every command either works or says in one line what is wrong, with the contract's exit code."""

import random

import pytest

from cli_run import run_cli
from kube_proxy_cases import iter_cases
from svcdoctor.collect.bundle import demo_bundle_path

SEED_TEXTS = [
    (demo_bundle_path() / "nodes" / "myk8s-worker3" / "iptables.txt").read_text(),
    next(c for c in iter_cases() if c.name.startswith("01-")).restore_text,
    next(c for c in iter_cases() if c.name.startswith("03-")).restore_text,
]
COMMANDS = [
    ["explain", "svc-local"],
    ["explain", "svc2", "-n", "ns2", "-o", "json"],
    ["trace", "--dst", "172.18.0.5:31437", "--src", "172.18.0.100", "-o", "json"],
    ["check", "-o", "json"],
    ["nodes"],
    ["graph", "--format", "mermaid"],
]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    kind = rng.randrange(8)
    if kind == 0:  # cut anywhere
        return text[: rng.randrange(len(text))]
    if kind == 1:  # drop lines
        return "".join(line for line in lines if rng.random() > 0.2)
    if kind == 2:  # shuffle some lines
        i, j = sorted(rng.sample(range(len(lines)), 2))
        lines[i:j] = rng.sample(lines[i:j], j - i)
        return "".join(lines)
    if kind == 3:  # garble characters
        chars = list(text)
        for _ in range(rng.randrange(1, 40)):
            chars[rng.randrange(len(chars))] = rng.choice('"[]:!- \\x*#0123456789')
        return "".join(chars)
    if kind == 4:  # duplicate lines
        i = rng.randrange(len(lines))
        return "".join(lines[:i] + lines[i:i + 5] * 3 + lines[i:])
    if kind == 5:  # unbalanced quotes in a comment
        return text.replace('--comment "', '--comment "unterminated ', rng.randrange(1, 5))
    if kind == 6:  # counters gone wrong
        return text.replace("[0:0]", rng.choice(["[x:0]", "[-1:0]", "[0:0", "[99999999999999999999:1]"]), 3)
    return text.replace("-j ", rng.choice(["-j", "-g ", "-j  ", "--jump "]), 5)


CASES = [(seed, n) for seed in range(len(SEED_TEXTS)) for n in range(25)]


@pytest.mark.parametrize("seed,n", CASES, ids=[f"text{s}-mutation{n}" for s, n in CASES])
def test_mangled_dump_never_crashes(tmp_path, seed, n):
    rng = random.Random(seed * 1000 + n)
    path = tmp_path / "node.txt"
    path.write_text(mutate(SEED_TEXTS[seed], rng))
    for command in COMMANDS:
        r = run_cli(*command, "--bundle", str(path))
        assert r.exit_code in (0, 1, 2, 4), (command, r.exit_code, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, (command, r.stderr)
        if r.exit_code == 2:
            assert r.stderr.count("svcdoctor: error:") == 1


def scramble(value, rng: random.Random):
    """Replace one value deep in a JSON document by one of another type."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        if rng.random() < 0.3:
            value[key] = rng.choice([None, "x", 7, [], {}, True, -1, "10.0.0.1:80"])
        else:
            scramble(value[key], rng)
    elif isinstance(value, list) and value:
        i = rng.randrange(len(value))
        if rng.random() < 0.3:
            value[i] = rng.choice([None, "x", 7, [], {}])
        else:
            scramble(value[i], rng)
    return value


@pytest.mark.parametrize("n", range(40))
def test_mangled_api_objects_never_crash(tmp_path, n):
    import json
    import shutil

    rng = random.Random(n)
    bundle = tmp_path / "b"
    shutil.copytree(demo_bundle_path(), bundle)
    name = rng.choice(["services", "endpointslices", "pods", "nodes"])
    path = bundle / "cluster" / f"{name}.json"
    doc = json.loads(path.read_text())
    for _ in range(rng.randrange(1, 6)):
        scramble(doc, rng)
    path.write_text(json.dumps(doc))
    for command in (["explain", "svc-local", "-o", "json"], ["check", "-o", "json"], ["nodes"]):
        r = run_cli(*command, "--bundle", str(bundle))
        assert r.exit_code in (0, 1, 2, 4), (command, r.exit_code, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, (command, name, r.stderr)
