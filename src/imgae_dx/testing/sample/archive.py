"""Synthetic NIH ChestX-ray14 archive (phase 3: the zip): the embedded dataset of the demo and the tests.

``write_sample_archive(out_dir)`` writes ``out_dir/data.zip`` laid out exactly like Kaggle's
``nih-chest-xrays/data`` download: ``images_NNN/images/XXXXXXXX_YYY.png`` members plus
``Data_Entry_2017.csv``, ``BBox_List_2017.csv``, ``train_val_list.txt`` and ``test_list.txt`` at the
root, with the real, malformed CSV headers, and the marker member
:data:`~imgae_dx.data.datasets.base.SYNTHETIC_MARKER` that tells the evaluator and the report the
archive is synthetic (:func:`write_marker`). The metadata lists a few images the archive does not hold
(as the real metadata lists all 112,120 images whatever part a source holds).

Images are synthetic but anatomically plausible 8-bit gray radiographs (lungs, mediastinum, heart,
ribs, clavicles, diaphragm, soft tissue, vessel texture, detector noise) that vary per patient and
per follow-up, in PA and AP views, with findings from the NIH label set drawn from subtle to obvious
and bounding boxes for localised ones. Everything is a pure function of ``seed``: the archive is
byte-identical between runs (fixed zip timestamps and attributes).

Generation works in two phases: a cheap *plan* (every image's metadata, geometry, lesion parameters
and boxes, independent of ``image_px``) and a *render* (per patient a base anatomy at a canvas of at
most 512 px, per image heart + lesions + pose warp + windowing, then an upsample to ``image_px`` and
detector noise from a precomputed pool). Metadata is therefore identical for every ``image_px``.
"""


from __future__ import annotations

import json
import os
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2

from imgae_dx.data.datasets.base import SYNTHETIC_MARKER
from imgae_dx.data.datasets.nih import (
    BBOX_HEADER,
    BBOX_NAME,
    DATA_ENTRY_HEADER,
    DATA_ENTRY_NAME,
    TEST_NAME,
    TRAIN_VAL_NAME,
)
from imgae_dx.testing.sample import render
from imgae_dx.testing.sample.plan import ImagePlan, plan_images
from imgae_dx.testing.sample.render import Renderer
from imgae_dx.utils.atomic import atomic_open

ZIP_DATE = (2018, 2, 21, 12, 0, 0)  # fixed member timestamp: byte-identical archives


def _metadata(plans: list[ImagePlan], test_patients: set[int]) -> dict[str, bytes]:
    de = [DATA_ENTRY_HEADER]
    bb = [BBOX_HEADER]
    tv, te = [], []
    for p in plans:
        w, h, sp = p.orig
        de.append(f"{p.name},{p.label},{p.follow},{p.patient},{p.age},{p.sex},{p.view},{w},{h},{sp},{sp}")
        for lab, bx, by, bw, bh in p.boxes:
            bb.append(f"{p.name},{lab},{bx:.9f},{by:.9f},{bw:.9f},{bh:.9f},,,")
        (te if p.patient in test_patients else tv).append(p.name)
    return {
        DATA_ENTRY_NAME: ("\n".join(de) + "\n").encode(),
        BBOX_NAME: ("\n".join(bb) + "\n").encode(),
        TRAIN_VAL_NAME: ("\n".join(tv) + "\n").encode(),
        TEST_NAME: ("\n".join(te) + "\n").encode(),
    }


def write_marker(zf: zipfile.ZipFile, dataset: str, seed: int, prefix: str = "") -> None:
    """Write the member that marks an archive as a synthetic sample (``prefix``: a top folder)."""
    body = json.dumps({"generator": "imgae_dx.testing.sample", "dataset": dataset, "seed": seed,
                       "synthetic": True}, sort_keys=True)
    zf.writestr(_zinfo(prefix + SYNTHETIC_MARKER, zipfile.ZIP_DEFLATED), body.encode(), compresslevel=6)


def _zinfo(name: str, method: int) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    zi.compress_type = method
    zi.create_system = 3
    zi.external_attr = 0o100644 << 16
    return zi


