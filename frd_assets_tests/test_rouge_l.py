import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score.rouge_scorer import RougeScorer

from frd_assets.core.metrics.rouge_l import NoveltyIndex, max_rouge_l_f, rouge_l, rouge_l_f
from frd_assets.core.metrics.text_units import RougeScoreTokenizer

SCORER = RougeScorer(["rougeL"])
UNICODE_SCORER = RougeScorer(["rougeL"], tokenizer=RougeScoreTokenizer())


def reference(target: str, prediction: str) -> float:
    return SCORER.score(target, prediction)["rougeL"].fmeasure


def unicode_reference(target: str, prediction: str) -> float:
    return UNICODE_SCORER.score(target, prediction)["rougeL"].fmeasure


CASES = [  # (target, prediction): hand-made; letters and digits all ASCII, so rouge-score's own tokenizer applies
    ("the cat sat on the mat", "a cat sat on a mat"),
    ("", "anything"),
    ("!!! ??", "..."),
    ("“Quoted” — text…", "quoted text"),  # non-ASCII punctuation separates under both rules
    ("Hello, World!!", "hello world"),
    ("a b c d", "d c b a"),
    ("Write a poem about the sea.", "Write a poem about the sea."),
    # Found by benchmarks/novelty_filter.py: 2*LCS/(m+n) gives 0.7, rouge-score's 2PR/(P+R) 0.7000000000000001.
    ("Convert the in from Celsius to Fahrenheit and show the formula Write short, friendly reminder asking a "
     "colleague to send the quarterly report by Friday.",
     "Write a short, friendly reminder asking a colleague to send the quarterly report by Friday."),
]


@pytest.mark.parametrize("target, prediction", CASES)
def test_matches_rouge_score_on_cases(target, prediction):
    assert rouge_l_f(target, prediction) == reference(target, prediction)  # bit for bit


# Text on the rouge-score side of the rule: any ASCII, plus non-ASCII punctuation, symbols and spaces (which
# both rules read as separators). A letter or digit outside ASCII would take the text to the Unicode rule.
ASCII_TEXT_CHARS = st.one_of(st.characters(max_codepoint=127), st.characters(categories=["P", "S", "Z"]))
WORDS = st.sampled_from(["the", "cat", "sat", "on", "mat", "a", "dog", "42", "x-y", "!", "—", ""])
TEXT = st.one_of(st.text(ASCII_TEXT_CHARS, max_size=60), st.lists(WORDS, max_size=25).map(" ".join))


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


UNICODE_CASES = [  # (target, prediction, expected F): where rouge-score's own tokenizer sees no word at all
    ("你好世界", "你好世界", 1.0),  # rouge-score: 0.0, no [a-z0-9] character
    ("Напиши короткое стихотворение о море.", "напиши короткое стихотворение о море", 1.0),
    ("Écris un poème sur l\u2019été.", "Ecris un poème sur l\u2019été.", 5 / 6),  # É is not E: one word differs
    ("Kelvin sign \u212a", "kelvin sign k", 1.0),  # NFKC maps the Kelvin sign to K, as rouge-score's lower() does
    ("写一首关于秋天的诗", "写一首关于春天的诗", 8 / 9),  # one character of nine differs
]


@pytest.mark.parametrize("target, prediction, expected", UNICODE_CASES)
def test_unicode_text_scores_by_its_words(target, prediction, expected):
    assert rouge_l_f(target, prediction) == pytest.approx(expected)
    assert rouge_l_f(target, prediction) == unicode_reference(target, prediction)


UNICODE_WORDS = st.sampled_from(["the", "über", "Über", "日本", "語", "море", "Море", "café", "cafe\u0301", "42", "!"])
UNICODE_TEXT = st.one_of(st.text(max_size=60), st.lists(UNICODE_WORDS, max_size=25).map(" ".join))


@settings(max_examples=300, deadline=None)
@given(UNICODE_TEXT, UNICODE_TEXT)
def test_any_text_matches_rouge_score_given_the_same_words(target, prediction):
    assert rouge_l_f(target, prediction) == unicode_reference(target, prediction)  # bit for bit


def test_novelty_index_reports_the_closest_text():
    index = NoveltyIndex(["Write a poem about the sea.", "List three fruits."])
    f, closest = index.max_f("Write a short poem about the sea.")
    assert closest == "Write a poem about the sea."
    assert f == pytest.approx(reference("Write a poem about the sea.", "Write a short poem about the sea."))
