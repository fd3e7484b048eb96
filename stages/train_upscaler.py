"""DVC stage `train_upscaler`: real train images -> models/upscaler/ + results/upscaler/metrics.json (PSNR/SSIM
on val)."""

from melanoma.paths import CHECKPOINTS_DIR, RAW_DIR, SPLITS_DIR, UPSCALER_DIR, UPSCALER_RESULTS_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.engine import runtime
    from melanoma.generators.upscale import train_upscaler

    params = stage_params("train_upscaler")
    m = train_upscaler(
        params,
        SPLITS_DIR,
        RAW_DIR,
        UPSCALER_DIR,
        UPSCALER_RESULTS_DIR / "metrics.json",
        CHECKPOINTS_DIR / "upscaler",
        runtime(device=params["device"]),
    )
    return (
        f"train_upscaler: {m['from_px']}->{m['to_px']} px on real val images: PSNR {m['psnr_sr']:.2f} dB "
        f"(bicubic {m['psnr_bicubic']:.2f}), SSIM {m['ssim_sr']:.4f} (bicubic {m['ssim_bicubic']:.4f}); "
        f"{'beats' if m['beats_bicubic'] else 'does NOT beat'} bicubic -> {UPSCALER_DIR}"
    )


if __name__ == "__main__":
    run_stage("train_upscaler", main)
