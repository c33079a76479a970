"""``edgeops model ...``: import, quantize, validate, package, list, show and compare model versions."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeops.cli_common import DEFAULT_HOME, HomeOpt, JsonOpt, console, open_home, print_json
from edgeops.errors import ConfigError
from edgeops.manifest import parse_model_ref

model_app = typer.Typer(help="Import, quantize, validate, package and list model versions.", no_args_is_help=True)


def _load_reference(path: Path | None, what: str = "reference") -> Any:
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path) as data:
            if "X" not in data:
                raise ConfigError(f"{path}: expected an array named 'X' (rows of model input)")
            return data["X"]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {what} data {path}: {exc}") from exc


def _signing_key(home: Path, sign: bool) -> Any:
    """The home's active key; generated on first use (with a notice) so bundles are never unsigned by
    accident. ``--no-sign`` packages unsigned bundles (agents then need ``--allow-unsigned``)."""
    if not sign:
        return None
    from edgeops.bundle import utc_timestamp
    from edgeops.signing import KeyRing

    ring = KeyRing(home / "keys")
    key = ring.active()
    if key is None:
        info = ring.generate(created_at=utc_timestamp())
        console.print(
            f"no signing key in {ring.directory}: generated {info.name} (key id {info.key_id}); "
            f"provision agents with `edgeops keys export-public DIR --home {home}`"
        )
        key = ring.active()
    return key


QuantizeOpt = Annotated[str, typer.Option("--quantize", help="none | dynamic | static (QDQ).")]
PerChannelOpt = Annotated[bool, typer.Option("--per-channel", help="One scale per output channel.")]
MethodOpt = Annotated[str, typer.Option("--calibrate-method", help="minmax | entropy | percentile (static).")]
FormatOpt = Annotated[str, typer.Option("--format", help="qdq (default) | qoperator (needs uint8 activations).")]
ActOpt = Annotated[str, typer.Option("--activation-type", help="int8 (default) | uint8 (static).")]
ReduceRangeOpt = Annotated[bool, typer.Option(
    "--reduce-range", help="7-bit weights: no int8 saturation on x86 CPUs without VNNI (see docs/models.md).")]


def _options(quantize: str, per_channel: bool, method: str, fmt: str, activation: str, reduce_range: bool) -> Any:
    from fleet_server.quantize import CalibrateMethod, QuantFormatName, QuantizeOptions, QuantMode

    try:
        return QuantizeOptions(
            mode=QuantMode(quantize), per_channel=per_channel, calibrate_method=CalibrateMethod(method),
            quant_format=QuantFormatName(fmt), activation_type=activation, reduce_range=reduce_range,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid quantization option: {exc}") from None


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                    transient=True)


@model_app.command("add")
def model_add(
    model_path: Annotated[Path, typer.Argument(help="An .onnx or .tflite model file.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Version label (immutable once added).")],
    reference: Annotated[
        Path | None, typer.Option(help=".npz with array X: rows for the drift reference and smoke tests.")
    ] = None,
    quantize: QuantizeOpt = "none",
    calibration: Annotated[Path | None, typer.Option(help=".npz with array X: calibration rows (static).")] = None,
    validation: Annotated[Path | None, typer.Option(help=".npz with arrays X and y: the release gate's data.")] = None,
    per_channel: PerChannelOpt = False,
    calibrate_method: MethodOpt = "minmax",
    quant_format: FormatOpt = "qdq",
    activation_type: ActOpt = "int8",
    reduce_range: ReduceRangeOpt = False,
    max_accuracy_drop: Annotated[float, typer.Option(help="Release gate: largest metric drop in points.")] = 1.0,
    force: Annotated[bool, typer.Option("--force", help="Package even if the release gate fails.")] = False,
    sign: Annotated[bool, typer.Option("--sign/--no-sign", help="Sign with the home's active key.")] = True,
    home: HomeOpt = DEFAULT_HOME,
) -> None:
    """Import, optionally quantize and validate, then package a model into a signed bundle in the registry."""
    from fleet_server.registry import package_model
    from fleet_server.validate import load_validation_set

    if not model_path.is_file():
        raise ConfigError(f"no model file at {model_path}")
    options = _options(quantize, per_channel, calibrate_method, quant_format, activation_type, reduce_range)
    ref = _load_reference(reference)
    calib = _load_reference(calibration, "calibration")
    val = load_validation_set(validation) if validation is not None else None
    store, registry = open_home(home)
    key = _signing_key(home, sign)
    with _progress() as progress:
        task = progress.add_task(f"packaging {name}:{version}", total=None)
        result = package_model(
            store, registry, model_path, name=name, version=version, reference=ref,
            created_by=os.environ.get("USER", ""), quantize=options, calibration=calib, validation_set=val,
            max_accuracy_drop=max_accuracy_drop, force=force, signing_key=key,
            progress=lambda text: progress.update(task, description=f"{name}:{version}: {text}"),
        )
    row = result.row
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    if result.report is not None:
        console.print(_report_table(result.report))
    state = "added" if result.created else "already present"
    signed = f", signed by {row.signed_by}" if row.signed_by else ", unsigned"
    console.print(f"{row.label} {state}: digest {row.digest[:12]}, {row.size_bytes} bytes, {row.runtime}{signed}")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _report_table(report: Any) -> Table:
    table = Table("", "float", "quantized", "ratio / delta", title=f"validation on {report.rows} rows")
    table.add_row(report.metric_name + " %", _fmt(report.float_metric, ".2f"), _fmt(report.quant_metric, ".2f"),
                  f"{-report.drop_points:+.2f} points")
    table.add_row("size bytes", f"{report.float_size_bytes:,}", f"{report.quant_size_bytes:,}",
                  f"{report.size_ratio:.2f}x")
    for b in (1, 32):
        table.add_row(f"latency ms, batch {b}", _fmt(getattr(report, f"float_latency_ms_b{b}"), ".4f"),
                      _fmt(getattr(report, f"quant_latency_ms_b{b}"), ".4f"),
                      _fmt(report.latency_ratio(b), ".2f") + "x")
    return table


@model_app.command("list")
def model_list(home: HomeOpt = DEFAULT_HOME, as_json: JsonOpt = False) -> None:
    """List model versions in the registry."""
    store, _ = open_home(home)
    rows = store.models()
    if as_json:
        from fleet_server.operations import model_view

        print_json([{**model_view(r), "recipe": json.loads(r.recipe_json) if r.recipe_json else None} for r in rows])
        return
    table = Table("model", "version", "digest", "runtime", "size", "created", "by", "parent", "quantized", "signed by")
    for r in rows:
        recipe = json.loads(r.recipe_json).get("quantize", {}) if r.recipe_json else {}
        table.add_row(r.name, r.version, r.digest[:12], r.runtime, f"{r.size_bytes:,}", r.created_at, r.created_by,
                      r.parent_version or "", recipe.get("mode", "-"), r.signed_by or "-")
    console.print(table)


def _manifest(store: Any, ref: str) -> Any:
    from edgeops.manifest import Manifest

    name, version = parse_model_ref(ref)
    return Manifest.decode(store.manifest_json(name, version))


def _tensors(specs: list[Any]) -> str:
    return ", ".join(f"{s.name} {s.dtype}[{', '.join('N' if d is None else str(d) for d in s.shape)}]" for s in specs)


def _summary(row: Any, m: Any) -> dict[str, str]:
    q = m.quantization or {}
    v = m.validation or {}
    model = m.file(m.model_file)
    out = {
        "digest": row.digest,
        "runtime": m.runtime.value,
        "model file": f"{m.model_file} ({model.size:,} bytes, sha256 {model.sha256[:12]})",
        "bundle size": f"{m.total_size:,} bytes in {len(m.chunks)} chunks of <= {m.chunk_size:,}",
        "inputs": _tensors(m.inputs),
        "outputs": _tensors(m.outputs),
        "opset": str(m.opset) if m.opset is not None else "-",
        "created": f"{m.created_at} by {m.created_by or '-'}",
        "parent": f"{m.parent_version or '-'}" + (f" ({m.parent_digest[:12]})" if m.parent_digest else ""),
        "quantization": ", ".join(f"{k}={q[k]}" for k in ("mode", "format", "per_channel", "calibrate_method",
                                                           "activation_type") if q.get(k) is not None) or "none",
        "quant notes": "; ".join(q.get("notes", [])) or "-",
        "release gate": str(q.get("gate", "-")),
        "drift reference": m.drift_reference_file or "-",
        "smoke vectors": (f"{m.smoke.inputs[0].shape[0]} rows, atol {m.smoke.atol:g}" if m.smoke and m.smoke.inputs
                          else "-"),
        "signed by": row.signed_by or "unsigned",
    }
    for key in ("float_metric", "quant_metric", "drop_points", "size_ratio", "float_latency_ms_b1",
                "quant_latency_ms_b1", "float_latency_ms_b32", "quant_latency_ms_b32"):
        if key in v:
            out[key.replace("_", " ")] = f"{v[key]:.4g}"
    return out


@model_app.command("show")
def model_show(
    model: Annotated[str, typer.Argument(help="NAME:VERSION")],
    home: HomeOpt = DEFAULT_HOME,
    as_json: JsonOpt = False,
) -> None:
    """Everything the manifest says about one version, and its lineage."""
    store, _ = open_home(home)
    name, version = parse_model_ref(model)
    row = store.model(name, version)
    if as_json:
        sys.stdout.write(store.manifest_json(name, version) + "\n")
        return
    m = _manifest(store, model)
    table = Table("field", "value", title=row.label, show_header=False)
    for key, value in _summary(row, m).items():
        table.add_row(key, value)
    table.add_row("lineage", " <- ".join(r.label for r in store.lineage(name, version)))
    console.print(table)


@model_app.command("diff")
def model_diff(
    a: Annotated[str, typer.Argument(help="NAME:VERSION (old)")],
    b: Annotated[str, typer.Argument(help="NAME:VERSION (new)")],
    home: HomeOpt = DEFAULT_HOME,
    as_json: JsonOpt = False,
) -> None:
    """Compare two versions field by field; changed fields are marked."""
    store, _ = open_home(home)
    ra, rb = store.model(*parse_model_ref(a)), store.model(*parse_model_ref(b))
    sa, sb = _summary(ra, _manifest(store, a)), _summary(rb, _manifest(store, b))
    if as_json:
        print_json([{"field": key, "a": sa.get(key), "b": sb.get(key), "changed": sa.get(key) != sb.get(key)}
                    for key in dict.fromkeys([*sa, *sb])])
        return
    table = Table("field", ra.label, rb.label, "")
    for key in list(dict.fromkeys([*sa, *sb])):
        va, vb = sa.get(key, "-"), sb.get(key, "-")
        table.add_row(key, va, vb, "[yellow]changed[/]" if va != vb else "")
    console.print(table)


@model_app.command("inspect")
def model_inspect(
    model_path: Annotated[Path, typer.Argument(help="An .onnx or .tflite model file.")],
    as_json: JsonOpt = False,
) -> None:
    """Import check: format, input/output signature, op set, size (refuses invalid models)."""
    from fleet_server.model_import import inspect_model

    if not model_path.is_file():
        raise ConfigError(f"no model file at {model_path}")
    info = inspect_model(model_path)
    if as_json:
        sys.stdout.write(json.dumps(info.to_dict(), indent=2) + "\n")
        return
    table = Table("field", "value", title=model_path.name, show_header=False)
    table.add_row("runtime", f"{info.runtime.value} ({info.runtime_package})")
    table.add_row("size", f"{info.size_bytes:,} bytes, sha256 {info.sha256[:12]}")
    table.add_row("inputs", _tensors(info.inputs))
    table.add_row("outputs", _tensors(info.outputs))
    table.add_row("opset", ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in info.opsets.items()) or str(info.opset))
    table.add_row("ops", ", ".join(f"{k}x{v}" for k, v in info.ops.items()))
    if info.producer:
        table.add_row("producer", info.producer)
    console.print(table)


@model_app.command("quantize")
def model_quantize(
    model_path: Annotated[Path, typer.Argument(help="An .onnx model file.")],
    out: Annotated[Path, typer.Argument(help="Where to write the int8 model.")],
    quantize: QuantizeOpt = "dynamic",
    calibration: Annotated[Path | None, typer.Option(help=".npz with array X (static).")] = None,
    validation: Annotated[Path | None, typer.Option(help=".npz with X and y: compare float vs int8.")] = None,
    per_channel: PerChannelOpt = False,
    calibrate_method: MethodOpt = "minmax",
    quant_format: FormatOpt = "qdq",
    activation_type: ActOpt = "int8",
    reduce_range: ReduceRangeOpt = False,
) -> None:
    """Quantize an ONNX model to a file (without packaging it); prints the validation table if asked."""
    from fleet_server.model_import import inspect_model
    from fleet_server.quantize import quantize_onnx
    from fleet_server.validate import load_validation_set, validate

    options = _options(quantize, per_channel, calibrate_method, quant_format, activation_type, reduce_range)
    inspect_model(model_path)
    calib = _load_reference(calibration, "calibration")
    with console.status(f"quantizing {model_path.name}"):
        result = quantize_onnx(model_path, out, options, calib)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes; float {model_path.stat().st_size:,})")
    if validation is not None:
        with console.status("validating"):
            report = validate(model_path, out, load_validation_set(validation))
        console.print(_report_table(report))


@model_app.command("verify")
def model_verify(
    bundle_path: Annotated[Path, typer.Argument(help="A bundle file.")],
    trust_dir: Annotated[Path, typer.Option("--trust-dir", help="Directory of trusted public keys (*.pub).")],
    digest: Annotated[str | None, typer.Option(help="Expected digest.")] = None,
) -> None:
    """Verify a bundle file the way an agent does: digest, signature, every hash."""
    from edgeops.bundle import open_bundle
    from edgeops.signing import TrustStore

    bundle = open_bundle(bundle_path, expected_digest=digest, trust=TrustStore.from_directory(trust_dir))
    console.print(f"{bundle.manifest.name}:{bundle.manifest.version} OK: digest {bundle.digest[:12]}, "
                  f"signed by {bundle.verified_by}")


@model_app.command("export")
def model_export(
    model: Annotated[str, typer.Argument(help="NAME:VERSION")],
    out: Annotated[Path, typer.Argument(help="Where to write the bundle file.")],
    home: HomeOpt = DEFAULT_HOME,
) -> None:
    """Copy a version's bundle file out of the registry (verified on the way)."""
    import shutil

    store, registry = open_home(home)
    row = store.model(*parse_model_ref(model))
    registry.open(row.digest)
    shutil.copyfile(registry.path_for(row.digest), out)
    console.print(f"wrote {out}: {row.label}, digest {row.digest[:12]}")
