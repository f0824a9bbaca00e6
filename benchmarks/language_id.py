"""Language identification on short instructions: lingua-language-detector against py3langid, each in its own process.

The seed's language is detected from its instructions, and the validation gate drops a generated record
whose instruction is confidently in another language; both read short text, where detectors are weakest.
Each detector runs in a fresh interpreter so its import time and memory are its own: import (the time to
`import` the package and build the detector), the first detection (lingua loads each language's models
lazily, on first use), the mean time per instruction after that, and the process's peak resident memory.
Accuracy is over benchmarks/short_instructions.py (eight languages, 20 each), overall, per language and on
the instructions of at most SHORT_CHARS characters. The gate's off-language rule (core/language.py,
off_language_call) drops an instruction when the detector gives the expected language less than
OFF_LANGUAGE_BELOW and another at least OTHER_AT_LEAST: "false drops" counts instructions it would drop
although they are in the expected language, "caught" the share of
(instruction, other benchmark language) pairs it would drop, as if the instruction had come back in a
seed of that other language. py3langid is measured through core/language.py, as the gate uses it
(varieties such as Wu Chinese folded into their language).

Run: .venv/bin/python -m benchmarks.language_id [--detectors py3langid,lingua,lingua-low-accuracy]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks.short_instructions import SHORT_INSTRUCTIONS

SHORT_CHARS = 30  # "short": the 3-6 word instructions, and the Chinese ones of up to about 15 characters
DETECTORS = ("lingua", "lingua-low-accuracy", "py3langid")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _build(name: str):
    """(probabilities(text) -> {iso code: probability}, version) for one detector, imported here so the
    timing is its own."""
    if name.startswith("lingua"):
        from importlib.metadata import version

        from lingua import LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_all_languages()
        if name == "lingua-low-accuracy":
            builder = builder.with_low_accuracy_mode()
        detector = builder.build()

        def probabilities(text: str) -> dict[str, float]:
            return {v.language.iso_code_639_1.name.lower(): v.value
                    for v in detector.compute_language_confidence_values(text)}

        return probabilities, version("lingua-language-detector")
    if name == "py3langid":
        from frd_assets.core.language import detector_name, probabilities

        probabilities("")  # loads the model, as the first detection would
        return probabilities, detector_name().split()[-1]
    raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")


def measure(name: str) -> dict:
    """One detector's figures and its guesses, in this process (run it in a fresh one)."""
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    detect, version = _build(name)
    import_s = time.perf_counter() - t0
    texts = [(lang, text) for lang, items in SHORT_INSTRUCTIONS.items() for text in items]
    t0 = time.perf_counter()
    first = detect(texts[0][1])
    first_s = time.perf_counter() - t0
    found = [first]
    t0 = time.perf_counter()
    found += [detect(text) for _, text in texts[1:]]
    per_text_ms = (time.perf_counter() - t0) / max(len(texts) - 1, 1) * 1000
    # Every language's models are loaded by now: a second pass times detection alone.
    t0 = time.perf_counter()
    for _, text in texts:
        detect(text)
    warm_ms = (time.perf_counter() - t0) / len(texts) * 1000
    return {"detector": name, "version": version, "import_s": import_s, "first_detect_s": first_s,
            "first_pass_ms_per_text": per_text_ms, "ms_per_text": warm_ms,
            "peak_rss_mb": _peak_rss_mb(), "python_rss_mb": rss_before,
            # Each instruction's probability for each benchmark language: enough to score guesses and the rule.
            "probabilities": [{lang: round(p.get(lang, 0.0), 5) for lang in SHORT_INSTRUCTIONS} | {
                "_best": max(p.items(), key=lambda kv: kv[1], default=("und", 0.0))} for p in found]}


