import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score.rouge_scorer import RougeScorer

from frd_assets.core.metrics.rouge_l import NoveltyIndex, max_rouge_l_f, rouge_l, rouge_l_f

SCORER = RougeScorer(["rougeL"])


def reference(target: str, prediction: str) -> float:
    return SCORER.score(target, prediction)["rougeL"].fmeasure


CASES = [  # (target, prediction): hand-made, covering what rouge-score's tokenizer drops
    ("the cat sat on the mat", "a cat sat on a mat"),
    ("", "anything"),
    ("!!! ??", "..."),
    ("你好世界", "你好世界"),  # no [a-z0-9] characters: zero tokens, so 0.0 even for identical text
    ("Hello, World!!", "hello world"),
    ("a b c d", "d c b a"),
    ("Write a poem about the sea.", "Write a poem about the sea."),
    ("Kelvin sign \u212a", "kelvin sign k"),
    # Found by benchmarks/novelty_filter.py: 2*LCS/(m+n) gives 0.7, rouge-score's 2PR/(P+R) 0.7000000000000001.
    ("Convert the in from Celsius to Fahrenheit and show the formula Write short, friendly reminder asking a "
     "colleague to send the quarterly report by Friday.",
     "Write a short, friendly reminder asking a colleague to send the quarterly report by Friday."),
]


@pytest.mark.parametrize("target, prediction", CASES)
def test_matches_rouge_score_on_cases(target, prediction):
    assert rouge_l_f(target, prediction) == reference(target, prediction)  # bit for bit


WORDS = st.sampled_from(["the", "cat", "sat", "on", "mat", "a", "dog", "über", "日本", "42", "x-y", "!", ""])
TEXT = st.one_of(st.text(max_size=60), st.lists(WORDS, max_size=25).map(" ".join))


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT)
def test_matches_rouge_score_on_any_strings(target, prediction):
    assert rouge_l_f(target, prediction) == reference(target, prediction)  # bit for bit


@settings(max_examples=20, deadline=None)
@given(
    st.lists(WORDS, min_size=300, max_size=600).map(" ".join), st.lists(WORDS, min_size=300, max_size=600).map(" ".join)
)
def test_matches_rouge_score_on_long_strings(target, prediction):
    assert rouge_l_f(target, prediction) == reference(target, prediction)  # bit for bit


def test_precision_and_recall_match_too():
    ours = rouge_l("the cat sat", "the cat sat on the mat")
    ref = SCORER.score("the cat sat", "the cat sat on the mat")["rougeL"]
    assert ours == pytest.approx((ref.precision, ref.recall, ref.fmeasure))


@settings(max_examples=50, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=8), st.lists(TEXT, max_size=8))
def test_batch_max_equals_max_of_pairs(candidates, pool):
    expected = [max((reference(p, c) for p in pool), default=0.0) for c in candidates]
    assert max_rouge_l_f(candidates, pool).tolist() == expected


def test_novelty_index_reports_the_closest_text():
    index = NoveltyIndex(["Write a poem about the sea.", "List three fruits."])
    f, closest = index.max_f("Write a short poem about the sea.")
    assert closest == "Write a poem about the sea."
    assert f == pytest.approx(reference("Write a poem about the sea.", "Write a short poem about the sea."))
