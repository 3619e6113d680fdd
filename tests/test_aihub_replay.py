"""The real qai_hub client (0.56) against the local AI Hub replay server (tests/aihub_replay.py):
devices, model upload, profile jobs, inference jobs, and the errors a bad token or an
unreachable service give."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

qai_hub = pytest.importorskip("qai_hub")

from tests.aihub_replay import RECORDING, _profile_pb, aihub_replay, start_replay  # noqa: E402

__all__ = ["aihub_replay"]  # the fixture: pytest finds it here, and ruff counts it as used

S24 = "Samsung Galaxy S24"
ELITE = "Snapdragon 8 Elite QRD"
XXS_A_TFLITE = "mvdeploy mobilevit_xxs A fp32 tflite"


def _fake_model(tmp_path, suffix=".tflite", size=64):
    """Bytes the client uploads as a model; profile jobs only replay, they never run it."""
    path = tmp_path / f"model{suffix}"
    path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    return path


def _tiny_onnx(path):
    """pixel_values (1, 3, 8, 8) -> Conv 3x3 -> Relu -> GlobalAveragePool -> logits (1, 4)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["pixel_values", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
         helper.make_node("Flatten", ["pool"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _samples(n=3):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(n)]


def _job_polls(replay, job):
    return [r for r in replay.requests if r == ("GET", f"/api/v1/jobs/{job.job_id}/")]


def test_recording_profiles_parse_as_profile_detail():
    """Every recorded profile is a valid ProfileDetail; B is faster than A, the 8 Elite faster
    than the S24."""
    import json

    recording = json.loads(RECORDING.read_text())
    assert "NOT captured" in recording["_about"]
    times = {}
    for device, jobs in recording["profiles"].items():
        for name, entry in jobs.items():
            profile = _profile_pb(entry)
            assert (profile.major_version, profile.minor_version) == (1, 2)
            assert len(profile.all_execution_times) >= 3
            assert len({layer.name for layer in profile.layer_details}) == len(
                profile.layer_details)
            times[device, name] = profile.execution_time
    for device in (S24, ELITE):
        for fmt in ("tflite", "onnx"):
            a = times[device, f"mvdeploy mobilevit_xxs A fp32 {fmt}"]
            b = times[device, f"mvdeploy mobilevit_xxs B fp32 {fmt}"]
            assert b < a
            assert times[ELITE, f"mvdeploy mobilevit_xxs A fp32 {fmt}"] < times[
                S24, f"mvdeploy mobilevit_xxs A fp32 {fmt}"]


def test_get_devices_by_name(aihub_replay):
    client = qai_hub.Client()
    (s24,) = client.get_devices(name=S24)
    assert s24.os == "14"
    assert {"chipset:qualcomm-snapdragon-8gen3", "os:android", "framework:tflite",
            "framework:onnx", "format:phone", "vendor:samsung"} <= set(s24.attributes)
    assert client.get_devices(name="Samsung Galaxy S99") == []
    (elite,) = client.get_devices(attributes="chipset:qualcomm-snapdragon-8-elite")
    assert (elite.name, elite.os) == (ELITE, "15")
    assert client.get_devices(name=ELITE, os="[14,15)") == []
    assert {d.name for d in client.get_devices()} == {S24, ELITE}
    assert aihub_replay.requests[0] == ("GET", "/api/v1/devices/")


def test_profile_job_replays_the_recording(aihub_replay, tmp_path):
    aihub_replay.running_polls = 0  # no running state: Job.wait() would sleep 10 s per one
    client = qai_hub.Client()
    device = client.get_devices(name=S24)[0]
    path = _fake_model(tmp_path)
    model = client.upload_model(str(path))
    job = client.submit_profile_job(model=model, device=device, name=XXS_A_TFLITE, options="")

    assert job.wait().success
    assert job.url == f"{aihub_replay.url}/jobs/{job.job_id}/"
    profile = job.download_profile()
    summary = profile["execution_summary"]
    assert summary["estimated_inference_time"] == 1450
    assert summary["first_load_time"] > summary["warm_load_time"] > 0
    assert summary["compile_time"] > 0
    assert summary["estimated_inference_peak_memory"] > 0
    assert len(summary["all_inference_times"]) == 6
    units = Counter(layer["compute_unit"] for layer in profile["execution_detail"])
    assert units == {"NPU": 180, "CPU": 3}
    assert aihub_replay.submitted == [{
        "type": "profile", "name": XXS_A_TFLITE, "device": S24,
        "model_bytes": path.read_bytes(), "model_name": "model.tflite", "options": ""}]
    assert not aihub_replay.errors


def test_the_same_job_on_the_8_elite_replays_its_own_profile(aihub_replay, tmp_path):
    aihub_replay.running_polls = 0
    client = qai_hub.Client()
    device = client.get_devices(name=ELITE)[0]
    job = client.submit_profile_job(model=str(_fake_model(tmp_path, ".onnx")), device=device,
                                    name="mvdeploy mobilevit_xxs B fp32 onnx")
    profile = job.download_profile()
    assert profile["execution_summary"]["estimated_inference_time"] == 1260
    units = Counter(layer["compute_unit"] for layer in profile["execution_detail"])
    assert units == {"NPU": 240, "CPU": 4, "GPU": 2}
    assert aihub_replay.submitted[0]["model_name"] == "model.onnx"


def test_an_unrecorded_job_fails_with_the_reason(aihub_replay, tmp_path):
    aihub_replay.running_polls = 0
    client = qai_hub.Client()
    device = client.get_devices(name=S24)[0]
    job = client.submit_profile_job(model=str(_fake_model(tmp_path)), device=device,
                                    name="mvdeploy mobilevit_xxl A fp32 tflite")
    status = job.wait()
    assert status.failure and not status.success
    assert status.code == "FAILED"
    assert status.message == (
        f"no recorded profile for job 'mvdeploy mobilevit_xxl A fp32 tflite' on {S24}")
    assert job.download_profile() == {}  # the client returns {} for a job that did not succeed


def test_get_status_sees_a_running_state_before_success(aihub_replay, tmp_path):
    """The default replay answers one poll with a running state. Polled by get_status() first,
    wait() then finds the job done on its own first poll, without sleeping."""
    client = qai_hub.Client()
    device = client.get_devices(name=S24)[0]
    job = client.submit_profile_job(model=str(_fake_model(tmp_path)), device=device,
                                    name=XXS_A_TFLITE)
    status = job.get_status()
    assert status.running and status.code == "MEASURING_PERFORMANCE"
    started = time.monotonic()
    assert job.wait().success
    assert time.monotonic() - started < 5
    polls = _job_polls(aihub_replay, job)
    assert len(polls) >= 2
    # the log: upload, job creation, then the polls, then the result
    paths = [p for _, p in aihub_replay.requests]
    assert paths.index(f"/api/v1/jobs/{job.job_id}/") > paths.index("/api/v1/jobs/")
    job.download_profile()
    assert aihub_replay.requests[-1] == ("GET", f"/api/v1/jobs/{job.job_id}/result/")


@pytest.mark.slow
def test_wait_sleeps_through_a_running_poll(aihub_replay, tmp_path):
    """Job.wait() itself sees the running answer: it sleeps Job._polling_interval (10 s), polls
    again, and finds SUCCESS."""
    client = qai_hub.Client()
    device = client.get_devices(name=S24)[0]
    job = client.submit_profile_job(model=str(_fake_model(tmp_path)), device=device,
                                    name=XXS_A_TFLITE)
    started = time.monotonic()
    assert job.wait().success
    assert time.monotonic() - started >= qai_hub.client.Job._polling_interval
    assert len(_job_polls(aihub_replay, job)) >= 2


def test_a_model_goes_up_in_parts(aihub_replay, tmp_path):
    """The multipart upload: one PUT per part to the pre-signed URLs, then the ETags back."""
    aihub_replay.running_polls = 0
    aihub_replay.max_part_size = 1000
    client = qai_hub.Client()
    path = _fake_model(tmp_path, size=2500)
    model = client.upload_model(str(path))
    device = client.get_devices(name=S24)[0]
    client.submit_profile_job(model=model, device=device, name=XXS_A_TFLITE).wait()
    puts = [p for m, p in aihub_replay.requests if m == "PUT"]
    assert len(puts) == 3 and all(p.startswith(f"/_storage/models/{model.model_id}/") for p in puts)
    assert aihub_replay.requests.count(
        ("POST", f"/api/v1/models/{model.model_id}/multipart_upload/")) == 1
    assert aihub_replay.submitted[0]["model_bytes"] == path.read_bytes()


def test_onnx_inference_returns_the_model_outputs(aihub_replay, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    aihub_replay.running_polls = 0
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    samples = _samples()
    client = qai_hub.Client()
    device = client.get_devices(name=S24)[0]
    job = client.submit_inference_job(model=str(path), device=device,
                                      inputs={"pixel_values": samples},
                                      name="mvdeploy mobilevit_xxs A fp32 onnx")
    outputs = job.download_output_data()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert list(outputs) == ["logits"]
    assert len(outputs["logits"]) == len(samples)
    for got, x in zip(outputs["logits"], samples, strict=True):
        (want,) = session.run(["logits"], {"pixel_values": x})
        np.testing.assert_array_equal(got, want)
    assert job.get_status().success
    assert job.shapes == {"pixel_values": ((1, 3, 8, 8), "float32")}
    # an inference job under a recorded name carries that profile too
    assert job.download_profile()["execution_summary"]["estimated_inference_time"] == 1980
    assert aihub_replay.submitted[0]["type"] == "inference"
    paths = [p for _, p in aihub_replay.requests]
    assert "/api/v1/datasets/" in paths  # the inputs went up as an h5 dataset
    assert any(p.startswith("/_storage/datasets/") for p in paths)
    assert not aihub_replay.errors


def test_output_noise_perturbs_the_outputs(aihub_replay, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    aihub_replay.running_polls = 0
    aihub_replay.output_noise = 0.1
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    samples = _samples(2)
    client = qai_hub.Client()
    device = client.get_devices(name=S24)[0]
    job = client.submit_inference_job(model=str(path), device=device,
                                      inputs={"pixel_values": samples}, name="noisy",
                                      profile=False)
    outputs = job.download_output_data()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for got, x in zip(outputs["logits"], samples, strict=True):
        (want,) = session.run(["logits"], {"pixel_values": x})
        error = np.max(np.abs(got - want)) / np.max(np.abs(want))
        assert 0.001 < error < 1.0


def test_a_profiling_inference_job_needs_a_recorded_profile(aihub_replay, tmp_path):
    """submit_inference_job profiles by default (profile=True): without a recorded profile
    under its name, it fails like a profile job."""
    pytest.importorskip("onnxruntime")
    aihub_replay.running_polls = 0
    client = qai_hub.Client()
    device = client.get_devices(name=ELITE)[0]
    job = client.submit_inference_job(model=str(_tiny_onnx(tmp_path / "tiny.onnx")),
                                      device=device, inputs={"pixel_values": _samples(1)},
                                      name="unrecorded")
    status = job.wait()
    assert status.message == f"no recorded profile for job 'unrecorded' on {ELITE}"
    assert job.download_output_data() is None  # the client's answer for a failed job
    assert aihub_replay.submitted[0]["type"] == "inference"


@pytest.mark.slow
def test_tflite_inference_returns_the_model_outputs(aihub_replay, tmp_path):
    """A tiny torch module converted by litert-torch (some seconds), run on the "phone"."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    aihub_replay.running_polls = 0

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, pixel_values):
            return {"logits": self.conv(pixel_values).relu().mean((2, 3))}

    torch.manual_seed(0)
    path = tmp_path / "tiny.tflite"
    litert_torch.convert(Tiny().eval(), sample_kwargs={
        "pixel_values": torch.zeros(1, 3, 8, 8)}).export(str(path))
    samples = _samples()
    client = qai_hub.Client()
    device = client.get_devices(name=S24)[0]
    job = client.submit_inference_job(model=str(path), device=device,
                                      inputs={"pixel_values": samples}, name="tiny tflite",
                                      profile=False)  # no profile recorded under this name
    outputs = job.download_output_data()

    runner = interpreter_mod.Interpreter(model_path=str(path)).get_signature_runner()
    assert list(outputs) == ["logits"]  # the signature's output name
    for got, x in zip(outputs["logits"], samples, strict=True):
        np.testing.assert_array_equal(got, runner(pixel_values=x)["logits"])
    assert job.download_profile() == {}  # profile=False: no profile
    assert not aihub_replay.errors


def test_a_wrong_token_raises_the_clients_auth_error(tmp_path, monkeypatch):
    replay = start_replay(tmp_path / "aihub", token="wrong")
    try:
        monkeypatch.setenv("QAIHUB_CLIENT_INI", str(replay.ini))
        with pytest.raises(qai_hub.client.UserError, match="Failed to authenticate"):
            qai_hub.Client().get_devices(name=S24)
        assert replay.requests == [("GET", "/api/v1/devices/")]
    finally:
        replay.stop()
