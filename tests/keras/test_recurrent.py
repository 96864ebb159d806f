"""Recurrent models beyond the committed fixtures: returned states, initial states, every
return_sequences x go_backwards, Bidirectional merge modes, and masks (Embedding mask_zero,
Masking) on padded batches -- written by Keras at test time, compared with its predictions."""

from __future__ import annotations

import numpy as np

from tests.keras._live import check, inputs, keras, randomize


def _padded_ids(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 12, (4, 7)).astype(np.int32)
    ids[0, 4:] = 0  # right padding
    ids[1, :3] = 0  # left padding
    ids[2, 2] = 0  # a hole
    return ids


def test_states_directions_and_merge_modes(tmp_path) -> None:
    K = keras()
    L = K.layers
    x = K.Input((6, 3), name="seq")
    seq, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="enc")(x)
    outs = [seq, h, c]
    outs += L.GRU(3, return_state=True, go_backwards=True, name="gru_state")(x)
    outs += L.SimpleRNN(2, return_state=True, return_sequences=True, name="srnn_state")(x)
    # a decoder started from the encoder's states
    outs.append(L.LSTM(4, return_sequences=True, name="dec")(seq, initial_state=[h, c]))
    for rs in (True, False):
        for gb in (True, False):
            outs.append(L.LSTM(2, return_sequences=rs, go_backwards=gb, name=f"lstm_{rs}_{gb}")(x))
            outs.append(L.GRU(2, return_sequences=rs, go_backwards=gb, reset_after=False, name=f"gru_{rs}_{gb}")(x))
    for mode in ("concat", "sum", "mul", "ave"):
        outs.append(L.Bidirectional(L.GRU(2, return_sequences=True), merge_mode=mode, name=f"bi_{mode}")(x))
    outs += L.Bidirectional(L.LSTM(2, return_state=True), name="bi_state")(x)
    outs += L.Bidirectional(L.SimpleRNN(2, return_sequences=True), merge_mode=None, name="bi_none")(x)
    model = K.Model(x, outs)
    randomize(model, 11)
    check(model, inputs((6, 3), seed=1), tmp_path, "states")


def test_masks_on_padded_batches(tmp_path) -> None:
    K = keras()
    L = K.layers
    ids = K.Input((7,), dtype="int32", name="ids")
    e = L.Embedding(12, 4, mask_zero=True, name="emb")(ids)
    d = L.Dense(4, activation="tanh", name="dense_keeps_mask")(e)
    y = L.LSTM(3, return_sequences=True, name="lstm_seq")(d)
    outs = [
        y,
        L.LSTM(3, name="lstm_last")(e),
        L.GRU(3, go_backwards=True, name="gru_back")(e),
        L.SimpleRNN(2, return_sequences=True, go_backwards=True, name="srnn_back")(e),
        L.Bidirectional(L.LSTM(2, return_sequences=True), name="bi_seq")(y),
        L.Bidirectional(L.GRU(2), merge_mode="sum", name="bi_last")(e),
        L.GlobalAveragePooling1D(name="masked_mean")(y),
        L.LSTM(2, name="lstm_on_add")(L.Add(name="add")([d, L.Dense(4, name="d2")(e)])),
    ]
    feats = K.Input((5, 3), name="feats")
    m = L.Masking(0.0, name="masking")(feats)
    outs += [m, L.GRU(2, name="gru_masked")(m), L.LSTM(2, return_state=True, name="lstm_masked_state")(m)[2]]
    model = K.Model([ids, feats], outs)
    randomize(model, 12)
    f = inputs((5, 3), seed=2)[0]
    f = np.concatenate([f, f[:1]])  # four samples, like the ids
    f[0, 3:] = 0.0
    f[2, 1] = 0.0
    check(model, [_padded_ids(), f], tmp_path, "masks")


def test_conv_lstm(tmp_path) -> None:
    """ConvLSTM2D (sequences, last step, states, backwards, strides, dilation, channels_first) and
    ConvLSTM1D, followed by layers that read their outputs."""
    K = keras()
    L = K.layers
    x = K.Input((4, 7, 6, 2), name="video")
    seq = L.ConvLSTM2D(3, 3, padding="same", return_sequences=True, name="cl_seq")(x)
    last, h, c = L.ConvLSTM2D(2, (3, 2), strides=2, return_state=True, go_backwards=True,
                              recurrent_activation="hard_sigmoid", name="cl_state")(x)
    dil = L.ConvLSTM2D(2, 2, dilation_rate=2, activation="relu", use_bias=False, name="cl_dil")(x)
    cf = L.ConvLSTM2D(2, 3, padding="same", data_format="channels_first", name="cl_cf")(
        L.Permute((1, 4, 2, 3), name="to_cf")(x))
    head = L.Dense(2, name="head")(L.Flatten(name="flat")(L.Conv2D(2, 3, name="conv_after")(last)))
    model = K.Model(x, [seq, last, h, c, dil, L.Permute((2, 3, 1), name="cf_back")(cf), head])
    randomize(model, 12)
    check(model, inputs((4, 7, 6, 2), seed=2), tmp_path, "conv_lstm")

    s = K.Input((5, 8, 3), name="seq")
    y = L.ConvLSTM1D(2, 3, padding="same", return_sequences=True, go_backwards=True, name="cl1")(s)
    model1 = K.Model(s, [y, L.ConvLSTM1D(3, 2, name="cl1_last")(y)])
    randomize(model1, 13)
    check(model1, inputs((5, 8, 3), seed=3), tmp_path, "conv_lstm1d")
