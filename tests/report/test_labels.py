"""How the report names an encoder (``ssl_robust.report.labels``): fine-tuned weights by their file, a
DeACL student by method, gamma and epoch, not by its run id."""
from __future__ import annotations

from ssl_robust.report import encoder_label, results_frame
from ssl_robust.report.labels import fine_tune_labels


def test_fine_tuned_checkpoint_gets_its_own_encoder_label(rows):
    frame = results_frame(rows)
    assert "dino_vitb16 (deacl)" in set(frame["encoder_label"])
    other = encoder_label("dino_vitb16", "runs:/0123456789ab/checkpoints/epoch_10.pt")
    assert other == "dino_vitb16 (01234567/epoch_10)"


def test_a_deacl_student_is_named_by_method_gamma_and_epoch_not_by_its_run_id() -> None:
    student = "runs:/0123456789ab/checkpoints/epoch_002.safetensors"
    labels = fine_tune_labels(["0123456789ab"], [{"run_id": "0123456789ab", "gamma": "2.0", "dense_weight": "0.0"}])
    assert encoder_label("tiny_dinov2", student, labels) == "tiny_dinov2 · DeACL γ=2 · epoch 2"
    assert encoder_label("tiny_dinov2", student) == "tiny_dinov2 · DeACL run 01234567 · epoch 2"  # params unknown
    twins = fine_tune_labels(["aaaa1111", "bbbb2222"], [{"run_id": "aaaa1111", "gamma": "2"},
                                                         {"run_id": "bbbb2222", "gamma": "2", "dense_weight": "0.5"}])
    assert twins == {"aaaa1111": "DeACL γ=2", "bbbb2222": "DeACL γ=2, dense_weight=0.5"}
