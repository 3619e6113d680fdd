"""A local stand-in for Qualcomm AI Hub's public REST API, for tests of code that uses qai-hub.

The real `qai_hub` client (0.56) talks to this server unchanged: `start_replay` writes a
client.ini whose api_url and web_url point here, and QAIHUB_CLIENT_INI (the variable
`qai_hub.api_utils.get_config_path` reads) selects it. Requests and responses are the
protobuf messages of `qai_hub.public_api_pb2`, serialized, with Content-Type
`application/x-protobuf` (the client parses a response only when it has exactly that type).

What is replayed, and what is computed:

* Devices and profile results come from tests/data/aihub/recording.json. They are written to
  the shape of the API's messages; they were not captured from a live AI Hub account, and the
  numbers are illustrative.
* Inference outputs are computed here, as a stand-in for the phone: the uploaded model file
  runs on the uploaded inputs in ai_edge_litert's Interpreter (.tflite) or onnxruntime (.onnx),
  one input sample at a time, on this machine's CPU. `output_noise` > 0 adds
  `output_noise * max|output| * N(0, 1)` noise to every output, so that a test can make an
  on-device fidelity check fail.

Uploads and downloads go where the real service sends them, to pre-signed storage URLs (S3
on AI Hub); here those URLs point back at this server, under /_storage/. The API also offers
short-lived S3 credentials when the client says `supports_s3_credentials=true` (the client then
talks to AWS through botocore); this server always answers with pre-signed URLs instead, the
other branch the client supports.

API endpoints served (all under /api/v1/, optionally /api/v1/projects/<id>/...):

    GET   users/auth/user/                    -> User
    GET   devices/?name&os&attributes&select  -> DeviceList
    POST  models/            (Model)          -> CreateUpdateResponse
    GET   models/<id>/                        -> Model
    GET   models/<id>/multipart_upload/       -> FileUploadResponse(multipart_url)
    POST  models/<id>/multipart_upload/  (FileMultipartUploadComplete) -> CreateUpdateResponse
    POST  datasets/          (Dataset)        -> CreateUpdateResponse
    GET   datasets/<id>/                      -> Dataset
    PATCH datasets/<id>/     (Dataset(file_upload_complete=True)) -> CreateUpdateResponse
    GET   datasets/<id>/upload_url/           -> FileUploadResponse(url)
    GET   datasets/<id>/download_data/        -> FileDownloadResponse(url)
    POST  jobs/              (Job)            -> CreateUpdateResponse
    GET   jobs/<id>/                          -> Job
    PATCH jobs/<id>/         (JobPublicUpdate) -> CreateUpdateResponse
    GET   jobs/<id>/result/                   -> JobResult

Storage (no Authorization header; the URL's signature authorizes, as with S3):

    PUT   /_storage/models/<id>/<upload id>/<part>  one part of a model file -> 200 + ETag
    POST  /_storage/datasets/<id>                   multipart form (S3 POST policy) -> 204
    GET   /_storage/datasets/<id>/<file name>       the dataset's h5 file

Job life cycle: a job is created when POSTed, and its result (profile, outputs, or failure) is
settled then. Its first `running_polls` GETs of jobs/<id>/ answer a running state
(MEASURING_PERFORMANCE when profiling is on, else RUNNING_INFERENCE), later ones SUCCESS
(JOB_STATE_DONE) or FAILED. Note the client's `Job.wait()` sleeps `Job._polling_interval`
(10 s) before each re-poll (1 s steps when verbose, but it still polls only every 10 s), so
every running answer that `wait()` sees costs 10 s of wall time; set `running_polls = 0`
before submitting where a test does not need to see a running state.

Jobs: `submit_profile_job` in qai-hub 0.56 is `submit_inference_job(inputs=None,
profile=True)`, so both arrive as an `InferenceJob`; one without a dataset is recorded in
`submitted` as a "profile" job, one with a dataset as an "inference" job. A job with profiling
on (submit_inference_job's default, profile=True) gets recording["profiles"][device name][job
name]; when there is none it ends FAILED with "no recorded profile for job '<name>' on
<device>". An inference job's outputs are computed as above; with profile=False it needs no
recording (and download_profile() gives {}).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import re
import secrets
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import pytest

RECORDING = Path(__file__).parent / "data" / "aihub" / "recording.json"

_API_PREFIX = "/api/v1/"
_STORAGE_PREFIX = "/_storage/"
_PROTOBUF = "application/x-protobuf"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_Answer = tuple[int, bytes, str, dict[str, str]]  # status, body, Content-Type, other headers


class _HTTPError(Exception):
    """Ends a request with this status and body."""

    def __init__(self, status: int, body: bytes | str = b"",
                 content_type: str = "application/json") -> None:
        super().__init__(status)
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type


def _not_found(what: str) -> _HTTPError:
    # Django REST framework's shape, which the client shows as the message of a 404
    return _HTTPError(404, json.dumps({"detail": f"{what} not found."}))


def _s3_error(status: int, code: str, message: str) -> _HTTPError:
    # S3's XML error body; qai_hub.api_utils.extract_error_text reads <Code> and <Message>
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>")
    return _HTTPError(status, body, "application/xml")


def _timestamp(when: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _profile_pb(entry: dict):
    """A recording's profile entry -> ProfileDetail. The entry is ProfileDetail in protobuf's
    JSON mapping, except that a layer_details item may carry "repeat": n, which stands for n
    layers alike, named "<name>_<i>"."""
    from google.protobuf import json_format
    from qai_hub import public_api_pb2 as api_pb

    entry = copy.deepcopy(entry)
    layers = []
    for item in entry.pop("layer_details", []):
        repeat = item.pop("repeat", None)
        if repeat is None:
            layers.append(item)
            continue
        for i in range(repeat):
            layers.append({**item, "name": f"{item['name']}_{i}"})
    for index, layer in enumerate(layers):
        layer.setdefault("id", str(index))
    entry["layer_details"] = layers
    return json_format.ParseDict(entry, api_pb.ProfileDetail())


def _os_matches(wanted: str, os_version: str) -> bool:
    """The API's OS filter: empty (any), an exact version, or a right-open interval
    "[a,b)" with either end optional (see qai_hub.Device)."""
    from packaging.version import Version

    if not wanted:
        return True
    if wanted.startswith("[") and wanted.endswith(")") and "," in wanted:
        low, high = wanted[1:-1].split(",", 1)
        version = Version(os_version)
        return ((not low or version >= Version(low))
                and (not high or version < Version(high)))
    return wanted == os_version


# --- running a model, as a stand-in for the phone -------------------------------------------


def _numpy_dtype_to_pb(dtype) -> int | None:
    from qai_hub import public_api_pb2 as api_pb

    names = {"float16": api_pb.TENSOR_DTYPE_FLOAT16, "float32": api_pb.TENSOR_DTYPE_FLOAT32,
             "int32": api_pb.TENSOR_DTYPE_INT32, "int8": api_pb.TENSOR_DTYPE_INT8,
             "uint8": api_pb.TENSOR_DTYPE_UINT8, "int16": api_pb.TENSOR_DTYPE_INT16,
             "uint16": api_pb.TENSOR_DTYPE_UINT16, "int64": api_pb.TENSOR_DTYPE_INT64,
             "bool": api_pb.TENSOR_DTYPE_BOOL}
    return names.get(np.dtype(dtype).name)


class _Runner:
    """One model loaded in the CPU runtime for its format: input specs and a call per sample."""

    def __init__(self, model_bytes: bytes, model_type: int, workdir: Path) -> None:
        from qai_hub import public_api_pb2 as api_pb

        self._tmp = workdir
        if model_type == api_pb.MODEL_TYPE_TFLITE:
            self._load_tflite(model_bytes)
        elif model_type == api_pb.MODEL_TYPE_ONNX:
            self._load_onnx(model_bytes)
        else:
            name = api_pb.ModelType.Name(model_type)
            raise ValueError(f"the replay server runs only TFLite and ONNX models, not {name}")

    def _load_tflite(self, model_bytes: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=model_bytes)
        signatures = interpreter.get_signature_list()
        if len(signatures) == 1:
            # the signature's names are the ones the model's author gave (e.g. pixel_values,
            # logits); the tensors behind them are named serving_default_..._output
            runner = interpreter.get_signature_runner(next(iter(signatures)))
            details = runner.get_input_details()
            self.inputs = [(n, tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]))
                           for n, d in details.items()]

            def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return dict(runner(**feeds))
        else:
            interpreter.allocate_tensors()
            in_details = interpreter.get_input_details()
            out_details = interpreter.get_output_details()
            self.inputs = [(d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]))
                           for d in in_details]

            def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                for d in in_details:
                    interpreter.set_tensor(d["index"], feeds[d["name"]])
                interpreter.invoke()
                return {d["name"]: interpreter.get_tensor(d["index"]).copy()
                        for d in out_details}
        self._run = run

    def _load_onnx(self, model_bytes: bytes) -> None:
        import onnxruntime as ort

        source: bytes | str = model_bytes
        if model_bytes[:2] == b"PK":  # an ONNX model directory (.onnx + .data), zipped
            with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
                archive.extractall(self._tmp)
            source = str(next(self._tmp.rglob("*.onnx")))
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        onnx_types = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                      "tensor(int64)": np.int64, "tensor(int32)": np.int32,
                      "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
                      "tensor(bool)": np.bool_}
        self.inputs = [(i.name, tuple(d if isinstance(d, int) else 1 for d in i.shape),
                        np.dtype(onnx_types.get(i.type, np.float32)))
                       for i in session.get_inputs()]
        output_names = [o.name for o in session.get_outputs()]

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(output_names, session.run(output_names, feeds), strict=True))
        self._run = run

    def tensor_type_list(self):
        from qai_hub import public_api_pb2 as api_pb

        types = []
        for name, shape, dtype in self.inputs:
            pb_dtype = _numpy_dtype_to_pb(dtype)
            if pb_dtype is None:
                return None
            types.append(api_pb.NamedTensorType(
                name=name, tensor_type=api_pb.TensorType(shape=list(shape), dtype=pb_dtype)))
        return api_pb.NamedTensorTypeList(types=types)

    def run_samples(self, data: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
        """Every sample of the dataset, one at a time. Dataset entries are matched to the
        model's inputs by name when the names agree, else by position (a dataset's schema
        is ordered)."""
        names = [n for n, _, _ in self.inputs]
        if set(data) == set(names):
            mapping = {n: n for n in names}
        elif len(data) == len(names):
            mapping = dict(zip(names, data, strict=True))
        else:
            raise ValueError(f"the inputs ({', '.join(data)}) do not match the model's "
                             f"inputs ({', '.join(names)})")
        counts = {len(v) for v in data.values()}
        if len(counts) != 1:
            raise ValueError("every input needs the same number of samples")
        outputs: dict[str, list[np.ndarray]] = {}
        for i in range(counts.pop()):
            feeds = {n: np.asarray(data[mapping[n]][i]).astype(dtype, copy=False)
                     for n, _, dtype in self.inputs}
            for name, value in self._run(feeds).items():
                outputs.setdefault(name, []).append(np.array(value))
        return outputs


# --- h5 datasets, in the layout qai_hub.util.dataset_entries_converters reads and writes -----


def _read_h5(data: bytes) -> dict[str, list[np.ndarray]]:
    import h5py

    with h5py.File(io.BytesIO(data), "r") as h5f:
        groups = list(h5f["data"].values())
        groups.sort(key=lambda g: int(g.attrs.get("order", g.name.rsplit("/", 1)[-1])))
        return {str(g.attrs["name"]): [np.array(g[f"batch_{i}"])
                                       for i in range(int(g.attrs["batch_count"]))]
                for g in groups}


def _write_h5(entries: dict[str, list[np.ndarray]]) -> bytes:
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5f:
        for index, (name, arrays) in enumerate(entries.items()):
            for i, array in enumerate(arrays):
                h5f.create_dataset(f"data/{index}/batch_{i}", data=array, compression="gzip")
            group = h5f[f"data/{index}"]
            group.attrs["order"] = index
            group.attrs["name"] = name
            group.attrs["batch_count"] = len(arrays)
    return buffer.getvalue()


def _multipart_form(body: bytes, content_type: str) -> dict[str, bytes]:
    """multipart/form-data -> field name -> raw bytes (what requests_toolbelt's
    MultipartEncoder sends for an S3 POST-policy upload: the policy fields, then the file)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise _s3_error(400, "MalformedPOSTRequest", "The body is not multipart/form-data.")
    delimiter = b"--" + match.group(1).encode()
    fields = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        head, _, value = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = value.removesuffix(b"\r\n")
    return fields


