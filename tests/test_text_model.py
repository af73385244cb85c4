"""End-to-end tests of the text plugin with the real shipped all-MiniLM-L6-v2 (no mocks of the model)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from simskip_text import tasks as text_tasks
from simskip_text.data import load_rotten_tomatoes, load_word_similarity
from simskip_text.extract import encode_texts, model_fingerprint
from simskip_text.module import SimSkipStage
from simskip_text.refine import attach_simskip, find_stage, refine_model

from simskip_core.api import SimSkip
from simskip_core.errors import CorruptModelError
from simskip_core.plugins import get_plugin_manager

pytestmark = pytest.mark.slow

FIT = {"epochs": 3, "batch_size": 32, "patience": None, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def model():
    """The shipped model, shared with the task loaders' in-process instance (loaded once)."""
    return text_tasks._shipped_model()


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """64 real Rotten Tomatoes snippets."""
    texts = load_rotten_tomatoes().texts
    return texts[:: len(texts) // 64][:64]


@pytest.fixture(scope="module")
def base_vectors(model, corpus) -> np.ndarray:
    return encode_texts(model, corpus, progress=False)


@pytest.fixture(scope="module")
def refined(model, base_vectors):
    return refine_model(model, embeddings=base_vectors, **FIT)


@pytest.fixture(scope="module")
def word_pairs() -> tuple[list[str], list[str], np.ndarray]:
    """40 real SimLex-999 pairs with their human scores."""
    data = load_word_similarity("simlex999")
    pairs = data.pairs[:40]
    return [data.words[i] for i in pairs[:, 0]], [data.words[j] for j in pairs[:, 1]], data.gold[:40]


@pytest.fixture(scope="module")
def refined_word_spearman(refined, word_pairs) -> float:
    """Spearman of the refined model's cosine on the 40 pairs, computed from ``encode``."""
    first, second, gold = word_pairs
    a, b = refined.encode(first), refined.encode(second)
    return float(spearmanr((a * b).sum(axis=1), gold).statistic)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------- refine_model
def test_refine_model_appends_stage_and_leaves_original_untouched(model, corpus, base_vectors, refined):
    assert len(model) == 3 and find_stage(model) is None
    assert np.allclose(encode_texts(model, corpus[:8], progress=False), base_vectors[:8], atol=1e-6)
    assert len(refined) == 4 and isinstance(refined[-1], SimSkipStage)
    out = refined.encode(corpus, batch_size=64)
    assert out.shape == (64, 384) and out.dtype == np.float32
    # The pipeline normalises, so the stage re-normalises: unit vectors, as before refining.
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # encode == the fitted SimSkip model's transform of the base embeddings (then normalised).
    expected = unit(refined[-1].simskip.transform(base_vectors))
    assert np.allclose(out, expected, atol=1e-5)
    # Training moved the embeddings (the zero-initialised last layer is no longer zero).
    assert np.abs(out - base_vectors).max() > 1e-3


def test_refine_model_from_texts_matches_embeddings_and_caches(model, corpus, refined, tmp_path):
    from_texts = refine_model(model, corpus, cache_dir=tmp_path, **FIT)
    a, b = from_texts[-1].simskip, refined[-1].simskip  # refined was fitted on encode_texts(model, corpus)
    probe = np.random.default_rng(0).normal(size=(5, 384)).astype(np.float32)
    assert np.allclose(a.transform(probe), b.transform(probe), atol=1e-5)  # same seed and data, same refiner
    assert len(list((tmp_path / "text-embeddings").glob("*.npz"))) == 1


def test_refine_model_inplace(model, base_vectors):
    target = copy.deepcopy(model)
    result = refine_model(target, embeddings=base_vectors, inplace=True, **FIT)
    assert result is target and isinstance(target[-1], SimSkipStage)


def test_refine_model_passes_simskip_options(model, base_vectors):
    out = refine_model(model, embeddings=base_vectors, loss="studentt", depth=3, hidden_dim=64, **FIT)
    simskip = out[-1].simskip
    assert simskip.get_params()["loss"] == "studentt"
    assert simskip.refiner_.depth == 3 and simskip.refiner_.hidden_dim == 64
    assert simskip.get_params()["normalize_output"] is True  # the pipeline normalises


def test_refining_twice_is_refused(refined, base_vectors):
    with pytest.raises(ValueError, match="already has a SimSkip stage"):
        refine_model(refined, embeddings=base_vectors, **FIT)
    with pytest.raises(ValueError, match="already has a SimSkip stage"):
        attach_simskip(refined, refined[-1].simskip)


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ([], ValueError, "empty"),
        (["fine", 3, "also fine"], TypeError, "index 1"),
        (["fine", None], TypeError, "only strings"),
        ("one string", TypeError, "not one string"),
    ],
)
def test_bad_corpus_is_rejected(model, texts, error, match):
    with pytest.raises(error, match=match):
        refine_model(model, texts, **FIT)


