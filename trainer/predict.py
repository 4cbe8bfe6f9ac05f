"""Batch prediction: stream an archive's image files through batched inference into one CSV row per file.

    python -m trainer.predict --model outputs/best PATHS... --output preds.csv [--heatmaps DIR]
    accelerate launch -m trainer.predict --model outputs/best PATHS... --output preds.csv    # every process, GPU, node
    python -m trainer.predict --model outputs/best --dicomweb URL --output preds.csv [--store_results]   # a PACS

PATHS are image files or folders, searched recursively (as PACS exports nest them: study/series/instance) for JPEG,
PNG and other image files, and for DICOM files with or without a suffix (by their `DICM` preamble); other files are
skipped, counted and named in the summary. Every file is read, predicted and decided exactly as the Space does
(serving/predictor.py, serving/batch.py): a file that cannot be read gets its error in its row; an image that does
not look like a chest X-ray is answered NOT_A_CHEST_XRAY in `prediction`, without probabilities, and flagged in
`looks_like_chest_xray`. DICOM rows add the study / series / instance UIDs and the view position, with
`frontal_view = False` for a lateral view (the model was trained on frontal views; its decision is unchanged); no
other DICOM attribute (nothing identifying the patient) is read into the CSV.

Under `accelerate launch` each process takes every N-th file and decodes in its DataLoader workers; the output is one
CSV with exactly the rows, in the same order, that one process writes. Rows are flushed as they are made, and the
output CSV is the record of what is done: the same command run again after an interruption (Ctrl-C, SIGTERM, a lost
node) predicts only the missing files, keeps the rows already there as they are, and ends with every row exactly
once; --overwrite starts afresh. An output belongs to one model: OUTPUT.model.json beside it records the model
that wrote it (its id, the sha256 of its weights and buffers, its operating point), and a run with another model
(retrained, recalibrated), or into an output without that record, stops before predicting anything: use
--overwrite, or another --output. With --heatmaps, one PNG per chest X-ray: the Grad-CAM map of the decision over the
image as the model sees it. Inference runs through ONNX Runtime on a CPU (serving/runtime.py) unless --eager.
Research demo, not for clinical use.
"""

import argparse
import csv
import io
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from accelerate import Accelerator

from serving.batch import csv_columns, predict_stream
from serving.files import atomic_write
from serving.fingerprint import weights_sha256
from serving.images import ArchiveWalk, InputImageError
from serving.labels import NOT_A_CHEST_XRAY
from serving.loading import ModelNotFound, add_model_argument, hub_revision, load_model
from serving.predictor import Predictor

from .options import InferenceOptions, add_options
from .pacs import PacsError, PacsWalk, parse_headers, store_report
from .threads import use_available_cores

SKIPPED_SHOWN = 10  # skipped files named in the summary; the rest are counted


def part_file(output: Path, process: int) -> Path:
    """Where one process appends its rows until the run ends (beside the output, hidden)."""
    return output.with_name(f".{output.name}.part{process}")


def part_files(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}.part*"))


def record_file(output: Path) -> Path:
    """Where the record of the model that wrote `output` (and its part files) lies: beside it."""
    return output.with_name(f"{output.name}.model.json")


class ResultsOfAnotherModel(RuntimeError):
    """The output holds rows that this model did not write; the message names the ways out."""


def model_record(model, model_id: str) -> dict:
    """What identifies the model behind a results file: its id (and Hub commit), its weights and buffers, and its
    operating point in words."""
    return {"model": model_id, "revision": hub_revision(model_id), "weights_sha256": weights_sha256(model),
            "decision_threshold": model.threshold, "temperature": float(model.temperature),
            "guard_limit": float(model.guard_threshold)}


