"""Student names: what training writes is what the report parses."""
from __future__ import annotations

from ssl_robust.deacl_names import STUDENT_URI, student_artifact, student_file


def test_the_report_parses_the_run_and_epoch_of_the_uri_training_writes() -> None:
    found = STUDENT_URI.match(f"runs:/3f9c2a71/{student_artifact(12)}")
    assert found is not None and found["run"] == "3f9c2a71" and int(found["epoch"]) == 12


def test_the_file_of_an_epoch_is_zero_padded_so_that_names_sort_by_epoch() -> None:
    assert student_file(3) == "epoch_003.safetensors" and sorted([student_file(10), student_file(9)])[0] == student_file(9)


def test_weights_outside_the_students_folder_are_not_students() -> None:
    assert STUDENT_URI.match(f"runs:/3f9c2a71/head/{student_file(1)}") is None
    assert STUDENT_URI.match(f"s3://bucket/{student_artifact(1)}") is None
