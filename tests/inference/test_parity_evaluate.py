"""A PNG of the NIH-layout archive, saved to disk and given to ``predict``, scores exactly as
``evaluate`` scored it from the stream (same decode, resize, uint8 → float and model)."""

from __future__ import annotations

import numpy as np

from imgae_dx.evaluation.evaluator import CloudEvaluator
from imgae_dx.evaluation.score_files import read_scores
from imgae_dx.inference.images import load_file, to_unit
from imgae_dx.inference.loading import load_run_models
from imgae_dx.inference.predictor import Predictor

from .conftest import extract_pngs, make_run_folder


def test_predict_on_archive_pngs_equals_the_evaluators_scores(small_archive, tmp_path):
    run = make_run_folder(tmp_path / "run", source=small_archive)
    models = load_run_models(run)
    ev = CloudEvaluator(run, progress=False, device="cpu")
    ev.load_models()  # the same checkpoints, read through the same typed reader
    ev.score()
    ev._archive.close()
    table = read_scores(run / "eval" / "scores.csv", ev.models)
    assert len(table) >= 10

    files = extract_pngs(small_archive, tmp_path / "pngs", 10_000, split_list="test_list.txt")
    by_name = {p.name: p for p in files}
    res = Predictor(models, batch_size=5).predict([by_name[r["image"]] for r in table.rows])
    got = {(r.source.rsplit("/", 1)[-1], r.model): r.score for r in res}
    for i, row in enumerate(table.rows):
        for m in ev.models:
            assert abs(got[(row["image"], m)] - table.scores[m][i]) <= 1e-6 * max(1.0, abs(table.scores[m][i]))

    # the model input itself is bit-identical to the dataset's
    from imgae_dx.data.dataset import StreamingNIHDataset
    from imgae_dx.data.datasets.nih import NIHIndex
    from imgae_dx.streaming.sources import open_archive

    with open_archive(str(small_archive), ev.cfg.data) as a:
        idx = NIHIndex.from_archive(a)
        ds = StreamingNIHDataset(a, idx, "images_001", "test", ev.cfg.data.model_copy(update={"cache": "off"}),
                                 seed=ev.cfg.seed, batch_size=4, drop_last=False)
        for s in ds:
            mine = to_unit(load_file(by_name[s["image_id"]], 64))
            assert np.array_equal(mine, s["image"][0].numpy()), s["image_id"]
        ds.close()
