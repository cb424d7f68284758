"""Heads of many members in few range requests; sniffing by content; DICOM header fields."""

from __future__ import annotations

from dataset_helpers import dicom_bytes, image_bytes, write_zip

from imgae_dx.data.datasets.base import HeadReads
from imgae_dx.data.datasets.heads import SNIFF_BYTES, read_heads, sniff
from imgae_dx.data.dicom import header_fields
from imgae_dx.streaming.sources import open_archive


def test_heads_of_stored_and_deflated_members_in_few_requests(tmp_path):
    files = {f"d/{i}.png": image_bytes("png", i) for i in range(20)}
    files["d/s.jpg"] = image_bytes("jpeg", 1)
    files["d/t.txt"] = b"hello world"
    files["d/x.dcm"] = dicom_bytes("PID-7", view="AP")
    for deflate in (False, True):
        path = write_zip(tmp_path / f"h{deflate}.zip", files, deflate=deflate)
        with open_archive(str(path)) as a:
            ids = [a.index.find(n) for n in files]
            before = a.stats()["requests"]
            heads = read_heads(a, ids, SNIFF_BYTES)
            assert a.stats()["requests"] - before == 1  # small files: one request covers them
            assert [h == d[:SNIFF_BYTES] for h, d in zip(heads, files.values(), strict=True)] == [True] * len(files)
            assert [sniff(h) for h in heads] == ["png"] * 20 + ["jpeg", None, "dicom"]
            before = a.stats()["requests"]
            split = read_heads(a, ids, 16, reads=HeadReads(gap_bridge_bytes=0, max_request_bytes=1, in_flight=3))
            assert split == [d[:16] for d in files.values()]  # in order, whatever the thread finishing first
            assert a.stats()["requests"] - before == len(files)
            assert read_heads(a, [], 16) == []


def test_dicom_header_fields_from_a_head():
    data = dicom_bytes("PID-7", view="AP")
    assert header_fields(data[:4096], ["PatientID", "ViewPosition", "PatientAge"]) == {
        "PatientID": "PID-7", "ViewPosition": "AP"}
    assert header_fields(b"not a dicom at all", ["PatientID"]) == {}
