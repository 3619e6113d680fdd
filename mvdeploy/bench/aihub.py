"""Phones on Qualcomm AI Hub: mvdeploy's artifacts profiled (and run) on AI Hub's devices.

Each configuration is one AI Hub job, through qai-hub's own client (the `aihub` extra):
upload the artifact mvdeploy exported and validated, `submit_inference_job(profile=True)` on
the named device (in qai-hub 0.56 this is what `submit_profile_job` calls), wait for it, and
read the profile AI Hub reports: its per-run inference times (the row's latency samples), first
and warm load, peak memory and which compute unit ran each layer. With --validate-on-device
the job also runs the bundled photos and the device's outputs are compared with PyTorch's under
the tolerance the export validated to: fidelity measured on the phone.

All jobs are submitted before any is waited for: AI Hub queues them on its devices, so waiting
one by one would add the queues up. The API token is qai-hub's own configuration
(`qai-hub configure --api_token TOKEN`, i.e. ~/.qai_hub/client.ini, or QAIHUB_CLIENT_INI);
mvdeploy never asks for it or stores it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mvdeploy.bench.matrix import BenchConfig
from mvdeploy.errors import ConfigError

INSTALL = "pip install -e '.[aihub]'"
CONFIGURE = ("qai-hub configure --api_token TOKEN (the token is on AI Hub's account page, "
             "https://app.aihub.qualcomm.com)")


@dataclass(frozen=True)
class AIHubOptions:
    devices: tuple[str, ...] = ()
    validate_on_device: bool = False


class Hub:
    """A connected client and the AI Hub devices the run names (resolved once, up front)."""

    def __init__(self, client: Any, devices: dict[str, Any]):
        self.client = client
        self.devices = devices
        self._models: dict[Path, Any] = {}

    def model(self, artifact: Path) -> Any:
        """Each artifact is uploaded once, however many devices time it."""
        if artifact not in self._models:
            self._models[artifact] = self.client.upload_model(str(artifact))
        return self._models[artifact]


def _qai_hub():
    try:
        import qai_hub
    except ImportError:
        raise ConfigError(f"--target aihub needs the qai-hub client: {INSTALL}") from None
    return qai_hub


def _said(exc: BaseException) -> str:
    """qai-hub's message, on one line (it boxes some of them over several)."""
    text = " ".join(str(exc).replace("│", " ").replace("─", " ").split())
    return text[:300] or type(exc).__name__


def connect(opts: AIHubOptions) -> Hub:
    """The client and each named device, or one line (ConfigError, exit 2) saying what is
    missing: the client, its configuration, a token AI Hub accepts, the network, a device."""
    qai_hub = _qai_hub()
    try:
        client = qai_hub.Client()
        _reachable(client.config.api_url)
        found = {name: client.get_devices(name=name) for name in opts.devices}
    except qai_hub.Error as exc:  # UserError: configuration, token; InternalError: network
        said = _said(exc)
        lowered = said.lower()
        if "configuration" in lowered:
            raise ConfigError(f"no AI Hub API token is configured: {CONFIGURE}") from None
        if "authenticate" in lowered or "api token" in lowered:
            raise ConfigError(f"AI Hub did not accept the API token: {CONFIGURE}") from None
        if isinstance(exc, qai_hub.UserError):
            raise ConfigError(f"AI Hub refused the request: {said}") from None
        raise ConfigError(f"cannot reach AI Hub (offline?): {said}") from None
    missing = [name for name, matches in found.items() if not matches]
    if missing:
        raise ConfigError(f"AI Hub has no device named {', '.join(map(repr, missing))}: names "
                          "are exact, e.g. \"Samsung Galaxy S24\"; qai-hub list-devices lists "
                          "them")
    return Hub(client, {name: matches[0] for name, matches in found.items()})


def _reachable(api_url: str, timeout: float = 10) -> None:
    """A plain TCP connect first: offline, the client retries with back-off for ~45 s before
    it says so; this says it in seconds."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(api_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach AI Hub at {api_url} (offline?): "
                          f"{exc.strerror or exc}") from None


def job_options(cfg: BenchConfig) -> str:
    """AI Hub's job flags: which compute unit (all: AI Hub's own order, NPU then GPU then
    CPU)."""
    return "" if cfg.accelerator == "all" else f"--compute_unit {cfg.accelerator}"


def job_name(cfg: BenchConfig) -> str:
    return f"mvdeploy {cfg.model} {cfg.preset} {cfg.precision} {cfg.format}"


def device_facts(device: Any) -> dict:
    """What a row says about the phone: AI Hub's name, OS and chipset (from its attributes)."""
    attributes = list(getattr(device, "attributes", []) or [])
    def attribute(key: str) -> str | None:
        return next((a.split(":", 1)[1] for a in attributes if a.startswith(f"{key}:")), None)

    family = attribute("os")
    return {"farm": "aihub", "name": device.name, "os": getattr(device, "os", None) or None,
            "os_family": {"android": "Android", "windows": "Windows"}.get(family or "", family),
            "chipset": attribute("chipset")}


def _ms(us: float | int | None) -> float | None:
    return None if us is None or us == 0 else float(us) / 1e3


def _mb(size: Any) -> float | None:
    if isinstance(size, (list, tuple)):  # a (lower, upper) range: the upper bound
        size = size[-1] if size else None
    return None if not size else float(size) / 2**20


