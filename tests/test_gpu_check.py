"""bench/gpu_check.py: its CPU dry run goes through every step, and without CUDA it stops at once saying why."""

import json

import pytest

from bench import gpu_check


def test_without_cuda_it_stops_at_once_saying_why(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here: the check would run for real")
    assert gpu_check.main([]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_trains_saves_an_adapter_and_classifies_with_it(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--tokenizer", tiny_model_dir, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    training, classifier = result["qlora_training"], result["classifier"]
    assert result["dry_run"] and training["tokens_per_second"] > 0 and len(training["losses"]) == 3
    assert training["trainable_parameters"] > 0 and training["peak_gpu_memory_gb"] is None
    assert classifier["zero_shot"]["adapter_version"] is None and classifier["adapter"]["adapter_version"] == 1
    assert set(classifier["adapter"]["labels_seen"]) <= {"complaint", "question", "feedback"}
