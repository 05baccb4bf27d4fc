"""The one reader of rule text: every spelling real tools print gives the same answers."""

import pytest

from svcdoctor.model import rule_text

SAVE_C = '[35:2100] -A KUBE-SVC-X -m comment --comment "default/web:http -> 10.244.1.5:80" -m statistic ' \
         '--mode random --probability 0.33333333349 -j KUBE-SEP-AAA'
S_V = '-A KUBE-SVC-X -m comment --comment "default/web:http -> 10.244.1.5:80" -m statistic --mode random ' \
      '--probability 0.33333333349 -c 35 2100 -j KUBE-SEP-AAA'
PLAIN = '-A KUBE-SVC-X -m comment --comment "default/web:http -> 10.244.1.5:80" -m statistic --mode random ' \
        '--probability 0.33333333349 -j KUBE-SEP-AAA'


@pytest.mark.parametrize("line", [SAVE_C, S_V, PLAIN])
def test_every_spelling_gives_the_same_target_option_and_comment(line):
    assert rule_text.target(line) == ("KUBE-SEP-AAA", False)
    assert rule_text.option(line, "--probability") == "0.33333333349"
    assert rule_text.comment(line) == "default/web:http -> 10.244.1.5:80"
    assert rule_text.strip_counters(line) == PLAIN


def test_counters_of_both_spellings():
    assert rule_text.counters(SAVE_C) == (35, 2100)
    assert rule_text.counters(S_V) == (35, 2100)
    assert rule_text.counters(PLAIN) is None
    assert rule_text.packets(PLAIN) == 0
    assert rule_text.split_counted_line(SAVE_C) == (PLAIN, 35, 2100)


def test_escaped_quotes_in_a_comment_and_a_jump_inside_it():
    line = r'-A KUBE-SERVICES -m comment --comment "a \"quoted\" -j FAKE" -d 10.0.0.1/32 -j KUBE-SVC-Y'
    assert rule_text.comment(line) == 'a "quoted" -j FAKE'
    assert rule_text.target(line) == ("KUBE-SVC-Y", False)
    assert rule_text.option(line, "-d") == "10.0.0.1/32"
    assert rule_text.tokenize(line)[5] == 'a "quoted" -j FAKE'


def test_goto_and_unquoted_comment():
    line = "-A KUBE-SERVICES -m comment --comment web -g KUBE-EXT-Z"
    assert rule_text.target(line) == ("KUBE-EXT-Z", True)
    assert rule_text.comment(line) == "web"
    assert rule_text.target("-A KUBE-MARK-MASQ") == (None, False)


def test_addresses_and_host_port():
    assert rule_text.address("10.96.0.1/32") == "10.96.0.1"
    assert rule_text.address("fd00:0::1/128") == "fd00::1"
    assert rule_text.network("10.0.0.1/24") == "10.0.0.0/24"
    assert rule_text.host_port("fd00::1", 80) == "[fd00::1]:80"
    assert rule_text.host_port("10.0.0.1", "80") == "10.0.0.1:80"
    assert rule_text.split_host_port("[fd00::1]:80") == ("fd00::1", "80")
    assert rule_text.split_host_port("10.0.0.1:80") == ("10.0.0.1", "80")
    assert rule_text.hex_mark("0x4000/0x4000") == 0x4000


def test_words_drop_counters_of_both_spellings():
    assert rule_text.words(S_V) == rule_text.words(SAVE_C) == rule_text.tokenize(PLAIN)
    assert rule_text.option_of_words(rule_text.words("-A X ! -s 10.0.0.0/8 -j Y"), "-s") == ("10.0.0.0/8", True)
