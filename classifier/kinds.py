"""The kinds of model that can answer a message: one registry, read by serving, the gate and the reports.

A new kind is added here (a `Kind` and its entry in `KINDS`), then where it is built (bot/serving.py
`ServedClassifier`, trainer/candidates.py for the gate) and, if a run can choose it, in the served-model
table's CHECK constraint (a storage migration: tests/test_storage.py holds that list to `RECORDED`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    cost: int  # the gate's tie-break: among candidates as good as each other, the cheapest serves
    needs_adapter: bool  # answers with a trained adapter (and so names its version)
    needs_embeddings: bool  # answers with the fitted embedding classifier
    needs_language_model: bool  # loads a base model to answer
    recorded: bool  # a run's gate can choose it (a served-model record); zero-shot answers when none is
    shown_as: str = ""  # what replies call it, when not its name
    mixed_with: str = "embeddings"  # what an adapter's mix names beside it

    def served_name(self, adapter_version: int | None = None) -> str:
        """How the bot names it everywhere: `embeddings`, `adapter v3`, `adapter v3 + embeddings`,
        `adapter v3 + distilled embeddings`, `zero-shot`."""
        if self.needs_adapter:
            return f"adapter v{adapter_version}" + (f" + {self.mixed_with}" if self.needs_embeddings else "")
        return self.shown_as or self.name


# Before two labels have two labelled messages each: the encoder's similarity to the labels' words
# (classifier.zero_shot, the default), or a language model's label scoring when SUPPORTBOT_ZERO_SHOT_MODEL
# names one. Replies call both `zero-shot`.
ZERO_SHOT = Kind("zero-shot", 0, False, True, False, recorded=False)
ZERO_SHOT_LM = Kind("zero-shot-lm", 1, False, False, True, recorded=False, shown_as="zero-shot")
EMBEDDINGS = Kind("embeddings", 0, False, True, False, recorded=True)
ADAPTER = Kind("adapter", 1, True, False, True, recorded=True)
ENSEMBLE = Kind("ensemble", 2, True, True, True, recorded=True)
# The adapter mixed with a student: logistic regression on the embeddings of the labelled messages and of
# the unlabelled ones, labelled by the adapter (classifier.student). It costs what the ensemble costs.
DISTILLED = Kind("distilled", 2, True, True, True, recorded=True, mixed_with="distilled embeddings")

KINDS = {k.name: k for k in (ZERO_SHOT, ZERO_SHOT_LM, EMBEDDINGS, ADAPTER, ENSEMBLE, DISTILLED)}
RECORDED = tuple(k.name for k in KINDS.values() if k.recorded)


def kind(name: str) -> Kind:
    """The registered kind called `name`; a name no registry entry has is a programming error, said plainly."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown serving kind {name!r}; the kinds are {', '.join(KINDS)}") from None
