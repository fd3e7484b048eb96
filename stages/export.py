"""DVC stage `export`: every trained and evaluated cell -> models/export/<Arch>/<Arch>_<Dataset>/ (safetensors,
ONNX checked against PyTorch, timm config, model_config.json with the threshold and the evaluation)."""

from melanoma.paths import EXPORT_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.engine import runtime
    from melanoma.serving.package import export_all

    params = stage_params("export")
    worst = export_all(params, EXPORT_DIR, runtime(bf16=False, device=params["device"]))
    return (
        f"export: {len(worst)} cells -> {EXPORT_DIR}/; ONNX vs PyTorch on the real val images: max "
        f"|dP| {max(worst.values()):.1e} ({max(worst, key=worst.get)})"
    )


if __name__ == "__main__":
    run_stage("export", main)
