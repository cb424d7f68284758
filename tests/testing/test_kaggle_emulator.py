"""The Kaggle API emulator itself, spoken to with plain HTTP (what kagglesdk sends).

The request and response field names checked here are read from the installed kagglesdk's own
types, so a kagglesdk that renames a field fails these tests instead of drifting from the emulator.
"""

from __future__ import annotations

import zipfile

import pytest
import requests

from imgae_dx.testing.kaggle_emulator import API_PORT, RULES_NOT_ACCEPTED, KaggleEmulator

pytestmark = pytest.mark.network

API = f"http://127.0.0.1:{API_PORT}/api/v1/datasets.DatasetApiService"
COMPETITIONS = f"http://127.0.0.1:{API_PORT}/api/v1/competitions.CompetitionApiService"


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
        e.add_competition("comp", z, accepted_users={"alice"})
        e.add_user("bob", "b0b")
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


def post_competition(method: str, body: dict, auth=("alice", "k3y")) -> requests.Response:
    return requests.post(f"{COMPETITIONS}/{method}", json=body, allow_redirects=False, timeout=10, auth=auth)


def test_competition_endpoints_match_the_installed_sdk(emu):
    """Field and route names as kagglesdk's CompetitionApiService sends and parses them."""
    from kagglesdk.competitions.types.competition_api_service import (
        ApiDownloadDataFilesRequest,
        ApiListDataFilesRequest,
        ApiListDataFilesResponse,
    )

    req = ApiDownloadDataFilesRequest()
    req.competition_name = "comp"
    body = ApiDownloadDataFilesRequest.to_dict(req)
    assert body == {"competitionName": "comp"}
    r = post_competition("DownloadDataFiles", body)
    assert r.status_code == 302 and "sig=" in r.headers["Location"]
    g = requests.get(r.headers["Location"], headers={"Range": "bytes=0-3"}, timeout=10)
    assert g.status_code == 206 and g.content == b"PK\x03\x04"
    assert emu.competition("comp").storage.base_url != emu.dataset("o/s").storage.base_url

    lreq = ApiListDataFilesRequest()
    lreq.competition_name, lreq.page_size = "comp", 2
    r = post_competition("ListDataFiles", ApiListDataFilesRequest.to_dict(lreq))
    page = ApiListDataFilesResponse.from_dict(r.json())
    assert [(f.name, f.total_bytes) for f in page.files] == [
        ("images_001/images/00000000_000.png", 1000), ("images_001/images/00000001_000.png", 1001)]
    assert page.next_page_token == "2"


def test_competition_rules_unknown_and_routing(emu):
    r = post_competition("DownloadDataFiles", {"competitionName": "comp"}, auth=("bob", "b0b"))
    assert r.status_code == 403 and r.json() == {"code": 403, "message": RULES_NOT_ACCEPTED}
    assert post_competition("ListDataFiles", {"competitionName": "comp"}, auth=("bob", "b0b")).status_code == 200
    missing = post_competition("DownloadDataFiles", {"competitionName": "nope"})
    assert missing.status_code == 404 and missing.json()["message"] == "Competition not found"
    # a dataset method on the competitions service (or the reverse) is not an API Kaggle has
    assert post_competition("DownloadDataset", {"ownerSlug": "o", "datasetSlug": "s"}).status_code == 404
    assert post("DownloadDataFiles", {"competitionName": "comp"}, auth=("alice", "k3y")).status_code == 404
    emu.accept_rules("comp", "bob")
    assert post_competition("DownloadDataFiles", {"competitionName": "comp"}, auth=("bob", "b0b")).status_code == 302
