"""The model that answers: embeddings, an adapter, its mix with the embeddings or with its student, or zero-shot.

Which one serves is the newest `served_models` row (the gate's choice after each run, or a
rollback). Before any: the current adapter if one exists, else the embedding classifier as soon as
two labels have two labelled messages each, else the zero-shot model (a causal LM, not the base model
`/retrain` fine-tunes, which is an encoder by default) over the label descriptions. An adapter knows only the labels it was trained on: while the label set has a label
it lacks, the embedding classifier (which learns a label from its first two examples) answers, and
the reply says so.

The embedding classifier is refitted from the stored vectors when labels change: debounced (a burst
of corrections costs one refit) and on a thread of its own, so no request waits for it. Swaps are
atomic: the serving state is immutable and holds everything an answer reads (the fitted embedding
classifier too), a classification reads it once, and a language-model answer made by another
adapter than that state expects (a swap in between) is made again.

An adapter is checked before it serves: its folder against the checksum recorded when it was
registered, its files read through, then one probe answer once it is loaded. One that fails is
not served (until a restart or another choice): the model that served before it keeps serving,
else the embeddings, else zero-shot; the state's note says why, and `on_unusable` is told once. A
distilled adapter's student (classifier.student) is read only after those checks, and checked itself:
one that fails leaves the adapter answering alone, and the note says why.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from classifier.kinds import ADAPTER, DISTILLED, EMBEDDINGS, ENSEMBLE, ZERO_SHOT, ZERO_SHOT_LM, kind
from classifier.prompts import LabelInfo
from storage import adapters, labels, open_db, served
from storage import embeddings as stored_embeddings

from .settings import ZERO_SHOT_BY_ENCODER, Settings

log = logging.getLogger(__name__)

REFIT_DEBOUNCE_S = 2.0
# The encoder a served record's mix was fitted with, when the record predates naming it (they were all MiniLM).
EMBEDDER_BEFORE_CHOICE = "all-MiniLM-L6-v2"


def label_infos(db) -> list[LabelInfo]:
    return [LabelInfo(d.name, d.description) for d in labels.list_label_defs(db)]


def base_model_path(settings: Settings, name: str | None = None) -> str:
    """Where the base model `name` (default: the one `/retrain` fine-tunes) loads from."""
    from classifier.models import resolve_base_model

    return resolve_base_model(name or settings.base_model, settings.model_cache_dir)


def served_name(kind_name: str, adapter_version: int | None = None) -> str:
    """How the bot names a serving model everywhere (classifier.kinds words it)."""
    return kind(kind_name).served_name(adapter_version)


def answered_by(prediction) -> str:
    """Which model made `prediction`, from the prediction itself (never from what serves now): every
    surface (thread reply, /classify, the CLI) words it with this."""
    name = getattr(prediction, "model", None)
    if not name:  # stored before predictions named their model: only the adapter version is known
        name = ADAPTER.served_name(prediction.adapter_version) if prediction.adapter_version else ZERO_SHOT.name
    return f"{ZERO_SHOT.name} (before enough labels)" if name == ZERO_SHOT.name else name


class NoLabels(RuntimeError):
    """Classification needs a label set of at least two labels."""


@dataclass(frozen=True)
class State:
    """What answers now. `name` is what replies show."""

    kind: str  # a name in classifier.kinds.KINDS
    name: str
    adapter_version: int | None = None
    adapter_path: str | None = None
    details: dict | None = None  # temperatures and the mix, from the gate
    base_model: str | None = None  # the adapter's base model (it loads on that one)
    note: str = ""  # why this differs from the recorded choice, if it does
    # The fitted embedding classifier of this state: it answers (embeddings, ensemble) or, with an adapter
    # alone, only says whether a message is unlike every labelled one (the novelty check). Part of the
    # state, so a refit that changes it (or its labels) swaps in with the rest, in one assignment.
    embeddings: object | None = field(default=None, compare=False)  # compared by identity in `sync`
    # A distilled adapter's student (classifier.student), read from its folder and checked once per process.
    student: object | None = field(default=None, compare=False)


def load_classifier(settings: Settings, db, *, on_unusable=None):
    """The process's answering model (the language model is loaded only when an answer needs it)."""
    if len(labels.list_label_defs(db)) < 2:
        raise NoLabels(
            f"the label set has {len(labels.list_label_defs(db))} label(s); add at least 2 "
            "(supportbot labels add NAME --description TEXT) before classifying"
        )
    served_classifier = ServedClassifier(settings, on_unusable=on_unusable)
    served_classifier.refit(db)
    served_classifier.sync(db)
    return served_classifier


