"""Is the data worth training on? Checks the validation gate runs on records that are well-formed.

The modules, in the order the gate applies them: decontamination (records sharing a word n-gram with an
evaluation task), near_duplicates (MinHash + LSH, confirmed by exact Jaccard, against the seed and within
the set), record_judge (a 1-5 rubric score per record from a language model), dataset_card (the README.md
that describes what was kept and why). All text is compared in the words of one rule
(`metrics.text_units.words`, the one ROUGE-L uses), so "the same words" means the same thing in every check
and in every script.
"""
