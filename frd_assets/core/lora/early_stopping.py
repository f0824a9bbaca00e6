"""Early stopping inside a trial on the validation loss, keeping the best weights seen.

A trial that has begun to overfit the training data answers the user's tasks worse with every further step;
training on wastes the time and, worse, the search would then judge the hyperparameters by the overfitted
end state. So, as the Trainer's EarlyStoppingCallback with load_best_model_at_end does: after `patience`
evaluations in a row without a new best validation loss the trial stops, and its LoRA weights go back to the
evaluation that was best. Only the LoRA parameters are copied: megabytes, not the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class EarlyStopping:
    patience: int  # evaluations without a new best before the trial stops; 0: never stop early
    best_loss: float = math.inf
    best_step: int | None = None
    bad_evals: int = 0
    _best_state: dict = field(default_factory=dict, repr=False)

    def update(self, model, step: int, loss: float) -> None:
        """Takes one evaluation; copies the trainable weights when it is the best so far."""
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_step, self.bad_evals = loss, step, 0
            self._best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.bad_evals += 1

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience

    def restore_best(self, model) -> bool:
        """Puts the best evaluation's weights back; False when the model holds them already (or none were kept)."""
        if not self._best_state or self.bad_evals == 0:
            return False
        import torch

        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self._best_state:
                    param.copy_(self._best_state[name])
        return True

    def release(self) -> None:
        self._best_state = {}
