"""Offline data: corpus size and splits, batches, masking, digits, MQAR."""

import sys

import pytest
import torch

from structured.data import (
    IGNORE_INDEX,
    digits,
    lm_batch,
    mask_tokens,
    mqar_batch,
    text_corpus,
    text_splits,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: 1 thread


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_corpus_is_english_text_over_one_megabyte():
    corpus = text_corpus()
    assert len(corpus) >= 1_000_000
    text = corpus.decode("utf-8")
    letters = sum(c.isascii() and (c.isalpha() or c == " ") for c in text)
    assert letters / len(text) > 0.75
    for word in (" the ", " and ", " of ", " is "):
        assert text.count(word) > 1000


def test_splits_partition_the_corpus_deterministically():
    splits = text_splits()
    total = sum(s.numel() for s in splits.values())
    assert total == len(text_corpus())
    assert splits["val"].numel() > 50_000 and splits["test"].numel() > 50_000
    assert splits["train"].numel() > 0.85 * total
    assert all(s.dtype == torch.long and 0 <= s.min() and s.max() < 256
               for s in splits.values())
    again = text_splits.__wrapped__()
    assert all(torch.equal(again[k], splits[k]) for k in splits)


def test_lm_batch_targets_are_next_tokens():
    data = torch.arange(1000)
    x, y = lm_batch(data, 4, 16, _gen())
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    x2, _ = lm_batch(data, 4, 16, _gen())
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="longer than seq_len"):
        lm_batch(torch.arange(10), 1, 16, _gen())


def test_mask_tokens():
    x = torch.randint(0, 256, (64, 128), generator=_gen())
    inputs, targets = mask_tokens(x, mask_id=256, vocab_size=256, prob=0.15, gen=_gen(1))
    selected = targets != IGNORE_INDEX
    assert torch.equal(targets[selected], x[selected])
    assert torch.equal(inputs[~selected], x[~selected])
    frac = selected.float().mean().item()
    assert 0.13 < frac < 0.17                      # 8192 draws: ±5 standard deviations
    masked = (inputs[selected] == 256).float().mean().item()
    assert 0.75 < masked < 0.85
    with pytest.raises(ValueError, match="prob"):
        mask_tokens(x, mask_id=256, vocab_size=256, prob=1.5, gen=_gen())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_digits_split(dtype):
    train, test = digits("train", dtype), digits("test", dtype)
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == dtype
    assert 0 <= train.images.min() and train.images.max() <= 1
    assert set(test.labels.tolist()) == set(range(10))
    assert torch.equal(digits("test", dtype).images, test.images)
    with pytest.raises(ValueError, match="split"):
        digits("val")


def test_digits_without_scikit_learn_say_how_to_install_it(monkeypatch):
    from structured import data

    for name in ("sklearn", "sklearn.datasets"):  # as if scikit-learn were not installed
        monkeypatch.setitem(sys.modules, name, None)
    data._digits_arrays.cache_clear()
    with pytest.raises(ImportError, match=r'needs scikit-learn: pip install -e "\.\[data\]"'):
        digits("train")
    data._digits_arrays.cache_clear()


def test_mqar_queries_recall_their_values():
    num_kv, vocab = 4, 32
    x, y = mqar_batch(8, 32, num_kv=num_kv, vocab_size=vocab, gen=_gen())
    assert x.shape == y.shape == (8, 32)
    for row_x, row_y in zip(x, y, strict=True):
        keys, values = row_x[0:2 * num_kv:2], row_x[1:2 * num_kv:2]
        assert len(set(keys.tolist())) == num_kv
        assert (keys >= 1).all() and (keys < vocab // 2).all() and (values >= vocab // 2).all()
        queries = (row_y != IGNORE_INDEX).nonzero().flatten()
        assert len(queries) == num_kv and (queries >= 2 * num_kv).all()
        pairs = dict(zip(keys.tolist(), values.tolist(), strict=True))
        assert all(pairs[int(row_x[q])] == int(row_y[q]) for q in queries)


def test_mqar_bad_arguments():
    with pytest.raises(ValueError, match="seq_len"):
        mqar_batch(1, 8, num_kv=4, vocab_size=32, gen=_gen())
    with pytest.raises(ValueError, match="num_kv"):
        mqar_batch(1, 128, num_kv=20, vocab_size=32, gen=_gen())
