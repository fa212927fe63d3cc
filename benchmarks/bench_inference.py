"""Throughput of the inference bundle on the CPU: images per second over a folder of DICOM files.

For each model size (``img_size``, default 128 and 256) the script writes ``--num_images`` synthetic chest
radiographs as 12-bit DICOM CR files (``--dicom_size`` pixels square) into a temporary folder and runs
``configs/inference.json`` over it through ``ConfigWorkflow``, as ``python -m monai.bundle run`` does, with
the reference network hyperparameters and random weights (the cost does not depend on the weights; the
checkpoint loader is disabled so that no file of up to 1.4 GB has to be written first). Three timings:

- ``load``: the DataLoader alone (DICOM decoding, display pipeline, resize), no network;
- ``scores``: the full evaluator writing only the CSV;
- ``all outputs``: the full evaluator also writing the overlay PNG, the NIfTI map and the DICOM Secondary
  Capture of every image.

Each timing covers the whole run (DataLoader start included). Usage (from the repository root)::

    python benchmarks/bench_inference.py --threads 2 --num_workers 2 --num_images 32
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))

from scripts.data.phantom import synthesize_radiograph  # noqa: E402

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_dicoms(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` synthetic radiographs as 12-bit MONOCHROME2 CR files of one study and series."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(count):
        image, _ = synthesize_radiograph(np.random.default_rng([seed, i]), size=size)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.Modality = "Synthetic^Patient", f"SYN{i:04d}", "CR"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, i + 1
        ds.set_pixel_data(np.rint(image * 4095).astype(np.uint16), photometric_interpretation="MONOCHROME2",
                          bits_stored=12)
        path = folder / f"image_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def inference_workflow(input_dir: Path, output_dir: Path, img_size: int, args: argparse.Namespace,
                       write_images: bool) -> ConfigWorkflow:
    """The bundle's inference workflow over ``input_dir``, random weights, checkpoint loader disabled."""
    wf = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "inference.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        input_dir=str(input_dir),
        output_dir=str(output_dir),
        img_size=img_size,
        device="cpu",
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        save_overlay=write_images,
        save_map=write_images,
        save_dicom=write_images,
        **{"handlers#0#_disabled_": True},
    )
    wf.initialize()
    wf.parser.get_parsed_content("network").statistics.ready.fill_(True)
    return wf


def time_loading(wf: ConfigWorkflow) -> float:
    """Seconds to iterate the workflow's DataLoader once."""
    loader = wf.parser.get_parsed_content("dataloader")
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def time_run(wf: ConfigWorkflow) -> float:
    """Seconds of ``wf.run()``."""
    start = time.perf_counter()
    wf.run()
    elapsed = time.perf_counter() - start
    wf.finalize()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="model input sizes (img_size)")
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--dicom_size", type=int, default=256, help="rows and columns of the DICOM files")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the main process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger().setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "dicom"
        inputs.mkdir()
        write_dicoms(inputs, args.num_images, args.dicom_size)
        print(f"{args.num_images} DICOM CR files of {args.dicom_size} x {args.dicom_size}, batch {args.batch_size}, "
              f"{args.num_workers} DataLoader workers, {args.threads} torch threads, CPU")
        print(f"{'img_size':>8}  {'stage':<12} {'seconds':>8} {'images/s':>9}")
        for size in args.sizes:
            timings = {"load": time_loading(inference_workflow(inputs, Path(tmp) / "unused", size, args, False))}
            for name, write_images in (("scores", False), ("all outputs", True)):
                out = Path(tmp) / f"out_{size}_{name.replace(' ', '_')}"
                timings[name] = time_run(inference_workflow(inputs, out, size, args, write_images))
            for name, seconds in timings.items():
                print(f"{size:>8}  {name:<12} {seconds:>8.2f} {args.num_images / seconds:>9.2f}")


if __name__ == "__main__":
    main()