def write_sample_archive(out_dir: str | os.PathLike[str], images_per_stage: int = 300, stages: int = 3,
                         seed: int = 0, image_px: int = 1024, *, progress: bool | None = None,
                         png_method: str = "deflate", variety: str = "standard",
                         on_image: Callable[[int, int], None] | None = None) -> Path:
    """Write ``out_dir/data.zip``, a synthetic NIH ChestX-ray14 archive in Kaggle's layout.

    Args:
        out_dir: folder to write into (created if missing).
        images_per_stage: images in each ``images_NNN`` stage.
        stages: number of stages (``images_001`` … ``images_{stages:03d}``).
        seed: everything (patients, findings, pixels) is a function of it; same seed, same bytes.
        image_px: side of the square PNGs (default 1024 like the real ones). Changes pixels only:
            the metadata, including the 1024-frame boxes, is identical for any value.
        progress: show a tqdm bar (None: only when stderr is a terminal).
        png_method: zip method of PNG members, ``"deflate"`` (level 1, like Kaggle deflating
            everything) or ``"stored"``; CSV/TXT members are always deflated.
        variety: ``"standard"`` (the demo's) or ``"wide"``: a harder development archive with the
            same patients and findings but far more varied bodies, poses, exposures and noise, and
            ECG leads and collimation borders in images of both classes (:mod:`.plan`).
        on_image: optional callback ``(done, total)`` after each image.

    Returns:
        Path of the written archive. Written atomically (temp file, then ``os.replace``).
    """
    if images_per_stage < 1 or stages < 1 or stages > 999:
        raise ValueError(f"images_per_stage must be ≥ 1 and stages in 1..999, got {images_per_stage}, {stages}")
    if image_px < 32:
        raise ValueError(f"image_px must be ≥ 32, got {image_px}")
    if png_method not in ("deflate", "stored"):
        raise ValueError(f"png_method must be 'deflate' or 'stored', got {png_method!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "data.zip"
    plans, anatomy, test_patients = plan_images(images_per_stage, stages, seed, variety)
    meta = _metadata(plans, test_patients)
    in_archive = [p for p in plans if p.stage]
    renderer = Renderer(image_px, seed)
    png_ct = zipfile.ZIP_DEFLATED if png_method == "deflate" else zipfile.ZIP_STORED
    from tqdm.auto import tqdm

    bar = tqdm(total=len(in_archive), desc="sample images", unit="img",
               disable=(not _isatty()) if progress is None else (not progress))
    try:
        with atomic_open(dest) as f, zipfile.ZipFile(f, "w", allowZip64=True) as zf:
            for name in (BBOX_NAME, DATA_ENTRY_NAME):
                zf.writestr(_zinfo(name, zipfile.ZIP_DEFLATED), meta[name], compresslevel=6)
            def png(p: ImagePlan) -> bytes:
                ok, buf = cv2.imencode(".png", renderer.render(p, anatomy[p.patient]),
                                       [cv2.IMWRITE_PNG_COMPRESSION, 1])
                if not ok:  # pragma: no cover - cv2 always encodes uint8
                    raise RuntimeError(f"PNG encoding failed for {p.name}")
                return buf.tobytes()

            # every image is a function of its own plan (its seed): rendered on several threads,
            # written in plan order, the archive's bytes do not depend on the thread count
            for i, (p, data) in enumerate(zip(in_archive, _ordered_map(png, in_archive), strict=True)):
                zf.writestr(_zinfo(f"images_{p.stage:03d}/images/{p.name}", png_ct), data,
                            compresslevel=1)
                bar.update(1)
                if on_image is not None:
                    on_image(i + 1, len(in_archive))
            write_marker(zf, "nih", seed)  # sorts between images_NNN/ and test_list.txt
            for name in (TEST_NAME, TRAIN_VAL_NAME):
                zf.writestr(_zinfo(name, zipfile.ZIP_DEFLATED), meta[name], compresslevel=6)
    finally:
        bar.close()
    return dest


def _ordered_map(fn: Callable[[ImagePlan], bytes], plans: list[ImagePlan]) -> Iterator[bytes]:
    """``map(fn, plans)`` on :data:`.render.RENDER_THREADS` threads (numpy and cv2 release the GIL),
    in order, at most twice as many images in flight as threads."""
    with ThreadPoolExecutor(render.RENDER_THREADS, thread_name_prefix="sample-render") as pool:
        pending: deque[Future[bytes]] = deque()
        for p in plans:
            pending.append(pool.submit(fn, p))
            if len(pending) >= 2 * render.RENDER_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _isatty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
