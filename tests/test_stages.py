"""The stage table is the one description of the pipeline: the CLI, `make` and `lowshot slurm` agree with it."""
import re
from pathlib import Path

import pytest

from lowshot.cli import main
from lowshot.run import ARTEFACTS
from lowshot.slurm import JOBS
from lowshot.stages import STAGES, follows, maker

MAKEFILE = (Path(__file__).parent.parent / "Makefile").read_text()


def make_recipe(target: str) -> str:
    """The recipe lines of a Makefile target ('' when there is no such target)."""
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", MAKEFILE, re.M)
    return m.group(1) if m else ""


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_is_a_command_a_make_target_and_loads(stage):
    assert stage.name in main.commands and main.commands[stage.name].help == stage.help
    assert f"$(LOWSHOT) {stage.name} " in make_recipe(stage.name)
    assert callable(stage.function()) and isinstance(stage.config_class(), type)
    if stage.trainer:
        assert callable(stage.fit())


def test_every_artefact_is_written_by_one_stage_and_read_after_it():
    written = [a for s in STAGES for a in s.writes]
    assert sorted(written) == sorted(set(written)) and set(written) == set(ARTEFACTS)
    order = [s.name for s in STAGES]
    for stage in STAGES:
        assert all(order.index(before) < order.index(stage.name) for before in follows(stage))
        for artefact in stage.reads:
            assert maker(artefact) in order


def test_slurm_jobs_are_the_run_folder_stages():
    assert JOBS == tuple(s.name for s in STAGES if s.name != "data")
