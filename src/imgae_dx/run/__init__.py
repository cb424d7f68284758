"""The run folder's contracts, shared by the trainer (the writer) and every reader.

* :mod:`.checkpoint` — the versioned checkpoint payload (:class:`CheckpointPayload`) and
  :func:`read_checkpoint`;
* :mod:`.records` — the typed rows of ``metrics.jsonl``;
* :mod:`.identity` — which configuration keys define a run (fingerprint, differences).

Depends on nothing but :mod:`imgae_dx.errors`, :mod:`imgae_dx.utils` and torch, so training,
evaluation, visualisation and inference can all import it without importing each other.
"""
