"""The loop's state: where an epoch starts after a resume and otherwise, and the last save."""

from __future__ import annotations

from imgae_dx.run.checkpoint import Position
from imgae_dx.training.loop import Progress
from imgae_dx.training.state import TrainState


def test_first_epoch_after_a_resume_continues_at_the_saved_batch_then_epochs_start_at_0():
    st = TrainState(progress=Progress(step=7, batch=0), position=Position(1, 2, 3),
                    resume_dataset={"position": 12})
    assert st.start_epoch(1, 2) == {"position": 12}
    assert (st.progress.batch, st.position) == (3, Position(1, 2, 3))
    assert st.start_epoch(1, 3) is None
    assert (st.progress.batch, st.position) == (0, Position(1, 3, 0))


def test_a_fresh_run_starts_every_epoch_at_batch_0_and_records_saves():
    st = TrainState()
    assert st.start_epoch(0, 0) is None and st.position == Position(0, 0, 0)
    st.progress.step = 5
    before = st.last_save_time
    st.mark_saved()
    assert st.last_save_step == 5 and st.last_save_time >= before
