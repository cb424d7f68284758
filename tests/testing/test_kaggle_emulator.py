"""The Kaggle API emulator itself, spoken to with plain HTTP (what kagglesdk sends)."""

from __future__ import annotations

import zipfile

import pytest
import requests

from imgae_dx.testing.kaggle_emulator import API_PORT, KaggleEmulator

pytestmark = pytest.mark.network

API = f"http://127.0.0.1:{API_PORT}/api/v1/datasets.DatasetApiService"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    z = tmp_path_factory.mktemp("emu") / "data.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(3):
            zf.writestr(f"images_001/images/{i:08d}_000.png", bytes(1000 + i))
    with KaggleEmulator() as e:
        e.add_user("alice", "k3y")
        e.add_token("tok")
        e.add_dataset("o/s", z)
        yield e


def post(method: str, body: dict, **kw) -> requests.Response:
    return requests.post(f"{API}/{method}", json=body, allow_redirects=False, timeout=10, **kw)


def test_auth_required_and_checked(emu):
    emu.reset_counters()
    r = post("DownloadDataset", {"ownerSlug": "o", "datasetSlug": "s"})
    assert r.status_code == 401 and r.json()["code"] == 401
    assert post("DownloadDataset", {"ownerSlug": "o", "datasetSlug": "s"}, auth=("alice", "bad")).status_code == 401
    ok = post("DownloadDataset", {"ownerSlug": "o", "datasetSlug": "s"}, headers={"Authorization": "Bearer tok"})
    assert ok.status_code == 302
    assert emu.auth_failures == 2 and emu.calls["DownloadDataset"] == 3 and emu.redirects == 1


def test_redirect_goes_to_a_separate_signed_storage(emu):
    r = post("DownloadDataset", {"ownerSlug": "o", "datasetSlug": "s"}, auth=("alice", "k3y"))
    loc = r.headers["Location"]
    assert r.status_code == 302 and f":{API_PORT}/" not in loc and "sig=" in loc
    g = requests.get(loc, headers={"Range": "bytes=0-3"}, timeout=10)
    assert g.status_code == 206 and g.content == b"PK\x03\x04" and g.headers["ETag"]
    assert requests.head(loc, timeout=10).status_code == 405  # storage refuses HEAD
    emu.dataset("o/s").storage.rotate_key()
    assert requests.get(loc, headers={"Range": "bytes=0-3"}, timeout=10).status_code == 403


def test_listing_paging_404_and_injected_429(emu):
    r = post("ListDatasetFiles", {"ownerSlug": "o", "datasetSlug": "s", "pageSize": 2}, auth=("alice", "k3y"))
    assert [f["totalBytes"] for f in r.json()["datasetFiles"]] == [1000, 1001]
    r2 = post("ListDatasetFiles", {"ownerSlug": "o", "datasetSlug": "s", "pageToken": r.json()["nextPageToken"]},
              auth=("alice", "k3y"))
    assert [f["name"] for f in r2.json()["datasetFiles"]] == ["images_001/images/00000002_000.png"]
    assert "nextPageToken" not in r2.json()
    assert post("DownloadDataset", {"ownerSlug": "x", "datasetSlug": "y"}, auth=("alice", "k3y")).status_code == 404
    emu.inject(429, retry_after=7)
    r = post("DownloadDataset", {"ownerSlug": "o", "datasetSlug": "s"}, auth=("alice", "k3y"))
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert requests.get(f"{API}/DownloadDataset", timeout=10).status_code == 405


def test_only_one_emulator_at_a_time(emu):
    with pytest.raises(TimeoutError, match=str(API_PORT)):
        KaggleEmulator(lock_timeout_s=0.2).__enter__()
    with emu.offline():
        with pytest.raises(requests.ConnectionError):
            post("DownloadDataset", {})
    assert post("DownloadDataset", {}).status_code == 401  # serving again
