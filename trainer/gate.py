"""The serving gate: of the models scored on one split, which one answers the team's messages.

Every `/retrain` scores the new adapter, the model serving now, the embedding classifier and the
ensemble of the adapter with the embeddings on the same held-out split. The gate serves the best
by macro-F1; any candidate within `margin` of the best counts as just as good, and among those
the cheapest to run wins (embeddings, then an adapter, then the ensemble, which runs both). At
equal cost a new model is preferred to the one serving, as promotion always was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# What a message costs to answer: the embedding classifier is a matrix product; an adapter a pass of
# the language model; the ensemble both.
COST = {"embeddings": 0, "zero-shot": 1, "adapter": 1, "ensemble": 2}


@dataclass
class Candidate:
    name: str                 # as the bot names it in replies: "adapter v3", "embeddings", "adapter v3 + embeddings"
    kind: str                 # embeddings | zero-shot | adapter | ensemble
    metrics: dict             # at least accuracy and macro_f1 on the gate's split
    serving: bool = False     # the model answering now
    details: dict = field(default_factory=dict)

    @property
    def cost(self) -> int:
        return COST[self.kind]

    def to_dict(self) -> dict:
        return asdict(self)


def choose(candidates: list[Candidate], margin: float) -> tuple[Candidate, str]:
    """The candidate to serve, and the reason in one sentence."""
    if not candidates:
        raise ValueError("the gate needs at least one candidate")
    best = max(candidates, key=lambda c: c.metrics["macro_f1"])
    good = [c for c in candidates if c.metrics["macro_f1"] >= best.metrics["macro_f1"] - margin]
    picked = min(good, key=lambda c: (c.cost, c.serving, -c.metrics["macro_f1"]))
    f1 = picked.metrics["macro_f1"]
    if picked is best:
        reason = f"{picked.name} has the best macro-F1 ({f1:.3f})"
        others = [c for c in good if c is not picked]
        if others:
            reason += f"; {', '.join(c.name for c in others)} within {margin:.2f} but not cheaper"
    else:
        reason = (f"{picked.name} (macro-F1 {f1:.3f}) is within {margin:.2f} of the best, {best.name} "
                  f"({best.metrics['macro_f1']:.3f}), and " + ("cheaper to run" if picked.cost < best.cost
                                                                 else "new"))
    return picked, reason
