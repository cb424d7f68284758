"""Opening a run's archive, index and stages."""

from __future__ import annotations

import pytest
from training_helpers import tiny_config

from imgae_dx.errors import UserError
from imgae_dx.training.stage_data import open_stages


def test_open_stages_resolves_the_stages_and_closes_what_it_opened_on_a_bad_stage(train_archive, tmp_path,
                                                                                monkeypatch):
    import imgae_dx.streaming.sources as sources

    opened = []
    real = sources.open_archive

    def recording(spec, cfg):
        opened.append(real(spec, cfg))
        close = opened[-1].close
        opened[-1].close = lambda: (opened.append("closed"), close())
        return opened[-1]

    monkeypatch.setattr(sources, "open_archive", recording)
    archive, index, stages = open_stages(tiny_config(train_archive, tmp_path / "r", stages="all"))
    try:
        assert stages == ["images_001", "images_002", "images_003"] == index.stages()
    finally:
        archive.close()
    opened.clear()
    with pytest.raises(UserError, match="images_042"):
        open_stages(tiny_config(train_archive, tmp_path / "r", stages=["images_042"]))
    assert opened[-1] == "closed"
    given = real(str(train_archive), tiny_config(train_archive, tmp_path / "r").data)
    try:  # an archive the caller opened stays open
        with pytest.raises(UserError):
            open_stages(tiny_config(train_archive, tmp_path / "r", stages=["images_042"]), given)
        assert given.read_member(given.index.name(0))
    finally:
        given.close()