def recorded_choice(db) -> dict:
    """The model the registry says serves ({kind, name, details}), for the next run's gate."""
    choice = served.current_served(db)
    if choice is None:
        current = adapters.current_adapter(db)
        if current is not None:
            return {"kind": ADAPTER.name, "name": ADAPTER.served_name(current.version), "details": {}}
        if sum(1 for n in labels.label_counts(db).values() if n >= 2) >= 2:
            return {"kind": EMBEDDINGS.name, "name": EMBEDDINGS.served_name(), "details": {}}
        return {"kind": ZERO_SHOT.name, "name": ZERO_SHOT.served_name(), "details": {}}
    return {"kind": choice.kind, "name": served_name(choice.kind, choice.adapter_version), "details": choice.details}


def sync_classifier(classifier, db) -> bool:
    return classifier.sync(db)


class ServedClassifier:
    """Thread-safe; one per process. `classify` and `classify_many` answer as `trainer.classify.Classifier` does."""

    def __init__(self, settings: Settings, *, llm_factory=None, debounce_s: float = REFIT_DEBOUNCE_S, on_unusable=None):
        from classifier.encoders import encoder

        self.settings = settings
        self.encoder = encoder(settings.embedding_model)  # what every message is embedded with, and its vectors' key
        self.unusable: dict[int, str] = {}  # adapter version -> why it cannot serve (checked once per process)
        self._students: dict[int, object] = {}  # adapter version -> its checked student, or why it has none
        self._on_unusable = on_unusable  # (version, reason, what serves instead), once per adapter
        self.threshold = settings.review_threshold
        self._llm_factory = llm_factory
        self._models: dict[str, object] = {}  # base model folder -> trainer.classify.Classifier, loaded on use
        self._paths: dict[str, str] = {}  # base model name -> the folder it loads from
        self._llm_lock = threading.Lock()
        self._resolve_lock = threading.Lock()
        self._embeddings = None  # trainer.embeddings.EmbeddingClassifier, or None before enough labels
        self._embed_lock = threading.Lock()
        self._similarity: tuple | None = None  # (the labels' names and descriptions, their zero-shot scorer)
        self._similarity_lock = threading.Lock()
        self._state = State(ZERO_SHOT_LM.name, ZERO_SHOT_LM.served_name())  # until the first sync
        self._sync_lock = threading.Lock()
        self._fitted_signature = None
        self._poked_signature = None
        self._refit = _Debouncer(debounce_s, self._refit_in_background)
        self.refits = 0  # how many refits ran (tests, /model)

    # -- what serves ------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def adapter_version(self) -> int | None:
        return self._state.adapter_version

    @property
    def labels(self) -> list[str]:
        state = self._state
        if not kind(state.kind).needs_language_model:
            return list(state.embeddings.labels)
        return self._model_for(state).labels

    def sync(self, db) -> bool:
        """Bring the serving state in line with the registry and the label set. Returns True on a change."""
        signature = _label_signature(db)
        if signature not in (self._fitted_signature, self._poked_signature):
            self._poked_signature = signature  # poked once per change: traffic does not postpone the refit
            self._refit.poke()
        with self._sync_lock:
            wanted = self._wanted(db)
            if kind(wanted.kind).needs_adapter and wanted != self._state:
                wanted = self._load_adapter(wanted, db)
            if wanted == self._state and wanted.embeddings is self._state.embeddings:
                return False
            if wanted.kind == ZERO_SHOT_LM.name and self._key(wanted, resolve=False) in self._models:
                self._models[self._key(wanted, resolve=False)].use_zero_shot(label_infos(db))
            if kind(wanted.kind).needs_language_model:  # the embeddings need none, but one may serve again soon
                self._let_go_of_others(wanted)
            refitted_only = wanted == self._state  # same model, a newly fitted embedding classifier
            self._state = wanted
            (log.debug if refitted_only else log.info)(
                "serving %s%s", wanted.name, f" ({wanted.note})" if wanted.note else ""
            )
            return True

    def _wanted(self, db) -> State:
        choice = served.current_served(db)
        current = adapters.current_adapter(db)
        active = [d.name for d in labels.list_label_defs(db)]
        fitted = self._embeddings  # read once: a refit may replace it meanwhile
        if choice is None:
            if current is not None:
                choice_kind, version, details = ADAPTER.name, current.version, {}
            elif fitted is not None:
                return State(EMBEDDINGS.name, EMBEDDINGS.served_name(), embeddings=fitted)
            else:
                return self._zero_shot(db)
        else:
            choice_kind, version, details = choice.kind, choice.adapter_version, choice.details
        if not kind(choice_kind).needs_adapter:
            return (
                State(EMBEDDINGS.name, EMBEDDINGS.served_name(), embeddings=fitted)
                if fitted is not None
                else self._zero_shot(db, note="too few labelled messages for the embeddings")
            )
        adapter = adapters.get_adapter(db, version)
        missing = sorted(set(active) - set(adapter.labels))
        if missing and fitted is not None:
            return State(
                EMBEDDINGS.name,
                EMBEDDINGS.served_name(),
                embeddings=fitted,
                note=f"adapter v{version} was trained before label(s) {', '.join(missing)}",
            )
        mixed_with = (details or {}).get("encoder", EMBEDDER_BEFORE_CHOICE)
        mixed = kind(choice_kind).needs_embeddings
        serving, note, student = ADAPTER, "", None
        if mixed and mixed_with != self.encoder.name:
            # the mix weight was fitted on another encoder's scores: the adapter alone is what was measured
            note = f"its mix was fitted with {mixed_with}, and the bot now embeds with {self.encoder.name}"
        elif mixed and choice_kind == DISTILLED.name:
            known = self._students.get(version)  # read in _load_adapter, once its folder has passed its checks
            if fitted is None:
                note = "its student reads the message vectors, and the bot has no embedding classifier now"
            elif isinstance(known, str):
                note = f"its student cannot be used: {known}"
            else:
                serving, student = DISTILLED, known
        elif mixed and fitted is not None and set(adapter.labels) <= set(fitted.labels):
            serving = ENSEMBLE
        return State(
            serving.name,
            serving.served_name(version),
            version,
            adapter.path,
            details,
            base_model=adapter.base_model,
            note=note,
            embeddings=fitted,  # the mix's, or the novelty check's
            student=student,
        )

    def _with_student(self, wanted: State) -> State:
        """`wanted` (distilled) with its student, or the adapter alone saying why the student cannot serve."""
        student = self._student(wanted.adapter_version, wanted.adapter_path)
        if isinstance(student, str):
            return replace(
                wanted,
                kind=ADAPTER.name,
                name=ADAPTER.served_name(wanted.adapter_version),
                note=f"its student cannot be used: {student}",
            )
        return replace(wanted, student=student)

    def _student(self, version: int, path: str):
        """Adapter `version`'s student, checked before it is trusted (once per process), or why it cannot be used."""
        if version not in self._students:
            from classifier.classify import read_adapter_meta
            from classifier.student import load_student

            try:
                meta = read_adapter_meta(path)
                self._students[version] = load_student(
                    path, meta, encoder=self.encoder.name, dimensions=self.encoder.dimensions
                )
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the adapter still answers
                self._students[version] = _reason(exc)
                log.error("adapter v%d serves without its student: %s", version, self._students[version])
        return self._students[version]

    def _load_adapter(self, wanted: State, db) -> State:
        """`wanted` with its adapter checked and swapped in, or what serves instead when it cannot be."""
        version = wanted.adapter_version
        if version not in self.unusable:
            from classifier.adapters import check_adapter

            touched = False
            try:
                problem = adapters.check_files(adapters.get_adapter(db, version))
                if problem:
                    raise BrokenAdapterFiles(problem)
                check_adapter(wanted.adapter_path)  # before the serving model is touched
                if wanted.kind == DISTILLED.name and wanted.student is None:
                    wanted = self._with_student(wanted)
                llm = self._model_for(wanted, db)
                if llm.adapter_version != version:
                    touched = True
                    llm.use_adapter(wanted.adapter_path, version)
                    _probe(llm, version)
                return wanted
            except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the bot keeps answering
                if touched:  # half swapped, perhaps: the next use loads the base model afresh
                    with self._llm_lock:
                        self._models.pop(self._key(wanted, resolve=False), None)
                self.unusable[version] = _reason(exc)
                log.error("adapter v%d cannot serve: %s", version, self.unusable[version])
                instead = self._instead_of(wanted, db)
                if self._on_unusable is not None:
                    try:
                        self._on_unusable(version, self.unusable[version], instead.name)
                    except Exception:  # noqa: BLE001 - telling the channel must not stop the answers
                        log.exception("could not report that adapter v%d cannot serve", version)
                return instead
        return self._instead_of(wanted, db)

    def _instead_of(self, broken: State, db) -> State:
        """What serves instead of an adapter that cannot: the model serving now (when it is another, usable
        adapter), else the embeddings, else zero-shot."""
        note = f"adapter v{broken.adapter_version} cannot serve: {self.unusable[broken.adapter_version]}"
        current = self._state
        fitted = self._embeddings  # read once: a background refit may replace it meanwhile
        if (
            kind(current.kind).needs_adapter
            and current.adapter_version not in self.unusable
            and (not kind(current.kind).needs_embeddings or fitted is not None)
        ):
            instead = replace(current, note=note, embeddings=fitted)  # the mix's, or the novelty check's
            return instead if self._key(current, resolve=False) in self._models else self._load_adapter(instead, db)
        if fitted is not None:
            return State(EMBEDDINGS.name, EMBEDDINGS.served_name(), note=note, embeddings=fitted)
        return self._zero_shot(db, note=note)

    def _zero_shot(self, db, note: str = "") -> State:
        """What answers before the embeddings can: the encoder's similarity to the labels' words (the default),
        or the language model SUPPORTBOT_ZERO_SHOT_MODEL names."""
        if self.settings.zero_shot_model != ZERO_SHOT_BY_ENCODER:
            return State(ZERO_SHOT_LM.name, ZERO_SHOT_LM.served_name(), note=note)
        return State(ZERO_SHOT.name, ZERO_SHOT.served_name(), note=note, embeddings=self._label_similarity(db))

    def _label_similarity(self, db):
        """The zero-shot scorer of the current labels, embedded again only when a name or description changes."""
        from classifier.zero_shot import LabelSimilarity

        infos = label_infos(db)
        with self._similarity_lock:
            if self._similarity is None or self._similarity[0] != tuple(infos):
                self._similarity = (tuple(infos), LabelSimilarity.from_labels(infos, self.embed) if infos else None)
            return self._similarity[1]

    def _model_for(self, state: State, db=None):
        """The loaded model that answers for `state`: the adapter's base model, or the zero-shot LM.

        One per base model (by the folder it loads from, so two names of one model share it), loaded on
        first use: adapters of one base swap in place on it. A model no longer needed is let go at the
        next change of base (`sync`).
        """
        key = self._key(state)
        with self._llm_lock:
            if key not in self._models:
                from classifier.classify import Classifier

                own_db = db or open_db(self.settings.db_path)
                if self._llm_factory is not None:
                    self._models[key] = self._llm_factory(self.settings, own_db)
                else:
                    self._models[key] = Classifier.load(key, label_infos(own_db), threshold=self.threshold)
            return self._models[key]

    def _key(self, state: State, resolve: bool = True) -> str | None:
        """The folder `state`'s model loads from (resolving a packaged name converts it once, so
        `resolve=False` answers None for a name not resolved yet instead)."""
        if self._llm_factory is not None:  # tests, benchmarks: one model stands in for every base model
            return "factory"
        name = state.base_model or self.settings.zero_shot_model
        if name not in self._paths and resolve:
            with self._resolve_lock:  # answers arriving together on a fresh install convert the model once
                if name not in self._paths:
                    self._paths[name] = base_model_path(self.settings, name)
        return self._paths.get(name)

    def _let_go_of_others(self, state: State) -> None:
        keep = self._key(state, resolve=False)
        with self._llm_lock:
            for key in [k for k in self._models if k != keep]:
                del self._models[key]  # a classification still using it keeps its own reference

    # -- answering --------------------------------------------------------------------------------------

    def classify(self, text, subject: str | None = None, *, vector=None):
        return self.classify_many([(text, subject)], vectors=None if vector is None else [vector])[0]

    def classify_many(self, items: list, *, vectors=None) -> list:
        """Texts or (text, subject) pairs, answered by the serving model. Empty texts raise EmptyText."""
        from textprep.text import require_text

        pairs = [(item, None) if isinstance(item, (str, bytes)) else tuple(item) for item in items]
        cleaned = [(require_text(text), subject) for text, subject in pairs]
        for _ in range(3):
            state = self._state
            answers = self._answer(state, cleaned, vectors)
            if answers is not None:
                return answers
        raise RuntimeError("the served model kept changing during the classification")

    def _answer(self, state: State, cleaned: list, vectors) -> list | None:
        import numpy as np

        from classifier.embeddings import EmbedderMissing, from_blob, message_text

        started = time.perf_counter()
        fitted = state.embeddings  # the classifier of this state, whatever a refit does meanwhile
        if kind(state.kind).needs_embeddings and fitted is None:  # zero-shot before the first sync, or no label
            state = self._zero_shot(open_db(self.settings.db_path))
            fitted = state.embeddings
            if fitted is None:
                raise NoLabels("the label set is empty: add at least 2 labels before classifying")
        # An adapter serving alone still reads the vectors for the novelty check, so a message unlike every
        # labelled one goes to review whatever answers (intake passes the vector it stored).
        needs_vectors = fitted is not None
        if needs_vectors:
            try:
                if vectors is None or any(v is None for v in vectors):
                    matrix = self.embed([message_text(t, s) for t, s in cleaned])
                else:
                    matrix = np.stack([from_blob(v) if isinstance(v, bytes) else np.asarray(v) for v in vectors])
            except EmbedderMissing:
                if kind(state.kind).needs_embeddings:
                    raise
                needs_vectors = False  # an adapter alone still answers; only the novelty check is lost
            else:
                novel = fitted.novel(matrix)
        if not kind(state.kind).needs_language_model:
            logp = fitted.log_probs(matrix)
            names = fitted.labels
            certified = True
        else:
            llm = self._model_for(state)
            made = llm.classify_many(cleaned) if len(cleaned) > 1 else [llm.classify(*cleaned[0])]
            if any(p.adapter_version != state.adapter_version for p in made):
                return None  # an adapter swap came in between: answer again with the new state
            names = llm.labels
            logp = np.log(np.array([[max(p.scores[n], 1e-30) for n in names] for p in made]))
            certified = all(p.certified for p in made)
            details = state.details or {}
            if kind(state.kind).needs_embeddings and (state.kind != DISTILLED.name or state.student is not None):
                from classifier.ensemble import Mix

                mixed_with = state.student if state.kind == DISTILLED.name else fitted
                columns = [mixed_with.labels.index(n) for n in names]
                logp = Mix.from_dict(details["mix"]).log_probs(logp, mixed_with.logits(matrix)[:, columns])
            else:  # an adapter alone, or one whose mix cannot run: calibrated as the gate scores it
                from classifier.ensemble import adapter_temperature

                logp = logp / adapter_temperature(details)
            if state.kind == ZERO_SHOT_LM.name:
                return [replace(p, model=ZERO_SHOT_LM.served_name()) for p in made]
        per_item_ms = (time.perf_counter() - started) * 1000 / max(1, len(cleaned))
        out = []
        for i in range(len(cleaned)):
            out.append(
                _prediction(
                    names,
                    logp[i],
                    state,
                    self.threshold,
                    per_item_ms,
                    novel=bool(novel[i]) if needs_vectors else False,
                    certified=certified,
                )
            )
        return out

    def vector_for(self, db, message_id: int, text: str, subject: str | None):
        """A stored message's vector, embedded and stored the first time (None without the embedder)."""
        from classifier.embeddings import EmbedderMissing, from_blob, message_text, to_blob

        stored = stored_embeddings.get_embedding(db, message_id, self.encoder.name)
        if stored is not None:
            return from_blob(stored)
        try:
            vector = self.embed([message_text(text, subject)])[0]
        except EmbedderMissing:
            return None
        stored_embeddings.add_embedding(db, message_id, self.encoder.name, to_blob(vector))
        return vector

    def embed(self, texts: list[str]):
        from classifier.embeddings import embed

        with self._embed_lock:
            return embed(texts, self.encoder.alias)

    # -- refitting the embedding classifier -------------------------------------------------------------

    def refit(self, db) -> bool:
        """Fit the embedding classifier on every labelled message's vector (embedding the ones missing).

        Returns True when a classifier was fitted (two labels with two examples each at least).
        """
        from classifier.embeddings import (
            EmbedderMissing,
            EmbeddingClassifier,
            from_blob,
            message_text,
            to_blob,
        )

        signature = _label_signature(db)
        try:
            while True:
                missing = stored_embeddings.unembedded_labelled(db, self.encoder.name)
                if not missing:
                    break
                vectors = self.embed([message_text(r["clean_body"] or "", r["subject"]) for r in missing])
                for row, vector in zip(missing, vectors):
                    stored_embeddings.add_embedding(db, row["id"], self.encoder.name, to_blob(vector))
        except EmbedderMissing as exc:
            log.warning("no embedding classifier: %s", exc)
            self._fitted_signature = signature
            return False
        rows = stored_embeddings.labelled_vectors(db, self.encoder.name)
        active = [d.name for d in labels.list_label_defs(db)]
        rows = [r for r in rows if r[1] in active]
        counts = Counter(label for _, label, _ in rows)
        if sum(1 for n in counts.values() if n >= 2) < 2:
            self._embeddings = None
        else:
            import numpy as np

            self._embeddings = EmbeddingClassifier.fit(
                np.stack([from_blob(v) for _, _, v in rows]), [label for _, label, _ in rows], active
            )
        self._fitted_signature = signature
        self.refits += 1
        return self._embeddings is not None

    def _refit_in_background(self) -> None:
        db = open_db(self.settings.db_path)
        try:
            self.refit(db)
            self.sync(db)
        finally:
            db.conn.close()

    def close(self) -> None:
        self._refit.cancel()


