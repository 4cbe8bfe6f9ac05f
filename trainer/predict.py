"""Batch prediction: stream image files through batched inference and write one CSV row per file.

    python -m trainer.predict --model outputs/best PATHS... --output preds.csv [--heatmaps DIR]

PATHS are image files or folders (searched recursively for JPEG, PNG, DICOM and other image files). Every
file is read, predicted and decided exactly as the app does (serving/predictor.py, serving/batch.py). A file that cannot
be read gets its error in the CSV instead of stopping the run; an image that does not look like a chest
X-ray (the model's guard) is answered NOT_A_CHEST_XRAY in `prediction`, without probabilities, and flagged in
`looks_like_chest_xray`. With --heatmaps, one PNG per chest X-ray: the Grad-CAM map of the decision over the
image as the model sees it. Inference runs through ONNX Runtime
(serving/runtime.py) unless --eager. Research demo, not for clinical use.
"""

import argparse
import sys
from pathlib import Path

from serving.batch import image_paths, predict_files, write_csv
from serving.images import InputImageError
from serving.labels import NOT_A_CHEST_XRAY
from serving.model import ModelNotFound, add_model_argument, load_model
from serving.predictor import Predictor


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="Image files or folders.")
    add_model_argument(parser)
    parser.add_argument("--output", default="predictions.csv", help="CSV file to write.")
    parser.add_argument("--heatmaps", type=Path, default=None,
                        help="Folder for one Grad-CAM overlay PNG per image (created); none by default.")
    parser.add_argument("--batch_size", type=int, default=32, help="Images per forward pass.")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes for decoding.")
    parser.add_argument("--eager", action="store_true", help="Predict with eager PyTorch instead of ONNX Runtime.")
    args = parser.parse_args(argv)

    try:
        paths = image_paths(args.paths)
        predictor = Predictor(load_model(args.model), engine="eager" if args.eager else "onnxruntime")
    except (InputImageError, ModelNotFound) as error:
        sys.exit(f"error: {error}")
    if args.heatmaps:
        args.heatmaps.mkdir(parents=True, exist_ok=True)
    rows = predict_files(predictor, paths, args.batch_size, args.num_workers, args.heatmaps)
    write_csv(rows, predictor.model.labels, Path(args.output))
    failed = sum(bool(row["error"]) for row in rows)
    refused = sum(row["prediction"] == NOT_A_CHEST_XRAY for row in rows)
    print(f"wrote {len(rows)} predictions to {args.output} (threshold {predictor.model.threshold:.3f}; "
          f"{failed} unreadable; {refused} not chest X-rays, answered {NOT_A_CHEST_XRAY})")


if __name__ == "__main__":
    main()