def _in_fresh_process(name: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.language_id", "--worker", name],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks.language_id --worker {name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def score(figures: dict) -> dict:
    """Accuracy overall, per language and on short instructions, and the off-language rule's false drops
    and catches."""
    from frd_assets.core.language import off_language_call

    texts = [(lang, text) for lang, items in SHORT_INSTRUCTIONS.items() for text in items]
    probs = figures["probabilities"]
    guesses = [p["_best"] for p in probs]
    right = [code == lang for (lang, _), (code, _) in zip(texts, guesses, strict=True)]
    false_drops = sum(off_language_call(p[lang], p["_best"][1]) for (lang, _), p in zip(texts, probs, strict=True))
    pairs = [off_language_call(p[other], p["_best"][1]) for (lang, _), p in zip(texts, probs, strict=True)
             for other in SHORT_INSTRUCTIONS if other != lang]
    short = [ok for (_, text), ok in zip(texts, right, strict=True) if len(text) <= SHORT_CHARS]
    per_language = {lang: sum(ok for (lg, _), ok in zip(texts, right, strict=True) if lg == lang) / len(items)
                    for lang, items in SHORT_INSTRUCTIONS.items()}
    wrong = [f"{lang}->{code} ({conf:.2f}; {lang} {p[lang]:.3f}): {text}" for (lang, text), (code, conf), p, ok
             in zip(texts, guesses, probs, right, strict=True) if not ok]
    return {"accuracy": sum(right) / len(right), "short_accuracy": sum(short) / len(short),
            "short_n": len(short), "per_language": per_language, "false_drops": false_drops,
            "caught": sum(pairs) / len(pairs),
            "min_own": min(p[lang] for (lang, _), p in zip(texts, probs, strict=True)),
            "wrong": wrong}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=DETECTORS, help="measure one detector in this process (internal)")
    parser.add_argument("--detectors", default=",".join(DETECTORS),
                        help=f"comma-separated, from {', '.join(DETECTORS)} (default: all)")
    args = parser.parse_args()
    names = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = sorted(set(names) - set(DETECTORS))
    if unknown or not names:
        parser.error(f"--detectors: unknown {unknown}; choose from {', '.join(DETECTORS)}")
    if args.worker:
        print(json.dumps(measure(args.worker)))
        return
    n = sum(len(v) for v in SHORT_INSTRUCTIONS.values())
    from frd_assets.core.language import OFF_LANGUAGE_BELOW, OTHER_AT_LEAST

    print(f"{n} instructions in {len(SHORT_INSTRUCTIONS)} languages ({', '.join(SHORT_INSTRUCTIONS)}); "
          f"short: at most {SHORT_CHARS} characters; off-language: expected language below {OFF_LANGUAGE_BELOW} "
          f"and another at least {OTHER_AT_LEAST}")
    results = {}
    for name in names:
        figures = _in_fresh_process(name)
        results[name] = {**figures, **score(figures)}
    langs = list(SHORT_INSTRUCTIONS)
    print(f"\n{'detector':22} {'all':>6} {'short':>6} " + " ".join(f"{lg:>5}" for lg in langs)
          + f" {'false drops':>11} {'caught':>6} {'min own':>7} {'import s':>9} {'1st s':>6} {'ms/text':>8} "
          f"{'peak MB':>8}")
    for name, r in results.items():
        print(f"{name + ' ' + r['version']:22} {r['accuracy']:6.3f} {r['short_accuracy']:6.3f} "
              + " ".join(f"{r['per_language'][lg]:5.2f}" for lg in langs)
              + f" {r['false_drops']:11d} {r['caught']:6.3f} {r['min_own']:7.3f} {r['import_s']:9.3f} "
              f"{r['first_detect_s']:6.2f} {r['ms_per_text']:8.3f} "
              f"{r['peak_rss_mb']:8.0f}")
    for name, r in results.items():
        print(f"\n{name} wrong ({len(r['wrong'])}):")
        for line in r["wrong"]:
            print(f"  {line}")
    summary = {"benchmark": "language_id", "instructions": n, "short_chars": SHORT_CHARS,
               "off_language_below": OFF_LANGUAGE_BELOW, "other_at_least": OTHER_AT_LEAST}
    for name, r in results.items():
        key = name.replace("-", "_")
        summary |= {f"{key}_accuracy": round(r["accuracy"], 4), f"{key}_short_accuracy": round(r["short_accuracy"], 4),
                    f"{key}_false_drops": r["false_drops"], f"{key}_caught": round(r["caught"], 4),
                    f"{key}_min_own": round(r["min_own"], 4), f"{key}_import_s": round(r["import_s"], 4),
                    f"{key}_first_detect_s": round(r["first_detect_s"], 3),
                    f"{key}_ms_per_text": round(r["ms_per_text"], 4), f"{key}_peak_rss_mb": round(r["peak_rss_mb"], 1)}
        summary |= {f"{key}_{lg}": round(v, 3) for lg, v in r["per_language"].items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