def check_same_model(output: Path, record: dict) -> None:
    """ResultsOfAnotherModel unless every row already written to `output` (or its part files) is this model's."""
    if not any(path.is_file() for path in [output, *part_files(output)]):
        return
    recorded = json.loads(record_file(output).read_text()) if record_file(output).is_file() else None
    if recorded is not None and recorded["weights_sha256"] == record["weights_sha256"]:
        return
    writer = ("a model it has no record of (written before results files recorded their model)" if recorded is None
              else f"another model ({recorded['model']}, weights sha256 {recorded['weights_sha256'][:12]})")
    raise ResultsOfAnotherModel(
        f"{output} holds rows written by {writer}, not by {record['model']} (weights sha256 "
        f"{record['weights_sha256'][:12]}); nothing was predicted. Start it afresh with --overwrite, or write to "
        f"another --output.")


def write_record(output: Path, record: dict) -> None:
    with atomic_write(record_file(output)) as partial:
        partial.write_text(json.dumps(record, indent=1))


def written_whole(path: Path) -> str:
    """A CSV file up to its last line end: a row cut short by an interruption is dropped ("" for no file)."""
    if not path.is_file():
        return ""
    with open(path, newline="") as file:
        text = file.read()
    return text[: text.rfind("\n") + 1]


def rows_done(output: Path) -> dict[str, dict]:
    """{path: row} of the rows already written: the output CSV (as it stands) and every process's part file."""
    rows = {}
    for written in [output, *part_files(output)]:
        rows |= {row["path"]: row for row in csv.DictReader(io.StringIO(written_whole(written)))}
    return rows


class Share:
    """This process's files: (number in the walk, path) of every N-th image file (N processes) not done yet, streamed
    from the walk on each iteration, never listed."""

    def __init__(self, walk: ArchiveWalk, done: set[str], process: int, processes: int):
        self.walk, self.done, self.process, self.processes = walk, done, process, processes

    def __iter__(self):
        for index, path in enumerate(self.walk.images()):
            if index % self.processes == self.process and str(path) not in self.done:
                yield index, path


def store_reports(rows: list[dict], record: dict, headers: tuple, with_heatmaps: bool) -> int:
    """Each screened instance's Structured Report (and Grad-CAM overlay) stored in its study (those stored before
    skipped); how many new."""
    return sum(store_report(row, record, headers, with_heatmaps) for row in rows if not row["error"])


def predict_share(predictor: Predictor, share: Share, output: Path, columns: list[str], args) -> None:
    """This process's files appended to its part file a batch at a time, flushed as they are made."""
    part = part_file(output, share.process)
    new_file = not written_whole(part)
    with open(part, "w" if new_file else "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")  # heatmaps made only to be stored
        if new_file:
            writer.writeheader()
        for rows in predict_stream(predictor, share, args.per_device_eval_batch_size, args.num_workers, args.heatmaps):
            writer.writerows(row for _, row in rows)
            file.flush()
            if args.store_results:
                store_reports([row for _, row in rows], args.record, share.walk.headers, args.store_heatmaps)


