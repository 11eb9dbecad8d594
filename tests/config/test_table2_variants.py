"""The EKD paper's Table-2 rows run SP, CCKD and DarkRank as the paper's code (Tencent/TFace
``recognition/tasks/ekd/distillation/``) did; the variants of the methods' own papers are extra rows."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import ekd.distill as distill
from ekd.config import list_methods

# Table-2 row -> (its objective, the settings TFace's code uses), and its extra row with the paper variant
TABLE2 = {
    "sp": ("sp", {"variant": "tface"}),
    "cckd": ("cckd", {"variant": "tface", "gamma": 0.4, "order": 2}),  # TFace CC(gamma=0.4, p=2)
    "darkrank": ("darkrank", {"variant": "hard", "alpha": 3.0, "beta": 3.0, "list_length": 3}),
}
EXTRA = {
    "sp_paper": ("sp", {"variant": "paper"}),
    "cckd_paper": ("cckd", {"variant": "paper", "gamma": 0.4, "order": 2}),
    "darkrank_soft": ("darkrank", {"variant": "soft", "alpha": 3.0, "beta": 3.0, "list_length": 3}),
}


def _methods():
    return {m.name: m for m in list_methods()}


@pytest.mark.parametrize(("method", "expected"), list(TABLE2.items()) + list(EXTRA.items()))
def test_method_file_settings(method, expected):
    info = _methods()[method]
    objective, settings = expected
    spec = OmegaConf.to_container(OmegaConf.load(info.path).objectives)
    assert list(spec) == [objective]
    assert {k: spec[objective][k] for k in settings} == settings
    # the file builds the objective (a typo in a variant name would raise here)
    built = distill.create(objective, **{k: v for k, v in spec[objective].items() if k != "weight"})
    assert built.variant == settings["variant"]
    if method in TABLE2:
        assert info.paper_row is not None and info.demo, "a Table-2 row: in the table and in the demo"
    else:
        assert info.paper_row is None and not info.demo, "an extra row: not in the default demo"


def test_extra_rows_keep_their_table2_rows_weight():
    methods = _methods()
    for extra, row in (("sp_paper", "sp"), ("cckd_paper", "cckd"), ("darkrank_soft", "darkrank")):
        (a,) = OmegaConf.load(methods[extra].path).objectives.values()
        (b,) = OmegaConf.load(methods[row].path).objectives.values()
        assert a.weight == b.weight
        assert methods[extra].label != methods[row].label