def test_texts_xor_embeddings(model, corpus, base_vectors):
    with pytest.raises(ValueError, match="exactly one of texts"):
        refine_model(model, corpus, embeddings=base_vectors, **FIT)
    with pytest.raises(ValueError, match="exactly one of texts"):
        refine_model(model, **FIT)


def test_dimension_mismatches_are_clear_errors(model, base_vectors):
    with pytest.raises(ValueError, match="dimension 16 but the model outputs 384"):
        refine_model(model, embeddings=base_vectors[:, :16], **FIT)
    small = SimSkip(**FIT).fit(np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32))
    with pytest.raises(ValueError, match="outputs 384-d embeddings but the SimSkip model was fitted on 16-d"):
        attach_simskip(model, small)
    with pytest.raises(ValueError, match="not fitted"):
        attach_simskip(model, SimSkip())


def test_stage_rejects_a_base_model_with_another_dimension(model, refined):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense

    transformer, pooling = model[0], model[1]
    dense = Dense(384, 128)
    with pytest.raises(ValueError, match=r"output 128-d embeddings, but the stage\s+was fitted on 384-d"):
        SentenceTransformer(modules=[transformer, pooling, dense, refined[-1]], device="cpu")


# ------------------------------------------------------------------------------- save / load
@pytest.fixture(scope="module")
def saved(refined, tmp_path_factory) -> Path:
    """The refined model saved once in the stage form (``model.save(path, portable=False)``)."""
    path = tmp_path_factory.mktemp("saved") / "refined"
    refined.save(str(path), portable=False)
    return path


def _stage_subfolder(path: Path) -> str:
    return json.loads((path / "modules.json").read_text())[-1]["path"]


def _broken_copy(saved: Path, target: Path, missing: str | None) -> Path:
    """A copy of ``saved`` (big files symlinked) whose stage folder lacks ``missing``."""
    stage = _stage_subfolder(saved)
    target.mkdir()
    for entry in saved.iterdir():
        if entry.name != stage:
            (target / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    if missing != "<folder>":
        shutil.copytree(saved / stage, target / stage)
        if missing is not None:
            (target / stage / missing).unlink()
    return target


def test_save_and_reload_gives_identical_embeddings(refined, saved, corpus):
    from sentence_transformers import SentenceTransformer

    modules = json.loads((saved / "modules.json").read_text())
    assert modules[-1]["type"] == "simskip_text.module.SimSkipStage"  # the stable import path
    stage_dir = saved / modules[-1]["path"]
    assert {"simskip_stage.json", "config.json", "model.safetensors"} <= {p.name for p in stage_dir.iterdir()}
    assert not list(stage_dir.glob("*.bin")) and not list(stage_dir.glob("*.pkl"))

    reloaded = SentenceTransformer(str(saved), trust_remote_code=True, device="cpu")
    assert isinstance(reloaded[-1], SimSkipStage) and reloaded[-1].normalize
    assert np.array_equal(reloaded.encode(corpus[:16]), refined.encode(corpus[:16]))
    # The stage folder is also a plain SimSkip model folder.
    assert SimSkip.load(stage_dir).dim_ == 384


def test_reload_without_trust_remote_code_explains_the_flag(saved):
    from sentence_transformers import SentenceTransformer

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(saved), device="cpu")


def test_reload_with_missing_refiner_weights_is_a_clear_error(saved, tmp_path):
    from sentence_transformers import SentenceTransformer

    broken = _broken_copy(saved, tmp_path / "m", "model.safetensors")
    with pytest.raises(CorruptModelError, match=r"SimSkip stage is incomplete: model.safetensors is missing"):
        SentenceTransformer(str(broken), trust_remote_code=True, device="cpu")


@pytest.mark.parametrize("missing", ["config.json", "simskip_stage.json", "<folder>"])
def test_stage_load_names_the_missing_file(saved, tmp_path, missing):
    broken = _broken_copy(saved, tmp_path / "m", missing)
    expected = "the stage folder" if missing == "<folder>" else missing
    with pytest.raises(CorruptModelError, match=expected):
        SimSkipStage.load(str(broken), subfolder=_stage_subfolder(saved))


def test_saved_stage_with_inconsistent_dimension_is_refused(saved, tmp_path):
    broken = _broken_copy(saved, tmp_path / "m", None)
    config_path = broken / _stage_subfolder(saved) / "simskip_stage.json"
    config = json.loads(config_path.read_text())
    config["in_features"] = 768
    config_path.write_text(json.dumps(config))
    with pytest.raises(CorruptModelError, match="768-d"):
        SimSkipStage.load(str(broken), subfolder=_stage_subfolder(saved))
    assert SimSkipStage.load(str(saved), subfolder=_stage_subfolder(saved)).in_features == 384


# ------------------------------------------------------------------------------- extraction and cache
def test_encode_texts_cache_hit_skips_the_model(model, corpus, tmp_path, monkeypatch):
    first = encode_texts(model, corpus[:10], cache_dir=tmp_path, progress=False)
    broken = copy.copy(model)

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(broken, "encode", fail)
    again = encode_texts(broken, corpus[:10], cache_dir=tmp_path, progress=False)
    assert np.array_equal(first, again)
    with pytest.raises(AssertionError, match="cache should have answered"):
        encode_texts(broken, corpus[:11], cache_dir=tmp_path, progress=False)  # other texts, other key
    with pytest.raises(AssertionError, match="cache should have answered"):
        encode_texts(broken, corpus[:10], cache_dir=tmp_path, use_cache=False, progress=False)


