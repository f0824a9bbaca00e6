"""Self-Instruct's heuristic filters: each returns the reason an instruction is dropped, or None.

They judge text by Unicode, not ASCII: words are counted by the project's text-unit rule
(`metrics.text_units`, so a Chinese instruction has one word per character, not one per space), leading
punctuation and symbols by Unicode category, and `non_text` means no letter of any script. The two word
lists (tasks a text-only model cannot do, and "write a program") exist for the languages in
`FILTER_LANGUAGES`; an instruction in another language passes them unchecked, which the generation metadata
can say by naming these languages.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from frd_assets.core.metrics.text_units import TOKENIZER_SIGNATURE, words

FILTER_LANGUAGES = ("en", "ru", "zh")  # the languages BLACKLIST and WRITE_A_PROGRAM cover

# From Self-Instruct / Alpaca: tasks a text-only model cannot do (images, files, maps, drawing, browsing,
# sound), as regular expressions per language.
# - English: Alpaca's words, matched whole.
# - Russian inflects, so each entry is a stem with the endings it takes, matched from a word start: the
#   Russian for image, picture, graph, file, map, draw, go to, video, audio, music, flowchart, diagram.
# - Chinese has no spaces, so each entry is matched anywhere; single characters are avoided on purpose
#   ("画" alone is in 计划, a plan; "图" in 图书馆, a library), the words below are the ones that name the thing.
BLACKLIST: dict[str, tuple[str, ...]] = {
    "en": tuple(
        rf"\b{re.escape(w)}\b"
        for w in (
            "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
            "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
        )
    ),
    "ru": (
        r"\bизображени[еяюйиемх]\w*",  # изображение, изображения, изображением ...
        r"\bкартин(?:к|ок)\w*",  # картинка, картинки, картинок
        r"\bфото(?:графи\w*)?\b",  # фото, фотография
        r"\bграфик\w*",  # график, графика, графики
        r"\bрисун(?:ок|к)\w*",  # рисунок, рисунка
        r"\bфайл\w*",  # файл, файла, файлы
        r"\bкарт(?:а|ы|е|у|ой|ам|ами|ах)?\b",  # карта (a map) in its cases, not картофель or картина
        r"\bнарису\w*|\bрисова\w*|\bрисуй\w*|\bначерти\w*",  # нарисуй, рисовать, рисуйте, начерти
        r"\bперейди\w*|\bзайди\w*",  # "go to": перейдите на сайт, зайди на страницу
        r"\bвидео\w*|\bаудио\w*",
        r"\bмузык(?:а|и|у|е|ой)\b",  # музыка, not музыкальный (musical)
        r"\bблок-схем\w*",
        r"\bдиаграмм\w*",
    ),
    "zh": (
        "图片", "图像", "照片", "图表", "画图", "画出", "画一", "绘制", "绘图", "文件", "地图", "视频",
        "音频", "音乐", "流程图", "示意图", "打开网站", "访问网站", "打开网页", "前往",
    ),
}
_BLACKLIST_RE = re.compile("|".join(p for patterns in BLACKLIST.values() for p in patterns), re.IGNORECASE)

# Alpaca drops instructions that start "write a program": code that must run cannot be checked here.
WRITE_A_PROGRAM: dict[str, str] = {
    "en": r"write a program",
    "ru": r"напиши(?:те)? (?:\w+ )?программу",  # напиши программу, напишите простую программу
    "zh": r"请?(?:编写|写)(?:一个|一段)?程序",  # 编写程序, 写一个程序, 请编写一段程序
}
_WRITE_A_PROGRAM_RE = re.compile("|".join(f"(?:{p})" for p in WRITE_A_PROGRAM.values()), re.IGNORECASE)


@dataclass(frozen=True)
class FilterConfig:
    min_words: int = 3  # words by the text-unit rule: a Chinese character is one
    max_words: int = 150

    def __post_init__(self) -> None:
        if self.min_words < 1:
            raise ValueError(f"min_words must be >= 1, got {self.min_words}")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) must be >= min_words ({self.min_words})")


def filters_signature(config: FilterConfig, *, novelty_threshold: float) -> str:
    """What the filters were, for the generation's metadata: how words were counted, the limits, which
    languages the word lists cover (an instruction in another language passes them), and the novelty cut."""
    return (
        f"self_instruct_filters|words:{TOKENIZER_SIGNATURE}|min_words:{config.min_words}"
        f"|max_words:{config.max_words}|word_lists:{','.join(FILTER_LANGUAGES)}"
        f"|novelty:rouge_l>{novelty_threshold:g}"
    )


def instruction_reject_reason(instruction: str, *, truncated: bool, config: FilterConfig) -> str | None:
    """The first filter an instruction fails, by name, in the order Alpaca applies them."""
    if truncated:
        return "truncated"
    n_words = len(words(instruction))
    if n_words < config.min_words:
        return "too_short"
    if n_words > config.max_words:
        return "too_long"
    if _BLACKLIST_RE.search(instruction):
        return "blacklisted_word"
    if _WRITE_A_PROGRAM_RE.match(instruction.lower()):
        return "write_a_program"
    # P* and S*: "-", "«", "【" and "$" alike; string.punctuation, Alpaca's test, is the ASCII part of these.
    if unicodedata.category(instruction[0])[0] in "PS":
        return "leading_punctuation"
    if not any(c.isalpha() for c in instruction):  # str.isalpha is true for a letter of any script
        return "non_text"
    return None
