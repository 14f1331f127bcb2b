"""Item-tower inputs: concatenation order, per-source L2 normalisation, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from xreflect.training.config import TrainConfig
from xreflect.training.features import load_features


def write(tmp_path, name, rows):
    path = tmp_path / f"{name}.npy"
    np.save(path, np.array(rows, dtype=np.float32))
    return path


def test_sources_concatenate_in_order_raw_or_each_scaled_to_unit_norm(tmp_path):
    text = write(tmp_path, "description", [[0.6, 0.8], [1.0, 0.0]])   # unit norm already
    image = write(tmp_path, "image", [[0.0, 10.0], [0.0, 0.0]])        # norm 10, and an all-zero row
    np.testing.assert_allclose(load_features([text, image]), [[0.6, 0.8, 0.0, 10.0], [1.0, 0.0, 0.0, 0.0]])
    # Normalised: the image row of norm 10 becomes [0, 1]; the zero row stays zero (no division by 0).
    np.testing.assert_allclose(load_features([text, image], normalize=True),
                               [[0.6, 0.8, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])


def test_mismatched_rows_name_both_files(tmp_path):
    text = write(tmp_path, "description", [[1.0], [1.0]])
    image = write(tmp_path, "image", [[1.0]])
    with pytest.raises(ValueError, match="image.npy: 1 rows, but .*description.npy has 2"):
        load_features([text, image], normalize=True)


def test_normalize_sources_param_is_a_boolean():
    assert TrainConfig.from_params({"normalize_sources": True}).normalize_sources is True
    with pytest.raises(ValueError, match="train.normalize_sources must be true or false, got 'yes'"):
        TrainConfig.from_params({"normalize_sources": "yes"})