# --- the server -------------------------------------------------------------------------------


class AIHubReplay:
    """A running replay server. Attributes other code reads:

    url          http://127.0.0.1:PORT (the API, the web pages' base and the storage)
    ini          the client.ini pointing at it
    requests     (HTTP method, path) of every request received, in order (query strings
                 left off; storage requests included)
    submitted    one dict per job created: type ("profile" | "inference"), name, device,
                 model_bytes, model_name, options
    output_noise relative noise added to computed inference outputs (default 0.0)
    running_polls how many GETs of a job answer a running state before its final one
                 (default 1; each one that Job.wait() sees costs the client's 10 s sleep)
    max_part_size the part size handed out for multipart model uploads (default 5 MiB)
    recording    the parsed recording.json (a test may add devices or profiles)
    errors       exceptions raised inside the server (its own bugs), answered 501
    """

    def __init__(self, root: Path, token: str, accepted_token: str,
                 recording: Path = RECORDING) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.accepted_token = accepted_token
        self.recording: dict[str, Any] = json.loads(Path(recording).read_text())
        self.requests: list[tuple[str, str]] = []
        self.submitted: list[dict] = []
        self.errors: list[Exception] = []  # exceptions raised inside this server (bugs)
        self.output_noise = 0.0
        self.running_polls = 1
        self.max_part_size = 5 * 1024 * 1024
        self._lock = threading.RLock()
        self._signature = secrets.token_hex(16)  # what "pre-signed" URLs carry
        self._counters: dict[str, int] = {}
        self._models: dict[str, dict] = {}
        self._datasets: dict[str, dict] = {}
        self._jobs: dict[str, dict] = {}

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.replay = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.ini = self.root / "client.ini"
        # the [api] section api_utils.load_api_config_from_file reads; verbose off keeps the
        # client's progress bars and status lines out of test output
        self.ini.write_text("[api]\n"
                            f"api_token = {token}\n"
                            f"api_url = {self.url}\n"
                            f"web_url = {self.url}\n"
                            "verbose = False\n")
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"aihub-replay-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ids shaped like AI Hub's: a letter for the kind and eight lowercase letters/digits
    def _new_id(self, prefix: str) -> str:
        with self._lock:
            n = self._counters[prefix] = self._counters.get(prefix, 0) + 1
        digest = hashlib.sha256(f"{prefix}{n}{self.port}".encode()).digest()
        return prefix + "".join(_ID_ALPHABET[b % len(_ID_ALPHABET)] for b in digest[:8])

    def _storage_url(self, path: str) -> str:
        return f"{self.url}{_STORAGE_PREFIX}{path}?X-Amz-Signature={self._signature}"

    # --- dispatch ---------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> _Answer:
        """One request -> (status, body, Content-Type, other headers)."""
        parts = urlsplit(raw_path)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append((method, path))
        try:
            if path.startswith(_STORAGE_PREFIX):
                return self._storage(method, path[len(_STORAGE_PREFIX):], query, headers, body)
            if not path.startswith(_API_PREFIX):
                raise _not_found("Page")
            # the API authenticates with "Authorization: token <api token>"
            auth = headers.get("Authorization", "")
            if auth != f"token {self.accepted_token}":
                detail = ("Invalid token." if auth.startswith("token ")
                          else "Authentication credentials were not provided.")
                raise _HTTPError(401, json.dumps({"detail": detail}))
            route = path[len(_API_PREFIX):].strip("/")
            route = re.sub(r"^projects/[^/]+/", "", route)  # project-scoped paths, same objects
            return self._api(method, route, query, body)
        except _HTTPError as e:
            return e.status, e.body, e.content_type, {}

    def _api(self, method: str, route: str, query: dict, body: bytes) -> _Answer:
        from qai_hub import public_api_pb2 as api_pb

        seg = route.split("/")
        key = (method, seg[0], len(seg), seg[2] if len(seg) > 2 else None)
        table = {
            ("GET", "users", 3, "user"): lambda: self._user(),
            ("GET", "devices", 1, None): lambda: self._devices(query),
            ("POST", "models", 1, None): lambda: self._create_model(api_pb.Model.FromString(body)),
            ("GET", "models", 2, None): lambda: self._model(seg[1])["pb"],
            ("GET", "models", 3, "multipart_upload"):
                lambda: self._model_upload_urls(seg[1], query),
            ("POST", "models", 3, "multipart_upload"): lambda: self._complete_model_upload(
                seg[1], api_pb.FileMultipartUploadComplete.FromString(body)),
            ("POST", "datasets", 1, None):
                lambda: self._create_dataset(api_pb.Dataset.FromString(body)),
            ("GET", "datasets", 2, None): lambda: self._dataset(seg[1])["pb"],
            ("PATCH", "datasets", 2, None):
                lambda: self._confirm_dataset(seg[1], api_pb.Dataset.FromString(body)),
            ("GET", "datasets", 3, "upload_url"): lambda: self._dataset_upload_url(seg[1]),
            ("GET", "datasets", 3, "download_data"): lambda: self._dataset_download(seg[1]),
            ("POST", "jobs", 1, None): lambda: self._create_job(api_pb.Job.FromString(body)),
            ("GET", "jobs", 2, None): lambda: self._poll_job(seg[1]),
            ("PATCH", "jobs", 2, None):
                lambda: self._rename_job(seg[1], api_pb.JobPublicUpdate.FromString(body)),
            ("GET", "jobs", 3, "result"): lambda: self._job_result(seg[1]),
        }
        if key not in table:
            raise _not_found(f"Endpoint {method} {route}/")
        message = table[key]()
        return 200, message.SerializeToString(), _PROTOBUF, {}

    # --- users and devices --------------------------------------------------------------

    def _user(self):
        from qai_hub import public_api_pb2 as api_pb

        return api_pb.User(id=1, first_name="Replay", last_name="User",
                           email="replay@example.invalid", org_id=1)

    def _device_pb(self, entry: dict):
        from qai_hub import public_api_pb2 as api_pb

        return api_pb.Device(name=entry["name"], os=entry["os"],
                             attributes=entry.get("attributes", []),
                             soc_description=entry.get("soc_description", ""))

    def _devices(self, query: dict):
        """name: exact; os: exact or an interval; attributes: all of them (the parameter
        repeats, attributes=a&attributes=b); select=True: the one with the newest OS."""
        from packaging.version import Version
        from qai_hub import public_api_pb2 as api_pb

        name = query.get("name", [""])[0]
        os_version = query.get("os", [""])[0]
        attributes = [a for a in query.get("attributes", []) if a]
        select = query.get("select", ["False"])[0].lower() == "true"
        found = [d for d in self.recording["devices"]
                 if (not name or d["name"] == name) and _os_matches(os_version, d["os"])
                 and all(a in d.get("attributes", []) for a in attributes)]
        if select and found:
            found = [max(found, key=lambda d: Version(d["os"]))]
        return api_pb.DeviceList(devices=[self._device_pb(d) for d in found],
                                 total_query_count=len(found))

    def _stored(self, table: dict, key: str, what: str) -> dict:
        """A model, dataset or job by id, or the API's 404 for it."""
        with self._lock:
            if key not in table:
                raise _not_found(what)
            return table[key]

    # --- models ---------------------------------------------------------------------------

    def _model(self, model_id: str) -> dict:
        return self._stored(self._models, model_id, "Model")

    def _create_model(self, model_pb):
        from qai_hub import public_api_pb2 as api_pb

        model_id = self._new_id("m")
        created = _now()
        stored = api_pb.Model()
        stored.CopyFrom(model_pb)
        stored.model_id = model_id
        stored.creation_time.CopyFrom(_timestamp(created))
        stored.file_upload_complete = False
        with self._lock:
            self._models[model_id] = {"pb": stored, "parts": {}, "bytes": None,
                                      "upload_id": None}
        return api_pb.CreateUpdateResponse(id=model_id, creation_time=_timestamp(created))

    def _model_upload_urls(self, model_id: str, query: dict):
        """The file goes up in parts, PUT to pre-signed URLs, each answered with an ETag; the
        client then POSTs the ETags back (FileMultipartUploadComplete) to stitch them."""
        from qai_hub import public_api_pb2 as api_pb

        model = self._model(model_id)
        file_size = int(query.get("file_size", ["0"])[0] or 0)
        count = max(1, math.ceil(file_size / self.max_part_size))
        upload_id = secrets.token_hex(8)
        with self._lock:
            model["upload_id"] = upload_id
            model["parts"] = {}
        urls = [self._storage_url(f"models/{model_id}/{upload_id}/{n + 1}") for n in range(count)]
        return api_pb.FileUploadResponse(multipart_url=api_pb.FileMultipartUploadURL(
            urls=urls, upload_id=upload_id, max_part_size=self.max_part_size))

    def _complete_model_upload(self, model_id: str, complete):
        from qai_hub import public_api_pb2 as api_pb

        model = self._model(model_id)
        with self._lock:
            if complete.upload_id != model["upload_id"]:
                raise _HTTPError(400, json.dumps({"detail": "Unknown upload_id."}))
            parts = model["parts"]
            etags = [parts[n][0] for n in sorted(parts)]
            if list(complete.etags) != etags:
                raise _HTTPError(400, json.dumps({"detail": "ETags do not match the parts."}))
            model["bytes"] = b"".join(parts[n][1] for n in sorted(parts))
            model["pb"].file_upload_complete = True
        return api_pb.CreateUpdateResponse(id=model_id, creation_time=model["pb"].creation_time)

    # --- datasets ---------------------------------------------------------------------------

    def _dataset(self, dataset_id: str) -> dict:
        return self._stored(self._datasets, dataset_id, "Dataset")

    def _new_dataset(self, name: str, permanent: bool = False, data: bytes | None = None):
        from qai_hub import public_api_pb2 as api_pb

        dataset_id = self._new_id("d")
        created = _now()
        pb = api_pb.Dataset(dataset_id=dataset_id, name=name, permanent=permanent,
                            creation_time=_timestamp(created),
                            file_upload_complete=data is not None)
        if not permanent:  # datasets expire after 30 days (Client.upload_dataset's docstring)
            pb.expiration_time.CopyFrom(_timestamp(created + timedelta(days=30)))
        with self._lock:
            self._datasets[dataset_id] = {"pb": pb, "bytes": data}
        return pb

    def _create_dataset(self, dataset_pb):
        from qai_hub import public_api_pb2 as api_pb

        pb = self._new_dataset(dataset_pb.name, dataset_pb.permanent)
        response = api_pb.CreateUpdateResponse(id=pb.dataset_id, creation_time=pb.creation_time)
        if pb.HasField("expiration_time"):
            response.expiration_time.CopyFrom(pb.expiration_time)
        return response

    def _dataset_upload_url(self, dataset_id: str):
        """An S3 POST policy: the form fields to send along, and the file's field name."""
        from qai_hub import public_api_pb2 as api_pb

        self._dataset(dataset_id)
        fields = {"key": f"datasets/{dataset_id}/dataset.h5",
                  "x-amz-algorithm": "AWS4-HMAC-SHA256",
                  "x-amz-credential": "REPLAY/us-west-2/s3/aws4_request",
                  "policy": "cmVwbGF5ZWQ=",
                  "x-amz-signature": self._signature}
        return api_pb.FileUploadResponse(url=api_pb.FileUploadURL(
            url=f"{self.url}{_STORAGE_PREFIX}datasets/{dataset_id}", file_field_name="file",
            fields=fields))

    def _confirm_dataset(self, dataset_id: str, update):
        from qai_hub import public_api_pb2 as api_pb

        dataset = self._dataset(dataset_id)
        if update.HasField("file_upload_complete") and update.file_upload_complete:
            if dataset["bytes"] is None:
                raise _HTTPError(400, json.dumps({"detail": "The dataset file was not uploaded."}))
            dataset["pb"].file_upload_complete = True
        return api_pb.CreateUpdateResponse(id=dataset_id,
                                           creation_time=dataset["pb"].creation_time)

    def _dataset_download(self, dataset_id: str):
        from qai_hub import public_api_pb2 as api_pb

        dataset = self._dataset(dataset_id)
        if not dataset["pb"].file_upload_complete:
            raise _HTTPError(400, json.dumps({"detail": "The dataset has no file yet."}))
        filename = f"{dataset['pb'].name or dataset_id}.h5"
        url = self._storage_url(f"datasets/{dataset_id}/{quote(filename)}")
        return api_pb.FileDownloadResponse(url=api_pb.FileDownloadURL(url=url, filename=filename))

    # --- storage (the pre-signed URLs) ------------------------------------------------------

    def _storage(self, method: str, path: str, query: dict, headers, body: bytes) -> _Answer:
        seg = path.strip("/").split("/")
        if method == "POST" and seg[0] == "datasets" and len(seg) == 2:
            form = _multipart_form(body, headers.get("Content-Type", ""))
            if form.get("x-amz-signature", b"").decode() != self._signature:
                raise _s3_error(403, "AccessDenied", "Invalid according to Policy")
            if "file" not in form:
                raise _s3_error(400, "InvalidArgument", "POST requires exactly one file upload")
            self._dataset(seg[1])["bytes"] = form["file"]
            return 204, b"", "text/plain", {}
        if query.get("X-Amz-Signature", [""])[0] != self._signature:
            raise _s3_error(403, "AccessDenied", "Request has expired or the signature is wrong")
        if method == "PUT" and seg[0] == "models" and len(seg) == 4:
            model = self._model(seg[1])
            with self._lock:
                if seg[2] != model["upload_id"]:
                    raise _s3_error(404, "NoSuchUpload", "The specified upload does not exist.")
                etag = f'"{hashlib.md5(body).hexdigest()}"'  # S3's ETag of a part: its MD5
                model["parts"][int(seg[3])] = (etag, body)
            return 200, b"", "text/plain", {"ETag": etag}
        if method == "GET" and seg[0] == "datasets" and len(seg) == 3:
            data = self._dataset(seg[1])["bytes"]
            if data is None:
                raise _s3_error(404, "NoSuchKey", "The specified key does not exist.")
            return 200, data, "application/x-hdf5", {}
        raise _s3_error(405, "MethodNotAllowed", "The method is not allowed for this resource.")

    # --- jobs -------------------------------------------------------------------------------

    def _job(self, job_id: str) -> dict:
        return self._stored(self._jobs, job_id, "Job")

    def _create_job(self, job_pb):
        """Settles the job's outcome now; polls reveal it (see the module docstring)."""
        from qai_hub import public_api_pb2 as api_pb

        kind = job_pb.WhichOneof("job")
        if kind != "inference_job":
            raise _HTTPError(400, json.dumps(
                {"detail": f"the replay server runs inference and profile jobs, not {kind}"}))
        request = job_pb.inference_job
        model = self._model(request.model.model_id)
        if not model["pb"].file_upload_complete:
            raise _HTTPError(400, json.dumps({"detail": "The model upload is not complete."}))
        device = self._find_device(request.device)
        job_id = self._new_id("j")
        created = _now()
        dataset_id = request.dataset.dataset_id if request.HasField("dataset") else ""
        job_type = "inference" if dataset_id else "profile"
        profiling = request.is_profiling_on if request.HasField("is_profiling_on") else True
        job = {"id": job_id, "type": job_type, "request": request, "model": model["pb"],
               "device": device, "created": created, "polls": 0,
               "running_polls": self.running_polls, "profiling": profiling,
               "state": api_pb.JOB_STATE_DONE, "failure_reason": None, "profile": None,
               "output_dataset_id": "", "tensor_types": None}
        with self._lock:
            self._jobs[job_id] = job
            self.submitted.append({"type": job_type, "name": request.name,
                                   "device": device.name, "model_bytes": model["bytes"],
                                   "model_name": model["pb"].name, "options": request.options})
        self._settle(job, model, dataset_id)
        return api_pb.CreateUpdateResponse(id=job_id, creation_time=_timestamp(created))

    def _find_device(self, device_pb):
        """The device a job names, among the recording's (a name and, if given, the OS)."""
        for entry in self.recording["devices"]:
            if entry["name"] == device_pb.name and _os_matches(device_pb.os, entry["os"]):
                return self._device_pb(entry)
        raise _HTTPError(400, json.dumps({"detail": f"Device {device_pb.name!r} "
                                                    f"(os {device_pb.os!r}) is not available."}))

    def _settle(self, job: dict, model: dict, dataset_id: str) -> None:

        name, device = job["request"].name, job["device"].name
        if job["profiling"]:  # profile jobs, and inference jobs with profile=True
            recorded = self.recording.get("profiles", {}).get(device, {}).get(name)
            if recorded is None:
                self._fail(job, f"no recorded profile for job '{name}' on {device}")
                return
            job["profile"] = _profile_pb(recorded)
        with tempfile.TemporaryDirectory(dir=self.root) as workdir:
            runner = None
            try:
                runner = _Runner(model["bytes"], model["pb"].model_type, Path(workdir))
                job["tensor_types"] = runner.tensor_type_list()
            except Exception as e:
                if job["type"] == "inference":  # a profile job needs no runtime here
                    self._fail(job, f"the model did not load: {e}")
                    return
            if job["type"] == "profile":
                return
            try:
                inputs = _read_h5(self._dataset(dataset_id)["bytes"])
                outputs = runner.run_samples(inputs)  # type: ignore[union-attr]
            except Exception as e:
                self._fail(job, f"inference failed: {e}")
                return
        if self.output_noise > 0:
            rng = np.random.default_rng(len(self._jobs))
            for arrays in outputs.values():
                for i, array in enumerate(arrays):
                    scale = self.output_noise * float(np.max(np.abs(array), initial=0.0))
                    noise = rng.standard_normal(array.shape) * scale
                    arrays[i] = (array + noise).astype(array.dtype)
        out = self._new_dataset(f"job_{job['id']}_output", data=_write_h5(outputs))
        job["output_dataset_id"] = out.dataset_id

    def _fail(self, job: dict, reason: str) -> None:
        from qai_hub import public_api_pb2 as api_pb

        job["state"], job["failure_reason"] = api_pb.JOB_STATE_FAILED, reason

    def _poll_job(self, job_id: str):
        job = self._job(job_id)
        with self._lock:
            job["polls"] += 1
            running = job["polls"] <= job["running_polls"]
        return self._job_pb(job, running)

    def _job_pb(self, job: dict, running: bool):
        from qai_hub import public_api_pb2 as api_pb

        request = job["request"]
        pb = api_pb.InferenceJob(
            inference_job_id=job["id"], user_id=1, name=request.name,
            model=job["model"], device=job["device"], options=request.options,
            creation_time=_timestamp(job["created"]),
            start_time=_timestamp(job["created"] + timedelta(seconds=5)),
            is_profiling_on=job["profiling"])
        if request.HasField("dataset"):
            pb.dataset.CopyFrom(self._dataset(request.dataset.dataset_id)["pb"])
        if running:
            # one of the states InferenceJob lists as in progress for its kind (the client's
            # verbose status line indexes that list with the state)
            pb.job_state = (api_pb.JOB_STATE_MEASURING_PERFORMANCE if job["profiling"]
                            else api_pb.JOB_STATE_RUNNING_INFERENCE)
        else:
            pb.job_state = job["state"]
            pb.completion_time.CopyFrom(_timestamp(job["created"] + timedelta(seconds=65)))
            if job["failure_reason"] is not None:
                pb.failure_reason = job["failure_reason"]
            if job["tensor_types"] is not None:
                pb.tensor_type_list.CopyFrom(job["tensor_types"])
            profile = job["profile"]
            if profile is not None and job["state"] == api_pb.JOB_STATE_DONE:
                pb.execution_time = profile.execution_time
                pb.execution_peak_memory.CopyFrom(api_pb.Range(
                    lower=profile.execution_memory.peak.lower,
                    upper=profile.execution_memory.peak.upper))
        wrapper = api_pb.Job(inference_job=pb, hub_version="replay")
        if job["failure_reason"] is not None and not running:
            wrapper.failure_type = api_pb.JOB_FAILURE_TYPE_UNKNOWN
        return wrapper

    def _rename_job(self, job_id: str, update):
        from qai_hub import public_api_pb2 as api_pb

        job = self._job(job_id)
        if update.HasField("name"):
            job["request"].name = update.name
        return api_pb.CreateUpdateResponse(id=job_id, creation_time=_timestamp(job["created"]))

    def _job_result(self, job_id: str):
        from qai_hub import public_api_pb2 as api_pb

        job = self._job(job_id)
        if job["polls"] <= job["running_polls"] or job["state"] != api_pb.JOB_STATE_DONE:
            raise _HTTPError(400, json.dumps({"detail": "The job has no results."}))
        result = api_pb.InferenceJobResult(inference_job_id=job_id,
                                           output_dataset_id=job["output_dataset_id"])
        if job["profile"] is not None:
            result.detail.CopyFrom(job["profile"])
        return api_pb.JobResult(inference_job_result=result)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return b"".join(self._chunks())
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            yield self.rfile.read(size)
            self.rfile.readline()  # the CRLF after each chunk

    def _serve(self) -> None:
        replay: AIHubReplay = self.server.replay  # type: ignore[attr-defined]
        body = self._body()
        try:
            answer = replay.handle(self.command, self.path, self.headers, body)
        except Exception as e:
            # a bug in this server: kept in .errors, and answered 501, which the client does not
            # retry (it retries 500 with back-off for about 45 s before giving up)
            replay.errors.append(e)
            answer = (501, json.dumps({"detail": f"replay server error: {e!r}"}).encode(),
                      "application/json", {})
        status, payload, content_type, extra = answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the log is .requests
        pass


def start_replay(root: Path, *, token: str = "replayed-token",
                 accepted_token: str = "replayed-token") -> AIHubReplay:
    """Start a replay server on 127.0.0.1 (a free port, a daemon thread) and write
    root/"client.ini" with `token` as its API token. Requests whose token is not
    `accepted_token` get 401, as a bad or expired token does."""
    return AIHubReplay(Path(root), token=token, accepted_token=accepted_token)


@pytest.fixture
def aihub_replay(tmp_path, monkeypatch) -> Iterator[AIHubReplay]:
    """A replay server, with QAIHUB_CLIENT_INI pointing qai_hub.Client() at it."""
    replay = start_replay(tmp_path / "aihub")
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(replay.ini))
    yield replay
    replay.stop()