def profile_result(profile: dict) -> dict:
    """AI Hub's profile (download_profile's dict) -> a bench round: the device's own per-run
    inference times as latency samples, its load times and peak memory, and the compute units
    layers ran on."""
    summary = profile.get("execution_summary") or {}
    samples = [t / 1e3 for t in summary.get("all_inference_times") or [] if t]
    if not samples and summary.get("estimated_inference_time"):
        samples = [summary["estimated_inference_time"] / 1e3]  # older profiles: one figure
    if not samples:
        return {"status": "failed", "error": "AI Hub's profile has no inference time"}
    units = collections.Counter(layer.get("compute_unit") or "?"
                                for layer in profile.get("execution_detail") or [])
    return {"status": "ok", "samples_ms": samples,
            "load_ms": _ms(summary.get("first_load_time")),
            "first_ms": None,  # AI Hub does not report the first inference apart
            "peak_rss_mb": _mb(summary.get("inference_memory_peak_range")
                               or summary.get("estimated_inference_peak_memory")),
            "hub": {"warm_load_ms": _ms(summary.get("warm_load_time")),
                    "compile_ms": _ms(summary.get("compile_time")),
                    "compute_units": dict(units.most_common())}}


def _device_scores(outputs: dict | None) -> np.ndarray | None:
    """The one output AI Hub returned (a list of per-image arrays) as [N, classes] float32."""
    arrays = next(iter(outputs.values()), None) if outputs else None
    if arrays is None:
        return None
    return np.concatenate([np.asarray(a, dtype=np.float32).reshape(1, -1) for a in arrays])


@dataclass(frozen=True)
class OnDevice:
    """--validate-on-device for one configuration: the device's inputs (name -> list of arrays,
    one per photo or batch), PyTorch's outputs for them, the export's Tolerance, and the
    model's task's compare (mvdeploy.tasks)."""

    inputs: dict
    reference: np.ndarray
    tolerance: Any
    compare: Callable[[np.ndarray, np.ndarray], Any]


Feeds = Callable[[BenchConfig, Path], OnDevice]
Progress = Callable[[int, int, str], None]


def run_all(configs: list[BenchConfig], artifacts: dict[str, Path], hub: Hub, *,
            validate: bool, feeds: Feeds, progress: Progress = lambda *_: None
            ) -> dict[str, dict]:
    """Submit one job per configuration, then wait for each: config key -> its round.

    `feeds(cfg, artifact)` gives what --validate-on-device sends and checks (OnDevice)."""
    qai_hub = _qai_hub()
    jobs: dict[str, tuple[Any, OnDevice | None]] = {}
    results: dict[str, dict] = {}
    total = 2 * len(configs)
    for i, cfg in enumerate(configs):
        progress(i, total, f"submitting to AI Hub: {cfg.label}")
        try:
            model = hub.model(artifacts[cfg.key])
            check = feeds(cfg, artifacts[cfg.key]) if validate else None
            job = hub.client.submit_inference_job(
                model=model, device=hub.devices[cfg.hub_device],
                inputs=check.inputs if check else None, name=job_name(cfg),
                options=job_options(cfg), profile=True)
            jobs[cfg.key] = (job, check)
        except (qai_hub.Error, OSError) as exc:
            results[cfg.key] = {"status": "failed", "error": f"AI Hub: {_said(exc)}"}
    for i, cfg in enumerate(configs):
        if cfg.key not in jobs:
            continue
        job, check = jobs[cfg.key]
        progress(len(configs) + i, total, f"waiting for AI Hub job {job.job_id}: {cfg.label}")
        results[cfg.key] = _collect(cfg, job, hub, check, qai_hub)
    return results


def _collect(cfg: BenchConfig, job: Any, hub: Hub, check: OnDevice | None,
             qai_hub: Any) -> dict:
    facts = {**device_facts(hub.devices[cfg.hub_device]), "job_url": job.url}
    try:
        status = job.wait()
        if not status.success:
            return {"status": "failed", "device": facts,
                    "error": f"AI Hub job {job.job_id} {status.code.lower()}: "
                             f"{status.message or 'no reason given'} ({job.url})"}
        result = profile_result(job.download_profile())
        outputs = job.download_output_data() if check is not None else None
    except (qai_hub.Error, OSError) as exc:
        return {"status": "failed", "device": facts, "error": f"AI Hub: {_said(exc)}"}
    facts.update(result.pop("hub", {}))
    result["device"] = facts
    if check is not None:
        result["device_fidelity"] = device_fidelity(check, _device_scores(outputs))
    return result


def device_fidelity(check: OnDevice, scores: np.ndarray | None) -> dict:
    """The device's outputs against PyTorch's, under the export's own tolerance."""
    reference = check.reference
    if scores is None or len(scores) != len(reference):
        return {"passed": False, "images": len(reference),
                "failures": ["AI Hub returned no outputs for the photos"
                             if scores is None else
                             f"AI Hub returned {len(scores)} outputs for {len(reference)} photos"]}
    metrics = check.compare(reference, scores)
    failures = check.tolerance.failures("the device", metrics)
    return {"passed": not failures, "images": len(reference), "snr_db": metrics.snr_db,
            "max_rel": metrics.max_rel, "top1_agreement": metrics.top1_agreement,
            "failures": failures}
