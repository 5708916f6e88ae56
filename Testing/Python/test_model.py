"""The lesion model's inference path: pre-processing, network, tiling, devices, weights (torch on CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch", reason="the model runs on torch")

import torch

from PETCTLesionsLib.errors import Cancelled, ModelFileError
from PETCTLesionsLib.model import inference, preprocessing, weights
from PETCTLesionsLib.model.network import LesionUNet, count_parameters


def test_normalisation_maps_air_water_and_suv_as_documented():
    ct = torch.tensor([-1024.0, 0.0, 500.0, 3000.0])
    pet = torch.tensor([0.0, float(np.e - 1), -3.0, 0.0])
    image = preprocessing.normalise(ct, pet)
    assert image.shape == (2, 4)
    assert image[0].tolist() == pytest.approx([-2.0, 0.0, 1.0, 2.0])
    assert image[1].tolist() == pytest.approx([-1.0, 0.0, -1.0, -1.0])  # negative SUV counts as 0


def test_resampling_to_the_working_grid_is_exact_for_linear_ramps_and_returns_to_the_pet_grid():
    spacing_zyx = (3.0, 2.0364, 2.0364)  # autoPET PET
    shape = (20, 30, 40)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing_zyx)], indexing="ij")
    ramp = torch.from_numpy((0.5 * x + 2.0 * y - z).astype(np.float64))[None]
    working = preprocessing.to_working_grid(ramp, spacing_zyx)
    assert working.shape[1:] == preprocessing.working_shape(shape, spacing_zyx, (3.0, 4.0, 4.0)) == (20, 15, 20)
    wz, wy, wx = np.meshgrid(*[np.arange(n) * s for n, s in zip(working.shape[1:], (3.0, 4.0, 4.0))], indexing="ij")
    np.testing.assert_allclose(working[0].numpy(), 0.5 * wx + 2.0 * wy - wz, atol=1e-9)
    back = preprocessing.from_working_grid(working, shape, spacing_zyx)[0].numpy()
    inside = (x <= (working.shape[3] - 1) * 4.0) & (y <= (working.shape[2] - 1) * 4.0)  # beyond: clamped
    np.testing.assert_allclose(back[inside], ramp[0].numpy()[inside], atol=1e-9)


def test_a_grid_already_at_working_spacing_is_not_resampled():
    volume = torch.rand(2, 7, 9, 11)
    assert torch.equal(preprocessing.to_working_grid(volume, (3.0, 4.0, 4.0)), volume)


def test_network_keeps_the_spatial_shape_and_is_a_few_mb():
    network = LesionUNet().eval()
    with torch.no_grad():
        out = network(torch.zeros(1, 2, 16, 24, 32))
    assert out.shape == (1, 1, 16, 24, 32)
    assert network.size_multiple == 8
    assert 1_000_000 < count_parameters(network) < 2_000_000  # 2.8 MB of float16 weights


@pytest.fixture(scope="module")
def bundled():
    return weights.load_model()


def _study(seed: int = 3):
    """A small CT/PET pair with two hot spheres (SUV 12 and 6 over a background of 1)."""
    rng = np.random.default_rng(seed)
    shape = (40, 64, 64)
    k, j, i = np.indices(shape)
    ct = np.where((j - 32) ** 2 + (i - 32) ** 2 < 26**2, 40.0, -1000.0).astype(np.float32)
    pet = np.where(ct > -500, 1.0, 0.0).astype(np.float32) + rng.normal(0, 0.05, shape).astype(np.float32)
    pet[(k - 20) ** 2 + (j - 30) ** 2 + (i - 25) ** 2 < 16] = 12.0
    pet[(k - 12) ** 2 + (j - 40) ** 2 + (i - 40) ** 2 < 9] = 6.0
    return ct, np.clip(pet, 0, None), (4.0, 4.0, 3.0)


def test_tiled_prediction_agrees_with_the_whole_volume_and_is_deterministic(bundled):
    ct, pet, spacing = _study()
    whole = inference.predict_probability(bundled.network, ct, pet, spacing, device="cpu", tile=(48, 72, 72))
    tiled = inference.predict_probability(bundled.network, ct, pet, spacing, device="cpu", tile=(32, 32, 32))
    again = inference.predict_probability(bundled.network, ct, pet, spacing, device="cpu", tile=(32, 32, 32))
    assert whole.probability.shape == pet.shape and whole.probability.dtype == np.float32
    assert np.array_equal(tiled.probability, again.probability)  # same input, same device: same output
    a, b = whole.probability >= 0.5, tiled.probability >= 0.5
    assert a.sum() > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    assert whole.device == "cpu" and whole.notes == []


def test_cancelling_between_tiles_raises_and_returns_nothing(bundled):
    ct, pet, spacing = _study()
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled, match="cancelled"):
        inference.predict_probability(bundled.network, ct, pet, spacing, device="cpu", tile=(32, 32, 32), cancel=cancel)
    assert len(calls) == 3


def test_device_choice_is_automatic_and_a_missing_gpu_is_named():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert inference.choose_device("auto").type in (expected, "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            inference.choose_device("cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        inference.choose_device("tpu")


def test_cuda_out_of_memory_halves_the_tile_then_moves_to_the_cpu(bundled, monkeypatch):
    # A CUDA out-of-memory cannot happen on a machine without a GPU: only the device and the
    # failing pass are stood in for; the retry logic and the CPU run are the real ones.
    ct, pet, spacing = _study()
    attempts = []
    real_predict_on = inference._predict_on

    def predict_on(model, ct_hu, pet_suv, spacing_xyz, device, tile, report, cancel):
        attempts.append((device.type, tile))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_predict_on(model, ct_hu, pet_suv, spacing_xyz, device, tile, report, cancel)

    monkeypatch.setattr(inference, "choose_device", lambda requested: torch.device("cuda"))
    monkeypatch.setattr(inference, "_predict_on", predict_on)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    messages = []
    result = inference.predict_probability(
        bundled.network, ct, pet, spacing, device="cuda", progress=lambda f, m: messages.append(m)
    )
    # Whole volume first, then half the working grid (40x64x64 -> 32x32x32, the smallest tile), then the CPU.
    assert [a[0] for a in attempts] == ["cuda", "cuda", "cpu"]
    assert attempts[0][1] is None and attempts[1][1] == (32, 32, 32)
    assert result.device == "cpu"
    assert any("running on the CPU" in note for note in result.notes)
    assert result.notes[0] in messages


def test_the_bundled_model_loads_with_its_card(bundled):
    card = bundled.manifest
    assert card["architecture"] == "petct-unet3d" and card["version"] == 1
    assert 0 < bundled.threshold < 1
    assert "NOT been validated on real patients" in card["limitations"]
    assert card["held_out_evaluation"]["cases"] == 20
    assert (weights.MODELS_DIR / card["file"]).stat().st_size < 5_000_000


def test_a_corrupt_missing_or_foreign_model_file_is_a_clear_error(tmp_path):
    source = weights.bundled_manifest_path()
    manifest = tmp_path / source.name
    shutil.copy(source, manifest)
    with pytest.raises(ModelFileError, match="weights file is missing"):
        weights.load_model(manifest)
    shutil.copy(source.with_suffix(".pt"), tmp_path)
    data = bytearray((tmp_path / source.with_suffix(".pt").name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / source.with_suffix(".pt").name).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum .* does not match"):
        weights.load_model(manifest)
    card = json.loads(manifest.read_text())
    card["version"] = 99
    manifest.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="version 99"):
        weights.load_model(manifest)
    with pytest.raises(ModelFileError, match="manifest not found"):
        weights.load_model(tmp_path / "nothing.json")


def test_saved_weights_load_back_identical_in_float16(tmp_path):
    torch.manual_seed(1)
    network = LesionUNet(features=(4, 8))
    manifest = weights.save_model(network, tmp_path / "tiny.json", {"threshold": 0.4})
    loaded = weights.load_model(manifest)
    assert loaded.threshold == 0.4 and loaded.network.features == (4, 8)
    for name, value in network.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.network.state_dict()[name], expected), name
    assert oct(manifest.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    import os

    current = os.umask(0)
    os.umask(current)
    return current
