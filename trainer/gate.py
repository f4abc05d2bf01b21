"""The serving gate: of the models scored on one split, which one answers the team's messages.

Every `/retrain` scores the new adapter, the model serving now, the embedding classifier, the
ensemble of the adapter with the embeddings and (given enough unlabelled mail) the adapter mixed with
its student, on the same held-out split. This is the one promotion
rule (the worker, `supportbot train` and the report all read its choice):

- **Nothing trained serves yet** (zero-shot, the first run): the best by macro-F1 serves; any
  candidate within `margin` of the best counts as just as good, and among those the cheapest to run
  wins (embeddings, then an adapter, then a mix, which runs both).
- **Otherwise the model serving now stays** unless a candidate is better beyond noise: it got more
  of the same eval messages right, with a one-sided exact McNemar test on the messages the two
  disagree on below `significance`, and no lower macro-F1. A few held-out messages can never carry
  that (1 message of difference has p = 0.5), so on small data what serves changes only when the
  evidence is there. When the serving model could not be scored (an adapter of another base
  model), the cheapest candidate takes its place as the one to beat.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import comb

from classifier.kinds import kind

SIGNIFICANCE = 0.05


@dataclass
class Candidate:
    name: str  # as the bot names it in replies: "adapter v3", "embeddings", "adapter v3 + embeddings"
    kind: str  # a name in classifier.kinds.KINDS
    metrics: dict  # at least accuracy and macro_f1 on the gate's split
    serving: bool = False  # the model answering now
    details: dict = field(default_factory=dict)
    correct: tuple = ()  # per eval message, whether this candidate got it right (same rows for all)

    @property
    def cost(self) -> int:
        return kind(self.kind).cost  # a matrix product for the embeddings, a model pass for an adapter...

    @property
    def right(self) -> int:
        return sum(self.correct)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "correct"}


@dataclass(frozen=True)
class Decision:
    picked: Candidate
    reason: str  # one sentence, with the numbers
    p_value: float | None  # the paired test that decided, when one did


def mcnemar_p(challenger: Candidate, incumbent: Candidate) -> float:
    """One-sided exact McNemar p-value that `challenger` is right more often than `incumbent`.

    Only the messages they disagree on count: b where the challenger alone is right, c where the
    incumbent alone is; under "no better", b is Binomial(b + c, 1/2)."""
    if len(challenger.correct) != len(incumbent.correct):
        raise ValueError("a paired test needs both candidates' answers on the same messages")
    b = sum(1 for x, y in zip(challenger.correct, incumbent.correct) if x and not y)
    c = sum(1 for x, y in zip(challenger.correct, incumbent.correct) if y and not x)
    n = b + c
    if n == 0:
        return 1.0
    return sum(comb(n, k) for k in range(b, n + 1)) / 2**n


def choose(
    candidates: list[Candidate], margin: float, significance: float = SIGNIFICANCE, *, serving_kind: str | None = None
) -> Decision:
    """The candidate to serve and why. `serving_kind`: what answers now (zero-shot or None: nothing trained)."""
    if not candidates:
        raise ValueError("the gate needs at least one candidate")
    incumbent = next((c for c in candidates if c.serving), None)
    if incumbent is None and (serving_kind is None or not kind(serving_kind).recorded):  # nothing trained serves
        return _first_choice(candidates, margin)
    stand_in = incumbent is None
    if stand_in:  # the serving model was not scored: the cheapest candidate is the one to beat
        incumbent = min(candidates, key=lambda c: (c.cost, -c.metrics["macro_f1"]))
    others = [c for c in candidates if c is not incumbent]
    tested = sorted(
        ((mcnemar_p(c, incumbent), c) for c in others if c.right > incumbent.right),
        key=lambda t: (t[0], -t[1].metrics["macro_f1"], t[1].cost),
    )
    better = [(p, c) for p, c in tested if p < significance and c.metrics["macro_f1"] >= incumbent.metrics["macro_f1"]]
    n = len(incumbent.correct)
    if better:
        p, picked = max(better, key=lambda t: (t[1].metrics["macro_f1"], -t[1].cost, -t[0]))
        reason = (
            f"{picked.name} got {picked.right} of {n} held-out messages right against "
            f"{incumbent.name}'s {incumbent.right} (paired test p = {p:.3g} < {significance:g})"
        )
        return Decision(picked, reason, p)
    stays = f"{incumbent.name} {'serves (it is the cheapest)' if stand_in else 'keeps serving'}"
    if not tested:
        return Decision(
            incumbent,
            f"{stays}: no candidate got more of the {n} held-out messages right ({incumbent.right} of {n})",
            None,
        )
    p, best = tested[0]
    gap = best.right - incumbent.right
    if p < significance:  # more right answers, but a lower macro-F1: no clear win
        why = f"but a lower macro-F1 ({best.metrics['macro_f1']:.3f} vs {incumbent.metrics['macro_f1']:.3f})"
    else:
        why = (
            f"and {gap} message{'s' if gap != 1 else ''} of difference is not evidence "
            f"(paired test p = {p:.2g}, needs < {significance:g})"
        )
    return Decision(
        incumbent, f"{stays}: {best.name} got {best.right} of {n} right against {incumbent.right}, " + why, p
    )


def _first_choice(candidates: list[Candidate], margin: float) -> Decision:
    """Nothing trained serves yet: the best by macro-F1, or the cheapest within `margin` of it."""
    best = max(candidates, key=lambda c: c.metrics["macro_f1"])
    good = [c for c in candidates if c.metrics["macro_f1"] >= best.metrics["macro_f1"] - margin]
    picked = min(good, key=lambda c: (c.cost, -c.metrics["macro_f1"]))
    f1 = picked.metrics["macro_f1"]
    if picked is best:
        reason = f"nothing trained served yet; {picked.name} has the best macro-F1 ({f1:.3f})"
        others = [c for c in good if c is not picked]
        if others:
            reason += f"; {', '.join(c.name for c in others)} within {margin:.2f} but not cheaper"
    else:
        reason = (
            f"nothing trained served yet; {picked.name} (macro-F1 {f1:.3f}) is within {margin:.2f} of the "
            f"best, {best.name} ({best.metrics['macro_f1']:.3f}), and cheaper to run"
        )
    return Decision(picked, reason, None)
