"""GPU smoke test: training with ``train.use_gpu`` on a real CUDA device (deselected in CI, skipped without a GPU)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.integration]


def test_training_runs_on_the_gpu_and_writes_a_cpu_loadable_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the gpu tier needs one")
    import ray

    from workloads import lake
    from workloads.config import WorkspaceConfig
    from workloads.model import load_checkpoint
    from workloads.runtime import init_local_ray
    from workloads.train import train

    lake.ingest(str(tmp_path / "lake"))
    cfg = WorkspaceConfig.model_validate({
        "data": {"lake": str(tmp_path / "lake")},
        "train": {"use_gpu": True, "num_workers": 1, "epochs": 2, "hidden": 16, "depth": 1,
                  "storage_path": str(tmp_path / "results")},
    })
    init_local_ray(num_cpus=4, num_gpus=1, logging_level="WARNING")
    try:
        result = train(cfg)
    finally:
        ray.shutdown()
    assert len(result.history) == 2 and 0.5 < result.metrics["val_roc_auc"] <= 1.0
    model = load_checkpoint(result.checkpoint)  # loads on a CPU-only host
    assert next(model.module.parameters()).device.type == "cpu"