def test_fingerprint_tracks_the_weights(model, refined):
    assert model_fingerprint(model) == model_fingerprint(copy.deepcopy(model))
    assert model_fingerprint(model) != model_fingerprint(refined)
    changed = copy.deepcopy(model)
    with __import__("torch").no_grad():
        next(changed[0].parameters()).add_(1e-3)
    assert model_fingerprint(changed) != model_fingerprint(model)


def test_extract_hook_embeds_texts(model, corpus, base_vectors, tmp_path):
    hook = get_plugin_manager().hook
    source = {"texts": corpus[:12], "model": model, "labels": np.arange(12) % 2}
    options = {"batch_size": 4, "progress": False, "cache_dir": tmp_path}
    result = hook.simskip_extract_embeddings(source=source, options=options)
    assert result.vectors.shape == (12, 384)
    assert list(result.ids) == corpus[:12] and result.labels.tolist() == [0, 1] * 6
    assert np.allclose(result.vectors, base_vectors[:12], atol=1e-5)
    assert result.meta["fingerprint"] == model_fingerprint(model)


def test_attach_hook_appends_a_fitted_model(model, refined, corpus):
    simskip = refined[-1].simskip
    attached = get_plugin_manager().hook.simskip_attach(host=model, model=simskip)
    assert attached is not model and isinstance(attached[-1], SimSkipStage) and len(model) == 3
    assert np.allclose(attached.encode(corpus[:8]), refined.encode(corpus[:8]), atol=1e-6)


# ------------------------------------------------------------------------------- third-party evaluators
def test_embedding_similarity_evaluator_scores_the_refined_embeddings(
    model, refined, word_pairs, refined_word_spearman
):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    first, second, gold = word_pairs
    evaluator = EmbeddingSimilarityEvaluator(first, second, gold.tolist(), name="simlex", write_csv=False)
    result = refined.evaluate(evaluator)
    assert result[evaluator.primary_metric] == pytest.approx(refined_word_spearman, abs=1e-6)
    # The base model scores differently, so the evaluator saw the refined embeddings.
    assert model.evaluate(evaluator)[evaluator.primary_metric] != pytest.approx(
        refined_word_spearman, abs=1e-4
    )


def test_mteb_evaluate_runs_offline_on_an_in_memory_task(refined, word_pairs, refined_word_spearman):
    import mteb
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    first, second, gold = word_pairs

    class SimLexSample(AbsTaskSTS):
        metadata = TaskMetadata(
            name="SimLexSample",
            description="40 SimLex-999 pairs from gensim's test data, held in memory.",
            reference="https://fh295.github.io/simlex.html",
            dataset={"path": "in-memory", "revision": "0"},
            type="STS",
            category="t2t",
            modalities=["text"],
            eval_splits=["test"],
            eval_langs=["eng-Latn"],
            main_score="cosine_spearman",
            date=("2014-01-01", "2014-12-31"),
            domains=[],
            task_subtypes=[],
            license="not specified",
            annotations_creators="human-annotated",
            dialect=[],
            sample_creation="found",
            bibtex_citation="",
        )
        min_score = 0
        max_score = 10

        def load_data(self, num_proc=None, **kwargs) -> None:
            split = Dataset.from_dict({"sentence1": first, "sentence2": second, "score": gold.tolist()})
            self.dataset = DatasetDict({"test": split})
            self.data_loaded = True

    result = mteb.evaluate(refined, SimLexSample(), cache=None, show_progress_bar=False)
    # Equal to the score of the refined embeddings (the base model's differs, see the test above),
    # so mteb encoded through the SimSkip stage.
    assert result.task_results[0].get_score() == pytest.approx(refined_word_spearman, abs=1e-6)


# ------------------------------------------------------------------------------- a real task end to end
def test_word_similarity_task_loads_encodes_and_caches(tmp_path, monkeypatch, model):
    from simskip_core.plugins import all_tasks
    from simskip_core.tasks import LoadOptions

    task = all_tasks()["text/wordsim353"]
    options = LoadOptions(quick=True, cache_dir=Path(tmp_path), progress=False)
    data = task.load(options)
    assert len(data.train) == 437 and data.train.vectors.shape == (437, 384) and not data.train.pairs
    assert data.context["pairs"].shape == (353, 2)
    result = task.evaluate(data, data.train.vectors, data.test.vectors, 0, {})
    assert 0.3 < result.metrics["spearman"] < 0.95  # all-MiniLM-L6-v2 on WordSim-353 is about 0.6

    def fail():
        raise AssertionError("a cache hit must not load the model")

    monkeypatch.setattr(text_tasks, "_shipped_model", fail)
    again = task.load(options)
    assert np.array_equal(again.train.vectors, data.train.vectors)
