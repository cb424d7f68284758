"""The run folder's contracts, shared by the trainer (the writer) and every reader.

* :mod:`.checkpoint` — the versioned checkpoint payload (:class:`CheckpointPayload`) and
  :func:`read_checkpoint`;
* :mod:`.records` — the typed rows of ``metrics.jsonl``;
* :mod:`.identity` — which configuration keys define a run (fingerprint, differences);
* :mod:`.splits` — ``split.csv``, every image's split;
* :mod:`.calibration` — ``checkpoints/MODEL/calibration.json``;
* :mod:`.loader` — the one run loader: a run folder's models (:class:`~.loader.RunFolder`).

Depends on nothing but :mod:`imgae_dx.config`, :mod:`imgae_dx.errors`, :mod:`imgae_dx.utils`,
torch and (the loader only) :mod:`imgae_dx.models`, so training, evaluation, visualisation and
inference can all import it without importing each other.
"""
