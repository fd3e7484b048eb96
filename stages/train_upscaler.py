"""DVC stage `train_upscaler`: real train images -> models/upscaler/ + results/upscaler/metrics.json (PSNR/SSIM on val)."""
from melanoma.engine import runtime
from melanoma.generators.upscale import train_upscaler
from melanoma.params import load_params
from melanoma.paths import CHECKPOINTS, RAW, SPLITS, UPSCALER, UPSCALER_RESULTS
from melanoma.stage import run_stage


def main() -> str:
    params = load_params()
    m = train_upscaler(params, SPLITS, RAW, UPSCALER, UPSCALER_RESULTS / "metrics.json", CHECKPOINTS / "upscaler",
                       runtime(device=params["device"]))
    return (f"train_upscaler: {m['from_px']}->{m['to_px']} px on real val images: PSNR {m['psnr_sr']:.2f} dB "
            f"(bicubic {m['psnr_bicubic']:.2f}), SSIM {m['ssim_sr']:.4f} (bicubic {m['ssim_bicubic']:.4f}); "
            f"{'beats' if m['beats_bicubic'] else 'does NOT beat'} bicubic -> {UPSCALER}")


if __name__ == "__main__":
    run_stage("train_upscaler", main)
