"""Attention layers written by Keras at test time: MultiHeadAttention (self and cross, key,
attention_mask, causal, padding masks from Embedding, attention_axes on images), Attention (dot,
scaled, concat) and AdditiveAttention, with masks -- equal to Keras's predictions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.keras._live import check, inputs, keras, randomize


def test_multi_head_attention(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((5, 6), name="x")
    ctx = K.Input((7, 4), name="ctx")
    am = K.Input((5, 7), name="att_mask")
    outs = [
        L.MultiHeadAttention(2, 3, name="self")(x, x),
        L.MultiHeadAttention(3, 2, value_dim=4, output_shape=5, name="cross")(x, ctx),
        L.MultiHeadAttention(2, 3, use_bias=False, name="with_key")(x, ctx, key=L.Dense(3, name="kproj")(ctx)),
        L.MultiHeadAttention(2, 3, name="masked")(x, ctx, attention_mask=am),
        L.MultiHeadAttention(2, 2, name="causal")(x, x, use_causal_mask=True),
    ]
    img = K.Input((4, 3, 6), name="img")
    outs.append(L.MultiHeadAttention(2, 3, attention_axes=(1, 2), name="axes_hw")(img, img))
    outs.append(L.MultiHeadAttention(2, 3, attention_axes=(2,), name="axes_w")(img, img))
    model = K.Model([x, ctx, am, img], outs)
    randomize(model, 31)
    xs = inputs((5, 6), (7, 4), (5, 7), (4, 3, 6), seed=5)
    xs[2] = (xs[2] > 0).astype(np.float32)
    check(model, xs, tmp_path, "mha")


def test_attention_with_padding_masks(tmp_path) -> None:
    """One model per layer: Keras 3 itself drops the implicit masks of some layers in a model with
    several outputs, while a model with one output applies them as documented."""
    K = keras()
    L = K.layers
    rng = np.random.default_rng(6)
    qi = rng.integers(1, 10, (3, 5)).astype(np.int32)
    vi = rng.integers(1, 10, (3, 6)).astype(np.int32)
    qi[0, 3:] = 0
    vi[1, 4:] = 0
    vi[2, 0] = 0
    layers = {
        "dot": lambda q, v: L.Attention(name="dot")([q, v]),
        "scaled": lambda q, v: L.Attention(use_scale=True, name="scaled")([q, v, L.Dense(4, name="k")(v)]),
        "concat": lambda q, v: L.Attention(score_mode="concat", use_scale=True, name="concat")([q, v]),
        "additive": lambda q, v: L.AdditiveAttention(name="additive")([q, v]),
        "causal": lambda q, v: L.Attention(name="causal")([q, q], use_causal_mask=True),
        "mha_masked": lambda q, v: L.MultiHeadAttention(2, 3, name="mha_masked")(q, v),
    }
    for i, (name, make) in enumerate(layers.items()):
        q_ids = K.Input((5,), dtype="int32", name="q_ids")
        v_ids = K.Input((6,), dtype="int32", name="v_ids")
        emb = L.Embedding(10, 4, mask_zero=True, name="emb")
        model = K.Model([q_ids, v_ids], make(emb(q_ids), emb(v_ids)))
        randomize(model, 32 + i)
        check(model, [qi, vi], tmp_path, name, formats=("keras", "h5") if i == 0 else ("keras",))


def test_token_and_position_embedding(tmp_path) -> None:
    """A transformer encoder as Keras examples build it: token Embedding (mask_zero) plus a
    position table that Keras stores as a constant operand of ``x + pos`` (an op, past which Keras
    carries no mask), self-attention, a constant without a batch axis subtracted."""
    K = keras()
    L = K.layers
    tok = K.Input((7,), dtype="int32", name="tokens")
    x = L.Embedding(20, 8, mask_zero=True, name="tok_emb")(tok)
    y = x + L.Embedding(7, 8, name="pos_emb")(K.ops.expand_dims(K.ops.arange(7), 0))
    y = K.ops.full((7, 8), 0.5) - y  # a constant without a batch axis
    y = L.LayerNormalization(name="ln")(y + L.MultiHeadAttention(2, 4, name="mha")(y, y))
    model = K.Model(tok, L.Dense(3, name="out")(L.GlobalAveragePooling1D(name="gap")(y)))
    randomize(model, 5)
    ids = np.random.default_rng(0).integers(1, 20, (3, 7)).astype(np.int32)
    ids[0, 5:] = 0
    check(model, [ids], tmp_path, "positions_const")

    # positions as an input of their own: Keras 3's Add of a masked and an unmasked input
    # carries no mask, so the attention sees every step; Concatenate's mask is computed by ops
    # Keras writes into the file (expand_dims, zeros_like, ones_like, concatenate, any)
    pos = K.Input((7,), dtype="int32", name="positions")
    tok2 = L.Embedding(20, 8, mask_zero=True, name="tok_emb2")(tok)
    z = L.Add(name="tok_plus_pos")([tok2, L.Embedding(7, 8, name="pos_emb2")(pos)])
    cat = L.Concatenate(name="cat")([tok2, L.Embedding(7, 8, name="pos_emb3")(pos)])
    model2 = K.Model([tok, pos], [L.MultiHeadAttention(2, 4, name="mha2")(z, z),
                                  L.GlobalAveragePooling1D(name="mean")(z),
                                  L.GlobalAveragePooling1D(name="masked_mean")(cat)])
    randomize(model2, 6)
    check(model2, [ids, np.tile(np.arange(7, dtype=np.int32), (3, 1))], tmp_path, "positions_input")


def test_a_constant_that_does_not_line_up_is_refused(tmp_path) -> None:
    K = keras()
    from tlexp.errors import SourceError
    from tlexp.sources.keras import load_keras

    x = K.Input((7, 8), name="seq")
    model = K.Model(x, x + K.ops.ones((8,)))  # broadcast over steps: no batch axis to find
    model.save(tmp_path / "bad.keras")
    with pytest.raises(SourceError, match=r"constant operand of shape \[8\] does not line up"):
        load_keras(tmp_path / "bad.keras")