def merge(output: Path, walk: ArchiveWalk, columns: list[str]) -> tuple[list[dict], list[Path]]:
    """One CSV in walk order from the output as it stood and the part files (written whole, then renamed over the
    output; the part files removed after); returns its rows and the files skipped as not images."""
    done, rows, skipped = rows_done(output), [], []
    for path, is_image in walk:
        if not is_image:
            skipped.append(path)
        elif str(path) in done:
            rows.append(done[str(path)])
    with atomic_write(output) as partial, open(partial, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for part in part_files(output):
        part.unlink()
    return rows, skipped


def summary(rows: list[dict], skipped: list[Path], output: Path, threshold: float) -> str:
    failed = sum(bool(row["error"]) for row in rows)
    refused = sum(row["prediction"] == NOT_A_CHEST_XRAY for row in rows)
    named = ", ".join(str(path) for path in skipped[:SKIPPED_SHOWN]) + (" ..." if len(skipped) > SKIPPED_SHOWN else "")
    return (f"wrote {len(rows)} predictions to {output} (threshold {threshold:.3f}; {failed} unreadable; {refused} not "
            f"chest X-rays, answered {NOT_A_CHEST_XRAY}); {len(skipped)} files skipped as not images"
            + (f": {named}" if skipped else ""))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="Image files or folders (searched recursively); or --dicomweb.")
    add_model_argument(parser)
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="CSV file to write.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Start afresh instead of completing the rows an earlier run left in --output.")
    parser.add_argument("--heatmaps", type=Path, default=None,
                        help="Folder for one Grad-CAM overlay PNG per image (created); none by default.")
    add_options(parser, InferenceOptions)
    parser.add_argument("--eager", action="store_true", help="Predict with eager PyTorch instead of ONNX Runtime.")
    pacs = parser.add_argument_group("screening a PACS over DICOMweb (instead of PATHS)")
    pacs.add_argument("--dicomweb", metavar="URL", help="The PACS's DICOMweb root, e.g. https://pacs/dicom-web.")
    pacs.add_argument("--study_uid", nargs="+", default=[], help="Only these studies (default: every study).")
    pacs.add_argument("--modality", default="CR,DX", help="Modalities to screen, comma-separated (default: %(default)s).")
    pacs.add_argument("--since", metavar="YYYYMMDD", help="Only studies with a StudyDate on or after this day.")
    pacs.add_argument("--dicomweb_header", action="append", default=[], metavar="'NAME: VALUE'",
                      help="An HTTP header for every request, e.g. 'Authorization: Bearer TOKEN' (repeatable).")
    pacs.add_argument("--store_results", action="store_true",
                      help="Store a DICOM Structured Report of each screened instance in its study (STOW-RS).")
    pacs.add_argument("--store_heatmaps", action="store_true",
                      help="With --store_results: also the Grad-CAM overlay, as a Secondary Capture image.")
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.dicomweb):
        parser.error("give image files or folders, or --dicomweb URL (one of them)")
    if args.store_results and not args.dicomweb:
        parser.error("--store_results stores reports in a PACS: it needs --dicomweb URL")
    if args.store_heatmaps and not args.store_results:
        parser.error("--store_heatmaps adds overlays to the stored reports: it needs --store_results")
    listed_heatmaps = bool(args.heatmaps)

    use_available_cores()
    state = Accelerator()  # as training starts: the processes, devices and nodes `accelerate launch` was given
    try:
        walk = (PacsWalk(args.dicomweb, parse_headers(args.dicomweb_header), args.study_uid, args.modality.split(","),
                         args.since) if args.dicomweb else ArchiveWalk(args.paths))
        model = load_model(args.model).to(state.device)
        predictor = Predictor(model, engine="eager" if args.eager else "onnxruntime")
    except (InputImageError, ModelNotFound, PacsError, ValueError) as error:
        sys.exit(f"error: {error}")
    columns = csv_columns(model.labels, heatmaps=listed_heatmaps)
    record = args.record = model_record(model, args.model)
    if not args.overwrite:
        try:  # every process checks before any writes: all of them stop, and nothing is predicted
            check_same_model(args.output, record)
        except ResultsOfAnotherModel as error:
            sys.exit(f"error: {error}")
    state.wait_for_everyone()
    if state.is_main_process:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        if args.overwrite:
            for stale in [args.output, *part_files(args.output)]:
                stale.unlink(missing_ok=True)
        write_record(args.output, record)
        if args.heatmaps:
            args.heatmaps.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    share = Share(walk, set(rows_done(args.output)), state.process_index, state.num_processes)
    if args.store_heatmaps and not listed_heatmaps:  # made only to be stored: a folder of this process's, removed
        args.heatmaps = Path(tempfile.mkdtemp(prefix="pneumonia-heatmaps-"))
    try:
        predict_share(predictor, share, args.output, columns, args)
    except PacsError as error:  # raised in a DataLoader worker too: its last line is the message
        sys.exit(f"error: {str(error).strip().splitlines()[-1].removeprefix('trainer.pacs.PacsError: ')} The rows "
                 f"screened so far are kept; run the same command again to screen the rest.")
    finally:
        if args.store_heatmaps and not listed_heatmaps:
            shutil.rmtree(args.heatmaps, ignore_errors=True)
    state.wait_for_everyone()
    if state.is_main_process:
        rows, skipped = merge(args.output, walk, columns)
        print(summary(rows, skipped, args.output, model.threshold))


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    main()
