"""Run by ``torch.distributed.run`` in test_trainer_ddp.py: trains, records samples and weights.

argv: ARCHIVE OUT RESULT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from training_helpers import tiny_config  # noqa: E402

from imgae_dx.run.checkpoint import state_dict_digest  # noqa: E402
from imgae_dx.training.streaming_trainer import StreamingTrainer  # noqa: E402


def main() -> None:
    archive, out, result_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rank = int(os.environ["RANK"])
    cfg = tiny_config(archive, out, models=["unet", "ae"], stages=["images_001", "images_002"],
                      **{"training.epochs_per_stage": 2})
    seen: list[dict] = []

    def on_batch(stage, epoch, batch):
        seen.append({"stage": stage, "epoch": epoch, "members": batch.members.tolist()})

    tr = StreamingTrainer(cfg, on_batch=on_batch)
    res = tr.train_progressive_stages()
    digests = {n: state_dict_digest(m.state_dict()) for n, m in tr.models.items()}
    (result_dir / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": tr.dist.world_size, "seen": seen, "digests": digests,
         "step": res.step, "interrupted": res.interrupted}
    ))


if __name__ == "__main__":
    main()
