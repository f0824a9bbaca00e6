"""Does the adapter help? Base and adapter answers to held-out tasks, reference metrics, an optional judge.

The modules, in the order the work happens: tasks (reading tasks with reference answers), answers (one
model load, greedy answers with and without the adapter), stats (ROUGE-L, bootstrap and Wilson intervals),
judge (pairwise verdicts in both orders), report (evaluate_adapter and its report).
"""

from frd_assets.core.evaluation.answers import Answers, generate_answers
from frd_assets.core.evaluation.judge import JUDGE_PROMPT_VERSION, Judge, judge_settings_from_env, make_judge
from frd_assets.core.evaluation.report import (
    REPORT_KEYS,
    EvaluationConfig,
    EvaluationReport,
    check_task_count,
    evaluate_adapter,
)
from frd_assets.core.evaluation.tasks import EvalTask, TaskFileError, eval_tasks_from_records, load_eval_tasks

__all__ = [
    "JUDGE_PROMPT_VERSION",
    "REPORT_KEYS",
    "Answers",
    "EvalTask",
    "EvaluationConfig",
    "EvaluationReport",
    "Judge",
    "TaskFileError",
    "check_task_count",
    "eval_tasks_from_records",
    "evaluate_adapter",
    "generate_answers",
    "judge_settings_from_env",
    "load_eval_tasks",
    "make_judge",
]
