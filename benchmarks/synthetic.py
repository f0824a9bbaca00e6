"""Deterministic benchmark data from the project's own sample seed and lists written here (no downloads)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from frd_assets.core.records import parse_seed
from frd_assets.core.seeds import SAMPLE_SEED, sample_seed_bytes


def seed_instructions() -> list[str]:
    return list(dict.fromkeys(r.instruction for r in parse_seed(sample_seed_bytes(), SAMPLE_SEED)))


def make_candidates(
    seeds: list[str], n: int, seed: int = 0, *, split: Callable[[str], list[str]] = str.split,
    join: Callable[[list[str]], str] = " ".join,
) -> list[str]:
    """Deterministic recombinations of the seed instructions: spliced halves, dropped and swapped words, and
    words drawn from the whole seed vocabulary, so some candidates copy the pool and others are new.
    split and join: how a text becomes units and back (Chinese: list and "".join, one unit per character)."""
    rng = random.Random(seed)
    words = [w for s in seeds for w in split(s)]
    out = []
    for _ in range(n):
        a, b = rng.sample(seeds, 2)
        wa, wb = split(a), split(b)
        mix = wa[: rng.randint(1, len(wa))] + wb[rng.randint(0, len(wb) - 1):]
        for _ in range(rng.randint(0, 8)):
            op = rng.random()
            i = rng.randrange(len(mix))
            if op < 0.4:
                mix[i] = rng.choice(words)
            elif op < 0.7 and len(mix) > 3:
                del mix[i]
            else:
                mix.insert(i, rng.choice(words))
        out.append(join(mix))
    return out


# Written for the benchmarks (not translations of the sample seed): everyday tasks of the kind a Russian or
# Chinese seed holds, so the mixed novelty run has realistic word and character overlap.
RUSSIAN_INSTRUCTIONS = [
    "Придумай три вопроса для викторины о Солнечной системе.",
    "Объясни простыми словами, почему зимой рано темнеет.",
    "Составь список покупок для ужина на четверых.",
    "Предложи название для пекарни в маленьком городе.",
    "Как вежливо отказаться от приглашения на день рождения коллеги?",
    "Найди ошибку в предложении и исправь её.",
    "Сколько минут в трёх с половиной часах?",
    "Опиши осенний лес в двух предложениях.",
    "Перескажи сюжет сказки о Колобке для пятилетнего ребёнка.",
    "Напиши короткое поздравление с новосельем для соседей.",
    "Объясни разницу между погодой и климатом на простом примере.",
    "Дай три совета, как быстрее заснуть после тяжёлого дня.",
    "Переведи фразу на английский язык и объясни выбор слов.",
    "Составь план подготовки к экзамену по истории на неделю.",
    "Предложи пять идей для выходных с детьми в дождливую погоду.",
    "Расставь знаки препинания в предложении и поясни правило.",
    "Сравни поезд и самолёт для поездки из Москвы в Казань.",
    "Придумай слоган для магазина велосипедов.",
    "Объясни, зачем растениям нужен свет.",
    "Напиши вежливое письмо управляющей компании о протекающей крыше.",
    "Какие продукты богаты железом? Назови пять.",
    "Сократи текст до одного предложения, сохранив главную мысль.",
    "Определи, положительный или отрицательный этот отзыв о фильме.",
    "Составь расписание тренировок для начинающего бегуна.",
]

CHINESE_INSTRUCTIONS = [
    "为一家新开的面包店想三个店名。",
    "用简单的话解释为什么冬天白天比较短。",
    "列出准备一次周末露营需要带的五样东西。",
    "把下面这句话改写得更礼貌一些。",
    "给一位刚毕业的程序员写三条职场建议。",
    "判断下面这句话的情感是积极还是消极。",
    "计算一下：一本书打八折后是四十元，原价是多少？",
    "推荐两本适合中学生阅读的科普书，并说明理由。",
    "写一段话介绍你最喜欢的季节。",
    "用三句话概括龟兔赛跑的故事和它的道理。",
    "解释一下天气和气候有什么不同。",
    "给出三个帮助入睡的小建议。",
    "为朋友的生日写一段简短的祝福语。",
    "比较坐高铁和坐飞机从北京去上海的优缺点。",
    "制定一个为期一周的英语单词复习计划。",
    "说明植物为什么需要阳光。",
    "把这段话缩写成一句话，保留主要意思。",
    "列举五种富含蛋白质的食物。",
    "为一家自行车店想一句广告语。",
    "给物业写一封礼貌的邮件，反映楼道灯坏了。",
    "解释成语“画蛇添足”的意思并造一个句子。",
    "为初学跑步的人安排一周的训练计划。",
    "判断这条商品评论是好评还是差评。",
    "用小学生能听懂的话解释什么是地震。",
]


def mixed_russian_chinese(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(seed instructions, n candidates): Russian recombined word by word, Chinese character by character,
    shuffled together, so one pool holds both scripts as a bilingual seed's would."""
    russian = make_candidates(RUSSIAN_INSTRUCTIONS, n // 2, seed)
    chinese = make_candidates(CHINESE_INSTRUCTIONS, n - n // 2, seed + 1, split=list, join="".join)
    candidates = russian + chinese
    random.Random(seed).shuffle(candidates)
    return RUSSIAN_INSTRUCTIONS + CHINESE_INSTRUCTIONS, candidates


def random_lora_adapter(base: str | Path, out_dir: Path, *, rank: int = 8, alpha: int = 16, std: float = 0.02,
                        seed: int = 0) -> Path:
    """A saved peft LoRA adapter (q_proj and v_proj) on `base` whose lora_B is random: peft starts lora_B at
    zero, which would make the adapter a no-op and every adapter-vs-base comparison trivially equal."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    from frd_assets.core.models import load_causal_lm

    # peft calls a transformers property that transformers 5 renamed; the warning is theirs, not ours.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    torch.manual_seed(seed)
    model = get_peft_model(load_causal_lm(str(base)), LoraConfig(r=rank, lora_alpha=alpha, task_type="CAUSAL_LM",
                                                                 target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir
