"""Calibrated device twins: what an emulated device costs in time, memory and energy.

A :class:`DeviceTwin` answers, for one device profile, how long a model's inference holds the
device (its service time), what running it after another model adds (the switch), what it occupies
in the device's memory and how many tenants therefore fit, and what an inference costs in energy
and per dollar. The daemon holds an emulated slot for the twin's time (``--timing twin``,
``tenantd/executor.py``); ``experiments/plan.py`` and ``experiments/validate_twins.py`` run the same
twin in a discrete-event simulation.

Every number comes from ``twin_data/*.csv`` (published measurements, each row with its source) or
from a coefficient fitted on those rows here, at import, and only on rows whose ``role`` is
``fit``; concurrent measurements are kept in ``experiments/data/twins`` for validation and are never
read by this module. Where nothing was published the figure is modelled, and says so (``source``):

- service time: ``published`` for that model on that device; else ``fitted`` from the model's
  multiply-accumulates (and, on the EdgeTPU, the parameter bytes that do not fit the on-chip cache
  and are streamed on every inference) with per-device coefficients; ``scaled`` for the TX2 (no
  published TX2 latency in the sources read: the Nano's fit times the ratio of the two modules'
  DRAM bandwidth, 25.6 / 59.7 GB/s, NVIDIA datasheets); ``estimated`` for a model the tables do not
  know (its MACs guessed from its parameter count).
- switch (EdgeTPU): the cache holds ONE model's parameters (or one co-compiled group's), so any
  change of model, and a cold start, streams the new model's on-chip parameters: a constant plus
  on-chip bytes over the link's bandwidth, both fitted on ibis's switch-overhead figure (USB 3).
  USB 2 scales the bandwidth by 480/5000 (signalling rates); PCIe (Gen2 x1, 5 GT/s, 8b/10b like
  USB 3) is taken as USB 3. Where ibis published a per-model overhead for the rig whose service
  times are used, that figure is used. Other devices keep every admitted model loaded (NCS2: the
  stick's 512 MB; Jetson: each model's engine in its own process), so a switch costs nothing there.
- discipline: EdgeTPU, NCS2 and Raspberry Pi run one inference at a time, first come first served;
  a Jetson's GPU time-slices between processes (processor sharing), as ibis's TensorRT runs show.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from tenantd.devices.profiles import DeviceProfile, get_profile

MB = 1e6
GiB = 1024**3

LINKS = ("usb3", "usb2", "pcie")
USB2_OVER_USB3 = 480 / 5000  # signalling rates, for the streamed parameters
TX2_OVER_NANO = 25.6 / 59.7  # Nano / TX2 DRAM bandwidth (GB/s), NVIDIA module datasheets
EDGETPU_ON_CHIP_MAX_MB = 6.74  # the most on-chip parameter MB in ibis's figure (of the 8 MiB cache)
BYTES_PER_PARAM = {"edgetpu": 1, "ncs2": 2, "jetson-nano": 2, "jetson-tx2": 2, "rpi3": 4}
FCFS, PS = "fcfs", "ps"

# Memory model inputs that no source read here publishes: assumptions, named as such in `memory`.
ASSUMED = {
    "edgetpu_host_bytes": 4 * GiB,  # a Raspberry Pi 4 class host (ibis's cluster is Pi based)
    "edgetpu_host_os_bytes": 512 * 1024**2,
    "edgetpu_runtime_bytes": 30 * 1024**2,  # TFLite interpreter + libedgetpu per model
    "jetson_os_bytes": 1 * GiB,  # L4T with its desktop, a modelled baseline (not this host's use)
    "jetson_cuda_bytes": int(0.8 * GiB),  # CUDA/cuDNN/TensorRT per process: NVIDIA forum, TensorRT#2217
    "rpi3_os_bytes": 256 * 1024**2,
    "rpi3_runtime_bytes": 20 * 1024**2,
}


class TwinUnavailable(ValueError):
    """The profile has no twin, or the twin cannot state this figure (no published basis)."""


@dataclass(frozen=True)
class TwinModel:
    name: str
    gmacs: float | None
    params_m: float | None
    activation_mb: float | None
    on_chip_mb: float | None = None  # EdgeTPU: parameters cached on chip
    off_chip_mb: float | None = None  # EdgeTPU: parameters streamed on every inference
    estimated: bool = False

    def edgetpu_split(self) -> tuple[float, float]:
        """(on-chip MB, off-chip MB): ibis's figure where published, else int8 parameters filling
        the cache up to what ibis saw fit on chip."""
        if self.on_chip_mb is not None and self.off_chip_mb is not None:
            return self.on_chip_mb, self.off_chip_mb
        total = self.params_m or 0.0
        return min(total, EDGETPU_ON_CHIP_MAX_MB), max(0.0, total - EDGETPU_ON_CHIP_MAX_MB)


@dataclass(frozen=True)
class ServiceTime:
    ms: float
    source: str  # published | fitted | scaled | estimated


@dataclass(frozen=True)
class Footprint:
    device_bytes: int  # what one tenant's model occupies in the budget that bounds admission
    budget_bytes: int  # that budget (device memory, or host memory for the EdgeTPU)
    note: str


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("tenantd.devices").joinpath("twin_data", name).read_text()
    return list(csv.DictReader(text.splitlines()))


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(".", "_")


def _load_models() -> tuple[dict[str, TwinModel], dict[str, str]]:
    models: dict[str, TwinModel] = {}
    aliases: dict[str, str] = {}

    def num(text: str) -> float | None:
        return float(text) if text.strip() else None

    for r in _rows("models.csv"):
        m = TwinModel(
            r["model"],
            num(r["gmacs"]),
            num(r["params_m"]),
            num(r["activation_mb"]),
            num(r["edgetpu_on_chip_mb"]),
            num(r["edgetpu_off_chip_mb"]),
        )
        models[m.name] = m
        for alias in (m.name, *r["aliases"].split()):
            aliases[_key(alias)] = m.name
    return models, aliases


MODELS, _ALIASES = _load_models()
SERVICE_ROWS = _rows("service_times.csv")
SWITCH_ROWS = _rows("switch_costs.csv")


def resolve(name: str) -> TwinModel | None:
    """The model the tables know under ``name`` or an alias, or that ``name`` ends with after a
    separator (``alice-mobilenet_v2``: tenants' names often carry a prefix), else None."""
    key = _key(name)
    found = _ALIASES.get(key)
    if found is None:
        suffixes = [alias for alias in _ALIASES if key.endswith("_" + alias)]
        found = _ALIASES[max(suffixes, key=len)] if suffixes else None
    return MODELS[found] if found else None


def estimate_model(name: str, param_bytes: int, profile: str) -> TwinModel:
    """A model the tables do not know: parameters from its file size at the device's bytes per
    parameter, MACs from the median MACs per parameter of the known models."""
    params_m = param_bytes / BYTES_PER_PARAM.get(profile, 4) / MB
    ratios = [m.gmacs / m.params_m for m in MODELS.values() if m.gmacs and m.params_m]
    return TwinModel(name, params_m * statistics.median(ratios), params_m, None, estimated=True)


def least_squares(x: Sequence[Sequence[float]], y: Sequence[float]) -> tuple[list[float], float]:
    """Coefficients minimising the squared error of ``x @ c - y``, and the fit's largest relative
    error (on the fit rows themselves)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    return [float(c) for c in coef], float(np.max(np.abs(a @ coef - b) / b))


@dataclass(frozen=True)
class ServiceFit:
    """service_ms = sum(coef_i * feature_i) over ``features`` (``one``, ``gmacs``, ``off_chip_mb``)."""

    profile: str
    link: str
    features: tuple[str, ...]
    coef: tuple[float, ...]
    max_rel_err: float
    rows: int

    def predict(self, model: TwinModel) -> float:
        values = {"one": 1.0, "gmacs": model.gmacs or 0.0, "off_chip_mb": model.edgetpu_split()[1]}
        return sum(c * values[f] for f, c in zip(self.features, self.coef, strict=True))


def _fit_service(profile: str, link: str, features: tuple[str, ...], exclude: tuple[str, ...] = ()) -> ServiceFit:
    xs, ys = [], []
    for r in SERVICE_ROWS:
        if r["profile"] != profile or r["link"] != link or r["role"] != "fit" or r["model"] in exclude:
            continue
        model = MODELS[r["model"]]
        if model.gmacs is None:
            continue
        values = {"one": 1.0, "gmacs": model.gmacs, "off_chip_mb": model.edgetpu_split()[1]}
        xs.append([values[f] for f in features])
        ys.append(float(r["service_ms"]))
    if not ys:
        raise np.linalg.LinAlgError(f"no fit rows for {profile} {link}")
    coef, err = least_squares(xs, ys)
    return ServiceFit(profile, link, features, tuple(coef), err, len(ys))


@dataclass(frozen=True)
class SwitchFit:
    """EdgeTPU switch = constant_ms + on-chip MB / bandwidth (MB per ms), fitted on USB 3 rows."""

    constant_ms: float
    mb_per_ms: float
    max_rel_err: float
    rows: int

    def predict(self, on_chip_mb: float, link: str) -> float:
        bandwidth = self.mb_per_ms * (USB2_OVER_USB3 if link == "usb2" else 1.0)
        return self.constant_ms + on_chip_mb / bandwidth


def _fit_switch() -> SwitchFit:
    rows = [r for r in SWITCH_ROWS if r["role"] == "fit" and r["on_chip_mb"]]
    (const, per_mb), err = least_squares(
        [[1.0, float(r["on_chip_mb"])] for r in rows], [float(r["switch_ms"]) for r in rows]
    )
    return SwitchFit(const, 1.0 / per_mb, err, len(rows))


SWITCH_FIT = _fit_switch()
# Detection models' published times include host-side post-processing (box decoding, NMS) that
# MACs do not predict, so each device has two fits: classification rows predict classification
# models, detection rows detection models. A device with rows of one kind only (NCS2, Raspberry Pi:
# aallan measured SSDs) uses them for both, and says so in the fit's ``rows_kind``.
_DETECTION = ("ssd_mobilenet_v1", "ssd_mobilenet_v2", "ssd_mobilenet_v1_075")
_CLASSIFY = tuple(m for m in MODELS if m not in _DETECTION)


def _fits(profile: str, link: str, features: tuple[str, ...]) -> dict[tuple[str, str, bool], ServiceFit]:
    detection = _fit_service(profile, link, ("gmacs",), _CLASSIFY)
    try:
        classification = _fit_service(profile, link, features, _DETECTION)
    except np.linalg.LinAlgError:
        classification = detection
    return {(profile, link, False): classification, (profile, link, True): detection}


SERVICE_FITS: dict[tuple[str, str, bool], ServiceFit] = {
    **_fits("edgetpu", "usb3", ("one", "gmacs", "off_chip_mb")),
    **_fits("ncs2", "usb3", ("gmacs",)),
    **_fits("ncs2", "usb2", ("gmacs",)),
    **_fits("jetson-nano", "", ("one", "gmacs")),
    **_fits("rpi3", "", ("gmacs",)),
}


def _usb2_factor() -> float:
    """EdgeTPU USB 2 over USB 3 service time: the mean ratio over models aallan measured on both
    (fit rows for USB 2, crosscheck rows for USB 3: the same rig)."""
    by = {(r["model"], r["link"]): float(r["service_ms"]) for r in SERVICE_ROWS if r["profile"] == "edgetpu"}
    pairs = [(by[(m, "usb2")], by[(m, "usb3")]) for m, link in list(by) if link == "usb2" and (m, "usb3") in by]
    return statistics.mean(slow / fast for slow, fast in pairs)


EDGETPU_USB2_FACTOR = _usb2_factor()
TWIN_PROFILES = ("edgetpu", "ncs2", "jetson-nano", "jetson-tx2", "rpi3")


@dataclass(frozen=True)
class DeviceTwin:
    profile: DeviceProfile
    link: str  # usb3 | usb2 | pcie for the USB sticks; "" otherwise

    @property
    def discipline(self) -> str:
        return PS if self.profile.name.startswith("jetson") else FCFS

    def model(self, name: str, param_bytes: int | None = None) -> TwinModel:
        known = resolve(name)
        if known is not None:
            return known
        if param_bytes is None:
            raise TwinUnavailable(f"model {name!r} is not in the twin's tables and its size is not known")
        return estimate_model(name, param_bytes, self.profile.name)

    def service(self, model: TwinModel) -> ServiceTime:
        name, link = self.profile.name, self.link
        if name == "jetson-tx2":
            nano = get_twin("jetson-nano").service(model)
            return ServiceTime(nano.ms * TX2_OVER_NANO, "scaled")
        data_link = "usb3" if link == "pcie" else link
        for r in SERVICE_ROWS:
            if r["profile"] == name and r["model"] == model.name and r["link"] == data_link and r["role"] == "fit":
                return ServiceTime(float(r["service_ms"]), "published")
        kind = "estimated" if model.estimated else "fitted"
        if model.gmacs is None:
            raise TwinUnavailable(f"no published {name} time for {model.name!r} and no MACs to fit one from")
        detection = model.name in _DETECTION
        if name == "edgetpu":
            base = SERVICE_FITS[("edgetpu", "usb3", detection)].predict(model)
            return ServiceTime(base * (EDGETPU_USB2_FACTOR if link == "usb2" else 1.0), kind)
        fit = SERVICE_FITS.get((name, data_link, detection))
        if fit is None:
            raise TwinUnavailable(f"profile {name!r} has no published latencies to fit a service time on")
        return ServiceTime(fit.predict(model), kind)

    def switch_ms(self, model: TwinModel, previous: str | None) -> float:
        """What running ``model`` after ``previous`` (None: nothing ran yet) adds to its service."""
        if self.profile.name != "edgetpu" or previous == model.name:
            return 0.0
        if self.link in ("usb3", "pcie"):
            for r in SWITCH_ROWS:
                if r["model"] == model.name and r["role"] == "per-model":
                    return float(r["switch_ms"])
        return SWITCH_FIT.predict(model.edgetpu_split()[0], self.link)

    def hold_ms(self, model: TwinModel, previous: str | None) -> float:
        """How long one inference of ``model`` holds the device, switch included."""
        return self.service(model).ms + self.switch_ms(model, previous)

    def memory_budget(self) -> tuple[int, int, str]:
        """(capacity, budget, what the budget is), in bytes: the memory that bounds admission on this
        device, modelled (never this host's live use), and the same for every model."""
        name, p = self.profile.name, self.profile
        if name == "edgetpu":
            capacity, kept = ASSUMED["edgetpu_host_bytes"], ASSUMED["edgetpu_host_os_bytes"]
            note = "host memory (assumed Pi 4 class host); the 8 MiB cache holds one model at a time"
        elif name == "ncs2":
            capacity, kept = p.capacity_bytes or 0, p.default_reserve_bytes
            note = "FP16 weights + activations in the stick's 512 MB (no published graph-count limit found)"
        elif name.startswith("jetson"):
            capacity, kept = p.capacity_bytes or 0, ASSUMED["jetson_os_bytes"]
            note = "per process: CUDA/TensorRT ~0.8 GB + FP16 engine + activations, beside a modelled 1 GiB OS"
        elif name == "rpi3":
            capacity, kept = p.capacity_bytes or 0, ASSUMED["rpi3_os_bytes"]
            note = "fp32 TFLite weights + activations + runtime beside a modelled 256 MiB OS"
        else:
            raise TwinUnavailable(f"profile {name!r} has no twin memory model")
        return int(capacity), int(capacity - kept), note

    def footprint(self, model: TwinModel) -> Footprint:
        """One tenant's model against the budget that bounds admission on this device."""
        _, budget, note = self.memory_budget()
        return Footprint(int(sum(b for _, b in self.footprint_parts(model))), budget, note)

    def charge(self, name: str, file_bytes: int) -> tuple[int, str]:
        """What the daemon charges a model served as ``name`` (``file_bytes``: its file, for a model
        the tables do not know), and its parts in words, e.g. for a refusal."""
        model = self.model(name, file_bytes)
        parts = " + ".join(f"{b / 2**20:.1f} MiB {what}" for what, b in self.footprint_parts(model) if b)
        return self.footprint(model).device_bytes, parts

    def footprint_parts(self, model: TwinModel) -> list[tuple[str, float]]:
        """What one tenant's model occupies, part by part (what, bytes), as ``footprint`` sums it."""
        name = self.profile.name
        params = (model.params_m or 0.0) * MB
        act = (model.activation_mb or 0.0) * MB  # fp32 estimates
        if name == "edgetpu":
            return [
                ("int8 parameters", params),
                ("int8 activations", act / 4),
                ("TFLite + libedgetpu", ASSUMED["edgetpu_runtime_bytes"]),
            ]
        if name == "ncs2":
            return [("FP16 weights", params * 2), ("FP16 activations", act / 2)]
        if name.startswith("jetson"):
            return [
                ("CUDA/TensorRT process", ASSUMED["jetson_cuda_bytes"]),
                ("FP16 engine", params * 2),
                ("FP16 activations", act / 2),
            ]
        if name == "rpi3":
            return [("fp32 weights", params * 4), ("fp32 activations", act), ("TFLite", ASSUMED["rpi3_runtime_bytes"])]
        raise TwinUnavailable(f"profile {name!r} has no twin memory model")

    def admitted_limit(self, models: Sequence[TwinModel]) -> int:
        """How many tenants fit, the n-th tenant bringing ``models[n % len(models)]``."""
        if not models:
            raise TwinUnavailable("no models given")
        budget = self.footprint(models[0]).budget_bytes
        used, n = 0, 0
        while True:
            need = self.footprint(models[n % len(models)]).device_bytes
            if used + need > budget or n >= 100_000:
                return n
            used += need
            n += 1

    def energy_mj(self, model: TwinModel) -> float:
        """Energy of one inference at the profile's active power: W x ms = mJ (modelled)."""
        return self.profile.power_w[1] * self.service(model).ms

    def inferences_per_s_per_usd(self, model: TwinModel) -> float:
        return 1000.0 / self.service(model).ms / self.profile.price_usd


def get_twin(profile: str, link: str | None = None) -> DeviceTwin:
    """The twin of ``profile``; ``link`` (usb3, usb2, pcie) for the USB sticks. Raises
    TwinUnavailable for a profile without one (cpu, cuda, the cloud baselines' timing)."""
    if profile not in TWIN_PROFILES:
        raise TwinUnavailable(f"no device twin for profile {profile!r}; twins: {', '.join(TWIN_PROFILES)}")
    if profile in ("edgetpu", "ncs2"):
        link = link or "usb3"
        if link not in LINKS or (profile == "ncs2" and link == "pcie"):
            raise TwinUnavailable(
                f"link {link!r} is not one of {profile}'s: usb3, usb2{', pcie' if profile == 'edgetpu' else ''}"
            )
    elif link:
        raise TwinUnavailable(f"profile {profile!r} has no link to choose")
    return DeviceTwin(get_profile(profile), link or "")


def describe_fits() -> list[tuple[str, str, float, int]]:
    """(what, formula, largest relative error on its own fit rows, rows) for each fitted coefficient set."""
    out = [
        (
            "edgetpu switch",
            f"{SWITCH_FIT.constant_ms:.2f} ms + on-chip MB / {SWITCH_FIT.mb_per_ms * 1000:.0f} MB/s",
            SWITCH_FIT.max_rel_err,
            SWITCH_FIT.rows,
        )
    ]
    for (profile, link, detection), fit in SERVICE_FITS.items():
        terms = " + ".join(
            f"{c:.3g}" + ("" if f == "one" else f"*{f}") for f, c in zip(fit.features, fit.coef, strict=True)
        )
        kind = "detection" if detection else "classification"
        out.append((f"{profile} {link} {kind} service".replace("  ", " "), f"{terms} ms", fit.max_rel_err, fit.rows))
    return out
