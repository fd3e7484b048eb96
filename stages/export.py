"""DVC stage `export`: every trained and evaluated cell -> models/export/<Arch>/<Arch>_<Dataset>/ (safetensors,
ONNX checked against PyTorch, timm config, model_config.json with the threshold and the evaluation)."""
from melanoma.params import load_params
from melanoma.paths import EXPORT
from melanoma.stage import run_stage


def main() -> str:
    from melanoma.engine import runtime
    from melanoma.serving.package import export_all

    params = load_params()
    worst = export_all(params, EXPORT, runtime(bf16=False, device=params["device"]))
    return (f"export: {len(worst)} cells -> {EXPORT}/; ONNX vs PyTorch on the real val images: max "
            f"|dP| {max(worst.values()):.1e} ({max(worst, key=worst.get)})")


if __name__ == "__main__":
    run_stage("export", main)