class BrokenAdapterFiles(RuntimeError):
    """An adapter's folder is missing or changed since it was registered."""


def _probe(llm, version: int) -> None:
    """One answer from the adapter just loaded: it must come from that adapter, with finite scores."""
    made = llm.classify("Is this message a question, a complaint or something else?")
    if made.adapter_version != version or not all(math.isfinite(v) for v in made.scores.values()):
        raise RuntimeError("its probe answer is not a valid prediction")


def _reason(exc: BaseException) -> str:
    """One line for the logs, /model and the report channel."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _label_signature(db) -> tuple:
    return labels.change_signature(db)


def _prediction(
    names: list[str], logp, state: State, threshold: float, latency_ms: float, *, novel: bool, certified: bool
):
    from classifier.classify import prediction_from

    return prediction_from(
        names,
        [float(x) for x in logp],
        threshold=threshold,
        flagged=novel,
        adapter_version=state.adapter_version,
        zero_shot=state.kind == ZERO_SHOT.name,
        certified=certified,
        latency_ms=latency_ms,
        model=state.name,
        novel=novel,
    )


class _Debouncer:
    """Runs `action` on its own thread once no `poke` came for `delay` seconds."""

    def __init__(self, delay: float, action):
        self.delay, self.action = delay, action
        self._lock = threading.Lock()
        self._due: float | None = None
        self._thread: threading.Thread | None = None
        self._cancelled = False

    def poke(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._due = time.monotonic() + self.delay
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="supportbot-refit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                wait = None if self._due is None else self._due - time.monotonic()
                if self._cancelled or wait is None:
                    self._thread = None
                    return
                if wait <= 0:
                    self._due = None
            if wait > 0:
                time.sleep(min(wait, 0.5))
                continue
            try:
                self.action()
            except Exception:  # noqa: BLE001 - the old classifier keeps serving; the next change retries
                log.exception("refitting the embedding classifier failed")

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
