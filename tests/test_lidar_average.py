"""Weight-space averaging of LiDAR checkpoints (sparseconv.lidar.average_checkpoints)."""
import pytest
import torch

from sparseconv.lidar import average_checkpoints, load_checkpoint
from sparseconv.lidar.model import FORMAT, build_model, save_checkpoint

CONFIG = {"voxel_size": 1.0, "tile_size": 32.0, "overlap": 4.0, "channels": [4, 8], "hidden": 8,
          "features": ["hag", "intensity"], "classes": [1, 2, 6]}


def _ckpt(tmp_path, name, seed, config=CONFIG):
    torch.manual_seed(seed)
    model = build_model(config)
    for m in model.modules():  # BatchNorm statistics that differ between the two checkpoints
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = str(tmp_path / name)
    save_checkpoint({"format": FORMAT, "config": config, "model": model.state_dict()}, path)
    return path, model.state_dict()


def test_weighted_mean_of_every_float_tensor(tmp_path):
    a, sa = _ckpt(tmp_path, "a.pt", 0)
    b, sb = _ckpt(tmp_path, "b.pt", 1)
    out = str(tmp_path / "avg.pt")
    ckpt = average_checkpoints([a, b], [1, 3], out, half=False)
    model, config, loaded = load_checkpoint(out)
    assert config == CONFIG
    assert [r["weight"] for r in loaded["averaged_from"]] == [0.25, 0.75]
    state = model.state_dict()
    n_float = 0
    for k, v in sa.items():
        if v.is_floating_point():
            n_float += 1
            torch.testing.assert_close(state[k], 0.25 * v + 0.75 * sb[k], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(state[k], sb[k])
    assert n_float > 10 and ckpt["model"].keys() == sa.keys()


def test_half_stores_big_tensors_in_float16(tmp_path):
    a, _ = _ckpt(tmp_path, "a.pt", 0)
    b, _ = _ckpt(tmp_path, "b.pt", 1)
    ckpt = average_checkpoints([a, b], [1, 1], str(tmp_path / "avg.pt"))
    dtypes = {v.dtype for v in ckpt["model"].values() if v.is_floating_point() and v.numel() >= 1024}
    assert dtypes == {torch.float16}


@pytest.mark.parametrize("weights, match", [([1], "one per checkpoint"), ([1, -1], "non-negative"),
                                            ([0, 0], "positive sum")])
def test_bad_weights_name_the_argument(tmp_path, weights, match):
    a, _ = _ckpt(tmp_path, "a.pt", 0)
    b, _ = _ckpt(tmp_path, "b.pt", 1)
    with pytest.raises(ValueError, match=f"weights: .*{match}"):
        average_checkpoints([a, b], weights, str(tmp_path / "avg.pt"))


def test_configs_must_match_and_nothing_is_written(tmp_path):
    a, _ = _ckpt(tmp_path, "a.pt", 0)
    b, _ = _ckpt(tmp_path, "b.pt", 1, dict(CONFIG, channels=[4, 16]))
    out = tmp_path / "avg.pt"
    with pytest.raises(ValueError, match="paths: .*b.pt has config"):
        average_checkpoints([a, b], [1, 1], str(out))
    assert not out.exists()
    with pytest.raises(ValueError, match="paths: expected at least 2"):
        average_checkpoints([a], [1], str(out))


def test_a_model_with_added_features_averages_with_the_one_it_started_from(tmp_path):
    """A fine-tune that added input features (zero weights at first) averages with its initial model: that one is
    re-laid for the new features (train.expand_inputs: computes exactly what it did) before the mean."""
    from sparseconv.lidar.train import expand_inputs

    wide = dict(CONFIG, features=["hag", "dz", "intensity"])
    a, sa = _ckpt(tmp_path, "a.pt", 0)
    b, sb = _ckpt(tmp_path, "b.pt", 1, wide)
    out = str(tmp_path / "avg.pt")
    average_checkpoints([a, b], [1, 0], out, half=False)
    _, config, loaded = load_checkpoint(out)
    assert config == wide
    expanded = expand_inputs(sb, sa, CONFIG["features"], wide["features"])
    for k, v in expanded.items():
        assert torch.equal(loaded["model"][k].float(), v.float()) if v.is_floating_point() else True, k
    assert not loaded["model"]["unet.stem.0.weight"][..., 1, :].any()  # `dz` starts with no weight
    average_checkpoints([a, b], [0, 1], out, half=False)
    for k, v in sb.items():
        if v.is_floating_point():
            assert torch.allclose(load_checkpoint(out)[2]["model"][k].float(), v), k
    other = dict(CONFIG, features=["hag", "first"])  # not a subset of the widest list: refused
    c, _ = _ckpt(tmp_path, "c.pt", 2, other)
    with pytest.raises(ValueError, match="only features it lacks may differ"):
        average_checkpoints([c, b], [1, 1], str(tmp_path / "bad.pt"))
    assert not (tmp_path / "bad.pt").exists()
