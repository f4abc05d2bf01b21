"""Loading the serving classifier from settings and the registry, and keeping it current."""

from __future__ import annotations

from storage import adapters, labels
from trainer.prompts import LabelInfo

from .settings import Settings


def label_infos(db) -> list[LabelInfo]:
    return [LabelInfo(d.name, d.description) for d in labels.list_label_defs(db)]


def base_model_path(settings: Settings) -> str:
    from trainer.models import resolve_base_model

    return resolve_base_model(settings.base_model, settings.model_cache_dir)


def load_classifier(settings: Settings, db):
    """One classifier for the process: the current adapter, or zero-shot over the label set."""
    from trainer.classify import Classifier

    infos = label_infos(db)
    if len(infos) < 2:
        raise NoLabels(f"the label set has {len(infos)} label(s); add at least 2 "
                       "(supportbot labels add NAME --description TEXT) before classifying")
    classifier = Classifier.load(base_model_path(settings), infos, threshold=settings.review_threshold)
    sync_classifier(classifier, db)
    return classifier


def sync_classifier(classifier, db) -> bool:
    """Switch to the registry's current adapter if it changed (promotion or rollback). Returns True on a switch."""
    current = adapters.current_adapter(db)
    if current is None or current.version == classifier.adapter_version:
        return False
    classifier.use_adapter(current.path, current.version)
    return True


class NoLabels(RuntimeError):
    """Classification needs a label set of at least two labels."""
