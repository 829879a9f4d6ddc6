"""One MLflow run per DeACL fine-tune (``ssl_robust.tracking.deacl``): the encoder config of a student
at an epoch of its run."""
from __future__ import annotations

import yaml

from ssl_robust import tracking


def test_a_students_encoder_drops_the_teachers_checkpoint_key() -> None:
    """The teacher may be a Lightning checkpoint read under a prefix; a student's file is plain timm weights."""
    from types import SimpleNamespace

    teacher = {"name": "dino_vitb16", "checkpoint": "/ckpt/deacl.ckpt", "checkpoint_key": "backbone.encoder."}
    run = SimpleNamespace(data=SimpleNamespace(params={"encoder_config": yaml.safe_dump(teacher)}),
                          info=SimpleNamespace(run_id="abc"))
    assert tracking.student_encoder(run, 0) == teacher
    student = tracking.student_encoder(run, 25)
    assert "checkpoint_key" not in student and student["checkpoint"].startswith("runs:/abc/")
